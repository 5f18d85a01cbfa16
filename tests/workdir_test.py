"""The run protocol (hq_jax.workdir): config comparison, atomic files, the non-finite check."""

import json
import os
import re

import ml_collections
import numpy as np
import pytest

from hq_jax import workdir
from hq_jax.errors import NonFiniteLossError, UserError


def _config(**train):
  c = ml_collections.ConfigDict({"seed": 0, "train": {"epochs": 4, "lr": 1e-3, "log_every": 1},
                                 "eval": {"ks": (20, 50)}})
  c.train.update(train)
  return c


def test_config_differences_names_changed_added_and_removed_keys():
  a = {"train": {"epochs": 4, "lr": 1e-3}, "eval": {"ks": [20, 50]}}
  b = {"train": {"epochs": 4, "lr": 2e-3, "new": 1}, "eval": {"ks": (20, 50)}}
  assert workdir.config_differences(a, b) == ["train.lr", "train.new"]
  assert workdir.config_differences(a, b, ignore=["train.new"]) == ["train.lr"]
  assert workdir.config_differences(b, b) == []
  # A key newer than the stored config matches when it holds the value that keeps the old behaviour.
  assert workdir.config_differences(a, b, added_keys={"train.new": 1}) == ["train.lr"]
  assert workdir.config_differences(a, b, added_keys={"train.new": 0}) == ["train.lr", "train.new"]
  assert workdir.config_differences(b, a, added_keys={"train.new": 1}) == ["train.lr", "train.new"]  # only newer


def test_holds_config_accepts_what_a_rerun_would(tmp_path):
  path = str(tmp_path / "run")
  assert not workdir.holds_config(path, _config())  # no workdir yet
  workdir.RunDir(path, _config(), epochs_key="train.epochs").close()
  assert workdir.holds_config(path, _config())
  assert not workdir.holds_config(path, _config(lr=2e-3))
  assert workdir.holds_config(path, _config(log_every=5), ignore=["train.log_every"])
  newer = _config()
  newer.train.warmup = 0
  assert not workdir.holds_config(path, newer)
  assert workdir.holds_config(path, newer, added_keys={"train.warmup": 0})
  with pytest.raises(UserError, match="another config"):  # RunDir refuses exactly what holds_config rejects
    workdir.RunDir(path, _config(lr=2e-3), epochs_key="train.epochs")
  (tmp_path / "run" / "config.json").write_text("{not json")
  assert not workdir.holds_config(path, _config())


def test_rundir_resumes_a_workdir_older_than_an_added_key(tmp_path):
  workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs").close()
  added = {"train.warmup": 0}
  workdir.RunDir(str(tmp_path), _config(warmup=0), epochs_key="train.epochs", added_keys=added).close()
  with pytest.raises(UserError, match=r"train\.warmup \(absent -> 3\)"):
    workdir.RunDir(str(tmp_path), _config(warmup=3), epochs_key="train.epochs", added_keys=added)


def test_rundir_stores_the_config_and_refuses_another(tmp_path):
  workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs").close()
  stored = json.load(open(tmp_path / "config.json"))
  assert stored["config"]["train"]["epochs"] == 4 and stored["continuations"] == []
  workdir.RunDir(str(tmp_path), _config(log_every=5), epochs_key="train.epochs",
                 ignore=["train.log_every"]).close()
  with pytest.raises(UserError, match=r"another config: train\.log_every \(1 -> 5\), train\.lr \(0\.001 -> 0\.002\);"):
    workdir.RunDir(str(tmp_path), _config(lr=2e-3, log_every=5), epochs_key="train.epochs")
  for epochs, extend in ((2, False), (2, True), (8, False)):  # shorter never; longer only with extend
    with pytest.raises(UserError, match=r"train\.epochs \(4 -> "):
      workdir.RunDir(str(tmp_path), _config(epochs=epochs), epochs_key="train.epochs", extend=extend)
  with pytest.raises(UserError, match=r"train\.lr .*"):  # extend does not excuse other keys
    workdir.RunDir(str(tmp_path), _config(epochs=8, lr=2e-3), epochs_key="train.epochs", extend=True)
  run = workdir.RunDir(str(tmp_path), _config(epochs=8), epochs_key="train.epochs", extend=True)
  assert run.write_results({"a": 1})["continuations"][0] == {**run.continuations[0], "from_epochs": 4,
                                                             "to_epochs": 8}
  run.close()
  workdir.RunDir(str(tmp_path), _config(epochs=8), epochs_key="train.epochs").close()  # now the stored one


