"""Product codes (PQ): the stored representation and its pure encode / decode (ours, after Jegou et al.,
"Product Quantization for Nearest Neighbor Search", TPAMI 2011).

A (n, d) matrix is split into M subspaces of d / M consecutive dimensions. Subspace m has a codebook of
K = 2^b codewords (b <= 8), `codebooks[m]` of shape (K, d / M). A row is stored as M codes, one uint8 per
subspace, and decoded as the concatenation of its chosen codewords:

  x^[r] = [codebooks[0][codes[r, 0]] | codebooks[1][codes[r, 1]] | ... | codebooks[M-1][codes[r, M-1]]].

Encoding picks, per subspace, the codeword nearest in squared Euclidean distance (ties to the lower code).
An OPQ-style rotation R (orthogonal, d x d) is applied before encoding when both sides are coded with
rotated codebooks; it is not stored, since <u R, i R> = <u, i> for both sides rotated alike.

Bytes (`nbytes_packed`): codes at b bits each (rows padded to whole bytes) plus the float32 codebooks.
`bits_per_node` counts the codes only (the codebooks are shared by all rows; their share is reported
beside it by `codebook_bits_per_node`).

Training (issue 22, ours): x^ = decode(encode(x, C), C) inside HQ-GNN, with the estimators of
`hq_jax.quant.estimators` (`ste_pq`, `gste_pq`). The rules they and the trainer use live here, one function
each: `codebook_grad` (dL/dC, the sum of g over the rows that chose each codeword: exact, since x^ copies the
codeword), `ema_codebooks` (VQ-VAE's exponential-moving-average k-means update, the alternative to
gradients), `kmeans` / `init_codebooks` (seeded Lloyd k-means per subspace, the initialisation from a
trained encoder) and `opq_rotation` (Ge et al.'s alternating OPQ).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax.quant import rotation

MAX_PQ_BITS = 8


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ProductCodes:
  """A product-quantized (n, d) matrix.

  Invariant: `dequantize()[r] == concat_m codebooks[m, codes[r, m]]` (float32), with codes uint8 (n, M) in
  [0, 2^bits - 1] and codebooks float32 (M, 2^bits, d / M). `bits` is static (pytree metadata).
  """

  codes: jax.Array  # (n, M) uint8
  codebooks: jax.Array  # (M, 2^bits, d / M) float32
  bits: int = dataclasses.field(metadata=dict(static=True))

  @property
  def num_rows(self) -> int:
    return int(self.codes.shape[0])

  @property
  def num_subspaces(self) -> int:
    return int(self.codes.shape[1])

  @property
  def sub_dim(self) -> int:
    return int(self.codebooks.shape[2])

  @property
  def shape(self) -> tuple[int, int]:
    """(rows, d) of the decoded matrix."""
    return (self.num_rows, self.num_subspaces * self.sub_dim)

  def dequantize(self) -> jax.Array:
    return decode(self.codes, self.codebooks)

  def code_bytes(self) -> int:
    return self.num_rows * ((self.num_subspaces * self.bits + 7) // 8)

  def codebook_bytes(self) -> int:
    return 4 * int(np.prod(self.codebooks.shape))

  def nbytes_packed(self) -> int:
    return self.code_bytes() + self.codebook_bytes()


def check_pq_shape(dim: int, num_subspaces: int, bits: int) -> None:
  """Raises ValueError unless M divides d and 1 <= bits <= 8."""
  if num_subspaces < 1 or dim % num_subspaces:
    raise ValueError(f"the number of subspaces M = {num_subspaces} must divide the dimension d = {dim}")
  if not 1 <= bits <= MAX_PQ_BITS:
    raise ValueError(f"product-code bits must be in 1..{MAX_PQ_BITS}, got {bits}")


def split(x: jax.Array, num_subspaces: int) -> jax.Array:
  """(n, d) -> (n, M, d / M): the M consecutive sub-vectors of each row."""
  n, d = x.shape
  return x.reshape(n, num_subspaces, d // num_subspaces)


def decode(codes: jax.Array, codebooks: jax.Array) -> jax.Array:
  """(n, M) codes and (M, K, d / M) codebooks -> (n, d) float32 rows, the concatenated codewords."""
  m = codebooks.shape[0]
  picked = codebooks[jnp.arange(m)[None, :], codes.astype(jnp.int32)]  # (n, M, d / M)
  return picked.reshape(codes.shape[0], -1)


def _sq_distances_by_subspace(x: jax.Array, codebooks: jax.Array) -> jax.Array:
  """(M, n, K) squared distances, subspace-major: one batched (n, s) @ (s, K) product per subspace, which
  XLA:CPU runs about twice as fast as the (n, M, K) einsum (6144 x 64 rows, M = 8, K = 256: 33 against 74
  ms of CPU time, 2026-12-07)."""
  xs = jnp.moveaxis(split(x, codebooks.shape[0]), 1, 0)  # (M, n, s)
  cross = jnp.matmul(xs, jnp.swapaxes(codebooks, 1, 2))  # (M, n, K)
  return jnp.sum(xs * xs, axis=-1)[..., None] - 2.0 * cross + jnp.sum(codebooks * codebooks, axis=-1)[:, None, :]


def sq_distances(x: jax.Array, codebooks: jax.Array) -> jax.Array:
  """(n, d) rows and (M, K, d / M) codebooks -> (n, M, K) squared distances of each sub-vector to each codeword."""
  return jnp.moveaxis(_sq_distances_by_subspace(x, codebooks), 0, 1)


def encode(x: jax.Array, codebooks: jax.Array) -> jax.Array:
  """(n, d) rows -> (n, M) uint8 codes: the nearest codeword per subspace (ties to the lower code)."""
  return jnp.argmin(_sq_distances_by_subspace(x, codebooks), axis=-1).T.astype(jnp.uint8)


def quantize(x: jax.Array, codebooks: jax.Array, bits: int) -> ProductCodes:
  """Encodes x with the given codebooks: (n, d) float -> ProductCodes."""
  check_pq_shape(x.shape[1], codebooks.shape[0], bits)
  if codebooks.shape[1] != 1 << bits:
    raise ValueError(f"codebooks hold {codebooks.shape[1]} codewords per subspace, {1 << bits} expected at {bits} bits")
  return ProductCodes(codes=encode(x, codebooks), codebooks=jnp.asarray(codebooks, jnp.float32), bits=bits)


def bits_per_node(pc: ProductCodes) -> float:
  """Code bits per row (rows padded to whole bytes); the codebooks are counted apart."""
  return 8.0 * pc.code_bytes() / pc.num_rows


def codebook_bits_per_node(pc: ProductCodes) -> float:
  """The codebooks' bits spread over the rows of this matrix."""
  return 8.0 * pc.codebook_bytes() / pc.num_rows


