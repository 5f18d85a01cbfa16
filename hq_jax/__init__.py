"""hq_jax: quantized embeddings for recommender systems in JAX.

Two methods (see the specs in the README): HQ-GNN, a LightGCN encoder on Jraph whose final user and
item embeddings are quantized to low-bit integer codes and trained with a Hessian-aware straight-through
estimator (`hq_jax.hqgnn`, `hq_jax.quant`, `hq_jax.retrieval`); and MPE, mixed-precision embedding tables for
CTR models (`hq_jax.ctr`).

What most users call is re-exported here: the interaction data, the LightGCN full-ranking metrics, the
export format, and integer top-K retrieval. Everything else is reached through its subpackage, each with its
own `__all__`; names starting with `_` and modules not listed there are internal.
"""

__version__ = "0.1.0"

from hq_jax.data.interactions import InteractionData, load_dataset, validation_split
from hq_jax.errors import UserError
from hq_jax.evaluation import evaluate, topk_items
from hq_jax.export import load_export, save_export
from hq_jax.retrieval.index import QuantizedIndex
from hq_jax.retrieval.topk import topk

__all__ = [
    "InteractionData", "QuantizedIndex", "UserError", "evaluate", "load_dataset", "load_export", "save_export",
    "topk", "topk_items", "validation_split",
]
