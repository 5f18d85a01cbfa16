"""The CTR trainer in two JAX processes on localhost (gloo CPU collectives, `experiments.mpe --num_processes=2`)
on one ('data', 'model') mesh over both processes' devices agrees with a single-process, single-device run."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, finish_all, free_port, subprocess_env

# The float table (no quantizer codes that float noise could flip) with a sparse table optimizer: row gathers
# and scatters of a table sharded within each process, batches split across the processes. Row-wise Adagrad,
# not lazy Adam: on this config lazy Adam's training amplifies float rounding (a ReLU input at -1.2e-7 whose
# sign rounding decides; train_mesh_test.AMPLIFIED), so no tolerance would both hold and be tight.
ARGS = ["-m", "experiments.mpe", "--config=experiments/configs/mpe_test.py", "--config.method=fp",
        "--config.train.table_optimizer=rowwise_adagrad", "--config.train.table_learning_rate=1e-2"]


def _env(devices: int, cache) -> dict:
  env = dict(subprocess_env(), JAX_PLATFORMS="cpu", HQ_JAX_CACHE=str(cache),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def _read(workdir) -> tuple[dict, list[dict]]:
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    metrics = [{k: v for k, v in json.loads(line).items() if k != "train_seconds"} for line in f]
  return results, metrics


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  port, shared = free_port(), tmp_path / "two"
  # 2 processes x 2 devices: 'data' across the processes, the table's rows over 'model' within each.
  mesh = ["--config.mesh.data=2", "--config.mesh.model=2", "--config.mesh.row_multiple=8"]
  procs = [subprocess.Popen([sys.executable, *ARGS, f"--workdir={shared}", *mesh,
                             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
                            cwd=REPO, env=_env(2, tmp_path / "cache"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  ref = subprocess.run([sys.executable, *ARGS, f"--workdir={tmp_path / 'one'}"], cwd=REPO,
                       env=_env(1, tmp_path / "cache1"), capture_output=True, text=True, timeout=1500, check=False)
  finish_all(procs, timeout=1500)
  assert ref.returncode == 0, ref.stderr[-3000:]

  got, got_metrics = _read(shared)
  want, want_metrics = _read(tmp_path / "one")
  assert got["device"].startswith("cpu x4") and want["device"].startswith("cpu x1")  # both processes' devices
  # Float rounding only, with the tolerances of one process's mesh (train_mesh_test.py).
  for k, tol in (("test_auc", 1e-4), ("test_logloss", 1e-4), ("valid_auc", 1e-4), ("steps", 0)):
    assert got[k] == pytest.approx(want[k], abs=tol), k
  assert [m["step"] for m in got_metrics] == [m["step"] for m in want_metrics]  # process 0 wrote each once
  for a, b in zip(got_metrics, want_metrics):
    for k, v in b.items():
      assert a[k] == (pytest.approx(v, rel=1e-4, abs=1e-4) if isinstance(v, float) else v), (a["step"], k)
