"""All-user top-K through a compiled CPU kernel (`csrc/hq_topk.cc`, called with `jax.ffi`): optional (ours).

`make kernel` (run by `make setup` / `make test`) builds `build/libhq_topk.so` with the system C++ compiler
(`-O3 -march=native -ffp-contract=off`). When it is absent, does not load, was built for instructions this
CPU lacks, or is from an older source (`ABI_VERSION`), `available()` is False, `unavailable_reason()` says
why, and `topk` runs the pure-JAX search (`hq_jax.retrieval.topk`); `hq_jax.backend.Tunings.retrieval_kernel`
chooses between the two where both exist ("native" on CPU, "jax" elsewhere). `HQ_JAX_TOPK_LIB=path` loads
another build.

What the kernel computes, per query user: the K best rows of the item table by (key desc, row asc), the
user's excluded rows left out, scanning rows in ascending order so that "ties to the lower row" is "a later
row enters only with a strictly better key"; rows are mapped to item ids as in the JAX search. Two kinds:

* Integer keys (scalar and layer-wise codes, `scoring`'s exact keys, the same integers and the same table
  order): key(u, i) = sum_k m_k(u) beta_k(i) P_k(u, i) + shift(i), with m_k(u) = c_k alpha_k(u). P_k of a
  1-bit layer is d_k - 2 popcount(u xor i) of packed sign bits; of a 2-8 bit layer the int8 dot product of the
  centred codes (AVX-512 VNNI, the item codes stored as c' + 128, so the kernel subtracts 128 sum_j c'_uj).
  In int32, int64 or int128, the narrowest that holds the key's bound (`KEY_BITS`); keys past 2^126, or
  multipliers / shifts past 2^62, are left to the JAX search (`prepare_items` returns None). Exact: the
  same ranking as the JAX search and the references.
* Float rows (float embeddings, `method="float"`, product codes: their decoded rows): the score of (u, x) is
  the *lane sum* of float32 products (`lane_sum_scores`, the NumPy definition): with d padded by zeros to
  a multiple of 16, lane l sums fl(u_j x_j) for j = l, l + 16, ... in order, then lanes l and l + h are added
  for h = 8, 4, 2, 1. That is one fixed float32 evaluation of the inner product (no fused multiply-add), so
  the ranking is exactly defined and tested bit for bit; against the exact real inner products it differs by
  at most gamma_n sum_j |u_j x_j| (gamma_n = n 2^-24 / (1 - n 2^-24), n = padded d + 1: Higham's bound), as
  any float32 evaluation does (the JAX search's matmul + rescoring order is another one; FAISS's a third).
  Speed: every item is first gated by an int8 inner product, and only items that can beat the current K-th
  score are scored exactly. Items are quantized with one scale s_x = max |x| / 127 (x^ = s_x q_x), each user
  with its own s_u (u^ = s_u q_u), and
      |u.x - u^.x^| <= |u|.|x - x^| + |u - u^|.|x^| <= |u| R + |u - u^| N^      (Cauchy-Schwarz)
  with R = max_i |x_i - x^_i|, N^ = max_i |x^_i| over the table. So with E_u = |u| R + |u - u^| N^ +
  2 gamma_n |u| max_i |x_i| (times 1 + 2^-20, plus 2^-148 n for underflow: slack for the float64 arithmetic of
  these bounds), an item whose lane sum beats the threshold t has s_u s_x Q >= t - E_u (Q = q_u . q_x), i.e.
  Q >= floor((t - E_u) / (s_u s_x)): every item that can enter passes the gate, so the result is exactly the
  top K by lane sum. Product codes are gated with their decoded rows' int8 codes (the codebooks quantized,
  then decoded), and scored exactly from the codebooks (the decoded row is never stored).

Memory: the kernel's item table (`NativeTable.nbytes`): 1-bit layers d / 8 bytes per item, 2-8 bit layers d
bytes, int64 per-item terms where the key has them, float rows d bytes of gate codes beside the float32 rows
the JAX table already holds, product codes d + M bytes (no decoded rows). Per call: the users' rows, their
exclusions and (B, K) results; per thread 32 heaps of K entries and a few KiB of scores. At 10^7 items and
d = 64 that is 80 MB (1 bit) to 640 MB (int8 gate codes).
"""

import ctypes
import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant import family as family_lib
from hq_jax.retrieval import limbs as limbs_lib
from hq_jax.retrieval import scoring

