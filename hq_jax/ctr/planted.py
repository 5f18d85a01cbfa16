"""A planted-truth CTR source at Criteo scale, generated on the fly and reproducible row for row (ours).

Why: the MPE claim (about 200x on Criteo at no AUC loss) is about a 6.8M-feature table, and the real Criteo
is not on these machines. A synthetic source whose teacher is known can check more than the real data
could: whether the widths MPE picks track what matters.

Fields and frequencies (fitted to the shipped 9,999-row Criteo sample, `fit_criteo_fields`)
  Each of Criteo's 39 fields (I1..I13 discretised as the loader does, C1..C26 raw, a missing value being a
  value) is modelled as a head value of share h (the sample's top value: often "missing") plus a
  Zipf-Mandelbrot tail p_r proportional to (r + q)^-a over ranks r = 2..K, (1 - h) in total. (a, q, K) are
  fitted by least squares on log(1 + D_m), where D_m is the number of distinct values seen at least m times
  in the sample, m in `FIT_THRESHOLDS`, against E[D_m] = sum_r P(Poisson(n p_r) >= m) (n = 9,999). Then
  the table is what Criteo's preprocessing would keep on its 36.67M training rows (80% of 45,840,617):
  E[# values seen >= 2 times] per categorical field (integer fields keep every value), plus one OOV id per
  field. From the sample alone that predicts 4,844,966 features (`CRITEO_FIELD_FIT`); to reach the published
  6,780,382, the K of every field the sample did not exhaust (its fitted K exceeds its distinct count) is
  multiplied by one common factor (`CRITEO_K_SCALE`, solved by bisection). The generator's field f then has
  C_f = kept_f + 1 features: local id 0 is the OOV bucket, carrying the mass of every rank not kept (the
  tail); local id j >= 1 is rank j. A per-field permutation (from the seed) maps local ids to stored ids, so
  frequency is not monotone in the id. `features=X` scales every C_f by X / 6,780,382 (at least 2 per
  field) for small variants; the shape of each field's law stays the fitted one.

Rows (counter-based: any row, any order, any shard gives the same values without replaying a stream)
  u(r, j) = splitmix64(key + (r (F + 1) + j + 1) golden) / 2^64 (`_uniforms`), key from the seed. Row r's field
  f is the inverse-CDF draw of u(r, f) from field f's law; its label is [u(r, F) < sigmoid(teacher(r))].
  Rows are i.i.d.; splits are consecutive blocks: train [0, 0.8n), valid, test.

Planted teacher (known, graded importance, varying within frequency)
  logit = b + sum_f w[x_f] + sum_{f<g} <v[x_f], v[x_g]>, v of `embed_dim` (4) dimensions. Each field has a
  grade s_f drawn from `FIELD_GRADES` (0: the field carries no signal) and each feature a level l_i drawn
  from `FEATURE_LEVELS` independently of its frequency (0: no signal); w_i = t s_f l_i z_i and
  v_i = s s_f l_i z'_i with z, z' standard normal, t and s set so that the first-order and pairwise logit
  terms have standard deviations `linear_std` and `interaction_std` on rows 0..65,535; b is fitted on rows
  0..131,071 so that the mean CTR is `target_ctr` (the sample's, 0.2562).

Planted importance (what MPE's widths are compared with; `feature_importance`)
  I_i = p_i E[(w_i + <v_i, u>)^2],  u = sum_{g != f(i)} v[x_g]  (fields independent),
  the expected squared logit contribution of feature i times its probability: its share of the teacher's
  logit second moment (frequency times weight). E[u u^T] and E[u] are exact sums over the other fields.
  A frequency group's importance is the sum of its features' I_i over the total (`group_importance`).

Memory: the laws (one float64 CDF per field, 54 MB at 6.8M features), the permutation (27 MB), the
probabilities (54 MB) and the teacher (20 B per feature: 136 MB) are held; rows never are. `materialise` streams them in chunks into the
memory-mapped files of a `CTRDataset` (the CTR trainer reads arrays); `PlantedRows` is a lazy array view.

Importing this module registers the dataset spec 'planted:KEY=VAL,...' (`planted_from_spec`).
"""

import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import numpy as np
import scipy.special

from hq_jax.ctr import data as ctr_data
from hq_jax.errors import UserError

# ---------------------------------------------------------------------------------------------------------
# The fit to the Criteo sample.

CRITEO_ROWS = 45_840_617  # Kaggle Criteo train.txt (the spec's published size).
CRITEO_FEATURES = 6_780_382  # after min-count 2 on the training split (the MPE authors' count).
CRITEO_TRAIN_ROWS = int(0.8 * CRITEO_ROWS)
FIT_THRESHOLDS = (1, 2, 3, 5, 10, 20, 50, 100, 300, 1000)
MAX_K = 10 ** 8  # the largest raw cardinality the fit may choose

