"""The run protocol shared by both trainers: one workdir per run, resumable, never mixing configs (ours).

A workdir holds

* `config.json`: the config the run was started with (and any recorded continuations);
* `checkpoints/`: orbax checkpoints (`hq_jax.checkpoint`); damaged ones are moved to `checkpoints_damaged/`;
* `metrics.jsonl`: one JSON record per line, each with a `step` key;
* every JSON file is strict (`hq_jax.strict_json`): a number that is not finite is null, with the reason in
  a sibling key `<name>_reason`;
* `results.json` and `export.npz`: what the final metrics were computed from.

`RunDir` is the protocol both trainers follow:

1. `RunDir(workdir, config, ...)` compares `config` with the stored `config.json`: any difference in a key
   that changes the result stops the run with one `UserError` line naming the keys. Only a larger epoch
   budget may differ, and only with `extend=True` (the binaries' `--extend` flag); it is then recorded as a
   continuation in `config.json` and `results.json`. A key added to the config after the workdir was
   created matches when it holds the value that keeps the old behaviour (the trainer's `added_keys`), so a
   newer hq_jax resumes and re-evaluates older runs.
2. `restore(abstract_state)` resumes from the newest checkpoint that restores with the arrays that were saved
   (`hq_jax.checkpoint` stores a checksum with each step); a damaged one (a bad disk, a partial copy) is
   reported in one warning line and moved aside, never deleted; one that was never readable is named in one
   error line and left in place. A checkpoint written on a mesh that padded the table to another row count
   restores too (`unpadded_rows`: zero padding rows added or dropped).
3. `check_finite(losses, ...)` is called once per epoch with the epoch's losses (one host sync) and raises
   `NonFiniteLossError` with a message that is true whether or not a checkpoint exists yet.
4. Every file is written atomically (temporary file in the same folder, then `os.replace`), so a kill during
   any write leaves either the old file or the new one, never a half file that a rerun trusts; the next
   `RunDir` deletes the temporary files and unfinished checkpoint saves that a killed run left behind.
5. Under several JAX processes (`hq_jax.cli.initialize_distributed`) every process creates the `RunDir` and
   makes the same calls; process 0 alone writes, moves and deletes files (the workdir must be on a file
   system that every process sees), and checkpoints are saved and restored collectively.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from hq_jax import strict_json
from hq_jax.checkpoint import (Checkpointer, DamagedCheckpointError, damaged_step_folders, path_key,
                               remove_unfinished_saves, sync_processes)
from hq_jax.errors import NonFiniteLossError, UserError

CONFIG_FILE = "config.json"
DAMAGED_DIR = "checkpoints_damaged"


# Every JSON value the workdir writes or compares goes through the one rule of `hq_jax.strict_json`
# (non-finite numbers -> null with a `<name>_reason` beside them; never NaN or Infinity in a file).
_jsonable = strict_json.json_safe


# ----------------------------------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------------------------------


# Temporary files beside NAME: '.NAME.tmpPID' (`atomic_write`) and '.NAME.XXXXXXXX.tmp' (`tempfile.mkstemp`,
# `hq_jax.export.save_export`).
_TMP_FILE = re.compile(r"\..+\.tmp[0-9]+|\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: str, write: Callable[[io.IOBase], None], *, binary: bool = False) -> None:
  """Calls `write(f)` on a temporary file beside `path`, syncs it, then renames it onto `path`.

  A kill at any moment leaves `path` either as it was or complete; the temporary file is removed on errors
  (after a kill, by the next `RunDir` on the folder).
  """
  folder = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
  try:
    with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented, strict JSON (`hq_jax.strict_json`: no NaN / Infinity) atomically."""
  atomic_write(path, lambda f: f.write(strict_json.dumps(obj, indent=2) + "\n"))