LIB_ENV = "HQ_JAX_TOPK_LIB"
LIB_PATH = pathlib.Path(__file__).resolve().parents[2] / "build" / "libhq_topk.so"
ABI_VERSION = 2  # csrc/hq_topk.cc: HqTopkAbiVersion
LANES = 16  # items per tile of the kernel's layouts
PAD_ITEMS = 64  # rows are padded to a multiple of this (4 tiles: one micro-kernel step)
MAX_LAYERS = 16
KEY_BITS = ((32, (1 << 31) - 1), (64, 1 << 62), (128, 1 << 126))  # kernel key width: keys bounded below
TERM_LIMIT = 1 << 62  # per-user multipliers, per-item multipliers and shifts travel as int64
_CHUNK_ROWS = 1 << 18  # host-side preparation works on this many rows at a time (bounded memory)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
  """(the loaded library with its FFI targets registered, "") or (None, why not)."""
  path = pathlib.Path(os.environ.get(LIB_ENV) or LIB_PATH)
  if not path.is_file():
    return None, f"{path} is not built (run `make kernel`: it needs g++ with C++17)"
  try:
    lib = ctypes.CDLL(str(path))
    lib.HqTopkAbiVersion.restype = ctypes.c_int
    lib.HqTopkCpuFeatures.restype = ctypes.c_char_p
    version = lib.HqTopkAbiVersion()
    needed = set(lib.HqTopkCpuFeatures().decode().split())
  except (OSError, AttributeError) as e:
    return None, f"{path} does not load: {e}"
  if version != ABI_VERSION:
    return None, f"{path} is ABI version {version}, this source needs {ABI_VERSION} (rebuild: `make kernel`)"
  missing = needed - _cpu_flags()
  if missing:
    return None, f"{path} was built for instructions this CPU lacks: {' '.join(sorted(missing))}"
  jax.ffi.register_ffi_target("hq_topk_int", jax.ffi.pycapsule(lib.HqTopkInt), platform="cpu")
  jax.ffi.register_ffi_target("hq_topk_float", jax.ffi.pycapsule(lib.HqTopkFloat), platform="cpu")
  return lib, ""


def available() -> bool:
  """Whether the compiled kernel is built, loads and runs on this CPU."""
  return _library()[0] is not None


def unavailable_reason() -> str:
  """Why `available()` is False ("" when it is True)."""
  return _library()[1]


def _cpu() -> jax.Device:
  """The host CPU device: the kernel's arrays live there, whatever the default backend."""
  return jax.devices("cpu")[0]


def _on_cpu(x) -> jax.Array:
  return jax.device_put(x, _cpu())


def default_threads() -> int:
  """Threads the kernel uses: the CPUs this process may run on."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------------
# The float score's definition, in NumPy
# ----------------------------------------------------------------------------------------------------------


def lane_sum_scores(users: np.ndarray, items: np.ndarray) -> np.ndarray:
  """(B, I) float32 lane sums of (B, d) users against (I, d) items: the float rows' score (module docstring).

  Plain NumPy float32 arithmetic (each product and each sum rounded once, no fused multiply-add): the
  reference the kernel equals bit for bit. Memory: B * I * 16 floats at a time per 16 dimensions.
  """
  u = np.asarray(users, np.float32)
  x = np.asarray(items, np.float32)
  d = u.shape[1]
  dpad = -(-d // LANES) * LANES
  u = np.pad(u, ((0, 0), (0, dpad - d)))
  x = np.pad(x, ((0, 0), (0, dpad - d)))
  acc = None
  for b in range(0, dpad, LANES):
    p = u[:, None, b:b + LANES] * x[None, :, b:b + LANES]
    acc = p if acc is None else acc + p
  h = LANES // 2
  while h:
    acc = acc[..., :h] + acc[..., h:2 * h]
    h //= 2
  return acc[..., 0]


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NativeTable:
  """Items in the kernel's layout.

  `mode` "int": `arrays` = (item_codes uint8, item_terms int32 view of int64) and `meta` = [num_items,
  n_pad, layers, key bits (32 / 64 / 128), shift offset, user row bytes, then per layer kind (0 popcount, 1 int8 dot), dim,
  width (uint32 words or groups of 4 dims), item byte offset, user byte offset, beta offset]; `spec_table`
  the `scoring.ItemTable` whose keys these are (users are prepared against it).
  `mode` "float": `arrays` = (item gate codes uint8, float32 rows (num_items, d) or codebooks (M, 2^b, d / M),
  product codes uint8 (num_items, M) or a placeholder) and `meta` = [num_items, n_pad, d, dpad, groups, M,
  2^b, d / M] (M = 0: float rows); `gate` = (s_x, R, N^, max |x|) (module docstring).
  Tiles: 1-bit layers [tile][word][16 items] uint32; int8 layers [tile][group][16 items][4 dims] uint8.
  """

  mode: str
  num_items: int
  meta: tuple[int, ...]
  arrays: tuple[jax.Array, ...]
  ids: np.ndarray | None = None  # (num_items,) item id of each row (None: row r is item r)
  spec_table: scoring.ItemTable | None = None
  gate: tuple[float, float, float, float] | None = None

  @property
  def nbytes(self) -> int:
    """Bytes of the kernel's item arrays (the float rows of a float table included)."""
    return int(sum(a.nbytes for a in self.arrays))


