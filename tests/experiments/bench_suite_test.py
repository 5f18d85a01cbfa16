"""The benchmark suite's and the GPU script's bookkeeping: parsing what the binaries print, pairing each
measurement with its peer, and the roofline arithmetic (the binaries themselves run in `make bench`)."""

import numpy as np
import pytest

from experiments import bench_suite, gpu_bench
from hq_jax.retrieval import benchmark


def test_mpe_rows_parse_as_bench_mpe_step_prints_them():
  # The exact f-string of experiments/bench_mpe_step.py's table rows.
  rows = [(1_000_000, "fp", "dense_adam", 0.0123, 0.0123), (1_000_000, "mpe-search", "dense_adam", 0.0456, 0.0123)]
  for n, method, opt, t, first in rows:
    line = f"| {n:,} | {method} | {opt} | {t * 1e3:.1f} | {t / first:.2f}x |"
    m = bench_suite._MPE_ROW.match(line)
    assert m is not None, line
    assert (int(m[1].replace(",", "")), m[2], m[3], float(m[4])) == (n, method, opt, round(t * 1e3, 1))
  assert bench_suite._MPE_ROW.match("| table rows | step | table optimizer | median ms | vs first |") is None


def test_every_profiled_method_has_its_faiss_peer():
  for name, profile in bench_suite.PROFILES.items():
    assert set(profile) == set(bench_suite.PARTS), name
    jax_methods = profile["retrieval"]["methods"].split(",")
    faiss = profile["retrieval"]["faiss"].split(",")
    assert set(jax_methods) <= set(benchmark.JAX_METHODS), name
    assert set(faiss) <= set(benchmark.FAISS_METHODS), name
    for m in jax_methods:
      assert bench_suite.FAISS_PEER[m] in faiss, (name, m)


def test_epoch_log_lines_parse():
  line = "epoch 12/20  loss 0.41234  bpr 0.40000  grad_norm 0.1234  0.64 s/epoch  delta 0.0012"
  m = bench_suite._EPOCH_LOG.match(line)
  assert (int(m[1]), float(m[2])) == (12, 0.64)


def _summary(parts):
  return {"date": "2026-11-30T00:00:00+00:00", "profile": "cpu", "command": "python -m experiments.bench_suite",
          "machine": "test box", "backend": "cpu", "devices": ["cpu:0"], "jax": "0", "jaxlib": "0",
          "versions": {"numpy": "2"}, "git": {"commit": "abc", "tracked_files_modified": False},
          "load_before": [1, 1, 1], "load_after": [2, 2, 2], "wall_s": 60.0, "parts": parts}


def test_markdown_shows_each_ratio_and_each_failure():
  parts = {
      "mpe": {"command": "python -m experiments.bench_mpe_step", "wall_s": 10.0, "status": "ok",
              "result": {"steps": [{"table_rows": 1000, "step": "fp", "table_optimizer": "dense_adam",
                                    "median_ms": 2.0, "vs_fp": 1.0},
                                   {"table_rows": 1000, "step": "mpe-search", "table_optimizer": "dense_adam",
                                    "median_ms": 5.0, "vs_fp": 2.5}]}},
      "epoch": {"command": "python -m experiments.bench_epoch", "wall_s": 3.0, "status": "failed", "returncode": 1,
                "stderr_tail": ["bench_epoch: error: something broke"]},
  }
  text = bench_suite.markdown(_summary(parts))
  assert "| 1,000 | mpe-search | dense_adam | 5.0 | 2.50x |" in text
  assert "bench_epoch: error: something broke" in text and "**failed** (exit 1)" in text
  assert "| epoch | failed | 3 |" in text


@pytest.mark.parametrize("kind, unit, ops_per_pair", [("hamming", "popcounts_per_s", 2), ("int8", "int8_ops_per_s", 128),
                                                      ("float", "f32_highest_flops_per_s", 128),
                                                      ("matmul", "f32_highest_flops_per_s", 128)])
def test_op_counts(kind, unit, ops_per_pair):
  got_unit, ops = gpu_bench.op_counts(kind, 10, 100, 64)
  assert got_unit == unit and ops == 10 * 100 * ops_per_pair


def test_roofline_takes_the_larger_floor():
  w = benchmark.Workload(np.zeros((1000, 64), np.float32), np.broadcast_to(np.float32(0), (1_000_000, 64)), np.arange(1000),
                         np.zeros(1001, np.int64), np.zeros(0, np.int32), 20)
  ceil = {"copy_bytes_per_s": 1e12, "int8_ops_per_s": 1e15, "popcounts_per_s": 1e12,
          "f32_highest_flops_per_s": 1e13}
  row = {"kind": "int8", "code_bytes": 64_000_000, "median_s": 0.001}
  r = gpu_bench.roofline(row, w, ceil)
  fewest = 64_000_000 + 64_000 + 1000 * 20 * 8
  assert r["fewest_bytes"] == pytest.approx(fewest)
  assert r["memory_floor_s"] == pytest.approx(fewest / 1e12)
  assert r["ops_floor_s"] == pytest.approx(2 * 64 * 1e9 / 1e15)
  assert r["bound"] == "arithmetic" and r["roofline_floor_s"] == pytest.approx(1.28e-4)
  assert r["roofline_fraction"] == pytest.approx(0.128)
  assert r["scores_through_memory_floor_s"] == pytest.approx(8e9 / 1e12)