def write_npz(path: str, arrays: dict) -> None:
  """Writes `arrays` as an uncompressed .npz atomically."""
  atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class MetricsLog:
  """A JSON-lines log, one record per line, each with a `step` key; every change rewrites it atomically.

  With `writer=False` (the processes other than 0 of a multi-process run) changes are not written.
  """

  def __init__(self, path: str, *, writer: bool = True):
    self.path = path
    self.writer = writer

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]

  def _write(self, records: Sequence[dict]) -> None:
    if not self.writer:
      return
    atomic_write(self.path, lambda f: f.writelines(strict_json.dumps(r) + "\n" for r in records))

  def append(self, record: dict) -> None:
    self._write(self.read() + [record])

  def set_final(self, record: dict) -> None:
    """Appends `record` marked `"final": true`. An earlier final record at the same step (a rerun's
    re-evaluation) is replaced; one at another step (the end of the run before `--extend`) stays, unmarked,
    as the evaluation it was."""
    kept = []
    for r in self.read():
      if r.get("final"):
        if r.get("step") == record.get("step"):
          continue
        r = {k: v for k, v in r.items() if k != "final"}
      kept.append(r)
    self._write(kept + [dict(record, final=True)])

  def truncate_after(self, step: int) -> None:
    """Drops records with `step` > `step` (written after the checkpoint a resumed run starts from)."""
    self._write([r for r in self.read() if r.get("step", 0) <= step])


# ----------------------------------------------------------------------------------------------------------
# Config comparison
# ----------------------------------------------------------------------------------------------------------


def flatten_config(config) -> dict:
  """{'train.epochs': 200, ...}: the config as dotted keys with JSON values (tuples become lists)."""
  out = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}{k}.", v)
    else:
      out[prefix[:-1]] = node

  walk("", _jsonable(config))
  return out


def config_differences(stored: dict, current: dict, ignore: Iterable[str] = (),
                       added_keys: Mapping[str, Any] | None = None) -> list[str]:
  """Dotted keys whose values differ between two configs (or exist in one only), minus `ignore`.

  `added_keys` {dotted key: value}: keys newer than `stored` may be; absent from `stored`, each counts as
  that value (the one that keeps the behaviour from before the key existed).
  """
  a, b = flatten_config(stored), flatten_config(current)
  a = {**_jsonable(dict(added_keys or {})), **a}
  ignore = set(ignore)
  return sorted(k for k in a.keys() | b.keys() if k not in ignore and a.get(k, KeyError) != b.get(k, KeyError))


def holds_config(workdir: str, config, ignore: Iterable[str] = (), added_keys: Mapping[str, Any] | None = None) -> bool:
  """Whether `workdir`'s config.json records `config`, as a `RunDir` rerun would accept it (up to `ignore`
  and `added_keys`, see `config_differences`); False when it has none or it cannot be read."""
  try:
    stored = read_json(os.path.join(workdir, CONFIG_FILE))["config"]
  except (OSError, ValueError, KeyError, TypeError):
    return False
  return not config_differences(stored, _jsonable(config), ignore, added_keys)


# ----------------------------------------------------------------------------------------------------------
# The run protocol
# ----------------------------------------------------------------------------------------------------------


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


