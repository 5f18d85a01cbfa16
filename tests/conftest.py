"""Shared test fixtures: paths to the repo and to the optional shared datasets."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """`../shared/data` of the checkout, or skip when this machine does not have it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present")
  return SHARED_DATA


def subprocess_env() -> dict:
  """Environment for running a binary of this repo in a subprocess (repo on PYTHONPATH, quiet JAX)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


@pytest.fixture(autouse=True, scope="session")
def _private_ctr_cache(tmp_path_factory):
  """Keeps the CTR preprocessing cache of the whole test session in a temporary folder."""
  os.environ["HQ_JAX_CACHE"] = str(tmp_path_factory.mktemp("hq_jax_cache"))
  yield