# (field, distinct values in the 9,999-row sample, head share h, a, q, K) from `fit_criteo_fields()`
# (2026-12-07; the fit's loss per field is in results/mpe_scale.md).
CRITEO_FIELD_FIT = (
    ("I1", 27, 0.4480, 2.764, 0.00108, 27), ("I2", 77, 0.2067, 1.278, 0.001, 77),
    ("I3", 59, 0.2316, 5.000, 16.3, 61), ("I4", 25, 0.2560, 5.000, 8.36, 25),
    ("I5", 190, 0.0494, 5.000, 198.0, 190), ("I6", 76, 0.2511, 5.000, 90.0, 76),
    ("I7", 52, 0.2404, 5.000, 14.3, 52), ("I8", 26, 0.1891, 5.000, 15.7, 26),
    ("I9", 73, 0.0881, 5.000, 49.4, 73), ("I10", 5, 0.4480, 2.962, 0.00111, 5),
    ("I11", 21, 0.4530, 2.873, 0.00101, 21), ("I12", 17, 0.7735, 3.831, 0.001, 62),
    ("I13", 36, 0.2360, 5.000, 10.4, 36), ("C1", 175, 0.5005, 1.907, 0.00109, 967),
    ("C2", 386, 0.1235, 1.746, 11.7, 389), ("C3", 5520, 0.0470, 1.009, 0.001, 4453143),
    ("C4", 4033, 0.0730, 1.024, 0.001, 93374), ("C5", 56, 0.6656, 2.810, 0.99, 99979654),
    ("C6", 8, 0.4593, 2.193, 1.0, 8), ("C7", 3184, 0.0105, 0.918, 18.2, 5099),
    ("C8", 93, 0.5888, 2.268, 0.232, 745), ("C9", 3, 0.8871, 5.000, 0.00403, 3),
    ("C10", 2986, 0.2757, 0.795, 1.0, 5231), ("C11", 2084, 0.0203, 0.975, 13.9, 2467),
    ("C12", 5283, 0.0470, 1.004, 0.00104, 1645624), ("C13", 1725, 0.0221, 1.008, 11.9, 1894),
    ("C14", 24, 0.3629, 2.899, 0.001, 24), ("C15", 2035, 0.0195, 1.196, 27.5, 3063),
    ("C16", 4723, 0.0470, 1.033, 0.001, 376726), ("C17", 9, 0.4303, 1.279, 1.0, 9),
    ("C18", 1149, 0.0510, 1.408, 18.5, 1577), ("C19", 547, 0.4496, 1.500, 0.001, 100000000),
    ("C20", 4, 0.4496, 0.200, 0.001, 4), ("C21", 5036, 0.0470, 1.051, 0.001, 2436170),
    ("C22", 8, 0.8182, 3.691, 0.0279, 8), ("C23", 12, 0.4514, 5.000, 6.71, 12),
    ("C24", 2525, 0.0755, 1.099, 0.00106, 37646), ("C25", 40, 0.4496, 2.449, 1.0, 40),
    ("C26", 1939, 0.4496, 1.044, 0.001, 11145),
)
CRITEO_SAMPLE_CTR = 0.25622562  # mean label of the 9,999-row sample (2,562 positives)