class RunDir:
  """One run's workdir (see the module docstring).

  Args:
    workdir: the folder (created if needed).
    config: the run's ml_collections config (or a dict).
    epochs_key: the dotted key of the epoch budget ('train.epochs', 'train.max_epochs').
    ignore: dotted keys that do not change the result (logging and evaluation cadence, batch size of
      evaluation, caches, simulated interruptions); they may differ between reruns.
    extend: allow a larger epoch budget than the stored one (recorded as a continuation).
    max_to_keep: checkpoints kept.
    added_keys: {dotted key: value} of keys added to the config after older workdirs were created, with
      the value that keeps the old behaviour (`config_differences`).

  Raises:
    UserError: the stored config differs in a key outside `ignore`, or the epoch budget shrank / grew
      without `extend`.
  """

  def __init__(self, workdir: str, config, *, epochs_key: str, ignore: Iterable[str] = (), extend: bool = False,
               max_to_keep: int = 2, added_keys: Mapping[str, Any] | None = None):
    self.workdir = workdir
    self.writer = jax.process_index() == 0  # the process that writes the workdir's files
    os.makedirs(workdir, exist_ok=True)
    self.config = _jsonable(config)
    self.continuations: list[dict] = []
    self._added_keys = dict(added_keys or {})
    self._check_config(epochs_key, tuple(ignore), extend)
    self._damaged: list[int] = []  # steps moved aside by this run
    if self.writer:
      self._remove_unfinished_writes()
      for step, reason in sorted(damaged_step_folders(self.path("checkpoints")).items(), reverse=True):
        self._report_damaged(step, reason)
    sync_processes(f"hq_jax RunDir {os.path.abspath(workdir)}")
    self.checkpoints = Checkpointer(self.path("checkpoints"), max_to_keep=max_to_keep)
    self.metrics = MetricsLog(self.path("metrics.jsonl"), writer=self.writer)
    self.resumed_step: int | None = None

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def _check_config(self, epochs_key: str, ignore: tuple[str, ...], extend: bool) -> None:
    path = self.path(CONFIG_FILE)
    if not os.path.exists(path):
      if not self.writer:
        return
      if os.path.isdir(self.path("checkpoints")) and os.listdir(self.path("checkpoints")):
        _warn(f"{self.workdir} has checkpoints but no {CONFIG_FILE} (written by an older hq_jax); "
              "recording this run's config as the workdir's")
      write_json(path, {"config": self.config, "continuations": [], "created": now_iso()})
      return
    try:
      stored = read_json(path)
      stored_config = stored["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"{path}: unreadable ({e}); move it away to adopt this run's config") from None
    self.continuations = list(stored.get("continuations", []))
    differing = config_differences(stored_config, self.config, ignore, self._added_keys)
    old, new = flatten_config(stored_config).get(epochs_key), flatten_config(self.config).get(epochs_key)
    if epochs_key in differing and isinstance(old, int) and isinstance(new, int) and new > old and extend:
      differing.remove(epochs_key)
      if not differing:
        self.continuations.append({"from_epochs": old, "to_epochs": new, "at": now_iso()})
        if not self.writer:
          return
        write_json(path, dict(stored, config=self.config, continuations=self.continuations))
        _warn(f"{self.workdir}: continuing the run from {epochs_key}={old} to {new} (recorded in {CONFIG_FILE})")
        return
    if differing:
      shown = ", ".join(f"{k} ({_show(flatten_config(stored_config).get(k))} -> "
                        f"{_show(flatten_config(self.config).get(k))})" for k in differing[:6])
      more = f" and {len(differing) - 6} more" if len(differing) > 6 else ""
      hint = (f"; pass --extend to continue it to {epochs_key}={new}" if differing == [epochs_key] and
              isinstance(old, int) and isinstance(new, int) and new > old else "")
      raise UserError(f"{self.workdir} was started with another config: {shown}{more}; use a new --workdir, "
                      f"or rerun with the stored config ({path}){hint}")

  def _remove_unfinished_writes(self) -> None:
    """Deletes what a killed run left half-written: temporary files of `atomic_write` (silently) and
    checkpoint saves that never finished (one warning line each); finished files are never touched."""
    for name in os.listdir(self.workdir):
      if _TMP_FILE.fullmatch(name) and os.path.isfile(self.path(name)):
        os.remove(self.path(name))
    for path in remove_unfinished_saves(self.path("checkpoints")):
      _warn(f"removed {path}: a checkpoint save that was interrupted before it finished")

  # ---- checkpoints

  def restore(self, abstract_state, *, unpadded_rows: int | None = None):
    """The newest checkpoint that restores into `abstract_state`'s structure, or None when there is none.

    Stored shapes and dtypes are compared with `abstract_state` first (from the checkpoint's metadata). A
    checkpoint that then fails to restore, or restores other arrays than were saved (its checksum), is
    damaged: one warning line, then it is moved to `checkpoints_damaged/` and the next older one is tried.

    Mesh padding: with `unpadded_rows` (the table's true row count) given, a checkpoint whose arrays differ
    from `abstract_state` only in the padded row count of the table (leaves of `abstract_state` with a
    leading dimension equal to the padded table rows, stored with another row count >= `unpadded_rows`) is
    restored anyway: zero rows are added, or padding rows dropped. Padding rows are exactly zero in every
    such leaf (parameters and optimizer state: no id indexes them, so their gradient is 0 and every optimizer
    keeps them at 0); rows to be dropped are checked to be zero.

    Raises:
      UserError: a checkpoint's stored shapes differ from `abstract_state` (code or config changed), or
        every checkpoint was damaged.
      UnreadableCheckpointError: a checkpoint was never readable (`hq_jax.checkpoint`); it stays in place.
    """
    for step in sorted(self.checkpoints.all_steps(), reverse=True):
      mismatch = self.checkpoints.shape_mismatch(abstract_state, step)  # orbax would restore other shapes
      repad = None
      if mismatch and unpadded_rows is not None:
        repad = self._padding_difference(abstract_state, step, unpadded_rows)
      if mismatch and repad is None:
        raise UserError(f"{self.checkpoints.directory}: checkpoint {step} does not match this run's state "
                        f"({mismatch}); use a new --workdir")
      try:
        if repad is None:
          state = self.checkpoints.restore(abstract_state, step)
        else:
          state = self.checkpoints.restore(repad[0], step)
      except DamagedCheckpointError as e:
        if self.writer:
          self._report_damaged(step, e.reason)
        else:
          self._damaged.append(step)
        sync_processes(f"hq_jax damaged checkpoint {step}")
        self.checkpoints.reload()
        continue
      if repad is not None:
        state = self._repadded(state, abstract_state, step, *repad[1:])
      self.resumed_step = step
      return state
    if self._damaged:
      raise UserError(f"{self.checkpoints.directory}: no checkpoint restores (damaged: steps "
                      f"{', '.join(map(str, self._damaged))}, moved to {self.path(DAMAGED_DIR)}); rerun to start "
                      "over from scratch, or restore a copy of the checkpoints")
    return None

  def _padding_difference(self, abstract_state, step: int, unpadded_rows: int):
    """(restore target, stored rows, padded rows, indices of the leaves to re-pad) when `step` differs from
    `abstract_state` only in the padded row count of the table (see `restore`), else None.

    Leaves are matched by their path in the tree; each differing leaf must differ in its leading dimension
    alone, all by the same pair of row counts, both at least `unpadded_rows`. The target has the stored row
    count there, placed replicated on the mesh of `abstract_state` (it need not divide over it)."""
    stored = self.checkpoints.stored_leaves(step)
    flat, treedef = jax.tree_util.tree_flatten_with_path(jax.tree.map(_abstract_leaf, abstract_state))
    if len(stored) != len(flat):
      return None
    pairs, resize = set(), []
    for i, (path, x) in enumerate(flat):
      theirs = stored.get(path_key(path))
      if theirs is None:
        return None
      shape, dtype = theirs
      if shape == tuple(x.shape) and dtype == str(x.dtype):
        continue
      if not (x.shape and shape and shape[1:] == tuple(x.shape[1:]) and dtype == str(x.dtype)):
        return None
      pairs.add((shape[0], x.shape[0]))
      resize.append(i)
    if len(pairs) != 1:
      return None
    stored_rows, padded = pairs.pop()
    if min(stored_rows, padded) < unpadded_rows:
      return None
    leaves = [_with_rows(x, stored_rows) if i in resize else x for i, (_, x) in enumerate(flat)]
    return jax.tree.unflatten(treedef, leaves), stored_rows, padded, frozenset(resize)

  def _repadded(self, state, abstract_state, step: int, stored: int, padded: int, resize: frozenset):
    """`state` (restored with `stored` rows in the leaves `resize`) with `padded` rows there, placed as
    `abstract_state` says."""
    targets = jax.tree.leaves(jax.tree.map(_abstract_leaf, abstract_state))
    leaves, treedef = jax.tree.flatten(state)
    problems = []
    for i in sorted(resize):
      host = _host_value(leaves[i])
      if padded < stored:
        nonzero = np.any(host[padded:].reshape(stored - padded, -1), axis=1)
        if nonzero.any():
          problems.append(f"{int(np.count_nonzero(nonzero))} of its rows {padded}..{stored - 1} are not zero")
        host = host[:padded]
      else:
        host = np.concatenate([host, np.zeros((padded - stored,) + host.shape[1:], host.dtype)])
      sharding = targets[i].sharding
      if isinstance(sharding, jax.sharding.Sharding):
        leaves[i] = jax.make_array_from_callback(host.shape, sharding, lambda index, host=host: host[index])
      else:
        leaves[i] = jax.numpy.asarray(host)
    if problems:
      raise UserError(f"{self.checkpoints.directory}: checkpoint {step} was written on a mesh that pads the table "
                      f"to {stored} rows, this mesh pads it to {padded}, but {problems[0]} (they would be "
                      f"padding); rerun on a mesh that pads to {stored} rows (the one that wrote it)")
    print(f"checkpoint {step}: written on a mesh that pads the table to {stored} rows, restored with this mesh's "
          f"{padded} ({'zero rows added' if padded > stored else 'zero padding rows dropped'})", flush=True)
    return jax.tree.unflatten(treedef, leaves)

  def _report_damaged(self, step: int, reason: str) -> None:
    """Moves checkpoint `step` to checkpoints_damaged/ (never deletes it) with one warning line."""
    directory = os.path.abspath(self.path("checkpoints"))
    target_root = self.path(DAMAGED_DIR)
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, str(step))
    suffix = 1
    while os.path.exists(target):
      target = os.path.join(target_root, f"{step}.{suffix}")
      suffix += 1
    shutil.move(os.path.join(directory, str(step)), target)
    self._damaged.append(step)
    _warn(f"checkpoint {step} in {directory} is damaged ({reason}); moved to {target}")

  def save(self, step: int, state) -> None:
    self.checkpoints.save(step, state)

  def latest_step(self) -> int | None:
    return self.checkpoints.latest_step()

  # ---- checks and outputs

  def check_finite(self, losses, *, epoch: int, first_step: int, where: str = "") -> None:
    """Raises NonFiniteLossError naming the first non-finite loss of an epoch and the true resume point.

    Args:
      losses: (steps,) the epoch's losses (one host transfer).
      epoch: 0-based epoch the losses belong to.
      first_step: optimizer steps done before losses[0] (its 0-based global index).
      where: extra context for the message (e.g. 'search phase').

    The message counts from 1, like the logs: step (over the run), epoch and batch (within the epoch).
    """
    losses = np.asarray(losses)
    finite = np.isfinite(losses)
    if finite.all():
      return
    bad = int(np.flatnonzero(~finite)[0])
    last = self.latest_step()
    context = f", {where}" if where else ""
    if last is None:
      resume = ("no checkpoint was written yet, so nothing to resume: start again in a new --workdir with a "
                "lower train.learning_rate (or other settings)")
    else:
      resume = (f"the last good checkpoint is step {last} in {self.checkpoints.directory}; to try other "
                "settings (e.g. a lower train.learning_rate) use a new --workdir")
    self.close()
    raise NonFiniteLossError(f"non-finite loss {losses[bad]} at step {first_step + bad + 1} (epoch {epoch + 1}, "
                             f"batch {bad + 1}{context}); stopped: {resume}")

  def write_results(self, results: dict) -> dict:
    """Writes results.json (with the recorded continuations, if any) and returns what it wrote."""
    if self.continuations:
      results = dict(results, continuations=self.continuations)
    if self.writer:
      write_json(self.path("results.json"), results)
    return results

  def write_export(self, arrays: dict) -> None:
    if self.writer:
      write_npz(self.path("export.npz"), arrays)

  def close(self) -> None:
    self.checkpoints.close()


