"""The CTR trainer on a device mesh reproduces one device: every method (fp, lsq, alpt, qr, mpe) and table
optimizer on meshes 2x1, 1x2, 2x2, 4x1 and 1x4 against 1x1, and a checkpoint written on 4 x 2 resumes on one
device (in subprocesses, since the device count is fixed when JAX starts).

Float rounding is all the mesh may change (../shared/cases/ctr-mesh-changes-auc): no parameter has a true
gradient of zero that Adam would turn its rounding noise into steps for (`models.MLP`: no bias before
BatchNorm; ALPT's step size learns from the updated rows, `models.PostUpdateParam`), and the initial
parameters are the same values on every mesh (`train.train_and_evaluate`: a quantizer turns a 1-ulp
difference of W0 or of LSQ's initial step into flipped codes). Two tests say so:
- one step of each phase, every method and table optimizer on every mesh: metrics and parameters within
  float rounding (a zero-gradient parameter would be a whole Adam step off after one step);
- the whole test config (2 epochs of 3 steps per phase): test AUC within 1e-4, for the methods and table
  optimizers whose training does not amplify rounding (`AMPLIFIED`: on one device, the same run with every
  gradient rounded differently moves their metrics as much as a mesh does).
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
for name, (method, opt, data, model, multiple, stop, one_step) in runs.items():
  c = mpe_test.get_config()  # 3 steps per epoch, 2 epochs per phase
  if one_step:  # one step of 4,000 of the 7,999 training rows per phase
    c.train.batch_size, c.train.max_epochs, c.train.patience = 4000, 1, 1
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


def _assert_close(got: dict, want: dict, name: str, *, auc_tol: float = AUC_TOL, loss_tol: float = LOSS_TOL,
                  rtol: float = 1e-3, atol: float = 1e-4) -> None:
  assert "error" not in got and "error" not in want, (name, got.get("error"), want.get("error"))
  for k, v in want["results"].items():
    assert got["results"][k] == pytest.approx(v, abs=auc_tol if "auc" in k else loss_tol), (name, k)
  assert got["groups"] == want["groups"], name  # MPE: the same widths selected
  assert len(got["metrics"]) == len(want["metrics"])
  for a, b in zip(got["metrics"], want["metrics"]):
    assert a.keys() == b.keys()
    for k, v in b.items():
      if isinstance(v, float):
        assert a[k] == pytest.approx(v, rel=1e-4, abs=auc_tol), (name, a["step"], k)
      else:
        assert a[k] == v, (name, k)
  assert got["params"].keys() == want["params"].keys()
  # By default, parameters to a tenth of one Adam step (lr 1e-3): an entry whose gradient is tiny takes a step
  # of m / (sqrt(v) + eps) that rounding moves relatively more (one table entry of 91,384 moved 5e-5 on 2x1).
  # A zero-gradient parameter random-walks whole steps (the old biases before BatchNorm: 5e-3 and more).
  for k, v in want["params"].items():
    np.testing.assert_allclose(np.asarray(got["params"][k]), np.asarray(v), rtol=rtol, atol=atol,
                               err_msg=f"{name} {k}")


ALL = ("dense_adam", "lazy_adam", "rowwise_adagrad")
OPTIMIZERS = {"fp": ALL, "lsq": ALL, "alpt": ALL, "mpe": ALL, "qr": ("dense_adam",)}
MESHES = {2: [(2, 1), (1, 2)], 4: [(2, 2), (4, 1), (1, 4)]}

# Training that amplifies float rounding: whatever rounds differently moves the test metrics of the whole test
# config by more than 1e-4, a mesh or, on one device, the BCE scaled by 1 +- 2^-20 (which Adam and Adagrad do
# not see but through eps and rounding). The mechanism is a value that rounding puts on either side of a
# discontinuity: a ReLU input (fp with lazy Adam: one hidden unit of one sample at -1.2e-7 in step 5, whose sign
# a mesh flips), an LSQ code boundary (mpe: (w - beta) / alpha at 1.4999995 against 1.5000004 in step 3; each
# flip moves the LSQ gradient of alpha, whose Adam steps (lr 1e-3 against alpha ~1e-3) re-grid the table, so 1
# flip became 15 in the next step and whole Adam steps later), or ALPT's stochastic rounding of the table at
# every write-back. Measured 2026-12-08 (test AUC against one device's: BCE x (1 + 2^-20) and x (1 - 2^-20) on
# one device; the largest difference of the five meshes):
AMPLIFIED = {
    ("fp", "lazy_adam"): "one device -1.1e-4 / -1.2e-4; meshes 1.2e-4 (1x2 exact)",
    ("alpt", "dense_adam"): "one device +2.2e-3 / 0; meshes 2.2e-3 (2x2 and 4x1 +2.2e-3, the others exact)",
    ("alpt", "lazy_adam"): "one device +2.5e-4 / -3.0e-5; meshes 2.5e-4 (1x4)",
    ("alpt", "rowwise_adagrad"): "one device +6.8e-3 / +4.8e-3; meshes 7.6e-3 (4x1)",
    ("mpe", "dense_adam"): "one device +7e-6 / +3.0e-3; meshes 8.3e-3 (4x1)",
    ("mpe", "lazy_adam"): "one device -4.5e-3 / +1.1e-2; meshes 4.2e-2 (4x1)",
    ("mpe", "rowwise_adagrad"): "one device +1.0e-2 / +1.1e-2; meshes 1.3e-2 (1x2, 4x1)",
}
# (The others: the same perturbation moved lsq's test AUC by at most 1.3e-5, and left fp's with dense Adam or
# row-wise Adagrad, lsq's with row-wise Adagrad and qr's as they were.)


def _grid(method: str, meshes, *, one_step: bool = False, optimizers=None) -> dict:
  # (method, table_optimizer, mesh.data, mesh.model, mesh.row_multiple, stop_after_steps, one step per phase)
  return {f"{method}_{o}_{d}x{k}": (method, o, d, k, 0, 0, one_step) for o in (optimizers or OPTIMIZERS[method])
          for d, k in meshes}


def test_lsq_on_a_1x4_mesh_reproduces_one_device(tmp_path):
  """The fast representative: LSQ's codes flip at rounding boundaries, so only identical initial values
  (W0 and the step from mean|W0|) and no zero-gradient parameters give one device's metrics. Measured on
  the old code: test AUC 0.5804 (1x4) against 0.6053 (1x1); with the biases dropped but W0 still computed
  for the 4-way row-sharded table, 0.6358 against 0.6384 (2x2 happened to match)."""
  got = _run(tmp_path, {"lsq_1x4": ("lsq", "dense_adam", 1, 4, 0, 0, False)}, devices=4)["lsq_1x4"]
  c = mpe_test.get_config()
  c.method = "lsq"
  want = train.train_and_evaluate(c, str(tmp_path / "one"))
  for k in ("test_auc", "valid_auc"):
    assert got["results"][k] == pytest.approx(want[k], abs=AUC_TOL), k
  assert got["results"]["test_logloss"] == pytest.approx(want["test_logloss"], abs=LOSS_TOL)


def _compare_grid(tmp_path, method: str, *, one_step: bool, optimizers, **tolerances) -> None:
  single = _run(tmp_path / "one", _grid(method, [(1, 1)], one_step=one_step, optimizers=optimizers), devices=1)
  failures = []
  for devices, meshes in MESHES.items():
    got = _run(tmp_path / str(devices), _grid(method, meshes, one_step=one_step, optimizers=optimizers),
               devices=devices)
    for o, (d, k) in ((o, dk) for o in optimizers for dk in meshes):
      try:
        _assert_close(got[f"{method}_{o}_{d}x{k}"], single[f"{method}_{o}_1x1"], f"{method}_{o}_{d}x{k}",
                      **tolerances)
      except AssertionError as e:  # every failing cell, not only the first
        failures.append(str(e)[:400])
  if failures:
    pytest.fail("\n".join(failures))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(OPTIMIZERS))
def test_one_step_of_each_phase_on_every_mesh_reproduces_one_device(tmp_path, method):
  """Every method and table optimizer, one step per phase (batch 4,000): the step's arithmetic differs between
  meshes by float rounding only. Test and validation AUC within 2e-5 (one of the test set's 162,384
  positive-negative pairs ordered the other way moves it by 6.2e-6; measured: at most one pair), parameters to
  a tenth of an Adam step (measured: single entries up to 4.7e-5 apart, whose gradient is near 0, so that
  Adam's first step lr g / (|g| + eps) follows its rounding: an lsq table entry with g = 4e-9 where its row's
  others are ~1e-3; mpe's first-layer kernel row of an input column that is constant over the batch, where
  every feature of C9 in the batch has the same code, so BatchNorm leaves that row a true gradient of 0).
  A parameter whose true gradient is 0 takes a whole step of rounding noise here: the old ALPT (its step
  size learnt on rows already on its grid) was 1.0e-3 of test AUC off on every mesh after one step (lazy Adam
  1.1e-4, row-wise Adagrad 3.7e-4), the new one agrees exactly."""
  _compare_grid(tmp_path, method, one_step=True, optimizers=OPTIMIZERS[method], auc_tol=2e-5, loss_tol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in OPTIMIZERS if any((m, o) not in AMPLIFIED for o in OPTIMIZERS[m])])
def test_every_table_optimizer_on_every_mesh_reproduces_one_device(tmp_path, method):
  """The whole test config, for the methods and table optimizers whose training does not amplify rounding
  (not in `AMPLIFIED`): test AUC within 1e-4 of one device (measured 2026-12-07: lsq and qr within 5e-5, most
  exactly; fp with dense Adam and row-wise Adagrad exactly)."""
  _compare_grid(tmp_path, method, one_step=False,
                optimizers=[o for o in OPTIMIZERS[method] if (method, o) not in AMPLIFIED])


@pytest.mark.slow
def test_checkpoints_move_between_meshes(tmp_path):
  # (method, table_optimizer, mesh.data, mesh.model, mesh.row_multiple, stop_after_steps, one step per phase)
  eight = _run(tmp_path, {"d18": ("fp", "dense_adam", 1, 8, 8, 0, False),
                          "s42": ("lsq", "lazy_adam", 4, 2, 8, 0, False),
                          "moved": ("lsq", "lazy_adam", 4, 2, 8, 4, False)}, devices=8)
  single = _run(tmp_path, {"dense": ("fp", "dense_adam", 1, 1, 0, 0, False),
                           "sparse": ("lsq", "lazy_adam", 1, 1, 0, 0, False),
                           "moved@resume": ("lsq", "lazy_adam", 1, 1, 8, 0, False)}, devices=1)
  n = len(single["dense"]["params"]["params['embedding']['table']['value']"])
  assert eight["d18"]["rows"] == -(-n // 8) * 8 and single["dense"]["rows"] == n  # padded on the mesh only
  _assert_close(eight["d18"], single["dense"], "d18")
  _assert_close(eight["s42"], single["sparse"], "s42")
  # Written on 4 x 2 (stopped in the second epoch, after step 4; checkpoint at step 3), resumed and finished on
  # one device.
  assert eight["moved"] == {"status": "stopped", "step": 4}
  _assert_close(single["moved@resume"], single["sparse"], "moved@resume")
