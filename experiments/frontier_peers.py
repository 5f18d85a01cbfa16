"""FAISS post-training quantizers as peers of hq_jax's codes (issue 22), without flags: importable by tests.

Library side of `experiments/frontier.py`. A peer is a FAISS `index_factory` string fitted on the float
embeddings of a trained full-precision export, in one of three layouts:

  both-shared    users and items coded, one quantizer trained on the users and items together;
  both-separate  users and items coded, one quantizer trained on each side (its own codebooks / rotation);
  items          items coded with a quantizer trained on the items; users stay float32.

Each fitted peer becomes a pair of hq_jax representations (`Peer.user_rep`, `Peer.item_rep`) that ranks
as the FAISS codes do under the inner product (up to the float rounding of the scores, e.g. <u A^T, c>
against <u, c A>: OPQ4,PQ4x8np items-only on LastFM, Recall@20 0.2351 from product codes, 0.2349 decoded):

  * PQ, OPQ: FAISS's codes and codebooks as hq_jax product codes (`ProductCodes`, export kind "pq",
    `native_pq_pair`). OPQ's rotation A is not stored: both sides rotated alike keep their inner products,
    and in the items layout the stored float users are u A^T. OPQ both-separate (two rotations) falls back
    to decoded rows.
  * SQ (and PQ without `native_pq`): the decoded rows, `index.sa_decode(index.sa_encode(x))`, float32
    (n, d); users float in the items layout. For IP search FAISS scores <q, x^_i> with the same x^_i, so
    the ranking is FAISS's.
  * binary codes (LSH, ITQ + LSH): FAISS compares codes by Hamming distance, i.e. by <s_u, s_i> with
    s = sign(g(x)) in {-1, +1}^B, where g is the index's affine map before the sign (`binary_affine`: the
    pre-transform chain, LSH's rotation, minus its thresholds). Both coded: the codes themselves as a 1-bit
    `QuantizedMatrix` (scale 1, offset 0), ranked by hq_jax's integer path. Items only: users float and the
    items decoded as s_i L^T, L = g(I) - g(0) (the linear part, d x B), so <u, s_i L^T> = <u L, s_i>: the
    asymmetric score of a float query against binary codes (a per-user constant from g's offset and a
    positive scale do not change a ranking). The binary layouts are "both-shared" or "items" only: codes
    of two separately trained rotations are in different bases and their Hamming distance means nothing.

Bits per node (`bits_accounting`): code bits of one coded node plus its per-node scalars (none for these
FAISS codes: PQ / OPQ / SQ / LSH store no norm or scale per vector for IP search); in the items layout
users are float32 (32 d bits) and `bits_per_node` counts the coded items. Trained parameters (codebooks,
rotations, SQ ranges, thresholds, ITQ's mean and projection: `trained_floats`) are float32 and shown
apart as `codebook_bits_per_node` = their bits / coded nodes.

Front rows (`FRONT_ROW_FIELDS`, documented at the top of `experiments/frontier.py`) are the one record the
table and the plot read, for peers, hq_jax runs and published points alike.
"""

import json
import dataclasses
import math
import os
import statistics
import time

import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.workdir import read_json

FAMILIES = ("pq", "pq_fastscan", "opq", "sq", "lsh", "itq")
LAYOUTS = ("both-shared", "both-separate", "items")
BINARY_FAMILIES = ("lsh", "itq")
DEFAULT_BITS = (32, 64, 128, 256)


# ----------------------------------------------------------------------------------------------------------
# Which peers exist at a code length
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeerSpec:
  """One FAISS quantizer at one code length in one layout."""

  family: str  # one of FAMILIES
  factory: str  # the exact faiss.index_factory string
  code_bits: int  # bits of one coded node's code
  layout: str  # one of LAYOUTS

  @property
  def name(self) -> str:
    return f"{self.factory} [{self.layout}]"


def factory_string(family: str, dim: int, bits: int) -> str | None:
  """The index_factory string of `family` at `bits` per coded vector of dimension `dim`, or None where the
  family has no such code length (M must divide d; SQ has 4 and 8 bits per dimension; ITQ needs B <= d).

  "np" (no polysemous training) only skips FAISS's re-numbering of the 8-bit codewords for Hamming
  pre-filtering, which IP search does not use: the decoded vectors are identical (checked in the tests) and
  training is 10-20x faster."""
  if family in ("pq", "opq"):
    m = bits // 8
    if bits % 8 or dim % m:
      return None
    return f"PQ{m}x8np" if family == "pq" else f"OPQ{m},PQ{m}x8np"
  if family == "pq_fastscan":
    m = bits // 4
    return f"PQ{m}x4fs" if bits % 4 == 0 and dim % m == 0 and m % 2 == 0 else None
  if family == "sq":
    per_dim = bits / dim
    return {4: "SQ4", 8: "SQ8"}.get(per_dim) if per_dim.is_integer() else None
  if family == "lsh":
    return f"LSH{bits}rt" if bits % 8 == 0 else None
  if family == "itq":
    return f"ITQ{bits},LSH" if bits <= dim and bits % 8 == 0 else None
  raise UserError(f"unknown peer family {family!r} (choose from {', '.join(FAMILIES)})")


