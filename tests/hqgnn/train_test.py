"""End to end on the embedded LastFM data with the tiny test config: determinism, resume, faults."""

import json
import os
import shutil

import numpy as np
import pytest

from experiments.configs import hqgnn_test
from hq_jax import checkpoint, evaluation
from hq_jax.checkpoint import Checkpointer
from hq_jax.data.interactions import load_dataset
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
  stopped = train.train_and_evaluate(_config(stop_after_epochs=2), workdir)  # interrupted after epoch 2 ...
  assert stopped == {"status": "stopped", "epoch": 2}
  resumed = train.train_and_evaluate(_config(), workdir)  # ... and rerun
  assert resumed["resumed_from_epoch"] == 2
  np.testing.assert_allclose([resumed["metrics"][k] for k in ("recall@20", "ndcg@50")],
                             [results["metrics"][k] for k in ("recall@20", "ndcg@50")], rtol=1e-6)
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [2, 4]


def test_cosine_schedule_matches_formula():
  config = _config(learning_rate=0.01, lr_schedule="cosine", epochs=4)
  lr = train.encoder_learning_rate(config, steps_per_epoch=25)  # 100 steps in all
  for step in (0, 30, 50, 100, 150):
    want = 0.01 * 0.5 * (1 + np.cos(np.pi * min(step, 100) / 100))
    assert float(lr(step)) == pytest.approx(want, abs=1e-9)
  assert train.encoder_learning_rate(_config(learning_rate=0.01)) == 0.01


def test_warmup_cosine_schedule_matches_formula():
  config = _config(learning_rate=0.01, lr_schedule="cosine", epochs=4, warmup_epochs=1)
  lr = train.encoder_learning_rate(config, steps_per_epoch=25)  # 25 warm-up steps, then 75 of decay
  for step in (0, 10, 25, 60, 100, 150):
    want = 0.01 * step / 25 if step < 25 else 0.01 * 0.5 * (1 + np.cos(np.pi * min(step - 25, 75) / 75))
    assert float(lr(step)) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("overrides", [dict(warmup_epochs=1), dict(lr_schedule="cosine", warmup_epochs=5)])
def test_warmup_needs_cosine_and_fewer_epochs(tmp_path, overrides):
  with pytest.raises(UserError, match="warmup_epochs"):
    train.train_and_evaluate(_config(**overrides), str(tmp_path))


def test_gradient_change_statistics_match_numpy():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 8)).astype(np.float32)
  xhat = np.sign(x) * np.float32(0.7)
  change = sorted(float(np.float32(0.05) * abs(a - b)) for a, b in zip(x.ravel(), xhat.ravel()))
  got = train.gradient_change(x, xhat, np.float32(0.05))

  def quantile(p):  # linear interpolation between order statistics, position (n - 1) p
    h = (len(change) - 1) * p
    lo = int(np.floor(h))
    return change[lo] + (h - lo) * (change[min(lo + 1, len(change) - 1)] - change[lo])

  want = {"mean": sum(change) / len(change), "median": quantile(0.5), "p99": quantile(0.99), "max": change[-1],
          "frac_above_1pct": sum(c > 0.01 for c in change) / len(change)}
  assert got.keys() == want.keys()
  for k, v in want.items():
    assert got[k] == pytest.approx(float(v), rel=1e-5, abs=1e-7), k


def test_cosine_schedule_resumes_exactly(tmp_path):
  workdir = str(tmp_path / "whole")
  whole = train.train_and_evaluate(_config(lr_schedule="cosine"), workdir)
  constant = train.train_and_evaluate(_config(), str(tmp_path / "constant"))
  assert whole["metrics"]["recall@20"] != constant["metrics"]["recall@20"]  # the schedule is used
  # A crash after epoch 3 of the same 4-epoch run: its last checkpoint never written.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  os.remove(os.path.join(workdir, "results.json"))
  resumed = train.train_and_evaluate(_config(lr_schedule="cosine"), workdir)
  assert resumed["resumed_from_epoch"] == 3
  np.testing.assert_allclose(resumed["metrics"]["recall@20"], whole["metrics"]["recall@20"], rtol=1e-6)


def test_segment_aggregation_trains_like_csr(reference_run, tmp_path):
  _, results = reference_run
  config = _config()
  config.model.aggregation = "segment"
  seg = train.train_and_evaluate(config, str(tmp_path))
  assert seg["metrics"]["recall@20"] == pytest.approx(results["metrics"]["recall@20"], abs=2e-3)


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
  # ../shared/cases/nan-before-first-checkpoint: the message must not name a checkpoint that does not exist.
  with pytest.raises(NonFiniteLossError, match=r"step \d+ \(epoch 1.*no checkpoint was written yet"):
    train.train_and_evaluate(_config(learning_rate=1e20), str(tmp_path))
  assert Checkpointer(os.path.join(str(tmp_path), "checkpoints")).latest_step() is None