def _rank_bins(k: int, exact: int = 200, bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """(representative rank, multiplicity) covering ranks 1..k: each rank up to `exact`, then `bins`
  geometric bins (geometric mid-point), for sums over up to 10^8 ranks in O(exact + bins)."""
  k = int(k)
  e = min(k, exact)
  r, m = np.arange(1, e + 1, dtype=np.float64), np.ones(e)
  if k > e:
    edges = np.unique(np.round(np.geomspace(e + 1.0, k + 1.0, bins + 1)).astype(np.int64)).astype(np.float64)
    lo, hi = edges[:-1], edges[1:]
    r = np.concatenate([r, np.sqrt(lo * np.maximum(hi - 1.0, lo))])
    m = np.concatenate([m, hi - lo])
  return r, m


def _tail_norm(a: float, q: float, k: int) -> float:
  """sum_{r=2..k} (r + q)^-a: exact up to 10^6 ranks, binned beyond (relative error ~1e-6)."""
  exact = min(int(k), 10 ** 6)
  s = float(np.sum((np.arange(2, exact + 1, dtype=np.float64) + q) ** -a))
  if k > exact:
    r, m = _rank_bins(k - exact, exact=0, bins=2000)
    s += float(m @ ((r + exact + q) ** -a))
  return s


def field_law(h: float, a: float, q: float, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(binned rank probabilities, multiplicities) of the head + Zipf-Mandelbrot law over ranks 1..k."""
  r, m = _rank_bins(k)
  w = (r + q) ** -a
  w[0] = 0.0
  tail = w @ m
  p = w * ((1.0 - h) / tail) if tail > 0 else w
  p[0] = h if k > 1 else 1.0
  return p, m


def expected_distinct(h: float, a: float, q: float, k: int, n: float,
                      thresholds: Sequence[int] = FIT_THRESHOLDS) -> np.ndarray:
  """E[# values seen >= m times in n draws] for each m, ranks counted as Poisson(n p_r)."""
  p, m = field_law(h, a, q, k)
  return np.array([m @ scipy.special.gammainc(t, n * p) for t in thresholds])


def _fit_loss(x, observed, h, n):
  a, log_k, log_q = x
  if not (0.05 <= a <= 5 and np.log10(observed[0]) - 1e-9 <= log_k <= np.log10(MAX_K) and -3 <= log_q <= 4):
    return 1e9
  e = expected_distinct(h, a, 10 ** log_q, int(round(10 ** log_k)), n)
  return float(np.sum((np.log1p(e) - np.log1p(observed)) ** 2))


def fit_field_law(value_counts: np.ndarray) -> tuple[float, float, float, int, float]:
  """(h, a, q, K, loss) of one field from its sample value counts (grid, then Nelder-Mead)."""
  import scipy.optimize  # pylint: disable=g-import-not-at-top
  c = np.asarray(value_counts, np.int64)
  n = int(c.sum())
  observed = np.array([(c >= t).sum() for t in FIT_THRESHOLDS], np.float64)
  h = float(c.max() / n)
  best = None
  for a in np.arange(0.2, 3.01, 0.1):
    for log_k in np.linspace(np.log10(observed[0]), np.log10(MAX_K), 15):
      for log_q in (-3, 0, 1, 2, 3):
        loss = _fit_loss((a, log_k, log_q), observed, h, n)
        if best is None or loss < best[0]:
          best = (loss, (a, log_k, log_q))
  res = scipy.optimize.minimize(lambda x: _fit_loss(x, observed, h, n), best[1], method="Nelder-Mead",
                                options=dict(xatol=1e-3, fatol=1e-7, maxiter=600))
  a, log_k, log_q = res.x
  return h, float(a), float(10 ** log_q), int(round(10 ** log_k)), float(res.fun)


def criteo_sample_value_counts(path: str | None = None) -> dict:
  """{field: value counts} of the Criteo sample (integer fields discretised, missing = a value)."""
  import csv  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  from hq_jax.ctr.data import criteo  # pylint: disable=g-import-not-at-top
  path = path or ctr_data.embedded_criteo_sample_path()
  with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
    rows = list(csv.reader(f))
  header, rows = rows[0], rows[1:]
  out = {}
  for j, name in enumerate(header[1:], start=1):
    col = [r[j] for r in rows]
    if name.startswith("I"):
      vals = np.array([float(v) if v else np.nan for v in col])
      col = np.where(np.isnan(vals), np.iinfo(np.int64).min,
                     criteo.criteo_discretise(np.nan_to_num(vals))).tolist()
    _, counts = np.unique(np.asarray(col), return_counts=True)
    out[name] = counts
  return out


def fit_criteo_fields(path: str | None = None) -> tuple:
  """Refits `CRITEO_FIELD_FIT` (~3 min on 2 busy cores): (field, distinct, h, a, q, K) per field."""
  return tuple((name, int(c.size), *fit_field_law(c)[:4]) for name, c in criteo_sample_value_counts(path).items())


@functools.cache
def criteo_kept_features(k_scale: float = 1.0) -> tuple:
  """Features per field that min-count 2 keeps on Criteo's training rows (integer fields keep all), with the
  K of every field the sample did not exhaust (fitted K > distinct values seen) multiplied by `k_scale`."""
  out = []
  for name, distinct, h, a, q, k in CRITEO_FIELD_FIT:
    if k > distinct:
      k = min(int(round(k * k_scale)), 10 * MAX_K)
    seen = expected_distinct(h, a, q, k, CRITEO_TRAIN_ROWS, (1, 2))
    out.append(int(round(seen[0] if name.startswith("I") else seen[1])))
  return tuple(out)


def _solve_k_scale() -> float:
  """The common K factor with sum(kept) + 39 OOV ids = 6,780,382 (bisection on log scale)."""
  lo, hi = 0.0, math.log(1000.0)
  for _ in range(40):
    mid = (lo + hi) / 2
    total = sum(criteo_kept_features(round(math.exp(mid), 6))) + len(CRITEO_FIELD_FIT)
    lo, hi = (mid, hi) if total < CRITEO_FEATURES else (lo, mid)
  return round(math.exp((lo + hi) / 2), 6)


# `_solve_k_scale()` (2026-12-07): the sample-only fit predicts 4,844,966 features (39 OOV ids included); the
# K of the 20 fields the sample did not exhaust, times 3.234654, gives 6,780,383.
CRITEO_K_SCALE = 3.234654
# `criteo_kept_features(CRITEO_K_SCALE)`, C3 less one so that with the 39 OOV ids the total is 6,780,382.
CRITEO_KEPT = (27, 77, 197, 25, 190, 76, 52, 26, 73, 5, 21, 137, 36, 3120, 1258, 1914966, 301929, 672, 8, 16494,
               1817, 3, 16920, 7980, 1841603, 6126, 24, 9908, 994941, 9, 5101, 48166, 4, 1450470, 8, 12, 121772,
               40, 36050)


# ---------------------------------------------------------------------------------------------------------
# The source.

FIELD_GRADES = (0.0, 0.25, 0.5, 1.0)  # s_f, drawn uniformly per field (0: the field carries no signal)
FEATURE_LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)  # l_i, drawn uniformly per feature, independent of frequency
SPLIT = (0.8, 0.1, 0.1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHUNK_ROWS = 1 << 16  # rows per generated block (a (65536, 39) int32 block is 10 MB)
_SCALE_FIT_ROWS = 1 << 16  # rows that fix t and s (the teacher's term scales)
_BIAS_FIT_ROWS = 1 << 17  # rows that fix the bias


def _splitmix64(z: np.ndarray) -> np.ndarray:
  """The splitmix64 output function on uint64, in place (wraps mod 2^64)."""
  with np.errstate(over="ignore"):
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
  return z


def _uniforms(key: np.uint64, rows: np.ndarray, num: int) -> np.ndarray:
  """(len(rows), num) float64 in [0, 1): u(r, j) = splitmix64(key + (r num + j + 1) golden) / 2^64."""
  with np.errstate(over="ignore"):
    z = np.asarray(rows, np.uint64)[:, None] * np.uint64(num) + np.arange(1, num + 1, dtype=np.uint64)
    z *= _GOLDEN
    z += key
    _splitmix64(z)
    z >>= np.uint64(11)
  u = z.astype(np.float64)
  u *= 1.0 / (1 << 53)
  return u


def field_cardinalities(features: int = CRITEO_FEATURES) -> tuple:
  """C_f (kept + OOV) per field, scaled to `features` in total (at least 2 each; the largest absorbs the
  rounding)."""
  full = np.asarray(CRITEO_KEPT, np.int64) + 1
  if features == CRITEO_FEATURES:
    return tuple(int(c) for c in full)
  if features < 2 * full.size:
    raise UserError(f"planted data: features must be >= {2 * full.size}, got {features}")
  c = np.maximum(2, np.round(full * (features / CRITEO_FEATURES))).astype(np.int64)
  c[np.argmax(c)] += features - c.sum()
  if c.min() < 2:
    raise UserError(f"planted data: cannot spread {features} features over {full.size} fields")
  return tuple(int(x) for x in c)


def field_probabilities(field: int, cardinality: int) -> np.ndarray:
  """(C,) float64 probabilities of field `field`'s local ids: [OOV mass, rank 1, ..., rank C - 1]."""
  _, distinct, h, a, q, k = CRITEO_FIELD_FIT[field]
  if k > distinct:
    k = min(int(round(k * CRITEO_K_SCALE)), 10 * MAX_K)
  kept = min(cardinality - 1, k)
  p = np.zeros(cardinality, np.float64)
  if k <= 1:
    p[1] = 1.0
    return p
  p[1] = h
  p[2:kept + 1] = (np.arange(2, kept + 1, dtype=np.float64) + q) ** -a * ((1.0 - h) / _tail_norm(a, q, k))
  p[0] = max(0.0, 1.0 - p[1:].sum())
  return p / p.sum()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlantedConfig:
  """What defines a planted source; every row and the teacher follow from it."""

  rows: int = 1_000_000  # rows in total (train | valid | test = 80 | 10 | 10 %, consecutive blocks)
  features: int = CRITEO_FEATURES  # table size; field sizes scale from Criteo's fitted ones
  seed: int = 0  # the only source of randomness
  embed_dim: int = 4  # teacher factor dimension k
  linear_std: float = 1.0  # std of the teacher's first-order logit term
  interaction_std: float = 1.0  # std of the teacher's pairwise logit term
  target_ctr: float = CRITEO_SAMPLE_CTR  # mean label probability the bias is fitted to

  def validate(self) -> None:
    if self.rows < 10 or self.embed_dim < 1 or self.linear_std < 0 or self.interaction_std < 0:
      raise UserError(f"planted data: need rows >= 10, embed_dim >= 1 and non-negative stds, got {self}")
    if not 0 < self.target_ctr < 1:
      raise UserError(f"planted data: target_ctr must lie in (0, 1), got {self.target_ctr}")
    if not 2 * len(CRITEO_FIELD_FIT) <= self.features < 2 ** 31:
      raise UserError(f"planted data: features must be >= {2 * len(CRITEO_FIELD_FIT)} (two ids per field) and "
                      f"fit int32 ids, got {self.features}")

  def split_sizes(self) -> tuple[int, int, int]:
    valid, test = (int(round(f * self.rows)) for f in SPLIT[1:])
    return self.rows - valid - test, valid, test


class PlantedSource:
  """Rows of a planted-truth CTR set by index (`rows`), its teacher and its planted importance.

  Holds the per-field CDFs, the local-to-stored id permutation and the teacher; never the rows.
  """

  def __init__(self, config: PlantedConfig):
    config.validate()
    self.config = config
    cards = np.asarray(field_cardinalities(config.features), np.int64)
    self.num_fields = cards.size
    self.field_offsets = np.concatenate([[0], np.cumsum(cards)]).astype(np.int64)
    self.num_features = int(self.field_offsets[-1])
    seq = np.random.SeedSequence(config.seed)
    key_seq, perm_seq, teacher_seq = seq.spawn(3)
    self._key = np.uint64(key_seq.generate_state(1, np.uint64)[0])
    perm_rng = np.random.default_rng(perm_seq)
    self.probabilities = np.empty(self.num_features, np.float64)  # by stored id
    self._cdfs, self._stored = [], []
    for f, c in enumerate(cards):
      p = field_probabilities(f, int(c))
      local_to_stored = perm_rng.permutation(int(c)).astype(np.int32) + np.int32(self.field_offsets[f])
      self.probabilities[local_to_stored] = p
      cdf = np.cumsum(p)
      cdf[-1] = 1.0
      self._cdfs.append(cdf)
      self._stored.append(local_to_stored)
    self.field_of = np.repeat(np.arange(self.num_fields, dtype=np.int32), cards)

    # Teacher: grades, levels, unit-scale factors; then t, s and the bias from fixed rows.
    rng = np.random.default_rng(teacher_seq)
    self.field_grade = np.asarray(FIELD_GRADES)[rng.integers(0, len(FIELD_GRADES), self.num_fields)]
    self.level = np.asarray(FEATURE_LEVELS, np.float32)[rng.integers(0, len(FEATURE_LEVELS), self.num_features)]
    magnitude = (self.field_grade[self.field_of] * self.level).astype(np.float32)
    # One (N, 1 + k) array [w | v], so a batch needs one gather.
    self.teacher = rng.standard_normal((self.num_features, 1 + config.embed_dim), dtype=np.float32)
    self.teacher *= magnitude[:, None]
    self.bias = 0.0
    lin, pair = self._terms(self._ids(np.arange(_SCALE_FIT_ROWS)))
    self.teacher[:, 0] *= np.float32(config.linear_std / max(float(np.std(lin)), 1e-12))
    self.teacher[:, 1:] *= np.float32(math.sqrt(config.interaction_std / max(float(np.std(pair)), 1e-12)))
    self.bias = _fit_bias(self.logits(self._ids(np.arange(_BIAS_FIT_ROWS))), config.target_ctr)
    self._memo = None

  # ---- rows
  def _ids(self, rows: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """(n, F) int32 stored ids of `rows` (u: their `_uniforms`, if already drawn)."""
    u = _uniforms(self._key, rows, self.num_fields + 1) if u is None else u
    ids = np.empty((u.shape[0], self.num_fields), np.int32)
    for f in range(self.num_fields):
      local = np.minimum(np.searchsorted(self._cdfs[f], u[:, f], side="right"), self._cdfs[f].size - 1)
      ids[:, f] = self._stored[f][local]
    return ids

  def _terms(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first-order, pairwise) teacher terms of (n, F) ids, float64; pairwise by the FM identity."""
    sums = np.zeros((ids.shape[0], self.teacher.shape[1]))  # sum_f [w | v][x_f], float64
    squares = np.zeros(ids.shape[0])  # sum_f ||v[x_f]||^2
    for f in range(ids.shape[1]):  # field by field: no (n, F, 1 + k) temporary
      x = self.teacher[ids[:, f]]
      sums += x
      squares += np.square(x[:, 1:]).sum(axis=1)
    return sums[:, 0], 0.5 * (np.square(sums[:, 1:]).sum(axis=1) - squares)

  @property
  def linear(self) -> np.ndarray:
    """(N,) the teacher's first-order weights w."""
    return self.teacher[:, 0]

  @property
  def factors(self) -> np.ndarray:
    """(N, k) the teacher's factors v."""
    return self.teacher[:, 1:]

  def logits(self, ids: np.ndarray) -> np.ndarray:
    """The teacher's logits of (n, F) stored ids, float64."""
    lin, pair = self._terms(ids)
    return self.bias + lin + pair

  def rows(self, rows) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, F) int32, labels (n,) float32) of the given row indices (any order, repeats allowed).

    Row r depends on (config, r) only. The last call is memoised (a lazy view asks for ids, then labels).
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= self.config.rows):
      raise IndexError(f"planted rows: index out of range [0, {self.config.rows})")
    memo = self._memo
    if memo is not None and memo[0].shape == rows.shape and np.array_equal(memo[0], rows):
      return memo[1], memo[2]
    out_ids = np.empty((rows.size, self.num_fields), np.int32)
    labels = np.empty(rows.size, np.float32)
    for lo in range(0, rows.size, _CHUNK_ROWS):
      r = rows[lo:lo + _CHUNK_ROWS]
      u = _uniforms(self._key, r, self.num_fields + 1)
      ids, noise = self._ids(r, u), u[:, -1]
      out_ids[lo:lo + r.size] = ids
      labels[lo:lo + r.size] = noise < 1.0 / (1.0 + np.exp(-self.logits(ids)))
    self._memo = (rows.copy(), out_ids, labels)
    return out_ids, labels

  def blocks(self, lo: int, hi: int, chunk: int = _CHUNK_ROWS):
    """Yields (first row, ids, labels) of rows [lo, hi) in consecutive chunks (a stream)."""
    for a in range(lo, hi, chunk):
      ids, labels = self.rows(np.arange(a, min(hi, a + chunk)))
      yield a, ids, labels

  def train_counts(self) -> np.ndarray:
    """(N,) int64 occurrences of every feature in the training rows (one streamed pass)."""
    counts = np.zeros(self.num_features, np.int64)
    n_train = self.config.split_sizes()[0]
    for a in range(0, n_train, _CHUNK_ROWS):
      counts += np.bincount(self._ids(np.arange(a, min(n_train, a + _CHUNK_ROWS))).ravel(),
                            minlength=self.num_features)
    return counts

  # ---- planted importance
  def feature_importance(self) -> np.ndarray:
    """(N,) float64 I_i = p_i E[(w_i + <v_i, u>)^2], u = sum of the other fields' v (module docstring)."""
    p, v, w = self.probabilities, self.factors.astype(np.float64), self.linear.astype(np.float64)
    k = v.shape[1]
    mu = np.zeros((self.num_fields, k))
    second = np.zeros((self.num_fields, k, k))
    for f in range(self.num_fields):
      sl = slice(self.field_offsets[f], self.field_offsets[f + 1])
      pv = p[sl, None] * v[sl]
      mu[f], second[f] = pv.sum(axis=0), v[sl].T @ pv
    importance = np.empty(self.num_features)
    for f in range(self.num_fields):
      others = np.arange(self.num_fields) != f
      mean_u = mu[others].sum(axis=0)
      outer_u = second[others].sum(axis=0) + np.outer(mean_u, mean_u) - np.einsum("gi,gj->ij", mu[others], mu[others])
      sl = slice(self.field_offsets[f], self.field_offsets[f + 1])
      vf, wf = v[sl], w[sl]
      importance[sl] = p[sl] * (wf ** 2 + 2 * wf * (vf @ mean_u) + np.einsum("ni,ij,nj->n", vf, outer_u, vf))
    return importance


def _fit_bias(logits: np.ndarray, target_ctr: float) -> float:
  """The b with mean(sigmoid(logits + b)) = target_ctr (bisection)."""
  lo, hi = -30.0, 30.0
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < target_ctr else (lo, mid)
  return (lo + hi) / 2


# ---------------------------------------------------------------------------------------------------------
# Datasets: memory-mapped (what the CTR trainer reads) or lazy.


class PlantedRows:
  """A lazy (n, F) int32 ids or (n,) float32 labels view of rows [lo, hi) of a `PlantedSource`.

  Indexing with a unit-step slice gives another view (nothing generated); with an int array (or any other
  key) it generates those rows; `np.asarray(view)` generates them all, in chunks.
  """

  def __init__(self, source: PlantedSource, what: str, lo: int = 0, hi: int | None = None):
    self.source, self.what, self.lo = source, what, int(lo)
    self.hi = source.config.rows if hi is None else int(hi)

  @property
  def shape(self) -> tuple:
    n = self.hi - self.lo
    return (n, self.source.num_fields) if self.what == "ids" else (n,)

  @property
  def dtype(self):
    return np.dtype(np.int32 if self.what == "ids" else np.float32)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __len__(self) -> int:
    return self.hi - self.lo

  def _get(self, rows: np.ndarray) -> np.ndarray:
    ids, labels = self.source.rows(rows + self.lo)
    return ids if self.what == "ids" else labels

  def __getitem__(self, key):
    n = self.hi - self.lo
    if isinstance(key, slice):
      start, stop, step = key.indices(n)
      if step == 1:
        return PlantedRows(self.source, self.what, self.lo + start, self.lo + max(start, stop))
      return self._get(np.arange(start, stop, step))
    if isinstance(key, (int, np.integer)):
      return self._get(np.array([int(key) % n]))[0]
    rows = np.asarray(key)
    if rows.dtype == bool:
      rows = np.flatnonzero(rows)
    return self._get(np.where(rows < 0, rows + n, rows).astype(np.int64))

  def __array__(self, dtype=None, copy=None):
    del copy
    out = np.empty(self.shape, self.dtype)
    for a in range(0, len(self), _CHUNK_ROWS):
      b = min(len(self), a + _CHUNK_ROWS)
      out[a:b] = self._get(np.arange(a, b))
    return out if dtype is None else out.astype(dtype)


def _summary(source: PlantedSource, counts: np.ndarray, ctr: dict) -> dict:
  c = source.config
  return {"rows": dict(zip(ctr_data.SPLIT_NAMES, c.split_sizes())), "num_fields": source.num_fields,
          "num_features": source.num_features, "ctr": ctr, "teacher_bias": source.bias,
          "features_unseen_in_train": int((counts == 0).sum()),
          "features_seen_once_in_train": int((counts == 1).sum()), "format": "planted",
          "params": dataclasses.asdict(c)}


def _split_ranges(config: PlantedConfig) -> dict:
  bounds = np.cumsum([0, *config.split_sizes()])
  return {k: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, k in enumerate(ctr_data.SPLIT_NAMES)}


def lazy_dataset(source: PlantedSource, counts: np.ndarray | None = None) -> ctr_data.CTRDataset:
  """A `CTRDataset` whose ids and labels are `PlantedRows` views (no rows held; counts: one streamed pass)."""
  counts = source.train_counts() if counts is None else counts
  return ctr_data.CTRDataset(
      name="planted", ids=PlantedRows(source, "ids"), labels=PlantedRows(source, "labels"),
      field_offsets=source.field_offsets, counts=counts, splits=_split_ranges(source.config),
      summary=dict(_summary(source, counts, {}), storage="lazy", from_cache=False, cache_path=None))


def materialise(source: PlantedSource, cache_dir: str | None = None) -> ctr_data.CTRDataset:
  """The source as a memory-mapped `CTRDataset` in the CTR cache (`ctr_data.cached_build`, keyed by the
  config): rows are streamed in chunks into `ids.npy` / `labels.npy`, the train counts taken on the way."""
  c = source.config

  def build(tmp):
    ids = np.lib.format.open_memmap(os.path.join(tmp, "ids.npy"), mode="w+", dtype=np.int32,
                                    shape=(c.rows, source.num_fields))
    labels = np.lib.format.open_memmap(os.path.join(tmp, "labels.npy"), mode="w+", dtype=np.float32,
                                       shape=(c.rows,))
    counts = np.zeros(source.num_features, np.int64)
    n_train = c.split_sizes()[0]
    for a, block_ids, block_labels in source.blocks(0, c.rows):
      ids[a:a + block_ids.shape[0]] = block_ids
      labels[a:a + block_ids.shape[0]] = block_labels
      if a < n_train:
        counts += np.bincount(block_ids[:n_train - a].ravel(), minlength=source.num_features)
    ids.flush()
    labels.flush()
    np.save(os.path.join(tmp, "counts.npy"), counts)
    np.save(os.path.join(tmp, "field_offsets.npy"), source.field_offsets)
    bounds = np.cumsum([0, *c.split_sizes()])
    ctr = {k: float(np.mean(labels[bounds[i]:bounds[i + 1]])) for i, k in enumerate(ctr_data.SPLIT_NAMES)}
    return {"splits": dict(zip(ctr_data.SPLIT_NAMES, c.split_sizes())),
            "summary": dict(_summary(source, counts, ctr), storage="memmap")}

  ds, _ = ctr_data.cached_build("planted", [], dataclasses.asdict(c), cache_dir, build)
  return ds


# Keys of a 'planted:KEY=VAL,...' spec.
_SPEC_KEYS = {"rows": int, "features": int, "seed": int, "embed_dim": int, "linear_std": float,
              "interaction_std": float, "target_ctr": float, "storage": str}


def parse_spec(spec: str, seed: int = 0) -> tuple[PlantedConfig, str]:
  """'KEY=VAL,...' (after 'planted:') -> (config, storage 'memmap' | 'lazy'); seed defaults to `seed`."""
  opts = {}
  for item in filter(None, spec.split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in _SPEC_KEYS:
      raise UserError(f"planted spec item {item!r}: expected KEY=VALUE with KEY one of {', '.join(_SPEC_KEYS)}")
    try:
      opts[key] = _SPEC_KEYS[key](value)
    except ValueError:
      raise UserError(f"planted spec item {item!r}: {value!r} is not a valid {_SPEC_KEYS[key].__name__}") from None
  storage = opts.pop("storage", "memmap")
  if storage not in ("memmap", "lazy"):
    raise UserError(f"planted spec: storage must be 'memmap' or 'lazy', got {storage!r}")
  opts.setdefault("seed", seed)
  config = PlantedConfig(**opts)
  config.validate()
  return config, storage


@functools.lru_cache(maxsize=2)
def planted_source(config: PlantedConfig) -> PlantedSource:
  """The (cached) source of a config: building one at 6.8M features takes seconds and ~250 MB."""
  return PlantedSource(config)


def planted_from_spec(spec: str, *, cache_dir: str | None = None, seed: int = 0
                      ) -> tuple[ctr_data.CTRDataset, PlantedSource]:
  """The dataset and source of 'KEY=VAL,...': keys rows (1000000), features (6780382), seed (the `seed`
  argument), embed_dim (4), linear_std (1), interaction_std (1), target_ctr (the sample's), storage
  ('memmap': streamed once into the CTR cache, what the trainer reads; 'lazy': `PlantedRows` views)."""
  config, storage = parse_spec(spec, seed)
  source = planted_source(config)
  return (lazy_dataset(source) if storage == "lazy" else materialise(source, cache_dir)), source


# ---------------------------------------------------------------------------------------------------------
# Widths against planted importance.


def group_importance(importance: np.ndarray, counts: np.ndarray, num_groups: int) -> np.ndarray:
  """(G,) each MPE frequency group's share of the planted importance: sum of I_i over its features / total.
  Groups are `mpe.frequency_groups(counts, G)` (train counts), as MPE builds them."""
  from hq_jax.ctr import mpe  # pylint: disable=g-import-not-at-top
  group_of, _ = mpe.frequency_groups(counts, num_groups)
  total = np.bincount(group_of, weights=importance, minlength=num_groups)
  return total / max(float(total.sum()), 1e-300)


def within_group_share(importance: np.ndarray, counts: np.ndarray, num_groups: int) -> float:
  """Share of the variance of log(1e-12 + I_i / mean I) that lies within frequency groups (0: the groups
  separate importance completely; 1: grouping by frequency says nothing about it)."""
  from hq_jax.ctr import mpe  # pylint: disable=g-import-not-at-top
  group_of, _ = mpe.frequency_groups(counts, num_groups)
  x = np.log(1e-12 + importance / max(float(importance.mean()), 1e-300))
  sizes = np.bincount(group_of, minlength=num_groups)
  means = np.bincount(group_of, weights=x, minlength=num_groups) / np.maximum(sizes, 1)
  within = float(np.sum((x - means[group_of]) ** 2))
  total = float(np.sum((x - x.mean()) ** 2))
  return within / total if total > 0 else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n of x, ties given the mean of their ranks (scipy.stats.rankdata 'average')."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], x.size]
  ranks = np.empty(x.size)
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return ranks


def spearman_width_importance(widths: np.ndarray, importance: np.ndarray) -> float:
  """Spearman's rank correlation of per-group widths and per-group planted importance.

  The Pearson correlation of their average ranks (ties share the mean rank, as scipy.stats.spearmanr);
  NaN when either side is constant (no order to agree with).
  """
  a, b = _average_ranks(np.ravel(widths)), _average_ranks(np.ravel(importance))
  if a.size != b.size:
    raise ValueError(f"widths and importance differ in length: {a.size} vs {b.size}")
  a, b = a - a.mean(), b - b.mean()
  den = math.sqrt(float(a @ a) * float(b @ b))
  return float(a @ b) / den if den > 0 else float("nan")


# The 'planted:KEY=VAL,...' dataset spec of `hq_jax.ctr.data.load_ctr` (registered on import: the data
# registry cannot import this module, which imports the data package).
ctr_data.register_ctr_spec(
    "planted", lambda arg, cache_dir, seed: planted_from_spec(arg, cache_dir=cache_dir, seed=seed)[0],
    argument="optional")


def width_report(group_bits: np.ndarray, counts: np.ndarray, importance: np.ndarray) -> dict:
  """How MPE's per-group widths relate to the planted truth (G groups from the train `counts`).

  spearman_width_importance: rho(width_g, importance share_g) (the issue's measure);
  spearman_width_frequency: rho(width_g, mean train count of the group) (what grouping is built on);
  spearman_width_weight: rho(width_g, importance share_g / probability mass_g), the importance per
    occurrence, with frequency divided out;
  within_group_share: how much of log I_i varies inside the groups (`within_group_share`).
  """
  from hq_jax.ctr import mpe  # pylint: disable=g-import-not-at-top
  bits = np.asarray(group_bits)
  g = bits.size
  group_of, totals = mpe.frequency_groups(counts, g)
  sizes = np.bincount(group_of, minlength=g)
  share = group_importance(importance, counts, g)
  mass = np.bincount(group_of, weights=np.asarray(counts, np.float64) + 0.5, minlength=g)  # +0.5: unseen
  return {"spearman_width_importance": spearman_width_importance(bits, share),
          "spearman_width_frequency": spearman_width_importance(bits, totals / np.maximum(sizes, 1)),
          "spearman_width_weight": spearman_width_importance(bits, share / mass),
          "within_group_share": within_group_share(importance, counts, g),
          "groups": {"bits": bits.tolist(), "importance_share": share.tolist(),
                     "mean_count": (totals / np.maximum(sizes, 1)).tolist(), "size": sizes.tolist()}}


def teacher_auc(source: PlantedSource, ids: np.ndarray, labels: np.ndarray) -> float:
  """AUC of the teacher's own logits on (ids, labels): the ceiling any model of the data can reach."""
  from hq_jax.ctr import metrics  # pylint: disable=g-import-not-at-top
  logits = np.concatenate([source.logits(np.asarray(ids[a:a + _CHUNK_ROWS]))
                           for a in range(0, len(ids), _CHUNK_ROWS)])
  return float(metrics.roc_auc(np.asarray(labels), logits))
