"""Every backend-dependent choice is read from `jax.default_backend()` (`hq_jax.backend`), and each GPU / TPU
choice gives the CPU choice's result (run here on CPU, with `jax.default_backend` reporting another backend).

Patching `jax.default_backend` changes only what the library *chooses* (kernels, tiles, batch sizes, host
copies); the arrays still live on this CPU, so the two choices' results can be compared exactly.
"""

import importlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax import backend, evaluation
from hq_jax.data.interactions import InteractionData, to_csr
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.retrieval import scoring
from hq_jax.retrieval import sharded

# `hq_jax.retrieval.topk` the attribute is the function (re-exported); this is the module.
topk_lib = importlib.import_module("hq_jax.retrieval.topk")
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def on_backend(monkeypatch):
  """on_backend(name): from now on `jax.default_backend()` reports `name` (the devices stay the CPU's)."""

  def set_backend(name: str):
    monkeypatch.setattr(jax, "default_backend", lambda: name)

  return set_backend


# ---------------------------------------------------------------------------------------------- the table


@pytest.mark.parametrize("name, want", [("cpu", backend.CPU), ("gpu", backend.GPU), ("cuda", backend.GPU),
                                        ("rocm", backend.GPU), ("tpu", backend.TPU), ("METAL", backend.CPU)])
def test_tunings_follow_default_backend(on_backend, name, want):
  on_backend(name)
  assert backend.tunings() == want


def test_cpu_tunings_are_the_measured_values():
  """The CPU values results/retrieval.md and results/foundation.md were measured with."""
  assert (backend.CPU.item_tile, backend.CPU.block_items, backend.CPU.batch_users) == (1024, 65536, 1024)
  assert (backend.CPU.one_bit_kind, backend.CPU.wide_kind, backend.CPU.sparse_kernel) == (
      "hamming", "float_when_exact", "bcsr")
  assert not backend.CPU.defer_host_copies
  assert topk_lib.TILE == backend.CPU.item_tile and evaluation.DEFAULT_BATCH_SIZE == backend.CPU.batch_users


def test_no_other_module_reads_the_backend():
  """The choices live in hq_jax/backend.py only: no other library module asks which backend it runs on."""
  offenders = []
  for path in (REPO / "hq_jax").rglob("*.py"):
    if path.name == "backend.py":
      continue
    text = path.read_text()
    if re.search(r"default_backend\s*\(|jax\.devices\(\)\[0\]\.platform\s*==|\.platform\s*==\s*['\"]", text):
      offenders.append(str(path.relative_to(REPO)))
  assert not offenders, offenders


# ------------------------------------------------------------------------------------- the choices made


@pytest.mark.parametrize("name, one_bit, four_bit, eight_bit_d64", [
    ("cpu", "hamming", "matmul", "matmul"),
    ("gpu", "int8", "int8", "int8"),
    ("tpu", "int8", "int8", "int8"),
])
def test_auto_layer_kind_per_backend(on_backend, name, one_bit, four_bit, eight_bit_d64):
  on_backend(name)
  assert scoring._layer_kind(1, 64, "auto").kind == one_bit
  assert scoring._layer_kind(4, 64, "auto").kind == four_bit
  assert scoring._layer_kind(8, 64, "auto").kind == eight_bit_d64
  assert scoring._layer_kind(8, 1024, "auto").kind == "int8"  # d 4^7 >= 2^24: int8 everywhere
  for method, kind in [("hamming", "hamming"), ("sign_matmul", "sign_matmul"), ("int8", "int8")]:
    assert scoring._layer_kind(1, 64, method).kind == kind  # an explicit method is never overridden


@pytest.mark.parametrize("name, tile_64k, block_gowalla", [("cpu", 1024, 41984), ("gpu", 65536, 40992)])
def test_tiles_and_blocks_per_backend(on_backend, name, tile_64k, block_gowalla):
  on_backend(name)
  assert topk_lib.tile_size(65536, "matmul") == tile_64k
  assert topk_lib.tile_size(65536, "hamming") == 65536
  assert topk_lib.block_size(40981, None, "matmul") == block_gowalla  # Gowalla: one block (CPU: whole tiles)
  wanted_block = backend.tunings().block_items
  assert topk_lib.block_size(10 ** 7, None, "int8") == wanted_block


