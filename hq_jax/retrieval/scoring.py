"""Ranking keys for retrieval: exact integer keys from the codes of every quantized representation (ours).

Retrieval only needs, for each user, the *order* of the dequantized scores over items, ties broken by the
lower item id. This module turns a (user rep, item rep) pair into a ranking key per (user, item) whose order
provably equals that order. "Exact" means: equal to the order of the real-valued (infinitely precise)
scores of the dequantized representations as stored, for every supported width (1, 2, 3, 4, 8 bits), every
dimension d and every scale, with no float rounding anywhere in the comparison.

The score. One `QuantizedMatrix` is the one-layer case (K = 0, w_0 = 1) of `LayeredQuantized`:
  score(u, i) = sum_k w_k <o_uk + s_uk c_uk, o_ik + s_ik c_ik>.
For b >= 2 the codes are centred, c' = c - z with z = 2^(b-1) (so |c'| <= 2^(b-1) and 8-bit codes fit int8),
and o' = o + s z; for 1 bit z = 0 and o = 0. Expanding, with P_k = <c'_uk, c'_ik> and S_ik = sum_j c'_ikj,
  score(u, i) = sum_k w_k s_uk s_ik P_k + sum_k w_k o'_uk s_ik S_ik + (terms without i).
The last terms are the same for every item of a user (o'_ik is one number per matrix; b >= 2 scales and
offsets are per matrix), so they drop. What is left is turned into integers on the host, exactly:
  * every stored scale is a positive float32, i.e. an integer G times a power of two; per matrix, all its
    scales are G_r 2^E with one exponent E (`_exact_scale_ints`). For `ScaleCodes` G = base + code.
  * the weights are rationals W_k / D (`quantizer.exact_weights`).
  * multiplying the score by D 2^-E* (E* = min_k (E_uk + E_ik); a positive constant, so the order stays):
      key(u, i) = sum_k c_k alpha_k(u) beta_k(i) P_k(u, i) + T(i),
    with the integer layer constant c_k = W_k 2^(E_uk + E_ik - E*) (times the G of per-matrix scales), the
    integer per-row multipliers alpha_k(u) = G_uk(u), beta_k(i) = G_ik(i) (absent for per-matrix scales;
    for K = 0 the user's factor is a positive per-user constant and drops as well), and the rational item
    term T(i) = sum_k W_k 2^-E* o'_uk s_ik S_ik (b >= 2 layers only). All c_k are divided by their gcd (and
    T by the same number).
  * T(i) = n_i + f_i with the integer n_i = floor(T(i)) and f_i in [0, 1), computed with Python integers.
    For equal integer parts the larger f_i wins, and f_i depends on the item only: the item table is stored
    in the order (f_i descending, id ascending), so "ties to the lower row" inside the search is exactly
    "larger f_i, then lower id". The search runs on rows and maps them back to ids (`ItemTable.ids`).
  So the key is the integer sum_k c_k alpha_k beta_k P_k + (n_i - min n) and the table order breaks its
  ties: every comparison is an integer comparison.

The integer key is computed on the device by `hq_jax.retrieval.keys` (its bound, arithmetic tier and the
raw inner product of each width are described there).

Which pairs get integer keys is the family interface's choice (`hq_jax.quant.family`, `Pair.ranking`):
scalar and layer-wise codes on both sides. Every other legal pair -- float embeddings, product codes
(`hq_jax.quant.pq.ProductCodes`) on both sides, float users with product-code items -- is ranked from its
decoded rows by the float path: the item table holds `family.dequantize(items)` (for product codes the
codewords copied, no arithmetic), the users their decoded or float rows, and the search is the one float
embeddings get. So a product-code pair ranks exactly like the float32 pair (dequantize(users),
dequantize(items)): the same rows enter the same program, with ties to the lower id. What that order is:
the order of float32 inner products of those rows. The search picks groups of a block by its float32
matmul and orders the candidates by float32 sums in dimension order (`topk._gathered_dot`); where the
real-valued scores of two items differ by less than the float32 rounding of their inner products (about
d 2^-24 sum_j |u_j x_ij|) the two may come in either order, as in any float32 search (FAISS's included).
Where every float32 partial sum is exact (e.g. codewords and user rows of dyadic values with few
significant bits, as the tests construct) it is exactly the order of the real-valued scores, ties included.
The compiled CPU kernel (`hq_jax.retrieval.native`, the CPU's default search) ranks the same rows by one
fixed float32 evaluation instead (its "lane sum", defined in NumPy by `native.lane_sum_scores`), exactly;
the integer keys above it computes exactly as well, so for scalar and layer-wise codes both searches agree.
"""

