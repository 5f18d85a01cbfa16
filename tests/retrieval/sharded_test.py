"""Sharded retrieval on 8 simulated CPU devices equals the single-device result.

Runs in a subprocess: the device-count flag must be set before jax is imported, and other test modules in
the same pytest-xdist worker must keep their single device.
"""

import subprocess
import sys
import textwrap

from conftest import subprocess_env

SCRIPT = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax, numpy as np
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
  for bits, method in [(0, "float"), (1, "hamming"), (1, "sign_matmul"), (4, "int_matmul")]:
    ur, ir = (quantize(u, bits), quantize(v, bits)) if bits else (u, v)
    users = np.arange(nu)
    a = topk(ur, ir, indptr, ind, users, k, block_items=128, batch_users=16, method=method)
    b = sharded_topk(ur, ir, indptr, ind, users, k, mesh=item_mesh(8), block_items=128, batch_users=16,
                     method=method)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    print("ok", bits, method)
""")


def test_sharded_equals_single_device():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=subprocess_env(),
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("ok") == 4
