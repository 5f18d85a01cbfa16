"""Shared entry point for the absl binaries in `experiments/`.

`run(main, prog)` is `absl.app.run` with the behaviour users expect from a research binary: a bad flag, an
unknown `--config.` field or a missing config file gives one `prog: error: ...` line and exit status 2 (no
traceback, no usage dump), `UserError`s raised by `main` do the same, and orbax/absl INFO chatter is kept
out of the way unless `-v` / `--verbosity` asks for it.
"""

import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from hq_jax.errors import exit_on_user_error


def _fail(prog: str, message: str) -> None:
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text.strip("\"'") if text else type(e).__name__


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
  """The flags every trainer binary takes: --config (a config file), --workdir and --extend.

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
  return config, workdir, extend


def run(main: Callable[[list[str]], None], prog: str) -> None:
  """Runs `main` under absl with one-line errors for bad input (see the module docstring)."""

  def wrapped(argv):
    if logging.get_verbosity() == logging.INFO:  # the default: silence per-save INFO lines of orbax
      logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
      _fail(prog, f"unexpected arguments: {' '.join(argv[1:])}")
    with exit_on_user_error(prog):
      main(argv)

  app.run(wrapped, flags_parser=_make_parser(prog))