import dataclasses
import fractions
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax import backend
from hq_jax.errors import UserError
from hq_jax.quant import family as family_lib
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, exact_weights
from hq_jax.retrieval import limbs as limbs_lib
from hq_jax.retrieval import packing
# The key's description and device computation, re-exported: callers use `scoring.ItemTable` etc.
from hq_jax.retrieval.keys import (F32_EXACT, ItemTable, KeySpec, LayerSpec, UserRows, choose_tier,  # noqa: F401
                                   combine, item_terms, raw_scores, table_keys, user_terms)

Method = Literal["auto", "float", "hamming", "sign_matmul", "int_matmul", "int8"]
METHODS = ("auto", "float", "hamming", "sign_matmul", "int_matmul", "int8")
Rep = jax.Array | np.ndarray | QuantizedMatrix | LayeredQuantized | ProductCodes


# ----------------------------------------------------------------------------------------------------------
# Host side: exact integers from the stored floats
# ----------------------------------------------------------------------------------------------------------


def _exact_scale_ints(values, exponent: int | None = None) -> tuple[np.ndarray, int]:
  """Positive float32 values as integers G times 2^E, one E for all (the largest that works, or `exponent`).

  Returns (G as an int64 or Python-int object array, E).
  """
  v = np.asarray(values, np.float32).reshape(-1).astype(np.float64)
  m, e = np.frexp(v)  # v = m 2^e, m in [0.5, 1)
  mant = (m * (1 << 24)).astype(np.int64)  # exact: float32 has 24 significant bits
  low = np.log2(mant & -mant).round().astype(np.int64)  # trailing zero bits
  mant >>= low
  exps = e.astype(np.int64) - 24 + low
  if exponent is None:
    exponent = int(exps.min())
  shifts = exps - exponent
  if (shifts < 0).any():
    raise ValueError("scale values are not integer multiples of 2^exponent")
  if int(shifts.max()) + 25 < 62:
    return mant << shifts, exponent
  return np.asarray([int(a) << int(s) for a, s in zip(mant.tolist(), shifts.tolist())], dtype=object), exponent


def _gcd(values) -> int:
  g = 0
  for v in np.unique(np.asarray(values, dtype=object if np.asarray(values).dtype == object else np.int64)):
    g = math.gcd(g, int(v))
  return g


def _as_tier(values, spec: KeySpec, n_limbs: int) -> jax.Array:
  """Per-row integers (Python ints or int64) in the tier's layout."""
  if spec.tier == "f32":
    return jnp.asarray(np.asarray(values, np.float64).astype(np.float32))
  if spec.tier == "i32":
    return jnp.asarray(np.asarray(values, np.int64).astype(np.int32))
  return jnp.asarray(limbs_lib.host_limbs(values, n_limbs))


def rep_layers(rep: Rep) -> tuple[tuple[QuantizedMatrix, ...], tuple[float, ...]] | None:
  """(layers, weights) of a rep ranked by integer keys; None for the others (float rows, product codes)."""
  fam = family_lib.family_of(rep)
  return fam.layers(rep) if fam.ranking == "integer" else None


def rep_bits(rep: Rep) -> int:
  """0 for a float rep, else its code width (of the first layer for layered codes)."""
  return family_lib.family_of(rep).code_bits(rep)


def num_rows(rep: Rep) -> int:
  return family_lib.family_of(rep).num_rows(rep)


