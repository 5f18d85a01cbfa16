"""Shared entry point for the absl binaries in `experiments/`.

`run(main, prog)` is `absl.app.run` with the behaviour users expect from a research binary: a bad flag, an
unknown `--config.` field or a missing config file gives one `prog: error: ...` line and exit status 2 (no
traceback, no usage dump), `UserError`s raised by `main` do the same, Ctrl-C gives one `prog: interrupted`
line and exit status 130, and orbax/absl INFO chatter is kept out of the way unless `-v` / `--verbosity`
asks for it.

`define_training_flags()` also defines the multi-process flags (--coordinator_address, --num_processes,
--process_id, --distributed_timeout; default: one process). A trainer calls `initialize_distributed()` first
thing in `main`, before anything touches a device; with --num_processes > 1 every process runs the same
command with its own --process_id and they join one JAX runtime (CPU collectives over gloo):

  python -m experiments.hqgnn --config=C.py --workdir=W --coordinator_address=host0:1234 \\
      --num_processes=2 --process_id=0   # and --process_id=1 on the second process

Joining never aborts: XLA's coordination client kills the process from C++ (exit 134, after 5 silent
minutes by default) when the coordinator never answers or a peer never registers. `initialize_distributed`
says what it waits for at once, checks that the coordinator's port accepts a TCP connection before XLA
tries, and exits with one line (status 2) once --distributed_timeout seconds have passed, before XLA's own
deadline (a few seconds later) would abort.
"""

import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from hq_jax.errors import UserError, exit_on_user_error


def _fail(prog: str, message: str) -> None:
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


# The `prog` of the running binary (`run`), for messages printed outside `exit_on_user_error`.
_PROG = "hq_jax"
# Seconds XLA's own join deadline is set beyond --distributed_timeout: our one line comes first.
_XLA_GRACE_S = 30


def _one_line(e: BaseException) -> str:
  """The message of `e` on one line: an exception that only wraps another (ml_collections raises an
  AttributeError holding a KeyError) gives the inner one's; a KeyError gives its message, not its repr (whose
  quotes and newlines would show as \\' and \\n); the lines of a message are joined with '; '."""
  while len(e.args) == 1 and isinstance(e.args[0], BaseException):
    e = e.args[0]
  message = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  text = "; ".join(" ".join(line.split()) for line in message.splitlines() if line.strip())
  if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":  # a message that is one quoted string
    text = text[1:-1]
  return text or type(e).__name__


def _make_parser(prog: str):
  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
      for name in list(flags.FLAGS):
        value = flags.FLAGS[name].value
        if type(value).__name__ == "_ErrorConfig":  # config_flags defers a failed config load until use
          getattr(value, "keys")  # raises the deferred OSError
      return rest
    except flags.Error as e:
      _fail(prog, _one_line(e))
    except (KeyError, AttributeError) as e:  # config_flags: an override names a field the config lacks
      _fail(prog, f"unknown config field in an override: {_one_line(e)}")
    except (OSError, ImportError, SyntaxError) as e:  # config_flags: the config file cannot be loaded
      _fail(prog, f"cannot load the config file: {_one_line(e)}")
    except (ValueError, TypeError) as e:  # config_flags: an override of the wrong type
      _fail(prog, f"invalid config override: {_one_line(e)}")
  return parse


def define_training_flags():
  """The flags every trainer binary takes: --config (a config file), --workdir, --extend, and the
  multi-process flags that `initialize_distributed` reads.

  Returns:
    (config, workdir, extend) flag holders; read `.value` inside `main`.
  """
  from ml_collections import config_flags  # noqa: PLC0415 - only the trainer binaries need it

  config = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for the config, checkpoints, metrics and results; "
                                "rerunning the same command resumes it.")
  extend = flags.DEFINE_bool("extend", False, "Allow a larger epoch budget than the workdir was started with "
                             "(a continuation, recorded in its config.json and results.json).")
  flags.mark_flags_as_required(["config", "workdir"])
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 in a multi-process run (every "
                      "process passes the same one); unset for one process.")
  flags.DEFINE_integer("num_processes", 1, "Processes of a multi-process run; 1 (the default) runs alone.")
  flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run, 0 .. num_processes - 1; "
                       "process 0 writes the workdir's files.")
  flags.DEFINE_float("distributed_timeout", 60.0, "Seconds a multi-process run waits for its coordinator and for "
                     "every process to join before it stops with one error line.")
  return config, workdir, extend


def check_distributed_settings(coordinator_address: str | None, num_processes: int, process_id: int,
                               timeout: float = 60.0) -> None:
  """Raises a `UserError` naming the flag when the multi-process flags do not describe one valid run."""
  if not timeout > 0:
    raise UserError(f"--distributed_timeout must be a positive number of seconds, got {timeout}")
  if num_processes < 1:
    raise UserError(f"--num_processes must be at least 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise UserError(f"--process_id must be in 0 .. {num_processes - 1} (--num_processes={num_processes}), "
                    f"got {process_id}")
  if num_processes == 1:
    if coordinator_address:
      raise UserError("--coordinator_address is for a multi-process run; set --num_processes > 1 too, or drop it")
    return
  if not coordinator_address:
    raise UserError(f"--num_processes={num_processes} needs --coordinator_address=HOST:PORT (the address of "
                    "process 0, the same on every process)")
  host, sep, port = coordinator_address.rpartition(":")
  if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
    raise UserError(f"--coordinator_address must be HOST:PORT with a port in 1 .. 65535, got "
                    f"{coordinator_address!r}")


