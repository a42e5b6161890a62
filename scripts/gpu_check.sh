#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (its own PyTorch, no network), in two parts that
# each fit one 10-minute device call:
#
#   bash scripts/gpu_check.sh tests [OUT]   # ~6 min: install, GPU tests, training check
#   bash scripts/gpu_check.sh bench [OUT]   # ~6 min: benchmarks/gpu_backends.py
#
# OUT: where results go (default benchmarks/results). Carry .gpu-wheels/ (made here by
# `make gpu-wheels`): torchao for the fp8 backend, nvidia-ml-py for the energy counter,
# and the Fashion-MNIST files the tests read (the machine has no Debian data package).
# Every step writes its results before the next starts: a run stopped at its limit keeps
# them. Part "tests" runs
#   1. the install of vitres (no dependencies: the image has them) and the carried wheels;
#   2. the GPU tests: real CUDA graphs against eager, every command's --device cuda path;
#   3. scripts/gpu_train_check.py: bf16 training, exact resume, torchrun/nccl (2+ GPUs).
# Part "bench" runs benchmarks/gpu_backends.py: vitres's backends against timm and HF.
set -u
PART="${1:-tests}"
OUT="${2:-benchmarks/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # vitres from this checkout, installed or not
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

install() {
  log "$($PY -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name())')"
  $PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 \
    || log "pip install -e . failed (see pip.log); running from PYTHONPATH"
  if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-deps .gpu-wheels/*.whl >>"$OUT/pip.log" 2>&1 \
      || log "the carried wheels did not install (see pip.log)"
  fi
  $PY -c "import torchao; print('torchao', torchao.__version__)" 2>/dev/null | tee -a "$OUT/gpu_check.log" \
    || log "torchao missing: fp8 is skipped"
  data=/usr/share/datasets/fashion-mnist
  if [ ! -f "$data/t10k-images-idx3-ubyte.gz" ] && [ -d .gpu-wheels/fashion-mnist ]; then
    mkdir -p "$data" && cp .gpu-wheels/fashion-mnist/*.gz "$data"/ && log "Fashion-MNIST copied to $data"
  fi
}

case "$PART" in
  tests)
    install
    log "GPU tests"
    timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cudagraph.py tests/test_gpu_commands.py \
      2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
    log "training check"
    timeout 100 $PY scripts/gpu_train_check.py 2>&1 | tail -8 | tee "$OUT/gpu_train_check.txt"
    ;;
  bench)
    install
    log "benchmarks/gpu_backends.py"
    timeout 330 $PY benchmarks/gpu_backends.py --out "$OUT/gpu_backends" 2>&1 | tail -40
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh tests|bench [OUT]" >&2
    exit 2
    ;;
esac
log "done ($PART)"
