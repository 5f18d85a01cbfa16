"""The run protocol (hq_jax.workdir): config comparison, atomic files, the non-finite check."""

import json
import os

import ml_collections
import numpy as np
import pytest

from hq_jax import workdir
from hq_jax.errors import NonFiniteLossError, UserError


def _config(**train):
  c = ml_collections.ConfigDict({"seed": 0, "train": {"epochs": 4, "lr": 1e-3, "log_every": 1},
                                 "eval": {"ks": (20, 50)}})
  c.train.update(train)
  return c


def test_config_differences_names_changed_added_and_removed_keys():
  a = {"train": {"epochs": 4, "lr": 1e-3}, "eval": {"ks": [20, 50]}}
  b = {"train": {"epochs": 4, "lr": 2e-3, "new": 1}, "eval": {"ks": (20, 50)}}
  assert workdir.config_differences(a, b) == ["train.lr", "train.new"]
  assert workdir.config_differences(a, b, ignore=["train.new"]) == ["train.lr"]
  assert workdir.config_differences(b, b) == []


def test_rundir_stores_the_config_and_refuses_another(tmp_path):
  workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs").close()
  stored = json.load(open(tmp_path / "config.json"))
  assert stored["config"]["train"]["epochs"] == 4 and stored["continuations"] == []
  workdir.RunDir(str(tmp_path), _config(log_every=5), epochs_key="train.epochs",
                 ignore=["train.log_every"]).close()
  with pytest.raises(UserError, match=r"another config: train\.log_every \(1 -> 5\), train\.lr \(0\.001 -> 0\.002\);"):
    workdir.RunDir(str(tmp_path), _config(lr=2e-3, log_every=5), epochs_key="train.epochs")
  for epochs, extend in ((2, False), (2, True), (8, False)):  # shorter never; longer only with extend
    with pytest.raises(UserError, match=r"train\.epochs \(4 -> "):
      workdir.RunDir(str(tmp_path), _config(epochs=epochs), epochs_key="train.epochs", extend=extend)
  with pytest.raises(UserError, match=r"train\.lr .*"):  # extend does not excuse other keys
    workdir.RunDir(str(tmp_path), _config(epochs=8, lr=2e-3), epochs_key="train.epochs", extend=True)
  run = workdir.RunDir(str(tmp_path), _config(epochs=8), epochs_key="train.epochs", extend=True)
  assert run.write_results({"a": 1})["continuations"][0] == {**run.continuations[0], "from_epochs": 4,
                                                             "to_epochs": 8}
  run.close()
  workdir.RunDir(str(tmp_path), _config(epochs=8), epochs_key="train.epochs").close()  # now the stored one


def test_unreadable_config_json_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="config.json: unreadable"):
    workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
  path = str(tmp_path / "results.json")
  workdir.write_json(path, {"old": 1})

  def dies_half_way(f):
    f.write('{"new": ')
    raise KeyboardInterrupt  # a kill during the write

  with pytest.raises(KeyboardInterrupt):
    workdir.atomic_write(path, dies_half_way)
  assert json.load(open(path)) == {"old": 1} and os.listdir(tmp_path) == ["results.json"]


def test_write_npz_round_trips(tmp_path):
  workdir.write_npz(str(tmp_path / "export.npz"), {"x": np.arange(3)})
  assert np.load(tmp_path / "export.npz")["x"].tolist() == [0, 1, 2]


def test_metrics_log_truncate_and_final(tmp_path):
  log = workdir.MetricsLog(str(tmp_path / "metrics.jsonl"))
  for step in (2, 4, 6):
    log.append({"step": step})
  log.set_final({"step": 6, "recall@20": 0.1})
  log.truncate_after(4)
  assert [r["step"] for r in log.read()] == [2, 4]
  log.set_final({"step": 8, "recall@20": 0.2})
  log.set_final({"step": 8, "recall@20": 0.3})
  assert log.read() == [{"step": 2}, {"step": 4}, {"step": 8, "recall@20": 0.3, "final": True}]


def test_check_finite_names_the_step_and_the_true_resume_point(tmp_path):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.check_finite(np.ones(3), epoch=0, first_step=0)
  with pytest.raises(NonFiniteLossError, match=r"nan at step 11 \(epoch 4, batch 1\); stopped: no checkpoint"):
    run.check_finite(np.array([1.0, np.nan, np.inf]), epoch=3, first_step=10)
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(7, {"x": np.zeros(2)})
  with pytest.raises(NonFiniteLossError, match=r"inf at step 5 .*last good checkpoint is step 7"):
    run.check_finite(np.array([np.inf]), epoch=0, first_step=5)


def test_restore_with_other_shapes_is_a_mismatch_not_damage(tmp_path):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(1, {"x": np.zeros((2, 3), np.float32)})
  assert run.restore({"x": np.zeros((2, 3), np.float32)})["x"].shape == (2, 3)
  with pytest.raises(UserError, match="checkpoint 1 does not match"):
    run.restore({"x": np.zeros((4, 3), np.float32)})
  assert run.latest_step() == 1  # not moved aside
  run.close()
