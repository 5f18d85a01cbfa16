"""`export.npz`: the stored user and item representations, written and read here only (ours).

The trainer writes it with `save_export`; evaluation, retrieval (`QuantizedIndex`) and the binaries read it
with `load_export`. Both go through one validator, so a file that loads is a file that could have been
written, and a bad file stops with one `UserError` line that names the file and the key, never with a
traceback deep inside a jitted search. This module owns the file (versions, `kind`, which sides are coded,
the checks between the sides); the arrays of each representation are written, read and checked by its
family (`hq_jax.quant.family`, the one place of each family's checks), so a new family is a new `kind` here,
not a new branch.

Format (NumPy .npz: a zip of .npy arrays, no pickled objects), version 3:

  format_version  int32 ()  3. Version 2 files (no `kind`) and files without `format_version` (version 1:
                  written before it existed; the float and one-matrix layouts only) are still read: their
                  kind is "layered" with key `layers`, else "scalar" with key `bits`, else "float".
  kind            str ()    "float", "scalar", "layered" or "pq" (version 3; a 0-d unicode array): the
                  family of the item side. The user side is of the same family, or, for kind "pq" only,
                  float `user_embeddings` ("items coded, users float", `hq_jax.quant.family.MIXED_PAIRS`).

  kind "float":
    user_embeddings (U, d), item_embeddings (I, d): float (stored float32), finite.

  kind "scalar", one matrix per side (`hq_jax.quant.QuantizedMatrix`; side = user, item):
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

  kind "layered", layer-wise codes (`hq_jax.quant.LayeredQuantized`):
    layers          int ()              L >= 1
    layer_weights   float64 (L,)        w_k > 0; score(u, i) = sum_k w_k <x^_uk, x^_ik>
    and for each layer k = 0..L-1 the keys of one quantized matrix with the suffix `_{k}`:
    bits_{k}, {side}_codes_{k}, {side}_offset_{k}, and {side}_scale_{k} or
    {side}_scale_codes_{k} / {side}_scale_min_{k} / {side}_scale_step_{k}.

  kind "pq", product codes (`hq_jax.quant.pq.ProductCodes`):
    bits            int ()              1..8: 2^bits codewords per subspace (one value for both sides)
    {side}_codes    uint8 (n, M)        in [0, 2^bits - 1]; M may differ between the sides
    {side}_codebooks float32 (M, 2^bits, d / M), finite; or one `codebooks` key of that shape when both
                    sides share their codebooks (written when they are equal: stored once)
    The decoded row r is the concatenation over m of codebooks[m][codes[r, m]].
    With float users: `user_embeddings` (U, d) float32 instead of `user_codes` / `user_codebooks`.

  In every layout the user and item matrices (of each layer) decode to the same d. Other keys are ignored.

What is checked (each failure is `UserError("<path>: ...")` naming the key): the file exists, is not empty,
is a zip of arrays (no pickled object arrays); the version and kind; the keys of the layout are present;
dtypes (integers for codes and `bits`, floats for embeddings, scales, offsets, codebooks and weights);
shapes (codebooks (M, 2^bits, d / M) with M = the codes' columns); finite values; codes in range; scales > 0
(and the `ScaleCodes` step / minimum rules); 1-bit offsets 0; matching dimensions.
"""

import os
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant import family as family_lib
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FLOAT_KEYS = ("user_embeddings", "item_embeddings")
SIDES = family_lib.SIDES