def test_unreadable_config_json_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="config.json: unreadable"):
    workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
  path = str(tmp_path / "results.json")
  workdir.write_json(path, {"old": 1})

  def dies_half_way(f):
    f.write('{"new": ')
    raise KeyboardInterrupt  # a kill during the write

  with pytest.raises(KeyboardInterrupt):
    workdir.atomic_write(path, dies_half_way)
  assert json.load(open(path)) == {"old": 1} and os.listdir(tmp_path) == ["results.json"]


def test_write_npz_round_trips(tmp_path):
  workdir.write_npz(str(tmp_path / "export.npz"), {"x": np.arange(3)})
  assert np.load(tmp_path / "export.npz")["x"].tolist() == [0, 1, 2]


def test_metrics_log_truncate_and_final(tmp_path):
  log = workdir.MetricsLog(str(tmp_path / "metrics.jsonl"))
  for step in (2, 4, 6):
    log.append({"step": step})
  log.set_final({"step": 6, "recall@20": 0.1})
  log.truncate_after(4)
  assert [r["step"] for r in log.read()] == [2, 4]
  log.set_final({"step": 8, "recall@20": 0.2})
  log.set_final({"step": 8, "recall@20": 0.3})
  assert log.read() == [{"step": 2}, {"step": 4}, {"step": 8, "recall@20": 0.3, "final": True}]
  # Extended to more steps: the earlier end stays as an evaluation, nothing already written is lost.
  log.set_final({"step": 12, "recall@20": 0.4})
  assert log.read() == [{"step": 2}, {"step": 4}, {"step": 8, "recall@20": 0.3},
                        {"step": 12, "recall@20": 0.4, "final": True}]


def test_check_finite_names_the_step_and_the_true_resume_point(tmp_path):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.check_finite(np.ones(3), epoch=0, first_step=0)
  # 10 steps done before this epoch's losses; the NaN is its second batch: step 12 of the run, counted from 1.
  with pytest.raises(NonFiniteLossError, match=r"nan at step 12 \(epoch 4, batch 2\); stopped: no checkpoint"):
    run.check_finite(np.array([1.0, np.nan, np.inf]), epoch=3, first_step=10)
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(7, {"x": np.zeros(2)})
  with pytest.raises(NonFiniteLossError, match=r"inf at step 6 .*last good checkpoint is step 7"):
    run.check_finite(np.array([np.inf]), epoch=0, first_step=5)


def test_restore_with_other_shapes_is_a_mismatch_not_damage(tmp_path):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(1, {"x": np.zeros((2, 3), np.float32)})
  assert run.restore({"x": np.zeros((2, 3), np.float32)})["x"].shape == (2, 3)
  with pytest.raises(UserError, match="checkpoint 1 does not match"):
    run.restore({"x": np.zeros((4, 3), np.float32)})
  assert run.latest_step() == 1  # not moved aside
  run.close()


def _state(seed):
  rng = np.random.default_rng(seed)
  return {"table": rng.normal(size=(300, 8)).astype(np.float32), "bias": rng.normal(size=(3,)).astype(np.float32),
          "epoch": np.int32(seed)}


def test_damage_anywhere_in_a_checkpoint_never_restores_other_values(tmp_path):
  """Flip bytes in each file of a step: the restore raises, or gives back exactly what was saved (orbax
  alone restores some small damaged arrays with other values; the checksum catches them)."""
  from hq_jax.checkpoint import Checkpointer
  from tests.conftest import damaged_copies
  with Checkpointer(str(tmp_path / "ck")) as ck:
    ck.save(1, _state(1))
  outcomes = []
  for path, copy in damaged_copies(tmp_path / "ck", "1", tmp_path, first=100, stride=97):
    with Checkpointer(str(copy)) as ck:
      try:
        got = ck.restore(_state(1), 1)
      except Exception:  # noqa: BLE001 - any error is a detected damage
        outcomes.append("error")
        continue
    assert all(np.array_equal(np.asarray(got[k]), v) for k, v in _state(1).items()), path.name
    outcomes.append("same")
  assert len(outcomes) >= 5
  assert "error" in outcomes