def initialize_distributed() -> None:
  """Joins this process to a multi-process run when --num_processes > 1; does nothing for one process.

  Call it at the top of `main`, before anything touches a device (JAX fixes its backends at first use).
  Prints at once what it waits for; a process other than 0 first waits (up to --distributed_timeout
  seconds) until the coordinator's port accepts a TCP connection. Then sets gloo as the CPU collectives
  implementation (without it, CPU processes cannot run cross-process collectives; it has no effect on
  GPU/TPU) and calls `jax.distributed.initialize` with the rest of the timeout. After it, `jax.devices()`
  holds the devices of every process and `jax.process_index()` is --process_id.

  Raises:
    UserError: the flags are inconsistent (`check_distributed_settings`), or the coordinator did not answer
      in time. When the processes cannot all join in time (XLA would abort the process), one line is printed
      and the process exits with status 2.
  """
  import jax  # noqa: PLC0415 - keeps `--help` and flag errors fast

  f = flags.FLAGS
  timeout = f.distributed_timeout if "distributed_timeout" in f else 60.0
  check_distributed_settings(f.coordinator_address, f.num_processes, f.process_id, timeout)
  if f.num_processes == 1:
    return
  address, deadline = f.coordinator_address, time.monotonic() + timeout
  me = f"process {f.process_id} of {f.num_processes}"
  if f.process_id == 0:
    _say(f"{me}: hosting the coordinator at {address}; waiting up to {timeout:g} s for the other "
         f"{f.num_processes - 1} process{'es' if f.num_processes > 2 else ''} to join")
    give_up = (f"{me}: not every process joined the run at {address} within {timeout:g} s (start each with "
               f"--coordinator_address={address} --num_processes={f.num_processes} and its own --process_id; "
               "or raise --distributed_timeout)")
  else:
    _say(f"{me}: waiting up to {timeout:g} s for the coordinator at {address}")
    if not wait_for_port(address, deadline):
      raise UserError(f"{me}: no coordinator answered at {address} within {timeout:g} s (is process 0 running, "
                      "with the same --coordinator_address? raise --distributed_timeout to wait longer)")
    give_up = (f"{me}: the coordinator at {address} answers, but the run did not start within {timeout:g} s "
               "(not every process joined, or another program listens there)")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  remaining = max(1.0, deadline - time.monotonic())
  # XLA aborts the process when its own deadline passes; this timer ends it first, with one line.
  watchdog = threading.Timer(remaining, _exit_with, args=(give_up,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=f.num_processes,
                               process_id=f.process_id,
                               initialization_timeout=int(remaining) + _XLA_GRACE_S)
  except Exception as e:  # noqa: BLE001 - XLA raises its runtime error type for every failure to connect
    raise UserError(f"{me} could not join the run at {address}: {_one_line(e)[:300]}") from None
  finally:
    watchdog.cancel()


def wait_for_port(address: str, deadline: float) -> bool:
  """Whether `address` ('host:port', '[v6]:port') accepts a TCP connection before `deadline`
  (`time.monotonic()`), trying again every quarter second (its process may start later than this one)."""
  host, _, port = address.rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  while True:
    left = deadline - time.monotonic()
    if left <= 0:
      return False
    try:
      with socket.create_connection((host, int(port)), timeout=min(2.0, left)):
        return True
    except OSError:
      time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _say(message: str) -> None:
  """A progress line: on stdout, with the trainers' logs (stderr holds warnings and the error line only)."""
  print(message, flush=True)


def _exit_with(message: str) -> None:
  """One `prog: error:` line, then exit status 2 at once (the main thread is blocked inside XLA)."""
  print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
  os._exit(2)


def _interrupt(signum, frame) -> None:
  del signum, frame
  raise KeyboardInterrupt


def run(main: Callable[[list[str]], None], prog: str) -> None:
  """Runs `main` under absl with one-line errors for bad input (see the module docstring)."""
  global _PROG
  _PROG = prog
  # Ctrl-C raises KeyboardInterrupt wherever the main thread is. With Python's default handler in place,
  # asyncio.run (orbax's checkpoint finalisation) swaps in its own, which only cancels the running task, and
  # a task that completes anyway loses the interrupt; asyncio leaves a non-default handler alone.
  signal.signal(signal.SIGINT, _interrupt)

  def wrapped(argv):
    if logging.get_verbosity() == logging.INFO:  # the default: silence per-save INFO lines of orbax
      logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
      _fail(prog, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
      with exit_on_user_error(prog):
        main(argv)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT
      resume = " (rerun the same command to resume from the last checkpoint)" if "workdir" in flags.FLAGS else ""
      print(f"{prog}: interrupted{resume}", file=sys.stderr, flush=True)
      sys.exit(130)

  app.run(wrapped, flags_parser=_make_parser(prog))
