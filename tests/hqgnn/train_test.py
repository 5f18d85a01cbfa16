"""End to end on the embedded LastFM data with the tiny test config: determinism, resume, faults."""

import json
import os

import numpy as np
import pytest

from experiments.configs import hqgnn_test
from hq_jax.checkpoint import Checkpointer
from hq_jax.errors import NonFiniteLossError, UserError
from hq_jax.hqgnn import train


def _config(**train_overrides):
  config = hqgnn_test.get_config()
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ref"))
  return workdir, train.train_and_evaluate(_config(), workdir)


def test_outputs_written(reference_run):
  workdir, results = reference_run
  assert set(os.listdir(workdir)) >= {"results.json", "metrics.jsonl", "export.npz", "checkpoints"}
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk["metrics"] == pytest.approx(results["metrics"])
  assert on_disk["dataset"]["name"] == "lastfm" and on_disk["device"]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [2, 4] and lines[-1]["final"]
  export = np.load(os.path.join(workdir, "export.npz"))
  assert export["user_embeddings"].shape == (1892, 16) and export["item_embeddings"].shape == (4489, 16)
  # Training did something: better than the untrained model.
  untrained = train.train_and_evaluate(_config(epochs=0), workdir + "_untrained")
  assert results["metrics"]["recall@20"] > untrained["metrics"]["recall@20"] + 0.02


def test_same_seed_same_result(reference_run, tmp_path):
  _, results = reference_run
  again = train.train_and_evaluate(_config(), str(tmp_path))
  assert again["metrics"] == results["metrics"]


def test_resume_equals_uninterrupted(reference_run, tmp_path):
  _, results = reference_run
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(epochs=2), workdir)  # stop after epoch 2 ...
  resumed = train.train_and_evaluate(_config(), workdir)  # ... and continue to epoch 4
  assert resumed["resumed_from_epoch"] == 2
  np.testing.assert_allclose([resumed["metrics"][k] for k in ("recall@20", "ndcg@50")],
                             [results["metrics"][k] for k in ("recall@20", "ndcg@50")], rtol=1e-6)
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [2, 4]


def test_segment_aggregation_trains_like_csr(reference_run, tmp_path):
  _, results = reference_run
  config = _config()
  config.model.aggregation = "segment"
  seg = train.train_and_evaluate(config, str(tmp_path))
  assert seg["metrics"]["recall@20"] == pytest.approx(results["metrics"]["recall@20"], abs=2e-3)


def test_non_finite_loss_names_step_and_keeps_checkpoint(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(epochs=2), workdir)
  with pytest.raises(NonFiniteLossError, match=r"step \d+ \(epoch 3"):
    train.train_and_evaluate(_config(epochs=4, learning_rate=1e30), workdir)
  assert Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 2


def test_bad_config_values(tmp_path):
  config = _config()
  config.model.aggregation = "dense"
  with pytest.raises(UserError, match="aggregation"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _config()
  config.eval.ks = (20, 100000)
  with pytest.raises(UserError, match="100000"):
    train.train_and_evaluate(config, str(tmp_path))
