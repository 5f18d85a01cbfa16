"""CTR data: Criteo, Avazu and libFM (Frappe) loaders, preprocessing, an on-disk cache and dataset specs.

Every loader returns a `CTRDataset` (`dataset`): one (n, F) int32 matrix of global feature ids, float32
labels in {0, 1}, train / valid / test rows (stored in that order) and feature counts of the training
split only. Modules, one concern each:

  dataset   `CTRDataset`, `split_rows`, `iterate_batches`, the load-time label check
  cache     the on-disk cache (`cached_build`, `default_cache_dir`)
  reader    chunked reading of delimited files through pyarrow's CSV reader, with line numbers
  vocab     per-field vocabularies and encoding (OOV id 0, `min_count` on the training split)
  criteo    the Criteo format;  avazu: the Avazu format;  libfm: libFM files, Frappe
  sample    the embedded 9,999-row Criteo sample
  registry  `load_ctr(spec)`: 'criteo-sample', 'criteo:PATH', 'avazu:PATH', 'frappe:DIR',
            'libfm:TRAIN,VALID,TEST[,offsets=...|,remap_ids]', 'synthetic:...'

Preprocessing follows the MPE spec (section Data; Li et al., arXiv:2409.20305): values seen fewer than `min_count` times in the
training split (or never) map to one OOV id per field, local id 0; Criteo integer fields are discretised
and exempt from the rare rule; kept values get local ids 1.. in the order of their raw key. Bad input
raises `UserError` naming `path:line`, and every split must hold both labels (checked at load time, also
on a cache hit). No row is lost silently: CSVs are read as RFC 4180 records at any chunk size (the raw
Criteo TSV without quoting), rows must equal the non-blank records, and a UTF-8 byte-order mark is dropped;
libFM ids are checked (int32, dense) before anything of their size is allocated.
"""

from hq_jax.ctr.data.avazu import AVAZU_HOUR_FIELDS, avazu_hour_fields, load_avazu
from hq_jax.ctr.data.cache import CACHE_VERSION, cached_build, default_cache_dir
from hq_jax.ctr.data.criteo import (CRITEO_CAT_FIELDS, CRITEO_HEADER, CRITEO_INT_FIELDS, criteo_discretise,
                                    load_criteo)
from hq_jax.ctr.data.dataset import (SPLIT_NAMES, CTRDataset, check_both_classes, iterate_batches,
                                     label_counts, split_rows)
from hq_jax.ctr.data.libfm import (FRAPPE_FIELD_OFFSETS, FRAPPE_FIELDS, frappe_paths, load_frappe,
                                   load_libfm)
from hq_jax.ctr.data.reader import DEFAULT_CHUNK_BYTES
from hq_jax.ctr.data.registry import CTR_SPEC_HELP, load_ctr, register_ctr_spec
from hq_jax.ctr.data.sample import embedded_criteo_sample, embedded_criteo_sample_path

__all__ = [
    "AVAZU_HOUR_FIELDS", "CACHE_VERSION", "CRITEO_CAT_FIELDS", "CRITEO_HEADER", "CRITEO_INT_FIELDS",
    "CTR_SPEC_HELP", "CTRDataset", "DEFAULT_CHUNK_BYTES", "FRAPPE_FIELDS", "FRAPPE_FIELD_OFFSETS",
    "SPLIT_NAMES", "avazu_hour_fields", "cached_build", "check_both_classes", "criteo_discretise",
    "default_cache_dir", "embedded_criteo_sample", "embedded_criteo_sample_path", "frappe_paths",
    "iterate_batches", "label_counts", "load_avazu", "load_criteo", "load_ctr", "load_frappe", "load_libfm",
    "register_ctr_spec", "split_rows",
]
