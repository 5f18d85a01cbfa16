"""End-to-end tests of `python -m experiments.evaluate`, run as a subprocess on the embedded LastFM data."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax import evaluation
from hq_jax import export
from hq_jax.data.interactions import load_dataset
from hq_jax.quant import quantizer
from hq_jax.quant.quantizer import quantize

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run_evaluate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def lastfm():
  return load_dataset("lastfm")


@pytest.fixture(scope="module")
def float_npz(lastfm, tmp_path_factory):
  rng = np.random.default_rng(0)
  users = rng.normal(size=(lastfm.num_users, 16)).astype(np.float32)
  items = rng.normal(size=(lastfm.num_items, 16)).astype(np.float32)
  path = str(tmp_path_factory.mktemp("emb") / "float.npz")
  np.savez(path, user_embeddings=users, item_embeddings=items)
  return path, users, items


def test_float_embeddings_json_equals_in_process(lastfm, float_npz):
  path, users, items = float_npz
  proc = run_evaluate("--data_dir=lastfm", f"--embeddings={path}", "--ks=20,50,7")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  got = json.loads(lines[0])
  assert set(got) == {"recall@20", "ndcg@20", "recall@50", "ndcg@50", "recall@7", "ndcg@7", "num_eval_users"}
  expected = evaluation.evaluate(users, items, lastfm, ks=(20, 50, 7))
  assert got == pytest.approx(expected, rel=1e-6)
  assert got["num_eval_users"] == 1858


def test_quantized_export_equals_in_process(lastfm, tmp_path):
  retrieval = pytest.importorskip("hq_jax.retrieval", reason="hq_jax.retrieval not written yet")
  if not hasattr(retrieval, "ranking_scores"):
    pytest.skip("hq_jax.retrieval.ranking_scores not written yet")
  rng = np.random.default_rng(1)
  uq = quantize(jnp.asarray(rng.normal(size=(lastfm.num_users, 16)), jnp.float32), bits=2)
  iq = quantize(jnp.asarray(rng.normal(size=(lastfm.num_items, 16)), jnp.float32), bits=2)
  path = str(tmp_path / "q.npz")
  np.savez(path, bits=np.int32(2), user_codes=uq.codes, item_codes=iq.codes, user_scale=uq.scale,
           user_offset=uq.offset, item_scale=iq.scale, item_offset=iq.offset)
  proc = run_evaluate(f"--embeddings={path}")
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.strip())
  assert got == pytest.approx(evaluation.evaluate(uq, iq, lastfm), rel=1e-6)


def _row8(x):
  x = jnp.asarray(x, jnp.float32)
  return quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=8)


@pytest.mark.parametrize("name", ["row_scales_8bit", "layered_bigear"])
def test_new_representations_equal_in_process(lastfm, tmp_path, name):
  """Exports written by `save_export` with 8-bit row scales or layer-wise codes score the same through the
  binary as in process."""
  rng = np.random.default_rng(2)
  build = {"row_scales_8bit": lambda n: _row8(rng.normal(size=(n, 16))),
           "layered_bigear": lambda n: quantizer.LayeredQuantized(
               (_row8(rng.normal(size=(n, 8))), quantize(rng.normal(size=(n, 8)), 2),
                _row8(rng.normal(size=(n, 8)))), quantizer.layer_weights(3, "bigear"))}[name]
  users, items = build(lastfm.num_users), build(lastfm.num_items)
  path = str(tmp_path / "e.npz")
  export.save_export(path, users, items)
  proc = run_evaluate(f"--embeddings={path}", "--ks=20")
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.strip()) == pytest.approx(evaluation.evaluate(users, items, lastfm, ks=(20,)),
                                                          rel=1e-6)


@pytest.mark.parametrize("float_users", [False, True])
def test_product_code_export_equals_in_process_with_its_storage(lastfm, tmp_path, float_users):
  """A kind "pq" export (codes on both sides with shared codebooks, or float users) scores through the binary as
  in process, and `--storage` adds its bytes: codes in bits per node, the codebooks beside."""
  from hq_jax.quant import family, pq
  rng = np.random.default_rng(3)
  books = jnp.asarray(rng.normal(size=(4, 16, 4)), jnp.float32)
  code = lambda n: pq.quantize(jnp.asarray(rng.normal(size=(n, 16)), jnp.float32), books, 4)  # noqa: E731
  users = rng.normal(size=(lastfm.num_users, 16)).astype(np.float32) if float_users else code(lastfm.num_users)
  items = code(lastfm.num_items)
  path = str(tmp_path / "pq.npz")
  export.save_export(path, users, items)
  proc = run_evaluate(f"--embeddings={path}", "--ks=20", "--storage")
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.strip())
  stored = family.storage(users, items)
  assert {k: got[k] for k in stored} == stored
  assert got["codebook_bytes"] == 4 * 16 * 4 * 4 and got["item_bits_per_node"] == 16.0
  metrics = {k: v for k, v in got.items() if k not in stored}
  assert metrics == pytest.approx(evaluation.evaluate(users, items, lastfm, ks=(20,)), rel=1e-6)


def test_the_large_dim_case_is_exact(tmp_path):
  """The integer-ranking-large-dim case at d = 4096 (fewer users and items; the old float32 keys fail it):
  8-bit codes must rank exactly like their float64 dequantized scores, so Recall@20 = NDCG@20 = 1."""
  rng = np.random.default_rng(15)
  d, hi, num_users, num_items = 4096, 255, 32, 1000
  cu = np.clip(np.round(rng.normal(hi / 2, hi / 6, size=(num_users, d))), 0, hi).astype(np.uint8)
  ci = np.clip(np.round(rng.normal(hi / 2, hi / 6, size=(num_items, d))), 0, hi).astype(np.uint8)
  su, ou, si, oi = np.float32(0.013), np.float32(-1.7), np.float32(0.011), np.float32(-1.4)
  exact = (np.float64(ou) + np.float64(su) * cu) @ (np.float64(oi) + np.float64(si) * ci).T
  os.makedirs(tmp_path / "data")
  with open(tmp_path / "data" / "train.txt", "w") as tr, open(tmp_path / "data" / "test.txt", "w") as te:
    for u in range(num_users):
      order = np.lexsort((np.arange(num_items), -exact[u]))
      extra = [num_items - 1] if u == 0 and num_items - 1 not in order[:20] and order[-1] != num_items - 1 else []
      tr.write(" ".join(map(str, [u, order[-1], *extra])) + "\n")
      te.write(" ".join(map(str, [u, *order[:20]])) + "\n")
  np.savez(tmp_path / "q8.npz", bits=np.int32(8), user_codes=cu, item_codes=ci, user_scale=su, user_offset=ou,
           item_scale=si, item_offset=oi)
  proc = run_evaluate(f"--data_dir={tmp_path / 'data'}", f"--embeddings={tmp_path / 'q8.npz'}", "--ks=20")
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.strip())
  assert got["recall@20"] == 1.0 and got["ndcg@20"] == pytest.approx(1.0, abs=1e-6)


def write_bad_npz(tmp_path, case, lastfm):
  path = str(tmp_path / f"{case}.npz")
  ones = lambda n, d=8: np.ones((n, d), np.float32)  # noqa: E731
  if case == "missing_file":
    return str(tmp_path / "absent.npz")
  if case == "user_rows":
    np.savez(path, user_embeddings=ones(lastfm.num_users + 1), item_embeddings=ones(lastfm.num_items))
  elif case == "missing_key":
    np.savez(path, user_embeddings=ones(lastfm.num_users))
  elif case == "bad_scale":
    q = quantize(ones(lastfm.num_users), 2)
    np.savez(path, bits=np.int32(2), user_codes=q.codes, item_codes=q.codes, user_scale=np.float32(-1),
             user_offset=q.offset, item_scale=q.scale, item_offset=q.offset)
  return path


ERROR_CASES = [
    # name, extra flags, fragments the one stderr line must contain
    ("missing_file", (), ("file not found",)),
    ("user_rows", (), ("user representation has 1893 rows", "1892 users")),
    ("missing_key", (), ("missing key(s) item_embeddings",)),
    ("bad_scale", (), ("user_scale must be positive",)),
    ("k_too_large", ("--ks=20,5000",), ("K=5000 is larger than the number of items (4489)",)),
]


@pytest.mark.parametrize("name,flags,fragments", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_is_one_error_line(lastfm, tmp_path, float_npz, name, flags, fragments):
  path = float_npz[0] if name == "k_too_large" else write_bad_npz(tmp_path, name, lastfm)
  proc = run_evaluate(f"--embeddings={path}", *flags)
  assert proc.returncode != 0
  assert proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert "Traceback" not in proc.stderr
  assert lines[0].startswith("evaluate: error: ")
  if name != "k_too_large":
    assert path in lines[0]
  for fragment in fragments:
    assert fragment in lines[0]
