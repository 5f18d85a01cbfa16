"""Fixtures of the retrieval tests: `kernel` runs a test under each search of `retrieval.topk`."""

import dataclasses

import pytest

from hq_jax import backend
from hq_jax.retrieval import native


@pytest.fixture(params=["jax", "native"])
def kernel(request):
  """The search `topk` runs (`backend.Tunings.retrieval_kernel`): the blocked JAX search, then the compiled
  kernel (skipped, with the loader's reason, where it is not built)."""
  if request.param == "native" and not native.available():
    pytest.skip(f"compiled top-k kernel unavailable: {native.unavailable_reason()}")
  with backend.override(dataclasses.replace(backend.tunings(), retrieval_kernel=request.param)):
    yield request.param
