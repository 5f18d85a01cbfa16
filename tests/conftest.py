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


def free_port() -> int:
  """A TCP port on localhost that was free a moment ago (the coordinator of a multi-process test)."""
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def finish_all(procs, timeout: float) -> None:
  """Waits for every `subprocess.Popen` (stderr piped, text mode), kills any still running when one fails or
  the time is up (a peer of a failed process waits for it forever), and asserts each exited 0, showing its
  stderr tail."""
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=timeout)[1])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
