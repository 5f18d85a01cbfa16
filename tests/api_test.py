"""The curated public API: every name in each package's `__all__` resolves and is documented."""

import importlib
import inspect

import pytest

PACKAGES = ("hq_jax", "hq_jax.data", "hq_jax.hqgnn", "hq_jax.quant", "hq_jax.retrieval", "hq_jax.ctr",
            "hq_jax.ctr.data")


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve_and_are_documented(name):
  package = importlib.import_module(name)
  assert package.__doc__, f"{name} has no docstring"
  exported = getattr(package, "__all__", None)
  assert exported, f"{name} has no __all__"
  assert len(set(exported)) == len(exported), f"{name}.__all__ repeats names"
  undocumented = []
  for attr in exported:
    obj = getattr(package, attr)  # AttributeError: listed but missing
    if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
      undocumented.append(attr)
  assert not undocumented, f"{name}: public names without a docstring: {undocumented}"


def test_top_level_entry_points():
  import hq_jax
  assert {"load_dataset", "evaluate", "load_export", "save_export", "topk", "QuantizedIndex"} <= set(hq_jax.__all__)