def _check_pair(user_rep: Rep, item_rep: Rep, method: str):
  """The matching (layers, weights) of both sides, or None for a pair ranked by the float path; UserError
  if they do not match or `method` does not apply."""
  if method not in METHODS:
    raise UserError(f"unknown scoring method {method!r} (choose from {', '.join(METHODS)})")
  pair = family_lib.check_pair(user_rep, item_rep)
  if pair.ranking == "float":
    du, di = pair.user.shape(user_rep)[-1], pair.item.shape(item_rep)[-1]
    if du != di:
      raise UserError(f"user and item embeddings differ in dimension: {du} vs {di}")
    if method not in ("auto", "float"):
      what = "float embeddings" if pair.item.kind == "float" else pair.item.describe(item_rep)
      raise UserError(f"method {method!r} does not apply to {what} (choose from auto, float)")
    return None
  ul, il = pair.user.layers(user_rep), pair.item.layers(item_rep)
  if len(ul[0]) != len(il[0]):
    raise UserError(f"user and item representations differ: {len(ul[0])} vs {len(il[0])} layers")
  if ul[1] != il[1]:
    raise UserError(f"user and item layer weights differ: {ul[1]} vs {il[1]}")
  for k, (qu, qi) in enumerate(zip(ul[0], il[0])):
    where = f"layer {k}: " if len(ul[0]) > 1 else ""
    if qu.bits != qi.bits:
      raise UserError(f"user and item representations differ: {where}{qu.bits} vs {qi.bits} bits")
    if qu.codes.shape[1] != qi.codes.shape[1]:
      raise UserError(f"user and item embeddings differ in dimension: {where}{qu.codes.shape[1]} vs "
                      f"{qi.codes.shape[1]}")
    if qu.bits >= 2 and (qu.per_row_scale or qi.per_row_scale):
      raise UserError(f"{where}{qu.bits}-bit scales must be one scalar per matrix")
    allowed = ("hamming", "sign_matmul", "int8") if qu.bits == 1 else ("int_matmul", "int8")
    if method not in ("auto", "float") + allowed:
      raise UserError(f"method {method!r} does not apply to {qu.bits}-bit embeddings "
                      f"(choose from auto, float, {', '.join(allowed)})")
  return ul, il


