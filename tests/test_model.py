import math
from functools import partial

import pytest
import torch
import torchvision

from detector.models import AnchorGenerator, ResNetBackbone, RetinaNet, RetinaNetFPN, RetinaNetHead


def small_model(num_classes=3, prior_prob=0.01, p6_from="c5", **backbone):
    return RetinaNet(
        num_classes,
        ResNetBackbone(depth=18, **{"norm": "bn", "frozen_stages": 0, **backbone}),
        partial(RetinaNetFPN, out_channels=32, p6_from=p6_from),
        partial(RetinaNetHead, num_convs=2, channels=32, norm="gn"),
        AnchorGenerator(),
        prior_prob=prior_prob,
    )


def test_output_shapes_and_levels_match_anchors():
    model = small_model().eval()
    out = model(torch.randn(2, 3, 128, 256))
    per_level = [(16 * 32), (8 * 16), (4 * 8), (2 * 4), (1 * 2)]
    assert out["num_anchors_per_level"] == [9 * n for n in per_level]
    total = 9 * sum(per_level)
    assert out["cls_logits"].shape == (2, total, 3)
    assert out["box_deltas"].shape == (2, total, 4)
    assert out["anchors"].shape == (total, 4)


@pytest.mark.parametrize("prior", [0.01, 0.5, 0.2])
def test_classification_prior_bias(prior):
    head = RetinaNetHead(in_channels=16, num_anchors=9, num_classes=4, num_convs=2, channels=32, prior_prob=prior)
    bias = head.cls_logits.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, prior))
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log((1 - prior) / prior)))
    assert (head.box_deltas.bias == 0).all()
    weights = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(weights.std().item() - 0.01) < 0.001 and abs(weights.mean().item()) < 0.001
    # with N(0, 0.01) weights the initial foreground probability stays at π for any input
    cls = head([torch.randn(1, 16, 8, 8)])["cls_logits"]
    assert abs(torch.sigmoid(cls).mean().item() - prior) < 0.01


def test_head_init_std_sets_every_conv_and_keeps_the_prior():
    """64 channels at std 0.02 keep the paper's per-conv gain of 0.01 at 256 channels: 0.02·√576 = 0.01·√2304."""
    head = RetinaNetHead(in_channels=64, num_anchors=9, num_classes=80, channels=64, init_std=0.02)
    for module in (m for m in head.modules() if isinstance(m, torch.nn.Conv2d)):
        assert abs(module.weight.std().item() - 0.02) < 0.002, module
    torch.testing.assert_close(torch.sigmoid(head.cls_logits.bias), torch.full((720,), 0.01))
    with pytest.raises(ValueError, match="init_std must be > 0"):
        RetinaNetHead(16, 9, 3, init_std=0.0)


def test_invalid_prior_raises():
    with pytest.raises(ValueError, match=r"prior_prob must be in \(0, 1\)"):
        RetinaNetHead(16, 9, 3, prior_prob=1.0)


def test_p6_source_follows_config_not_channel_counts():
    from_c5 = RetinaNetFPN([128, 256, 512], out_channels=512, p6_from="c5")
    from_p5 = RetinaNetFPN([128, 256, 512], out_channels=256, p6_from="p5")
    extra_c5 = from_c5.fpn.extra_blocks
    extra_p5 = from_p5.fpn.extra_blocks
    assert extra_c5.use_P5 is False and extra_c5.p6.in_channels == 512
    assert extra_p5.use_P5 is True and extra_p5.p6.in_channels == 256
    features = [torch.randn(1, c, s, s) for c, s in [(128, 16), (256, 8), (512, 4)]]
    assert [f.shape[-1] for f in from_c5(features)] == [16, 8, 4, 2, 1]


def test_frozen_stages_and_frozen_bn():
    backbone = ResNetBackbone(depth=18, norm="frozen_bn", frozen_stages=2)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.stages[0].parameters())
    assert all(p.requires_grad for p in backbone.stages[1].parameters())
    assert isinstance(backbone.stem[1], torchvision.ops.FrozenBatchNorm2d)


def test_local_weights_file_is_loaded(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone(depth=18, norm="frozen_bn", frozen_stages=0, weights_path=str(path))
    torch.testing.assert_close(backbone.stages[3][1].conv2.weight, reference.layer4[1].conv2.weight)
    torch.testing.assert_close(backbone.stem[1].running_var, reference.bn1.running_var)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        ResNetBackbone(depth=18, weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        ResNetBackbone(depth=50, weights_path=str(path))


def test_scores_under_bf16_autocast_keep_float32_resolution():
    """At inference under bf16 autocast the last classification conv runs in float32: the 100
    detections of each image have (almost) all distinct scores. The same scores from bf16 logits
    collapse onto a few dozen values and tie in the COCO ranking."""
    from detector.ops import BoxCoder
    from detector.postprocess import RetinaNetPostProcessor

    torch.manual_seed(0)
    model = small_model(num_classes=3, prior_prob=0.3).eval()
    postprocess = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.05, nms_thresh=1.0)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert out["cls_logits"].dtype == torch.float32 and out["box_deltas"].dtype == torch.bfloat16
    detections = postprocess(out, [(128, 128)] * 2)
    assert all(len(d["scores"]) == 100 and d["scores"].dtype == torch.float32 for d in detections)
    assert min(len(d["scores"].unique()) for d in detections) >= 95
    in_bf16 = postprocess({**out, "cls_logits": out["cls_logits"].bfloat16()}, [(128, 128)] * 2)
    assert max(len(d["scores"].unique()) for d in in_bf16) < 50
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images)["cls_logits"].dtype == torch.bfloat16  # training keeps the autocast dtype
