"""On-disk cache of preprocessed CTR datasets (ours).

Parsing a large file once is slow, so the result is written as `.npy` files plus `meta.json` into a folder
keyed by a hash of the source files (path, size, mtime) and the preprocessing parameters, under `cache_dir`
(default `$HQ_JAX_CACHE`, else `~/.cache/hq_jax/ctr`). The folder is built under a temporary name and
renamed into place, so an interrupted run never leaves a half-written cache; a second load maps the arrays
with `mmap_mode='r'` and reports `summary['from_cache'] = True`.

A cache folder holds everything the load-time checks need (`labels.npy`, the split bounds and the
`split_sources` of the summary), so `check_both_classes` runs on a cache hit exactly as after a build.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from hq_jax import strict_json
from hq_jax.ctr.data.dataset import SPLIT_NAMES, CTRDataset
from hq_jax.errors import UserError

# Bump when the cached layout or the preprocessing changes, so that old caches are not reused.
# 2: the summary carries `split_sources` (and `split_rule`) for the load-time label check.
# 3: RFC 4180 records at every chunk size, no quoting in the raw Criteo TSV, byte-order marks dropped (rows
#    of some files change), `blank_lines` counts blank lines only, `quoted_newlines`.
CACHE_VERSION = 3


def default_cache_dir() -> str:
  """`$HQ_JAX_CACHE` if set, else `~/.cache/hq_jax/ctr`."""
  return os.environ.get("HQ_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hq_jax", "ctr")


def _fingerprint(path: str) -> list:
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  st = os.stat(path)
  return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _cache_key(name: str, sources: Sequence[str], params: dict) -> str:
  material = strict_json.dumps({"version": CACHE_VERSION, "name": name,
                         "sources": [_fingerprint(p) for p in sources], "params": params},
                        sort_keys=True, default=str)
  return hashlib.sha256(material.encode()).hexdigest()[:16]


def _load_cache(folder: str, from_cache: bool) -> tuple[CTRDataset, dict]:
  """Maps a finished cache folder; returns the dataset and any extra arrays stored beside it."""
  with open(os.path.join(folder, "meta.json")) as f:
    meta = json.load(f)
  arrays = {name: np.load(os.path.join(folder, name + ".npy"), mmap_mode="r")
            for name in meta["arrays"]}
  splits = {k: np.arange(lo, hi, dtype=np.int64) for k, (lo, hi) in meta["splits"].items()}
  summary = dict(meta["summary"], cache_path=folder, from_cache=from_cache)
  ds = CTRDataset(name=meta["name"], ids=arrays.pop("ids"), labels=arrays.pop("labels"),
                  field_offsets=np.array(arrays.pop("field_offsets")), counts=np.array(arrays.pop("counts")),
                  splits=splits, summary=summary)
  return ds, arrays


def cached_build(name: str, sources: Sequence[str], params: dict, cache_dir: str | None,
                 build: Callable[[str], dict]) -> tuple[CTRDataset, dict]:
  """Returns the cached dataset for (sources, params), building it with `build(tmp_folder)` if absent.

  `build` writes `ids.npy` ((n, F) int32), `labels.npy` ((n,) float32), `field_offsets.npy` ((F + 1,)
  int64), `counts.npy` ((N,) int64) and any extra `.npy` arrays into the folder it is given, rows ordered
  train | valid | test, and returns
  `{'splits': {'train': n_train, 'valid': n_valid, 'test': n_test}, 'summary': {...}}`.
  The folder is renamed into place only when complete.

  Returns:
    (dataset with memory-mapped arrays, {name: extra array}).

  Raises:
    UserError: a source file is missing, or the cache folder cannot be created.
  """
  cache_dir = cache_dir or default_cache_dir()
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"{cache_dir}: cannot create the CTR cache folder ({e.strerror}); set HQ_JAX_CACHE "
                    "or pass cache_dir") from None
  folder = os.path.join(cache_dir, f"{name}-{_cache_key(name, sources, params)}")
  if os.path.isfile(os.path.join(folder, "meta.json")):
    return _load_cache(folder, from_cache=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir)
  try:
    t0, c0 = time.perf_counter(), time.process_time()
    out = build(tmp)
    sizes = [int(out["splits"][k]) for k in SPLIT_NAMES]
    bounds = np.cumsum([0] + sizes).tolist()
    arrays = sorted(f[:-4] for f in os.listdir(tmp) if f.endswith(".npy"))
    summary = dict(out["summary"], build_seconds=round(time.perf_counter() - t0, 3),
                   build_cpu_seconds=round(time.process_time() - c0, 3),
                   sources=[os.path.abspath(p) for p in sources], params=params)
    meta = {"version": CACHE_VERSION, "name": name, "arrays": arrays, "summary": summary,
            "splits": {k: [bounds[i], bounds[i + 1]] for i, k in enumerate(SPLIT_NAMES)}}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      strict_json.dump(meta, f, indent=1, default=_json_default)
    try:
      os.rename(tmp, folder)
    except OSError:  # another process finished the same cache first: use theirs
      if not os.path.isfile(os.path.join(folder, "meta.json")):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return _load_cache(folder, from_cache=False)


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)
