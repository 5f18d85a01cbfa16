"""The benchmark suite's and the GPU script's bookkeeping: parsing what the binaries print, pairing each
measurement with its peer, the summary's headings, where a run's files go, and the roofline arithmetic (the
binaries themselves run in `make bench`; bench_mpe_step once here, at toy sizes, for what it prints)."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, subprocess_env
from experiments import bench_suite, gpu_bench
from hq_jax.errors import UserError
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


def test_bench_mpe_step_prints_its_table_once_and_writes_the_same(tmp_path):
  out = tmp_path / "mpe.md"
  proc = subprocess.run([sys.executable, "-m", "experiments.bench_mpe_step", "--num_features=64", "--num_fields=2",
                         "--batch_size=8", "--dim=4", "--hidden=4", "--reps=1", "--warmup=0",
                         "--methods=fp", f"--output={out}"], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line for line in proc.stdout.splitlines() if bench_suite._MPE_ROW.match(line.strip())]
  assert [r.split("|")[2].strip() for r in rows] == ["fp"], proc.stdout  # printed twice before
  assert proc.stdout.count("| table rows |") == 1 and proc.stdout.count("Command:") == 1, proc.stdout
  assert out.read_text() == proc.stdout


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
  line = "epoch 12/20  loss 0.41234  bpr 0.40000  grad_norm 0.1234  0.64 s/epoch  delta items 0.03117 users 0.03262"
  m = bench_suite._EPOCH_LOG.match(line)
  assert (int(m[1]), float(m[2])) == (12, 0.64)


def _summary(parts):
  return {"date": "2026-11-30T00:00:00+00:00", "profile": "cpu", "command": "python -m experiments.bench_suite",
          "machine": "test box", "backend": "cpu", "devices": ["cpu:0"], "jax": "0", "jaxlib": "0",
          "versions": {"numpy": "2"}, "git": {"commit": "abc", "tracked_files_modified": False},
          "load_before": [1, 1, 1], "load_after": [2, 2, 2], "wall_s": 60.0, "parts": parts}


@pytest.mark.parametrize("data_dir, title", [("lastfm", "LastFM"), ("../shared/data/gowalla/", "Gowalla"),
                                             ("/data/my_graph", "my_graph")])
def test_dataset_title(data_dir, title):
  assert bench_suite.dataset_title(data_dir) == title


def test_headings_name_the_data_each_part_ran_on():
  # The tiny profile: LastFM epoch and curvature runs, synthetic retrieval sizes.
  tiny = bench_suite.PROFILES["tiny"]
  parts = {"epoch": {"command": "c", "wall_s": 1.0, "status": "failed", "returncode": 1, "stderr_tail": [],
                     "data": bench_suite.dataset_title(tiny["epoch"]["data_dir"])},
           "retrieval": {"command": "c", "wall_s": 1.0, "status": "failed", "returncode": 1, "stderr_tail": [],
                         "data": None},
           "curvature": {"command": "c", "wall_s": 1.0, "status": "failed", "returncode": 1, "stderr_tail": [],
                         "data": bench_suite.dataset_title(tiny["curvature"]["data_dir"])}}
  headings = [line for line in bench_suite.markdown(_summary(parts)).splitlines() if line.startswith("## ")]
  assert headings[:3] == [
      "## LightGCN training step on LastFM (`experiments.bench_epoch`)",
      "## All-user top-20 retrieval (`experiments.bench_retrieval`)",
      "## Curvature-update overhead: 1-bit GSTE (Hutchinson trace delta) vs STE, LastFM (`experiments.hqgnn`)"]
  parts["retrieval"]["data"] = "Gowalla"
  assert "## All-user top-20 retrieval at Gowalla size (" in bench_suite.markdown(_summary(parts))


def test_a_missing_gowalla_folder_is_one_line_before_any_part_runs(tmp_path):
  missing = str(tmp_path / "gowalla")
  with pytest.raises(UserError, match=r"^--data_dir=.*gowalla: no such folder; the epoch and retrieval parts of "
                                      r"the cpu profile read Gowalla"):
    bench_suite.check_data_dir(["epoch", "retrieval", "mpe"], "cpu", missing)
  with pytest.raises(UserError, match="the retrieval part of the gpu profile reads Gowalla"):
    bench_suite.check_data_dir(["retrieval"], "gpu", missing)
  bench_suite.check_data_dir(list(bench_suite.PARTS), "tiny", missing)  # LastFM and toy sizes: no data needed
  bench_suite.check_data_dir(["mpe", "curvature"], "cpu", missing)
  bench_suite.check_data_dir(["epoch"], "cpu", str(tmp_path))


def test_runs_go_to_an_ignored_folder_by_default():
  assert bench_suite._OUT_DIR.default == "runs/bench"
  ignored = subprocess.run(["git", "check-ignore", "-q", "runs/bench/2026-01-01T000000Z_cpu_tiny.json"], cwd=REPO)
  if ignored.returncode == 128:
    pytest.skip("not a git checkout")
  assert ignored.returncode == 0, "runs/bench/ should be ignored by git (.gitignore: /runs/)"


def test_delta_updates_are_counted_from_the_run(tmp_path):
  # 20 epochs at T = 10: one update (before epoch 10), where ceil(20 / 10) = 2 was reported before.
  log = tmp_path / "metrics.jsonl"
  log.write_text('{"step": 11, "epoch": 10, "event": "delta", "delta": {"users": 0.01}}\n'
                 '{"step": 20, "epoch": 20, "recall@20": 0.1}\n')
  assert bench_suite.delta_updates(log) == 1
  run = {"epochs": 20, "train_seconds": 10.0, "curvature_seconds": 2.0, "median_epoch_s_after_first": 0.5,
         "recall@20": 0.1}
  result = {"runs": {"ste": dict(run, curvature_seconds=0.0), "gste": run}, "delta_updates": 1,
            "seconds_per_delta_update": 2.0, "curvature_share_of_gste_training": 0.2,
            "gste_vs_ste_train_seconds": 1.0, "gste_vs_ste_median_epoch": 1.0, "delta_update_vs_ste_epoch": 4.0}
  parts = {"curvature": {"command": "c", "wall_s": 1.0, "status": "ok", "result": result, "data": "LastFM"}}
  assert ("20.0% (1 delta update, 2.00 s per update = 4.00x an STE epoch)"
          in bench_suite.markdown(_summary(parts)))


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
