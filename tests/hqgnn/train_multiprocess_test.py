"""The HQ-GNN binary in two processes on localhost (gloo CPU collectives, one device each): node rows of E0
and A~ split over the processes (mesh 1 x 2); the final metrics and export equal one process's run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, finish_all, free_port, subprocess_env

CONFIG = "experiments/configs/hqgnn_test.py"


def _command(workdir, *extra) -> list[str]:
  return [sys.executable, "-m", "experiments.hqgnn", f"--config={CONFIG}", f"--workdir={workdir}",
          "--config.mesh.row_multiple=8", *extra]


@pytest.mark.slow
def test_two_processes_reproduce_one(tmp_path):
  env = dict(subprocess_env(), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device per process
  port = free_port()
  shared = tmp_path / "two"
  procs = [subprocess.Popen(_command(shared, "--config.mesh.model=2", "--num_processes=2", f"--process_id={i}",
                                     f"--coordinator_address=localhost:{port}"),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  finish_all(procs, timeout=1200)
  one = subprocess.run(_command(tmp_path / "one"), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
  assert one.returncode == 0, one.stderr[-3000:]

  got = json.loads((shared / "results.json").read_text())
  want = json.loads((tmp_path / "one" / "results.json").read_text())
  assert got["config"]["mesh"]["model"] == 2
  for k, v in want["metrics"].items():
    assert got["metrics"][k] == pytest.approx(v, rel=2e-3, abs=2e-4), k
  a, b = np.load(shared / "export.npz"), np.load(tmp_path / "one" / "export.npz")
  for key in ("user_embeddings", "item_embeddings"):
    np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-4)