def test_extend_epochs_is_explicit_and_recorded(reference_run, tmp_path):
  reference, results = reference_run
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(epochs=2), workdir)
  with pytest.raises(UserError, match=r"train.epochs \(2 -> 4\).*--extend"):
    train.train_and_evaluate(_config(), workdir)
  extended = train.train_and_evaluate(_config(), workdir, extend=True)
  assert extended["continuations"][0]["from_epochs"] == 2 and extended["continuations"][0]["to_epochs"] == 4
  assert extended["metrics"] == pytest.approx(results["metrics"], rel=1e-6)  # constant lr: same as 4 epochs
  # The 2-epoch run's final evaluation stays (unmarked): the log has the evaluations of an uninterrupted run.
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [json.loads(l)["step"] for l in open(os.path.join(reference, "metrics.jsonl"))] == [2, 4]
  assert json.load(open(os.path.join(workdir, "config.json")))["config"]["train"]["epochs"] == 4


@pytest.mark.parametrize("override", [dict(epochs=1), dict(learning_rate=1e-2), dict(decay=0.0),
                                      dict(batch_size=2048)])
def test_rerun_with_another_config_stops(reference_run, tmp_path, override):
  # ../shared/cases/resume-config-drift: a finished 4-epoch workdir rerun with another config.
  workdir, results = reference_run
  before = open(os.path.join(workdir, "results.json")).read()
  key = next(iter(override))
  with pytest.raises(UserError, match=rf"another config: train\.{key} "):
    train.train_and_evaluate(_config(**override), workdir)
  assert open(os.path.join(workdir, "results.json")).read() == before


def test_rerun_with_neutral_changes_is_allowed(reference_run):
  workdir, results = reference_run
  again = train.train_and_evaluate(_config(log_every=3, checkpoint_every=2), workdir)
  assert again["metrics"] == results["metrics"] and again["resumed_from_epoch"] == 4