@pytest.mark.parametrize("name, kernel", [("cpu", "bcsr"), ("gpu", "segment"), ("tpu", "segment")])
def test_graph_kernel_per_backend(on_backend, name, kernel):
  on_backend(name)
  adj = graph_lib.csr_adjacency(graph_lib.bipartite_graph(_random_data()))
  assert adj.kernel == kernel


@pytest.mark.parametrize("name, deferred", [("cpu", False), ("gpu", True)])
def test_search_host_copies_per_backend(on_backend, monkeypatch, name, deferred):
  """CPU: each batch's result is fetched before the next batch is dispatched; GPU: all are dispatched first."""
  on_backend(name)
  events = []
  real_key_values = topk_lib.key_values
  monkeypatch.setattr(topk_lib, "key_values", lambda *a: (events.append("fetch"), real_key_values(*a))[1])
  rng = np.random.default_rng(0)
  users, items = rng.normal(size=(10, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
  indptr, indices = _exclusions(rng, 10, 300)
  _, _, _, num_items, prepared, table = topk_lib.prepare_search(users, items, indptr, indices,
                                                                np.arange(10), 5, "auto")
  blocked_table, _ = topk_lib.pad_table(table)

  def search_fn(*args):
    events.append("dispatch")
    return topk_lib.search_blocks(*args, k=5, num_items=num_items, item_tile=backend.tunings().item_tile)

  topk_lib.search_prepared(prepared, blocked_table, num_items, indptr, indices, np.arange(10), 5,
                           batch_users=3, search_fn=search_fn)
  want = ["dispatch"] * 4 + ["fetch"] * 4 if deferred else ["dispatch", "fetch"] * 4
  assert events == want


# ------------------------------------------------------- every GPU choice gives the CPU choice's result


def _random_data(num_users=13, num_items=17, nnz=60, seed=0) -> InteractionData:
  rng = np.random.default_rng(seed)
  users = rng.integers(0, num_users, nnz)
  items = rng.integers(0, num_items, nnz)
  train, _ = to_csr(users, items, num_users, num_items)
  test, _ = to_csr(users[:40], items[:40] * 0 + rng.integers(0, num_items, 40), num_users, num_items)
  return InteractionData("toy", num_users, num_items, train, test, {})


def _exclusions(rng, nu, ni, max_len=40):
  lens = rng.integers(0, max_len, nu)
  indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
  indices = np.concatenate([np.sort(rng.choice(ni, n, replace=False)) for n in lens]).astype(np.int32)
  return indptr, indices


@pytest.mark.parametrize("seed", [0, 1])
def test_segment_kernel_equals_bcsr(seed):
  """LightGCN propagation and its gradient: the GPU's sorted segment sum == the CPU's BCSR kernel."""
  data = _random_data(num_users=40, num_items=55, nnz=300, seed=seed)  # some nodes isolated (empty rows)
  graph = graph_lib.bipartite_graph(data)
  base = graph_lib.csr_adjacency(graph)
  bcsr = graph_lib.CSRAdjacency(base.data, base.indices, base.indptr, base.num_nodes, kernel="bcsr")
  segment = graph_lib.CSRAdjacency(base.data, base.indices, base.indptr, base.num_nodes, kernel="segment")
  e0 = jnp.asarray(np.random.default_rng(seed).normal(size=(base.num_nodes, 16)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(seed + 7).normal(size=(base.num_nodes, 16)), jnp.float32)

  @jax.jit
  def loss(e, adj):
    out = graph_lib.lightgcn_propagate(lambda h: graph_lib.csr_aggregate(adj, h), e, 3)
    return jnp.sum(out * w), out

  (l_b, out_b), g_b = jax.value_and_grad(loss, has_aux=True)(e0, bcsr)
  (l_s, out_s), g_s = jax.value_and_grad(loss, has_aux=True)(e0, segment)
  assert np.abs(np.asarray(out_b)).max() > 0.1  # a real propagation, not zeros
  np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_s), np.asarray(g_b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(l_s), float(l_b), rtol=1e-5)


def _codes(rng, n, d, bits):
  if bits == 1:
    return QuantizedMatrix(jnp.asarray(rng.choice([-1, 1], (n, d)), jnp.int8), jnp.float32(0.5),
                           jnp.float32(0), 1)
  return QuantizedMatrix(jnp.asarray(rng.integers(0, 1 << bits, (n, d)), jnp.uint8), jnp.float32(0.25),
                         jnp.float32(-1.0), bits)


@pytest.mark.parametrize("bits", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("sharded_search", [False, True])
def test_gpu_choices_give_the_cpu_ranking(on_backend, bits, sharded_search):
  """'auto' top-k under the GPU tunings (int8 kinds, whole-block tiles, other block / batch sizes, deferred
  host copies) == under the CPU's (XOR/popcount, float32-while-exact, 1024-item tiles): keys and ids exactly.

  2,100 items and d = 64: several CPU tiles per block, int8 and popcount on the same 1-bit codes, and many
  exact ties at 1 bit (ties must break by item id the same way on both).
  """
  rng = np.random.default_rng(bits)
  nu, ni, d, k = 70, 2100, 64, 20
  if bits == 0:
    users = rng.normal(size=(nu, d)).astype(np.float32)
    items = rng.normal(size=(ni, d)).astype(np.float32)
  else:
    users, items = _codes(rng, nu, d, bits), _codes(rng, ni, d, bits)
  indptr, indices = _exclusions(rng, nu, ni, 300)
  query = rng.permutation(nu)[:50]
  search = sharded.sharded_topk if sharded_search else topk_lib.topk
  results = {}
  for name in ("cpu", "gpu"):
    on_backend(name)
    results[name] = search(users, items, indptr, indices, query, k)  # the backend's block, batch and tile
  (s_cpu, i_cpu), (s_gpu, i_gpu) = results["cpu"], results["gpu"]
  np.testing.assert_array_equal(i_gpu, i_cpu)
  if bits == 0 and not sharded_search:  # float rows: the CPU's compiled kernel sums in another float32 order
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-5)
  else:
    np.testing.assert_array_equal(s_gpu, s_cpu)
  assert (i_cpu >= 0).all()


def test_int8_kind_ranks_like_hamming_with_ties(on_backend):
  """1 bit, d = 8: only 9 distinct scores, so almost every position is a tie that the ids must break."""
  rng = np.random.default_rng(3)
  users, items = _codes(rng, 30, 8, 1), _codes(rng, 500, 8, 1)
  indptr, indices = _exclusions(rng, 30, 500, 50)
  out = {}
  for name in ("cpu", "gpu"):
    on_backend(name)
    table = scoring.prepare_items(items, users)
    assert table.kind == {"cpu": "hamming", "gpu": "int8"}[name]
    out[name] = topk_lib.topk(users, items, indptr, indices, np.arange(30), 50)
  np.testing.assert_array_equal(out["gpu"][1], out["cpu"][1])
  np.testing.assert_array_equal(out["gpu"][0], out["cpu"][0])


@pytest.mark.parametrize("bits", [0, 1, 4])
def test_evaluation_metrics_same_on_both_tunings(on_backend, bits):
  rng = np.random.default_rng(11)
  data = _random_data(num_users=60, num_items=1500, nnz=3000, seed=4)
  d = 32
  if bits == 0:
    users = rng.normal(size=(60, d)).astype(np.float32)
    items = rng.normal(size=(1500, d)).astype(np.float32)
  else:
    users, items = _codes(rng, 60, d, bits), _codes(rng, 1500, d, bits)
  metrics = {}
  for name in ("cpu", "gpu"):
    on_backend(name)
    metrics[name] = evaluation.evaluate(users, items, data)
  assert metrics["gpu"] == metrics["cpu"]
  assert metrics["cpu"]["num_eval_users"] > 10


def test_override_sets_every_choice_and_is_restored(on_backend):
  """`backend.override` (used by experiments/gpu_bench.py to time both sides of a choice) reaches the same
  call sites as the backend itself, and the backend's own tunings come back after the block."""
  on_backend("cpu")
  with backend.override(backend.GPU):
    assert backend.tunings() is backend.GPU
    assert scoring._layer_kind(1, 64, "auto").kind == "int8"
    assert topk_lib.tile_size(65536, "matmul") == 65536
    assert graph_lib.csr_adjacency(graph_lib.bipartite_graph(_random_data())).kernel == "segment"
  assert backend.tunings() is backend.CPU
  assert scoring._layer_kind(1, 64, "auto").kind == "hamming"