def peer_specs(dim: int, bits=DEFAULT_BITS, families=FAMILIES, layouts=LAYOUTS) -> list[PeerSpec]:
  """Every (family, code length, layout) that applies, in that order; SQ also at its own lengths (4 d, 8 d
  bits) when `bits` does not list them."""
  specs = []
  for family in families:
    lengths = sorted(set(bits) | ({4 * dim, 8 * dim} if family == "sq" else set()))
    for b in lengths:
      factory = factory_string(family, dim, b)
      if factory is None:
        continue
      for layout in layouts:
        if family in BINARY_FAMILIES and layout == "both-separate":
          continue
        specs.append(PeerSpec(family=family, factory=factory, code_bits=b, layout=layout))
  return specs


# ----------------------------------------------------------------------------------------------------------
# Fitting, decoding, the binary codes' linear map
# ----------------------------------------------------------------------------------------------------------


def train_index(factory: str, x: np.ndarray, *, threads: int | None = None):
  """A FAISS index of `factory` trained on x (IP metric where the index supports it; LSH is Hamming)."""
  import faiss  # noqa: PLC0415  (the bench extra)

  if threads:
    faiss.omp_set_num_threads(threads)
  d = x.shape[1]
  binary = "LSH" in factory
  index = faiss.index_factory(d, factory) if binary else faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
  index.train(np.ascontiguousarray(x, np.float32))
  return index


def decode(index, x: np.ndarray) -> np.ndarray:
  """x encoded and decoded by `index` (FAISS's own sa_encode / sa_decode), float32 (n, d)."""
  return np.asarray(index.sa_decode(index.sa_encode(np.ascontiguousarray(x, np.float32))), np.float32)


def _lsh_part(index):
  import faiss  # noqa: PLC0415

  index = faiss.downcast_index(index)
  chain = []
  if isinstance(index, faiss.IndexPreTransform):
    chain = [faiss.downcast_VectorTransform(index.chain.at(k)) for k in range(index.chain.size())]
    index = faiss.downcast_index(index.index)
  if not isinstance(index, faiss.IndexLSH):
    raise ValueError(f"not a binary (LSH) index: {type(index).__name__}")
  return chain, index


def binary_affine(index, x: np.ndarray) -> np.ndarray:
  """g(x): affine values whose signs are the index's bits (pre-transforms, LSH rotation, minus thresholds).

  FAISS's ITQTransform scales each centred vector to unit norm before its PCA-then-ITQ matrix; a positive
  scale per vector changes no sign, so g leaves it out and stays affine: (x - mean) A^T + b."""
  import faiss  # noqa: PLC0415

  chain, lsh = _lsh_part(index)
  y = np.ascontiguousarray(x, np.float32)
  for transform in chain:
    if isinstance(transform, faiss.ITQTransform):
      lt = transform.pca_then_itq
      a = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
      b = faiss.vector_to_array(lt.b) if lt.have_bias else np.zeros(lt.d_out, np.float32)
      y = ((y - faiss.vector_to_array(transform.mean)[None, :]) @ a.T + b[None, :]).astype(np.float32)
    else:
      y = transform.apply(y)
  y = lsh.rrot.apply(y) if lsh.rotate_data else y[:, :lsh.nbits]
  if lsh.train_thresholds:
    y = y - faiss.vector_to_array(lsh.thresholds)[None, :]
  return np.asarray(y, np.float32)


def binary_codes(index, x: np.ndarray) -> np.ndarray:
  """The index's codes of x as int8 {-1, +1} (n, B), unpacked from `sa_encode` (bit j of a code is bit
  j % 8 of byte j // 8, FAISS's order)."""
  packed = index.sa_encode(np.ascontiguousarray(x, np.float32))
  nbits = _lsh_part(index)[1].nbits
  bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :nbits]
  return np.where(bits == 1, 1, -1).astype(np.int8)


def binary_linear_map(index, dim: int) -> np.ndarray:
  """L (d, B) with g(x) = x L + g(0): the linear part of `binary_affine`."""
  eye = np.eye(dim, dtype=np.float32)
  return (binary_affine(index, eye) - binary_affine(index, np.zeros((1, dim), np.float32))).astype(np.float64)


