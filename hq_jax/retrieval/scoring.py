"""Ranking keys for retrieval: float, 1-bit Hamming and b-bit integer inner products.

Retrieval only needs, for each user, the *order* of the dequantized inner products <x^_u, x^_i> over items
(ties broken by the lower item id). This module turns a (user rep, item rep) pair into a ranking key per
(user, item) whose order provably equals that order, using integer arithmetic on the codes where possible.
"Exact" below means: equal to the order of the real-valued (infinitely precise) inner products of the
dequantized rows `offset + scale * codes`, ties by item id.

Every key is a float32 that holds an integer below 2^24 (so it is exact, and `lax.top_k`'s fast float path
applies) except where noted. The key is `(raw + a_i) * m_i + b_i` with per-item vectors a, m, b (each
optional) and `raw` one of:

* float reps: `raw = <x_u, x_i>` in float32 (the float reference path, as exact as float32 matmul is);
* 1 bit (`hamming`): `raw = d - 2 * popcount(pack(q_u) XOR pack(q_i))` = <q_u, q_i>, an int32 computed from
  packed uint32 words only; or `sign_matmul`: the same integer as a float32 matmul of the +-1 codes (exact:
  |raw| <= d), or as an int8 x int8 -> int32 dot of the +-1 codes (`int8`). With one item scale the scale
  factors out (x^_u . x^_i = s_u s_i raw, s_u s_i > 0): exact.
  With per-row item scales, m_i = s_i and the key `s_i * raw` is rounded to float32: the order is never
  inverted (rounding is monotone) but two items whose exact scores are within one float32 rounding
  (2^-24 relative) may tie and then be ordered by id.
* b >= 2 (`affine`): with per-matrix scalars (o_u, s_u), (o_i, s_i) and codes c_u, c_i,
    <x^_u, x^_i> = s_u s_i (<c_u, c_i> + r S_i) + (terms constant per user),  r = o_u / s_u,
  S_i = sum(c_i). s_u s_i > 0, so the order is that of P + r S_i with the integer P = <c_u, c_i>.
  r S_i is split exactly on the host (rational arithmetic on the float32 values): r S_i = n_i + f_i with
  the integer n_i = floor(r S_i) and f_i in [0, 1). Because f_i < 1 the order of P + r S_i is the
  lexicographic order of (P + n_i, f_i), and since f_i depends on the item only, f_i can be replaced by its
  dense rank rho_i among items (0 <= rho_i < R). The key is R * (P + n_i) + rho_i: exact whenever it stays
  below 2^24 in magnitude (checked from the actual codes; true for 2 bits and usually for 3-4 bits at
  d = 64). Otherwise (typically 8 bits) the key falls back to `(P + n_i) + f_i` in float32, which can tie
  items whose exact scores differ by less than one float32 rounding of the key; `ItemTable.exact` says
  which case applies.
  P is computed either from the codes as a float32 matmul (exact: |P| <= d (2^b-1)^2 < 2^24) or as an int8
  x int8 -> int32 `dot_general` (`int8` method; 8-bit codes are centred by 128 to fit int8 and the
  per-item term absorbs the shift).
"""

import dataclasses
import fractions
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.retrieval import packing

Method = Literal["auto", "float", "hamming", "sign_matmul", "int_matmul", "int8"]
_EXACT_LIMIT = 1 << 24  # integers below this are exact in float32
Rep = jax.Array | np.ndarray | QuantizedMatrix


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ItemTable:
  """Items prepared for scoring: `data` rows plus the per-item key terms a, m, b (None = absent).

  `kind` (static) picks the raw score: "float" (float32 matmul), "hamming" (packed uint32 XOR +
  popcount), "matmul" (float32 matmul of integer codes, exact), "int8" (int8 dot, int32 accumulation).
  """

  data: jax.Array  # (I, D) float32 / uint32 words / int8
  a: jax.Array | None  # (I,) float32, added to raw
  m: jax.Array | None  # (I,) float32, multiplies
  b: jax.Array | None  # (I,) float32, added last
  kind: str = dataclasses.field(metadata=dict(static=True))
  dim: int = dataclasses.field(metadata=dict(static=True))
  exact: bool = dataclasses.field(metadata=dict(static=True), default=True)

  @property
  def num_items(self) -> int:
    return int(self.data.shape[0])

  def slice(self, start: int, stop: int) -> "ItemTable":
    cut = lambda v: None if v is None else v[start:stop]
    return dataclasses.replace(self, data=self.data[start:stop], a=cut(self.a), m=cut(self.m), b=cut(self.b))

  def pad_to(self, n: int) -> "ItemTable":
    """Pads to n rows (padding rows are masked out by the caller)."""
    extra = n - self.num_items
    if extra <= 0:
      return self
    pad = lambda v: None if v is None else jnp.pad(v, [(0, extra)] + [(0, 0)] * (v.ndim - 1))
    return dataclasses.replace(self, data=pad(self.data), a=pad(self.a), m=pad(self.m), b=pad(self.b))


