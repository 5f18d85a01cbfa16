"""The HQ-GNN trainer on a device mesh: 8 simulated CPU devices reproduce one device (in a subprocess, since
the device count is fixed when JAX starts)."""

import json
import os

import pytest

from conftest import run_json_worker

WORKER = r'''
import json, sys
import numpy as np
from experiments.configs import hqgnn_test
from hq_jax.hqgnn import train

root, runs = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, (data, model, bits, stop) in runs.items():
  c = hqgnn_test.get_config()
  c.train.batch_size = 4096  # divides over every 'data' size
  c.quant.bits = bits
  c.mesh.data, c.mesh.model, c.mesh.row_multiple = data, model, 8
  c.train.stop_after_epochs = stop
  r = train.train_and_evaluate(c, f"{root}/{name.split('@')[0]}")
  out[name] = r.get("metrics", r)
print(json.dumps(out))
'''


def _run(root, runs: dict, devices: int) -> dict:
  return run_json_worker(WORKER, [str(root), json.dumps(runs)], devices=devices, timeout=1800)


@pytest.mark.slow
def test_mesh_shapes_reproduce_one_device_and_checkpoints_move_between_meshes(tmp_path):
  eight = _run(tmp_path, {"m81": (8, 1, "none", 0), "m18": (1, 8, "none", 0), "m42": (4, 2, "none", 0),
                          "q42": (4, 2, "2", 0), "moved": (4, 2, "none", 2)}, devices=8)
  assert eight["moved"] == {"status": "stopped", "epoch": 2}
  single = _run(tmp_path, {"ref": (1, 1, "none", 0), "q": (1, 1, "2", 0), "moved@resume": (1, 1, "none", 0)},
                devices=1)
  for name in ("m81", "m18", "m42"):
    for k, v in single["ref"].items():
      assert eight[name][k] == pytest.approx(v, rel=2e-3, abs=2e-4), (name, k)
  for k, v in single["q"].items():
    assert eight["q42"][k] == pytest.approx(v, rel=1e-2, abs=1e-3), k
  # Written on 4 x 2 (stopped after epoch 2), resumed and finished on one device: the uninterrupted metrics.
  for k, v in single["ref"].items():
    assert single["moved@resume"][k] == pytest.approx(v, rel=2e-3, abs=2e-4), k
  results = json.load(open(os.path.join(tmp_path, "moved", "results.json")))
  assert results["resumed_from_epoch"] == 2
