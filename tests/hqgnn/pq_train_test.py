"""HQ-GNN with product codes (quant.kind = 'pq') end to end on the tiny LastFM test config: training lowers
the loss, an interrupted run resumes bit-identically (codebooks restored), OPQ keeps a trained start's
scores, EMA codebooks move without the optimizer, and the config errors name their keys."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import hqgnn_test
from hq_jax.checkpoint import Checkpointer
from hq_jax.errors import UserError
from hq_jax.hqgnn import lightgcn
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import train
from hq_jax.quant import pq


def _config(epochs=4, **quant):
  config = hqgnn_test.get_config()
  config.train.epochs = epochs
  config.quant.update(kind="pq", pq_subspaces=4, pq_bits=4, estimator="gste", delta="trace", delta_every=2,
                      hutchinson_max_samples=8)
  config.quant.update(quant)
  return config


def _lines(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def pq_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pq"))
  return workdir, train.train_and_evaluate(_config(), workdir)


def test_pq_training_lowers_the_loss_and_reports_code_bits(pq_run, capsys):
  workdir, results = pq_run
  assert results["model"] == "hqgnn-pq4x4-gste-separate"
  assert results["bits_per_node"] == 16.0  # M * b code bits per node; the codebooks beside it
  nodes = 1892 + 4489
  assert results["codebook_bits_per_node"] == pytest.approx(2 * 8 * 4 * 16 * 4 * 4 / nodes)
  assert results["representation_bytes"] == nodes * 2 + 2 * 4 * 16 * 4 * 4
  assert results["metrics"]["recall@20"] > 0.03
  deltas = [l for l in _lines(workdir) if l.get("event") == "delta"]  # the GSTE's curvature rule ran
  assert deltas and all(d["delta"]["users"] >= 0 and d["delta"]["items"] > 0 for d in deltas)
  again = _config(epochs=8)
  again.train.log_every = 1
  results8 = train.train_and_evaluate(again, workdir + "_8")
  losses = [float(l.split("loss ")[1].split()[0]) for l in capsys.readouterr().out.splitlines()
            if l.startswith("epoch ")]
  assert losses[-1] < losses[0] - 0.01 and results8["metrics"]["recall@20"] > results["metrics"]["recall@20"]


def test_pq_resume_equals_uninterrupted(pq_run, tmp_path):
  workdir, results = pq_run
  config = _config()
  config.train.stop_after_epochs = 2
  assert train.train_and_evaluate(config, str(tmp_path)) == {"status": "stopped", "epoch": 2}
  resumed = train.train_and_evaluate(_config(), str(tmp_path))
  assert resumed["resumed_from_epoch"] == 2 and resumed["metrics"] == results["metrics"]
  a, b = np.load(os.path.join(workdir, "export.npz")), np.load(str(tmp_path / "export.npz"))
  assert sorted(a.files) == sorted(b.files)
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])


def test_pq_model_quantize_gives_product_codes_that_decode_to_the_trained_xhat(tmp_path):
  config = _config(epochs=0, pq_codebooks="shared")
  data = train.load_training_data(config)
  problem = train.create_problem(config, data)
  model = train.create_model(config, train.validate_config(config, data), problem)
  users, items = model.quantize(*problem.graph_args)
  assert isinstance(users, pq.ProductCodes) and users.codes.shape == (1892, 4) and users.codebooks.shape == (4, 16, 4)
  np.testing.assert_array_equal(np.asarray(users.codebooks), np.asarray(items.codebooks))  # shared
  xu, xi = model(*problem.graph_args)
  np.testing.assert_array_equal(np.asarray(users.dequantize()), np.asarray(xu))
  np.testing.assert_array_equal(np.asarray(items.dequantize()), np.asarray(xi))
  shared = train.train_and_evaluate(config, str(tmp_path))
  assert shared["codebook_bits_per_node"] == pytest.approx(8 * 4 * 16 * 4 * 4 / (1892 + 4489))  # counted once


def test_opq_rotation_keeps_the_start_scores_and_ema_codebooks_move(pq_run, tmp_path):
  source, _ = pq_run
  fp = hqgnn_test.get_config()
  fp.train.epochs = 2
  train.train_and_evaluate(fp, str(tmp_path / "fp"))
  config = _config(epochs=0, pq_rotation="opq", pq_opq_iterations=3)
  config.train.init_from = str(tmp_path / "fp")
  data = train.load_training_data(config)
  problem = train.create_problem(config, data)
  rotated = train.create_model(config, train.validate_config(config, data), problem)
  config.quant.pq_rotation = "none"
  plain = train.create_model(config, train.validate_config(config, data), problem)
  (ru, ri), (pu, pi) = rotated.final_embeddings(*problem.graph_args), plain.final_embeddings(*problem.graph_args)
  assert not np.allclose(ru, pu, atol=1e-3)
  np.testing.assert_allclose(ru @ ri.T, pu @ pi.T, rtol=1e-4, atol=1e-5)
  # EMA codebooks: trained without gradients, the codebooks still change.
  ema = _config(epochs=2, pq_update="ema", estimator="ste")
  start = train.create_model(ema, train.validate_config(ema, data), problem).quantizer.codebooks[...]
  results = train.train_and_evaluate(ema, str(tmp_path / "ema"))
  assert results["model"] == "hqgnn-pq4x4-ste-separate-ema"
  with Checkpointer(str(tmp_path / "ema" / "checkpoints")) as ck:
    saved = ck.restore_as_saved(ck.latest_step())
  books = np.asarray(saved["params"]["quantizer"]["codebooks"]["value"]
                     if isinstance(saved["params"]["quantizer"]["codebooks"], dict)
                     else saved["params"]["quantizer"]["codebooks"])
  assert books.shape == start.shape and not np.allclose(books, np.asarray(start))


def test_items_only_codes_keep_users_float_and_count_bits_per_item(tmp_path):
  # pq_sides = 'items' (FAISS's "items coded, users float" layout): users pass through unquantized in
  # training, evaluation and export; bits per node count per coded item; EMA updates touch the items' set.
  config = _config(epochs=2, pq_sides="items", estimator="ste")
  data = train.load_training_data(config)
  problem = train.create_problem(config, data)
  model = train.create_model(config, train.validate_config(config, data), problem)
  assert model.quantizer.codebooks[...].shape == (1, 4, 16, 4)
  (fu, fi), (hu, hi) = model.represent(*problem.graph_args)
  np.testing.assert_array_equal(np.asarray(hu), np.asarray(fu))
  assert not np.array_equal(np.asarray(hi), np.asarray(fi))
  users, items = model.quantize(*problem.graph_args)
  assert isinstance(items, pq.ProductCodes) and not isinstance(users, pq.ProductCodes)
  np.testing.assert_array_equal(np.asarray(users), np.asarray(fu))
  np.testing.assert_array_equal(np.asarray(items.dequantize()), np.asarray(hi))
  results = train.train_and_evaluate(config, str(tmp_path / "items"))
  assert results["model"] == "hqgnn-pq4x4-ste-items" and results["layout"] == "items"
  assert results["bits_per_node"] == 16.0  # per coded item
  assert results["codebook_bits_per_node"] == pytest.approx(8 * 4 * 16 * 4 * 4 / 4489)
  assert results["representation_bytes"] == 1892 * 16 * 4 + 4489 * 2 + 4 * 16 * 4 * 4  # float32 users, d = 16
  stored = np.load(str(tmp_path / "items" / "export.npz"))
  assert "user_embeddings" in stored.files and "item_codes" in stored.files
  from hq_jax import evaluation, export  # the export ranks like training's final evaluation
  again = evaluation.evaluate(*export.load_export(str(tmp_path / "items" / "export.npz")), data, ks=(20,))
  assert again["recall@20"] == results["metrics"]["recall@20"]
  ema = _config(epochs=1, pq_sides="items", estimator="ste", pq_update="ema")
  assert train.train_and_evaluate(ema, str(tmp_path / "ema"))["layout"] == "items"


@pytest.mark.parametrize("overrides,match", [
    (dict(pq_sides="users"), "pq_sides"),
    (dict(pq_sides="items", pq_codebooks="shared"), "pq_codebooks"),
    (dict(pq_subspaces=5), "pq_subspaces"),
    (dict(pq_bits=9), "pq_bits"),
    (dict(pq_codebooks="both"), "pq_codebooks"),
    (dict(pq_update="adam"), "pq_update"),
    (dict(estimator="gaussian"), "estimator"),
    (dict(bits="4"), "quant.bits"),
    (dict(pq_rotation="opq"), "pq_rotation"),
    (dict(kind="vq"), "quant.kind"),
])
def test_bad_pq_config(tmp_path, overrides, match):
  with pytest.raises(UserError, match=match):
    train.train_and_evaluate(_config(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("estimator,delta", [("ste", 0.0), ("gste", 5.0)])
def test_batch_rows_give_the_gradients_of_all_rows(estimator, delta):
  # The trainer quantizes only a batch's distinct rows (`HQGNN.scored_rows`): same loss and gradients as BPR
  # on the whole quantized matrices, the GSTE included.
  config = _config(epochs=0, estimator=estimator)
  data = train.load_training_data(config)
  problem = train.create_problem(config, data)
  graphdef, params = nnx.split(train.create_model(config, train.validate_config(config, data), problem))
  batch = {k: np.array(v[0, :300]) for k, v in train.epoch_batches(data, 0, 0, 4096).items()}
  batch["weights"][-20:] = 0.0
  deltas = {"users": np.float32(delta), "items": np.float32(delta / 2)}

  def whole(p):
    users, items = nnx.merge(graphdef, p)(*problem.graph_args, deltas)
    return model_lib.bpr_of_representations({"users": users, "items": items}, batch)

  def rows(p):
    scored, _ = nnx.merge(graphdef, p).scored_rows(*problem.graph_args, batch["triples"], deltas, batch["weights"])
    return lightgcn.bpr_loss(*scored, batch["weights"])

  (lw, gw), (lr, gr) = jax.value_and_grad(whole)(params), jax.value_and_grad(rows)(params)
  np.testing.assert_allclose(float(lr), float(lw), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(gr), jax.tree.leaves(gw)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)
