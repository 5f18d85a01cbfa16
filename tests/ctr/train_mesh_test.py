"""The CTR trainer on a device mesh: 8 simulated CPU devices reproduce one device, dense and sparse table
updates, and a checkpoint written on 4 x 2 resumes on one device (in subprocesses, since the device count is
fixed when JAX starts)."""

import json

import numpy as np
import pytest

from conftest import run_json_worker

WORKER = r'''
import json, sys
import numpy as np
import jax
from experiments.configs import mpe_test
from hq_jax.checkpoint import Checkpointer
from hq_jax.ctr import train

root, runs = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, (opt, data, model, multiple, stop) in runs.items():
  c = mpe_test.get_config()  # 3 steps per epoch, 2 epochs
  c.method, c.train.table_optimizer = "fp", opt  # fp: no rounding that float noise could flip
  c.mesh.data, c.mesh.model, c.mesh.row_multiple = data, model, multiple
  c.train.stop_after_steps = stop
  workdir = f"{root}/{name.split('@')[0]}"
  r = train.train_and_evaluate(c, workdir)
  if r.get("status") == "stopped":
    out[name] = r
    continue
  n = r["dataset"]["num_features"]
  with Checkpointer(f"{workdir}/checkpoints") as ckpt:
    saved = ckpt.restore_as_saved()
  leaves = jax.tree_util.tree_flatten_with_path(saved["params"])[0]
  # The table cut back to its real rows (padding is all zero: checked here).
  params = {}
  for path, x in leaves:
    x = np.asarray(x)
    if "table" in jax.tree_util.keystr(path):
      assert not np.any(x[n:]), "padded rows changed"
      x = x[:n]
    params[jax.tree_util.keystr(path)] = x.tolist()
  metrics = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  out[name] = {"results": {k: r[k] for k in ("test_auc", "test_logloss", "valid_auc")},
               "metrics": [{k: v for k, v in m.items() if k != "train_seconds"} for m in metrics],
               "params": params, "rows": len(np.asarray(saved["params"]["embedding"]["table"]["value"]))}
print(json.dumps(out))
'''


def _run(root, runs: dict, devices: int) -> dict:
  return run_json_worker(WORKER, [str(root), json.dumps(runs)], devices=devices, timeout=1500)


# A Linear bias that feeds a BatchNorm has a zero true gradient: Adam turns its float noise (which differs
# with the summation order) into +-lr steps. The training loss does not see it, but eval mode does through
# the running means that trail it, so on this near-random tiny model the evaluation metrics (and those
# biases and means) differ by more than float tolerance between any two summation orders, one device too.
LOOSE = {"valid_auc": 0.05, "valid_logloss": 5e-3, "test_auc": 0.05, "test_logloss": 5e-3}


def _assert_close(got: dict, want: dict, name: str) -> None:
  for k, v in want["results"].items():
    assert got["results"][k] == pytest.approx(v, abs=LOOSE[k]), (name, k)
  assert len(got["metrics"]) == len(want["metrics"])
  for a, b in zip(got["metrics"], want["metrics"]):
    assert a.keys() == b.keys()
    for k, v in b.items():
      if isinstance(v, float):  # train_loss, train_bce, grad_norm, param_norm: tight
        assert a[k] == pytest.approx(v, rel=1e-4, abs=LOOSE.get(k, 1e-4)), (name, a["step"], k)
      else:
        assert a[k] == v, (name, k)
  assert got["params"].keys() == want["params"].keys()
  for k, v in want["params"].items():
    atol = 0.05 if ("linears" in k and "bias" in k) else 1e-4
    np.testing.assert_allclose(np.asarray(got["params"][k]), np.asarray(v), rtol=1e-3, atol=atol,
                               err_msg=f"{name} {k}")


@pytest.mark.slow
def test_mesh_shapes_reproduce_one_device_and_checkpoints_move_between_meshes(tmp_path):
  # (table_optimizer, mesh.data, mesh.model, mesh.row_multiple, stop_after_steps)
  eight = _run(tmp_path, {"d81": ("dense_adam", 8, 1, 8, 0), "d18": ("dense_adam", 1, 8, 8, 0),
                          "d42": ("dense_adam", 4, 2, 8, 0), "s81": ("lazy_adam", 8, 1, 8, 0),
                          "s18": ("lazy_adam", 1, 8, 8, 0), "s42": ("lazy_adam", 4, 2, 8, 0),
                          "moved": ("lazy_adam", 4, 2, 8, 4)}, devices=8)
  single = _run(tmp_path, {"dense": ("dense_adam", 1, 1, 0, 0), "sparse": ("lazy_adam", 1, 1, 0, 0),
                           "moved@resume": ("lazy_adam", 1, 1, 8, 0)}, devices=1)
  n = len(single["dense"]["params"]["['embedding']['table']['value']"])
  assert eight["d18"]["rows"] == -(-n // 8) * 8 and single["dense"]["rows"] == n  # padded on the mesh only
  for name in ("d81", "d18", "d42"):
    _assert_close(eight[name], single["dense"], name)
  for name in ("s81", "s18", "s42"):
    _assert_close(eight[name], single["sparse"], name)
  # Written on 4 x 2 (stopped in the second epoch, after step 4; checkpoint at step 3), resumed and finished on
  # one device.
  assert eight["moved"] == {"status": "stopped", "step": 4}
  _assert_close(single["moved@resume"], single["sparse"], "moved@resume")
