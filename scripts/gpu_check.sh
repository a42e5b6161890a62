#!/usr/bin/env bash
# The whole GPU check as one command, for a lent GPU machine (its own PyTorch, no network):
#
#   bash scripts/gpu_check.sh [OUT]        # OUT: where results go (default benchmarks/results)
#
# Carry the wheels the machine's image lacks (made here by `make gpu-wheels`: torchao for
# the fp8 backend, nvidia-ml-py for the energy counter) in .gpu-wheels/. Steps, each
# writing its results before the next starts (a run stopped at its time limit keeps them):
#   1. install vitres (no dependencies: the image has them) and the carried wheels;
#   2. the GPU tests: real CUDA graphs against eager, every command's --device cuda path,
#      and scripts/gpu_train_check.py (bf16 training, exact resume, torchrun/nccl);
#   3. benchmarks/gpu_backends.py: vitres's backends against timm and Hugging Face.
# Budget: under 8 minutes on one H200 (about 1 for steps 1-2, 5-6 for step 3).
set -u
OUT="${1:-benchmarks/results}"
mkdir -p "$OUT"
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }
log "python $(python -c 'import sys; print(sys.version.split()[0])'), torch $(python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())')"
python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-deps .gpu-wheels/*.whl 2>&1 | tail -1
fi
python -c "import torchao" 2>/dev/null && log "torchao $(python -c 'import torchao; print(torchao.__version__)')" || log "torchao missing: the fp8 rows will say so"

log "step 2: GPU tests"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_cudagraph.py tests/test_gpu_commands.py \
  2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

log "step 2b: training on the GPU (bf16, exact resume, torchrun with 2+ GPUs)"
timeout 120 python scripts/gpu_train_check.py 2>&1 | tail -8 | tee "$OUT/gpu_train_check.txt"

log "step 3: benchmarks/gpu_backends.py"
timeout 330 python benchmarks/gpu_backends.py --out "$OUT/gpu_backends" 2>&1 | tail -40
log "done"
