"""Loader for the trainer's `export.npz`: final user and item representations.

Two layouts (written by the trainer):
  * full precision: `user_embeddings`, `item_embeddings` (float32, (n, d));
  * quantized: `bits` (int scalar), `user_codes`, `item_codes`, `user_scale`, `user_offset`,
    `item_scale`, `item_offset` (as in `hq_jax.quant.QuantizedMatrix`).
Everything is validated here so that a wrong file stops with one `UserError` naming the file and the key,
never with a traceback deep inside a jitted search.
"""

import os
import zipfile

import jax.numpy as jnp
import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix

Rep = np.ndarray | QuantizedMatrix
QUANT_KEYS = ("bits", "user_codes", "item_codes", "user_scale", "user_offset", "item_scale", "item_offset")
FLOAT_KEYS = ("user_embeddings", "item_embeddings")
EXPORT_BITS = (1, 2, 3, 4, 8)


def _get(z, path: str, key: str) -> np.ndarray:
  if key not in z.files:
    raise UserError(f"{path}: missing key {key!r} (has: {', '.join(sorted(z.files)) or 'nothing'})")
  try:
    return z[key]
  except ValueError as e:  # an object array (would need pickle)
    raise UserError(f"{path}: key {key!r} is not a plain numeric array ({e})") from None


def _matrix(z, path: str, key: str) -> np.ndarray:
  x = _get(z, path, key)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise UserError(f"{path}: {key} must be a non-empty (n, d) matrix, got shape {x.shape}")
  return x


def _quantized(z, path: str, side: str, bits: int) -> QuantizedMatrix:
  codes = _matrix(z, path, f"{side}_codes")
  scale = np.asarray(_get(z, path, f"{side}_scale"), np.float32)
  offset = np.asarray(_get(z, path, f"{side}_offset"), np.float32)
  if not np.issubdtype(codes.dtype, np.integer):
    raise UserError(f"{path}: {side}_codes must be integers, got {codes.dtype}")
  n = codes.shape[0]
  if bits == 1:
    if not np.isin(codes, (-1, 1)).all():
      raise UserError(f"{path}: 1-bit {side}_codes must be -1 or +1")
    if scale.shape not in ((), (n, 1)):
      raise UserError(f"{path}: {side}_scale must have shape () or ({n}, 1), got {scale.shape}")
    if offset.shape != () or offset != 0:
      raise UserError(f"{path}: 1-bit {side}_offset must be the scalar 0")
    codes = codes.astype(np.int8)
  else:
    if codes.min() < 0 or codes.max() > (1 << bits) - 1:
      raise UserError(f"{path}: {bits}-bit {side}_codes must lie in [0, {(1 << bits) - 1}]")
    if scale.shape != () or offset.shape != ():
      raise UserError(f"{path}: {side}_scale and {side}_offset must be scalars for {bits} bits, "
                      f"got shapes {scale.shape} and {offset.shape}")
    codes = codes.astype(np.uint8)
  if not (np.isfinite(scale).all() and (scale > 0).all() and np.isfinite(offset).all()):
    raise UserError(f"{path}: {side}_scale must be positive and finite, {side}_offset finite")
  return QuantizedMatrix(codes=jnp.asarray(codes), scale=jnp.asarray(scale), offset=jnp.asarray(offset),
                         bits=bits)


def load_export(path: str) -> tuple[Rep, Rep]:
  """Reads a training export; returns (user_rep, item_rep): float32 arrays or QuantizedMatrix pairs."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: export file not found")
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f"{path}: not a readable .npz export ({e})") from None
  with z:
    try:
      if "bits" in z.files:
        bits_arr = _get(z, path, "bits")
        if bits_arr.shape != () or not np.issubdtype(bits_arr.dtype, np.integer):
          raise UserError(f"{path}: bits must be an integer scalar, got {bits_arr.dtype} {bits_arr.shape}")
        bits = int(bits_arr)
        if bits not in EXPORT_BITS:
          raise UserError(f"{path}: unsupported bits={bits} (supported: {EXPORT_BITS})")
        users, items = _quantized(z, path, "user", bits), _quantized(z, path, "item", bits)
      else:
        if not any(k in z.files for k in FLOAT_KEYS):
          raise UserError(f"{path}: neither a quantized export (key 'bits') nor a float one "
                          f"(keys {FLOAT_KEYS})")
        users, items = (_matrix(z, path, k) for k in FLOAT_KEYS)
        for key, x in zip(FLOAT_KEYS, (users, items)):
          if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
            raise UserError(f"{path}: {key} must be finite floats")
        users, items = users.astype(np.float32), items.astype(np.float32)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise UserError(f"{path}: damaged .npz export ({e})") from None
  width = lambda rep: np.shape(rep.codes if bits_of(rep) else rep)[1]
  ud, idim = width(users), width(items)
  if ud != idim:
    raise UserError(f"{path}: user and item dimensions differ ({ud} vs {idim})")
  return users, items


def bits_of(rep: Rep) -> int:
  return rep.bits if isinstance(rep, QuantizedMatrix) else 0