@dataclasses.dataclass(frozen=True)
class NativeUsers:
  """Users in the kernel's layout (host arrays, one row per user): "int": (codes uint8, terms int32 view
  of int64 (m_k, correction_k) per layer); "float": (gate codes int8, float32 rows padded to dpad, int32
  view of float64 (s_u s_x, E_u, 128 sum q_u))."""

  arrays: tuple[np.ndarray, ...]

  @property
  def num_rows(self) -> int:
    return int(self.arrays[0].shape[0])


def _pad_rows(x: np.ndarray, n: int, value=0) -> np.ndarray:
  extra = n - x.shape[0]
  return x if extra <= 0 else np.concatenate([x, np.full((extra,) + x.shape[1:], value, x.dtype)])


def _popcount_tiles(words: np.ndarray, n_pad: int) -> np.ndarray:
  """(n, W) uint32 -> [tile][word][16] uint32 bytes."""
  w = _pad_rows(np.ascontiguousarray(words, np.uint32), n_pad)
  return np.ascontiguousarray(w.reshape(n_pad // LANES, LANES, -1).transpose(0, 2, 1)).view(np.uint8).reshape(-1)


def _dot_tiles(codes_u8: np.ndarray, n_pad: int) -> np.ndarray:
  """(n, 4 G) uint8 (code + 128) -> [tile][group][16][4] uint8."""
  c = _pad_rows(np.ascontiguousarray(codes_u8, np.uint8), n_pad, 128)
  g = c.shape[1] // 4
  return np.ascontiguousarray(c.reshape(n_pad // LANES, LANES, g, 4).transpose(0, 2, 1, 3)).reshape(-1)


def _pad_dims(x: np.ndarray, multiple: int, value=0) -> np.ndarray:
  extra = -x.shape[1] % multiple
  return x if not extra else np.pad(x, ((0, 0), (0, extra)), constant_values=value)


def _sign_words(values: np.ndarray) -> np.ndarray:
  """(n, d) +-1 values -> (n, ceil(d / 32)) uint32, bit j % 32 of word j // 32 set for +1 (padding 0)."""
  bits = _pad_dims(np.asarray(values) > 0, 32, False)
  return np.packbits(bits, axis=1, bitorder="little").view("<u4").astype(np.uint32)


def _tier_ints(values, spec: scoring.KeySpec) -> np.ndarray | None:
  """Per-row integers of a table / user term in the tier's layout, as int64 (limbs: radix 2^12)."""
  if values is None:
    return None
  a = np.asarray(values)
  if spec.tier == "limbs":
    out = np.zeros(a.shape[0], np.int64)
    for j in range(a.shape[-1]):
      out += a[:, j].astype(np.int64) << (limbs_lib.RADIX_BITS * j)
    return out
  return a.astype(np.int64)


def _layer_words(layer: scoring.LayerSpec, data) -> np.ndarray:
  """A 1-bit layer's rows (JAX layout of any kind) as packed sign words."""
  d = np.asarray(data)
  return d.astype(np.uint32) if layer.kind == "hamming" else _sign_words(d)


def _layer_codes(data) -> np.ndarray:
  """A 2-8 bit layer's centred codes (int8 or float32 layout) as int16."""
  return np.asarray(data).astype(np.int16)


def _int_table(table: scoring.ItemTable) -> NativeTable | None:
  spec = table.spec
  key_bits = next((bits for bits, limit in KEY_BITS if spec.bound <= limit), None)
  if key_bits is None or len(spec.layers) > MAX_LAYERS:
    return None
  if any(l.coef * max(l.alpha_bound, 1) >= TERM_LIMIT or l.beta_bound >= TERM_LIMIT for l in spec.layers):
    return None
  if spec.shift_bound >= TERM_LIMIT:
    return None
  n = table.num_items
  n_pad = -(-n // PAD_ITEMS) * PAD_ITEMS
  codes, terms, layer_meta = [], [], []
  item_off = user_off = term_off = 0
  for layer, data, beta in zip(spec.layers, table.data, table.beta):
    if layer.bits == 1:
      words = _layer_words(layer, data)
      tiles, kind, width = _popcount_tiles(words, n_pad), 0, words.shape[1]
    else:
      c = _pad_dims(_layer_codes(data) + 128, 4, 128).astype(np.uint8)
      tiles, kind, width = _dot_tiles(c, n_pad), 1, c.shape[1] // 4
    beta_off = -1
    b = _tier_ints(beta, spec)
    if b is not None:
      beta_off = term_off
      terms.append(_pad_rows(b, n_pad))
      term_off += n_pad
    layer_meta += [kind, layer.dim, width, item_off, user_off, beta_off]
    codes.append(tiles)
    item_off += tiles.size
    user_off += 4 * width
  shift_off = -1
  shift = _tier_ints(table.shift, spec)
  if shift is not None:
    shift_off = term_off
    terms.append(_pad_rows(shift, n_pad))
  item_terms = np.concatenate(terms) if terms else np.zeros(1, np.int64)
  meta = (n, n_pad, len(spec.layers), key_bits, shift_off, user_off, *layer_meta)
  arrays = (_on_cpu(np.concatenate(codes)), _on_cpu(item_terms.view(np.int32)))
  ids = None if table.ids is None else np.asarray(table.ids)
  return NativeTable(mode="int", num_items=n, meta=tuple(int(v) for v in meta), arrays=arrays, ids=ids,
                     spec_table=table)


def _gate_stats(rows_fn, n: int, d: int):
  """(s_x, int8 gate tiles, R, N^, max |x|) of the rows rows_fn(lo, hi) (float32), chunk by chunk."""
  n_pad = -(-n // PAD_ITEMS) * PAD_ITEMS
  top = 0.0
  for lo in range(0, n, _CHUNK_ROWS):
    top = max(top, float(np.abs(rows_fn(lo, min(n, lo + _CHUNK_ROWS))).max(initial=0.0)))
  s = top / 127.0 if top > 0 else 1.0
  g = -(-d // 4)
  tiles = np.empty(n_pad * 4 * g, np.uint8)
  r2 = n2q = n2 = 0.0
  for lo in range(0, n_pad, _CHUNK_ROWS):
    hi = min(n_pad, lo + _CHUNK_ROWS)
    x = rows_fn(lo, min(n, hi)).astype(np.float64)
    q = np.clip(np.rint(x / s), -127, 127)
    if x.shape[0]:
      r2 = max(r2, float(((x - s * q) ** 2).sum(axis=1).max()))
      n2q = max(n2q, float(((s * q) ** 2).sum(axis=1).max()))
      n2 = max(n2, float((x ** 2).sum(axis=1).max()))
    c = _pad_dims((q + 128).astype(np.uint8), 4, 128)
    tiles[lo * 4 * g:hi * 4 * g] = _dot_tiles(c, hi - lo)
  return s, tiles, float(np.sqrt(r2)), float(np.sqrt(n2q)), float(np.sqrt(n2))


def _float_table(x: jax.Array) -> NativeTable:
  """Float rows (num_items, d) float32 (the JAX float table's rows, shared, not copied)."""
  xh = np.asarray(x, np.float32)
  n, d = xh.shape
  s, tiles, r, nq, nx = _gate_stats(lambda lo, hi: xh[lo:hi], n, d)
  dpad, g = -(-d // LANES) * LANES, -(-d // 4)
  meta = (n, -(-n // PAD_ITEMS) * PAD_ITEMS, d, dpad, g, 0, 0, 0)
  arrays = (_on_cpu(tiles), _on_cpu(jnp.asarray(x, jnp.float32)), _on_cpu(np.zeros((1,), np.uint8)))
  return NativeTable(mode="float", num_items=n, meta=meta, arrays=arrays, gate=(s, r, nq, nx))


def _pq_table(pc) -> NativeTable:
  """Product codes: gate codes of the decoded rows and the exact rows from the codebooks (never decoded)."""
  codes = np.asarray(pc.codes).astype(np.uint8)
  books = np.asarray(pc.codebooks, np.float32)
  m, ncode, sub = books.shape
  n, d = codes.shape[0], m * sub

  def rows(lo, hi):
    c = codes[lo:hi].astype(np.int64)
    return np.concatenate([books[j][c[:, j]] for j in range(m)], axis=1) if hi > lo else np.zeros((0, d), np.float32)

  s, tiles, r, nq, nx = _gate_stats(rows, n, d)
  dpad, g = -(-d // LANES) * LANES, -(-d // 4)
  meta = (n, -(-n // PAD_ITEMS) * PAD_ITEMS, d, dpad, g, m, ncode, sub)
  arrays = (_on_cpu(tiles), _on_cpu(books.reshape(-1)), _on_cpu(codes))
  return NativeTable(mode="float", num_items=n, meta=meta, arrays=arrays, gate=(s, r, nq, nx))


def prepare_items(item_rep: scoring.Rep, user_rep: scoring.Rep, method: str = "auto") -> NativeTable | None:
  """The kernel's item table for ranking `user_rep` against `item_rep` (the pair and `method` as in
  `scoring.prepare_items`, which it calls for the exact integer constants), or None where the kernel does
  not apply (integer keys past 2^126 or terms past 2^62, `KEY_BITS`; more than 16 layers).

  Raises:
    UserError: as `scoring.prepare_items` (mismatched representations, a method that does not apply, ...).
  """
  pair = scoring._check_pair(user_rep, item_rep, method)  # pylint: disable=protected-access
  if (pair is None or method == "float") and family_lib.family_of(item_rep).kind == "pq":
    return _pq_table(item_rep)
  table = scoring.prepare_items(item_rep, user_rep, method)
  if table.spec.tier == "float":
    return _float_table(table.data[0])
  return _int_table(table)


def prepare_users(user_rep: scoring.Rep, table: NativeTable) -> NativeUsers:
  """All users of `user_rep` in the layout `table` expects (host arrays)."""
  if table.mode == "float":
    return _float_users(np.asarray(scoring._float_rows(user_rep), np.float32), table)  # pylint: disable=protected-access
  rows = scoring.prepare_users(user_rep, table.spec_table)
  spec = table.spec_table.spec
  codes, terms = [], []
  for layer, data, alpha in zip(spec.layers, rows.data, rows.alpha):
    a = _tier_ints(alpha, spec)
    mult = np.full(rows.num_rows, layer.coef, np.int64) if a is None else a * layer.coef
    if layer.bits == 1:
      codes.append(_layer_words(layer, data).view(np.uint8))
      corr = np.zeros(rows.num_rows, np.int64)
    else:
      c = _layer_codes(data)
      codes.append(_pad_dims(c, 4).astype(np.int8).view(np.uint8))
      corr = 128 * c.astype(np.int64).sum(axis=1)
    terms.append(np.stack([mult, corr], axis=1))
  user_codes = np.ascontiguousarray(np.concatenate(codes, axis=1))
  user_terms = np.ascontiguousarray(np.concatenate(terms, axis=1))
  return NativeUsers(arrays=(user_codes, user_terms.view(np.int32)))


def _float_users(u: np.ndarray, table: NativeTable) -> NativeUsers:
  """Gate codes, padded rows and the gate constants (module docstring) of float user rows (B, d)."""
  _, _, d, dpad, _, _, _, _ = table.meta
  if u.shape[1] != d:
    raise UserError(f"user and item embeddings differ in dimension: {u.shape[1]} vs {d}")
  s_x, r, nq, nx = table.gate
  u64 = u.astype(np.float64)
  top = np.abs(u64).max(axis=1, initial=0.0)
  s_u = np.where(top > 0, top / 127.0, 1.0)
  q = np.clip(np.rint(u64 / s_u[:, None]), -127, 127)
  norm_u = np.sqrt((u64 ** 2).sum(axis=1))
  rho = np.sqrt(((u64 - s_u[:, None] * q) ** 2).sum(axis=1))
  n = dpad + 1
  gamma = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
  bound = (norm_u * r + rho * nq + 2 * gamma * norm_u * nx) * (1 + 2.0 ** -20) + n * 2.0 ** -148
  consts = np.stack([s_u * s_x, bound, 128 * q.sum(axis=1)], axis=1)
  codes = _pad_dims(q.astype(np.int8), 4)
  rows = _pad_dims(u, LANES).astype(np.float32)
  return NativeUsers(arrays=(np.ascontiguousarray(codes).view(np.uint8), np.ascontiguousarray(rows),
                             np.ascontiguousarray(consts).view(np.int32)))


# ----------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------


def exclusion_rows(exclude_indptr: np.ndarray, exclude_indices: np.ndarray, users: np.ndarray,
                   row_of: np.ndarray | None, num_items: int) -> tuple[np.ndarray, np.ndarray]:
  """(indptr int32 (B + 1,), rows int32) of the query users' excluded table rows, sorted per user, the rows
  padded to a power of two (fewer distinct shapes to compile)."""
  starts = exclude_indptr[users]
  lengths = (exclude_indptr[users + 1] - starts).astype(np.int64)
  indptr = np.concatenate([[0], np.cumsum(lengths)])
  total = int(indptr[-1])
  if total >= 1 << 31:
    raise UserError(f"{total} excluded (user, item) pairs in one search: split the users (at most 2^31 - 1)")
  flat = np.asarray(exclude_indices, np.int64)[np.repeat(starts - indptr[:-1], lengths) + np.arange(total)]
  if row_of is not None:
    flat = row_of[flat].astype(np.int64)
  seg = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
  key = seg * (num_items + 1) + flat
  if total > 1 and not (np.diff(key) > 0).all():
    key = np.sort(key)
    flat = key - seg * (num_items + 1)
  size = max(256, 1 << max(total - 1, 0).bit_length())
  rows = np.zeros(size, np.int32)
  rows[:total] = flat
  return indptr.astype(np.int32), rows


def search(users: NativeUsers, table: NativeTable, exclude_indptr: np.ndarray, exclude_indices: np.ndarray,
           query: np.ndarray, k: int, *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Top-k of the `query` users (ids into `users`) over `table`, their excluded item ids left out.

  Args:
    users: all users, prepared (`prepare_users`).
    table: the item table (`prepare_items`).
    exclude_indptr, exclude_indices: CSR over all users of item ids to exclude.
    query: (B,) user ids.
    k: results per user (1 <= k <= num_items; checked by the caller).
    threads: kernel threads (default: `default_threads()`).

  Returns:
    (scores, items): numpy (B, k) float32 keys (integer keys, exact below 2^24; or float lane sums) and
    int32 item ids, best first, ties by lower row; -1 / -inf where a user has fewer than k eligible items.

  Raises:
    RuntimeError: the kernel is not available (check `available()` first).
  """
  if not available():
    raise RuntimeError(f"the compiled top-k kernel is not available: {unavailable_reason()}")
  query = np.asarray(query, np.int64).reshape(-1)
  b = len(query)
  if b == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  row_of = None
  if table.ids is not None:
    row_of = np.empty(table.num_items, np.int64)
    row_of[table.ids] = np.arange(table.num_items)
  indptr, rows = exclusion_rows(np.asarray(exclude_indptr, np.int64), exclude_indices, query, row_of,
                                table.num_items)
  user_arrays = tuple(np.ascontiguousarray(a[query]) for a in users.arrays)
  target = "hq_topk_int" if table.mode == "int" else "hq_topk_float"
  out = (jax.ShapeDtypeStruct((b, k), jnp.int32), jax.ShapeDtypeStruct((b, k, 2), jnp.int32))
  with jax.default_device(_cpu()):  # the kernel is registered for the CPU platform only
    found, keys = jax.ffi.ffi_call(target, out)(*table.arrays, *user_arrays, indptr, rows,
                                                meta=np.asarray(table.meta, np.int64), k=np.int64(k),
                                                threads=np.int64(threads or default_threads()))
  found = np.asarray(found)
  scores = np.ascontiguousarray(np.asarray(keys)).view(np.float64).reshape(b, k).astype(np.float32)
  if table.ids is not None:
    found = np.where(found >= 0, table.ids[np.maximum(found, 0)], -1).astype(np.int32)
  return scores, found
