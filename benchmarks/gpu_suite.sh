#!/usr/bin/env bash
# The GPU checks and benchmarks of the speed work, in phases that each fit in a 10-minute call:
#
#   PYTHONPATH=src bash benchmarks/gpu_suite.sh tests   OUTDIR  # tests/test_cuda.py
#   PYTHONPATH=src bash benchmarks/gpu_suite.sh eager   OUTDIR  # bf16, every model in both layouts, --optimized
#   PYTHONPATH=src bash benchmarks/gpu_suite.sh compile OUTDIR  # bf16, torch.compile, each model's best layout
#
# Results (JSON/CSV with timm's column names, logs, the machine) go to OUTDIR (default benchmarks/results).
# DEVICE, BATCH, IMG, ROUNDS override the defaults (cuda, 256, 224, 7), e.g. for a CPU dry run.
set -euo pipefail
phase=${1:?usage: gpu_suite.sh tests|eager|compile [OUTDIR]}
case "$phase" in tests|eager|compile) ;; *) echo "unknown phase $phase: use tests, eager or compile" >&2; exit 2;; esac
out=${2:-benchmarks/results}
device=${DEVICE:-cuda}
batch=${BATCH:-256}
img=${IMG:-224}
rounds=${ROUNDS:-7}
py=${PYTHON:-python}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{
  date -u +%FT%TZ
  "$py" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} > "$out/gpu_${phase}_machine.txt"

bench() {
  "$py" benchmarks/bench.py --device "$device" -b "$batch" --img-size "$img" --amp bf16 \
    --ref-resnest timm:resnest50d@nchw --ref-resnet tv:resnet50@cl --rounds "$rounds" "$@"
}

case "$phase" in
  tests)
    "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/gpu_tests.log"
    ;;
  eager)
    official=official:resnest50@cl
    if ! "$py" -c "import resnest.torch" 2>/dev/null; then
      echo "resnest (the official package) is not installed: no official:resnest50 row" >&2
      official=
    fi
    # shellcheck disable=SC2086  # $official is one word or none
    bench --optimized \
      --models splitattn:resnest50@cl splitattn:resnest50@nchw splitattn:resnest50+ckpt-attn@cl \
               timm:resnest50d@cl timm:resnest50d@nchw $official tv:resnet50@cl tv:resnet50@nchw \
               timm:resnet50d@cl \
      --json "$out/gpu_bf16.json" --csv "$out/gpu_bf16.csv" 2>&1 | tee "$out/gpu_bf16.log"
    ;;
  compile)
    bench --compile \
      --models splitattn:resnest50@cl timm:resnest50d@cl timm:resnest50d@nchw tv:resnet50@cl \
      --json "$out/gpu_bf16_compile.json" --csv "$out/gpu_bf16_compile.csv" 2>&1 | tee "$out/gpu_bf16_compile.log"
    ;;
esac
