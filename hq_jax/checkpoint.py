"""Checkpoints: the one place that talks to orbax.

Wraps the legacy `orbax.checkpoint.CheckpointManager` (stable across orbax 0.11-0.12) with the three calls the
trainers need: `latest_step`, `save`, `restore` against an abstract target (shapes and dtypes from
`jax.eval_shape`, so nothing is allocated twice and a mismatched checkpoint fails loudly). Saves block until
the step is on disk: a kill -9 after `save` returns never loses that step, and orbax writes each step to a
temporary folder first, so a kill during a save leaves the previous step intact.

Each step also stores a checksum of its arrays (`CHECKSUM_FILE`: CRC-32 of every leaf's bytes, with shape and
dtype) that `restore` compares with what it read: orbax/tensorstore detect damage in compressed chunks but not
in every small array, which would otherwise restore with other values and no error. A step saved without the
file (an older hq_jax, or a kill right after orbax committed it) restores unchecked. Every failed restore is
one `DamagedCheckpointError` line; `remove_unfinished_saves` and `damaged_step_folders` let the owner of a
folder clear what an interrupted save left and set aside steps that orbax would only log errors about.

Under several JAX processes (`hq_jax.cli.initialize_distributed`) every process calls `save` and `restore`
with the same step (orbax saves and restores collectively); the checksum is computed from the global values
of the arrays (gathered with `multihost_utils.process_allgather`, also a collective), written by process 0
only, and every process waits until it is on disk.
"""

import gc
import json
import os
import shutil
import sys
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from hq_jax.errors import UserError


# The suffix of the folder orbax writes a step into before renaming it to the step's number.
UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"
# Orbax's per-step metadata; when it does not parse, orbax logs an error on every read and restores anyway.
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# Inside a step folder: the checksum of the step's arrays (see the module docstring).
CHECKSUM_FILE = "hq_jax_checksum.json"


class DamagedCheckpointError(UserError):
  """A step that cannot be read back as it was saved; the message names the step and what failed."""

  def __init__(self, directory: str, step: int, reason: str):
    super().__init__(f"checkpoint {step} in {directory} is damaged ({reason})")
    self.step = step
    self.reason = reason


