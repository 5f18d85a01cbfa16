"""hq_jax.parallel (mesh and shardings) and hq_jax.hqgnn.sharded (LightGCN's row-split propagation on that mesh):
one-device checks here; the multi-device checks in a subprocess with 8 simulated CPU devices
(tests/parallel_worker.py), since this process has already initialised JAX with one."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, subprocess_env
from parallel_worker import toy_data

from hq_jax import parallel
from hq_jax.errors import UserError
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import sharded as sharded_lib

FLOAT_TOL = 1e-5  # float32 sums in another order


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  """The JSON of tests/parallel_worker.py run on 8 simulated devices (all checks, one process)."""
  env = subprocess_env()
  env["PYTHONPATH"] = str(REPO / "tests") + os.pathsep + env["PYTHONPATH"]
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  workdir = tmp_path_factory.mktemp("parallel_worker")
  out = subprocess.run([sys.executable, str(REPO / "tests" / "parallel_worker.py"), "propagation", "training",
                        "padded", "checkpoint", f"--workdir={workdir}"], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  assert results["devices"] == 8
  return results


# ----------------------------------------------------------------------------------------------------------
# One device: mesh, padding, shardings, blocks.
# ----------------------------------------------------------------------------------------------------------


def test_parallel_imports_no_model_family():
  """parallel.py is shared by both model families: it imports neither (LightGCN's propagation lives in
  hqgnn/sharded.py, which imports parallel, not the other way round)."""
  import ast
  tree = ast.parse((REPO / "hq_jax" / "parallel.py").read_text())
  imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
  imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  assert not [m for m in imported if m and m.startswith(("hq_jax.hqgnn", "hq_jax.ctr"))], imported


def test_default_mesh_works_on_one_device():
  mesh = parallel.mesh_from_config(1, 1, devices=jax.devices()[:1])
  assert mesh.axis_names == ("data", "model") and mesh.shape == {"data": 1, "model": 1}


@pytest.mark.parametrize("data, model, names", [(2, 1, "config.mesh.data=2"), (1, 3, "config.mesh.model=3"),
                                                (0, 1, "config.mesh.data=0")])
def test_mesh_that_does_not_match_the_devices_is_a_user_error(data, model, names):
  with pytest.raises(UserError, match=names):
    parallel.mesh_from_config(data, model, devices=jax.devices()[:1])


def test_batch_size_must_divide_over_data():
  mesh = parallel.mesh_from_config(1, 1, devices=jax.devices()[:1])
  parallel.check_batch_size(7, mesh)  # one data shard: anything goes
  fake = type("FakeMesh", (), {"shape": {"data": 4, "model": 2}})()
  with pytest.raises(UserError, match="config.train.batch_size=6"):
    parallel.check_batch_size(6, fake)


@pytest.mark.parametrize("rows, shape, multiple, want", [
    (87, {"data": 1, "model": 1}, 0, 87),  # one block: no padding, the single-device layout
    (87, {"data": 4, "model": 2}, 0, 88),
    (87, {"data": 4, "model": 2}, 16, 96),
    (96, {"data": 1, "model": 8}, 0, 96),
])
def test_padded_rows(rows, shape, multiple, want):
  fake = type("FakeMesh", (), {"shape": shape})()
  assert parallel.padded_rows(rows, fake, multiple) == want


def test_row_multiple_must_be_a_multiple_of_the_blocks():
  fake = type("FakeMesh", (), {"shape": {"data": 4, "model": 2}})()
  with pytest.raises(UserError, match="config.mesh.row_multiple=12"):
    parallel.padded_rows(87, fake, 12)


def test_pad_rows_keeps_the_rows_and_appends_zeros():
  x = np.arange(6.0).reshape(3, 2)
  np.testing.assert_array_equal(parallel.pad_rows(x, 5), np.vstack([x, np.zeros((2, 2))]))
  with pytest.raises(ValueError):
    parallel.pad_rows(x, 2)


def test_state_shardings_follow_the_table_and_replicate_the_rest():
  mesh = parallel.mesh_from_config(1, 1, devices=jax.devices()[:1])
  tx = optax.adam(1e-3)

  def init():
    table = jax.random.normal(jax.random.key(0), (12, 4))
    return {"table": table, "opt": tx.init(table), "scale": jnp.ones(()), "users": jnp.ones((5, 4))}

  shardings = parallel.state_shardings(jax.eval_shape(init), mesh, table_rows=12)
  state = jax.jit(init, out_shardings=shardings)()
  specs = jax.tree.map(lambda x: tuple(x.sharding.spec), state)
  assert specs["table"] == ("model",) and specs["opt"][0].mu == ("model",) and specs["opt"][0].nu == ("model",)
  assert specs["opt"][0].count == () and specs["scale"] == () and specs["users"] == ()


def _dense(rows, cols, weights, n):
  a = np.zeros((n, n))
  a[rows, cols] = weights
  return a


@pytest.mark.parametrize("exchange", sharded_lib.EXCHANGES)
@pytest.mark.parametrize("blocks, num_rows", [(1, 87), (2, 88), (8, 88), (4, 96)])
def test_blocks_hold_exactly_the_rows_of_a_tilde(exchange, blocks, num_rows):
  """Each block, read back through its column map, is its slice of the dense A~ (padded rows empty)."""
  graph = graph_lib.bipartite_graph(toy_data(num_users=37, num_items=50))
  receivers, senders, weights = (np.asarray(x) for x in (graph.receivers, graph.senders, graph.edges))
  want = _dense(receivers, senders, weights, num_rows)
  arrays = sharded_lib.block_csr_arrays(receivers, senders, weights, num_rows, blocks, exchange)
  rows = num_rows // blocks
  for b in range(blocks):
    indptr = arrays["indptr"][b]
    nnz = indptr[-1]
    row_of = np.repeat(np.arange(rows), np.diff(indptr))
    cols = arrays["indices"][b, :nnz]
    assert np.all(arrays["data"][b, nnz:] == 0)
    if exchange == "needed":  # column q C + j is row send[q, b, j] of block q
      c = arrays["send"].shape[-1]
      cols = (cols // c) * rows + arrays["send"][cols // c, b, cols % c]
    for r in range(rows):  # sorted, unique columns within each row (the kernel's flags)
      row_cols = arrays["indices"][b, indptr[r] : indptr[r + 1]]
      assert np.all(np.diff(row_cols) > 0)
    got = _dense(b * rows + row_of, cols, arrays["data"][b, :nnz], num_rows)[b * rows : (b + 1) * rows]
    np.testing.assert_allclose(got, want[b * rows : (b + 1) * rows], rtol=1e-6)


def test_one_block_equals_csr_aggregate_on_one_device():
  graph = graph_lib.bipartite_graph(toy_data(num_users=37, num_items=50))
  mesh = parallel.mesh_from_config(1, 1, devices=jax.devices()[:1])
  sadj = sharded_lib.sharded_csr_adjacency(graph, mesh)
  h = jax.random.normal(jax.random.key(1), (87, 4))
  want = graph_lib.csr_aggregate(graph_lib.csr_adjacency(graph), h)
  np.testing.assert_allclose(np.asarray(graph_lib.make_aggregate(None, sadj, "csr")(h)), np.asarray(want),
                             rtol=1e-6, atol=1e-7)


def test_put_and_gather_round_trip():
  mesh = parallel.mesh_from_config(1, 1, devices=jax.devices()[:1])
  tree = {"a": np.arange(8.0).reshape(4, 2), "b": np.int32(3)}
  placed = parallel.put(tree, parallel.replicated(mesh))
  assert placed["a"].sharding.mesh.shape == mesh.shape
  back = parallel.gather(placed)
  np.testing.assert_array_equal(back["a"], tree["a"])
  assert int(back["b"]) == 3


# ----------------------------------------------------------------------------------------------------------
# Eight simulated devices (the worker's results).
# ----------------------------------------------------------------------------------------------------------


def test_sharded_propagation_equals_unsharded(worker):
  cases = worker["propagation"]
  assert set(cases) >= {"8x1/all_gather", "1x8/all_gather", "4x2/all_gather", "1x1/all_gather", "4x2/needed"}
  for name, c in cases.items():
    assert c["forward"] < FLOAT_TOL and c["grad"] < FLOAT_TOL and c["value"] < 1e-4, (name, c)
    assert c["padded_rows_out"] == 0.0 and c["padded_rows_grad"] == 0.0, (name, c)  # padding stays zero
  assert cases["4x2/all_gather"]["rows"] == 88 and cases["1x1/all_gather"]["rows"] == 87


def test_training_steps_on_eight_devices_equal_one_device(worker):
  """The trainer's own model and make_train_step (full precision and 2-bit STE), 4 Adam steps."""
  for name, c in worker["training"].items():
    assert c["losses"] < FLOAT_TOL and c["params"] < FLOAT_TOL and c["opt_state"] < FLOAT_TOL, (name, c)
    assert c["specs"] == {"table": "P('model',)", "adam_mu": "P('model',)", "table_after": "P('model',)"}, name
  assert worker["training"]["2/4x2"]["loss_change"] > 0  # the steps trained something


def test_padded_table_trains_like_the_unpadded_one(worker):
  for name, c in worker["padded"].items():
    assert c["losses"] < FLOAT_TOL and c["table"] < FLOAT_TOL, (name, c)
    assert c["padded_rows_max"] == 0.0 and c["padded_mu_max"] == 0.0, (name, c)  # zero rows stay zero


def test_checkpoint_from_4x2_restores_onto_other_meshes(worker):
  for name, c in worker["checkpoint"].items():
    assert c["max_err"] == 0.0 and c["mesh_matches"], (name, c)
    assert c["table_spec"] == "P('model',)" and c["mu_spec"] == "P('model',)", (name, c)
  assert worker["checkpoint"]["4x2->1x1"]["table_devices"] == 1
  assert worker["checkpoint"]["4x2->2x4"]["table_devices"] == 8
