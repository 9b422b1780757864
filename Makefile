# The README's two commands, and what they stand on.
#
#   make test   create .venv, lint (ruff), build the extension, run the C++ tests (the CUDA
#               kernels too, under a CPU emulation), compile the CUDA kernels (when nvcc is
#               present), the real CUDA build of the extension against the GPU machine's torch
#               and pytest tests/ on it, then pytest tests/, the op tests again through the
#               glue's CUDA branch on the emulated kernels, and a one-round pytest bench/
#   make demo   the main job (`vggrpo demo`, docs/demo.md): GRPO with LoRA on the embedded
#               base generator, judged before/after by referees on decoded RGB; reward
#               guidance; latent-vs-RGB timing
#
# Works on a fresh machine with Python 3.10+, a C++17 compiler, cmake and the package registry.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The CPU wheel on this machine kind; a CUDA machine pins its own torch (see README).
TORCH_SPEC ?= torch==2.13.0
JOBS ?= 2
# The three test suites run on JOBS pytest-xdist workers, one torch thread each
# (tests/conftest.py): 143 s instead of 180 s for tests/ on the 2-core CI machine. The
# benchmarks stay serial. PYTEST_PAR= runs the suites in one process.
PYTEST_PAR ?= -n $(JOBS)
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

CSRC := $(shell find csrc -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' \) 2>/dev/null)
ENV_STAMP := $(VENV)/.vggrpo-env
# The real CUDA build (make cuda-build) uses the GPU machine's torch: 2.11.0, a CUDA 13.0 build
# like the nvcc here (a CUDA wheel of torch imports and runs on a machine without a GPU), and its
# Python, 3.12, where one is found (python3.12, or pyenv's), so CI covers a second Python too.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.11.0
CUDA_PYTHON ?= $(or $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
  $$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done),$(PYTHON))
CUDA_ENV_STAMP := $(CUDA_VENV)/.vggrpo-env
EXT_STAMP := build/.vggrpo-ext

.PHONY: env lint build cpp-test cuda-compile cuda-build cuda-emulated floor gpu-wheels pytest bench-quick bench bench-check test fault-injection demo clean