def state_checksum(state) -> list:
  """[[shape, dtype, crc32], ...] of the leaves of `state`, sorted (independent of the tree's container
  types, so that a restore in the saved structure compares too).

  Each leaf is checksummed with its global value: an array sharded over several processes is gathered
  first, so with several processes every process must call this with the same tree (a collective), and all
  get the same checksum.
  """
  out = []
  for x in jax.tree.leaves(state):
    dtype = getattr(x, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    a = np.ascontiguousarray(np.asarray(x))
    out.append([list(a.shape), str(a.dtype), zlib.crc32(a.reshape(-1).view(np.uint8))])
  return sorted(out)


def remove_unfinished_saves(directory: str) -> list[str]:
  """Deletes the temporary step folders that an interrupted save left in `directory`; returns their paths.

  Such a folder was never renamed to its step, so it never was a checkpoint (orbax would delete it too, with
  a log line, when it saves that step again). Only the process that owns `directory` may call this.
  """
  if not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    if UNFINISHED_SUFFIX in name:
      path = os.path.join(os.path.abspath(directory), name)
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def damaged_step_folders(directory: str) -> dict[int, str]:
  """{step: reason} for the step folders of `directory` that are damaged in a way orbax only logs about
  (on every read) instead of failing: a `STEP_METADATA_FILE` that does not parse, or a folder holding neither
  that file nor any data folder. Their owner should set them aside before orbax reads them."""
  out = {}
  if not os.path.isdir(directory):
    return out
  for name in os.listdir(directory):
    folder = os.path.join(directory, name)
    if not (name.isdigit() and os.path.isdir(folder)):
      continue
    path = os.path.join(folder, STEP_METADATA_FILE)
    if os.path.isfile(path):
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except (OSError, ValueError) as e:
        out[int(name)] = f"its {STEP_METADATA_FILE} does not parse: {e}"
    elif not any(entry.is_dir() for entry in os.scandir(folder)):
      out[int(name)] = f"its folder holds neither {STEP_METADATA_FILE} nor data"
  return out


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a pytree of arrays in `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    """Writes `state` (a pytree of jax/numpy arrays and scalars) as `step` and waits for it."""
    state = jax.tree.map(lambda x: np.asarray(x) if np.isscalar(x) else x, state)
    checksum = state_checksum(state)
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      path = os.path.join(self.directory, str(step), CHECKSUM_FILE)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"leaves": checksum}, f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(path + ".tmp", path)
    sync_processes(f"hq_jax checksum of step {step}")

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the latest) into the structure, shapes and dtypes of `abstract_state`.

    Raises:
      DamagedCheckpointError: orbax cannot read the step, or the arrays read differ from those saved.
    """
    abstract_state = jax.tree.map(_abstract, abstract_state)
    return self._restore(self._step(step), ocp.args.StandardRestore(abstract_state))

  def restore_as_saved(self, step: int | None = None):
    """Restores `step` (default: the latest) as nested dicts/lists of numpy arrays, in the saved structure.

    For reading parts of a checkpoint written by a different config (e.g. warm starts); validate what
    you take from it. Raises as `restore`.
    """
    return self._restore(self._step(step), ocp.args.StandardRestore())

  def _restore(self, step: int, args):
    """orbax's restore of `step`, checked against the step's checksum; every failure is one clean error.

    A failed read leaves orbax coroutines behind whose finalisers print "Exception ignored in: <coroutine
    ...> Traceback ..." (~130 lines) to stderr, now or at exit; those messages are dropped (`_quiet_orbax`).
    """
    try:
      return self._verified(step, self._manager.restore(step, args=args))
    except DamagedCheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many kinds for damaged data
      reason = _first_line(e)
    _quiet_orbax()
    gc.collect()
    raise DamagedCheckpointError(self.directory, step, reason)

  def _verified(self, step: int, state):
    """`state` if it has the checksum saved with `step` (or none was saved); else DamagedCheckpointError."""
    path = os.path.join(self.directory, str(step), CHECKSUM_FILE)
    # Read the saved checksum before the collective below: once a process is past it, it may find the step
    # damaged and move it aside, and a process that read the file only then would find none and go on.
    saved, problem = None, None
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)["leaves"]
    except FileNotFoundError:
      pass
    except (OSError, ValueError, KeyError, TypeError) as e:
      problem = f"its {CHECKSUM_FILE} is unreadable: {e}"
    got = state_checksum(state)  # with several processes a collective that every process joins
    if saved is None and problem is None:
      return state
    if problem is None and got != saved:
      problem = "the arrays read differ from those saved: checksum mismatch"
    if problem:
      raise DamagedCheckpointError(self.directory, step, problem)
    return state

  def _step(self, step: int | None) -> int:
    """`step`, or the latest one when None; FileNotFoundError when there is none."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def shape_mismatch(self, abstract_state, step: int) -> str:
    """'' when `step`'s stored arrays have the shapes and dtypes of `abstract_state`'s leaves (as multisets),
    else a short description of the difference. Unreadable metadata counts as a match (the step is then
    damaged, not different)."""
    try:
      stored = self._manager.item_metadata(step)
      stored = getattr(stored, "tree", stored)
      theirs = sorted((tuple(m.shape), str(m.dtype)) for m in jax.tree.leaves(stored) if hasattr(m, "shape"))
    except Exception:  # noqa: BLE001 - damaged metadata: not a mismatch
      return ""
    ours = sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(jax.tree.map(_abstract, abstract_state)))
    if theirs == ours:
      return ""
    missing = [s for s in ours if s not in theirs][:2]
    extra = [s for s in theirs if s not in ours][:2]
    return (f"{len(theirs)} stored arrays vs {len(ours)} expected; expected but not stored: {missing}; "
            f"stored but not expected: {extra}")

  def reload(self) -> None:
    """Re-reads the steps on disk (after a step folder was moved away)."""
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def sync_processes(name: str) -> None:
  """Waits until every JAX process got here (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _quiet_orbax() -> None:
  """Installs (once) an unraisable-exception hook that drops those of orbax's coroutines and passes on the
  rest to the hook that was there."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_orbax_coroutines", False):
    return

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return
    previous(unraisable)

  hook.drops_orbax_coroutines = True
  sys.unraisablehook = hook


def _first_line(e: BaseException) -> str:
  """The first line of an orbax / tensorstore error, without the TensorStore spec dump that follows it."""
  text = str(e).strip().splitlines()
  text = text[0].split(" See full TensorStore details")[0] if text else type(e).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  x = np.asarray(x) if np.isscalar(x) else x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
