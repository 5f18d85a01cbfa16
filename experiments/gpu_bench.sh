#!/usr/bin/env bash
# experiments/gpu_bench.py on a lent GPU machine, both halves (see /work/.library/device/README.md).
#
#   bash experiments/gpu_bench.sh prepare   # here, once: wheels the device image lacks -> .whl/, Gowalla -> .gpudata/
#   bash experiments/gpu_bench.sh run       # there: the device tool's `run` with carry [".whl", ".gpudata"],
#                                           # timeout_s 600; results come back from $OUT (gpu_bench.json / .md / log)
#
# The device image has JAX (CUDA), torch, flax, optax, orbax, absl, pyarrow, tqdm; it lacks jraph and
# ml_collections, and its flax may be older than the 0.12 this project is written for, so those three travel
# as wheels (pure Python; flax 0.12.12 needs jax >= 0.11.1, which the image has). Gowalla (6.6 MB) travels in
# the git-ignored .gpudata/ because ../shared beside the checkout does not.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  prepare)
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    for d in /.whl/ /.gpudata/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
    PY="${PY:-.venv/bin/python}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform any -d .whl \
      jraph==0.0.6.dev0 ml_collections==1.1.0 flax==0.12.12
    mkdir -p .gpudata
    rm -rf .gpudata/gowalla && cp -r "${GOWALLA:-../shared/data/gowalla}" .gpudata/gowalla
    ls -la .whl .gpudata/gowalla
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
    # the compiled CPU top-k kernel, for the retrieval_kernel choice (the native side runs on this host's CPU);
    # without a compiler that pair is recorded as skipped
    mkdir -p build
    timeout 120 "${CXX:-g++}" -O3 -march=native -ffp-contract=off -std=c++17 -fPIC -shared -pthread \
      -isystem "$(python3 -c 'import jax.ffi; print(jax.ffi.include_dir())')" csrc/hq_topk.cc -o build/libhq_topk.so \
      || echo "compiled top-k kernel not built: the retrieval_kernel pair is skipped"
    OUT="${OUT:-results/bench/gpu}"
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia_smi.csv" || true
    set -o pipefail
    python3 -m experiments.gpu_bench --gowalla_dir=.gpudata/gowalla --out="$OUT" --budget_s="${BUDGET_S:-540}" 2>&1 \
      | tee "$OUT/gpu_bench_log.txt"
    ;;
  *)
    echo "usage: bash experiments/gpu_bench.sh prepare|run" >&2
    exit 2
    ;;
esac