def trained_floats(index) -> int:
  """Float32 values a fitted index holds besides its codes: what decoding or encoding needs."""
  import faiss  # noqa: PLC0415

  index = faiss.downcast_index(index)
  size = lambda v: int(v.size())
  total = 0
  if isinstance(index, faiss.IndexPreTransform):
    for k in range(index.chain.size()):
      t = faiss.downcast_VectorTransform(index.chain.at(k))
      if isinstance(t, faiss.ITQTransform):
        total += size(t.mean) + size(t.pca_then_itq.A) + size(t.pca_then_itq.b)
      else:  # LinearTransform (OPQMatrix, PCAMatrix, RandomRotationMatrix)
        total += size(t.A) + size(t.b)
    index = faiss.downcast_index(index.index)
  if isinstance(index, (faiss.IndexPQ, faiss.IndexPQFastScan)):
    total += size(index.pq.centroids)
  elif isinstance(index, faiss.IndexScalarQuantizer):
    total += size(index.sq.trained)
  elif isinstance(index, faiss.IndexLSH):
    total += (size(index.rrot.A) + size(index.rrot.b) if index.rotate_data else 0)
    total += size(index.thresholds) if index.train_thresholds else 0
  else:
    raise ValueError(f"no parameter count for {type(index).__name__}")
  return total


def _pq_part(index):
  """(rotation A (d, d) or None, the PQ index) of a PQ / fast-scan / OPQ + PQ index."""
  import faiss  # noqa: PLC0415

  index = faiss.downcast_index(index)
  rotation = None
  if isinstance(index, faiss.IndexPreTransform):
    if index.chain.size() != 1:
      raise ValueError("one OPQ rotation expected before the PQ")
    t = faiss.downcast_VectorTransform(index.chain.at(0))
    if not isinstance(t, faiss.OPQMatrix) or t.d_in != t.d_out:
      raise ValueError(f"an OPQ rotation of d x d expected, got {type(t).__name__} {t.d_in} -> {t.d_out}")
    rotation = faiss.vector_to_array(t.A).reshape(t.d_out, t.d_in)
    index = faiss.downcast_index(index.index)
  if not isinstance(index, (faiss.IndexPQ, faiss.IndexPQFastScan)):
    raise ValueError(f"not a product-code index: {type(index).__name__}")
  return rotation, index


def product_codes(index, x: np.ndarray) -> tuple[object, np.ndarray | None]:
  """FAISS's PQ codes of x as hq_jax `ProductCodes` (codes uint8 (n, M), codebooks (M, 2^b, d / M)), and the
  OPQ rotation A (y = x A^T, applied before the codes; None for plain PQ). Decoding the codes gives
  `sa_decode` before its inverse rotation: FAISS's reconstruction is decoded @ A."""
  import faiss  # noqa: PLC0415

  rotation, pq_index = _pq_part(index)
  pq = pq_index.pq
  y = np.ascontiguousarray(x if rotation is None else x @ rotation.T, np.float32)
  packed = pq.compute_codes(y)  # (n, code_size) bytes, codes written LSB first (faiss BitstringWriter)
  bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :pq.M * pq.nbits].reshape(len(x), pq.M, pq.nbits)
  codes = (bits.astype(np.int64) << np.arange(pq.nbits)).sum(-1).astype(np.uint8)
  codebooks = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(np.float32)
  return ProductCodes(codes=codes, codebooks=codebooks, bits=int(pq.nbits)), rotation


def native_pq_pair(spec: "PeerSpec", user_index, item_index, users: np.ndarray, items: np.ndarray):
  """The peer as hq_jax product codes, or None where its layout has none: both sides coded need one rotation
  (plain PQ, or OPQ trained on both sides); items only stores the users rotated like the items (x A^T), so
  <u A^T, c_i> = <u, c_i A>, FAISS's score."""
  if spec.family not in ("pq", "pq_fastscan", "opq"):
    return None
  if spec.family == "opq" and spec.layout == "both-separate":
    return None
  item_rep, rotation = product_codes(item_index, items)
  if user_index is None:
    return (users if rotation is None else (users @ rotation.T).astype(np.float32)), item_rep
  return product_codes(user_index, users)[0], item_rep


@dataclasses.dataclass(frozen=True)
class Peer:
  """A fitted peer: its hq_jax representations and what its bits are made of."""

  spec: PeerSpec
  user_rep: object  # float32 (U, d) or a 1-bit QuantizedMatrix
  item_rep: object
  trained_floats: int  # over every index the layout trained
  item_index: object  # the index that coded the items (for FAISS's search time)
  fit_seconds: float


