#!/usr/bin/env bash
# The GPU check: everything this project can only verify on a CUDA GPU, in one call of at most
# 8 minutes on one GPU, ending with one summary table.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: gpu_check/; the device tool: scripts/gpu_check.sh "$OUT")
#
# 1. the `cuda` tests (tests/test_cuda.py): fp32, bf16 and fp16 (GradScaler) training steps, the
#    step under torch.cuda.set_sync_debug_mode("error") (host waits only where the code says),
#    the GPU's losses and detections against the CPU's;
# 2. a short fp16 and a short bf16 training run on the embedded data (`debug=smoke`, trainer.device=cuda);
# 3. the train benchmark (detector/tools/benchmarks/train.py) against torchvision's RetinaNet at 800x1333
#    in fp32, bf16 and fp16.
#
# Needs the repository and a Python with torch (CUDA) and torchvision. The other pinned
# dependencies, where that Python lacks them, travel as wheels: `make gpu-wheels` downloads them
# into .whl/ (git-ignored), and this script installs .whl/*.whl into a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is false); nothing to check here" >&2
    exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
        .whl/*.whl > "$OUT/wheels.log" 2>&1 || { echo "gpu_check: installing .whl/ failed, see $OUT/wheels.log" >&2; exit 2; }
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"

SUMMARY="$OUT/summary.md"  # written row by row: a check cut short by a time limit keeps the rows before it
printf '| check | status | time | result |\n|---|---|---|---|\n' > "$SUMMARY"
step() {  # step NAME TIMEOUT COMMAND...: run it, log to $OUT/NAME.log, add a row to the summary
    local name=$1 limit=$2 start status
    shift 2
    start=$(date +%s)
    if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then status=ok; else status="FAILED (exit $?)"; fi
    echo "| $name | $status | $(( $(date +%s) - start )) s | $(detail "$name") |" >> "$SUMMARY"
}
detail() {  # the one line that says how a step went
    case $1 in
        cuda-tests) grep -E "passed|failed|error" "$OUT/cuda-tests.log" | tail -1 ;;
        train-*) "$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"AP {m['AP']:.1f}, {m['iteration']} iterations, {m['precision']['used']}\")" \
                     "$OUT/$1/metrics.json" 2>/dev/null || echo "no metrics.json" ;;
        benchmark) grep -E "^\| (fp32|bf16|fp16) \| 800x1333 \| 50 \|" "$OUT/benchmark.log" | head -3 |
                       awk -F'|' '{gsub(/ /, ""); printf "%s: ours %s, tv %s img/s; ", $2, $5, $6}' ;;
    esac
}

# the limits add up to 450 s, inside 8 minutes with the start-up
step cuda-tests 150 "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py
for amp in fp16 bf16; do
    step "train-$amp" 60 "$PYTHON" train.py debug=smoke trainer.device=cuda trainer.amp=$amp "hydra.run.dir=$OUT/train-$amp"
done
step benchmark 180 "$PYTHON" -m detector.tools.benchmarks.train --device cuda --precision fp32 bf16 fp16 --sizes 800x1333 \
    --boxes 50 --allocator system --json "$OUT/benchmark.json"

echo
cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
