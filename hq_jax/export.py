"""`export.npz`: the stored user and item representations, written, read and validated here only (ours).

The trainer writes it with `save_export`; evaluation, retrieval (`QuantizedIndex`) and the binaries read it
with `load_export`. Both go through one validator, so a file that loads is a file that could have been
written, and a bad file stops with one `UserError` line that names the file and the key, never with a
traceback deep inside a jitted search.

Format (NumPy .npz: a zip of .npy arrays, no pickled objects), version 2:

  format_version  int32 ()  2. Files without it are version 1 (written before it existed): the same keys
                  as the first two layouts below, read the same way.

  Full precision:
    user_embeddings (U, d), item_embeddings (I, d): float (stored float32), finite.

  Quantized, one matrix per side (`hq_jax.quant.QuantizedMatrix`; side = user, item):
    bits            int ()              1, 2, 3, 4 or 8 (`hq_jax.quant.SUPPORTED_BITS`)
    {side}_codes    (n, d)              bits 1: int8 in {-1, +1}; bits >= 2: uint8 in [0, 2^bits - 1]
    {side}_offset   float32 ()          bits 1: 0
    and the scale, either as float32:
    {side}_scale    float32 () or (n, 1), > 0 (the per-row form for bits 1 only)
    or, for a per-row 1-bit scale stored in 8 bits (`hq_jax.quant.ScaleCodes`):
    {side}_scale_codes  uint8 (n, 1)
    {side}_scale_min    float32 ()      an integer multiple of the step, in [0, 2^16 step]
    {side}_scale_step   float32 ()      a power of two
                    with scale_r = min + step * code_r > 0 for every row.
    The dequantized matrix is offset + scale * codes.

  Layer-wise codes (`hq_jax.quant.LayeredQuantized`):
    layers          int ()              L >= 1
    layer_weights   float64 (L,)        w_k > 0; score(u, i) = sum_k w_k <x^_uk, x^_ik>
    and for each layer k = 0..L-1 the keys of one quantized matrix with the suffix `_{k}`:
    bits_{k}, {side}_codes_{k}, {side}_offset_{k}, and {side}_scale_{k} or
    {side}_scale_codes_{k} / {side}_scale_min_{k} / {side}_scale_step_{k}.

  In every layout the user and item matrices (of each layer) have the same d. Other keys are ignored.

What is checked (each failure is `UserError("<path>: ...")` naming the key): the file exists, is not empty,
is a zip of arrays (no pickled object arrays); the keys of the layout are present; dtypes (integers for
codes and `bits`, floats for embeddings, scales, offsets and weights); shapes; finite values; codes in
range; scales > 0 (and the `ScaleCodes` step / minimum rules); 1-bit offsets 0; matching dimensions.
"""

import os
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import (SUPPORTED_BITS, SCALE_MAX_MULTIPLE, LayeredQuantized, QuantizedMatrix,
                                    ScaleCodes)

FORMAT_VERSION = 2
FLOAT_KEYS = ("user_embeddings", "item_embeddings")
SIDES = ("user", "item")

Representation = np.ndarray | QuantizedMatrix | LayeredQuantized


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _matrix_arrays(qm: QuantizedMatrix, side: str, suffix: str) -> dict[str, np.ndarray]:
  out = {f"{side}_codes{suffix}": np.asarray(qm.codes).astype(np.int8 if qm.bits == 1 else np.uint8),
         f"{side}_offset{suffix}": np.asarray(qm.offset, np.float32)}
  if isinstance(qm.scale, ScaleCodes):
    out[f"{side}_scale_codes{suffix}"] = np.asarray(qm.scale.codes).astype(np.uint8)
    out[f"{side}_scale_min{suffix}"] = np.asarray(qm.scale.minimum, np.float32)
    out[f"{side}_scale_step{suffix}"] = np.asarray(qm.scale.step, np.float32)
  else:
    out[f"{side}_scale{suffix}"] = np.asarray(qm.scale, np.float32)
  return out


