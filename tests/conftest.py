"""Shared test fixtures: paths to the repo and to the optional shared datasets."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """`../shared/data` of the checkout, or skip when this machine does not have it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present")
  return SHARED_DATA


JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
  """One JAX persistent compilation cache for the whole test session, in a private temporary folder.

  The tests build many trainers, evaluators and binaries on the same tiny configs: each compiles the same
  programs again (a new jitted closure is a new in-memory cache entry), in its own process or in a
  subprocess. With one shared on-disk cache each program is compiled once per session and loaded afterwards,
  by every xdist worker and every subprocess (they inherit the environment). Set by the process that starts
  the session (the xdist controller, before it starts its workers) and removed when the session ends; the
  user's own cache is never touched. Tests that need their own cache (bad_input_test's zygotes, crash_resume)
  still set theirs.
  """
  if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: the controller already set it up
    return
  path = tempfile.mkdtemp(prefix="hq_jax_test_jax_cache_")
  config._hq_jax_cache_dir = path  # pylint: disable=protected-access
  os.environ.update({JAX_CACHE_ENV: path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  if "jax" in sys.modules:  # imported by a plugin before this hook: the environment is read at import only
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  path = getattr(config, "_hq_jax_cache_dir", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)


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


def run_json_worker(code: str, args: list[str], *, devices: int = 1, timeout: float = 1800) -> dict:
  """Runs `python -c code *args` on `devices` simulated CPU devices (the count is fixed when JAX starts, hence
  a subprocess), asserts it exited 0 (showing its stderr tail) and returns the JSON of its last stdout line."""
  env = dict(subprocess_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


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


def damaged_copies(root: pathlib.Path, step: str, tmp_path: pathlib.Path, *, first: int, stride: int,
                   min_size: int = 0):
  """Yields `(file, copy_root)` once per file of checkpoint step `root/step` of more than `min_size` bytes:
  `copy_root` is a fresh copy of the checkpoint folder `root` in which that one file has every `stride`-th
  byte from `first` on inverted (a damaged copy for restore tests)."""
  files = sorted(p for p in (root / step).rglob("*") if p.is_file() and p.stat().st_size > min_size)
  for i, path in enumerate(files):
    copy = tmp_path / f"damaged{i}"
    shutil.copytree(root, copy)
    target = copy / path.relative_to(root)
    data = bytearray(target.read_bytes())
    for j in range(min(first, len(data) - 1), len(data), stride):
      data[j] ^= 0xFF
    target.write_bytes(bytes(data))
    yield path, copy