def _layer_kind(bits: int, dim: int, method: str, tunings: backend.Tunings | None = None) -> LayerSpec:
  """The raw inner product of one layer (static in (bits, dim, method) and, for 'auto', the backend's
  `tunings`; default: the current backend's)."""
  max_prod = 1 if bits == 1 else 1 << (2 * (bits - 1))  # |c'_u c'_i| of centred codes
  raw_bound = dim * max_prod
  if method == "auto":
    tunings = tunings or backend.tunings()
    if bits == 1:
      kind = tunings.one_bit_kind
    else:
      exact_f32 = tunings.wide_kind == "float_when_exact" and raw_bound < F32_EXACT
      kind = "matmul" if exact_f32 else "int8"
  else:
    kind = {"hamming": "hamming", "sign_matmul": "sign_matmul", "int8": "int8", "int_matmul": "matmul"}[method]
  if raw_bound >= limbs_lib.ENCODABLE:
    raise UserError(f"d = {dim} is too large for exact {bits}-bit integer inner products "
                    f"(d * {max_prod} must stay below 2^31 - 2^24)")
  chunk = min(dim, (F32_EXACT - 1) // max_prod)
  return LayerSpec(kind=kind, dim=dim, bits=bits, raw_bound=raw_bound, chunk=chunk)


def _centre(bits: int) -> int:
  return 0 if bits == 1 else 1 << (bits - 1)


def _scale_array(qm: QuantizedMatrix) -> np.ndarray:
  s = np.asarray(qm.scale_values(), np.float32)
  if not (np.isfinite(s).all() and (s > 0).all()):
    raise UserError("scales must be positive and finite")
  return s


def _layer_rows(layer: LayerSpec, qm: QuantizedMatrix) -> jax.Array:
  """One side's codes of one layer in the layout `raw_scores` expects for its kind."""
  codes = jnp.asarray(qm.codes)
  if layer.kind == "hamming":
    return packing.pack_codes(codes, 1)
  centred = codes.astype(jnp.int32) - _centre(qm.bits)
  if layer.kind == "int8":
    return centred.astype(jnp.int8)
  return centred.astype(jnp.float32)


def _float_rows(rep: Rep) -> jax.Array:
  """The decoded float32 rows (`family.dequantize`): what the float path scores."""
  return jnp.asarray(family_lib.family_of(rep).dequantize(rep), jnp.float32)


def _fraction(x) -> fractions.Fraction:
  """The exact value of a one-element float32 array (a per-matrix scale or offset)."""
  return fractions.Fraction(float(np.asarray(x, np.float32).reshape(-1)[0]))


def _item_fraction_order(layers, il, ul, weights_int, e_star: int, divisor: int):
  """n_i and the row order for the rational item term T(i) (module docstring); None when T = 0."""
  consts, sums = [], []
  for k, (qu, qi) in enumerate(zip(ul, il)):
    if qu.bits == 1:
      continue
    z = _centre(qu.bits)
    s_u = _fraction(qu.scale_values())
    o_u = _fraction(qu.offset) + s_u * z
    s_i = _fraction(qi.scale_values())
    q = weights_int[k] * o_u * s_i / (fractions.Fraction(2) ** e_star) / divisor
    if q == 0:
      continue
    consts.append(q)
    sums.append(np.asarray(qi.codes, np.int64).sum(axis=1) - z * layers[k].dim)
  if not consts:
    return None
  den = math.lcm(*(q.denominator for q in consts))
  nums = [int(q * den) for q in consts]
  table = np.stack(sums, axis=1)
  distinct, inverse = np.unique(table, axis=0, return_inverse=True)
  inverse = np.asarray(inverse).reshape(-1)
  whole, frac = [], []
  for row in distinct.tolist():
    value = sum(n * s for n, s in zip(nums, row))
    q, r = divmod(value, den)
    whole.append(q)
    frac.append(r)
  low = min(whole)
  shift = np.asarray([w - low for w in whole], dtype=object)[inverse]
  ranks = {v: j for j, v in enumerate(sorted(set(frac), reverse=True))}
  frac_rank = np.asarray([ranks[f] for f in frac], np.int64)[inverse]
  return shift, int(max(whole) - low), frac_rank, len(ranks)


def prepare_items(item_rep: Rep, user_rep: Rep, method: str = "auto") -> ItemTable:
  """Builds the item table for ranking `user_rep`'s rows against `item_rep` (see the module docstring):
  exact integer keys for scalar / layer-wise codes, decoded float32 rows for every other legal pair.

  Runs on the host (numpy and Python integers): the constants of the key are exact rational arithmetic on
  the stored float32 scales and offsets. `user_rep` must hold every user that will be ranked (its scales
  enter the constants).

  Raises:
    UserError: mismatched representations, a method that does not apply, non-positive scales, or a
      dimension too large for exact integer inner products.
  """
  pair = _check_pair(user_rep, item_rep, method)
  if pair is None or method == "float":
    x = _float_rows(item_rep)
    spec = choose_tier((LayerSpec(kind="float", dim=int(x.shape[1]), bits=0, raw_bound=0, chunk=0),), 0)
    return ItemTable(data=(x,), beta=(None,), shift=None, ids=None, spec=spec)
  (ul, weights), (il, _) = pair
  single = len(ul) == 1
  frac_w = [fractions.Fraction(1)] if single else list(exact_weights(weights))
  den = math.lcm(*(w.denominator for w in frac_w))
  weights_int = [int(w * den) for w in frac_w]
  layer_specs, user_scales, item_scales = [], [], []
  tunings = backend.tunings()
  for qu, qi in zip(ul, il):
    layer_specs.append(_layer_kind(qu.bits, int(qu.codes.shape[1]), method, tunings))
    user_scales.append(_exact_scale_ints(_scale_array(qu)))
    item_scales.append(_exact_scale_ints(_scale_array(qi)))
  e_star = min(eu + ei for (_, eu), (_, ei) in zip(user_scales, item_scales))
  betas = []
  for k, (qu, qi) in enumerate(zip(ul, il)):
    (gu, eu), (gi, ei) = user_scales[k], item_scales[k]
    coef = weights_int[k] << (eu + ei - e_star)
    alpha_bound, user_div, beta = 0, 1, None
    if qu.per_row_scale and not single:  # one layer: the user's scale is a positive per-user constant
      user_div = _gcd(gu)
      alpha_bound = int(max(int(v) for v in gu)) // user_div
      coef *= user_div
      if alpha_bound == 1:  # every user the same: a constant
        alpha_bound = 0
    elif not qu.per_row_scale:
      coef *= int(gu[0])
    if qi.per_row_scale:
      g = _gcd(gi)
      beta = np.asarray([int(v) // g for v in gi], dtype=object)
      coef *= g
      if int(beta.max()) == 1:
        beta = None
    else:
      coef *= int(gi[0])
    betas.append(beta)
    layer_specs[k] = dataclasses.replace(layer_specs[k], coef=coef, alpha_bound=alpha_bound,
                                         beta_bound=0 if beta is None else int(beta.max()), user_exp=eu,
                                         user_div=user_div)
  divisor = 0
  for l in layer_specs:
    divisor = math.gcd(divisor, l.coef)
  layer_specs = [dataclasses.replace(l, coef=l.coef // divisor) for l in layer_specs]
  order = _item_fraction_order(layer_specs, il, ul, weights_int, e_star, divisor)
  shift, shift_bound, ids = None, 0, None
  if order is not None:
    shift, shift_bound, frac_rank, num_fracs = order
    num_items = int(il[0].codes.shape[0])
    if num_fracs > 1:
      ids = np.lexsort((np.arange(num_items), frac_rank))  # f descending (rank 0 = largest), then id
    if shift_bound == 0:
      shift = None
  spec = choose_tier(tuple(layer_specs), shift_bound)
  data = tuple(_layer_rows(l, qi) for l, qi in zip(spec.layers, il))
  beta_arrays = tuple(None if b is None else _as_tier(b, spec, limbs_lib.limbs_needed(l.beta_bound))
                      for b, l in zip(betas, spec.layers))
  shift_array = None if shift is None else _as_tier(shift, spec, limbs_lib.limbs_needed(shift_bound))
  table = ItemTable(data=data, beta=beta_arrays, shift=shift_array, ids=None, spec=spec)
  if ids is not None:
    perm = jnp.asarray(ids, jnp.int32)
    table = jax.tree.map(lambda v: v[perm], table)
    table = dataclasses.replace(table, ids=perm)
  return table


def prepare_users(user_rep: Rep, table: ItemTable) -> UserRows:
  """User rows in the layout `table` expects (codes per layer, per-user multipliers)."""
  spec = table.spec
  if spec.tier == "float":
    return UserRows(data=(_float_rows(user_rep),), alpha=(None,))
  layers, _ = rep_layers(user_rep)
  data, alpha = [], []
  for l, qu in zip(spec.layers, layers):
    data.append(_layer_rows(l, qu))
    if l.alpha_bound:
      g, _ = _exact_scale_ints(_scale_array(qu), l.user_exp)
      values = np.asarray([int(v) // l.user_div for v in g], dtype=object)
      if any(int(v) * l.user_div != int(w) for v, w in zip(values, g)) or int(values.max()) > l.alpha_bound:
        raise UserError("these users' scales differ from the ones the item table was prepared with")
      alpha.append(_as_tier(values, spec, limbs_lib.limbs_needed(l.alpha_bound)))
    else:
      alpha.append(None)
  return UserRows(data=tuple(data), alpha=tuple(alpha))


# ----------------------------------------------------------------------------------------------------------
# Whole score matrices (tests, references, small problems)
# ----------------------------------------------------------------------------------------------------------


def ranking_scores(user_rep: Rep, item_rep: Rep, method: str = "auto") -> np.ndarray:
  """(B, I, W) float64 ranking keys (integers, exact) of the given user rows against all items, item ids in order.

  Compare lexicographically along the last axis (word 0 first), larger = better; items with equal keys rank
  by lower id. The order equals the order of the dequantized scores exactly (module docstring), except for
  pairs ranked by the float path (float embeddings, product codes, `method="float"`: float32 inner products
  of the decoded rows). When the table breaks ties by a fraction
  (b >= 2), the last word is minus the item's row in the table: keys are then all distinct. Keys are not
  inner products (use `dequantized_scores` for those).

  Args:
    user_rep: (B, d) float array, QuantizedMatrix, LayeredQuantized or ProductCodes.
    item_rep: (I, d) of the same kind (or ProductCodes for float users).
    method: "auto", or one of "float", "hamming", "sign_matmul", "int_matmul", "int8".
  """
  table = prepare_items(item_rep, user_rep, method)
  users = prepare_users(user_rep, table)
  words = [np.asarray(w, np.float64) for w in _table_keys_jit(users, table)]
  if table.ids is not None:
    rows = np.arange(table.num_items, dtype=np.float64)
    words.append(np.broadcast_to(-rows, words[0].shape))
  keys = np.stack(words, axis=-1)
  if table.ids is not None:
    by_id = np.empty_like(keys)
    by_id[:, np.asarray(table.ids)] = keys
    keys = by_id
  return keys


_table_keys_jit = jax.jit(table_keys)


def dequantized_scores(user_rep: Rep, item_rep: Rep) -> jax.Array:
  """<x^_u, x^_i> in float32 from the dequantized rows (layered: the weighted sum of layer products, via
  the sqrt-weighted concatenation): the float reference the keys rank like."""
  return jnp.dot(_float_rows(user_rep), _float_rows(item_rep).T, precision=jax.lax.Precision.HIGHEST)
