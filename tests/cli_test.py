"""hq_jax.cli: the multi-process flags (validation, one error line from the binaries, two processes joining)."""

import socket
import subprocess
import sys

import pytest

from hq_jax import cli
from hq_jax.errors import UserError
from tests.conftest import REPO, subprocess_env


@pytest.mark.parametrize("address, num_processes, process_id", [
    (None, 1, 0),
    ("localhost:1234", 2, 0),
    ("localhost:1234", 2, 1),
    ("10.0.0.7:65535", 8, 7),
    ("[::1]:9000", 3, 2),
])
def test_valid_distributed_settings(address, num_processes, process_id):
  cli.check_distributed_settings(address, num_processes, process_id)


@pytest.mark.parametrize("name, address, num_processes, process_id, message", [
    ("zero_processes", None, 0, 0, "--num_processes must be at least 1, got 0"),
    ("negative_processes", "h:1", -2, 0, "--num_processes must be at least 1"),
    ("id_too_large", "h:1", 2, 2, "--process_id must be in 0 .. 1 (--num_processes=2), got 2"),
    ("negative_id", "h:1", 2, -1, "--process_id must be in 0 .. 1"),
    ("id_without_processes", None, 1, 1, "--process_id must be in 0 .. 0"),
    ("address_alone", "localhost:1234", 1, 0, "--coordinator_address is for a multi-process run"),
    ("no_address", None, 2, 0, "--num_processes=2 needs --coordinator_address=HOST:PORT"),
    ("no_port", "localhost", 2, 0, "--coordinator_address must be HOST:PORT"),
    ("no_host", ":1234", 2, 0, "--coordinator_address must be HOST:PORT"),
    ("port_not_a_number", "localhost:http", 2, 0, "--coordinator_address must be HOST:PORT"),
    ("port_zero", "localhost:0", 2, 0, "--coordinator_address must be HOST:PORT with a port in 1 .. 65535"),
    ("port_too_large", "localhost:70000", 2, 0, "--coordinator_address must be HOST:PORT"),
])
def test_invalid_distributed_settings(name, address, num_processes, process_id, message):
  del name
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
    cli.check_distributed_settings(address, num_processes, process_id)


@pytest.mark.parametrize("binary", ["hqgnn", "mpe"])
def test_binaries_reject_bad_distributed_flags_in_one_line(tmp_path, binary):
  config = REPO / "experiments" / "configs" / f"{binary}_test.py"
  r = subprocess.run([sys.executable, "-m", f"experiments.{binary}", f"--config={config}",
                      f"--workdir={tmp_path / 'w'}", "--num_processes=2", "--process_id=2",
                      "--coordinator_address=localhost:1234"],
                     capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines() == [
      f"{binary}: error: --process_id must be in 0 .. 1 (--num_processes=2), got 2"]
  assert not (tmp_path / "w").exists()  # nothing was started


_JOIN = """
from absl import app, flags
from hq_jax import cli
cli.define_training_flags()
def main(argv):
  cli.initialize_distributed()
  import jax
  import jax.numpy as jnp
  from jax.experimental import multihost_utils
  got = multihost_utils.process_allgather(jnp.array([jax.process_index() + 10]))
  print(jax.process_index(), jax.process_count(), jax.device_count(), got.ravel().tolist(), flush=True)
cli.run(main, "join")
"""


def test_two_processes_join(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-c", _JOIN, "--config=experiments/configs/hqgnn_test.py",
                             f"--workdir={tmp_path}", f"--coordinator_address=localhost:{port}",
                             "--num_processes=2", f"--process_id={i}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=subprocess_env())
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  last_lines = [out.strip().splitlines()[-1].split() for out, _ in outs]  # gloo prints a line of its own
  assert last_lines == [["0", "2", "2", "[10,", "11]"], ["1", "2", "2", "[10,", "11]"]]


def test_late_event_loop_callbacks_are_dropped_and_others_kept(capsys, monkeypatch):
  """A callback failing on a closed asyncio loop (abandoned orbax restore) prints nothing; any other
  unraisable exception still reaches the default hook."""
  import gc
  monkeypatch.setattr(sys, "unraisablehook", cli._drop_late_loop_callbacks)

  class RaisesOnDelete:
    def __init__(self, exc):
      self.exc = exc

    def __del__(self):
      raise self.exc

  RaisesOnDelete(RuntimeError("Event loop is closed"))
  gc.collect()
  assert "Event loop is closed" not in capsys.readouterr().err
  RaisesOnDelete(ValueError("boom"))
  gc.collect()
  assert "boom" in capsys.readouterr().err