def progress(iterable, total: int, desc: str):
  """A tqdm bar on stderr that appears only when an epoch runs longer than 3 s and leaves no line behind."""
  from tqdm import tqdm  # noqa: PLC0415 - only the trainers need it

  return tqdm(iterable, total=total, desc=desc, delay=3.0, leave=False, dynamic_ncols=True, file=sys.stderr,
              disable=None)


def _abstract_leaf(x) -> jax.ShapeDtypeStruct:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  x = np.asarray(x) if np.isscalar(x) else x
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))


def _with_rows(x: jax.ShapeDtypeStruct, rows: int) -> jax.ShapeDtypeStruct:
  """`x` with `rows` leading rows, replicated on its mesh (if it has one)."""
  sharding = x.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return jax.ShapeDtypeStruct((rows,) + tuple(x.shape[1:]), x.dtype, sharding=sharding)


def _host_value(x) -> np.ndarray:
  """The global value of a restored leaf (replicated when it spans several processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_shards[0].data)
  return np.asarray(x)


def _show(v) -> str:
  return "absent" if v is None else strict_json.dumps(v)


def device_description() -> str:
  """E.g. 'cpu x1 (x86_64, 2 cores)' or 'gpu x1 (NVIDIA H100 80GB HBM3)'."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  platform_name = devices[0].platform
  if platform_name == "cpu":
    return f"cpu x{len(devices)} ({platform.machine()}, {os.cpu_count()} cores)"
  return f"{platform_name} x{len(devices)} ({', '.join(kinds)})"


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
