"""Ranking keys on the device: the static description of a key and its jit-able computation (ours).

The integer key of `hq_jax.retrieval.scoring` (which prepares items and users on the host, exactly) is
computed here from prepared rows.

Computing the integer key exactly, by its bound M (all factors' maxima, known on the host; `KeySpec`):
  * P_k: 1 bit: packed XOR + popcount (`hamming`, int32), or a float32 matmul of the +-1 codes
    (`sign_matmul`, exact: |P| <= d < 2^24), or int8 x int8 -> int32 (`int8`). b >= 2: a float32 matmul of the
    centred codes while d 4^(b-1) < 2^24 (one matmul is exact: every partial sum is an integer below 2^24),
    otherwise (`auto`) int8 x int8 -> int32 `dot_general` (exact: |P| <= d 2^14 < 2^31; measured faster than
    chunked float32 matmuls on XLA:CPU at d >= 128), or `int_matmul` in float32 chunks of
    floor((2^24 - 1) / 4^(b-1)) dimensions summed in int32. The choice is static per (bits, d, backend):
    `auto` takes the backend's kinds (`hq_jax.backend`: on CPU `hamming` and float32-while-exact as above; on
    GPU/TPU `int8` for every width, the matrix units' exact int8 x int8 -> int32 product).
  * M < 2^24 and float P: the key is computed in float32 (`f32`; every intermediate is an integer < 2^24).
  * M < 2^31 - 2^24: int32 (`i32`), mapped to float32 for `lax.top_k` by `limbs.encode_int32`, which keeps the
    order.
  * otherwise: radix-2^12 limbs in int32 (`limbs`), compared as several 24-bit words, lexicographically.
The search (`topk`) compares keys word by word. `float` embeddings (and `method="float"` on quantized reps,
which scores the float32 dequantized rows) use the float32 inner product itself: as exact as float32
matmul is, not more.
"""

import dataclasses

import jax
import jax.numpy as jnp

from hq_jax.retrieval import limbs as limbs_lib

F32_EXACT = 1 << 24  # integers below this are exact in float32


# ----------------------------------------------------------------------------------------------------------
# Static description of a key
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """How one layer's term c alpha beta P of the key is computed (all static)."""

  kind: str  # raw inner product: 'hamming', 'sign_matmul', 'matmul', 'int8' or 'float'
  dim: int
  bits: int  # 0 for float
  raw_bound: int  # max |P|
  chunk: int  # 'matmul': dimensions per float32 matmul that is summed exactly (== dim: one matmul)
  coef: int = 1  # c_k
  alpha_bound: int = 0  # max alpha_k(u); 0: no per-user multiplier
  beta_bound: int = 0  # max beta_k(i); 0: no per-item multiplier
  user_exp: int = 0  # alpha_k(u) = scale_u / 2^user_exp / user_div
  user_div: int = 1

  @property
  def raw_is_int(self) -> bool:
    """Whether `raw_scores` returns int32 (else float32)."""
    return self.kind in ("hamming", "int8") or (self.kind == "matmul" and self.chunk < self.dim)

  @property
  def term_bound(self) -> int:
    return self.coef * max(self.alpha_bound, 1) * max(self.beta_bound, 1) * self.raw_bound


@dataclasses.dataclass(frozen=True)
class KeySpec:
  """The static half of an item table: per-layer terms, the arithmetic tier and the key's bound."""

  layers: tuple[LayerSpec, ...]
  tier: str  # 'float' (float32 inner products), 'f32', 'i32' or 'limbs'
  bound: int = 0  # max |key| (integer tiers)
  shift_bound: int = 0  # max n_i - min n (0: no item term)
  words: int = 1  # words per key ('limbs': 24-bit words)

  @property
  def kind(self) -> str:
    """The raw kind of a one-layer key ('mixed' for several layers)."""
    return self.layers[0].kind if len(self.layers) == 1 else "mixed"


