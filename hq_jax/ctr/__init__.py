"""CTR prediction with mixed-precision embeddings (MPE): data, models, quantizers and training."""

from hq_jax.ctr.data import CTRDataset, load_ctr
from hq_jax.ctr.lsq import lsq_plus_grads, lsq_quantize
from hq_jax.ctr.methods import METHODS, Method
from hq_jax.ctr.metrics import log_loss, roc_auc
from hq_jax.ctr.models import BACKBONES, CTRModel, Embedding, make_backbone
from hq_jax.ctr.mpe import (MixedPrecisionEmbedding, bit_regularizer, frequency_groups, precision_probs,
                            select_bits_sampling, select_bits_threshold)

__all__ = [
    "BACKBONES", "CTRDataset", "CTRModel", "Embedding", "METHODS", "Method", "MixedPrecisionEmbedding",
    "bit_regularizer", "frequency_groups", "load_ctr", "log_loss", "lsq_plus_grads", "lsq_quantize",
    "make_backbone", "precision_probs", "roc_auc", "select_bits_sampling", "select_bits_threshold",
]
