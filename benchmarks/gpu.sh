#!/usr/bin/env bash
# One-shot GPU throughput benchmark (issue 6), for a lent GPU machine.
#
# bert-base-sized random teacher (12L/768, vocabulary 30,522) -> 6-layer student at sequence 512:
# the reference computation (b) in fp32 (and fp16 autocast) against distilkit's loop (a) in bf16
# and fp16, with and without torch.compile. Prints tokens/s, peak CUDA memory and ratios; ends in
# under 8 minutes (a time budget skips what would not fit). Needs only torch, transformers and
# accelerate: the package is used from src/ (no install). Models and data go to runs/gpu-bench/;
# results to runs/gpu-bench/gpu_bench.json, copied to $OUT/ when $OUT is set.
#
#   bash benchmarks/gpu.sh              # on the GPU machine
#   bash benchmarks/gpu.sh --dry-run    # tiny model on the CPU, seconds (what the tests run)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=true
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
exec python benchmarks/gpu_bench.py "$@"
