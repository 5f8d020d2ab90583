# Quick start (fresh machine):  make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned: an unpinned `pip install torch` pulls several GB of CUDA wheels.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-fast test-gpu gpu-check bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev,dali,masks,report,coco]'
	# DeepSpeed after torch, without building its CUDA ops (JIT where needed; CPU uses gloo)
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation deepspeed
	touch $@

venv: $(VENV)/.installed

# The main job: CIT Table IV (V1-V4 x baseline / Stratify-B / Stratify-C|A) on the embedded data.
demo: venv
	$(VENV)/bin/cit-fast table4 --out-dir runs/table4 --results-md bench/RESULTS.md

# The whole test suite on the CPU (Triton kernels under the interpreter). GPU tests are deselected.
test: venv
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not cuda" $(PYTEST_ARGS)

# The quick loop while editing: no multi-process, service or multi-second tests, one worker per core.
test-fast: venv
	$(PY) -m pytest -q -n auto -m "not cuda and not slow and not distributed and not integration" $(PYTEST_ARGS)

# On a machine with a GPU: the same tests on CUDA, then the kernel benchmark.
test-gpu: venv
	$(PY) -m pytest -q -m "cuda or not slow" tests/kernels
	$(PY) bench/kernels.py

# On a machine with a GPU: the cuda tests, the kernel and pipeline benchmarks (DALI mixed decoding)
# and short bf16 channels-last trainings (1 GPU; 2 processes over NCCL), every figure appended to
# bench/RESULTS.md with the device name (~8 min on one H100/H200). Without CUDA: one line, exit 1.
gpu-check: venv
	$(PY) bench/gpu_check.py

clean:
	rm -rf runs build *.egg-info
