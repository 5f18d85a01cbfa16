"""HQ-GNN (RecSys 2023, arXiv 2309.01032; spec: ../shared/specs/hqgnn.md): LightGCN on Jraph, quantized.

* `graph`: the normalised bipartite graph A~ and LightGCN propagation (Jraph segment sum, or CSR).
* `lightgcn`: `LightGCN`, the NNX holder of E0; the BPR loss and its L2 term.
* `model`: `HQGNN`, encoder + quantizer: `__call__` gives what BPR scores, `quantize()` the integer codes.
* `sampling`: the reference BPR sampler, one epoch per (seed, epoch).
* `train`: the trainer driven by an ml_collections config (`train_and_evaluate`).
"""

from hq_jax.hqgnn.graph import (CSRAdjacency, bipartite_graph, csr_adjacency, csr_aggregate, lightgcn_propagate,
                                make_aggregate, segment_aggregate)
from hq_jax.hqgnn.lightgcn import LightGCN, bpr_loss, l2_regularizer
from hq_jax.hqgnn.model import HQGNN, ModelConfig, bpr_of_representations, distillation_loss
from hq_jax.hqgnn.sampling import epoch_rng, sample_bpr_epoch

__all__ = [
    "CSRAdjacency", "HQGNN", "LightGCN", "ModelConfig", "bipartite_graph", "bpr_loss", "bpr_of_representations",
    "csr_adjacency", "csr_aggregate", "distillation_loss", "epoch_rng", "l2_regularizer", "lightgcn_propagate",
    "make_aggregate", "sample_bpr_epoch", "segment_aggregate",
]