def choose_tier(layers: tuple[LayerSpec, ...], shift_bound: int) -> KeySpec:
  """The cheapest exact arithmetic tier for the key's bound (sum of the layers' term bounds + the shift)."""
  bound = sum(l.term_bound for l in layers) + shift_bound
  if all(l.kind == "float" for l in layers):
    return KeySpec(layers=layers, tier="float")
  any_int = any(l.raw_is_int for l in layers)
  if bound < F32_EXACT and not any_int:
    return KeySpec(layers=layers, tier="f32", bound=bound, shift_bound=shift_bound)
  if bound < limbs_lib.ENCODABLE:
    return KeySpec(layers=layers, tier="i32", bound=bound, shift_bound=shift_bound)
  return KeySpec(layers=layers, tier="limbs", bound=bound, shift_bound=shift_bound,
                 words=limbs_lib.words_needed(bound))


# ----------------------------------------------------------------------------------------------------------
# Prepared items and users (pytrees)
# ----------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ItemTable:
  """Items prepared for scoring, one row per item, rows in the order the search ties by.

  Leaves (all with the rows first): `data[k]` layer k's rows in its kind's layout (uint32 packed words,
  float32 centred codes, int8 centred codes or float32 embeddings); `beta[k]` its per-item multiplier
  ((I,) f32 / i32, or (I, limbs) int32; None: none); `shift` the integer item term n_i - min n (same
  layouts); `ids` the item id of each row (None: row r is item r).
  """

  data: tuple[jax.Array, ...]
  beta: tuple[jax.Array | None, ...]
  shift: jax.Array | None
  ids: jax.Array | None
  spec: KeySpec = dataclasses.field(metadata=dict(static=True))

  @property
  def num_items(self) -> int:
    return int(self.data[0].shape[0])

  @property
  def kind(self) -> str:
    return self.spec.kind

  @property
  def words(self) -> int:
    return self.spec.words

  def slice(self, start: int, stop: int) -> "ItemTable":
    return jax.tree.map(lambda v: v[start:stop], self)

  def pad_to(self, n: int) -> "ItemTable":
    """Pads to n rows (padding rows are masked out by the caller)."""
    extra = n - self.num_items
    if extra <= 0:
      return self
    return jax.tree.map(lambda v: jnp.pad(v, [(0, extra)] + [(0, 0)] * (v.ndim - 1)), self)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UserRows:
  """Users prepared for scoring: `data[k]` in layer k's layout and `alpha[k]` ((B,) or (B, limbs) or None)."""

  data: tuple[jax.Array, ...]
  alpha: tuple[jax.Array | None, ...]

  def __getitem__(self, index) -> "UserRows":
    return jax.tree.map(lambda v: v[index], self)

  @property
  def num_rows(self) -> int:
    return int(self.data[0].shape[0])


# ----------------------------------------------------------------------------------------------------------
# Raw inner products and keys (jit-able)
# ----------------------------------------------------------------------------------------------------------

_DN = (((1,), (1,)), ((), ()))


