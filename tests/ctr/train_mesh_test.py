"""The CTR trainer on a device mesh reproduces one device: every method (fp, lsq, alpt, qr, mpe) and table
optimizer on meshes 2x1, 1x2, 2x2, 4x1 and 1x4 against 1x1 within float rounding (test AUC within 1e-4; alpt
and mpe do not yet, see KNOWN_FAILURES), and a checkpoint written on 4 x 2 resumes on one device (in
subprocesses, since the device count is fixed when JAX starts).

Float rounding is all the mesh may change (../shared/cases/ctr-mesh-changes-auc): no parameter has a true
gradient of zero that Adam would turn its rounding noise into steps for (`models.MLP`: no bias before
BatchNorm), and the initial parameters are the same values on every mesh (`train.train_and_evaluate`: a
quantizer turns a 1-ulp difference of W0 or of LSQ's initial step into flipped codes).
"""

import json

import numpy as np
import pytest

from conftest import run_json_worker
from experiments.configs import mpe_test
from hq_jax.ctr import train

WORKER = r'''
import json, sys
import numpy as np
import jax
from experiments.configs import mpe_test
from hq_jax.checkpoint import Checkpointer
from hq_jax.ctr import train

root, runs = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, (method, opt, data, model, multiple, stop) in runs.items():
  c = mpe_test.get_config()  # 3 steps per epoch, 2 epochs per phase
  c.method, c.train.table_optimizer = method, opt
  if opt == "rowwise_adagrad":
    c.train.table_learning_rate = 1e-2
  c.mesh.data, c.mesh.model, c.mesh.row_multiple = data, model, multiple
  c.train.stop_after_steps = stop
  workdir = f"{root}/{name.split('@')[0]}"
  try:
    r = train.train_and_evaluate(c, workdir)
  except Exception as e:  # reported by the test, with the other runs' results
    out[name] = {"error": f"{type(e).__name__}: {e}"}
    continue
  if r.get("status") == "stopped":
    out[name] = r
    continue
  n = r["dataset"]["num_features"]
  with Checkpointer(f"{workdir}/checkpoints") as ckpt:
    saved = ckpt.restore_as_saved()
  # The last epoch's parameters and BatchNorm statistics, the table cut back to its real rows (the padding
  # is all zero: checked here).
  params = {}
  for kind in ("params", "rest"):
    for path, x in jax.tree_util.tree_flatten_with_path(saved[kind])[0]:
      x = np.asarray(x)
      if not np.issubdtype(x.dtype, np.floating):
        continue
      if "table" in jax.tree_util.keystr(path):
        assert not np.any(x[n:]), "padded rows changed"
        x = x[:n]
      params[kind + jax.tree_util.keystr(path)] = x.tolist()
  metrics = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  out[name] = {"results": {k: r[k] for k in ("test_auc", "test_logloss", "valid_auc", "mean_bits_per_feature")},
               "groups": r.get("groups", {}).get("bits"),
               "metrics": [{k: v for k, v in m.items() if k != "train_seconds"} for m in metrics],
               "params": params, "rows": len(np.asarray(saved["params"]["embedding"]["table"]["value"]))
               if method != "qr" else None}
print(json.dumps(out))
'''

# Float rounding only: a mesh changes the summation order of the batch reductions (gradients, BatchNorm
# statistics), nothing else. Measured on the old code (a bias before each BatchNorm, W0 computed per mesh):
# test AUC differences of 0.002-0.04 (fp 0.5552 on 1x1, 0.5972 on 2x1).
AUC_TOL = 1e-4
LOSS_TOL = 1e-4


def _run(root, runs: dict, devices: int) -> dict:
  return run_json_worker(WORKER, [str(root), json.dumps(runs)], devices=devices, timeout=3000)


def _assert_close(got: dict, want: dict, name: str) -> None:
  assert "error" not in got and "error" not in want, (name, got.get("error"), want.get("error"))
  for k, v in want["results"].items():
    assert got["results"][k] == pytest.approx(v, abs=AUC_TOL if "auc" in k else LOSS_TOL), (name, k)
  assert got["groups"] == want["groups"], name  # MPE: the same widths selected
  assert len(got["metrics"]) == len(want["metrics"])
  for a, b in zip(got["metrics"], want["metrics"]):
    assert a.keys() == b.keys()
    for k, v in b.items():
      if isinstance(v, float):
        assert a[k] == pytest.approx(v, rel=1e-4, abs=AUC_TOL), (name, a["step"], k)
      else:
        assert a[k] == v, (name, k)
  assert got["params"].keys() == want["params"].keys()
  # Parameters to a tenth of one Adam step (lr 1e-3): an entry whose gradient is tiny takes a step of
  # m / (sqrt(v) + eps) that rounding moves relatively more (one table entry of 91,384 moved 5e-5 on 2x1).
  # A zero-gradient parameter random-walks whole steps (the old biases before BatchNorm: 5e-3 and more).
  for k, v in want["params"].items():
    np.testing.assert_allclose(np.asarray(got["params"][k]), np.asarray(v), rtol=1e-3, atol=1e-4,
                               err_msg=f"{name} {k}")


