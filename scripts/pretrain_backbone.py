"""`python scripts/pretrain_backbone.py ARGS` is `detector pretrain-backbone ARGS`
(detector/tools/pretrain_backbone.py)."""

from detector.tools.pretrain_backbone import main

if __name__ == "__main__":
    main()
