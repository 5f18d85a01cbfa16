r"""A trained full-precision LightGCN scored as layer-wise codes would score it, unquantized (ours).

  python -m experiments.layer_scores --workdir=runs/gowalla_fast

LightGCN scores <mean_k E_u(k), mean_k E_i(k)>, k = 0..K, which holds the cross-layer terms <E_u(k), E_i(l)>,
k != l. Layer-wise codes (`quant.codes = 'layerwise'`, BiGeaR's layout) score sum_k w_k <E_u(k), E_i(k)>
without them. This binary evaluates the run's E0 (its latest checkpoint) under LightGCN's score and under the
layer-wise score with LightGCN's mean weights and with BiGeaR's, in float32: the ceiling of layer-wise codes
fine-tuned from that run, before any quantization.

The dataset, split and model shape are the run's own (its config.json); `--data_dir` replaces a data folder
that moved. Prints, after the checkpoint's log line, one JSON line per score:
{"score": "lightgcn" | "layerwise-mean" | "layerwise-bigear", "recall@20": ..., ...}. Bad input stops with
one `layer_scores: error: ...` line and exit status 2. Measured on the Gowalla start: results/hqgnn_lowbit.md.
"""

import os

import jax.numpy as jnp
import ml_collections
from absl import flags

from hq_jax import cli
from hq_jax import evaluation
from hq_jax import strict_json
from hq_jax.errors import UserError
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import setup
from hq_jax.quant import quantizer
from hq_jax.workdir import read_json

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained full-precision run (experiments.hqgnn workdir).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the run's config.data_dir (default: keep it).")

SCORES = ("lightgcn", "layerwise-mean", "layerwise-bigear")


def main(argv):
  del argv
  try:
    stored = read_json(os.path.join(_WORKDIR.value, "config.json"))["config"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"--workdir={_WORKDIR.value!r}: no readable config.json of a run there ({e})") from None
  if not (isinstance(stored, dict) and {"data_dir", "model", "quant", "eval"} <= stored.keys()
          and "num_layers" in stored["model"]):
    raise UserError(f"--workdir={_WORKDIR.value!r} is not an experiments.hqgnn run (its config.json has no "
                    "model.num_layers, quant or eval)")
  config = ml_collections.ConfigDict(stored)
  if _DATA_DIR.value is not None:
    config.data_dir = _DATA_DIR.value
  if str(config.quant.bits).lower() not in ("none", "fp", "32", ""):
    raise UserError(f"--workdir={_WORKDIR.value!r} is a quantized run (quant.bits={config.quant.bits!r}): "
                    "give a full-precision one")
  data = setup.load_training_data(config)
  e0 = setup.read_encoder(_WORKDIR.value, (data.num_users + data.num_items, int(config.model.dim)), what="--workdir")
  graph = graph_lib.bipartite_graph(data)
  aggregate = graph_lib.make_aggregate(graph, graph_lib.csr_adjacency(graph), "csr")
  e0, num_layers = jnp.asarray(e0), int(config.model.num_layers)
  layers = graph_lib.lightgcn_layers(aggregate, e0, num_layers)
  for score in SCORES:
    # Rows whose inner products are the score: LightGCN's final embeddings (the trainer's own function), or
    # the weighted layers side by side (`model.flat_rows`: sum_k w_k <E_u(k), E_i(k)>).
    rows = (graph_lib.lightgcn_propagate(aggregate, e0, num_layers) if score == "lightgcn" else
            model_lib.flat_rows(layers, quantizer.layer_weights(num_layers + 1, score.split("-")[1])))
    metrics = evaluation.evaluate(rows[:data.num_users], rows[data.num_users:], data, ks=tuple(config.eval.ks),
                                  batch_size=config.eval.batch_size)
    print(strict_json.dumps({"score": score, **metrics}), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main, "layer_scores")
