"""Retrieval from quantized embeddings: packing, exact integer ranking keys, blocked top-K, index, sharded
search. Every representation family (`hq_jax.quant.family`: float rows, scalar and layer-wise codes,
product codes) goes through the same search; `scoring` says how each is ranked. On CPU the search is a
compiled kernel (`native`, csrc/hq_topk.cc through `jax.ffi`) when `make kernel` has built it, else the
blocked JAX search (`topk`); `hq_jax.backend` chooses.

Typical use:
  from hq_jax.export import load_export
  user_rep, item_rep = load_export("runs/x/export.npz")
  scores, items = topk(user_rep, item_rep, data.train.indptr, data.train.indices, users, k=20)
"""

from hq_jax.retrieval.index import PackedLayer, ProductLayer, QuantizedIndex
from hq_jax.retrieval.packing import pack_codes, packed_nbytes, unpack_codes, words_per_row
from hq_jax.retrieval.scoring import (ItemTable, KeySpec, UserRows, dequantized_scores, prepare_items, prepare_users,
                                      ranking_scores)
from hq_jax.retrieval.sharded import item_mesh, sharded_topk
from hq_jax.retrieval.topk import search_prepared, topk

__all__ = [
    "ItemTable",
    "KeySpec",
    "PackedLayer",
    "ProductLayer",
    "QuantizedIndex",
    "UserRows",
    "dequantized_scores",
    "item_mesh",
    "pack_codes",
    "packed_nbytes",
    "prepare_items",
    "prepare_users",
    "ranking_scores",
    "search_prepared",
    "sharded_topk",
    "topk",
    "unpack_codes",
    "words_per_row",
]