env: $(ENV_STAMP)
$(ENV_STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# pyproject.toml's [tool.ruff] rules on every Python file; first in make test (0.06 s here).
LINT_PATHS := vggrpo tests bench scripts examples csrc setup.py
lint: $(ENV_STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) scripts/house_check.py

# --no-build-isolation: compile against the torch in .venv, not a freshly downloaded one.
build: $(EXT_STAMP)
$(EXT_STAMP): $(ENV_STAMP) $(CSRC) setup.py
	MAX_JOBS=$(JOBS) $(PIP) install -q --no-build-isolation -e .
	mkdir -p build && touch $@

cpp-test:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j $(JOBS)
	ctest --test-dir build/cmake --output-on-failure

# Every .cu compiles on a GPU-less machine: nvcc needs no device. Skipped only without nvcc.
# The C++ tests (the emulated kernels' included) are cpp-test's: built here too, they would only
# be built twice and never run.
cuda-compile:
	@if [ -n "$(NVCC)" ]; then \
	  cmake -S . -B build/cmake-cuda -DCMAKE_BUILD_TYPE=Release -DVGGRPO_CUDA=ON \
	    -DVGGRPO_BUILD_TESTS=OFF -DCMAKE_CUDA_COMPILER=$(NVCC) && \
	  cmake --build build/cmake-cuda -j $(JOBS); \
	else echo "cuda-compile: no nvcc found, CUDA kernels not compiled"; fi

pytest: build
	$(PY) -m pytest tests -q $(PYTEST_PAR)

$(CUDA_ENV_STAMP): requirements-dev.txt
	$(CUDA_PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip --disable-pip-version-check install -q --upgrade pip
	$(CUDA_VENV)/bin/python -m pip --disable-pip-version-check install -q "$(CUDA_TORCH_SPEC)"
	$(CUDA_VENV)/bin/python -m pip --disable-pip-version-check install -q -r requirements-dev.txt
	touch $@

# The extension as `FORCE_CUDA=1 pip install` builds it (nvcc, the CUDA glue, the CUDA-key
# registrations), in build/cuda_torch, then pytest tests/ on it (docs/ops.md). Skipped only
# without nvcc.
cuda-build:
	@if [ -n "$(NVCC)" ]; then \
	  $(MAKE) --no-print-directory $(CUDA_ENV_STAMP) && \
	  MAX_JOBS=$(JOBS) $(CUDA_VENV)/bin/python csrc/tests/torch_variant.py cuda $(PYTEST_PAR); \
	else echo "cuda-build: no nvcc found, the CUDA build not tried"; fi

# The oldest versions setup.py admits, checked by hand with `make floor` (not part of make test: the
# ~5 GB CUDA wheel of torch 2.4.1 from PyPI, its installs and the suite took 7 min on the 2-core
# CI machine). diffusers 0.41 fails at import on torch < 2.6 (torch.accelerator), so the floor pins
# the oldest diffusers and peft that vggrpo admits too. The CPU build, in build/cpu_torch-3.10.
FLOOR_VENV ?= .venv-floor
FLOOR_PINS ?= torch==2.4.1 diffusers==0.33.1 peft==0.14.0
FLOOR_PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10; do \
  $$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
FLOOR_ENV_STAMP := $(FLOOR_VENV)/.vggrpo-env

$(FLOOR_ENV_STAMP): requirements-dev.txt
	@test -n "$(FLOOR_PYTHON)" || { echo "floor: no python3.10 found; set FLOOR_PYTHON" >&2; exit 2; }
	$(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	printf '%s\n' $(FLOOR_PINS) > $(FLOOR_VENV)/floor-pins.txt
	$(FLOOR_VENV)/bin/python -m pip --disable-pip-version-check install -q \
	  -c $(FLOOR_VENV)/floor-pins.txt $(FLOOR_PINS) -r requirements-dev.txt
	touch $@

floor: $(FLOOR_ENV_STAMP)
	MAX_JOBS=$(JOBS) $(FLOOR_VENV)/bin/python csrc/tests/torch_variant.py cpu $(PYTEST_PAR)

# The wheels the lent GPU machine's image lacks (Python 3.12, no registry there), into the ignored
# .whl/ that scripts/gpu_check.sh installs from: run(..., carry=[".whl"]).
GPU_WHEELS ?= diffusers==0.42.1 importlib_metadata==8.7.0 nvtx==0.2.17 av==18.1.0
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

# The op tests again on a test-only build whose every call takes the glue's CUDA branch, with the
# CUDA kernels compiled against the CPU emulation of the CUDA runtime (docs/ops.md).
cuda-emulated: build
	MAX_JOBS=$(JOBS) $(PY) csrc/tests/torch_variant.py emulated $(PYTEST_PAR)

# One round per benchmark: checks the suite runs and reports the targets; `make bench` measures.
bench-quick: build
	$(PY) -m pytest bench -q --benchmark-min-rounds=1 --benchmark-max-time=0

# The measurement (bench/README.md): results in bench/results/, targets reported.
bench: build
	$(PY) -m pytest bench -q --benchmark-min-rounds=10

# The same, failing when a speed or memory target is missed.
bench-check: build
	$(PY) -m pytest bench -q --benchmark-min-rounds=10 --vggrpo-check-targets

test: lint build cpp-test cuda-compile cuda-build pytest cuda-emulated bench-quick

# The long fault-injection run (make test runs a bounded one): vggrpo train killed with SIGKILL
# FAULT_KILLS times, at random renames and moments, each run resumed to its end and compared
# bitwise with an uninterrupted one; the counts go to out/fault-injection.json (README).
FAULT_KILLS ?= 24
fault-injection: build
	mkdir -p out
	VGGRPO_FAULT_KILLS=$(FAULT_KILLS) VGGRPO_FAULT_REPORT=out/fault-injection.json \
	  $(PY) -m pytest tests/test_fault_injection.py -q -s -p no:xdist -k random_kills

# The world in miniature on the embedded models (measured: ~140 s on 2 cores, once built;
# budget 3 min): GRPO with LoRA on the base generator, referees on decoded RGB before/after,
# guided vs unguided samples, the latent-vs-RGB reward timing; writes out/demo/{summary.json,
# reward_curve.png, strip.png, samples/, lora/}.
demo: build
	$(VENV)/bin/vggrpo demo --out out/demo

clean:
	rm -rf build $(VENV) $(CUDA_VENV) $(FLOOR_VENV) vggrpo/_C*.so *.egg-info