def test_restore_moves_a_checksum_mismatch_aside_and_uses_the_older_step(tmp_path, capsys):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(1, _state(1))
  run.save(2, _state(2))
  checksum = tmp_path / "checkpoints" / "2" / "hq_jax_checksum.json"
  saved = json.loads(checksum.read_text())
  saved["leaves"][0][2] ^= 1
  checksum.write_text(json.dumps(saved))
  got = run.restore(_state(0))
  assert run.resumed_step == 1 and int(got["epoch"]) == 1
  assert np.array_equal(np.asarray(got["table"]), _state(1)["table"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and re.match(r"warning: checkpoint 2 in .* is damaged \(the arrays read differ from those "
                                    r"saved: checksum mismatch\); moved to .*checkpoints_damaged/2$", err[0])
  assert (tmp_path / "checkpoints_damaged" / "2" / "hq_jax_checksum.json").exists()
  run.close()


def test_rundir_removes_what_a_killed_run_left_half_written(tmp_path, capsys):
  workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs").close()
  (tmp_path / ".results.json.tmp4242").write_text('{"half": ')
  (tmp_path / ".export.npz.k2_x9abc.tmp").write_bytes(b"PK half")  # hq_jax.export.save_export's temporary
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp" / "default").mkdir(parents=True)
  (tmp_path / "notes.tmp").write_text("not ours")
  capsys.readouterr()
  workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs").close()
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json", "notes.tmp"]
  assert os.listdir(tmp_path / "checkpoints") == []
  assert re.fullmatch(r"warning: removed .*checkpoints/3\.orbax-checkpoint-tmp: a checkpoint save that was "
                      r"interrupted before it finished\n", capsys.readouterr().err)


def test_steps_orbax_would_only_log_about_are_set_aside_before_it_reads_them(tmp_path, capsys):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(1, _state(1))
  run.save(2, _state(2))
  run.close()
  (tmp_path / "checkpoints" / "2" / "_CHECKPOINT_METADATA").write_bytes(b"\xff\xfe not json")
  (tmp_path / "checkpoints" / "3").mkdir()  # a step folder whose files were lost
  capsys.readouterr()
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  err = capsys.readouterr().err.splitlines()
  assert [l.split(" is damaged ")[0] for l in err] == [f"warning: checkpoint {s} in {tmp_path}/checkpoints"
                                                       for s in (3, 2)], err
  assert "holds neither _CHECKPOINT_METADATA nor data" in err[0] and "does not parse" in err[1]
  assert int(run.restore(_state(0))["epoch"]) == 1 and sorted(os.listdir(tmp_path / "checkpoints_damaged")) == [
      "2", "3"]
  run.close()


_TWO_PROCESS_RUN = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from hq_jax import checkpoint, workdir
from hq_jax.errors import UserError
mesh = jax.make_mesh((2,), ("rows",))
table = np.arange(24, dtype=np.float32).reshape(8, 3)
state = {"table": jax.make_array_from_callback(table.shape, NamedSharding(mesh, P("rows")), lambda i: table[i]),
         "epoch": np.int32(5)}
run = workdir.RunDir(sys.argv[3], {"train": {"epochs": 1}}, epochs_key="train.epochs")
if sys.argv[4] == "save":
  run.save(5, state)
  run.metrics.append({"step": 5, "process": jax.process_index()})
  run.write_results({"process": jax.process_index()})
try:
  got = run.restore(state)
except UserError as e:
  print(json.dumps({"error": str(e)}), flush=True)
else:
  print(json.dumps({"checksum": checkpoint.state_checksum(got), "resumed": run.resumed_step,
                    "table": multihost_utils.process_allgather(got["table"], tiled=True).tolist()}), flush=True)
run.close()
"""


def _two_processes(tmp_path, action):
  import socket
  import subprocess
  import sys

  from tests.conftest import REPO, subprocess_env
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_RUN, f"localhost:{port}", str(i),
                             str(tmp_path / "w"), action], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=subprocess_env()) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs], [err for _, err in outs]


def test_two_processes_save_one_checksum_of_the_global_arrays_and_restore_it(tmp_path):
  from hq_jax.checkpoint import state_checksum
  got, _ = _two_processes(tmp_path, "save")
  table = np.arange(24, dtype=np.float32).reshape(8, 3)
  expected = state_checksum({"table": table, "epoch": np.int32(5)})  # of the whole table, in one process
  for g in got:
    assert g["resumed"] == 5 and g["table"] == table.tolist() and g["checksum"] == json.loads(json.dumps(expected))
  saved = json.loads((tmp_path / "w" / "checkpoints" / "5" / "hq_jax_checksum.json").read_text())
  assert saved["leaves"] == json.loads(json.dumps(expected))
  # process 0 alone wrote the workdir's files
  assert [json.loads(l)["process"] for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()] == [0]
  assert json.loads((tmp_path / "w" / "results.json").read_text()) == {"process": 0}
  assert not [n for n in os.listdir(tmp_path / "w") if "tmp" in n]

  # a checksum mismatch: both processes see the step as damaged, process 0 moves it aside once
  checksum = tmp_path / "w" / "checkpoints" / "5" / "hq_jax_checksum.json"
  saved["leaves"][0][2] ^= 1
  checksum.write_text(json.dumps(saved))
  got, errs = _two_processes(tmp_path, "restore")
  for g in got:
    assert g["error"].startswith(f"{tmp_path / 'w' / 'checkpoints'}: no checkpoint restores (damaged: steps 5")
  assert "checksum mismatch" in errs[0] and "is damaged" not in errs[1]
  assert os.listdir(tmp_path / "w" / "checkpoints_damaged") == ["5"]


# ----------------------------------------------------------------------------------------------------------
# Strict JSON in every workdir file
# ----------------------------------------------------------------------------------------------------------


def _strict_load(text: str):
  def refuse(name):
    raise ValueError(f"{name} is not JSON")
  return json.loads(text, parse_constant=refuse)


def test_workdir_files_never_hold_nan_or_infinity(tmp_path):
  workdir.write_json(str(tmp_path / "r.json"), {"compression_bits": float("inf"), "auc": np.float32(0.5),
                                                "per_group": np.array([1.0, np.nan])})
  got = _strict_load((tmp_path / "r.json").read_text())
  assert got == {"compression_bits": None, "compression_bits_reason": "Infinity (not a finite number)",
                 "auc": 0.5, "per_group": [1.0, None], "per_group_reason": "not finite, written as null: [1] NaN"}
  log = workdir.MetricsLog(str(tmp_path / "m.jsonl"))
  log.append({"step": 1, "loss": float("nan")})
  assert _strict_load((tmp_path / "m.jsonl").read_text()) == {
      "step": 1, "loss": None, "loss_reason": "NaN (not a finite number)"}


def test_a_config_with_infinity_is_stored_strictly_and_resumes(tmp_path):
  config = _config(max_grad_norm=float("inf"))
  workdir.RunDir(str(tmp_path), config, epochs_key="train.epochs").close()
  stored = _strict_load((tmp_path / workdir.CONFIG_FILE).read_text())["config"]["train"]
  assert stored["max_grad_norm"] is None and stored["max_grad_norm_reason"] == "Infinity (not a finite number)"
  workdir.RunDir(str(tmp_path), config, epochs_key="train.epochs").close()  # the same config: accepted
  with pytest.raises(UserError, match=r"max_grad_norm_reason"):
    workdir.RunDir(str(tmp_path), _config(max_grad_norm=float("nan")), epochs_key="train.epochs")


# ----------------------------------------------------------------------------------------------------------
# Restores onto a mesh that pads the table to another row count
# ----------------------------------------------------------------------------------------------------------


def _padded_state(rows: int, real: int = 5, seed: int = 0) -> dict:
  """A table of `real` rows padded with zero rows to `rows`, an Adam-like moment shaped like it, others."""
  rng = np.random.default_rng(seed)
  table = np.zeros((rows, 3), np.float32)
  table[:real] = rng.normal(size=(real, 3))
  moment = np.zeros((rows, 3), np.float32)
  moment[:real] = rng.random(size=(real, 3))
  return {"params": {"table": table, "bias": rng.normal(size=(3,)).astype(np.float32)},
          "opt_state": {"mu": moment, "count": np.int32(7)}, "epoch": np.int32(2)}


@pytest.mark.parametrize("stored, expected", [(6, 8), (8, 6), (5, 8), (8, 5)])
def test_restore_adds_or_drops_zero_padding_rows(tmp_path, capsys, stored, expected):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(2, _padded_state(stored))
  got = run.restore(_padded_state(expected, seed=1), unpadded_rows=5)
  want = _padded_state(expected)
  assert jax_tree_equal(got, want)
  assert run.resumed_step == 2
  assert re.search(rf"checkpoint 2: written on a mesh that pads the table to {stored} rows, restored with this "
                   rf"mesh's {expected}", capsys.readouterr().out)
  run.close()


def jax_tree_equal(a, b) -> bool:
  import jax
  return all(np.array_equal(np.asarray(x), np.asarray(y)) and np.asarray(x).dtype == np.asarray(y).dtype
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_padding_rows_to_drop_must_be_zero(tmp_path):
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  state = _padded_state(8)
  state["opt_state"]["mu"][6] = 1.0  # not padding after all
  run.save(2, state)
  with pytest.raises(UserError, match=r"checkpoint 2 was written on a mesh that pads the table to 8 rows, this mesh "
                     r"pads it to 6, but 1 of its rows 6\.\.7 are not zero .*rerun on a mesh that pads to 8 rows"):
    run.restore(_padded_state(6), unpadded_rows=5)
  assert run.latest_step() == 2  # not moved aside
  run.close()


@pytest.mark.parametrize("unpadded_rows, expected", [(None, 8), (5, 4), (5, 7)])
def test_other_row_counts_are_still_a_mismatch(tmp_path, unpadded_rows, expected):
  """Without the true row count, or with fewer rows than it (the data changed), or another column count."""
  run = workdir.RunDir(str(tmp_path), _config(), epochs_key="train.epochs")
  run.save(2, _padded_state(6))
  target = _padded_state(expected, real=min(5, expected))
  if expected == 7:
    target["params"]["table"] = np.zeros((7, 4), np.float32)
  with pytest.raises(UserError, match="checkpoint 2 does not match this run's state"):
    run.restore(target, unpadded_rows=unpadded_rows)
  run.close()


def _train(binary: str, devices: int, workdir, *args: str) -> str:
  """Runs `python -m experiments.<binary>` on `devices` simulated CPU devices; returns its stdout."""
  import subprocess
  import sys
  from conftest import REPO, subprocess_env
  config = f"--config=experiments/configs/{binary}_test.py"
  env = dict(subprocess_env(), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, "-m", f"experiments.{binary}", config, f"--workdir={workdir}", *args],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("binary, first, second, stop, args", [
    # LightGCN: 6,381 nodes padded to 6,382 on mesh.model=2, to 6,384 on 4 (the case of the issue)
    ("hqgnn", 2, 4, "--config.train.stop_after_epochs=2", ()),
    ("hqgnn", 4, 2, "--config.train.stop_after_epochs=2", ("--config.quant.bits=2", "--config.quant.estimator=gste")),
    # CTR: 11,423 features, unpadded on one device, padded to 11,424 on mesh.model=2 (and 4)
    ("mpe", 2, 1, "--config.train.stop_after_steps=4", ("--config.method=mpe",)),
    ("mpe", 1, 2, "--config.train.stop_after_steps=4",
     ("--config.method=lsq", "--config.train.table_optimizer=lazy_adam")),
])
def test_both_trainers_resume_on_a_mesh_that_pads_the_table_otherwise(tmp_path, binary, first, second, stop, args):
  """Stopped on one mesh, resumed on one whose padded row count differs: the zero padding rows of the table
  and of its optimizer state are added or dropped, and the run ends as the uninterrupted run on the second
  mesh does."""
  resumed, straight = tmp_path / "resumed", tmp_path / "straight"
  _train(binary, first, resumed, f"--config.mesh.model={first}", stop, *args)
  out = _train(binary, second, resumed, f"--config.mesh.model={second}", *args)
  assert re.search(r"checkpoint \d+: written on a mesh that pads the table to \d+ rows, restored with this mesh's "
                   r"\d+ \(zero (rows added|padding rows dropped)\)", out), out
  _train(binary, second, straight, f"--config.mesh.model={second}", *args)
  got, want = (json.loads((d / "results.json").read_text()) for d in (resumed, straight))
  if binary == "hqgnn":
    assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-5)
  else:  # the CTR trainer's metrics depend on the mesh of its first steps within float rounding
    assert got["test_auc"] == pytest.approx(want["test_auc"], abs=2e-3)
