"""`experiments.crash_resume` on both trainers: SIGKILL at 3 seeded moments each (one at a random time of the
training, one during a checkpoint save, one during the results.json or export.npz write), rerun after each
kill, and the final metrics and export.npz bit-identical to an uninterrupted run.

The full 10-kill run is recorded in results/reliability.md. Here the MPE run uses one epoch per phase (search
and retrain) and all runs share a JAX compilation cache, to keep the test near a minute and a half on a
2-core CPU.
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env


@pytest.mark.slow
def test_three_kills_per_trainer_then_the_same_result(tmp_path):
  report_path = tmp_path / "report.json"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.crash_resume", f"--workdir={tmp_path / 'runs'}", "--kills=3", "--seed=0",
       "--parallel", f"--jax_cache={tmp_path / 'jax_cache'}", f"--output={report_path}",
       "--mpe_args=--config=experiments/configs/mpe_test.py --config.method=mpe --config.train.max_epochs=1"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  reports = {r["binary"]: r for r in json.loads(report_path.read_text())}
  assert set(reports) == {"hqgnn", "mpe"}
  for binary, r in reports.items():
    assert r["bit_identical"] and not r["problems"], (binary, r)
    assert r["kills_landed"] >= 2, (binary, r["attempts"])
    assert r["metrics_log_identical"], (binary, r["metrics_log_differences"])
    assert {a["kind"] for a in r["attempts"]} >= {"time", "checkpoint"}, r["attempts"]