# ----------------------------------------------------------------------------------------------------------
# Gradient and update rules of trained product codes, each in one place (the custom_vjps are in
# `hq_jax.quant.estimators`: `ste_pq`, `gste_pq`).
# ----------------------------------------------------------------------------------------------------------


def _flat_segments(codes: jax.Array, num_codewords: int) -> jax.Array:
  """(n, M) codes -> (n * M,) int32 segment ids m * K + codes[r, m], row-major like `split(x).reshape(-1, s)`."""
  m = codes.shape[1]
  return (jnp.arange(m, dtype=jnp.int32)[None, :] * num_codewords + codes.astype(jnp.int32)).reshape(-1)


def codeword_sums(x: jax.Array, codes: jax.Array, num_codewords: int) -> jax.Array:
  """(M, K, d / M): for each codeword, the sum of the sub-vectors of the rows of x (n, d) that chose it."""
  n, d = x.shape
  m = codes.shape[1]
  flat = split(x, m).reshape(n * m, d // m)
  sums = jax.ops.segment_sum(flat, _flat_segments(codes, num_codewords), num_segments=m * num_codewords)
  return sums.reshape(m, num_codewords, d // m)


def codeword_counts(codes: jax.Array, num_codewords: int, weights: jax.Array | None = None) -> jax.Array:
  """(M, K) float32: how many rows chose each codeword (each row counted with its weight, default 1)."""
  m = codes.shape[1]
  w = jnp.ones((codes.shape[0],), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  return jax.ops.segment_sum(jnp.repeat(w, m), _flat_segments(codes, num_codewords), num_segments=m * num_codewords
                             ).reshape(m, num_codewords)


def codebook_grad(g: jax.Array, codes: jax.Array, num_codewords: int) -> jax.Array:
  """dL/dC of x^ = decode(codes, C): x^ copies codeword (m, k) into every row that chose it, so its gradient
  is the sum of the upstream gradients g (n, d) of those rows' sub-vectors; (M, K, d / M). Codewords no row
  chose get 0."""
  return codeword_sums(g, codes, num_codewords)


def ema_codebooks(x: jax.Array, codes: jax.Array, counts: jax.Array, sums: jax.Array, *, decay: float,
                  epsilon: float = 1e-5, weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One exponential-moving-average k-means step (VQ-VAE, van den Oord et al. 2017, arXiv 1711.00937,
  appendix A.1, with the Laplace smoothing of its reference implementation, Sonnet's VectorQuantizerEMA):

    N_k <- decay N_k + (1 - decay) n_k,   m_k <- decay m_k + (1 - decay) sum_{rows r with code k} x_r,
    N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j,   c_k = m_k / N~_k,

  per subspace, with n_k the number of rows of x (n, d) whose code in that subspace is k.

  Args:
    x: (n, d) the rows that were encoded; codes: (n, M) their codes.
    counts: (M, K) N; sums: (M, K, d / M) m.
    weights: (n,) per-row weights (0 = a padding row that must not count); default 1.

  Returns:
    (codebooks (M, K, d / M), counts, sums), the new values. A codeword no row has chosen for long decays
    towards 0 in both N and m; the smoothing keeps its division finite.
  """
  k = counts.shape[1]
  counts = decay * counts + (1.0 - decay) * codeword_counts(codes, k, weights)
  xw = x if weights is None else x * jnp.asarray(weights, x.dtype)[:, None]
  sums = decay * sums + (1.0 - decay) * codeword_sums(xw, codes, k)
  total = jnp.sum(counts, axis=1, keepdims=True)
  smoothed = (counts + epsilon) / (total + k * epsilon) * total
  return sums / smoothed[..., None], counts, sums


# ----------------------------------------------------------------------------------------------------------
# k-means initialisation and the OPQ rotation (seeded, pure, jit-able)
# ----------------------------------------------------------------------------------------------------------


def lloyd_step(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """One Lloyd iteration on rows x (n, s) and centroids (K, s): each centroid moves to the mean of the rows
  nearest to it (ties to the lower index); a centroid that no row chose stays where it was."""
  dist = jnp.sum(x * x, -1)[:, None] - 2.0 * x @ centroids.T + jnp.sum(centroids * centroids, -1)[None]
  assign = jnp.argmin(dist, axis=-1)
  k = centroids.shape[0]
  sums = jax.ops.segment_sum(x, assign, num_segments=k)
  counts = jax.ops.segment_sum(jnp.ones(x.shape[0], x.dtype), assign, num_segments=k)
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)


def kmeans(x: jax.Array, num_clusters: int, key: jax.Array, iterations: int = 25) -> jax.Array:
  """Lloyd's k-means of the rows of x (n, s): starts at `num_clusters` distinct rows drawn from `key` (with
  repetition when n < K), then `iterations` `lloyd_step`s. Returns (K, s) float32; a function of (x, key)
  only, so seeded and reproducible."""
  x = x.astype(jnp.float32)
  n = x.shape[0]
  if n >= num_clusters:
    start = jax.random.permutation(key, n)[:num_clusters]
  else:
    start = jax.random.randint(key, (num_clusters,), 0, n)
  return jax.lax.fori_loop(0, iterations, lambda _, c: lloyd_step(x, c), x[start])


def init_codebooks(x: jax.Array, num_subspaces: int, bits: int, key: jax.Array, iterations: int = 25) -> jax.Array:
  """Codebooks (M, 2^bits, d / M) by `kmeans` of each subspace of the rows x (n, d); subspace m draws its
  start from fold_in(key, m)."""
  check_pq_shape(x.shape[1], num_subspaces, bits)
  subs = jnp.moveaxis(split(x.astype(jnp.float32), num_subspaces), 1, 0)  # (M, n, s)
  keys = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(num_subspaces))
  return jax.vmap(lambda xs, k: kmeans(xs, 1 << bits, k, iterations))(subs, keys)


def distortion(x: jax.Array, codebooks: jax.Array) -> jax.Array:
  """Mean squared error per row, mean_r ||x_r - decode(encode(x_r))||^2: what k-means and OPQ lower."""
  xhat = decode(encode(x, codebooks), codebooks)
  return jnp.mean(jnp.sum(jnp.square(x - xhat), axis=-1))


def opq_rotation(x: jax.Array, num_subspaces: int, bits: int, key: jax.Array, *, iterations: int = 20,
                 kmeans_iterations: int = 25, lloyd_per_iteration: int = 2) -> tuple[jax.Array, jax.Array]:
  """Non-parametric OPQ (Ge, He, Ke, Sun, "Optimized Product Quantization", CVPR 2013 / TPAMI 2014, its
  alternating algorithm): min over orthogonal R and codebooks C of ||x R - decode(encode(x R, C), C)||^2.

  Starts at R = I with k-means codebooks of x (`init_codebooks`), then alternates (each step lowers the
  distortion): encode x R; R <- the orthogonal Procrustes solution of min ||x^ - x R|| (the step of
  `hq_jax.quant.rotation.itq_rotation`, ITQ's, with the decoded rows in place of sign codes); a few Lloyd
  steps of each subspace of x R from the current codebooks.

  Returns:
    (R (d, d) orthogonal float32, codebooks (M, 2^bits, d / M) of x R).
  """
  x = x.astype(jnp.float32)
  codebooks = init_codebooks(x, num_subspaces, bits, key, kmeans_iterations)

  def lloyd_all(xr, c):
    subs = jnp.moveaxis(split(xr, num_subspaces), 1, 0)
    return jax.vmap(lambda xs, cm: jax.lax.fori_loop(0, lloyd_per_iteration, lambda _, z: lloyd_step(xs, z), cm)
                    )(subs, c)

  def body(_, state):
    r, c = state
    xhat = decode(encode(x @ r, c), c)
    r = rotation.procrustes(x, xhat)
    return r, lloyd_all(x @ r, c)

  return jax.lax.fori_loop(0, iterations, body, (jnp.eye(x.shape[1], dtype=jnp.float32), codebooks))