def export_arrays(users: Representation, items: Representation) -> dict[str, np.ndarray]:
  """The arrays of an export of (users, items) in the current format (module docstring)."""
  out = {"format_version": np.asarray(FORMAT_VERSION, np.int32)}
  if isinstance(users, LayeredQuantized) and isinstance(items, LayeredQuantized):
    out["layers"] = np.asarray(len(users.layers), np.int32)
    out["layer_weights"] = np.asarray(users.weights, np.float64)
    for k, (qu, qi) in enumerate(zip(users.layers, items.layers)):
      out[f"bits_{k}"] = np.asarray(qu.bits, np.int32)
      out.update(_matrix_arrays(qu, "user", f"_{k}"))
      out.update(_matrix_arrays(qi, "item", f"_{k}"))
    if users.weights != items.weights or len(users.layers) != len(items.layers):
      raise ValueError("user and item layer-wise codes differ in their layers or weights")
    return out
  if isinstance(users, QuantizedMatrix) and isinstance(items, QuantizedMatrix):
    out["bits"] = np.asarray(users.bits, np.int32)
    out.update(_matrix_arrays(users, "user", ""))
    out.update(_matrix_arrays(items, "item", ""))
    return out
  if isinstance(users, (QuantizedMatrix, LayeredQuantized)) or isinstance(items, (QuantizedMatrix, LayeredQuantized)):
    raise ValueError(f"users and items must be of one kind, got {type(users).__name__} and {type(items).__name__}")
  out["user_embeddings"] = np.asarray(users, np.float32)
  out["item_embeddings"] = np.asarray(items, np.float32)
  return out


