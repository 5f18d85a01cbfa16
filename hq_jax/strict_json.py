"""Strict JSON: the one writer of every JSON file and line the project produces.

JSON has no NaN or Infinity (RFC 8259); Python's `json` writes them anyway unless told `allow_nan=False`, and
other readers (jq, JavaScript, pandas with `orient`) then fail or read strings. The rule, everywhere:

* a number that is not finite (NaN, Infinity, -Infinity; Python, NumPy or JAX) is written as `null`;
* the nearest enclosing object gets a sibling key `<name>_reason` beside the key `<name>` that held it,
  saying what the value was (`"Infinity (not a finite number)"`), or for an array, list or nested object
  which positions were not finite (`"not finite, written as null: [2] NaN, [5] Infinity"`). A
  `<name>_reason` the object already has is kept. A non-finite value with no enclosing object (a bare
  number or a top-level list) is only written as null.

NumPy and JAX scalars and arrays become plain numbers and lists; `to_dict()` objects (ml_collections
configs) become objects. Everything then goes through `json.dumps(..., allow_nan=False)`, so a value that
slipped past the rule fails loudly instead of writing a file that is not JSON.
"""

import json
import math
from typing import Any

import numpy as np

__all__ = ["json_safe", "dumps", "dump"]

# At most this many positions are listed in one `_reason`.
_MAX_LISTED = 8


def _name(x: float) -> str:
  return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _safe(obj) -> tuple[Any, list[tuple[str, str]]]:
  """(JSON value, [(position below obj, 'NaN' / 'Infinity' / '-Infinity'), ...] not yet given a reason)."""
  if isinstance(obj, dict):
    out = {}
    for k, v in obj.items():
      k = str(k)
      value, bad = _safe(v)
      out[k] = value
      if bad:  # a `<k>_reason` of obj itself wins: kept here, or written over ours when it comes later
        out.setdefault(f"{k}_reason", _reason(bad))
    return out, []
  if hasattr(obj, "to_dict") and not isinstance(obj, type):  # ml_collections.ConfigDict
    return _safe(obj.to_dict())
  if isinstance(obj, (list, tuple)):
    out, bad = [], []
    for i, v in enumerate(obj):
      value, inner = _safe(v)
      out.append(value)
      bad.extend((f"[{i}]{where}", what) for where, what in inner)
    return out, bad
  if isinstance(obj, np.ndarray) or type(obj).__module__.startswith(("jax", "jaxlib")) and hasattr(obj, "shape"):
    return _safe(np.asarray(obj).tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj), []
  if isinstance(obj, np.integer):
    return int(obj), []
  if isinstance(obj, (float, np.floating)):
    x = float(obj)
    return (x, []) if math.isfinite(x) else (None, [("", _name(x))])
  return obj, []


def _reason(bad: list[tuple[str, str]]) -> str:
  if len(bad) == 1 and not bad[0][0]:
    return f"{bad[0][1]} (not a finite number)"
  listed = ", ".join(f"{where or '.'} {what}" for where, what in bad[:_MAX_LISTED])
  more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
  return f"not finite, written as null: {listed}{more}"


def json_safe(obj):
  """`obj` as plain JSON values under the module's rule (non-finite numbers -> null + `<name>_reason`)."""
  return _safe(obj)[0]


def dumps(obj, **kwargs) -> str:
  """`json.dumps` of `json_safe(obj)` with `allow_nan=False` (other keyword arguments passed on)."""
  return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def dump(obj, f, **kwargs) -> None:
  """`json.dump` of `json_safe(obj)` to the open text file `f` with `allow_nan=False`."""
  json.dump(json_safe(obj), f, allow_nan=False, **kwargs)
