"""The retrieval benchmark binary end to end on a tiny synthetic workload, and its bad-input exits."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, subprocess_env

from hq_jax import export
from hq_jax.quant import quantizer


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.bench_retrieval", *args], capture_output=True,
                        text=True, cwd=REPO, env=subprocess_env(), timeout=300)


def test_tiny_synthetic_run_writes_json_and_table(tmp_path):
  pytest.importorskip("faiss")
  out = tmp_path / "bench"
  proc = _run("--num_users=40", "--num_items=700", "--dim=64", "--k=5", "--repeats=1", "--batch_users=16",
              "--block_items=256", "--methods=float32,1bit_xor_popcount,4bit_int8",
              "--faiss=faiss_flat_ip,faiss_binary_flat", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((out.with_suffix(".json")).read_text())
  rows = {r["method"]: r for r in result["methods"] if r["kernel"] in ("jax", "faiss")}  # the JAX search's rows
  assert set(rows) == {"float32", "1bit_xor_popcount", "4bit_int8", "faiss_flat_ip", "faiss_binary_flat"}
  kernels = {r["kernel"] for r in result["methods"]} - {"faiss"}  # + "native" where the kernel is built
  assert kernels == set(result["kernels"]) and "jax" in kernels
  for r in result["methods"]:  # both searches: the same ranking, each with its ceiling
    if r["kernel"] == "native":
      assert r["recall"] == rows[r["method"]]["recall"] and 0 < r["fraction_of_ceiling"]
  # Same vectors, same exact float ranking: FAISS FlatIP and the JAX float path agree, and the JAX and
  # FAISS 1-bit searches rank the same sign codes (up to ties at the K-th Hamming distance).
  assert rows["float32"]["recall"] == 1.0 and rows["faiss_flat_ip"]["recall"] > 0.99
  assert abs(rows["1bit_xor_popcount"]["recall"] - rows["faiss_binary_flat"]["recall"]) < 0.1
  assert rows["1bit_xor_popcount"]["code_bytes"] == 700 * 8
  for kernel in kernels:
    assert f"1bit_xor_popcount[{kernel}]/faiss_binary_flat" in result["time_ratios"]
  assert "| 1bit_xor_popcount |" in out.with_suffix(".md").read_text()


def test_new_representations_and_export_codes_without_faiss(tmp_path):
  """Per-row scales (float32 and 8-bit) and layer-wise codes from the synthetic floats; then a quantized
  export, whose own integer codes are searched first ("export") and equal the exact ranking."""
  out = tmp_path / "bench"
  proc = _run("--num_users=40", "--num_items=700", "--dim=64", "--k=5", "--repeats=1", "--batch_users=16",
              "--block_items=256", "--faiss=",
              "--methods=float32,1bit_row32_xor_popcount,1bit_row8_xor_popcount,1bit_4layers_row8", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = {r["method"]: r for r in json.loads(out.with_suffix(".json").read_text())["methods"]}
  assert rows["1bit_row32_xor_popcount"]["key_tier"] in ("i32", "limbs")  # 64 G_i: 24-bit G, one binade or more
  assert rows["1bit_row8_xor_popcount"]["key_tier"] in ("i32", "f32")
  assert rows["1bit_4layers_row8"]["kind"] == "mixed"
  rng = np.random.default_rng(0)
  users, items = (quantizer.quantize(rng.standard_normal((n, 32)), 8) for n in (30, 500))
  export.save_export(str(tmp_path / "e.npz"), users, items)
  proc = _run(f"--export={tmp_path / 'e.npz'}", "--k=5", "--repeats=1", "--faiss=", "--methods=float32",
              f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = {r["method"]: r for r in json.loads(out.with_suffix(".json").read_text())["methods"]}
  assert set(rows) == {"float32"}  # --methods given: only those
  proc = _run(f"--export={tmp_path / 'e.npz'}", "--k=5", "--repeats=1", "--faiss=", "--methods=export,float32",
              f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = {r["method"]: r for r in json.loads(out.with_suffix(".json").read_text())["methods"]}
  assert rows["export"]["bits"] == 8 and rows["export"]["key_tier"] == "f32"
  assert rows["export"]["recall"] > 0.9  # the codes' own ranking against the float32 ranking of their floats


@pytest.mark.parametrize("name, args, message", [
    ("unknown_method", ["--methods=2bit_magic"], "unknown method(s) 2bit_magic"),
    ("k_too_large", ["--num_items=10", "--k=11"], "--k=11 must be between 1 and the number of items"),
    ("missing_export", ["--export=/nonexistent/export.npz"], "export file not found"),
    ("export_method_without_export", ["--methods=export"], "unknown method(s) export"),
])
def test_bad_input_exits_2_with_one_line(name, args, message):
  proc = _run("--num_users=4", "--num_items=50", "--faiss=", *args)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
  assert proc.stderr.startswith("bench_retrieval: error:")
