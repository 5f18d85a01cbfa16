"""The `experiments.mpe` binary end to end on the embedded Criteo sample, one tiny run per method."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "experiments", "configs", "mpe_test.py")


def _run(workdir, *overrides):
  return subprocess.run([sys.executable, "-m", "experiments.mpe", f"--config={CONFIG}",
                         f"--workdir={workdir}", "--config.train.max_epochs=1", *overrides],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", ["fp", pytest.param("lsq", marks=pytest.mark.slow), "alpt",
                                    pytest.param("qr", marks=pytest.mark.slow), "mpe"])
def test_each_method_runs_and_writes_the_workdir(tmp_path, method):
  proc = _run(tmp_path, f"--config.method={method}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["method"] == method
  assert 0.0 < results["test_auc"] < 1.0 and results["test_logloss"] > 0
  assert results["config"]["method"] == method and results["device"]
  expected_bits = {"fp": 32.0, "lsq": 6.0, "alpt": 8.0}
  if method in expected_bits:
    assert results["mean_bits_per_feature"] == expected_bits[method]
  assert os.path.exists(tmp_path / "export.npz") == (method in ("lsq", "alpt", "mpe"))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == (2 if method == "mpe" else 1)
  assert f"| {method} |" in proc.stdout


@pytest.mark.parametrize("overrides,message", [
    (["--config.method=pep"], "mpe: error: config.method: unknown method 'pep'"),
    (["--config.data.spec=frappe:/no/such/dir"], "mpe: error: /no/such/dir: not a folder"),
    (["--config.train.no_such_key=1"], "mpe: error: unknown config field in an override: no_such_key"),
], ids=["unknown_method", "missing_data", "unknown_config_key"])
def test_bad_input_is_one_line_without_traceback(tmp_path, overrides, message):
  proc = _run(tmp_path, *overrides)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