def save_export(path: str, users: Representation, items: Representation) -> None:
  """Writes `path` atomically (a temporary file in the same folder, then `os.replace`).

  The arrays are validated exactly as `load_export` would read them before anything is written.

  Raises:
    UserError: the representations would make an invalid export (the message names the key).
  """
  arrays = export_arrays(users, items)
  representations_from_arrays(arrays, path)
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def load_export(path: str) -> tuple[Representation, Representation]:
  """Reads and validates an export.

  Returns:
    (users, items): float32 (n, d) arrays, `QuantizedMatrix` pairs or `LayeredQuantized` pairs (numpy leaves).

  Raises:
    UserError: anything wrong with the file (module docstring), as one line naming the file and the key.
  """
  if not os.path.isfile(path):
    raise UserError(f"{path}: export file not found")
  if os.path.getsize(path) == 0:
    raise UserError(f"{path}: empty file, not an .npz export")
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path}: not a readable .npz file ({_short(e)})") from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise UserError(f"{path}: not a readable .npz file (a single .npy array, not a zip of named arrays)")
  with z:
    try:
      return representations_from_arrays(_LazyArrays(z, path), path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise UserError(f"{path}: not a readable .npz file (damaged: {_short(e)})") from None


class _LazyArrays(Mapping):
  """The arrays of an open .npz, read on access; object (pickled) arrays become a UserError."""

  def __init__(self, z, path: str):
    self._z, self._path, self._cache = z, path, {}

  def __getitem__(self, key):
    if key not in self._cache:
      if key not in self._z.files:
        raise KeyError(key)
      try:
        self._cache[key] = self._z[key]
      except ValueError as e:
        raise UserError(f"{self._path}: key {key!r} is not a plain numeric array ({_short(e)})") from None
    return self._cache[key]

  def __contains__(self, key):
    return key in self._z.files

  def __iter__(self):
    return iter(self._z.files)

  def __len__(self):
    return len(self._z.files)


def _short(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def representations_from_arrays(arrays: Mapping[str, np.ndarray], path: str):
  """(users, items) from export arrays (e.g. an open .npz), validated; `path` names them in errors."""
  keys = set(arrays)
  version = 1
  if "format_version" in keys:
    version = _int_scalar(arrays, path, "format_version")
    if version not in (1, FORMAT_VERSION):
      raise UserError(f"{path}: format_version {version} is not supported (this reader knows 1 and "
                      f"{FORMAT_VERSION})")
  if "layers" in keys:
    if version < 2:
      raise UserError(f"{path}: key 'layers' needs format_version 2")
    return _layered(arrays, path)
  if "bits" in keys:
    missing = [key for key in _matrix_keys(arrays, "") if key not in keys]
    if missing:
      raise UserError(f"{path}: quantized export is missing key(s) {', '.join(missing)}")
    bits = _bits(arrays, path, "bits")
    users, items = (_quantized(arrays, path, side, bits, "") for side in SIDES)
    _same_dim(path, users.codes.shape[1], items.codes.shape[1], "")
    return users, items
  if any(key in keys for key in FLOAT_KEYS):
    missing = [key for key in FLOAT_KEYS if key not in keys]
    if missing:
      raise UserError(f"{path}: float export is missing key(s) {', '.join(missing)}")
    users, items = (_float_matrix(arrays, path, key) for key in FLOAT_KEYS)
    _same_dim(path, users.shape[1], items.shape[1], "")
    return users, items
  raise UserError(f"{path}: neither a quantized export (key 'bits' or 'layers') nor a float one (keys "
                  f"{', '.join(FLOAT_KEYS)}); found: {', '.join(sorted(keys)) or 'nothing'}")


def _matrix_keys(arrays, suffix: str) -> list[str]:
  """Keys one quantized (layer's) pair needs, in the order missing keys are reported."""
  out = [f"bits{suffix}"]
  for side in SIDES:
    out.append(f"{side}_codes{suffix}")
  for side in SIDES:
    if f"{side}_scale_codes{suffix}" in arrays:
      out += [f"{side}_scale_codes{suffix}", f"{side}_scale_min{suffix}", f"{side}_scale_step{suffix}"]
    else:
      out.append(f"{side}_scale{suffix}")
    out.append(f"{side}_offset{suffix}")
  return out


def _layered(arrays, path: str):
  num_layers = _int_scalar(arrays, path, "layers")
  if num_layers < 1:
    raise UserError(f"{path}: layers must be >= 1, got {num_layers}")
  missing = ["layer_weights"] if "layer_weights" not in arrays else []
  for k in range(num_layers):
    missing += [key for key in _matrix_keys(arrays, f"_{k}") if key not in arrays]
  if missing:
    raise UserError(f"{path}: layer-wise export is missing key(s) {', '.join(missing)}")
  weights = arrays["layer_weights"]
  if not np.issubdtype(weights.dtype, np.floating):
    raise UserError(f"{path}: layer_weights must be floats, got dtype {weights.dtype}")
  if weights.shape != (num_layers,):
    raise UserError(f"{path}: layer_weights must have shape ({num_layers},), got {weights.shape}")
  if not (np.isfinite(weights).all() and (weights > 0).all()):
    raise UserError(f"{path}: layer_weights must be positive and finite")
  sides = {side: [] for side in SIDES}
  for k in range(num_layers):
    bits = _bits(arrays, path, f"bits_{k}")
    for side in SIDES:
      sides[side].append(_quantized(arrays, path, side, bits, f"_{k}"))
    _same_dim(path, sides["user"][k].codes.shape[1], sides["item"][k].codes.shape[1], f" (layer {k})")
  rows = {side: {int(q.codes.shape[0]) for q in sides[side]} for side in SIDES}
  for side in SIDES:
    if len(rows[side]) != 1:
      raise UserError(f"{path}: {side}_codes_k of the layers differ in rows ({sorted(rows[side])})")
  w = tuple(float(v) for v in weights)
  return tuple(LayeredQuantized(layers=tuple(sides[side]), weights=w) for side in SIDES)


def _int_scalar(arrays, path: str, key: str) -> int:
  x = arrays[key]
  if x.size != 1 or not np.issubdtype(x.dtype, np.integer):
    raise UserError(f"{path}: {key!r} must be one integer, got {x.dtype} of shape {x.shape}")
  return int(x.reshape(()))


def _bits(arrays, path: str, key: str) -> int:
  bits = _int_scalar(arrays, path, key)
  if bits not in SUPPORTED_BITS:
    raise UserError(f"{path}: unsupported {key}={bits} (supported: {', '.join(map(str, SUPPORTED_BITS))})")
  return bits


def _float_matrix(arrays, path: str, key: str) -> np.ndarray:
  x = arrays[key]
  _check_matrix_shape(path, key, x)
  if not np.issubdtype(x.dtype, np.floating):
    raise UserError(f"{path}: {key} must be floats, got dtype {x.dtype}")
  if not np.isfinite(x).all():
    raise UserError(f"{path}: {key} contains NaN or infinite values")
  return x.astype(np.float32)


def _check_matrix_shape(path: str, key: str, x: np.ndarray) -> None:
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise UserError(f"{path}: {key} must be a non-empty (n, d) matrix, got shape {x.shape}")


def _float_scalar(arrays, path: str, key: str) -> np.ndarray:
  x = arrays[key]
  if not np.issubdtype(x.dtype, np.floating):
    raise UserError(f"{path}: {key} must be a float, got dtype {x.dtype}")
  if x.shape != ():
    raise UserError(f"{path}: {key} must be a scalar, got shape {x.shape}")
  if not np.isfinite(x):
    raise UserError(f"{path}: {key} is not finite ({x})")
  return x.astype(np.float32)


def _quantized(arrays, path: str, side: str, bits: int, suffix: str) -> QuantizedMatrix:
  key = f"{side}_codes{suffix}"
  codes = arrays[key]
  _check_matrix_shape(path, key, codes)
  if not np.issubdtype(codes.dtype, np.integer):
    raise UserError(f"{path}: {key} must be integers, got dtype {codes.dtype}")
  n = codes.shape[0]
  if bits == 1:
    if not np.isin(codes, (-1, 1)).all():
      raise UserError(f"{path}: {key} of 1-bit codes must be -1 or +1")
    codes = codes.astype(np.int8)
  else:
    top = (1 << bits) - 1
    if codes.min() < 0 or codes.max() > top:
      raise UserError(f"{path}: {key} of {bits}-bit codes must lie in [0, {top}], found "
                      f"{codes.min()}..{codes.max()}")
    codes = codes.astype(np.uint8)
  offset_key = f"{side}_offset{suffix}"
  offset = _float_scalar(arrays, path, offset_key)
  if bits == 1 and offset != 0:
    raise UserError(f"{path}: {offset_key} of 1-bit codes must be 0, got {offset}")
  if f"{side}_scale_codes{suffix}" in arrays:
    scale = _scale_codes(arrays, path, side, suffix, n, bits)
  else:
    scale_key = f"{side}_scale{suffix}"
    scale = arrays[scale_key]
    if not np.issubdtype(scale.dtype, np.floating):
      raise UserError(f"{path}: {scale_key} must be floats, got dtype {scale.dtype}")
    allowed = ((), (n, 1)) if bits == 1 else ((),)
    if scale.shape not in allowed:
      raise UserError(f"{path}: {scale_key} must have shape {' or '.join(map(str, allowed))} for {bits}-bit "
                      f"codes, got {scale.shape}")
    scale = scale.astype(np.float32)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
      raise UserError(f"{path}: {scale_key} must be positive and finite")
  return QuantizedMatrix(codes=codes, scale=scale, offset=offset, bits=bits)


def _scale_codes(arrays, path: str, side: str, suffix: str, n: int, bits: int) -> ScaleCodes:
  key = f"{side}_scale_codes{suffix}"
  if bits != 1:
    raise UserError(f"{path}: {key}: 8-bit per-row scales are for 1-bit codes, not {bits}-bit ones")
  codes = arrays[key]
  if not np.issubdtype(codes.dtype, np.integer):
    raise UserError(f"{path}: {key} must be integers, got dtype {codes.dtype}")
  if codes.shape != (n, 1):
    raise UserError(f"{path}: {key} must have shape ({n}, 1), got {codes.shape}")
  if codes.min() < 0 or codes.max() > 255:
    raise UserError(f"{path}: {key} must lie in [0, 255], found {codes.min()}..{codes.max()}")
  min_key, step_key = f"{side}_scale_min{suffix}", f"{side}_scale_step{suffix}"
  minimum = _float_scalar(arrays, path, min_key)
  step = _float_scalar(arrays, path, step_key)
  mant, _ = np.frexp(np.float64(step))
  if not (step > 0 and mant == 0.5):
    raise UserError(f"{path}: {step_key} must be a positive power of two, got {step}")
  base = np.float64(minimum) / np.float64(step)
  if not (0 <= base <= SCALE_MAX_MULTIPLE and base == np.floor(base)):
    raise UserError(f"{path}: {min_key} must be an integer multiple of {step_key} in [0, 2^16 step], got "
                    f"{minimum} = {base} steps")
  if base == 0 and codes.min() == 0:
    raise UserError(f"{path}: {key}: every scale must be > 0 ({min_key} + {step_key} * code is 0)")
  return ScaleCodes(codes=codes.astype(np.uint8), minimum=minimum, step=step)


def _same_dim(path: str, du: int, di: int, where: str) -> None:
  if du != di:
    raise UserError(f"{path}: user and item dimensions differ{where} ({du} vs {di})")
