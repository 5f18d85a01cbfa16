"""hq_jax: quantized embeddings for recommender systems in JAX.

Two methods (see the specs in the README): HQ-GNN, a LightGCN encoder on Jraph whose final user and
item embeddings are quantized to low-bit integer codes and trained with a Hessian-aware straight-through
estimator; and MPE, mixed-precision embedding tables for CTR models.
"""

__version__ = "0.1.0"
