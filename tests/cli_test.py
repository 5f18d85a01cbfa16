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
                             "--num_processes=2", f"--process_id={i}", "--distributed_timeout=300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=subprocess_env())
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
  last_lines = [out.strip().splitlines()[-1].split() for out, _ in outs]  # gloo prints a line of its own
  assert last_lines == [["0", "2", "2", "[10,", "11]"], ["1", "2", "2", "[10,", "11]"]]


@pytest.mark.parametrize("name, error, line", [
    # ml_collections: an AttributeError holding a KeyError whose message has quotes and a newline
    ("mistyped_config_key", AttributeError(KeyError('\'epoch\'\nDid you mean "epochs" instead of "epoch"?')),
     '\'epoch\'; Did you mean "epochs" instead of "epoch"?'),
    ("quoted_key_alone", KeyError("'bogus'"), "bogus"),
    ("plain", ValueError("bad  value\n  here"), "bad value; here"),
    ("empty", OSError(), "OSError"),
])
def test_one_line_shows_the_message_not_its_repr(name, error, line):
  del name
  assert cli._one_line(error) == line


def test_a_mistyped_config_key_is_one_clean_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "experiments.hqgnn", "--config=experiments/configs/hqgnn_test.py",
                      "--config.train.epoch=3", f"--workdir={tmp_path / 'w'}"],
                     capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
  assert r.returncode == 2
  assert r.stderr.splitlines() == ['hqgnn: error: unknown config field in an override: \'epoch\'; Did you mean '
                                   '"epochs" instead of "epoch"?']


def test_distributed_timeout_must_be_positive():
  with pytest.raises(UserError, match=r"--distributed_timeout must be a positive number of seconds, got 0"):
    cli.check_distributed_settings("localhost:1234", 2, 1, timeout=0)


def test_wait_for_port(tmp_path):
  import time
  with socket.socket() as s:
    s.bind(("localhost", 0))
    s.listen()
    port = s.getsockname()[1]
    assert cli.wait_for_port(f"localhost:{port}", time.monotonic() + 5)
  t0 = time.monotonic()
  assert not cli.wait_for_port(f"localhost:{port}", time.monotonic() + 0.6)  # closed now
  assert 0.5 < time.monotonic() - t0 < 3


@pytest.mark.parametrize("process_id, line", [
    (1, r"join: error: process 1 of 2: no coordinator answered at localhost:{port} within 2 s \(is process 0 "
        r"running, with the same --coordinator_address\? raise --distributed_timeout to wait longer\)"),
    (0, r"join: error: process 0 of 2: not every process joined the run at localhost:{port} within 2 s \(start "
        r"each with --coordinator_address=localhost:{port} --num_processes=2 and its own --process_id; or raise "
        r"--distributed_timeout\)"),
])
def test_a_process_left_alone_stops_in_one_line_within_its_timeout(tmp_path, process_id, line):
  """Process 1 against a port nothing listens on; process 0 whose peer never comes. Before: 5 silent
  minutes, then XLA's C++ abort (exit 134) with ~30 lines."""
  import re
  import time
  from tests.conftest import free_port
  port = free_port()
  t0 = time.monotonic()
  r = subprocess.run([sys.executable, "-c", _JOIN, "--config=experiments/configs/hqgnn_test.py",
                      f"--workdir={tmp_path}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
                      f"--process_id={process_id}", "--distributed_timeout=2"],
                     capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=240)
  seconds = time.monotonic() - t0
  assert r.returncode == 2, r.stderr[-2000:]
  assert len(r.stderr.splitlines()) == 1, r.stderr[-2000:]
  assert re.fullmatch(line.format(port=port), r.stderr.strip()), r.stderr
  waiting = "for the coordinator at" if process_id else "waiting up to 2 s for the other 1 process to join"
  assert waiting in r.stdout.splitlines()[0]
  assert seconds < 120  # imports and start-up on a loaded 2-core machine, plus the 2 s
