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

Each save is verified at once: the step's smallest array is read back through orbax and compared with its
checksum (milliseconds), so a file system or path on which orbax writes checkpoints it cannot read back
stops the run with one line at its first save (`UnreadableCheckpointError`) instead of reporting success.
A step that was never readable (orbax committed it without its OCDBT index) is named as such on restore,
never called damaged.

Orbax finds its per-process files with a glob over the step's own path, so a directory whose path holds
`[` or `]` (glob patterns) gets checkpoints that never read back (orbax 0.12.8, `merge_ocdbt_per_process_files`
skips the merge). Such a directory is reached through a bracket-free symbolic link in the temporary folder
(`orbax_path`); messages name the real directory.

Failed reads are drained: orbax runs each restore in a fresh asyncio loop and closes it when the first read
fails, while the other reads of the same restore are still in flight; their callbacks would then fail on the
closed loop ("Exception ignored ... RuntimeError: Event loop is closed", pytest's
PytestUnraisableExceptionWarning). Under `_draining_loops` the pending reads finish first, and the loop stays
open for the tensorstore callbacks still to come (`_DrainingLoop`).

Under several JAX processes (`hq_jax.cli.initialize_distributed`) every process calls `save` and `restore`
with the same step (orbax saves and restores collectively); the checksum is computed from the global values
of the arrays (gathered with `multihost_utils.process_allgather`, also a collective), written by process 0
only, and every process waits until it is on disk.
"""

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from hq_jax import strict_json
from hq_jax.errors import UserError


# The suffix of the folder orbax writes a step into before renaming it to the step's number.
UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"
# Orbax's per-step metadata; when it does not parse, orbax logs an error on every read and restores anyway.
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# Inside a step folder: the checksum of the step's arrays (see the module docstring).
CHECKSUM_FILE = "hq_jax_checksum.json"


class UnreadableCheckpointError(UserError):
  """A step orbax committed but cannot read back (at the save that wrote it, or one that never was readable):
  not damage, so it is never set aside as damaged."""


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


# Characters that orbax's globs over a checkpoint's own path treat as a pattern (see the module docstring).
_GLOB_BRACKETS = "[]"


def orbax_path(directory: str) -> str:
  """A path to `directory` (absolute) that orbax can glob: the path itself, or when it holds `[` or `]` a
  symbolic link to it in the temporary folder, named by a hash of the path (every process and rerun gets
  the same one; it is left in place, a few bytes).

  Raises:
    UserError: the path holds brackets and no bracket-free link to it can be made.
  """
  directory = os.path.abspath(directory)
  if not any(c in directory for c in _GLOB_BRACKETS):
    return directory
  os.makedirs(directory, exist_ok=True)
  links = os.path.join(tempfile.gettempdir(), f"hq_jax-checkpoint-links-{getattr(os, 'getuid', lambda: 0)()}")
  link = os.path.join(links, hashlib.sha256(directory.encode("utf-8", "surrogateescape")).hexdigest()[:24])
  try:
    if any(c in link for c in _GLOB_BRACKETS):
      raise OSError(f"the temporary folder {links} holds '[' or ']' too")
    if not (os.path.islink(link) and os.readlink(link) == directory):
      os.makedirs(links, exist_ok=True)
      tmp = f"{link}.{os.getpid()}.tmp"
      if os.path.lexists(tmp):
        os.remove(tmp)
      os.symlink(directory, tmp)
      os.replace(tmp, link)
  except OSError as e:
    raise UserError(f"{directory}: orbax cannot restore checkpoints under a path with '[' or ']', and no link "
                    f"without them could be made ({e}); use a --workdir without '[' and ']'") from None
  return link


class _DrainingLoop(asyncio.SelectorEventLoop):
  """An event loop for orbax's reads that outlives their failure (see the module docstring).

  `close()` (orbax calls it when its coroutine returns or raises) first lets the tasks still pending on the
  loop finish, retrieving their exceptions (the failure already reported them), then leaves the loop open:
  tensorstore operations that were started but never awaited still call back into it when they complete,
  and each of them holds a reference to it. The loop closes when it is garbage collected, that is once the
  last of them is done.
  """

  def close(self):
    if not self.is_closed() and not self.is_running():
      pending = [t for t in asyncio.all_tasks(self) if not t.done()]
      if pending:
        self.run_until_complete(asyncio.wait(pending, timeout=120))
        for t in pending:
          if t.done() and not t.cancelled():
            t.exception()

  def __del__(self):
    if not self.is_closed() and not self.is_running():
      super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
  _loop_factory = _DrainingLoop


@contextlib.contextmanager
def _draining_loops():
  """While active, the fresh event loops orbax makes for its reads are `_DrainingLoop`s."""
  previous = asyncio.get_event_loop_policy()
  if isinstance(previous, _DrainingPolicy) or type(previous) is not asyncio.DefaultEventLoopPolicy:
    yield  # already draining, or another policy (e.g. uvloop) that we leave alone
    return
  asyncio.set_event_loop_policy(_DrainingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


def never_readable_reason(step_folder: str) -> str:
  """Why a committed step can never be read, or '' when nothing says so: each item folder that holds
  per-process OCDBT databases (`ocdbt.process_*`) needs the root `manifest.ocdbt` that indexes them, which
  orbax writes when it merges them at the end of the save (it skipped the merge under a path with '[' or
  ']': see the module docstring)."""
  try:
    items = [e for e in os.scandir(step_folder) if e.is_dir()]
    for item in items:
      names = os.listdir(item.path)
      if any(n.startswith("ocdbt.process_") for n in names) and "manifest.ocdbt" not in names:
        return (f"orbax committed it without the OCDBT index of its arrays ({item.name}/manifest.ocdbt), as "
                "it does when the path holds '[' or ']'")
  except OSError:
    return ""
  return ""


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a pytree of arrays in `directory`."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)  # what messages name
    self._orbax_directory = orbax_path(self.directory)  # what orbax is given
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self._orbax_directory, options=options,
                                           item_handlers=ocp.StandardCheckpointHandler())
    self._leaf_reader = None  # an orbax PyTree checkpointer for `_verify_saved`, made at the first save

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state) -> None:
    """Writes `state` (a pytree of jax/numpy arrays and scalars) as `step`, waits for it and verifies that it
    reads back (`_verify_saved`).

    Raises:
      UnreadableCheckpointError: orbax committed the step but cannot read it back.
    """
    state = jax.tree.map(lambda x: np.asarray(x) if np.isscalar(x) else x, state)
    checksum = state_checksum(state)
    if self._orbax_directory != self.directory:
      orbax_path(self.directory)  # the link again, should a cleaner of the temporary folder have removed it
    with _draining_loops():
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    if jax.process_index() == 0:
      path = os.path.join(self.directory, str(step), CHECKSUM_FILE)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        strict_json.dump({"leaves": checksum}, f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(path + ".tmp", path)
    sync_processes(f"hq_jax checksum of step {step}")
    self._verify_saved(step, checksum)

  def _verify_saved(self, step: int, checksum: list) -> None:
    """Reads the smallest array of `step` back through orbax (the way a restore reads it: metadata, the OCDBT
    index, the data) and compares it with its entry of `checksum`; one `UnreadableCheckpointError` line when
    it fails. Every process calls it (a collective read under several processes)."""
    problem = ""
    try:
      with _draining_loops():
        tree = self._manager.item_metadata(step)
        tree = getattr(tree, "tree", tree)
        leaves = [(path, m) for path, m in jax.tree_util.tree_flatten_with_path(tree)[0]
                  if hasattr(m, "shape") and all(isinstance(k, jax.tree_util.DictKey) for k in path)
                  and np.dtype(m.dtype).kind in "biuf"]
        if not leaves:
          return  # nothing an orbax partial read can address: the step is checked on restore
        path, meta = min(leaves, key=lambda pm: int(np.prod(pm[1].shape)))
        item, args = {}, {}  # the tree down to that leaf alone, and how to read it (as a NumPy array)
        item_node, args_node = item, args
        for key in path[:-1]:
          item_node, args_node = item_node.setdefault(key.key, {}), args_node.setdefault(key.key, {})
        item_node[path[-1].key] = 0
        args_node[path[-1].key] = ocp.RestoreArgs(restore_type=np.ndarray)
        if self._leaf_reader is None:
          self._leaf_reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        got = self._leaf_reader.restore(os.path.join(self._orbax_directory, str(step), "default"),
                                        args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                                    partial_restore=True))
      value = np.ascontiguousarray(np.asarray(jax.tree.leaves(got)[0]))
      entry = [list(value.shape), str(value.dtype), zlib.crc32(value.reshape(-1).view(np.uint8))]
      if entry not in checksum:
        problem = f"its array {jax.tree_util.keystr(path)} reads back with other values than were saved"
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many kinds
      problem = _first_line(e)
    if problem:
      raise UnreadableCheckpointError(
          f"checkpoint {step} in {self.directory} was saved but does not read back ({problem}); stopped, "
          "since no rerun could resume from it (is the folder on a file system that orbax supports?)")

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

    Raises:
      UnreadableCheckpointError: the step was never readable (`never_readable_reason`).
      DamagedCheckpointError: orbax cannot read the step, or the arrays read differ from those saved.
    """
    try:
      with _draining_loops():
        restored = self._manager.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many kinds for damaged data
      reason = _first_line(e)
    else:
      return self._verified(step, restored)
    never = never_readable_reason(os.path.join(self.directory, str(step)))
    if never:
      raise UnreadableCheckpointError(
          f"checkpoint {step} in {self.directory} was never readable: {never}; it is not damaged and was left "
          f"in place (hq_jax now saves through a path without them): start over in a new --workdir, or move "
          f"{self.directory} away")
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
      with _draining_loops():
        stored = self._manager.item_metadata(step)
      stored = getattr(stored, "tree", stored)
      theirs = sorted((tuple(m.shape), str(m.dtype)) for m in jax.tree.leaves(stored) if hasattr(m, "shape"))
    except Exception:  # noqa: BLE001 - damaged metadata: not a mismatch
      return ""
    ours = sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(jax.tree.map(_abstract, abstract_state)))
    if theirs == ours:
      return ""
    # Multiset differences: a state with one more (1,) float32 array than stored names that array.
    missing = sorted((collections.Counter(ours) - collections.Counter(theirs)).elements())[:2]
    extra = sorted((collections.Counter(theirs) - collections.Counter(ours)).elements())[:2]
    return (f"{len(theirs)} stored arrays vs {len(ours)} expected; expected but not stored: {missing}; "
            f"stored but not expected: {extra}")

  def stored_leaves(self, step: int) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    """{`path_key` of each stored array: (shape, dtype)} of `step` (from its metadata; {} when unreadable)."""
    try:
      with _draining_loops():
        stored = self._manager.item_metadata(step)
      stored = getattr(stored, "tree", stored)
      return {path_key(path): (tuple(int(n) for n in m.shape), str(m.dtype))
              for path, m in jax.tree_util.tree_flatten_with_path(stored)[0] if hasattr(m, "shape")}
    except Exception:  # noqa: BLE001 - damaged metadata: the restore reports it
      return {}

  def reload(self) -> None:
    """Re-reads the steps on disk (after a step folder was moved away)."""
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def path_key(path) -> tuple[str, ...]:
  """A leaf's tree path as names, the same for the tree that was saved (nested dicts and lists, as orbax
  stores it) and for the trainer's tree (NNX states, tuples, attributes)."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def sync_processes(name: str) -> None:
  """Waits until every JAX process got here (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _first_line(e: BaseException) -> str:
  """The first line of an orbax / tensorstore error, without the TensorStore spec dump that follows it."""
  text = str(e).strip().splitlines()
  text = text[0].split(" See full TensorStore details")[0].split(" [tensorstore_spec=")[0] if text else type(e).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  x = np.asarray(x) if np.isscalar(x) else x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