def unit_sign_matrix(codes: np.ndarray) -> QuantizedMatrix:
  """int8 {-1, +1} codes as a 1-bit QuantizedMatrix with scale 1 and offset 0 (ranked by <s_u, s_i>)."""
  return QuantizedMatrix(codes=np.asarray(codes, np.int8), scale=np.float32(1.0), offset=np.float32(0.0), bits=1)


def fit_peer(spec: PeerSpec, users: np.ndarray, items: np.ndarray, *, threads: int | None = None,
             native_pq: bool = True) -> Peer:
  """Trains `spec` on the float embeddings and returns the peer's representations (module docstring); with
  `native_pq`, PQ and OPQ peers as hq_jax `ProductCodes` where the layout allows (`native_pq_pair`)."""
  users = np.ascontiguousarray(users, np.float32)
  items = np.ascontiguousarray(items, np.float32)
  t0 = time.perf_counter()
  if spec.layout == "both-shared":
    user_index = item_index = train_index(spec.factory, np.concatenate([users, items]), threads=threads)
    trained = trained_floats(item_index)
  elif spec.layout == "both-separate":
    if spec.family in BINARY_FAMILIES:
      raise ValueError(f"{spec.factory}: separately trained binary codes are not comparable (module docstring)")
    user_index = train_index(spec.factory, users, threads=threads)
    item_index = train_index(spec.factory, items, threads=threads)
    trained = trained_floats(user_index) + trained_floats(item_index)
  elif spec.layout == "items":
    user_index, item_index = None, train_index(spec.factory, items, threads=threads)
    trained = trained_floats(item_index)
  else:
    raise ValueError(f"unknown layout {spec.layout!r}")
  if spec.family in BINARY_FAMILIES:
    item_codes = binary_codes(item_index, items)
    if user_index is None:
      user_rep = users
      item_rep = (item_codes.astype(np.float64) @ binary_linear_map(item_index, users.shape[1]).T).astype(np.float32)
    else:
      user_rep, item_rep = unit_sign_matrix(binary_codes(user_index, users)), unit_sign_matrix(item_codes)
  elif native_pq and (pair := native_pq_pair(spec, user_index, item_index, users, items)) is not None:
    user_rep, item_rep = pair
  else:
    user_rep = users if user_index is None else decode(user_index, users)
    item_rep = decode(item_index, items)
  return Peer(spec=spec, user_rep=user_rep, item_rep=item_rep, trained_floats=trained, item_index=item_index,
              fit_seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------
# Bits
# ----------------------------------------------------------------------------------------------------------


def bits_accounting(spec: PeerSpec, *, num_users: int, num_items: int, dim: int, trained: int) -> dict:
  """Bits per node of a peer (module docstring): codes + per-node scalars, and the trained parameters apart.

  Returns:
    {"bits_per_node": per coded node, "user_bits_per_node", "item_bits_per_node", "coded_nodes",
     "codebook_bits": 32 * trained floats, "codebook_bits_per_node": codebook_bits / coded nodes,
     "stored_bytes": every code, float user row and trained parameter}.
  """
  item_bits = spec.code_bits  # no per-node scalar in any of these FAISS codes
  user_bits = 32 * dim if spec.layout == "items" else spec.code_bits
  coded = num_items if spec.layout == "items" else num_users + num_items
  bits_per_node = item_bits if spec.layout == "items" else (num_users * user_bits + num_items * item_bits) / coded
  codebook_bits = 32 * trained
  stored_bits = num_users * user_bits + num_items * item_bits + codebook_bits
  return {"bits_per_node": float(bits_per_node), "user_bits_per_node": float(user_bits),
          "item_bits_per_node": float(item_bits), "coded_nodes": int(coded), "codebook_bits": int(codebook_bits),
          "codebook_bits_per_node": codebook_bits / coded, "stored_bytes": math.ceil(stored_bits / 8)}


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


def median_seconds(fn, repeats: int) -> tuple[float, list[float]]:
  """fn() once to warm up, then `repeats` timed calls; (median, times)."""
  fn()
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def faiss_search_index(peer: Peer, items: np.ndarray):
  """(index, query transform) FAISS searches for this peer: the fitted item index with the items added (IP),
  or for binary codes an IndexBinaryFlat over the packed item codes with packed user codes as queries."""
  import faiss  # noqa: PLC0415

  items = np.ascontiguousarray(items, np.float32)
  if peer.spec.family in BINARY_FAMILIES:
    nbits = _lsh_part(peer.item_index)[1].nbits
    index = faiss.IndexBinaryFlat(nbits)
    index.add(peer.item_index.sa_encode(items))
    return index, lambda q: peer.item_index.sa_encode(np.ascontiguousarray(q, np.float32))
  index = faiss.clone_index(peer.item_index)
  index.add(items)
  return index, lambda q: np.ascontiguousarray(q, np.float32)


def machine_state() -> dict:
  """CPU model (lscpu), OPENBLAS_CORETYPE, load averages and the UTC time, for every timing."""
  import subprocess  # noqa: PLC0415

  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
  except (OSError, subprocess.SubprocessError):
    model = "?"
  return {"cpu_model": model, "cpus": os.cpu_count(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "unset"),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
          "loadavg": [round(v, 2) for v in os.getloadavg()],
          "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ----------------------------------------------------------------------------------------------------------
# Front rows: the schema, readers, table and plot
# ----------------------------------------------------------------------------------------------------------

FRONT_ROW_FIELDS = {  # name -> (types, required); the schema is documented at the top of experiments/frontier.py
    "method": (str, True),
    "dataset": (str, True),
    "bits_per_node": ((int, float), True),
    "codebook_bits_per_node": ((int, float), True),
    "recall@20": ((int, float, list), True),
    "ndcg@20": ((int, float, list, type(None)), True),
    "split": (str, True),
    "seeds": (list, True),
    "topk_seconds": ((int, float, type(None)), True),
    "source": (str, True),
    "family": (str, False),
    "layout": (str, False),
    "user_bits_per_node": ((int, float), False),
    "topk_index": (str, False),
    "topk_seconds_hq_jax": ((int, float, type(None)), False),
    "reference_recall@20": ((int, float, type(None)), False),
    "dim": (int, False),
    "best_of_epochs": (bool, False),
    "note": (str, False),
}


def check_front_row(row: dict, where: str = "front row") -> dict:
  """Returns `row` if it follows FRONT_ROW_FIELDS (required keys, types), else raises UserError."""
  if not isinstance(row, dict):
    raise UserError(f"{where}: a front row is a JSON object, got {type(row).__name__}")
  for key, (types, required) in FRONT_ROW_FIELDS.items():
    if key not in row:
      if required:
        raise UserError(f"{where}: missing key {key!r}")
      continue
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(row[key], allowed) or isinstance(row[key], bool) and bool not in allowed:
      raise UserError(f"{where}: {key!r} has type {type(row[key]).__name__}")
  return row


def mean_of(value) -> float:
  """A metric that may be a list over seeds, as its mean."""
  return float(np.mean(value)) if isinstance(value, list) else float(value)


def load_front_rows(path: str) -> list[dict]:
  """Front rows of a JSON file: a list of rows, or an object with a "rows" list (what frontier.py writes)."""
  try:
    data = read_json(path)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read front rows ({e})") from None
  rows = data.get("rows") if isinstance(data, dict) else data
  if not isinstance(rows, list):
    raise UserError(f"{path}: expected a list of front rows or an object with a 'rows' list")
  return [check_front_row(r, f"{path} row {k}") for k, r in enumerate(rows)]


def row_from_workdir(workdir: str, dataset: str, method: str | None = None) -> dict:
  """A front row from a finished hq_jax workdir's results.json (test metrics of its final epoch)."""
  path = os.path.join(workdir, "results.json")
  try:
    r = read_json(path)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read a finished run ({e})") from None
  if not isinstance(r, dict) or "metrics" not in r:
    raise UserError(f"{path}: not a finished run's results.json (no 'metrics')")
  config = r.get("config", {})
  n = r.get("dataset", {}).get("num_users", 0) + r.get("dataset", {}).get("num_items", 0)
  bits = r.get("bits_per_node", 8 * r["representation_bytes"] / n if n and "representation_bytes" in r else None)
  if bits is None:
    raise UserError(f"{path}: no bits_per_node (nor representation_bytes and the dataset's size)")
  return check_front_row({
      "method": method or f"hq_jax {r.get('model', os.path.basename(workdir.rstrip('/')))}",
      "dataset": dataset, "family": "hq_jax", "layout": r.get("layout", "both"), "bits_per_node": float(bits),
      "codebook_bits_per_node": float(r.get("codebook_bits_per_node", 0.0)),
      "recall@20": float(r["metrics"]["recall@20"]), "ndcg@20": float(r["metrics"].get("ndcg@20", float("nan"))),
      "split": config.get("eval", {}).get("split", "test"), "seeds": [config.get("seed", 0)],
      "topk_seconds": r.get("topk_seconds"), "source": path}, path)


def merge_seeds(rows: list[dict]) -> list[dict]:
  """Rows of one method, layout and length (e.g. one `row_from_workdir` per seed) as one row whose
  recall@20 / ndcg@20 / seeds are lists over them; the first row's other fields; order kept."""
  merged: dict[tuple, dict] = {}
  as_list = lambda v: list(v) if isinstance(v, list) else [v]
  for r in rows:
    key = (r["method"], r.get("layout"), r["bits_per_node"])
    if key not in merged:
      merged[key] = {**r, "recall@20": as_list(r["recall@20"]), "seeds": list(r.get("seeds") or []),
                     "ndcg@20": None if r.get("ndcg@20") is None else as_list(r["ndcg@20"])}
      continue
    m = merged[key]
    m["recall@20"] += as_list(r["recall@20"])
    m["seeds"] += list(r.get("seeds") or [])
    m["ndcg@20"] = None if m["ndcg@20"] is None or r.get("ndcg@20") is None else m["ndcg@20"] + as_list(r["ndcg@20"])
  return list(merged.values())


def rows_from_lowbit_summary(path: str, dataset: str) -> list[dict]:
  """Front rows of an `experiments.hqgnn_lowbit` summary (.json beside its --out table: {variant: {bits_per_node,
  seeds, recall@20: [per seed], ndcg@20: [...]}}); the 'start' / 'fp' rows (float) are left out."""
  from experiments.lowbit_variants import read_summary  # noqa: PLC0415 - imports the trainer (jax)
  data = read_summary(path, prefix="low-bit summary: ")
  rows = []
  for name, s in data.items():
    if name in ("start", "fp") or name.startswith("pre"):
      continue
    rows.append(check_front_row({
        "method": f"hq_jax {name}", "dataset": dataset, "family": "hq_jax", "layout": "both",
        "bits_per_node": float(s["bits_per_node"]), "codebook_bits_per_node": 0.0,  # per-matrix scalars are in
        "recall@20": list(s["recall@20"]), "ndcg@20": list(s.get("ndcg@20", [])) or None, "split": "test",
        "seeds": list(s.get("seeds", [])), "topk_seconds": None, "source": path}, f"{path} row {name}"))
  return rows


def markdown_table(rows: list[dict], reference: float | None) -> str:
  """The peers' table: one line per row, sorted by (bits per node, layout, method)."""
  head = ("| method | layout | bits / node (codes + scalars) | trained params, bits / coded node | Recall@20 | "
          "% of float | NDCG@20 | FAISS top-20 s | hq_jax top-20 s |")
  lines = [head, "|" + " --- |" * 9]
  fmt = lambda v, f: "-" if v is None else format(v, f)
  for r in sorted(rows, key=lambda r: (r["bits_per_node"], r.get("layout", ""), r["method"])):
    recall = mean_of(r["recall@20"])
    ref = r.get("reference_recall@20", reference)
    pct = f"{100 * recall / ref:.1f}" if ref else "-"
    ndcg = None if r["ndcg@20"] is None else mean_of(r["ndcg@20"])
    lines.append(f"| {r['method']} | {r.get('layout', '-')} | {r['bits_per_node']:g} | "
                 f"{r['codebook_bits_per_node']:.1f} | {recall:.4f} | {pct} | {fmt(ndcg, '.4f')} | "
                 f"{fmt(r['topk_seconds'], '.3f')} | {fmt(r.get('topk_seconds_hq_jax'), '.3f')} |")
  return "\n".join(lines)


FAMILY_LABELS = {"pq": "PQ{M}x8np", "pq_fastscan": "PQ{M}x4fs", "opq": "OPQ{M},PQ{M}x8np", "sq": "SQ4 / SQ8",
                 "lsh": "LSH{B}rt", "itq": "ITQ{B},LSH"}


def summary_table(rows: list[dict], reference: float) -> str:
  """Recall@20 (% of the float encoder) of every FAISS family and layout (rows) at each code length (columns)."""
  peers = [r for r in rows if r.get("family") in FAMILY_LABELS]
  lengths = sorted({r["bits_per_node"] for r in peers})
  cells: dict[tuple, dict] = {}
  for r in peers:
    cells.setdefault((FAMILIES.index(r["family"]), LAYOUTS.index(r["layout"])), {})[r["bits_per_node"]] = r
  head = "| Recall@20 (% of float) | layout | " + " | ".join(f"{b:g} b" for b in lengths) + " |"
  lines = [head, "|" + " --- |" * (2 + len(lengths))]
  for (f, l), by_bits in sorted(cells.items()):
    values = [f"{mean_of(by_bits[b]['recall@20']):.4f} ({100 * mean_of(by_bits[b]['recall@20']) / reference:.0f}%)"
              if b in by_bits else "-" for b in lengths]
    lines.append(f"| {FAMILY_LABELS[FAMILIES[f]]} | {LAYOUTS[l]} | " + " | ".join(values) + " |")
  return "\n".join(lines)


def head_to_head(peers: list[dict], ours: list[dict], reference: float) -> str:
  """Per code length and layout group ("both": users and items coded, either FAISS layout; "items": users
  float), the best FAISS row against the best hq_jax row on the same encoder: Recall@20 (mean over seeds),
  % of the float encoder, and hq_jax's lead. Lengths where neither side has a row are left out; a missing
  side is '-'."""
  group = lambda r: "items" if r.get("layout") == "items" else "both"
  best: dict[tuple, dict] = {}
  for side, rows in (("faiss", [r for r in peers if r.get("family") in FAMILY_LABELS]), ("hq_jax", ours)):
    for r in rows:
      key = (r["bits_per_node"], group(r), side)
      if key not in best or mean_of(r["recall@20"]) > mean_of(best[key]["recall@20"]):
        best[key] = r
  cell = lambda r: "-" if r is None else (
      f"{r['method']}: {mean_of(r['recall@20']):.4f} ({100 * mean_of(r['recall@20']) / reference:.1f}%)"
      + (f", {len(r['recall@20'])} seeds" if isinstance(r["recall@20"], list) and len(r["recall@20"]) > 1 else ""))
  lines = ["| bits / coded node | layout | best FAISS row | best hq_jax row | hq_jax - FAISS |",
           "| --- | --- | --- | --- | --- |"]
  for bits, layout in sorted({k[:2] for k in best}):
    f, h = best.get((bits, layout, "faiss")), best.get((bits, layout, "hq_jax"))
    lead = "-" if f is None or h is None else f"{mean_of(h['recall@20']) - mean_of(f['recall@20']):+.4f}"
    lines.append(f"| {bits:g} | {layout} | {cell(f)} | {cell(h)} | {lead} |")
  return "\n".join(lines)


def replace_section(text: str, heading: str, body: str) -> str:
  """`text` with the section under `heading` (a markdown heading line) replaced by `body`; the section ends
  at the next heading of the same or a higher level. Appended at the end when absent."""
  level = len(heading) - len(heading.lstrip("#"))
  lines = text.splitlines()
  try:
    start = lines.index(heading)
  except ValueError:
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + heading + "\n\n" + body.strip("\n") + "\n"
  end = len(lines)
  for k in range(start + 1, len(lines)):
    hashes = len(lines[k]) - len(lines[k].lstrip("#"))
    if 0 < hashes <= level and lines[k][hashes:hashes + 1] == " ":
      end = k
      break
  out = lines[:start + 1] + [""] + body.strip("\n").splitlines() + [""] + lines[end:]
  return "\n".join(out).rstrip("\n") + "\n"


STYLE = {  # family -> (colour, marker, horizontal offset in log2 units, so that rows at one length do not overprint)
    "pq": ("tab:blue", "o", -0.15), "pq_fastscan": ("tab:cyan", "v", -0.09), "opq": ("tab:purple", "s", -0.03),
    "sq": ("tab:olive", "D", 0.03), "lsh": ("tab:gray", "p", 0.09), "itq": ("tab:brown", "P", 0.15),
    "hq_jax": ("tab:red", "*", 0.0), "bigear": ("black", "^", 0.0), "float": ("tab:green", "_", 0.0),
}
LINESTYLE = {"both-shared": "-", "both-separate": "--", "items": ":", "both": "-"}


def plot_front(rows: list[dict], path: str, title: str, reference: float | None = None,
               reference_seconds: dict[str, float] | None = None) -> None:
  """Recall@20 against bits per node (log2 axis), every row on one figure, one line per (method family,
  layout): solid filled = both sides coded, one quantizer (shared); dashed = one per side; dotted hollow =
  items only (users float32). Second panel: each row's all-user top-20 seconds (markers: the method's own
  search, FAISS's for peers; dots: hq_jax's retrieval over the row's export)."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, (ax, at) = plt.subplots(1, 2, figsize=(14, 5.6), gridspec_kw={"width_ratios": [3, 2]})
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    key = (r.get("family", "hq_jax"), r.get("layout", "both"), r["method"] if r.get("family") in ("hq_jax", "bigear")
           else r.get("family"))
    groups.setdefault(key, []).append(r)
  for (family, layout, _), group in groups.items():
    colour, marker, offset = STYLE.get(family, ("tab:pink", "o", 0.0))
    group = sorted(group, key=lambda r: r["bits_per_node"])
    x = [r["bits_per_node"] * 2.0 ** offset for r in group]
    y = [mean_of(r["recall@20"]) for r in group]
    yerr = [float(np.std(r["recall@20"])) if isinstance(r["recall@20"], list) and len(r["recall@20"]) > 1 else 0.0
            for r in group]
    hollow = layout == "items"
    name = group[0]["method"] if family in ("hq_jax", "bigear") else family
    kw = dict(color=colour, marker=marker, markersize=10 if marker in "*^" else 6,
              markerfacecolor="white" if hollow else colour)
    ax.errorbar(x, y, yerr=yerr if any(yerr) else None, linestyle=LINESTYLE.get(layout, "-"), lw=1,
                label=f"{name} [{layout}]", **kw)
    if family == "bigear":
      for r in group:
        ax.annotate(r.get("note", r["method"]), (r["bits_per_node"], mean_of(r["recall@20"])), fontsize=7,
                    xytext=(-250, -28), textcoords="offset points",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
    timed = [(xi, r["topk_seconds"]) for xi, r in zip(x, group) if r.get("topk_seconds") is not None]
    if timed:
      at.plot(*zip(*timed), linestyle="none", **kw)
    ours = [(xi, r["topk_seconds_hq_jax"]) for xi, r in zip(x, group) if r.get("topk_seconds_hq_jax") is not None]
    if ours:
      at.plot(*zip(*ours), linestyle="none", marker=".", color=colour, alpha=0.7)
  if reference:
    ax.axhline(reference, color="tab:green", lw=0.8, ls="--", label=f"float32 encoder ({reference:.4f})")
  for (what, seconds), ls in zip((reference_seconds or {}).items(), ("--", ":")):
    if seconds is not None:
      at.axhline(seconds, color="tab:green", lw=0.8, ls=ls)
      at.annotate(f"float32, {what}: {seconds:.3f} s", (0.01, seconds), xycoords=("axes fraction", "data"),
                  fontsize=7, color="tab:green", xytext=(0, 2), textcoords="offset points")
  for a in (ax, at):
    a.set_xscale("log", base=2)
    a.grid(alpha=0.3)
  ax.set_xlabel("bits per coded node: codes + per-node scalars (items only: per item; users float32)", fontsize=8)
  at.set_xlabel("bits per coded node", fontsize=8)
  ax.set_ylabel("Recall@20 (test)")
  ax.set_title(title, fontsize=10)
  at.set_yscale("log")
  at.set_ylabel("all-user top-20 seconds (this CPU)")
  at.set_title("top-20 time: markers = the method's own search (FAISS for peers),\n"
               "dots = hq_jax retrieval over the same export", fontsize=8)
  ax.legend(fontsize=6, loc="lower right", ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Published points
# ----------------------------------------------------------------------------------------------------------

BIGEAR_LOG = ("QueYork/BiGeaR-SS (the BiGeaR++ repository) at a78f6ff, src/results/gowalla/quant_baseline/log0.log "
              "(teacher: src/results/gowalla/pretrain_baseline/log0.log)")
PUBLISHED_ROWS = (
    {"method": "BiGeaR (KDD'22), logged, best of epochs", "dataset": "gowalla", "family": "bigear", "layout": "both",
     # 3 layer embeddings (layers = 2 propagation steps: k = 0, 1, 2) of d = 256 sign bits, and one float32
     # scale per layer and node: 768 + 3 * 32 bits.
     "bits_per_node": 864.0, "codebook_bits_per_node": 0.0, "dim": 256,
     "recall@20": 0.18336, "ndcg@20": None,  # its logged NDCG (0.2489) is not the LightGCN formula's scale
     "split": "test", "seeds": [2021], "topk_seconds": None, "best_of_epochs": True,
     "reference_recall@20": 0.18696,  # its teacher, also best of epochs (epoch 413 of 500)
     "source": BIGEAR_LOG,
     "note": "BiGeaR: best of 866 test evaluations (epoch 238), d=256, 768 b + 3 scalars, teacher 0.1870"},
)


def published_rows(dataset: str) -> list[dict]:
  return [dict(r) for r in PUBLISHED_ROWS if r["dataset"] == dataset.lower()]


def merged_with_earlier(doc: dict, path: str) -> dict:
  """`doc` plus the peer rows of the document at `path` that `doc` does not redo (same method and layout)."""
  try:
    with open(path) as f:
      earlier = json.load(f)
    old_rows = [check_front_row(r, f"{path} row {k}") for k, r in enumerate(earlier["rows"])]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"--keep_rows: {path} is not a document this binary wrote ({e})") from None
  if earlier.get("dataset") != doc["dataset"]:
    raise UserError(f"--keep_rows: {path} holds dataset {earlier.get('dataset')!r}, not {doc['dataset']!r}")
  done = {(r["method"], r.get("layout")) for r in doc["rows"]}
  kept = [r for r in old_rows[1:] if (r["method"], r.get("layout")) not in done]
  runs = earlier.get("earlier_runs", []) + [{k: earlier[k] for k in ("command", "machine_before", "machine_after")}]
  return {**doc, "rows": doc["rows"] + kept, "earlier_runs": runs}
