"""`python -m experiments.layer_scores` on a tiny trained LastFM run, as a subprocess (not imported: its absl
flags would clash with other binaries' in the same test process)."""

import json
import subprocess
import sys

import jax.numpy as jnp
import pytest

from conftest import REPO, subprocess_env
from hq_jax import evaluation
from hq_jax.data.interactions import load_dataset
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import setup
from hq_jax.quant import quantizer

CONFIG = str(REPO / "experiments" / "configs" / "hqgnn_test.py")


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                        text=True, timeout=300)


def test_the_lightgcn_score_reproduces_the_run_and_a_quantized_run_is_refused(tmp_path):
  fp = str(tmp_path / "fp")
  proc = _run("experiments.hqgnn", f"--config={CONFIG}", f"--workdir={fp}", "--config.train.epochs=2")
  assert proc.returncode == 0, proc.stderr
  proc = _run("experiments.layer_scores", f"--workdir={fp}")
  assert proc.returncode == 0, proc.stderr
  rows = {r.pop("score"): r for r in (json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{"))}
  assert set(rows) == {"lightgcn", "layerwise-mean", "layerwise-bigear"}
  with open(tmp_path / "fp" / "results.json") as f:
    trained = json.load(f)["metrics"]
  assert rows["lightgcn"] == pytest.approx(trained, abs=2e-4)
  # The layer-wise rows, in process: E(k) of the run's E0 (test config: d = 16, K = 2), weighted layers side
  # by side, so that an inner product is sum_k w_k <E_u(k), E_i(k)>.
  data = load_dataset("lastfm")
  graph = graph_lib.bipartite_graph(data)
  aggregate = graph_lib.make_aggregate(graph, graph_lib.csr_adjacency(graph), "csr")
  layers = [jnp.asarray(setup.read_encoder(fp, (data.num_users + data.num_items, 16)))]
  for _ in range(2):
    layers.append(aggregate(layers[-1]))
  for scheme in ("mean", "bigear"):
    flat = model_lib.flat_rows(jnp.stack(layers), quantizer.layer_weights(3, scheme))
    want = evaluation.evaluate(flat[:data.num_users], flat[data.num_users:], data)
    assert rows[f"layerwise-{scheme}"] == pytest.approx(want, abs=1e-6)
  assert rows["layerwise-mean"]["recall@20"] != rows["lightgcn"]["recall@20"]
  (tmp_path / "q").mkdir()
  stored = json.loads((tmp_path / "fp" / "config.json").read_text())
  stored["config"]["quant"]["bits"] = "1"
  (tmp_path / "q" / "config.json").write_text(json.dumps(stored))
  proc = _run("experiments.layer_scores", f"--workdir={tmp_path / 'q'}")
  assert proc.returncode == 2 and "layer_scores: error:" in proc.stderr and "quantized run" in proc.stderr
  proc = _run("experiments.layer_scores", f"--workdir={tmp_path / 'none'}")
  assert proc.returncode == 2 and "no readable config.json" in proc.stderr
  (tmp_path / "ctr").mkdir()  # an MPE run's config.json: no LightGCN model in it
  (tmp_path / "ctr" / "config.json").write_text(json.dumps({"config": {"model": {"dim": 8}, "train": {}}}))
  proc = _run("experiments.layer_scores", f"--workdir={tmp_path / 'ctr'}")
  assert proc.returncode == 2 and "is not an experiments.hqgnn run" in proc.stderr, proc.stderr
  (tmp_path / "empty").mkdir()  # a run's config, no checkpoint: the message names the flag
  (tmp_path / "empty" / "config.json").write_text((tmp_path / "fp" / "config.json").read_text())
  proc = _run("experiments.layer_scores", f"--workdir={tmp_path / 'empty'}")
  assert proc.returncode == 2 and "--workdir=" in proc.stderr and "no checkpoints folder" in proc.stderr, proc.stderr