OPTIMIZERS = {"fp": ("dense_adam", "lazy_adam", "rowwise_adagrad"), "lsq": ("dense_adam", "lazy_adam", "rowwise_adagrad"),
              "alpt": ("dense_adam", "lazy_adam", "rowwise_adagrad"),
              "mpe": ("dense_adam", "lazy_adam", "rowwise_adagrad"), "qr": ("dense_adam",)}
MESHES = {2: [(2, 1), (1, 2)], 4: [(2, 2), (4, 1), (1, 4)]}


def _grid(method: str, meshes) -> dict:
  # (method, table_optimizer, mesh.data, mesh.model, mesh.row_multiple, stop_after_steps)
  return {f"{method}_{o}_{d}x{k}": (method, o, d, k, 0, 0) for o in OPTIMIZERS[method] for d, k in meshes}


def test_lsq_on_a_1x4_mesh_reproduces_one_device(tmp_path):
  """The fast representative: LSQ's codes flip at rounding boundaries, so only identical initial values
  (W0 and the step from mean|W0|) and no zero-gradient parameters give one device's metrics. Measured on
  the old code: test AUC 0.5804 (1x4) against 0.6053 (1x1); with the biases dropped but W0 still computed
  for the 4-way row-sharded table, 0.6358 against 0.6384 (2x2 happened to match)."""
  got = _run(tmp_path, {"lsq_1x4": ("lsq", "dense_adam", 1, 4, 0, 0)}, devices=4)["lsq_1x4"]
  c = mpe_test.get_config()
  c.method = "lsq"
  want = train.train_and_evaluate(c, str(tmp_path / "one"))
  for k in ("test_auc", "valid_auc"):
    assert got["results"][k] == pytest.approx(want[k], abs=AUC_TOL), k
  assert got["results"]["test_logloss"] == pytest.approx(want["test_logloss"], abs=LOSS_TOL)


# Measured 2026-12-07 (2 and 4 simulated devices against 1): lsq and qr agree on every mesh and optimizer
# (test AUC differences <= 5e-5, most exactly 0); fp with dense Adam and row-wise Adagrad exactly; the rest
# not yet:
KNOWN_FAILURES = {
    "alpt": "ALPT's step alpha has a true gradient of 0: the table is written back onto alpha's grid after every "
            "step, so round(w / alpha) - w / alpha is 0 but for rounding, and Adam turns that noise into "
            "lr-sized steps of alpha (1e-3 against alpha ~4e-4) that rescale the whole table: test AUC off by "
            "5e-4 to 5e-3 on every mesh",
    "mpe": "test AUC off by 1e-4 to 4e-2 on every multi-device mesh (the same widths selected); the parameters "
           "agree to 5e-5 after one step of each phase, so float noise is amplified later (cause not found yet)",
    "fp": "lazy_adam only, on 2x1, 2x2, 4x1 and 1x4 (not 1x2): test AUC 1.15e-4 off, the same on each, and "
          "some table entries a whole lr step apart (cause not found yet); dense Adam and row-wise Adagrad "
          "agree exactly",
}
@pytest.mark.slow
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[m], strict=False))
                                    if m in KNOWN_FAILURES else m for m in OPTIMIZERS])
def test_every_table_optimizer_on_every_mesh_reproduces_one_device(tmp_path, method):
  single = _run(tmp_path / "one", _grid(method, [(1, 1)]), devices=1)
  failures = []
  for devices, meshes in MESHES.items():
    got = _run(tmp_path / str(devices), _grid(method, meshes), devices=devices)
    for o, (d, k) in ((o, dk) for o in OPTIMIZERS[method] for dk in meshes):
      try:
        _assert_close(got[f"{method}_{o}_{d}x{k}"], single[f"{method}_{o}_1x1"], f"{method}_{o}_{d}x{k}")
      except AssertionError as e:  # every failing cell, not only the first
        failures.append(str(e)[:400])
  if failures:
    pytest.fail("\n".join(failures))


@pytest.mark.slow
def test_checkpoints_move_between_meshes(tmp_path):
  # (method, table_optimizer, mesh.data, mesh.model, mesh.row_multiple, stop_after_steps)
  eight = _run(tmp_path, {"d18": ("fp", "dense_adam", 1, 8, 8, 0), "s42": ("lsq", "lazy_adam", 4, 2, 8, 0),
                          "moved": ("lsq", "lazy_adam", 4, 2, 8, 4)}, devices=8)
  single = _run(tmp_path, {"dense": ("fp", "dense_adam", 1, 1, 0, 0), "sparse": ("lsq", "lazy_adam", 1, 1, 0, 0),
                           "moved@resume": ("lsq", "lazy_adam", 1, 1, 8, 0)}, devices=1)
  n = len(single["dense"]["params"]["params['embedding']['table']['value']"])
  assert eight["d18"]["rows"] == -(-n // 8) * 8 and single["dense"]["rows"] == n  # padded on the mesh only
  _assert_close(eight["d18"], single["dense"], "d18")
  _assert_close(eight["s42"], single["sparse"], "s42")
  # Written on 4 x 2 (stopped in the second epoch, after step 4; checkpoint at step 3), resumed and finished on
  # one device.
  assert eight["moved"] == {"status": "stopped", "step": 4}
  _assert_close(single["moved@resume"], single["sparse"], "moved@resume")
