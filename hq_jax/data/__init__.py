"""Implicit-feedback interaction data in the LightGCN text format (`interactions`), and a converter from
other pair files (`convert`)."""

from hq_jax.data.interactions import CSR, InteractionData, embedded_dataset_dir, load_dataset, validation_split

__all__ = ["CSR", "InteractionData", "embedded_dataset_dir", "load_dataset", "validation_split"]