def raw_scores(layer: LayerSpec, users: jax.Array, items: jax.Array) -> jax.Array:
  """(B, I) raw inner products P of one layer: int32 when `layer.raw_is_int`, else float32 (exact integers
  for the code kinds).

  The Hamming scores stay int32 on purpose: on XLA:CPU a float conversion inside the fused
  XOR/popcount/max loop stops its vectorisation (measured 10x slower).
  """
  if layer.kind == "hamming":
    # Word by word over (words, I) rows so XLA fuses XOR, popcount and the sum without a (B, I, words)
    # intermediate.
    items_t = items.T
    ham = None
    for w in range(users.shape[1]):
      h = jax.lax.population_count(users[:, w, None] ^ items_t[None, w, :]).astype(jnp.int32)
      ham = h if ham is None else ham + h
    return layer.dim - 2 * ham
  if layer.kind == "int8":
    return jax.lax.dot_general(users, items, _DN, preferred_element_type=jnp.int32)
  if layer.kind in ("float", "sign_matmul") or layer.chunk >= layer.dim:
    return jax.lax.dot_general(users, items, _DN, precision=jax.lax.Precision.HIGHEST,
                               preferred_element_type=jnp.float32)
  total = None  # 'matmul' beyond one exact float32 matmul: exact float32 chunks summed in int32
  for start in range(0, layer.dim, layer.chunk):
    part = jax.lax.dot_general(users[:, start:start + layer.chunk], items[:, start:start + layer.chunk], _DN,
                               precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    part = part.astype(jnp.int32)
    total = part if total is None else total + part
  return total


def combine(spec: KeySpec, raws, alphas, betas, shift) -> tuple[jax.Array, ...]:
  """The key words from the layers' raw inner products and the multipliers, already broadcastable to the
  raw scores' shape. Returns one array (float32, or int32 for 'i32') or `spec.words` float32 words."""
  if spec.tier == "float":
    return (raws[0],)
  if spec.tier in ("f32", "i32"):
    dtype = jnp.float32 if spec.tier == "f32" else jnp.int32
    total = None
    for layer, raw, alpha, beta in zip(spec.layers, raws, alphas, betas):
      t = raw if raw.dtype == dtype else raw.astype(dtype)
      if beta is not None:
        t = t * beta
      if alpha is not None:
        t = t * alpha
      if layer.coef != 1:
        t = t * jnp.asarray(layer.coef, dtype)
      total = t if total is None else total + t
    if shift is not None:
      total = total + shift
    return (total,)
  terms = []
  for layer, raw, alpha, beta in zip(spec.layers, raws, alphas, betas):
    bound = layer.raw_bound
    x = limbs_lib.from_int32(raw.astype(jnp.int32), limbs_lib.limbs_needed(bound))
    if beta is not None:
      bound *= layer.beta_bound
      x = limbs_lib.mul(x, beta, limbs_lib.limbs_needed(bound))
    if alpha is not None:
      bound *= layer.alpha_bound
      x = limbs_lib.mul(x, alpha, limbs_lib.limbs_needed(bound))
    if layer.coef != 1:
      bound *= layer.coef
      x = limbs_lib.mul(x, limbs_lib.const_limbs(layer.coef), limbs_lib.limbs_needed(bound))
    terms.append(x)
  if shift is not None:
    terms.append(shift)
  total = limbs_lib.add(terms, limbs_lib.limbs_needed(spec.bound))
  return limbs_lib.to_words(total, spec.words)


def item_terms(spec: KeySpec, table_beta, table_shift, shape_tail: tuple[int, ...] = ()):
  """The table's per-item multipliers and shift in `combine`'s layout (limb tuples for 'limbs')."""
  if spec.tier != "limbs":
    return tuple(table_beta), table_shift
  split = lambda v: None if v is None else tuple(v[..., j] for j in range(v.shape[-1]))
  return tuple(split(b) for b in table_beta), split(table_shift)


def user_terms(spec: KeySpec, alpha, extra_axes: int):
  """The users' multipliers with `extra_axes` axes appended (to broadcast against (B, ...) scores)."""
  out = []
  for a in alpha:
    if a is None:
      out.append(None)
    elif spec.tier == "limbs":
      out.append(tuple(a[:, j].reshape((-1,) + (1,) * extra_axes) for j in range(a.shape[-1])))
    else:
      out.append(a.reshape((-1,) + (1,) * extra_axes))
  return tuple(out)


def table_keys(users: UserRows, table: ItemTable) -> tuple[jax.Array, ...]:
  """(B, I) key words of prepared users against every row of a table (int32 only for one 'i32' word)."""
  spec = table.spec
  raws = [raw_scores(l, u, d) for l, u, d in zip(spec.layers, users.data, table.data)]
  betas, shift = item_terms(spec, table.beta, table.shift)
  return combine(spec, raws, user_terms(spec, users.alpha, 1), betas, shift)
