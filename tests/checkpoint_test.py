"""hq_jax.checkpoint: any legal path, a save verified as it is written, failed reads that leave nothing behind."""

import gc
import os
import sys
import time

import ml_collections
import numpy as np
import pytest

from hq_jax import checkpoint, workdir
from hq_jax.checkpoint import Checkpointer, UnreadableCheckpointError
from tests.conftest import damaged_copies
from hq_jax.errors import UserError


def _state(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {"table": rng.normal(size=(40, 8)).astype(np.float32), "nested": {"bias": rng.normal(size=3)},
          "epoch": np.int32(seed)}


def _same(a: dict, b: dict) -> bool:
  return (np.array_equal(np.asarray(a["table"]), b["table"]) and np.array_equal(np.asarray(a["epoch"]), b["epoch"])
          and np.array_equal(np.asarray(a["nested"]["bias"]), b["nested"]["bias"]))


# Folder names a user may give: glob brackets (orbax globs its own path), spaces, non-ASCII, URL escapes.
LEGAL_NAMES = ["run[x]", "sweep[lr=1e-3]", "a]b[c", "[", "two words", "ü-umlaut", "hash#1", "pct%20", "pct%zz",
               "colon:1", "star*q?"]


@pytest.mark.parametrize("name", LEGAL_NAMES)
def test_any_legal_folder_name_saves_and_restores(tmp_path, name):
  directory = tmp_path / name / "checkpoints"
  with Checkpointer(str(directory)) as ck:
    ck.save(1, _state(1))
    ck.save(2, _state(2))
  with Checkpointer(str(directory)) as ck:  # a rerun: a new manager on the same folder
    assert ck.all_steps() == [1, 2]
    assert _same(ck.restore(_state(0)), _state(2))
    assert _same(ck.restore(_state(0), 1), _state(1))
  assert sorted(os.listdir(directory)) == ["1", "2"]  # the real folder holds the steps


def test_orbax_path_links_only_paths_with_brackets(tmp_path):
  plain = str(tmp_path / "plain")
  assert checkpoint.orbax_path(plain) == plain
  bracketed = str(tmp_path / "b[1]")
  link = checkpoint.orbax_path(bracketed)
  assert "[" not in link and os.path.realpath(link) == os.path.realpath(bracketed)
  assert checkpoint.orbax_path(bracketed) == link  # the same link for every process and rerun


def _save_without_the_link(monkeypatch, directory: str):
  """What hq_jax did before orbax_path: give orbax the bracketed path itself."""
  monkeypatch.setattr(checkpoint, "orbax_path", os.path.abspath)
  with Checkpointer(directory) as ck:
    with pytest.raises(UnreadableCheckpointError) as e:
      ck.save(1, _state(1))
  monkeypatch.undo()
  return str(e.value)


def test_a_save_that_does_not_read_back_stops_the_run_in_one_line(tmp_path, monkeypatch):
  directory = str(tmp_path / "run[x]" / "checkpoints")
  message = _save_without_the_link(monkeypatch, directory)
  assert "\n" not in message
  assert message.startswith(f"checkpoint 1 in {directory} was saved but does not read back (")
  assert "damaged" not in message


def test_a_never_readable_checkpoint_is_named_and_left_in_place(tmp_path, monkeypatch):
  """Checkpoints an older hq_jax wrote under a bracketed path: one line that says why, nothing moved aside."""
  root = tmp_path / "old[run]"
  config = ml_collections.ConfigDict({"train": {"epochs": 2}})
  workdir.RunDir(str(root), config, epochs_key="train.epochs").close()
  _save_without_the_link(monkeypatch, str(root / "checkpoints"))
  run = workdir.RunDir(str(root), config, epochs_key="train.epochs")
  with pytest.raises(UnreadableCheckpointError, match=r"checkpoint 1 in .*old\[run\]/checkpoints was never readable: "
                     r"orbax committed it without the OCDBT index of its arrays .*left in place"):
    run.restore(_state(0))
  run.close()
  assert os.path.isdir(root / "checkpoints" / "1")
  assert not os.path.exists(root / workdir.DAMAGED_DIR)


def test_verification_reads_one_array_and_checks_its_values(tmp_path, monkeypatch):
  """A save whose smallest array reads back with other values (here: the checksum disagrees) stops too."""
  real = checkpoint.state_checksum
  monkeypatch.setattr(checkpoint, "state_checksum", lambda state: [[s, d, c + 1] for s, d, c in real(state)])
  with Checkpointer(str(tmp_path / "ck")) as ck:
    with pytest.raises(UnreadableCheckpointError, match=r"its array \['epoch'\] reads back with other values"):
      ck.save(1, _state(1))


def test_a_failed_restore_leaves_no_late_callbacks_or_coroutines(tmp_path):
  """orbax closes its event loop when the first read of a restore fails; the other reads then used to fail
  on the closed loop ("Event loop is closed", pytest's PytestUnraisableExceptionWarning) or be destroyed
  pending. Now they finish first: no unraisable exception at all, whatever byte is damaged."""
  seen = []
  previous = sys.unraisablehook
  sys.unraisablehook = seen.append
  try:
    with Checkpointer(str(tmp_path / "ck")) as ck:
      ck.save(1, _state(1))
    errors = 0
    for _, copy in damaged_copies(tmp_path / "ck", "1", tmp_path, first=40, stride=31, min_size=50):
      with Checkpointer(str(copy)) as ck:
        try:
          ck.restore(_state(1), 1)
        except UserError:
          errors += 1
    time.sleep(0.5)  # tensorstore's late callbacks, if any, come from its own threads
    gc.collect()
  finally:
    sys.unraisablehook = previous
  assert errors
  assert [f"{u.exc_type.__name__}: {u.exc_value}" for u in seen] == []


def test_shape_mismatch_names_the_extra_array_of_a_repeated_shape(tmp_path):
  # Stored and expected differ only in how many (3,) float32 arrays they hold: the message names that one.
  three = lambda: np.zeros((3,), np.float32)
  with Checkpointer(str(tmp_path / "ck")) as ck:
    ck.save(1, {"a": three(), "b": three()})
    message = ck.shape_mismatch({"a": three(), "b": three(), "c": three()}, 1)
  assert message == ("2 stored arrays vs 3 expected; expected but not stored: [((3,), 'float32')]; "
                     "stored but not expected: []")
