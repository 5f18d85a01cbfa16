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


def test_non_finite_loss_names_the_step(tmp_path):
  with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(train phase, epoch 0\)"):
    c = _config(learning_rate=float("nan"))
    c.method = "fp"
    train.train_and_evaluate(c, str(tmp_path))


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