Representation = np.ndarray | QuantizedMatrix | LayeredQuantized | ProductCodes


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def export_arrays(users: Representation, items: Representation) -> dict[str, np.ndarray]:
  """The arrays of an export of (users, items) in the current format (module docstring).

  Raises:
    UserError: not a legal pair of families (`hq_jax.quant.family.check_pair`).
    ValueError: the two sides disagree on a key they share (`bits`, `layers`, `layer_weights`, `bits_k`).
  """
  pair = family_lib.check_pair(users, items)
  out = {"format_version": np.asarray(FORMAT_VERSION, np.int32), "kind": np.asarray(pair.kind)}
  for side, fam, rep in (("user", pair.user, users), ("item", pair.item, items)):
    for key, value in fam.arrays(rep, side).items():
      if key in out and not (out[key].shape == value.shape and np.array_equal(out[key], value)):
        raise ValueError(f"users and items disagree on the key {key!r} they share ({out[key]} vs {value})")
      out[key] = value
  if pair.user is pair.item:
    for name in pair.item.shareable:
      a, b = out.get(f"user_{name}"), out.get(f"item_{name}")
      if a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b):
        out[name] = out.pop(f"user_{name}")
        del out[f"item_{name}"]
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
    (users, items): float32 (n, d) arrays, `QuantizedMatrix`, `LayeredQuantized` or `ProductCodes` pairs, or
    float32 users with `ProductCodes` items (numpy leaves).

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
    version = family_lib.int_scalar(arrays, path, "format_version")
    if version not in READABLE_VERSIONS:
      raise UserError(f"{path}: format_version {version} is not supported (this reader knows "
                      f"{', '.join(map(str, READABLE_VERSIONS))})")
  item_family = family_lib.family_named(_kind(arrays, path, version))
  user_family = item_family
  if version >= 3 and item_family.kind != "float" and "user_embeddings" in keys:
    if not family_lib.legal_pair("float", item_family.kind):
      raise UserError(f"{path}: user_embeddings (float users) go with kind 'pq' only; kind "
                      f"{item_family.kind!r} stores codes on both sides")
    user_family = family_lib.FAMILIES["float"]
  if user_family is item_family:
    needed = item_family.required_keys(arrays, SIDES, path)
  else:
    needed = user_family.required_keys(arrays, ("user",), path) + item_family.required_keys(arrays, ("item",), path)
  missing = [key for key in dict.fromkeys(needed) if key not in keys]
  if missing:
    what = item_family.title if user_family is item_family else f"float-user {item_family.title}"
    raise UserError(f"{path}: {what} export is missing key(s) {', '.join(missing)}")
  users = user_family.read(arrays, "user", path)
  items = item_family.read(arrays, "item", path)
  du, di = user_family.dims(users), item_family.dims(items)
  for k, (a, b) in enumerate(zip(du, di)):
    _same_dim(path, a, b, f" (layer {k})" if item_family.per_layer_dims else "")
  return users, items


def _kind(arrays, path: str, version: int) -> str:
  """The file's kind: the `kind` key (version 3) or, for versions 1 and 2, inferred from the keys."""
  keys = set(arrays)
  if version >= 3:
    if "kind" not in keys:
      raise UserError(f"{path}: format_version {version} needs the key 'kind' ({', '.join(family_lib.KINDS)})")
    kind = arrays["kind"]
    if kind.shape != () or kind.dtype.kind != "U" or str(kind) not in family_lib.KINDS:
      raise UserError(f"{path}: 'kind' must be one of {', '.join(family_lib.KINDS)} (a 0-d string), got "
                      f"{kind.dtype} {kind.reshape(-1)[:3]}")
    return str(kind)
  if "layers" in keys:
    if version < 2:
      raise UserError(f"{path}: key 'layers' needs format_version 2")
    return "layered"
  if "bits" in keys:
    return "scalar"
  if any(key in keys for key in FLOAT_KEYS):
    return "float"
  raise UserError(f"{path}: neither a quantized export (key 'bits' or 'layers') nor a float one (keys "
                  f"{', '.join(FLOAT_KEYS)}); found: {', '.join(sorted(keys)) or 'nothing'}")


def _same_dim(path: str, du: int, di: int, where: str) -> None:
  if du != di:
    raise UserError(f"{path}: user and item dimensions differ{where} ({du} vs {di})")
