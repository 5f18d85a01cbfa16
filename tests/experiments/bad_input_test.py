"""Bad input to the three binaries, as one table: what each case gets (exit status and its one stderr line).

Every case runs `python -m experiments.hqgnn | experiments.mpe | experiments.evaluate` on files it writes
(malformed lines, ids out of range, empty and missing files, wrong npz keys, dtypes and shapes, NaN
embeddings), on a copy of a trained workdir (changed configs, damaged checkpoints), or after a first run of the
same command that was killed (SIGKILL) in the middle of a write: a checkpoint, results.json, metrics.jsonl or
export.npz. A user error must give exit status 2, exactly one `prog: error: ...` line and no Python traceback;
where resuming is the right answer (a damaged newest checkpoint, a rerun after a kill) the status is 0 and the
final metrics and export equal those of the uninterrupted run, bit for bit. Files that were already written
are never lost: after each kill every workdir file still parses, and a finished run's results survive a kill
during their rewrite.

Speed: a subprocess pays ~4 s of CPU for its imports (jax, flax, orbax) and a training run ~8 s for XLA
compilations, too much for 86 cases on a 2-core CPU. Here the binaries therefore run in children forked from
two "zygote" processes that imported the libraries once (`ForkRunner`): each child is a fresh process that
runs the binary's module as `__main__` with its own argv, cwd, stdout and stderr, as `python -m` would, minus
the imports; the children share a JAX compilation cache. All cases take ~2 min of CPU, run two at a time.
`experiments/reliability_table.py` runs the same cases as real `python -m` subprocesses (`ExecRunner`) and
writes the table of results/reliability.md from what they print.

Two cases fail today on bugs in hq_jax/hqgnn/train.py (metrics.jsonl records lost or repeated around a
resume); they are strict xfails that name the bug.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from conftest import REPO, subprocess_env

TIMEOUT_S = 1800  # a hang, not a slow run: an overloaded 2-core machine runs the tiny configs 40x slower
HQGNN_ARGS = ("--config=experiments/configs/hqgnn_test.py",)
MPE_ARGS = ("--config=experiments/configs/mpe_test.py", "--config.method=lsq")
PROGS = {"hqgnn": "experiments.hqgnn", "mpe": "experiments.mpe", "evaluate": "experiments.evaluate"}
WORKDIR_FILES = ("config.json", "results.json", "metrics.jsonl", "export.npz")
# XLA's own notice of a compilation slower than its alarm (seen only on an overloaded machine): 4 lines that
# are not hq_jax's to silence, and not a traceback; every other stray stderr line fails a case.
XLA_SLOW_COMPILE = re.compile(r"E\d{4} [\d:. ]+\d+ slow_operation_alarm\.cc:\d+\]|\*{20,}$|"
                              r"\[Compiling module .*\] Very slow compile\?")

# ----------------------------------------------------------------------------------------------------------
# Running a binary: the code that runs inside the binary's process (kill hooks, then the module as __main__)
# ----------------------------------------------------------------------------------------------------------

CHILD_CODE = r'''
import io, os, runpy, signal, sys, traceback


def install_kill(point):
  """Makes this process SIGKILL itself in the middle of a write.

  'checkpoint:N': once step N's checkpoint data is in orbax's temporary folder, before orbax renames it;
  'FILE:N' (results.json, metrics.jsonl, export.npz, config.json): half way through the N-th atomic write
  of FILE (half of the bytes in the temporary file, synced); 'sigint:checkpoint:N': a SIGINT (Ctrl-C)
  instead, where 'checkpoint:N' would kill.
  """
  sig = signal.SIGKILL
  if point.startswith("sigint:"):
    sig, point = signal.SIGINT, point[len("sigint:"):]
  kind, _, nth = point.partition(":")
  nth = int(nth or 1)
  if kind == "checkpoint":
    from orbax.checkpoint._src.path import atomicity
    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
      if self._final_path.name == str(nth):
        os.kill(os.getpid(), sig)
      return await original_finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    return
  import hq_jax.workdir as workdir
  original_write = workdir.atomic_write
  calls = [0]

  def atomic_write(path, write, *, binary=False):
    if os.path.basename(path) == kind:
      calls[0] += 1
      if calls[0] == nth:
        buffer = io.BytesIO() if binary else io.StringIO()
        write(buffer)
        data = buffer.getvalue()

        def half_then_die(f):
          f.write(data[:len(data) // 2])
          f.flush()
          os.fsync(f.fileno())
          os.kill(os.getpid(), signal.SIGKILL)

        return original_write(path, half_then_die, binary=binary)
    return original_write(path, write, binary=binary)

  workdir.atomic_write = atomic_write


def run_binary(module, argv, kill):
  """Runs `module` as `python -m module argv...` would; returns the exit status."""
  if kill:
    install_kill(kill)
  sys.argv = [module, *argv]
  try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0
  except SystemExit as e:
    code = e.code
    if code is None or isinstance(code, int):
      return code or 0
    print(code, file=sys.stderr)
    return 1
  except BaseException:  # noqa: BLE001 - as the interpreter: print the traceback, exit 1
    traceback.print_exc()
    return 1
'''

# The zygote: imports the libraries once, then forks one child per request (one JSON line on stdin each) and
# answers with the child's exit status (negative: killed by that signal; "timeout").
SERVER_CODE = CHILD_CODE + r'''
import json, time
sys.path.insert(0, os.getcwd())
import hq_jax.cli, hq_jax.workdir, hq_jax.evaluation, hq_jax.hqgnn.train, hq_jax.ctr.train  # the slow imports
import orbax.checkpoint._src.path.atomicity, ml_collections.config_flags, tqdm, absl.app
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
  req = json.loads(line)
  pid = os.fork()
  if pid == 0:
    status = 1
    try:
      os.chdir(req["cwd"])
      null = os.open(os.devnull, os.O_RDONLY)
      os.dup2(null, 0)
      for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
      os.environ.update(req.get("env", {}))
      status = run_binary(req["module"], req["argv"], req.get("kill"))
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)
  deadline = time.time() + req["timeout"]
  while True:
    done, wait_status, usage = os.wait4(pid, os.WNOHANG)
    if done:
      answer = os.waitstatus_to_exitcode(wait_status)
      cpu = usage.ru_utime + usage.ru_stime
      break
    if time.time() > deadline:
      os.kill(pid, 9)
      os.waitpid(pid, 0)
      answer, cpu = "timeout", 0.0
      break
    time.sleep(0.005)
  print(json.dumps({"status": answer, "cpu": cpu}), flush=True)
'''


@dataclasses.dataclass
class Result:
  status: int | str  # exit status; negative: killed by that signal; 'timeout'
  stdout: str
  stderr: str
  seconds: float
  cpu_seconds: float = float("nan")  # user + system time of the binary's process (ForkRunner only)


class ExecRunner:
  """Runs each command as `python -m module ...` (with a kill hook: `python -c` that installs it first)."""

  def __init__(self, env: dict | None = None):
    self.env = env or subprocess_env()

  def run(self, module: str, argv: list[str], *, kill: str | None = None, timeout: float = TIMEOUT_S) -> Result:
    if kill:
      cmd = [sys.executable, "-c", CHILD_CODE + f"\nsys.exit(run_binary({module!r}, {argv!r}, {kill!r}))"]
    else:
      cmd = [sys.executable, "-m", module, *argv]
    t0 = time.time()
    try:
      proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
      return Result("timeout", e.stdout or "", e.stderr or "", time.time() - t0)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.time() - t0)

  def close(self):
    pass


class ForkRunner:
  """Runs each command in a child forked from one of `workers` zygotes that imported the libraries once.

  The children share a JAX persistent compilation cache (every program compiled once, the same executable
  loaded afterwards): ~4x less CPU per training run of the tiny configs. It is the test session's cache where
  conftest set one, else a temporary folder of its own.
  """

  def __init__(self, workers: int = 2, env: dict | None = None):
    env = dict(env or subprocess_env())
    self._tmp = tempfile.mkdtemp(prefix="forkrunner")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(self._tmp, "jax_cache"))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    self._servers = queue.Queue()
    self._procs = []
    self._counter = iter(range(10**9))
    self._lock = threading.Lock()
    for _ in range(workers):
      proc = subprocess.Popen([sys.executable, "-c", SERVER_CODE], cwd=REPO, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
      self._procs.append(proc)
    for proc in self._procs:
      line = proc.stdout.readline()
      if not line or not json.loads(line).get("ready"):
        raise RuntimeError("fork server failed to start")
      self._servers.put(proc)

  def run(self, module: str, argv: list[str], *, kill: str | None = None, timeout: float = TIMEOUT_S) -> Result:
    with self._lock:
      n = next(self._counter)
    out, err = os.path.join(self._tmp, f"{n}.out"), os.path.join(self._tmp, f"{n}.err")
    proc = self._servers.get()
    t0 = time.time()
    try:
      request = {"module": module, "argv": argv, "kill": kill, "cwd": str(REPO), "stdout": out, "stderr": err,
                 "timeout": timeout}
      proc.stdin.write(json.dumps(request) + "\n")
      proc.stdin.flush()
      answer = json.loads(proc.stdout.readline())
    finally:
      self._servers.put(proc)
    with open(out, encoding="utf-8", errors="replace") as f_out, open(err, encoding="utf-8",
                                                                        errors="replace") as f_err:
      return Result(answer["status"], f_out.read(), f_err.read(), time.time() - t0, answer["cpu"])

  def close(self):
    for proc in self._procs:
      proc.stdin.close()
    for proc in self._procs:
      try:
        proc.wait(timeout=300)  # a zygote's exit (JAX's teardown) can take minutes on an overloaded machine
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(self._tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Inputs: small files, damaged checkpoints
# ----------------------------------------------------------------------------------------------------------

LASTFM_USERS, LASTFM_ITEMS = 1892, 4489
# Frappe's 10 one-hot fields and their id ranges (../shared/data/README.md).
FRAPPE_OFFSETS = (0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149, 5382)


def frappe_rows(n: int, seed: int, labels=(1, -1)) -> str:
  """`n` one-hot libFM rows in Frappe's layout, labels cycling through `labels`."""
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(n):
    ids = [lo + int(rng.integers(0, min(6, hi - lo))) for lo, hi in zip(FRAPPE_OFFSETS[:-1], FRAPPE_OFFSETS[1:])]
    lines.append(f"{labels[i % len(labels)]} " + " ".join(f"{j}:1" for j in ids))
  return "\n".join(lines) + "\n"


