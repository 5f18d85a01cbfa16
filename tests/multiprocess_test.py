"""Two JAX processes on localhost (gloo CPU collectives) train the toy LightGCN-BPR step on one
('data', 'model') mesh over both processes' devices and agree with the single-process, single-device run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, finish_all, free_port, subprocess_env

WORKER = str(REPO / "tests" / "multiprocess_worker.py")


def _env() -> dict:
  env = subprocess_env()
  env["PYTHONPATH"] = str(REPO / "tests") + os.pathsep + env["PYTHONPATH"]
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)  # the worker sets its own device count
  return env


@pytest.mark.slow
@pytest.mark.parametrize("local_devices, data", [(2, 2)])  # 2 processes x 2 devices, mesh data 2 x model 2
def test_two_processes_agree_with_one(tmp_path, local_devices, data):
  port = free_port()
  outs = [tmp_path / f"process{i}.json" for i in range(2)]
  ref_out = tmp_path / "reference.json"
  procs = [subprocess.Popen([sys.executable, WORKER, "--num_processes=2", f"--process_id={i}", f"--port={port}",
                             f"--local_devices={local_devices}", f"--data={data}", f"--out={outs[i]}"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  ref = subprocess.run([sys.executable, WORKER, "--num_processes=1", f"--out={ref_out}"], env=_env(),
                       capture_output=True, text=True, timeout=600, check=False)
  finish_all(procs, timeout=600)
  assert ref.returncode == 0, ref.stderr[-3000:]

  want = json.loads(ref_out.read_text())
  for i, path in enumerate(outs):
    got = json.loads(path.read_text())
    assert (got["process_id"], got["process_count"]) == (i, 2)
    assert got["devices"] == 2 * local_devices and got["local_devices"] == local_devices
    assert got["mesh"] == {"data": data, "model": 2 * local_devices // data}
    assert got["specs"]["table"] == "P('model',)" and got["specs"]["table_after"] == "P('model',)"
    np.testing.assert_allclose(got["losses"], want["losses"], atol=1e-5)
    assert len(got["params"]) == len(want["params"])
    for a, b in zip(got["params"], want["params"]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
