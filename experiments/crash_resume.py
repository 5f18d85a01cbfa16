r"""Kills the trainers with SIGKILL at random moments and checks that rerunning them gives the same result.

  python -m experiments.crash_resume --workdir=runs/crash_resume --kills=10 --seed=0

For each binary (`experiments.hqgnn`, `experiments.mpe`, by default on their tiny test configs): one
uninterrupted run in WORKDIR/<binary>/clean; then, in a fresh WORKDIR/<binary>/killed, the same command is
started `--kills` times and killed with SIGKILL once per start (`kill_plan`, drawn from `--seed`): first
kills during training, each at a random time of the training still to do (from the uninterrupted run's
timing) or at the n-th checkpoint save or metrics.jsonl write seen in progress (an orbax temporary folder, a
temporary file of `hq_jax.workdir.atomic_write`), then kills during the final results.json / export.npz
writes. A start that finishes before its kill just finishes (a finished workdir is re-evaluated by the next
start, which rewrites its results). After every kill, each workdir file must still parse, results.json /
export.npz that existed before the start must still exist, and no checkpoint may be lost. Then one last
start runs to the end: its results.json metrics and export.npz must equal the uninterrupted run's, bit for
bit (metrics.jsonl is compared too, without its timing fields, and reported).

Prints one line per binary (`k of N kills landed, ... bit-identical: yes/no`) and, with --output, writes
the full report as JSON. Exit status 1 when a rerun failed or a result differs.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
from absl import app
from absl import flags

from hq_jax import strict_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ARGS = {
    "hqgnn": "--config=experiments/configs/hqgnn_test.py",
    "mpe": "--config=experiments/configs/mpe_test.py --config.method=mpe",
}
KILL_KINDS = ("time", "checkpoint", "results.json", "export.npz", "metrics.jsonl")
KILL_ODDS = (0.4, 0.3, 0.1, 0.1, 0.1)
TIMING_KEYS = ("seconds", "train_seconds", "wall_seconds")  # metrics.jsonl fields that differ between runs

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the runs (WORKDIR/<binary>/clean and /killed).")
_BINARIES = flags.DEFINE_list("binaries", ["hqgnn", "mpe"], "Trainers to kill: hqgnn, mpe.")
_KILLS = flags.DEFINE_integer("kills", 10, "Starts that get a kill, per binary.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_HQGNN_ARGS = flags.DEFINE_string("hqgnn_args", DEFAULT_ARGS["hqgnn"], "Arguments of experiments.hqgnn.")
_MPE_ARGS = flags.DEFINE_string("mpe_args", DEFAULT_ARGS["mpe"], "Arguments of experiments.mpe.")
_PARALLEL = flags.DEFINE_bool("parallel", False, "Run the binaries' sequences at the same time.")
_TIMEOUT = flags.DEFINE_integer("timeout", 900, "Seconds one start may take.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the full report.")
_JAX_CACHE = flags.DEFINE_string("jax_cache", "", "A JAX persistent compilation cache folder for all runs (each "
                                 "program then compiles once: faster, e.g. for tests); empty: none, as a user "
                                 "runs.")


def in_progress(workdir: str, kind: str) -> list[str]:
  """The temporary files / folders of a `kind` write in progress in `workdir` (see the module docstring)."""
  if kind == "checkpoint":
    folder, match = os.path.join(workdir, "checkpoints"), lambda n: ".orbax-checkpoint-tmp" in n
  else:
    folder, match = workdir, lambda n: n.startswith(f".{kind}.tmp")
  try:
    return [os.path.join(folder, n) for n in os.listdir(folder) if match(n)]
  except FileNotFoundError:
    return []


def unreadable_files(workdir: str) -> list[str]:
  """Workdir files that exist but do not parse completely."""
  bad = []
  for name in ("config.json", "results.json", "metrics.jsonl", "export.npz"):
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    try:
      if name.endswith(".json"):
        with open(path, encoding="utf-8") as f:
          json.load(f)
      elif name.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
          [json.loads(line) for line in f if line.strip()]
      else:
        with np.load(path) as npz:
          [npz[k] for k in npz.files]
    except Exception as e:  # noqa: BLE001 - any failure to parse is the finding
      bad.append(f"{name} ({type(e).__name__}: {e})")
  return bad


def _step_folders(workdir: str) -> set[int]:
  folder = os.path.join(workdir, "checkpoints")
  try:
    return {int(n) for n in os.listdir(folder) if n.isdigit()}
  except FileNotFoundError:
    return set()


def latest_checkpoint(workdir: str) -> int | None:
  return max(_step_folders(workdir), default=None)


class Command:
  """One trainer command; `start()` runs it with stdout/stderr to files in `logs`."""

  def __init__(self, binary: str, args: list[str], workdir: str, logs: str, jax_cache: str = ""):
    self.argv = [sys.executable, "-m", f"experiments.{binary}", *args, f"--workdir={workdir}"]
    self.workdir, self.logs = workdir, logs
    self.env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if jax_cache:
      self.env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(jax_cache),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    self.starts = 0

  def start(self) -> subprocess.Popen:
    self.starts += 1
    os.makedirs(self.logs, exist_ok=True)
    out = open(os.path.join(self.logs, f"{self.starts}.out"), "w")
    err = open(os.path.join(self.logs, f"{self.starts}.err"), "w")
    return subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=err)

  def stderr(self) -> str:
    with open(os.path.join(self.logs, f"{self.starts}.err"), encoding="utf-8", errors="replace") as f:
      return f.read()


def _metrics_identity(workdir: str):
  try:
    st = os.stat(os.path.join(workdir, "metrics.jsonl"))
  except FileNotFoundError:
    return None
  return st.st_ino, st.st_mtime_ns, st.st_size


def run_to_end(command: Command, timeout: float) -> dict:
  """Runs the command to its end: {'status', 'seconds', 'began' (seconds until training began, shown by
  the trainer's first metrics.jsonl write), 'saves' (checkpoint steps seen)}."""
  before = _metrics_identity(command.workdir)
  t0 = time.time()
  began, saves = None, set()
  proc = command.start()
  while proc.poll() is None and time.time() - t0 < timeout:
    if began is None and _metrics_identity(command.workdir) != before:
      began = time.time() - t0
    saves |= _step_folders(command.workdir)
    time.sleep(0.005)
  timed_out = proc.poll() is None
  if timed_out:
    proc.kill()
  proc.wait()
  duration = time.time() - t0
  return {"status": "timeout" if timed_out else proc.returncode, "seconds": duration,
          "began": duration if began is None else began, "saves": sorted(saves | _step_folders(command.workdir))}


def kill_plan(binary: str, seed: int, kills: int) -> list[dict]:
  """The seeded kills, in order: first those during training, then those of the final writes.

  {'kind': 'time', 'fraction': f}: f times the training still to do (the uninterrupted run's training time
  times the share of its checkpoints not yet written) after this start's training began, f drawn from
  [0, 1.05 / (n - i)] for the i-th of n training kills, so that they spread over the run;
  {'kind': WRITE, 'nth': n}: the n-th write of that kind seen in this start (checkpoint saves: at most the
  saves still to do).
  """
  rng = np.random.default_rng([seed, zlib.crc32(binary.encode())])
  # At least one kill at a random time, one during a checkpoint save and one during the results or export
  # write (then metrics.jsonl and the other one), the rest drawn with KILL_ODDS.
  kinds = ["time", "checkpoint", *rng.permutation(["results.json", "export.npz"]), "metrics.jsonl"][:kills]
  kinds += [str(k) for k in rng.choice(KILL_KINDS, p=KILL_ODDS, size=max(kills - len(kinds), 0))]
  training = [str(k) for k in rng.permutation([k for k in kinds if k in ("time", "checkpoint", "metrics.jsonl")])]
  final = [str(k) for k in rng.permutation([k for k in kinds if k in ("results.json", "export.npz")])]
  plan = []
  for i, kind in enumerate(training + final):
    if kind == "time":  # the i-th of n training kills aims within 1 / (n - i) of the training still to do
      share = 1.0 / (len(training) - i) if i < len(training) else 1.0
      plan.append({"kind": kind, "fraction": round(float(rng.uniform(0.0, 1.05) * share), 3)})
    else:
      plan.append({"kind": kind, "nth": int(rng.integers(1, 4)) if kind in ("checkpoint", "metrics.jsonl") else 1})
  return plan


def attempt(command: Command, kill: dict, clean: dict, timeout: float) -> dict:
  """Starts the command and kills it at `kill` (see `kill_plan`; `clean` is `run_to_end` of the
  uninterrupted run); returns what happened."""
  workdir = command.workdir
  before = {n: os.path.exists(os.path.join(workdir, n)) for n in ("results.json", "export.npz")}
  checkpoint_before = latest_checkpoint(workdir)
  to_do = [s for s in clean["saves"] if checkpoint_before is None or s > checkpoint_before]
  train_seconds = (clean["seconds"] - clean["began"]) * max(len(to_do) / max(len(clean["saves"]), 1), 0.05)
  if kill["kind"] == "checkpoint" and to_do:
    kill = dict(kill, nth=min(kill["nth"], len(to_do)))
  metrics_before = _metrics_identity(workdir)
  stale = set(in_progress(workdir, kill["kind"])) if kill["kind"] != "time" else set()
  seen, previous, began = 0, set(), None
  t0 = time.time()
  proc = command.start()
  while proc.poll() is None and time.time() - t0 < timeout:
    if kill["kind"] == "time":
      if began is None and _metrics_identity(workdir) != metrics_before:
        began = time.time()
      if began is not None and time.time() - began >= kill["fraction"] * train_seconds:
        break
      time.sleep(0.002)
    else:
      current = set(in_progress(workdir, kill["kind"]))
      stale &= current  # left by an earlier kill: wait until the rerun has removed it
      seen += len(current - stale - previous)  # writes that appeared since the last look
      previous = current - stale
      if seen >= kill["nth"]:
        break
      time.sleep(0.0005)
  record = dict(kill, start=command.starts)
  if proc.poll() is None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record["landed"] = True
    record["at_seconds"] = round(time.time() - t0, 3)
    # Writes whose temporary files are still there: the kill came before their rename.
    record["during_write"] = [k for k in KILL_KINDS[1:] if in_progress(workdir, k)]
  else:
    record["landed"] = False
    record["exit_status"] = proc.returncode
  problems = []
  if not record["landed"] and proc.returncode != 0:
    problems.append(f"start {command.starts} exited with {proc.returncode}: {command.stderr()[-1500:]}")
  problems += [f"after start {command.starts}: {f} does not parse" for f in unreadable_files(workdir)]
  problems += [f"after start {command.starts}: {n} existed before and is gone" for n, was in before.items()
               if was and not os.path.exists(os.path.join(workdir, n))]
  now = latest_checkpoint(workdir)
  if checkpoint_before is not None and (now is None or now < checkpoint_before):
    problems.append(f"after start {command.starts}: latest checkpoint went from {checkpoint_before} to {now}")
  record["problems"] = problems
  record["latest_checkpoint"] = now
  return record


def _metric_records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f if line.strip()]


def compare(clean: str, killed: str) -> tuple[list[str], list[str]]:
  """(differences of the final results and export.npz, differences of metrics.jsonl)."""
  differences = []
  with open(os.path.join(clean, "results.json")) as f:
    want = json.load(f)
  with open(os.path.join(killed, "results.json")) as f:
    got = json.load(f)
  keys = ["metrics"] if "metrics" in want else ["test_auc", "test_logloss", "valid_auc", "best_epoch",
                                                 "search_valid_auc", "groups", "mean_bits_per_feature", "steps"]
  for key in keys:
    if key in want and got.get(key) != want[key]:
      differences.append(f"results.json {key}: {got.get(key)} vs uninterrupted {want[key]}")
  exports = [os.path.join(d, "export.npz") for d in (clean, killed)]
  if os.path.exists(exports[0]) or os.path.exists(exports[1]):
    if not all(map(os.path.exists, exports)):
      differences.append("export.npz exists in one run only")
    else:
      with np.load(exports[0]) as a, np.load(exports[1]) as b:
        for k in sorted(set(a.files) | set(b.files)):
          if k not in a.files or k not in b.files or a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes():
            differences.append(f"export.npz[{k!r}] differs")
  log_differences = []
  a, b = _metric_records(clean), _metric_records(killed)
  if len(a) != len(b):
    log_differences.append(f"metrics.jsonl has {len(b)} records vs {len(a)} uninterrupted (steps "
                           f"{[r.get('step') for r in b]} vs {[r.get('step') for r in a]})")
  else:
    log_differences += [f"metrics.jsonl record {i} differs" for i, (x, y) in enumerate(zip(a, b)) if x != y]
  return differences, log_differences


def crash_resume(binary: str, args: list[str], root: str, kills: int, seed: int, timeout: float,
                 jax_cache: str = "") -> dict:
  """The whole experiment for one binary (see the module docstring)."""
  t_start = time.time()
  base = os.path.join(root, binary)
  shutil.rmtree(base, ignore_errors=True)
  clean = Command(binary, args, os.path.join(base, "clean"), os.path.join(base, "logs_clean"), jax_cache)
  reference = run_to_end(clean, timeout)
  report = {"binary": binary, "command": "python -m " + " ".join(clean.argv[2:-1]) + " --workdir=DIR",
            "seed": seed, "kills_planned": kills, "clean_seconds": round(reference["seconds"], 1),
            "clean_train_seconds": round(reference["seconds"] - reference["began"], 1),
            "clean_checkpoints": reference["saves"], "problems": []}
  if reference["status"] != 0:
    report["problems"].append(f"the uninterrupted run exited with {reference['status']}: "
                              f"{clean.stderr()[-1500:]}")
    return report
  killed = Command(binary, args, os.path.join(base, "killed"), os.path.join(base, "logs_killed"), jax_cache)
  attempts = [attempt(killed, kill, reference, timeout) for kill in kill_plan(binary, seed, kills)]
  for a in attempts:
    report["problems"] += a.pop("problems")
  status = run_to_end(killed, timeout)["status"]
  if status != 0:
    report["problems"].append(f"the last rerun exited with {status}: {killed.stderr()[-1500:]}")
    differences, log_differences = ["no final result"], []
  else:
    differences, log_differences = compare(clean.workdir, killed.workdir)
  landed = [a for a in attempts if a["landed"]]
  report.update(
      attempts=attempts, kills_landed=len(landed),
      kills_during_write={k: sum(k in a["during_write"] for a in landed) for k in KILL_KINDS[1:]},
      starts=killed.starts, bit_identical=not differences, differences=differences,
      metrics_log_identical=not log_differences, metrics_log_differences=log_differences,
      total_seconds=round(time.time() - t_start, 1))
  return report


def summary_line(r: dict) -> str:
  if "kills_landed" not in r:
    return f"{r['binary']}: FAILED before any kill: {r['problems']}"
  writes = ", ".join(f"{n} during {k}" for k, n in r["kills_during_write"].items() if n)
  return (f"{r['binary']}: {r['kills_landed']} of {r['kills_planned']} kills landed ({writes or 'none during a write'}"
          f"), {r['starts']} starts, bit-identical: {'yes' if r['bit_identical'] else 'NO'}; metrics.jsonl "
          f"identical: {'yes' if r['metrics_log_identical'] else 'no'}; problems: {len(r['problems'])}; "
          f"clean run {r['clean_seconds']} s, all {r['total_seconds']} s")


def main(argv):
  del argv
  args = {"hqgnn": _HQGNN_ARGS.value.split(), "mpe": _MPE_ARGS.value.split()}
  unknown = [b for b in _BINARIES.value if b not in args]
  if unknown:
    raise app.UsageError(f"--binaries: unknown {unknown}; expected hqgnn, mpe")
  root = os.path.abspath(_WORKDIR.value)
  run = lambda b: crash_resume(b, args[b], root, _KILLS.value, _SEED.value, _TIMEOUT.value,  # noqa: E731
                               _JAX_CACHE.value)
  if _PARALLEL.value:
    with concurrent.futures.ThreadPoolExecutor(len(_BINARIES.value)) as pool:
      reports = list(pool.map(run, _BINARIES.value))
  else:
    reports = [run(b) for b in _BINARIES.value]
  for r in reports:
    print(summary_line(r))
    for p in r["problems"] + r.get("differences", []) + r.get("metrics_log_differences", []):
      print("  " + p.replace("\n", "\n    "))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
      strict_json.dump(reports, f, indent=2)
  sys.exit(0 if all(not r["problems"] and r.get("bit_identical") for r in reports) else 1)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
