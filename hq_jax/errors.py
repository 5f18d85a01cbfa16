"""User-facing errors.

A `UserError` is bad input that the user can fix (a malformed file, an unknown flag value, an id out of
range). Binaries catch it at the top level, print its one-line message and exit non-zero without a
traceback; everything else is a bug and keeps its traceback.
"""

import contextlib
import sys


class UserError(Exception):
  """Bad input: the message names what is wrong and where."""


class NonFiniteLossError(UserError):
  """Training produced a non-finite loss; the message names the step."""


@contextlib.contextmanager
def exit_on_user_error(prog: str = "hq_jax"):
  """Turns a `UserError` into one `error: ...` line on stderr and exit status 2."""
  try:
    yield
  except UserError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
