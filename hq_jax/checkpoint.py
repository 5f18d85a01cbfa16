"""Checkpoints: the one place that talks to orbax.

Wraps the legacy `orbax.checkpoint.CheckpointManager` (stable across orbax 0.11-0.12) with the three calls the
trainers need: `latest_step`, `save`, `restore` against an abstract target (shapes and dtypes from
`jax.eval_shape`, so nothing is allocated twice and a mismatched checkpoint fails loudly). Saves block until
the step is on disk: a kill -9 after `save` returns never loses that step, and orbax writes each step to a
temporary folder first, so a kill during a save leaves the previous step intact.
"""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp


# The suffix of the folder orbax writes a step into before renaming it to the step's number.
UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"


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
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the latest) into the structure, shapes and dtypes of `abstract_state`."""
    abstract_state = jax.tree.map(_abstract, abstract_state)
    return self._manager.restore(self._step(step), args=ocp.args.StandardRestore(abstract_state))

  def restore_as_saved(self, step: int | None = None):
    """Restores `step` (default: the latest) as nested dicts/lists of numpy arrays, in the saved structure.

    For reading parts of a checkpoint written by a different config (e.g. warm starts); validate what
    you take from it.
    """
    return self._manager.restore(self._step(step), args=ocp.args.StandardRestore())

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


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  x = np.asarray(x) if np.isscalar(x) else x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
