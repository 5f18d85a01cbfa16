"""Low-bit quantization of embedding matrices, its gradient estimators and curvature (HQ-GNN).

* `quantizer`: pure quantize / dequantize for b = 1, 2, 3, 4, 8 and the representations: `QuantizedMatrix`
  (per-row 1-bit scales as float32 or 8-bit `ScaleCodes`) and layer-wise `LayeredQuantized`.
* `pq`: product codes (`ProductCodes`): M subspaces, 2^b codewords each; encode / decode.
* `family`: the one interface every stored representation implements (float, scalar, layered, pq):
  quantize / dequantize, export arrays, stored bytes and bits per node, and how a pair is ranked.
* `estimators`: `fake_quant` (forward = the quantizer, backward = STE or GSTE) as `jax.custom_vjp`s.
* `curvature`: Hessian-vector products, Hutchinson trace / diagonal, and the GSTE's delta.
* `rotation`: ITQ's orthogonal rotation, applied to a trained encoder before 1-bit codes.
* `module`: `EmbeddingQuantizer`, the Flax NNX holder of the user and item quantizer parameters.
"""

from hq_jax.quant.curvature import block_fn
from hq_jax.quant.curvature import DeltaConfig
from hq_jax.quant.curvature import DeltaEstimate
from hq_jax.quant.curvature import deltas_due
from hq_jax.quant.curvature import estimate_deltas
from hq_jax.quant.curvature import gste_delta
from hq_jax.quant.curvature import gste_delta_elementwise
from hq_jax.quant.curvature import hutchinson_diagonal
from hq_jax.quant.curvature import hutchinson_trace
from hq_jax.quant.curvature import HutchinsonEstimate
from hq_jax.quant.curvature import hvp
from hq_jax.quant.curvature import hvp_rev_rev
from hq_jax.quant.curvature import initial_deltas
from hq_jax.quant.curvature import update_deltas
from hq_jax.quant.estimators import fake_quant
from hq_jax.quant.estimators import fake_quant_pq
from hq_jax.quant.estimators import gste_grad
from hq_jax.quant.estimators import gste_pq
from hq_jax.quant.estimators import gste_sign
from hq_jax.quant.estimators import gste_uniform
from hq_jax.quant.estimators import init_qparams
from hq_jax.quant.estimators import ste_pq
from hq_jax.quant.estimators import ste_sign
from hq_jax.quant.estimators import ste_uniform
from hq_jax.quant.estimators import to_quantized_matrix
from hq_jax.quant.family import check_pair
from hq_jax.quant.family import FAMILIES
from hq_jax.quant.family import Family
from hq_jax.quant.family import family_of
from hq_jax.quant.family import storage
from hq_jax.quant.module import EmbeddingQuantizer
from hq_jax.quant.module import MatrixQuantizer
from hq_jax.quant.module import ProductQuantizer
from hq_jax.quant.module import QuantizerConfig
from hq_jax.quant.module import QuantParam
from hq_jax.quant.pq import opq_rotation
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import bits_per_node
from hq_jax.quant.quantizer import dequantize
from hq_jax.quant.quantizer import layer_weights
from hq_jax.quant.quantizer import LayeredQuantized
from hq_jax.quant.quantizer import quantize
from hq_jax.quant.quantizer import quantize_layers
from hq_jax.quant.quantizer import quantize_scales
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.quant.quantizer import ScaleCodes
from hq_jax.quant.quantizer import SUPPORTED_BITS
from hq_jax.quant.rotation import itq_rotation

__all__ = [
    "bits_per_node",
    "block_fn",
    "check_pair",
    "DeltaConfig",
    "DeltaEstimate",
    "deltas_due",
    "dequantize",
    "EmbeddingQuantizer",
    "estimate_deltas",
    "fake_quant",
    "fake_quant_pq",
    "FAMILIES",
    "Family",
    "family_of",
    "gste_delta",
    "gste_delta_elementwise",
    "gste_grad",
    "gste_pq",
    "gste_sign",
    "gste_uniform",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "HutchinsonEstimate",
    "hvp",
    "hvp_rev_rev",
    "init_qparams",
    "initial_deltas",
    "itq_rotation",
    "layer_weights",
    "LayeredQuantized",
    "MatrixQuantizer",
    "opq_rotation",
    "ProductCodes",
    "ProductQuantizer",
    "quantize",
    "quantize_layers",
    "quantize_scales",
    "QuantizedMatrix",
    "QuantizerConfig",
    "QuantParam",
    "ScaleCodes",
    "ste_pq",
    "ste_sign",
    "ste_uniform",
    "storage",
    "SUPPORTED_BITS",
    "to_quantized_matrix",
    "update_deltas",
]
