"""train_and_evaluate on the embedded Criteo sample: resume, export, non-finite loss, bad config."""

import json
import os

import numpy as np
import pytest

from experiments.configs import mpe_test
from hq_jax.ctr import mpe, train
from hq_jax.errors import NonFiniteLossError, UserError


def _config(**train_overrides):
  c = mpe_test.get_config()
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"} for line in f]


@pytest.mark.slow  # make test-all only (measured 2026-11-30: among the slowest)
def test_mpe_resume_in_both_phases_matches_uninterrupted_run(tmp_path):
  full = train.train_and_evaluate(_config(), str(tmp_path / "full"))
  steps_per_epoch = full["steps_per_epoch"]
  assert full["phases"]["search"]["epochs"] == 2 and full["phases"]["retrain"]["epochs"] == 2
  resumed_dir = str(tmp_path / "resumed")
  # Stop mid-way through the second search epoch, then mid-way through the first retrain epoch.
  stop = train.train_and_evaluate(_config(stop_after_steps=steps_per_epoch + 1), resumed_dir)
  assert stop["status"] == "stopped"
  stop = train.train_and_evaluate(_config(stop_after_steps=2 * steps_per_epoch + 2), resumed_dir)
  assert stop["status"] == "stopped"
  resumed = train.train_and_evaluate(_config(), resumed_dir)
  for key in ("test_auc", "test_logloss", "valid_auc", "search_valid_auc", "mean_bits_per_feature",
              "exact_bytes"):
    assert resumed[key] == full[key], key
  assert resumed["groups"]["bits"] == full["groups"]["bits"]
  assert _metrics(resumed_dir) == _metrics(str(tmp_path / "full"))

  # The export: its byte count is the stored arrays' bytes, and its widths are the selected ones.
  with np.load(os.path.join(resumed_dir, "export.npz")) as stored:
    arrays = {k: stored[k] for k in stored.files}
  assert resumed["exact_bytes"] == sum(a.nbytes for a in arrays.values())
  table = mpe.decode_export(arrays)
  assert table.shape == (resumed["dataset"]["num_features"], 8)
  assert resumed["compression_bytes"] == pytest.approx(table.size * 4 / resumed["exact_bytes"])
  assert resumed["compression_bits"] == pytest.approx(32 / resumed["mean_bits_per_feature"])
  with open(os.path.join(resumed_dir, "results.json")) as f:
    assert json.load(f)["test_auc"] == resumed["test_auc"]


@pytest.mark.parametrize("method,table_optimizer", [pytest.param("mpe", "lazy_adam", marks=pytest.mark.slow),
                                                    ("alpt", "rowwise_adagrad")])
def test_sparse_table_state_resumes_exactly(tmp_path, method, table_optimizer):
  c = _config()
  c.method, c.train.table_optimizer = method, table_optimizer
  full = train.train_and_evaluate(c, str(tmp_path / "full"))
  # MPE: stopped mid-way through the first retrain epoch (after the search -> retrain step); ALPT: mid-epoch 2.
  stop_at = full["steps_per_epoch"] * (2 if method == "mpe" else 1) + 1
  c.train.stop_after_steps = stop_at
  assert train.train_and_evaluate(c, str(tmp_path / "resumed"))["status"] == "stopped"
  c.train.stop_after_steps = 0
  resumed = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert (resumed["test_auc"], resumed["test_logloss"]) == (full["test_auc"], full["test_logloss"])
  assert _metrics(str(tmp_path / "resumed")) == _metrics(str(tmp_path / "full"))