def raw_scores(kind: str, dim: int, users: jax.Array, items: jax.Array) -> jax.Array:
  """(B, I) raw scores: int32 for "hamming", float32 (integer valued for the integer kinds) otherwise.

  The Hamming scores stay int32 on purpose: on XLA:CPU a float conversion inside the fused
  XOR/popcount/max loop stops its vectorisation (measured 10x slower).
  """
  if kind == "hamming":
    # Word by word over (words, I) rows so XLA fuses XOR, popcount and the sum without a (B, I, words)
    # intermediate.
    items_t = items.T
    ham = None
    for w in range(users.shape[1]):
      h = jax.lax.population_count(users[:, w, None] ^ items_t[None, w, :]).astype(jnp.int32)
      ham = h if ham is None else ham + h
    return dim - 2 * ham
  if kind == "int8":
    p = jax.lax.dot_general(users, items, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
    return p.astype(jnp.float32)
  if kind in ("float", "matmul"):
    return jax.lax.dot_general(users, items, (((1,), (1,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  raise ValueError(f"unknown score kind {kind!r}")


def apply_item_terms(raw: jax.Array, table: ItemTable, a=None, m=None, b=None) -> jax.Array:
  """`(raw + a) * m + b` with the table's per-item terms (or the given, already gathered, ones).

  Returns `raw` itself (int32 for Hamming) when the table has no per-item terms, float32 otherwise.
  """
  a = table.a if a is None else a
  m = table.m if m is None else m
  b = table.b if b is None else b
  if a is None and m is None and b is None:
    return raw
  key = raw.astype(jnp.float32)
  if a is not None:
    key = key + a
  if m is not None:
    key = key * m
  if b is not None:
    key = key + b
  return key


def table_keys(users: jax.Array, table: ItemTable) -> jax.Array:
  """(B, I) ranking keys `(raw + a) * m + b` of prepared users against an item table.

  int32 when the key is the raw Hamming score (no per-item terms), float32 otherwise.
  """
  return apply_item_terms(raw_scores(table.kind, table.dim, users, table.data), table)


# ----------------------------------------------------------------------------------------------------------
# Preparing users and items
# ----------------------------------------------------------------------------------------------------------


def rep_bits(rep: Rep) -> int:
  """0 for a float rep, else its code width."""
  return rep.bits if isinstance(rep, QuantizedMatrix) else 0


def default_method(bits: int) -> str:
  return {0: "float", 1: "hamming"}.get(bits, "int_matmul")


def _check_pair(user_rep: Rep, item_rep: Rep, method: str) -> tuple[int, str]:
  ub, ib = rep_bits(user_rep), rep_bits(item_rep)
  if ub != ib:
    raise UserError(f"user and item representations differ: {ub or 'float'} vs {ib or 'float'} bits")
  du, di = np.shape(_array(user_rep))[-1], np.shape(_array(item_rep))[-1]
  if du != di:
    raise UserError(f"user and item embeddings differ in dimension: {du} vs {di}")
  if method == "auto":
    method = default_method(ub)
  allowed = {0: ("float",), 1: ("hamming", "sign_matmul", "int8", "float")}.get(ub, ("int_matmul", "int8", "float"))
  if method not in allowed:
    raise UserError(f"method {method!r} does not apply to {ub or 'float'}-bit embeddings "
                    f"(choose from {', '.join(allowed)})")
  if ub >= 2 and np.size(item_rep.scale) != 1:
    raise UserError("b-bit item scales must be one scalar per matrix")
  return ub, method


def _array(rep: Rep):
  return rep.codes if isinstance(rep, QuantizedMatrix) else rep


def _int8_shift(bits: int) -> int:
  """Centring that makes b-bit codes fit int8 (only 8-bit codes need it)."""
  return 128 if bits == 8 else 0


def prepare_users(user_rep: Rep, method: str) -> jax.Array:
  """User rows in the layout `raw_scores` expects for `method` (float reps: as float32)."""
  if not isinstance(user_rep, QuantizedMatrix) or method == "float":
    x = user_rep.dequantize() if isinstance(user_rep, QuantizedMatrix) else user_rep
    return jnp.asarray(x, jnp.float32)
  codes = jnp.asarray(user_rep.codes)
  if method == "hamming":
    return packing.pack_codes(codes, 1)
  if method in ("sign_matmul", "int_matmul"):
    return codes.astype(jnp.float32)
  if method == "int8":
    return (codes.astype(jnp.int32) - _int8_shift(user_rep.bits)).astype(jnp.int8)
  raise ValueError(method)


def _exact_split(r: fractions.Fraction, sums: np.ndarray) -> tuple[np.ndarray, list[fractions.Fraction]]:
  """For each integer S: n = floor(r S) (int64) and f = r S - n in [0, 1) (exact rationals)."""
  num, den = r.numerator, r.denominator
  n, f = [], []
  for s in sums.tolist():
    q, rem = divmod(num * s, den)
    n.append(q)
    f.append(rem)  # f = rem / den: same order as rem
  return np.asarray(n, np.int64), f


def prepare_items(item_rep: Rep, user_rep: Rep, method: str = "auto") -> ItemTable:
  """Builds the item table for ranking `user_rep`'s rows against `item_rep` (see the module docstring).

  The user rep is needed only for b >= 2 (its scalars o_u / s_u enter the per-item term) and to check
  that both sides match. Runs on the host (numpy) because the b >= 2 split is exact rational arithmetic.
  """
  bits, method = _check_pair(user_rep, item_rep, method)
  if bits == 0 or method == "float":
    x = item_rep.dequantize() if isinstance(item_rep, QuantizedMatrix) else item_rep
    x = jnp.asarray(x, jnp.float32)
    return ItemTable(data=x, a=None, m=None, b=None, kind="float", dim=int(x.shape[1]))
  codes = np.asarray(item_rep.codes)
  num_items, dim = codes.shape
  if bits == 1:
    scale = np.asarray(item_rep.scale, np.float32)
    m = None if scale.size == 1 else jnp.asarray(scale.reshape(-1))
    if method == "hamming":
      data, kind = packing.pack_codes(jnp.asarray(codes), 1), "hamming"
    elif method == "int8":  # +-1 int8 x int8 -> int32 (the tensor-core route on a GPU)
      data, kind = jnp.asarray(codes, jnp.int8), "int8"
    else:
      data, kind = jnp.asarray(codes, jnp.float32), "matmul"
    return ItemTable(data=data, a=None, m=m, b=None, kind=kind, dim=dim, exact=m is None)

  # b >= 2: key = R * (P + n_i) + rho_i, P = <c_u - z, c_i - z> with z the int8 centring (0 or 128).
  z = _int8_shift(bits) if method == "int8" else 0
  r = fractions.Fraction(float(np.asarray(user_rep.offset))) / fractions.Fraction(float(np.asarray(user_rep.scale)))
  sums = codes.astype(np.int64).sum(axis=1)  # S_i
  distinct, inverse = np.unique(sums, return_inverse=True)
  n_d, rem_d = _exact_split(r, distinct)
  # <c_u, c_i> = <c_u - z, c_i - z> + z * sum(c_i - z) + (user terms): the z term is an integer per item.
  shifted_sums = distinct - z * dim
  n_d = n_d + z * shifted_sums
  order = sorted(set(rem_d))
  rank_of = {v: j for j, v in enumerate(order)}
  rho_d = np.asarray([rank_of[v] for v in rem_d], np.int64)
  num_ranks = len(order)
  max_code = (1 << bits) - 1
  max_p = dim * max(z, max_code - z) ** 2
  bound = (max_p + int(np.abs(n_d).max())) * num_ranks + num_ranks
  if method == "int8":
    data, kind = jnp.asarray((codes.astype(np.int32) - z).astype(np.int8)), "int8"
  else:
    data, kind = jnp.asarray(codes, jnp.float32), "matmul"
  if bound < _EXACT_LIMIT:
    a = jnp.asarray(n_d[inverse], jnp.float32)
    return ItemTable(data=data, a=a, m=jnp.full((num_items,), float(num_ranks), jnp.float32),
                     b=jnp.asarray(rho_d[inverse], jnp.float32), kind=kind, dim=dim, exact=True)
  den = r.denominator
  frac = np.asarray([float(fractions.Fraction(v, den)) for v in rem_d], np.float64)
  return ItemTable(data=data, a=jnp.asarray(n_d[inverse] + frac[inverse], jnp.float32), m=None, b=None,
                   kind=kind, dim=dim, exact=False)


def ranking_scores(user_rep: Rep, item_rep: Rep, method: str = "auto") -> jax.Array:
  """(B, I) ranking keys of the given user rows against all items (higher = better).

  The per-user order of the keys, ties broken by the lower item id (as `lax.top_k` does), equals the order
  of the dequantized inner products <x^_u, x^_i>: exactly for float reps, 1-bit reps with one item scale
  and b-bit reps whose `prepare_items(...).exact` holds (see the module docstring for the others). The keys
  are ranking keys, not inner products (use `dequantized_scores` for those).

  Args:
    user_rep: (B, d) float array or QuantizedMatrix.
    item_rep: (I, d) float array or QuantizedMatrix of the same bits.
    method: "auto" (float / hamming / int_matmul by bits), or one of "float", "hamming", "sign_matmul",
      "int_matmul", "int8".
  """
  table = prepare_items(item_rep, user_rep, method)
  users = prepare_users(user_rep, method if method != "auto" else default_method(rep_bits(user_rep)))
  return _table_keys_jit(users, table).astype(jnp.float32)


_table_keys_jit = jax.jit(table_keys)


def dequantized_scores(user_rep: Rep, item_rep: Rep) -> jax.Array:
  """<x^_u, x^_i> in float32 from the dequantized rows: the float reference the keys rank like."""
  deq = lambda r: r.dequantize() if isinstance(r, QuantizedMatrix) else jnp.asarray(r, jnp.float32)
  return jnp.dot(deq(user_rep), deq(item_rep).T, precision=jax.lax.Precision.HIGHEST)