def test_bad_config_values(tmp_path):
  config = _config()
  config.model.aggregation = "dense"
  with pytest.raises(UserError, match="aggregation"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _config()
  config.eval.ks = (20, 100000)
  with pytest.raises(UserError, match="100000"):
    train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(UserError, match="lr_schedule='linear'"):
    train.train_and_evaluate(_config(lr_schedule="linear"), str(tmp_path))


@pytest.mark.parametrize("bits,estimator,delta", [("1", "gste", "trace"), ("2", "ste", "trace"),
                                                  pytest.param("4", "gste", "diagonal", marks=pytest.mark.slow),
                                                  ("8", "gste", "fixed")])
def test_quantized_training_exports_codes_that_reproduce_metrics(tmp_path, bits, estimator, delta):
  config = _config(epochs=2)
  config.quant.bits, config.quant.estimator, config.quant.delta = bits, estimator, delta
  config.quant.delta_every = 1
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["model"] == f"hqgnn-{bits}bit-{estimator}"
  export = dict(np.load(tmp_path / "export.npz"))
  assert int(export["bits"]) == int(bits)
  assert export["user_codes"].shape == (1892, 16) and export["item_codes"].shape == (4489, 16)
  if bits == "1":
    assert set(np.unique(export["user_codes"])) <= {-1, 1}
  else:
    assert export["item_codes"].dtype == np.uint8 and export["item_codes"].max() < 2 ** int(bits)
  # Stored bytes: bit-packed codes plus the float32 scalars.
  want_bytes = (1892 + 4489) * ((16 * int(bits) + 7) // 8) + 4 * 4
  assert results["representation_bytes"] == want_bytes
  # The exported codes alone reproduce the reported metrics.
  user_rep, item_rep = evaluation.load_embeddings(str(tmp_path / "export.npz"))
  again = evaluation.evaluate(user_rep, item_rep, load_dataset(None), ks=(20, 50))
  assert again == results["metrics"]
  events = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  deltas = [e for e in events if e.get("event") == "delta"]
  if estimator == "gste" and delta != "fixed":
    # Made at the start of epoch 1, logged as step 2: a resume from checkpoint 1 drops it and redoes it.
    assert [(e["epoch"], e["step"]) for e in deltas] == [(1, 2)]
    assert all(np.isfinite(v) and v >= 0 for v in deltas[0]["delta"].values())
    assert all(np.isfinite(v) for v in deltas[0]["curvature_per_element"].values())
  else:
    assert not deltas


def test_bad_quant_config(tmp_path):
  config = _config()
  config.quant.bits = "5"
  with pytest.raises(UserError, match="bits"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _config()
  config.quant.bits, config.quant.delta = "1", "hessian"
  with pytest.raises(UserError, match="delta"):
    train.train_and_evaluate(config, str(tmp_path))
  config = _config()
  config.quant.bits, config.quant.drop_user_scales = "2", True
  with pytest.raises(UserError, match=r"config\.quant \(bits='2', .*drop_user_scales=True\): drop_user_scales needs "
                                     r"1-bit codes"):
    train.train_and_evaluate(config, str(tmp_path))


def test_init_from_starts_encoder_at_the_source_checkpoint(reference_run, tmp_path):
  source, results = reference_run
  # Zero epochs from the source's checkpoint: the same embeddings, so the same export and metrics.
  again = train.train_and_evaluate(_config(epochs=0, init_from=source), str(tmp_path / "fp"))
  np.testing.assert_array_equal(np.load(tmp_path / "fp" / "export.npz")["item_embeddings"],
                                np.load(os.path.join(source, "export.npz"))["item_embeddings"])
  assert again["metrics"] == results["metrics"]
  # A quantized run starts from the trained encoder too (its range initialised on the trained embeddings).
  config = _config(epochs=0, init_from=source)
  config.quant.bits = "4"
  quantized = train.train_and_evaluate(config, str(tmp_path / "q"))
  assert quantized["metrics"]["recall@20"] > 0.9 * results["metrics"]["recall@20"]
  # A source that does not match (different dim) and a source without checkpoints are user errors.
  config = _config(epochs=0, init_from=source)
  config.model.dim = 8
  with pytest.raises(UserError, match="does not match"):
    train.train_and_evaluate(config, str(tmp_path / "bad_dim"))
  with pytest.raises(UserError, match="no checkpoints"):
    train.train_and_evaluate(_config(epochs=0, init_from=str(tmp_path / "nowhere")), str(tmp_path / "x"))



def test_read_encoder_drops_only_zero_padding_rows(reference_run, tmp_path):
  source, _ = reference_run
  rows = 1892 + 4489  # LastFM users + items; the test config's d = 16
  e0 = train.read_encoder(source, (rows, 16))
  assert e0.shape == (rows, 16) and np.all(np.any(e0 != 0, axis=1))
  # A smaller dataset must not silently take the first rows of a larger run's encoder.
  with pytest.raises(UserError, match=r"--workdir='.*': its encoder \[\(6381, 16\)\] does not match .*\(6000, 16\)"):
    train.read_encoder(source, (6000, 16), what="--workdir")
  # A run padded for a device mesh: its zero rows are dropped; a non-zero extra row is not padding.
  for extra, ok in ((np.zeros((3, 16), np.float32), True), (np.full((3, 16), 0.5, np.float32), False)):
    padded = str(tmp_path / f"padded_{ok}")
    with checkpoint.Checkpointer(os.path.join(padded, "checkpoints")) as ckpt:
      ckpt.save(1, {"params": {"encoder": {"embedding": np.concatenate([e0, extra])}}})
    if ok:
      np.testing.assert_array_equal(train.read_encoder(padded, (rows, 16)), e0)
    else:
      with pytest.raises(UserError, match="does not match"):
        train.read_encoder(padded, (rows, 16))


def test_itq_rotation_of_the_start_keeps_its_scores(reference_run, tmp_path):
  source, _ = reference_run
  config = _config(epochs=0, init_from=source)
  config.quant.update(bits="1", one_bit_scale="row", estimator="ste", rotation="itq")
  data = train.load_training_data(config)
  problem = train.create_problem(config, data)
  rotated = train.create_model(config, train.validate_config(config, data), problem)
  config.quant.rotation = "none"
  plain = train.create_model(config, train.validate_config(config, data), problem)
  (ru, ri), (pu, pi) = rotated.final_embeddings(*problem.graph_args), plain.final_embeddings(*problem.graph_args)
  assert not np.allclose(ru, pu, atol=1e-3)  # rotated ...
  np.testing.assert_allclose(ru @ ri.T, pu @ pi.T, rtol=1e-4, atol=1e-5)  # ... with the same scores
  config.quant.rotation = "itq"
  assert train.train_and_evaluate(config, str(tmp_path / "q"))["model"] == "hqgnn-1bit-ste-row32-itq"
  # Only a trained start, about to be quantized, is rotated.
  for overrides in (dict(rotation="itq", bits="none"), dict(rotation="itq", bits="1"), dict(rotation="pca")):
    bad = _config(epochs=0, init_from="" if overrides.get("bits") == "1" else source)
    bad.quant.update(overrides)
    with pytest.raises(UserError, match="quant.rotation"):
      train.train_and_evaluate(bad, str(tmp_path / "bad"))


def damage_checkpoint(workdir: str, step: int) -> None:
  """Flips bytes of the largest file of a checkpoint step, as in ../shared/cases/corrupted-checkpoint."""
  files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(workdir, "checkpoints", str(step)))
           for f in names]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  for i in range(100, len(data), 997):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes(reference_run, tmp_path, capsys):
  _, results = reference_run
  workdir = str(tmp_path)
  shutil.copytree(reference_run[0], workdir, dirs_exist_ok=True)
  damage_checkpoint(workdir, 4)
  resumed = train.train_and_evaluate(_config(), workdir)
  err = capsys.readouterr().err
  assert "checkpoint 4" in err and "damaged" in err and err.count("\n") == 1
  assert resumed["resumed_from_epoch"] == 3
  assert resumed["metrics"] == pytest.approx(results["metrics"], rel=1e-6)
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "4"))  # moved aside, not deleted
  # Every checkpoint damaged: one clear error, nothing deleted.
  damage_checkpoint(workdir, 4)
  damage_checkpoint(workdir, 3)
  with pytest.raises(UserError, match="no checkpoint restores"):
    train.train_and_evaluate(_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_damaged"))) == ["3", "4", "4.1"]


def test_pretrain_then_quantize_in_one_run_equals_init_from(reference_run, tmp_path):
  # train.pretrain_epochs: a full-precision stage in <workdir>/pretrain, then the quantized run starts from it.
  config = _config(pretrain_epochs=4, epochs=2)
  config.quant.update(bits="1", one_bit_scale="row", drop_user_scales=True)  # quantizer keys the stage drops
  config.distill.weight = 0.5
  config.distill.top_r = 10
  results = train.train_and_evaluate(config, str(tmp_path / "one"))
  assert results["pretrain"]["epochs"] == 4 and os.path.isdir(tmp_path / "one" / "pretrain" / "checkpoints")
  assert results["pretrain"]["metrics"]["recall@20"] > results["metrics"]["recall@20"] > 0.02
  # The same two stages by hand give the same result.
  stage = _config(epochs=4)
  stage.seed = train.PRETRAIN_SEED_OFFSET
  stage.eval.every = 0
  train.train_and_evaluate(stage, str(tmp_path / "fp"))
  by_hand = _config(epochs=2, init_from=str(tmp_path / "fp"))
  by_hand.quant.update(bits="1", one_bit_scale="row", drop_user_scales=True)
  by_hand.distill.weight = 0.5
  by_hand.distill.top_r = 10
  assert train.train_and_evaluate(by_hand, str(tmp_path / "q"))["metrics"] == results["metrics"]
  with pytest.raises(UserError, match="exclude each other"):
    train.train_and_evaluate(_config(pretrain_epochs=2, init_from=str(tmp_path / "fp")), str(tmp_path / "x"))


@pytest.mark.parametrize("codes,scale_bits,estimator,weights,drop_user_scales", [
    ("final", 8, "gaussian", "mean", True),
    pytest.param("layerwise", 8, "gste", "bigear", False, marks=pytest.mark.slow),  # make test-all only
    ("layerwise", 32, "ste", "mean", False)])
def test_row_scales_and_layerwise_codes_export_what_was_evaluated(tmp_path, codes, scale_bits, estimator, weights,
                                                                 drop_user_scales):
  config = _config(epochs=2)
  config.quant.update(bits="1", one_bit_scale="row", scale_bits=scale_bits, estimator=estimator, codes=codes,
                      layer_weights=weights, delta_every=1, drop_user_scales=drop_user_scales)
  results = train.train_and_evaluate(config, str(tmp_path))
  layers = 3 if codes == "layerwise" else 1  # K = 2 in the test config
  # Bits per node: 16 sign bits (2 bytes) + the row scale (4 bytes, or 1 byte + 8 per matrix) + the offset,
  # per layer; over users and items. Users without scales: 2 bytes a row + one float32 scale + the offset.
  n = 1892 + 4489
  per_matrix = (lambda rows: rows * (2 + (1 if scale_bits == 8 else 4)) + (8 if scale_bits == 8 else 0) + 4)
  user_bytes = 1892 * 2 + 4 + 4 if drop_user_scales else per_matrix(1892)
  assert results["representation_bytes"] == layers * (user_bytes + per_matrix(4489))
  assert results["model"].endswith("-itemscales") == drop_user_scales
  assert results["bits_per_node"] == pytest.approx(8 * results["representation_bytes"] / n)
  user_rep, item_rep = evaluation.load_embeddings(str(tmp_path / "export.npz"))
  assert evaluation.evaluate(user_rep, item_rep, load_dataset(None), ks=(20, 50)) == results["metrics"]
  if estimator == "gste":
    event = next(json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"delta"' in l and "event" in l)
    assert set(event["gradient_change"]["users"]) == {"mean", "median", "p99", "max", "frac_above_1pct"}
