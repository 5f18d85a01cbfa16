"""An orthogonal rotation of the embedding space that makes sign codes lose less: ITQ.

Iterative Quantization (Gong & Lazebnik, CVPR 2011; Gong et al., TPAMI 2013) finds the orthogonal R (d, d)
that minimises ||sign(V R) - V R||_F^2 over the rows V (n, d), alternating B = sign(V R) with the orthogonal
Procrustes solution R = S W^T of the SVD V^T B = S Omega W^T. Inner products are invariant under R
(<u R, i R> = <u, i>), so a full-precision recommender keeps its scores exactly while its sign codes of
u R and i R become a better approximation of them.

LightGCN is linear in E0, so rotating E0 rotates every propagation layer and the final embeddings by the same
R: a trained encoder is rotated once before quantization-aware fine-tuning (`HQGNN.rotate_encoder`,
`config.quant.rotation = 'itq'`), and nothing is stored for it (the codes are of the rotated embeddings).
Applying it to a recommender's user and item embeddings for 1-bit codes is ours.
"""

import jax
import jax.numpy as jnp


def unit_rows(x: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm; all-zero rows (mesh padding) stay zero. (n, d) -> (n, d), same dtype."""
  norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return jnp.where(norms > 0, x / jnp.where(norms > 0, norms, 1), 0)


def sign_codes(x: jax.Array) -> jax.Array:
  """sign(x) with sign(0) = +1 (the quantizer's convention), same shape and dtype."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def quantization_loss(v: jax.Array, rotation: jax.Array) -> jax.Array:
  """ITQ's objective ||sign(V R) - V R||_F^2 (scalar float32)."""
  vr = v @ rotation
  return jnp.sum(jnp.square(sign_codes(vr) - vr))


def procrustes(v: jax.Array, b: jax.Array) -> jax.Array:
  """The orthogonal R (d, d) minimising ||B - V R||_F: S W^T of the SVD V^T B = S Omega W^T."""
  s, _, wt = jnp.linalg.svd(v.T @ b)
  return s @ wt


def random_rotation(key: jax.Array, dim: int, dtype=jnp.float32) -> jax.Array:
  """A random orthogonal (dim, dim) matrix (QR of a Gaussian with the signs of R's diagonal fixed)."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (dim, dim), dtype))
  return q * jnp.where(jnp.diag(r) < 0, -1, 1).astype(dtype)[None, :]


def itq_rotation(x: jax.Array, key: jax.Array, iterations: int = 50, start: jax.Array | None = None) -> jax.Array:
  """ITQ's rotation for the rows of x, each first scaled to unit norm (row scales store the norms).

  Args:
    x: (n, d) float embeddings (e.g. users and items stacked); zero rows are ignored.
    key: PRNG key of the random orthogonal start.
    iterations: alternations of B = sign(V R) and R = procrustes(V, B); >= 0.
    start: the first R (d, d) orthogonal; default a random rotation drawn from `key`. ITQ finds a local
      optimum of its start.

  Returns:
    (d, d) orthogonal float32 R; the objective `quantization_loss(unit_rows(x), R)` never increases over
    the iterations (equivalently sum |V R| never decreases). Pure and jit-able (the SVD is of a d x d
    matrix).
  """
  v = unit_rows(x.astype(jnp.float32))
  start = random_rotation(key, x.shape[-1]) if start is None else jnp.asarray(start, jnp.float32)
  return jax.lax.fori_loop(0, iterations, lambda _, r: procrustes(v, sign_codes(v @ r)), start)