GOOD_TRAIN, GOOD_VALID, GOOD_TEST = frappe_rows(60, 0), frappe_rows(20, 1), frappe_rows(20, 2)


def frappe(train=GOOD_TRAIN, valid=GOOD_VALID, test=GOOD_TEST) -> dict:
  """The files of a Frappe folder `frappe/` (None leaves a file out)."""
  files = {"frappe/frappe.train.libfm": train, "frappe/frappe.validation.libfm": valid,
           "frappe/frappe.test.libfm": test}
  return {k: v for k, v in files.items() if v is not None}


def lightgcn(train="0 0 1 2\n1 2 3\n2 1 4\n", test="0 3\n1 0\n2 0\n") -> dict:
  """A LightGCN-format folder `data/` (None leaves a file out)."""
  return {k: v for k, v in {"data/train.txt": train, "data/test.txt": test}.items() if v is not None}


def npz(**arrays) -> Callable[[str], None]:
  def write(path):
    with open(path, "wb") as f:
      np.savez(f, **arrays)
  return write


def floats(n, d=4, dtype=np.float32, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def float_export(users=None, items=None) -> Callable[[str], None]:
  """A float export of LastFM's size (d = 4), with `users` / `items` replaced."""
  return npz(user_embeddings=floats(LASTFM_USERS) if users is None else users,
             item_embeddings=floats(LASTFM_ITEMS) if items is None else np.asarray(items, np.float32))


def quantized(codes_dtype=np.uint8, high=4, **changes) -> Callable[[str], None]:
  """A 2-bit export of LastFM's size (codes drawn from 0..high-1), with `changes` to its arrays (None drops
  one)."""
  rng = np.random.default_rng(0)
  arrays = {"bits": np.int32(2),
            "user_codes": rng.integers(0, high, (LASTFM_USERS, 8)).astype(codes_dtype),
            "item_codes": rng.integers(0, high, (LASTFM_ITEMS, 8)).astype(codes_dtype),
            "user_scale": np.float32(0.1), "user_offset": np.float32(-0.2),
            "item_scale": np.float32(0.1), "item_offset": np.float32(-0.2)}
  arrays.update(changes)
  return npz(**{k: v for k, v in arrays.items() if v is not None})


def step_files(workdir: str, step: int) -> list[str]:
  root = os.path.join(workdir, "checkpoints", str(step))
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def flip_bytes(step: int, name: str | None = None):
  """Damages the largest file of checkpoint `step` (or the file called `name`) as a bad disk would (the
  corrupted-checkpoint case)."""
  def damage(case_dir):
    files = step_files(os.path.join(case_dir, "w"), step)
    path = (max(files, key=os.path.getsize) if name is None else
            next(f for f in files if os.path.basename(f) == name))
    data = bytearray(open(path, "rb").read())
    for i in range(100, len(data), 997):
      data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
  return damage


def truncate_largest(step: int):
  """Cuts the largest file of checkpoint `step` in half, as a partial copy would."""
  def damage(case_dir):
    path = max(step_files(os.path.join(case_dir, "w"), step), key=os.path.getsize)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  return damage


def empty_step(step: int):
  """Leaves checkpoint `step` as an empty folder (files lost)."""
  def damage(case_dir):
    root = os.path.join(case_dir, "w", "checkpoints", str(step))
    shutil.rmtree(root)
    os.makedirs(root)
  return damage


def both(*prepares):
  def prepare(case_dir):
    for p in prepares:
      p(case_dir)
  return prepare


def remove(*names):
  def prepare(case_dir):
    for name in names:
      path = os.path.join(case_dir, "w", name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  return prepare


def write_file(name: str, content: str):
  def prepare(case_dir):
    with open(os.path.join(case_dir, "w", name), "w") as f:
      f.write(content)
  return prepare


def unfinished(last_step: int):
  """Makes a trained workdir look interrupted after checkpoint `last_step`: later checkpoints and the final
  files removed, metrics.jsonl cut after that step (what the trainer keeps on resume)."""
  def prepare(case_dir):
    w = os.path.join(case_dir, "w")
    for name in os.listdir(os.path.join(w, "checkpoints")):
      if name.isdigit() and int(name) > last_step:
        shutil.rmtree(os.path.join(w, "checkpoints", name))
    for name in ("results.json", "export.npz"):
      if os.path.exists(os.path.join(w, name)):
        os.remove(os.path.join(w, name))
    with open(os.path.join(w, "metrics.jsonl")) as f:
      records = [json.loads(l) for l in f if l.strip()]
    kept = [json.dumps(r) + "\n" for r in records if r.get("step", 0) <= last_step and not r.get("final")]
    with open(os.path.join(w, "metrics.jsonl"), "w") as f:
      f.writelines(kept)
  return prepare


# ----------------------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One row of the table.

  The command is `python -m experiments.<binary> <standard args> <args>`, run in the repository with the
  case's folder C (written to `files`, `{c}` in `args`); the trainers get `--workdir=C/w`, a copy of a
  trained workdir when `workdir` is set (then `prepare(C)` damages or edits it). With `kill`, the same
  command runs first with a kill in the middle of that write (see `install_kill`); then every workdir file
  must still parse, and `intact` files must be byte-identical to before the kill. A run that stops with
  status 2 must leave every workdir file as it was.
  """

  name: str
  binary: str  # 'hqgnn', 'mpe' or 'evaluate'
  args: tuple[str, ...]
  status: int  # expected exit status of the (last) command
  stderr: str  # regex searched in the line shown (the error line, else the first warning); '^$': no stderr
  files: dict = dataclasses.field(default_factory=dict)  # path in C -> text, bytes or a writer(path)
  workdir: str | None = None  # C/w starts as a copy of this trainer's (H or M) trained workdir
  prepare: Callable[[str], None] | None = None
  kill: str | None = None  # a first run of the command dies here (see install_kill)
  intact: tuple[str, ...] = ()  # workdir files that the killed run must leave byte-identical
  same_result: bool = False  # the final metrics and export.npz equal the uninterrupted run's, bit for bit
  check: Callable[[str, "Result"], list[str]] | None = None  # more checks: (C, result) -> problems
  known_bug: str = ""  # a bug outside the run protocol that makes this case fail today (strict xfail)


H, M, E = "hqgnn", "mpe", "evaluate"
FRAPPE = "--config.data.spec=frappe:{c}/frappe"
LIBFM = ("--config.data.spec=libfm:{c}/frappe/frappe.train.libfm,{c}/frappe/frappe.validation.libfm,"
         "{c}/frappe/frappe.test.libfm")
DATA = "--config.data_dir={c}/data"
EMB = ("--embeddings={c}/e.npz",)

CASES = [
    # ---- hqgnn: the LightGCN text files
    Case("malformed_token", H, (DATA,), 2, r"data/train\.txt:2: malformed token 'x4'",
         files=lightgcn(train="0 1 2\n1 3 x4\n")),
    Case("negative_id", H, (DATA,), 2, r"data/test\.txt:1: negative id -3", files=lightgcn(test="0 -3\n")),
    Case("id_beyond_int32", H, (DATA,), 2, r"data/train\.txt:1: id 4294967296 too large",
         files=lightgcn(train="0 4294967296\n")),
    Case("empty_train_file", H, (DATA,), 2, r"data/train\.txt: empty file", files=lightgcn(train="")),
    Case("missing_test_file", H, (DATA,), 2, r"data/test\.txt: file not found", files=lightgcn(test=None)),
    Case("missing_data_dir", H, ("--config.data_dir={c}/nowhere",), 2, r"nowhere: data directory not found"),
    Case("binary_train_file", H, (DATA,), 2, r"data/train\.txt: not a text file",
         files=lightgcn(train=b"\x00\xff\xfe\x01 1 2\n")),
    Case("no_test_interactions", H, (DATA, "--config.eval.ks=2"), 2, r"no user with a test item",
         files=lightgcn(test="0\n1\n")),
    Case("k_larger_than_items", H, (DATA, "--config.eval.ks=20"), 2, r"K=20 is larger than the number of items \(5\)",
         files=lightgcn()),
    Case("unknown_config_field", H, ("--config.train.bogus=1",), 2, r"unknown config field in an override: bogus"),
    Case("override_of_wrong_type", H, ("--config.train.epochs=many",), 2,
         r"--config\.train\.epochs=many: invalid literal for int\(\)"),
    Case("unsupported_bits", H, ("--config.quant.bits=5",), 2, r"config\.quant \(bits='5'"),
    Case("missing_config_file", H, ("--config=experiments/configs/nope.py",), 2, r"cannot load the config file"),
    Case("stray_argument", H, ("extra",), 2, r"unexpected arguments: extra"),
    Case("process_id_out_of_range", H, ("--num_processes=2", "--process_id=2", "--coordinator_address=localhost:1234"),
         2, r"--process_id must be in 0 \.\. 1 \(--num_processes=2\), got 2"),
    Case("init_from_without_checkpoints", H, ("--config.train.init_from={c}/empty",), 2,
         r"train\.init_from='.*empty': no checkpoints folder there", files={"empty/.keep": ""}),
    # ---- hqgnn: the workdir
    Case("changed_learning_rate", H, ("--config.train.learning_rate=0.01",), 2,
         r"W was started with another config: train\.learning_rate \(0\.005 -> 0\.01\); use a new --workdir",
         workdir=H),
    Case("fewer_epochs", H, ("--config.train.epochs=2",), 2, r"another config: train\.epochs \(4 -> 2\)",
         workdir=H),
    Case("more_epochs_without_extend", H, ("--config.train.epochs=6",), 2,
         r"train\.epochs \(4 -> 6\).*pass --extend to continue it to train\.epochs=6", workdir=H),
    Case("more_epochs_with_extend", H, ("--config.train.epochs=6", "--extend"), 0,
         r"warning: W: continuing the run from train\.epochs=4 to 6", workdir=H),
    Case("unreadable_config_json", H, (), 2, r"config\.json: unreadable", workdir=H,
         prepare=write_file("config.json", '{"config": ')),
    Case("checkpoint_of_another_shape", H, ("--config.model.dim=8",), 2,
         r"checkpoint 4 does not match this run's state", workdir=H, prepare=remove("config.json")),
    Case("non_finite_loss_before_any_checkpoint", H, ("--config.train.learning_rate=1e20",), 2,
         r"non-finite loss .* stopped: no checkpoint was written yet"),
    Case("damaged_newest_checkpoint", H, (), 0,
         r"warning: checkpoint 4 in .* is damaged .*; moved to .*checkpoints_damaged/4",
         workdir=H, prepare=both(unfinished(4), flip_bytes(4)), same_result=True),
    Case("truncated_newest_checkpoint", H, (), 0, r"warning: checkpoint 4 in .* is damaged",
         workdir=H, prepare=both(unfinished(4), truncate_largest(4)), same_result=True),
    Case("emptied_newest_checkpoint", H, (), 0, r"warning: checkpoint 4 in .* is damaged",
         workdir=H, prepare=both(unfinished(4), empty_step(4)), same_result=True),
    Case("damaged_checkpoint_metadata", H, (), 0, r"warning: checkpoint 4 in .* is damaged",
         workdir=H, prepare=both(unfinished(4), flip_bytes(4, "_CHECKPOINT_METADATA")), same_result=True),
    Case("damaged_array_metadata", H, (), 0, r"warning: checkpoint 4 in .* is damaged",
         workdir=H, prepare=both(unfinished(4), flip_bytes(4, "process_0")), same_result=True),
    Case("all_checkpoints_damaged", H, (), 2, r"no checkpoint restores \(damaged: steps 4, 3, moved to",
         workdir=H, prepare=both(unfinished(4), flip_bytes(4), flip_bytes(3))),
    Case("kill_during_checkpoint", H, (), 0,
         r"^warning: removed W/checkpoints/2\.orbax-checkpoint-tmp: a checkpoint save that was interrupted",
         kill="checkpoint:2", same_result=True),
    Case("ctrl_c_during_checkpoint", H, (), 0, r"^warning: removed W/checkpoints/2\.orbax-checkpoint-tmp",
         kill="sigint:checkpoint:2", same_result=True),
    Case("kill_during_metrics_jsonl", H, (), 0, r"^$", kill="metrics.jsonl:2", same_result=True),
    Case("kill_during_checkpoint_gste", H, ("--config.quant.bits=1", "--config.quant.estimator=gste",
                                            "--config.quant.delta_every=2"), 0,
         r"^warning: removed W/checkpoints/3\.orbax-checkpoint-tmp", kill="checkpoint:3",
         check=lambda c, result: repeated_records(os.path.join(c, "w"))),
    Case("kill_during_config_json", H, (), 0, r"^$", kill="config.json:1", same_result=True),
    Case("kill_during_config_json_extend", H, ("--config.train.epochs=6", "--extend"), 0,
         r"warning: W: continuing the run from train\.epochs=4 to 6", workdir=H, kill="config.json:1",
         intact=WORKDIR_FILES),
    Case("kill_during_results_json", H, (), 0, r"^$", workdir=H, kill="results.json:1",
         intact=WORKDIR_FILES, same_result=True),
    Case("kill_during_export_npz", H, (), 0, r"^$", workdir=H, kill="export.npz:1",
         intact=WORKDIR_FILES, same_result=True),
    # ---- mpe: CTR data (Frappe / libFM files)
    Case("frappe_missing_folder", M, ("--config.data.spec=frappe:{c}/nowhere",), 2,
         r"nowhere: not a folder \(expected the Frappe libFM files\)"),
    Case("frappe_missing_validation_file", M, (FRAPPE,), 2, r"frappe\.validation\.libfm",
         files=frappe(valid=None)),
    Case("frappe_empty_test_file", M, (FRAPPE,), 2, r"frappe\.test\.libfm: no data rows", files=frappe(test="")),
    Case("frappe_malformed_line", M, (FRAPPE,), 2,
         r"frappe\.train\.libfm:3: expected a label and 10 idx:value pairs",
         files=frappe(train="".join(l + "\n" for l in [*GOOD_TRAIN.splitlines()[:2], "1 0:1 957:1",
                                                          *GOOD_TRAIN.splitlines()[3:]]))),
    Case("frappe_not_a_number", M, (FRAPPE,), 2,
         r"frappe\.test\.libfm:1: label, feature index or value is not a number",
         files=frappe(test="yes" + GOOD_TEST[1:])),
    Case("frappe_id_out_of_range", M, (FRAPPE,), 2,
         r"frappe\.validation\.libfm:2: feature id 9999 out of range 0\.\.5381",
         files=frappe(valid=GOOD_VALID.replace(GOOD_VALID.splitlines()[1].split()[-1], "9999:1", 1))),
    Case("frappe_id_in_wrong_field", M, (FRAPPE,), 2,
         r"frappe\.train\.libfm:1: feature id 5 out of range for field 1 \(item\)",
         files=frappe(train=GOOD_TRAIN.replace(GOOD_TRAIN.split()[2], "5:1", 1))),
    Case("frappe_label_2", M, (FRAPPE,), 2, r"frappe\.train\.libfm:1: label must be 1 or -1",
         files=frappe(train="2" + GOOD_TRAIN[1:])),
    Case("frappe_valid_one_class", M, (FRAPPE,), 2,
         r"frappe\.validation\.libfm: the valid split has one class only: 0 positives and 20 negatives",
         files=frappe(valid=frappe_rows(20, 1, labels=(-1,)))),
    Case("frappe_test_one_class", M, (FRAPPE,), 2,
         r"frappe\.test\.libfm: the test split has one class only: 20 positives and 0 negatives",
         files=frappe(test=frappe_rows(20, 2, labels=(1,)))),
    Case("libfm_two_paths", M, ("--config.data.spec=libfm:{c}/a,{c}/b",), 2, r"expected TRAIN,VALID,TEST"),
    Case("libfm_not_one_hot", M, (LIBFM,), 2, r"frappe\.train\.libfm:1: only one-hot rows",
         files=frappe(train=GOOD_TRAIN.replace(":1", ":0.5", 1))),
    Case("unknown_data_spec", M, ("--config.data.spec=movielens:{c}",), 2, r"unknown CTR dataset spec 'movielens:"),
    Case("unknown_method", M, ("--config.method=pep",), 2, r"config\.method: unknown method 'pep'"),
    Case("zero_epochs", M, ("--config.train.max_epochs=0",), 2, r"config\.train\.max_epochs must be >= 1"),
    Case("processes_without_coordinator", M, ("--num_processes=2",), 2,
         r"--num_processes=2 needs --coordinator_address=HOST:PORT"),
    # ---- mpe: the workdir
    Case("changed_embedding_dim", M, ("--config.model.dim=4",), 2,
         r"W was started with another config: model\.dim \(8 -> 4\)", workdir=M),
    Case("fewer_epochs", M, ("--config.train.max_epochs=1",), 2, r"another config: train\.max_epochs \(2 -> 1\)",
         workdir=M),
    Case("more_epochs_with_extend", M, ("--config.train.max_epochs=3", "--extend"), 0,
         r"warning: W: continuing the run from train\.max_epochs=2 to 3", workdir=M),
    Case("changed_method", M, ("--config.method=fp",), 2, r"another config: method \(\"lsq\" -> \"fp\"\)",
         workdir=M),
    Case("non_finite_loss_before_any_checkpoint", M, ("--config.train.learning_rate=1e30",), 2,
         r"non-finite loss .* stopped: no checkpoint was written yet"),
    Case("damaged_newest_checkpoint", M, (), 0, r"warning: checkpoint 6 in .* is damaged .*; moved to",
         workdir=M, prepare=both(unfinished(6), flip_bytes(6)), same_result=True),
    Case("all_checkpoints_damaged", M, (), 2, r"no checkpoint restores \(damaged: steps 6, 3, moved to",
         workdir=M, prepare=both(unfinished(6), flip_bytes(6), flip_bytes(3))),
    Case("kill_during_checkpoint", M, (), 0,
         r"^warning: removed W/checkpoints/6\.orbax-checkpoint-tmp: a checkpoint save that was interrupted",
         kill="checkpoint:6", same_result=True),
    Case("kill_during_config_json", M, (), 0, r"^$", kill="config.json:1", same_result=True),
    Case("kill_during_metrics_jsonl", M, (), 0, r"^$", kill="metrics.jsonl:2", same_result=True),
    Case("kill_during_results_json", M, (), 0, r"^$", workdir=M, kill="results.json:1",
         intact=WORKDIR_FILES, same_result=True),
    Case("kill_during_export_npz", M, (), 0, r"^$", workdir=M, kill="export.npz:1",
         intact=WORKDIR_FILES, same_result=True),
    # ---- evaluate: export.npz
    Case("export_of_the_trained_run", E, ("--embeddings={c}/w/export.npz",), 0, r"^$", workdir=H,
         check=lambda c, result: evaluated_as_trained(c, result)),
    Case("missing_npz", E, ("--embeddings={c}/absent.npz",), 2, r"absent\.npz: (export )?file not found"),
    Case("empty_npz", E, EMB, 2, r"e\.npz: (empty file|not a readable)", files={"e.npz": b""}),
    Case("text_file_as_npz", E, EMB, 2, r"e\.npz: not a readable \.npz file", files={"e.npz": "user_embeddings\n"}),
    Case("truncated_npz", E, EMB, 2, r"e\.npz: not a readable \.npz file \(File is not a zip file\)",
         files={"e.npz": lambda p: truncated_copy(float_export(), p)}),
    Case("npz_of_objects", E, EMB, 2, r"e\.npz: .*(not a plain numeric array|not a readable)",
         files={"e.npz": npz(user_embeddings=np.array([None, 1], dtype=object), item_embeddings=floats(3))}),
    Case("wrong_npz_keys", E, EMB, 2, r"e\.npz: .*missing key\(s\) item_embeddings",
         files={"e.npz": npz(user_embeddings=floats(LASTFM_USERS), item_vectors=floats(LASTFM_ITEMS))}),
    Case("user_rows_do_not_match", E, EMB, 2, r"user representation has 1891 rows but dataset 'lastfm' has 1892 users",
         files={"e.npz": float_export(users=floats(LASTFM_USERS - 1))}),
    Case("item_ids_out_of_range", E, ("--data_dir={c}/data", *EMB), 2,
         r"item representation has 4489 rows but dataset 'data' has 5000 items",
         files={**lightgcn(train="0 1 2\n1 4999\n", test="0 3\n1 0\n"), "e.npz": float_export(users=floats(2))}),
    Case("one_dimensional_embeddings", E, EMB, 2, r"(must be 2-D|\(n, d\) matrix, got shape \(1892,\))",
         files={"e.npz": float_export(users=np.zeros(LASTFM_USERS, np.float32))}),
    Case("dims_differ", E, EMB, 2, r"(dim 4 differs from item dim 8|dimensions differ \(4 vs 8\))",
         files={"e.npz": float_export(items=floats(LASTFM_ITEMS, 8))}),
    Case("integer_embeddings", E, EMB, 2, r"user[_ ]embeddings must be (floating point|floats), got (dtype )?int64",
         files={"e.npz": float_export(users=np.ones((LASTFM_USERS, 4), np.int64))}),
    Case("nan_embeddings", E, EMB, 2, r"item[_ ]embeddings contains? (non-finite|NaN)",
         files={"e.npz": float_export(items=np.where(np.arange(4) == 2, np.nan, floats(LASTFM_ITEMS)))}),
    Case("quantized_missing_offset", E, EMB, 2, r"quantized export is missing key\(s\) item_offset",
         files={"e.npz": quantized(item_offset=None)}),
    Case("quantized_bits_not_integer", E, EMB, 2, r"'bits' must be one integer",
         files={"e.npz": quantized(bits=np.float32(2.0))}),
    Case("quantized_unsupported_bits", E, EMB, 2, r"bits=5", files={"e.npz": quantized(bits=np.int32(5))}),
    Case("quantized_codes_out_of_range", E, EMB, 2, r"user_codes .*\[0, 3\], found 0\.\.8",
         files={"e.npz": quantized(high=9)}),
    Case("quantized_float_codes", E, EMB, 2, r"user_codes must be integers, got dtype float32",
         files={"e.npz": quantized(codes_dtype=np.float32)}),
    Case("quantized_nan_scale", E, EMB, 2, r"user_scale must be positive and finite",
         files={"e.npz": quantized(user_scale=np.float32(np.nan))}),
    Case("ks_not_integers", E, ("--embeddings={c}/absent.npz", "--ks=20,top"), 2,
         r"--ks: expected comma-separated integers, got '20,top'"),
    Case("malformed_data_file", E, ("--data_dir={c}/data", "--embeddings={c}/absent.npz"), 2,
         r"data/test\.txt:2: malformed token '1\.5'", files=lightgcn(test="0 3\n1 1.5\n")),
]


def evaluated_as_trained(case_dir: str, result) -> list[str]:
  """evaluate's JSON line equals the metrics that the trainer computed from the same export.npz."""
  want = json.load(open(os.path.join(case_dir, "w", "results.json")))["metrics"]
  got = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
  return [] if got == want else [f"evaluate printed {got}, the trainer's results.json has {want}"]


def truncated_copy(write, path):
  write(path)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# ----------------------------------------------------------------------------------------------------------
# Running a case
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
  case: Case
  argv: list[str]
  result: Result
  killed: Result | None
  problems: list[str]
  seconds: float = 0.0  # of both runs, when the first is killed
  cpu_seconds: float = 0.0

  def error_line(self) -> str:
    """The line that the table shows: the `prog: error:` line, else the first warning, else ''."""
    lines = self.result.stderr.splitlines()
    for prefix in (f"{self.case.binary}: error:", "warning:"):
      found = [l for l in lines if l.startswith(prefix)]
      if found:
        return found[0]
    return lines[-1] if lines else ""


def reference_argv(binary: str, workdir: str) -> list[str]:
  return [*(HQGNN_ARGS if binary == H else MPE_ARGS), f"--workdir={workdir}"]


def case_argv(case: Case, case_dir: str) -> list[str]:
  args = [a.replace("{c}", case_dir) for a in case.args]
  if case.binary == E:
    return args
  return [*reference_argv(case.binary, os.path.join(case_dir, "w")), *args]


def _write_files(case_dir: str, files: dict) -> None:
  for rel, content in files.items():
    path = os.path.join(case_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if callable(content):
      content(path)
    else:
      with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def _parse_problems(workdir: str) -> list[str]:
  """Every workdir file that exists must parse completely."""
  problems = []
  for name in WORKDIR_FILES:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    try:
      if name.endswith(".json"):
        json.load(open(path))
      elif name.endswith(".jsonl"):
        [json.loads(l) for l in open(path) if l.strip()]
      else:
        with np.load(path) as f:
          [f[k] for k in f.files]
    except Exception as e:  # noqa: BLE001
      problems.append(f"{name} does not parse after the kill: {e!r}")
  return problems


def _snapshot(workdir: str, names) -> dict:
  out = {}
  for name in names:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      out[name] = open(path, "rb").read()
  return out


def metric_records(workdir: str) -> list[dict]:
  """metrics.jsonl without its timing fields (they differ between runs)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if not k.endswith("seconds")} for l in f if l.strip()]


def repeated_records(workdir: str) -> list[str]:
  """Problems if metrics.jsonl holds two records of the same kind for one step."""
  keys = [(r.get("step"), r.get("event") or r.get("phase") or ("final" if r.get("final") else "eval"))
          for r in metric_records(workdir)]
  return [] if len(keys) == len(set(keys)) else [f"metrics.jsonl repeats records: {keys}"]


def same_result_problems(workdir: str, reference: str) -> list[str]:
  """The final metrics, export.npz and metrics.jsonl of `workdir` equal those of `reference`, bit for bit."""
  problems = []
  got, want = (json.load(open(os.path.join(d, "results.json"))) for d in (workdir, reference))
  keys = ["metrics"] if "metrics" in want else ["test_auc", "test_logloss", "valid_auc", "best_epoch"]
  for key in keys:
    if got.get(key) != want[key]:
      problems.append(f"results.json {key}: {got.get(key)} != uninterrupted {want[key]}")
  with np.load(os.path.join(reference, "export.npz")) as a, np.load(os.path.join(workdir, "export.npz")) as b:
    if sorted(a.files) != sorted(b.files) or any(a[k].tobytes() != b[k].tobytes() or a[k].dtype != b[k].dtype
                                                  for k in a.files):
      problems.append("export.npz differs from the uninterrupted run's")
  got_records, want_records = metric_records(workdir), metric_records(reference)
  if got_records != want_records:
    problems.append(f"metrics.jsonl differs from the uninterrupted run's: steps {[r.get('step') for r in got_records]}"
                    f" vs {[r.get('step') for r in want_records]}")
  return problems


def execute(case: Case, runner, root: str, references: dict) -> Outcome:
  """Runs one case in `root/<binary>_<name>`; returns what it got and what differs from the expectation."""
  case_dir = os.path.join(root, f"{case.binary}_{case.name}")
  workdir = os.path.join(case_dir, "w")
  outcome = Outcome(case, [], Result("not run", "", "", 0.0), None, [])
  problems = outcome.problems
  try:
    os.makedirs(case_dir)
    _write_files(case_dir, case.files)
    if case.workdir:
      shutil.copytree(references[case.workdir], workdir)
    if case.prepare:
      case.prepare(case_dir)
    outcome.argv = argv = case_argv(case, case_dir)
    module = PROGS[case.binary]
    if case.kill:
      before = _snapshot(workdir, case.intact)
      outcome.killed = killed = runner.run(module, argv, kill=case.kill)
      outcome.seconds += killed.seconds
      outcome.cpu_seconds += killed.cpu_seconds
      if case.kill.startswith("sigint:"):  # Ctrl-C: status 130 and one line
        if killed.status != 130 or not re.fullmatch(rf"{case.binary}: interrupted \(rerun the same command to "
                                                     r"resume from the last checkpoint\)\n", killed.stderr):
          problems.append(f"Ctrl-C gave status {killed.status} and stderr {killed.stderr[-2000:]!r}")
      elif killed.status != -9:
        problems.append(f"the run to be killed at {case.kill} ended with status {killed.status}: "
                        f"{killed.stderr[-2000:]}")
      problems += _parse_problems(workdir)
      after = _snapshot(workdir, case.intact)
      problems += [f"{name} changed by the killed run" for name in before if after.get(name) != before[name]]
    before = _snapshot(workdir, WORKDIR_FILES)
    outcome.result = result = runner.run(module, argv)
    outcome.seconds += result.seconds
    outcome.cpu_seconds += result.cpu_seconds
    if result.status != case.status:
      problems.append(f"exit status {result.status}, expected {case.status}")
    if "Traceback" in result.stderr:
      problems.append("Python traceback on stderr")
    if case.status == 2:
      errors = [l for l in result.stderr.splitlines() if l.startswith(f"{case.binary}: error: ")]
      if len(errors) != 1:
        problems.append(f"{len(errors)} '{case.binary}: error:' lines")
      after = _snapshot(workdir, WORKDIR_FILES)
      problems += [f"{name} changed by a run that stopped with an error" for name in before
                   if after.get(name) != before[name]]
    noise = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith((f"{case.binary}: error: ",
                                                                                       "warning: "))
             and not XLA_SLOW_COMPILE.match(l)]
    if noise:
      problems.append(f"{len(noise)} stderr lines other than 'warning:' / '{case.binary}: error:', first: "
                      f"{noise[0][:300]!r}")
    if case.kill:
      left = [n for d in (workdir, os.path.join(workdir, "checkpoints")) if os.path.isdir(d)
              for n in os.listdir(d) if ".tmp" in n or "orbax-checkpoint-tmp" in n]
      if left:
        problems.append(f"temporary files left after the rerun: {left}")
    shown = outcome.error_line().replace(workdir, "W")
    if not re.search(case.stderr, result.stderr if case.stderr == "^$" else shown):
      problems.append(f"stderr does not match {case.stderr!r}")
    if case.same_result and result.status == 0:
      problems += same_result_problems(workdir, references[case.binary])
    if case.check:
      problems += case.check(case_dir, result)
  except Exception as e:  # noqa: BLE001 - reported as the case's problem
    problems.append(f"the case could not run: {e!r}")
  if problems:
    problems.append(f"stderr tail: {outcome.result.stderr[-1500:]}")
  return outcome


def train_references(runner, root: str, binaries) -> dict:
  """One uninterrupted run per trainer (the tiny configs); the cases copy these workdirs."""
  references = {}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {b: pool.submit(runner.run, PROGS[b], reference_argv(b, os.path.join(root, f"reference_{b}")))
               for b in sorted(binaries)}
    for b, future in futures.items():
      result = future.result()
      assert result.status == 0, result.stderr[-3000:]
      references[b] = os.path.join(root, f"reference_{b}")
  return references


def run_cases(cases, runner, root: str, workers: int = 2) -> dict[str, Outcome]:
  references = train_references(runner, root, {c.workdir for c in cases if c.workdir} |
                                {c.binary for c in cases if c.same_result})
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = {case_id(c): pool.submit(execute, c, runner, root, references) for c in cases}
    return {name: f.result() for name, f in futures.items()}


def case_id(case: Case) -> str:
  return f"{case.binary}-{case.name}"


# ----------------------------------------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
  """Runs the selected cases (all by default), two at a time, once for the module."""
  selected = {item.callspec.id for item in request.session.items
              if getattr(item, "originalname", "") == "test_bad_input" and hasattr(item, "callspec")}
  cases = [c for c in CASES if case_id(c) in selected] or CASES
  runner = ForkRunner(workers=2)
  try:
    yield run_cases(cases, runner, str(tmp_path_factory.mktemp("bad_input")))
  finally:
    runner.close()


def test_case_names_are_unique():
  ids = [case_id(c) for c in CASES]
  assert len(ids) == len(set(ids)) and len(CASES) >= 30


# ----------------------------------------------------------------------------------------------------------
# Appended (issue 21): tabular records that would vanish, byte-order marks, ids too large or too sparse
# ----------------------------------------------------------------------------------------------------------

CRITEO_CSV_HEADER = "label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))


def criteo_row(label: int, c3: str = "c3") -> str:
  """One Criteo CSV row (40 columns) whose C3 is `c3` as written (quote it yourself)."""
  return ",".join([str(label), *map(str, range(13)), "c1", "c2", c3, *[f"c{i}" for i in range(4, 27)]])


def libfm_hashed(base: int) -> dict:
  """train / valid / test libFM files of 3 one-hot fields whose last field holds ids `base` + 0..9."""
  def rows(n, seed):
    rng = np.random.default_rng(seed)
    return "".join(f"{1 if i % 2 else -1} {rng.integers(0, 5)}:1 {5 + rng.integers(0, 5)}:1 "
                   f"{base + int(rng.integers(0, 10))}:1\n" for i in range(n))
  return {"l/train.libfm": rows(40, 0), "l/valid.libfm": rows(10, 1), "l/test.libfm": rows(10, 2)}


LIBFM_HASHED = "--config.data.spec=libfm:{c}/l/train.libfm,{c}/l/valid.libfm,{c}/l/test.libfm"
CRITEO_CSV = "--config.data.spec=criteo:{c}/c.csv"

CASES += [
    Case("sparse_user_id", H, (DATA,), 2,
         r"data/train\.txt:3: user id 2000000000 implies a table of 2,000,000,001 rows for 4 distinct user ids "
         r"\(limit 4,194,304: .*\); ids are table rows and must be dense: remap them to 0\.\.N-1$",
         files=lightgcn(train="0 0 1 2\n1 2 3\n2000000000 1 4\n")),
    Case("sparse_item_id", E, ("--data_dir={c}/data", "--embeddings={c}/absent.npz"), 2,
         r"data/test\.txt:2: item id 300000000 implies a table of 300,000,001 rows for 6 distinct item ids",
         files=lightgcn(test="0 3\n1 300000000\n")),
    Case("criteo_unclosed_quote", M, (CRITEO_CSV,), 2,
         r"c\.csv:3: a quoted value opens here and is not closed before the end of the file",
         files={"c.csv": "\n".join([CRITEO_CSV_HEADER, criteo_row(0), criteo_row(1, '"open'), criteo_row(0)])}),
    Case("criteo_short_record_after_quoted_newline", M, (CRITEO_CSV,), 2, r"c\.csv:4: expected 40 columns, found 39$",
         files={"c.csv": "\n".join([CRITEO_CSV_HEADER, criteo_row(0, '"two\nlines"'), criteo_row(1).rsplit(",", 1)[0],
                                    criteo_row(0)]) + "\n"}),
    Case("criteo_utf16_file", M, ("--config.data.spec=criteo:{c}/c.tsv",), 2,
         r"c\.tsv:1: the file starts with a UTF-16 byte-order mark; expected UTF-8 text",
         files={"c.tsv": (criteo_row(0) + "\n").encode("utf-16")}),
    Case("libfm_hashed_id_beyond_int32", M, (LIBFM_HASHED,), 2,
         r"l/train\.libfm:1: feature id 429496700\d too large \(ids are int32 table rows: at most 2,147,483,647\)",
         files=libfm_hashed(4_294_967_000)),
    Case("libfm_sparse_hashed_ids", M, (LIBFM_HASHED,), 2,
         r"l/(train|valid|test)\.libfm:\d+: feature id 200000000\d implies a table of 2,000,000,01?\d rows for 20 "
         r"distinct feature ids", files=libfm_hashed(2_000_000_000)),
]


# ----------------------------------------------------------------------------------------------------------
# Appended (issue 21): workdir paths with glob brackets, checkpoints that were never readable, a coordinator
# that never answers, clean messages for a mistyped config key and unsupported bits
# ----------------------------------------------------------------------------------------------------------


def _closed_port() -> int:
  """A localhost port that nothing listened on a moment ago (a coordinator that never answers)."""
  import socket  # noqa: PLC0415 - only this helper needs it
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


CLOSED_PORT = _closed_port()
# Process 0 alone hosts a coordinator on HOST_PORT: another port than CLOSED_PORT, since the cases run
# concurrently and a process 1 pointed at CLOSED_PORT would otherwise join it.
HOST_PORT = next(p for p in iter(_closed_port, None) if p != CLOSED_PORT)


def drop_ocdbt_index(case_dir: str) -> None:
  """Makes every checkpoint of C/w what an older hq_jax wrote under a path with '[' or ']': committed, arrays in
  place, but without the root OCDBT index (`manifest.ocdbt`), which orbax skipped writing there."""
  root = os.path.join(case_dir, "w", "checkpoints")
  for step in os.listdir(root):
    os.remove(os.path.join(root, step, "default", "manifest.ocdbt"))


def nothing_moved_aside(case_dir: str, result) -> list[str]:
  del result
  damaged = os.path.join(case_dir, "w", "checkpoints_damaged")
  return [f"checkpoints moved to {damaged}"] if os.path.exists(damaged) else []


def distributed(process_id: int, timeout: str = "1") -> tuple[str, ...]:
  port = HOST_PORT if process_id == 0 else CLOSED_PORT
  return ("--num_processes=2", f"--process_id={process_id}", f"--coordinator_address=localhost:{port}",
          f"--distributed_timeout={timeout}")


CASES += [
    # The case's folder (so the workdir C/w) has glob brackets, a space, '#' and '%' in its name: orbax globs
    # its own path; the run is killed during a save and resumes from the previous checkpoint.
    Case("kill_during_checkpoint_in_workdir[x] #%", H, (), 0,
         r"^warning: removed W/checkpoints/2\.orbax-checkpoint-tmp: a checkpoint save that was interrupted",
         kill="checkpoint:2", same_result=True),
    Case("kill_during_checkpoint_in_workdir[x] #%", M, (), 0,
         r"^warning: removed W/checkpoints/6\.orbax-checkpoint-tmp: a checkpoint save that was interrupted",
         kill="checkpoint:6", same_result=True),
    Case("never_readable_checkpoints", H, (), 2,
         r"checkpoint 4 in W/checkpoints was never readable: orbax committed it without the OCDBT index of its "
         r"arrays \(default/manifest\.ocdbt\).*left in place", workdir=H, prepare=drop_ocdbt_index,
         check=nothing_moved_aside),
    Case("never_readable_checkpoints", M, (), 2, r"checkpoint 6 in W/checkpoints was never readable", workdir=M,
         prepare=drop_ocdbt_index, check=nothing_moved_aside),
    Case("coordinator_never_answers", H, distributed(1), 2,
         rf"process 1 of 2: no coordinator answered at localhost:{CLOSED_PORT} within 1 s \(is process 0 running"),
    Case("coordinator_never_answers", M, distributed(1), 2,
         rf"process 1 of 2: no coordinator answered at localhost:{CLOSED_PORT} within 1 s"),
    Case("peers_never_join", H, distributed(0, "3"), 2,
         rf"process 0 of 2: not every process joined the run at localhost:{HOST_PORT} within 3 s"),
    Case("distributed_timeout_not_positive", H, distributed(1, "0"), 2,
         r"--distributed_timeout must be a positive number of seconds, got 0\.0$"),
    Case("mistyped_config_field", H, ("--config.train.epoch=3",), 2,
         r"unknown config field in an override: 'epoch'; Did you mean \"epochs\" instead of \"epoch\"\?$"),
    Case("unsupported_bits_said_once", H, ("--config.quant.bits=5",), 2,
         r"hqgnn: error: config\.quant \(bits='5'\): bits must be none \(full precision\) or one of 1, 2, 3, 4, 8$"),
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=c.known_bug, strict=True))
                                  if c.known_bug else c for c in CASES], ids=case_id)
def test_bad_input(outcomes, case):  # after every CASES block: the parametrisation reads the list here
  outcome = outcomes[case_id(case)]
  assert not outcome.problems, "\n".join(outcome.problems)
