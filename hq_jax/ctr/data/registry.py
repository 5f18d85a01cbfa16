"""Command-line dataset specs: `load_ctr(spec)` dispatches on the part before the first ':' (ours).

Specs: 'criteo-sample' (the embedded 9,999 rows), 'criteo:PATH', 'avazu:PATH', 'frappe:DIR' (files
frappe.train*.libfm, frappe.validation.libfm, frappe.test.libfm), 'libfm:TRAIN,VALID,TEST' (any one-hot
libFM files; the field layout is inferred from the training file, or given as a fourth item
'offsets=0/O1/.../N'; a fourth item 'remap_ids' instead renumbers sparse or hashed ids, see
`libfm.load_libfm`), and 'synthetic:KEY=VAL,...' (`hq_jax.ctr.synthetic.synthetic_from_spec`).

A module outside this package can add a prefix with `register_ctr_spec`. `hq_jax.ctr.synthetic` does so
for 'synthetic'; it imports this package, so this package never imports it: the registry imports the
module by name (`_PLUGINS`) the first time its prefix is used, and the module registers itself.

Every dataset a spec names is checked at load time (`check_both_classes`), also on a cache hit.
"""

import dataclasses
import importlib
from collections.abc import Callable

from hq_jax.ctr.data import avazu, criteo, dataset, libfm, sample
from hq_jax.errors import UserError

CTR_SPEC_HELP = ("'criteo-sample', 'criteo:PATH', 'avazu:PATH', 'frappe:DIR', 'libfm:TRAIN,VALID,TEST"
                 "[,offsets=0/O1/.../N or ,remap_ids]' or "
                 "'synthetic:rows=N,cardinalities=C1/C2/...,zipf_a=A,seed=S,...'")

# A spec loader: (the text after 'PREFIX:', cache_dir, seed) -> dataset.
SpecLoader = Callable[[str, str | None, int], dataset.CTRDataset]


@dataclasses.dataclass(frozen=True)
class _Spec:
  loader: SpecLoader
  argument: str  # 'required', 'none' or 'optional': whether the spec takes text after 'PREFIX:'


_SPECS: dict[str, _Spec] = {}

# Prefixes served by a module that registers itself on import (and imports this package).
_PLUGINS = {"synthetic": "hq_jax.ctr.synthetic", "planted": "hq_jax.ctr.planted"}


def register_ctr_spec(prefix: str, loader: SpecLoader, *, argument: str = "required") -> None:
  """Makes `load_ctr('PREFIX:ARG')` call `loader(ARG, cache_dir, seed)`.

  Raises:
    ValueError: `argument` is not 'required', 'none' or 'optional'.
  """
  if argument not in ("required", "none", "optional"):
    raise ValueError(f"argument must be 'required', 'none' or 'optional', got {argument!r}")
  _SPECS[prefix] = _Spec(loader, argument)


def parse_libfm_spec(arg: str) -> tuple[list, list | None, bool]:
  """'TRAIN,VALID,TEST[,offsets=0/O1/.../N | ,remap_ids]' -> ([train, valid, test], offsets or None, remap).

  Raises:
    UserError: not three paths, offsets that are not integers separated by '/', or an unknown option.
  """
  items = arg.split(",")
  offsets, remap = None, False
  if len(items) == 4 and items[3].startswith("offsets="):
    try:
      offsets = [int(x) for x in items.pop()[len("offsets="):].split("/")]
    except ValueError:
      raise UserError(f"libfm spec {arg!r}: offsets must be integers separated by '/'") from None
  elif len(items) == 4 and items[3] == "remap_ids":
    remap = bool(items.pop())
  if len(items) != 3 or not all(items):
    raise UserError(f"libfm spec {arg!r}: expected TRAIN,VALID,TEST[,offsets=0/O1/.../N or ,remap_ids]")
  return items, offsets, remap


def _load_sample(arg: str, cache_dir: str | None, seed: int) -> dataset.CTRDataset:
  del arg
  return sample.embedded_criteo_sample(cache_dir, seed=seed)


def _load_criteo(arg: str, cache_dir: str | None, seed: int) -> dataset.CTRDataset:
  return criteo.load_criteo(arg, cache_dir=cache_dir, seed=seed)


def _load_avazu(arg: str, cache_dir: str | None, seed: int) -> dataset.CTRDataset:
  return avazu.load_avazu(arg, cache_dir=cache_dir, seed=seed)


def _load_frappe(arg: str, cache_dir: str | None, seed: int) -> dataset.CTRDataset:
  del seed  # the files are the splits
  return libfm.load_frappe(arg, cache_dir=cache_dir)


def _load_libfm(arg: str, cache_dir: str | None, seed: int) -> dataset.CTRDataset:
  del seed  # the files are the splits
  paths, offsets, remap = parse_libfm_spec(arg)
  return libfm.load_libfm(*paths, cache_dir=cache_dir, field_offsets=offsets, remap_ids=remap)


register_ctr_spec("criteo-sample", _load_sample, argument="none")
register_ctr_spec("criteo", _load_criteo)
register_ctr_spec("avazu", _load_avazu)
register_ctr_spec("frappe", _load_frappe)
register_ctr_spec("libfm", _load_libfm)


def load_ctr(spec: str, *, cache_dir: str | None = None, seed: int = 0) -> dataset.CTRDataset:
  """Loads a dataset named by a command-line spec (see the module docstring and `CTR_SPEC_HELP`).

  Args:
    spec: 'PREFIX' or 'PREFIX:ARG'.
    cache_dir: cache folder for parsed files (None: `default_cache_dir()`); synthetic data is generated
      in memory when None.
    seed: seed of the random 80/10/10 split (Criteo, Avazu), and the synthetic seed unless the spec gives
      one; libFM / Frappe splits are their files, so they ignore it.

  Returns:
    The dataset, every split holding both labels.

  Raises:
    UserError: an unknown spec, a spec the loader rejects, bad input naming `path:line`, or a split that
      is empty or has one class only (naming the split and its file).
  """
  prefix, colon, arg = spec.partition(":")
  if prefix not in _SPECS and prefix in _PLUGINS:
    importlib.import_module(_PLUGINS[prefix])  # registers `prefix`
  entry = _SPECS.get(prefix)
  if entry is None or (entry.argument == "required" and not arg) or (entry.argument == "none" and colon):
    raise UserError(f"unknown CTR dataset spec {spec!r}; expected {CTR_SPEC_HELP}")
  return dataset.check_both_classes(entry.loader(arg, cache_dir, seed))
