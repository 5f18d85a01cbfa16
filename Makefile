# Two commands: `make run` (set up, then train + evaluate on the embedded LastFM data) and `make test`;
# `make bench` runs the benchmark suite (experiments/bench_suite.py: runs/bench/<date>_<backend>.json / .md).
SHELL := /bin/bash
# VENV: the virtual environment; setup installs this checkout into it (pip install -e .), so give each
# checkout its own (VENV=another checkout's venv repoints that venv's hq_jax to this one).
VENV ?= .venv
PY := $(VENV)/bin/python
# Any Python >= 3.12: the pyenv shim honours .python-version, else python3.12 / python3 on PATH.
PYTHON ?= $(shell for p in python3.12 python3 python; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
WORKDIR ?= runs/lastfm_fp

.PHONY: run test test-all bench setup clean kernel

$(VENV)/.installed: requirements.txt setup.cfg setup.py
	@if [ -z "$(PYTHON)" ]; then echo "error: no Python >= 3.12 found (install one, or set PYTHON=...)" >&2; exit 1; fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

setup: $(VENV)/.installed kernel

# The optional compiled top-k kernel (csrc/hq_topk.cc -> build/libhq_topk.so, loaded by hq_jax/retrieval/native.py
# through jax.ffi). A failed build only warns: the library then runs its pure-JAX search.
CXX ?= g++
KERNEL := build/libhq_topk.so
KERNEL_FLAGS ?= -O3 -march=native -ffp-contract=off -std=c++17 -fPIC -shared -pthread
kernel: $(KERNEL)

$(KERNEL): csrc/hq_topk.cc $(VENV)/.installed
	@mkdir -p build
	@inc="$$($(PY) -c 'import jax.ffi; print(jax.ffi.include_dir())')" && \
	  $(CXX) $(KERNEL_FLAGS) -isystem "$$inc" csrc/hq_topk.cc -o $@.tmp && mv $@.tmp $@ && echo "built $@" || \
	  { rm -f $@.tmp; echo "warning: $@ not built (see above): retrieval runs its pure-JAX search" >&2; }

run: setup
	$(PY) -m experiments.hqgnn --config=experiments/configs/hqgnn_lastfm.py --workdir=$(WORKDIR)

# make test: everything but the tests marked slow (multi-device, multi-process, kill / resume end to end,
# packaging, the notebook); make test-all: every test.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

test-all: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# BENCH_OUT: where the summaries go (runs/ is git-ignored; BENCH_OUT=results/bench for a run meant as a result).
# BENCH_FLAGS: more flags, quoted when there are several: make bench BENCH_FLAGS="--profile=tiny --parts=mpe"
# (--profile=tiny: a quick smoke run).
BENCH_OUT ?= runs/bench
bench: setup
	$(PY) -m experiments.bench_suite --out_dir=$(BENCH_OUT) $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) runs
