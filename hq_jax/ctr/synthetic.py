"""Synthetic Criteo-like CTR data with a planted teacher, for scale tests and ground-truth checks.

Real CTR logs are too big to ship and carry no ground truth about which features matter. This generator
draws each field's feature from a Zipf law (feature of rank r has probability proportional to r^-a, the
heavy head and long tail of Criteo), with cardinalities up to Criteo's 6.8M features in total, and draws
labels from a planted factorization-machine teacher:

  logit(x) = bias + sum_f w[x_f] + sum_{f < g} <v[x_f], v[x_g]>,   label ~ Bernoulli(sigmoid(logit)).

Only "important" features have non-zero teacher weights (w, v): every feature of an unimportant field is
zero, and inside an important field each feature is important with probability `important_fraction`
(independently of its frequency). `SyntheticTruth` returns the teacher, so a test or a results table can
relate the bits MPE gives a frequency group to the importance the teacher planted there. The bias is set
so that the mean predicted CTR equals `target_ctr` (Criteo's is about 0.26).

Memory: ids are generated field by field in row chunks with numpy; the dominant cost is the (n, F) int32
id matrix itself (45.8M x 39 x 4 B = 7.1 GB at full Criteo size, so give `cache_dir` to write it to a
memory-mapped file) plus the teacher, N x (embed_dim + 1) float32 (245 MB for 6.8M features, dim 8).

Determinism: the result depends only on the arguments (each field, the teacher and the labels draw from
their own generator spawned from `seed`, so the chunk size does not change the data).

Importing this module registers the dataset spec 'synthetic:KEY=VAL,...' of `hq_jax.ctr.data.load_ctr`
(`synthetic_from_spec`); this module depends on `hq_jax.ctr.data`, never the reverse.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from hq_jax.ctr import data as ctr_data
from hq_jax.errors import UserError

# Rows generated per step: bounds the temporary (chunk, F, embed_dim) float64 teacher gather to ~80 MB
# for 39 fields and embed_dim 8.
_CHUNK_ROWS = 32768

# Rows used to fit the bias to the target CTR (more would only cost time: the bias is one number).
_BIAS_FIT_ROWS = 1 << 20


@dataclasses.dataclass(frozen=True)
class SyntheticTruth:
  """The planted teacher behind a synthetic dataset, indexed by global feature id."""

  embeddings: np.ndarray  # (N, k) float32 teacher factor v per feature; zero for unimportant features
  linear: np.ndarray  # (N,) float32 teacher first-order weight w; zero for unimportant features
  important: np.ndarray  # (N,) bool: the feature has non-zero teacher weights
  importance: np.ndarray  # (N,) float32 sqrt(||v||^2 + w^2): how much the feature can move a logit
  field_important: np.ndarray  # (F,) bool: the field has any important features at all
  probabilities: np.ndarray  # (N,) float64 the feature's sampling probability within its field
  bias: float  # teacher bias fitted to the target CTR


def zipf_probabilities(cardinality: int, a: float) -> np.ndarray:
  """p_r proportional to r^-a for ranks r = 1..cardinality (float64, sums to 1)."""
  if cardinality < 1:
    raise UserError(f"a field needs at least one feature, got cardinality {cardinality}")
  w = np.arange(1, cardinality + 1, dtype=np.float64) ** -float(a)
  return w / w.sum()


def criteo_like_cardinalities(total_features: int, num_fields: int = 39, smallest: int = 4) -> list:
  """Field cardinalities spaced geometrically from `smallest` upward, summing exactly to `total_features`.

  Our heuristic for "a few huge fields and many small ones" (Criteo's fields range from 3 or 4 values to
  millions); it does not reproduce Criteo's actual per-field counts. Sorted ascending.
  """
  if num_fields < 1 or total_features < num_fields * smallest:
    raise UserError(f"cannot split {total_features} features into {num_fields} fields of at least "
                    f"{smallest}")

  def cards(top):
    return np.maximum(smallest, np.round(np.geomspace(smallest, top, num_fields))).astype(np.int64)

  lo, hi = float(smallest), float(total_features)
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if cards(mid).sum() < total_features else (lo, mid)
  c = cards(lo)
  c[-1] += total_features - c.sum()
  return sorted(int(x) for x in c)


def teacher_logits(ids: np.ndarray, embeddings: np.ndarray, linear: np.ndarray, bias: float) -> np.ndarray:
  """The teacher: bias + sum_f w[x_f] + sum_{f<g} <v[x_f], v[x_g]> for (n, F) global ids, in float64.

  Uses the factorization-machine identity sum_{f<g} <v_f, v_g> = (||sum_f v_f||^2 - sum_f ||v_f||^2) / 2.
  """
  v = embeddings[ids].astype(np.float64)  # (n, F, k)
  pairwise = 0.5 * (np.square(v.sum(axis=1)).sum(axis=1) - np.square(v).sum(axis=(1, 2)))
  return bias + linear[ids].astype(np.float64).sum(axis=1) + pairwise


def _fit_bias(logits: np.ndarray, target_ctr: float) -> float:
  """The b with mean(sigmoid(logits + b)) = target_ctr (bisection; the mean is increasing in b)."""
  lo, hi = -30.0, 30.0
  for _ in range(60):
    mid = (lo + hi) / 2
    if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < target_ctr:
      lo = mid
    else:
      hi = mid
  return (lo + hi) / 2


def _make_teacher(rng: np.random.Generator, probs: list, field_offsets: np.ndarray, embed_dim: int,
                  important_fraction: float, important_field_fraction: float, interaction_std: float,
                  linear_std: float):
  """Draws the teacher, scaled so the two logit terms have about the requested standard deviations.

  With q_f the probability that a sampled feature of field f is important, independent rows give
  Var(pairwise) = s^4 * k * sum_{f<g} q_f q_g for factors ~ N(0, s^2 I_k), and
  Var(linear) = t^2 * sum_f q_f for weights ~ N(0, t^2); s and t are solved from these.
  """
  num_fields = len(probs)
  n = int(field_offsets[-1])
  num_important_fields = max(1, int(round(important_field_fraction * num_fields)))
  field_important = np.zeros(num_fields, bool)
  field_important[rng.choice(num_fields, num_important_fields, replace=False)] = True
  important = rng.random(n) < important_fraction
  field_of = np.repeat(np.arange(num_fields), np.diff(field_offsets))
  important &= field_important[field_of]
  q = np.array([probs[f] @ important[field_offsets[f]:field_offsets[f + 1]] for f in range(num_fields)])
  pair_mass = 0.5 * (q.sum() ** 2 - np.square(q).sum())
  s = (interaction_std ** 2 / max(pair_mass * embed_dim, 1e-12)) ** 0.25
  t = linear_std / np.sqrt(max(q.sum(), 1e-12))
  embeddings = (rng.standard_normal((n, embed_dim), dtype=np.float32) * np.float32(s))
  embeddings[~important] = 0
  linear = rng.standard_normal(n, dtype=np.float32) * np.float32(t)
  linear[~important] = 0
  return embeddings, linear, important, field_important


def synthetic_ctr(*, num_rows: int, cardinalities: Sequence[int], zipf_a: float = 1.2, embed_dim: int = 8,
                  seed: int = 0, important_fraction: float = 0.5, important_field_fraction: float = 0.5,
                  interaction_std: float = 1.0, linear_std: float = 1.0, target_ctr: float = 0.25,
                  split: Sequence[float] = (0.8, 0.1, 0.1), cache_dir: str | None = None,
                  name: str = "synthetic") -> tuple[ctr_data.CTRDataset, SyntheticTruth]:
  """Generates a Zipf-distributed CTR dataset with labels from a planted teacher.

  Args:
    num_rows: rows in total (split into consecutive train / valid / test blocks by `split`; rows are
      i.i.d., so consecutive blocks are a random split).
    cardinalities: features per field (see `criteo_like_cardinalities`); total at most 2^31 - 1.
    zipf_a: Zipf exponent of every field's feature distribution (larger = heavier head).
    embed_dim: teacher factor dimension k.
    seed: the only source of randomness.
    important_fraction: probability that a feature of an important field has non-zero teacher weights.
    important_field_fraction: fraction of fields (rounded, at least one) that carry any signal.
    interaction_std, linear_std: target standard deviations of the pairwise and first-order logit terms.
    target_ctr: the mean label probability the bias is fitted to.
    split: (train, valid, test) fractions.
    cache_dir: if given, the data is written there once (memory-mapped, keyed by all arguments) and read
      back on later calls; if None it is generated in memory.
    name: dataset name.

  Returns:
    (dataset, truth); `dataset.counts` counts the training rows only.
  """
  cards = np.asarray([int(c) for c in cardinalities], np.int64)
  if num_rows < 1 or cards.size < 1 or np.any(cards < 1):
    raise UserError(f"synthetic data needs num_rows >= 1 and cardinalities >= 1, got num_rows={num_rows}, "
                    f"cardinalities={cards.tolist()[:10]}")
  if cards.sum() > np.iinfo(np.int32).max:
    raise UserError(f"synthetic data: {cards.sum()} features do not fit int32 ids")
  if not 0 < target_ctr < 1:
    raise UserError(f"target_ctr must lie in (0, 1), got {target_ctr}")
  if not (0 <= important_fraction <= 1 and 0 <= important_field_fraction <= 1):
    raise UserError(f"important_fraction and important_field_fraction must lie in [0, 1], got "
                    f"{important_fraction} and {important_field_fraction}")
  if embed_dim < 1 or zipf_a < 0 or interaction_std < 0 or linear_std < 0:
    raise UserError(f"need embed_dim >= 1, zipf_a >= 0 and non-negative teacher stds, got embed_dim="
                    f"{embed_dim}, zipf_a={zipf_a}, interaction_std={interaction_std}, "
                    f"linear_std={linear_std}")
  params = dict(num_rows=int(num_rows), cardinalities=cards.tolist(), zipf_a=float(zipf_a),
                embed_dim=int(embed_dim), seed=int(seed), important_fraction=float(important_fraction),
                important_field_fraction=float(important_field_fraction),
                interaction_std=float(interaction_std), linear_std=float(linear_std),
                target_ctr=float(target_ctr), split=[float(x) for x in split])
  sizes = [int(round(f * num_rows)) for f in split[1:]]
  sizes.insert(0, num_rows - sum(sizes))
  ctr_data.split_rows(0, split, 0)  # validates the fractions

  if cache_dir is None:
    arrays = _generate(params, sizes, lambda shape: np.empty(shape, np.int32))
    ds = ctr_data.CTRDataset(
        name=name, ids=arrays.pop("ids"), labels=arrays.pop("labels"),
        field_offsets=arrays.pop("field_offsets"), counts=arrays.pop("counts"),
        summary=dict(arrays.pop("summary"), from_cache=False, cache_path=None), splits=_split_ranges(sizes))
    return ds, _truth(arrays, ds.summary["teacher_bias"])

  def build(tmp):
    arrays = _generate(params, sizes, lambda shape: np.lib.format.open_memmap(
        os.path.join(tmp, "ids.npy"), mode="w+", dtype=np.int32, shape=shape))
    arrays.pop("ids").flush()
    summary = arrays.pop("summary")
    for key, value in arrays.items():
      np.save(os.path.join(tmp, key + ".npy"), value)
    return {"splits": dict(zip(ctr_data.SPLIT_NAMES, sizes)), "summary": summary}

  ds, extra = ctr_data.cached_build(name, [], params, cache_dir, build)
  return ds, _truth(extra, ds.summary["teacher_bias"])


def _split_ranges(sizes: Sequence[int]) -> dict:
  bounds = np.cumsum([0] + list(sizes))
  return {k: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, k in enumerate(ctr_data.SPLIT_NAMES)}


def _truth(arrays: dict, bias: float) -> SyntheticTruth:
  emb = np.asarray(arrays["truth_embeddings"])
  lin = np.asarray(arrays["truth_linear"])
  return SyntheticTruth(
      embeddings=emb, linear=lin, important=np.asarray(arrays["truth_important"]),
      importance=np.sqrt(np.square(emb).sum(axis=1) + np.square(lin)).astype(np.float32),
      field_important=np.asarray(arrays["truth_field_important"]),
      probabilities=np.asarray(arrays["truth_probabilities"]), bias=float(bias))


def _generate(params: dict, sizes: Sequence[int], alloc_ids) -> dict:
  """Draws ids, teacher and labels; `alloc_ids(shape)` gives the (n, F) int32 array to fill."""
  n, cards = params["num_rows"], np.asarray(params["cardinalities"], np.int64)
  num_fields = cards.size
  field_offsets = np.concatenate([[0], np.cumsum(cards)]).astype(np.int64)
  seq = np.random.SeedSequence(params["seed"])
  teacher_seq, label_seq, perm_seq, *field_seqs = seq.spawn(3 + num_fields)

  # Zipf law per field; a random permutation decides which id gets which rank, so that frequency is not
  # monotone in the id (nothing downstream may rely on id order).
  probs = [zipf_probabilities(int(c), params["zipf_a"]) for c in cards]
  perm_rng = np.random.default_rng(perm_seq)
  rank_to_local = [perm_rng.permutation(int(c)).astype(np.int32) for c in cards]
  probabilities = np.empty(int(field_offsets[-1]), np.float64)
  for f in range(num_fields):
    probabilities[field_offsets[f] + rank_to_local[f]] = probs[f]

  embeddings, linear, important, field_important = _make_teacher(
      np.random.default_rng(teacher_seq), [probabilities[field_offsets[f]:field_offsets[f + 1]]
                                           for f in range(num_fields)],
      field_offsets, params["embed_dim"], params["important_fraction"], params["important_field_fraction"],
      params["interaction_std"], params["linear_std"])

  ids = alloc_ids((n, num_fields))
  field_rngs = [np.random.default_rng(s) for s in field_seqs]
  cdfs = [np.cumsum(p) for p in probs]
  logits = np.empty(n, np.float32)
  for lo in range(0, n, _CHUNK_ROWS):
    hi = min(n, lo + _CHUNK_ROWS)
    block = np.empty((hi - lo, num_fields), np.int32)
    for f in range(num_fields):
      rank = np.minimum(np.searchsorted(cdfs[f], field_rngs[f].random(hi - lo), side="right"), cards[f] - 1)
      block[:, f] = rank_to_local[f][rank] + field_offsets[f]
    ids[lo:hi] = block
    logits[lo:hi] = teacher_logits(block, embeddings, linear, 0.0)

  bias = _fit_bias(logits[:_BIAS_FIT_ROWS].astype(np.float64), params["target_ctr"])
  label_rng = np.random.default_rng(label_seq)
  labels = np.empty(n, np.float32)
  for lo in range(0, n, _CHUNK_ROWS):
    hi = min(n, lo + _CHUNK_ROWS)
    p = 1.0 / (1.0 + np.exp(-(logits[lo:hi].astype(np.float64) + bias)))
    labels[lo:hi] = label_rng.random(hi - lo) < p

  n_train = sizes[0]
  counts = np.zeros(int(field_offsets[-1]), np.int64)
  for lo in range(0, n_train, _CHUNK_ROWS):
    counts += np.bincount(np.asarray(ids[lo:min(n_train, lo + _CHUNK_ROWS)]).ravel(), minlength=counts.size)
  bounds = np.cumsum([0] + list(sizes))
  summary = {
      "rows": dict(zip(ctr_data.SPLIT_NAMES, (int(s) for s in sizes))),
      "num_fields": int(num_fields), "num_features": int(field_offsets[-1]),
      "ctr": {k: float(labels[bounds[i]:bounds[i + 1]].mean()) if sizes[i] else None
              for i, k in enumerate(ctr_data.SPLIT_NAMES)},
      "teacher_bias": bias, "teacher_logit_std": float(np.std(logits)),
      "important_features": int(important.sum()), "important_fields": int(field_important.sum()),
      "features_unseen_in_train": int((counts == 0).sum()), "format": "synthetic", "params": params,
  }
  return {"ids": ids, "labels": labels, "field_offsets": field_offsets, "counts": counts, "summary": summary,
          "truth_embeddings": embeddings, "truth_linear": linear, "truth_important": important,
          "truth_field_important": field_important, "truth_probabilities": probabilities}


# Keys accepted in a 'synthetic:KEY=VAL,...' spec, with their types.
_SPEC_KEYS = {"rows": int, "fields": int, "features": int, "cardinalities": str, "zipf_a": float,
              "embed_dim": int, "seed": int, "important_fraction": float, "important_field_fraction": float,
              "interaction_std": float, "linear_std": float, "target_ctr": float}


def synthetic_from_spec(spec: str, *, cache_dir: str | None = None, seed: int = 0
                        ) -> tuple[ctr_data.CTRDataset, SyntheticTruth]:
  """Parses 'KEY=VAL,...' (the part after 'synthetic:') and generates the data.

  Keys: rows (default 100000), either cardinalities=C1/C2/... or fields (39) and features (100000, spread
  by `criteo_like_cardinalities`), zipf_a, embed_dim, seed (default: the `seed` argument),
  important_fraction, important_field_fraction, interaction_std, linear_std, target_ctr.
  """
  opts = {}
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in _SPEC_KEYS:
      raise UserError(f"synthetic spec item {item!r}: expected KEY=VALUE with KEY one of "
                      f"{', '.join(_SPEC_KEYS)}")
    try:
      opts[key] = _SPEC_KEYS[key](value)
    except ValueError:
      raise UserError(f"synthetic spec item {item!r}: {value!r} is not a valid "
                      f"{_SPEC_KEYS[key].__name__}") from None
  if "cardinalities" in opts:
    if "fields" in opts or "features" in opts:
      raise UserError("synthetic spec: give either cardinalities or fields/features, not both")
    try:
      cards = [int(c) for c in opts.pop("cardinalities").split("/")]
    except ValueError:
      raise UserError(f"synthetic spec: cardinalities must be integers separated by '/', "
                      f"in {spec!r}") from None
  else:
    cards = criteo_like_cardinalities(opts.pop("features", 100_000), opts.pop("fields", 39))
  num_rows = opts.pop("rows", 100_000)
  opts.setdefault("seed", seed)
  return synthetic_ctr(num_rows=num_rows, cardinalities=cards, cache_dir=cache_dir, **opts)


# The 'synthetic:KEY=VAL,...' dataset spec of `hq_jax.ctr.data.load_ctr`: the registry imports this module
# by name on first use (it never imports it statically: this module imports the data package).
ctr_data.register_ctr_spec(
    "synthetic", lambda arg, cache_dir, seed: synthetic_from_spec(arg, cache_dir=cache_dir, seed=seed)[0],
    argument="optional")