def test_non_finite_loss_names_the_step(tmp_path):
  # ../shared/cases/nan-before-first-checkpoint: the message is true when no checkpoint exists yet.
  with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(epoch 1, batch \d+, train phase\); stopped: no "
                     r"checkpoint was written yet"):
    c = _config(learning_rate=1e30)
    c.method = "fp"
    train.train_and_evaluate(c, str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")


@pytest.mark.parametrize("section,key,value", [("model", "dim", 4), ("train", "learning_rate", 1e-2),
                                               ("train", "max_epochs", 1), ("mpe", "lam", 0.0),
                                               ("model", "hidden", (8,))])
def test_rerun_with_another_config_stops_in_one_line(tmp_path, monkeypatch, section, key, value):
  # ../shared/cases/ctr-resume-config-mismatch, as a kind: any result-changing key, not only shapes.
  c = _config(stop_after_steps=1)
  c.method = "fp"
  train.train_and_evaluate(c, str(tmp_path))
  c = _config()
  c.method = "fp"
  c[section][key] = value

  def no_model(*args, **kwargs):
    raise AssertionError("the model was built before the workdir's config was checked")

  monkeypatch.setattr(train, "create_model", no_model)  # the stop comes before any model is built or compiled
  with pytest.raises(UserError, match=rf"another config: {section}\.{key} ") as e:
    train.train_and_evaluate(c, str(tmp_path))
  assert "\n" not in str(e.value)


def test_extend_max_epochs_needs_the_flag(tmp_path):
  c = _config(max_epochs=1)
  c.method = "fp"
  short = train.train_and_evaluate(c, str(tmp_path))
  c = _config(max_epochs=2)
  c.method = "fp"
  with pytest.raises(UserError, match="--extend"):
    train.train_and_evaluate(c, str(tmp_path))
  longer = train.train_and_evaluate(c, str(tmp_path), extend=True)
  assert longer["continuations"][0]["to_epochs"] == 2 and longer["steps"] > short["steps"]


@pytest.mark.parametrize("key,value,message", [
    ("method", "pep", "unknown method 'pep'"),
    ("data.spec", "nosuch:x", "unknown CTR dataset spec"),
    ("data.spec", "frappe:/no/such/dir", "not a folder"),
])
def test_bad_config_is_a_user_error(tmp_path, key, value, message):
  c = _config()
  section, _, name = key.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(c, str(tmp_path))


def test_damaged_newest_checkpoint_is_set_aside(tmp_path, capsys):
  from hqgnn.train_test import damage_checkpoint  # noqa: PLC0415 - the same damage as the HQ-GNN test
  c = _config()
  c.method = "fp"
  full = train.train_and_evaluate(c, str(tmp_path / "full"))
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(c, workdir)
  os.remove(os.path.join(workdir, "results.json"))
  newest = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  damage_checkpoint(workdir, newest)
  resumed = train.train_and_evaluate(c, workdir)
  assert f"checkpoint {newest}" in capsys.readouterr().err
  assert resumed["test_auc"] == full["test_auc"] and resumed["test_logloss"] == full["test_logloss"]
  assert os.listdir(os.path.join(workdir, "checkpoints_damaged")) == [str(newest)]


def test_mpe_pruning_every_group_warns_and_scores_as_a_constant_predictor(tmp_path, capsys):
  # ../shared/cases/mpe-all-pruned: a bit regulariser so strong that the search prunes all 16 groups.
  c = _config(max_epochs=1, patience=1)
  c.mpe.lam, c.mpe.tau = 1000.0, 3e-4  # a small tau: p_g one-hot after the first steps
  r = train.train_and_evaluate(c, str(tmp_path))
  err = capsys.readouterr().err
  assert err.count("mpe: warning: all 16 groups selected 0 bits: the embedding table is empty") == 1, err
  assert r["groups"]["bits"] == [0] * 16 and r["mean_bits_per_feature"] == 0.0
  # A constant predictor: every test logit the same (AUC exactly 0.5), a finite logloss at least the test
  # labels' entropy and no worse than predicting 1/2 by much (it was 74: eval-mode BatchNorm divided the drift
  # of a zero-gradient bias by a running variance of ~0).
  _, labels = train._load_data(c).split("test")
  q = float(np.mean(labels))
  assert r["test_auc"] == 0.5
  assert -(q * np.log(q) + (1 - q) * np.log(1 - q)) <= r["test_logloss"] < 0.75
  # Strict JSON: the compression 32 / 0 bits is null with its reason, never Infinity.
  with open(os.path.join(tmp_path, "results.json")) as f:
    stored = json.loads(f.read(), parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
  assert stored["compression_bits"] is None
  assert stored["compression_bits_reason"] == "every feature pruned (0 bits)"
  assert stored["compression_bytes"] > 0
