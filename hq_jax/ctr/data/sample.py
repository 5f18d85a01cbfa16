"""The embedded Criteo sample: the first 9,999 rows of the Criteo Kaggle training set, shipped gzipped.

Source: the Criteo display-advertising challenge (Kaggle, 2014); hq_jax/ctr/datasets/README.md says how
it was copied.
"""

import importlib.resources

from hq_jax.ctr.data import criteo, dataset


def embedded_criteo_sample_path() -> str:
  """Path of the shipped 9,999-row Criteo sample (`criteo_10k.csv.gz`, CSV with header)."""
  return str(importlib.resources.files("hq_jax.ctr") / "datasets" / "criteo_10k.csv.gz")


def embedded_criteo_sample(cache_dir: str | None = None, *, seed: int = 0) -> dataset.CTRDataset:
  """The default CTR dataset: the embedded sample through `load_criteo` (39 fields, 80/10/10 by `seed`).

  Returns:
    A `CTRDataset` of 9,999 rows (7,999 / 1,000 / 1,000), 11,423 features for seed 0.

  Raises:
    UserError: the cache folder cannot be created.
  """
  return criteo.load_criteo(embedded_criteo_sample_path(), cache_dir=cache_dir, seed=seed,
                            name="criteo-sample")
