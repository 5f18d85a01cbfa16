"""Sharded retrieval on 8 simulated CPU devices equals the single-device result (every key tier: float,
int32, float32 integers, several words, and tables stored in tie-breaking row order).

Runs in a subprocess: the device-count flag must be set before jax is imported, and other test modules in
the same pytest-xdist worker must keep their single device.
"""

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, subprocess_env

SCRIPT = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import sys
  import dataclasses
  import jax, numpy as np
  sys.path.insert(0, "tests")
  import retrieval_ref as ref
  from hq_jax import backend
  from hq_jax.quant import quantizer
  from hq_jax.quant.quantizer import quantize
  from hq_jax.retrieval.sharded import item_mesh, sharded_topk
  from hq_jax.retrieval.topk import topk
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  nu, ni, d, k = 23, 3001, 16, 9  # 3001 items: the last shard is mostly padding
  lens = rng.integers(0, 80, nu)
  indptr = np.concatenate([[0], np.cumsum(lens)])
  ind = np.concatenate([np.sort(rng.choice(ni, n, replace=False)) for n in lens]).astype(np.int32)
  u = rng.standard_normal((nu, d)).astype(np.float32)
  v = rng.standard_normal((ni, d)).astype(np.float32)
  v[::7] = v[0]  # exact ties across shards
  wide_u = rng.standard_normal((nu, 1030)).astype(np.float32)  # 1030 * 128^2 > 2^24: int8 kind
  wide_v = rng.standard_normal((ni, 1030)).astype(np.float32)
  wide_v[::7] = wide_v[0]
  row = lambda x, sb: quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=sb)
  layered = lambda x: quantizer.quantize_layers([x[:, :8], x[:, 8:]], 1, scale_mode="row", scale_bits=8,
                                                weights="bigear")
  cases = [("float", u, v, "float"), ("1bit_hamming", quantize(u, 1), quantize(v, 1), "hamming"),
           ("1bit_sign_matmul", quantize(u, 1), quantize(v, 1), "sign_matmul"),
           ("4bit", quantize(u, 4), quantize(v, 4), "int_matmul"),
           ("8bit_d1030_int8", quantize(wide_u, 8), quantize(wide_v, 8), "auto"),
           ("1bit_row_float32", row(u, 32), row(v, 32), "auto"),
           ("layered_row8", layered(u), layered(v), "auto")]
  for name, ur, ir, method in cases:
    users = np.arange(nu)
    with backend.override(dataclasses.replace(backend.tunings(), retrieval_kernel="jax")):  # its one-device twin
      a = topk(ur, ir, indptr, ind, users, k, block_items=128, batch_users=16, method=method)
    b = sharded_topk(ur, ir, indptr, ind, users, k, mesh=item_mesh(8), block_items=128, batch_users=16,
                     method=method)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    if name.startswith("8bit"):  # and both equal the float64 reference (dyadic-exact enough here: no ties)
      want = ref.reference_topk(ref.float64_scores(ur, ir), indptr, ind, users, k)
      np.testing.assert_array_equal(a[1], want)
    print("ok", name)
""")


@pytest.mark.slow  # make test-all only (measured 2026-11-30: among the slowest)
def test_sharded_equals_single_device():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("ok") == 7
