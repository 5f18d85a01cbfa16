r"""The whole benchmark suite in one command (`make bench`): runs the existing benchmark binaries, one
subprocess each, and writes one JSON and one markdown summary per run under `--out_dir`.

  make bench                                   # = python -m experiments.bench_suite (-> runs/bench/)
  make bench BENCH_FLAGS=--profile=tiny        # a minutes-long smoke run
  make bench BENCH_OUT=results/bench           # a run meant as a result, to commit (results/bench/README.md)
  python -m experiments.bench_suite --profile=tiny --out_dir=/tmp/bench

Parts (each the named binary, unchanged; every ratio is against its peer measured in the same run):
* `epoch`: `experiments.bench_epoch` on Gowalla (tiny: LastFM), the trainer's jitted LightGCN step (both
  aggregations) vs the PyTorch reference step (`experiments/peers/lightgcn_torch.py`, on the same device
  kind) when an interpreter with torch is found (`--torch_python`, default: this one or `python3` on PATH if
  they have it).
* `retrieval`: `experiments.bench_retrieval`, all-user top-20 at Gowalla size (29,858 users x 40,981 items,
  training items excluded, d = 64; tiny: 300 x 2,000, no exclusions) for float32, 1-bit XOR/popcount, 1-bit
  +-1 int8, 4 and 8 bit, each vs its FAISS peer (FlatIP, BinaryFlat, SQ4, SQ8; where faiss is installed) and
  vs JAX float32.
* `mpe`: `experiments.bench_mpe_step`, the CTR step of MPE's search and retrain phases vs full precision.
* `curvature`: `experiments.hqgnn` on the embedded LastFM data, 1-bit GSTE with Hutchinson trace delta
  updates vs the same run with the plain STE (no curvature): seconds per epoch, and the curvature share of
  the GSTE run's training time.

The profile (sizes) follows the backend of `jax.default_backend()` in a child process (the suite itself
never touches the accelerator): `cpu` keeps the whole suite under 15 minutes on a 2-core CPU; `gpu` runs
the same parts at larger sizes (more steps, 10^7-row CTR tables) and the PyTorch peer on CUDA.

Output: `<out_dir>/<UTC stamp>_<backend>[_<profile>].json` (machine, devices, versions, git commit, date,
command, load average before and after, every part's command, wall time, exit status and parsed results) and
`<same>.md` (the summary tables); the profile is in the name when it is not the backend's own (`_tiny`).
`--out_dir` defaults to `runs/bench/`, which git ignores: a run meant as a result, to be committed, passes
`--out_dir=results/bench` (`make bench BENCH_OUT=results/bench`) and gets a line in results/bench/README.md.
A part that fails is recorded with the end of its stderr; the suite then exits 1 after writing the summary.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags

from hq_jax import cli
from hq_jax import strict_json
from hq_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = ("epoch", "retrieval", "mpe", "curvature")

_OUT_DIR = flags.DEFINE_string("out_dir", "runs/bench", "Where the run's JSON and markdown go (relative: to the "
                                "repository root; runs/ is git-ignored: results/bench for a run meant as a result).")
_DATA_DIR = flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data" / "gowalla"),
                                "Gowalla in LightGCN text format (epoch and retrieval parts).")
_PARTS = flags.DEFINE_list("parts", list(PARTS), "Parts to run.")
_PROFILE = flags.DEFINE_enum("profile", "auto", ["auto", "cpu", "gpu", "tiny"],
                             "Sizes: auto = from jax.default_backend(); tiny = a smoke run on LastFM / toy sizes.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "Interpreter with torch for the PyTorch reference step "
                                    "(default: this interpreter or python3 on PATH, if either imports torch; "
                                    "'' = skip the peer).")
_MACHINE = flags.DEFINE_string("machine", "", "Machine description (default: from the platform and devices).")
_PART_TIMEOUT = flags.DEFINE_integer("part_timeout", 900, "Seconds one part may run before it is stopped.")

# Sizes per profile. cpu: measured to fit 15 minutes on the 2-core dev box (results/bench/README.md).
PROFILES = {
    "cpu": {
        "epoch": {"batch_size": 2048, "steps": 5, "warmup": 1, "aggregations": "csr,segment"},
        "retrieval": {"methods": "float32,1bit_xor_popcount,1bit_sign_int8,4bit_int_matmul,8bit_int8",
                      "faiss": "faiss_flat_ip,faiss_binary_flat,faiss_sq4,faiss_sq8", "repeats": 2,
                      "gowalla": True},
        "mpe": {"num_features": "1000000", "num_fields": 20, "batch_size": 4096, "reps": 10, "warmup": 2},
        "curvature": {"epochs": 20, "delta_every": 10, "data_dir": "lastfm"},
    },
    "gpu": {
        "epoch": {"batch_size": 2048, "steps": 50, "warmup": 5, "aggregations": "csr,segment"},
        "retrieval": {"methods": "float32,1bit_xor_popcount,1bit_sign_int8,4bit_int_matmul,4bit_int8,8bit_int8",
                      "faiss": "faiss_flat_ip,faiss_binary_flat,faiss_sq4,faiss_sq8", "repeats": 5,
                      "gowalla": True},
        "mpe": {"num_features": "1000000,10000000", "num_fields": 39, "batch_size": 65536, "reps": 20,
                "warmup": 3},
        "curvature": {"epochs": 40, "delta_every": 10, "data_dir": "lastfm"},
    },
    "tiny": {
        "epoch": {"batch_size": 1024, "steps": 2, "warmup": 1, "aggregations": "csr,segment", "data_dir": "lastfm"},
        "retrieval": {"methods": "float32,1bit_xor_popcount,1bit_sign_int8,8bit_int8",
                      "faiss": "faiss_flat_ip,faiss_binary_flat,faiss_sq8", "repeats": 1, "gowalla": False,
                      "num_users": 300, "num_items": 2000},
        "mpe": {"num_features": "10000", "num_fields": 5, "batch_size": 256, "reps": 2, "warmup": 1},
        "curvature": {"epochs": 3, "delta_every": 2, "data_dir": "lastfm"},
    },
}
# JAX retrieval method -> its FAISS peer (the same comparison bench_retrieval's own ratios make).
FAISS_PEER = {"float32": "faiss_flat_ip", "1bit_xor_popcount": "faiss_binary_flat",
              "1bit_sign_int8": "faiss_binary_flat", "1bit_sign_matmul": "faiss_binary_flat",
              "4bit_int_matmul": "faiss_sq4", "4bit_int8": "faiss_sq4", "8bit_int8": "faiss_sq8",
              "8bit_int_matmul": "faiss_sq8"}


# Data folder name -> the name a summary heading gives it (any other folder: its own name).
DATASET_TITLES = {"lastfm": "LastFM", "gowalla": "Gowalla"}


def dataset_title(data_dir: str) -> str:
  """'LastFM' for the embedded `lastfm`, 'Gowalla' for `../shared/data/gowalla`: what a part ran on."""
  name = os.path.basename(os.path.normpath(data_dir))
  return DATASET_TITLES.get(name.lower(), name)


# ------------------------------------------------------------------------------------------ environment


def probe(python: str, code: str, timeout: float = 300) -> str | None:
  """stdout of `python -c code`, or None when it fails (no accelerator is touched by the suite itself)."""
  try:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                         env=child_env())
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def child_env() -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


def jax_environment() -> dict:
  """Backend, devices and versions, read in a child process."""
  code = ("import jax, jaxlib, platform; from hq_jax import strict_json; from hq_jax.workdir import device_description; "
          "print(strict_json.dumps({'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()], "
          "'device_kinds': sorted({d.device_kind for d in jax.devices()}), 'device': device_description(), "
          "'jax': jax.__version__, 'jaxlib': jaxlib.__version__}))")
  out = probe(sys.executable, code, timeout=1800)
  if out is None:
    raise SystemExit("bench_suite: could not start JAX in a child process")
  return json.loads(out.splitlines()[-1])


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in ("numpy", "flax", "optax", "jraph", "faiss-cpu", "faiss-gpu", "torch"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def git_state() -> dict:
  def git(*args):
    r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO)
    return r.stdout.strip() if r.returncode == 0 else None

  status = git("status", "--porcelain", "--untracked-files=no")
  return {"commit": git("rev-parse", "HEAD"), "tracked_files_modified": bool(status) if status is not None else None}


def machine(env: dict) -> str:
  cpu = ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    pass
  mem = ""
  try:
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    mem = f", {pages * size / 2**30:.0f} GiB RAM"
  except (ValueError, OSError):
    pass
  return f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores{mem}; {env['device']}"


def find_torch_python() -> str:
  if _TORCH_PYTHON.value is not None:
    return _TORCH_PYTHON.value
  for python in dict.fromkeys([sys.executable, shutil.which("python3") or ""]):
    if python and probe(python, "import torch", timeout=120) is not None:
      return python
  return ""


def faiss_installed() -> bool:
  return probe(sys.executable, "import faiss", timeout=120) is not None


# ---------------------------------------------------------------------------------------------- parts


def run_part(name: str, args: list[str]) -> dict:
  """Runs `python -m <args>` from the repo root; returns its command, wall time, status and output."""
  cmd = [sys.executable, "-m", *args]
  shown = "python -m " + " ".join(shlex.quote(a) for a in args)
  print(f"\n== {name}: {shown}", flush=True)
  t = time.perf_counter()
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=child_env(),
                         timeout=_PART_TIMEOUT.value)
    rc, stdout, stderr = out.returncode, out.stdout, out.stderr
  except subprocess.TimeoutExpired as e:
    rc, stdout, stderr = "timeout", _text(e.stdout), _text(e.stderr) + f"\nstopped after {_PART_TIMEOUT.value} s"
  wall = time.perf_counter() - t
  print(stdout[-3000:], flush=True)
  status = "ok" if rc == 0 else "failed"
  row = {"command": shown, "wall_s": wall, "status": status, "returncode": rc}
  if status != "ok":
    row["stderr_tail"] = stderr.strip().splitlines()[-15:]
    print(f"{name} FAILED ({rc}):\n" + "\n".join(row["stderr_tail"]), flush=True)
  print(f"== {name}: {status} in {wall:.0f} s", flush=True)
  row["stdout"] = stdout
  return row


def _text(b) -> str:
  return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def part_epoch(p: dict, tmp: pathlib.Path, torch_python: str, backend: str) -> dict:
  out = tmp / "epoch.json"
  data_dir = p.get("data_dir", _DATA_DIR.value)
  args = ["experiments.bench_epoch", f"--data_dir={data_dir}",
          f"--batch_size={p['batch_size']}", f"--steps={p['steps']}", f"--warmup={p['warmup']}",
          f"--aggregations={p['aggregations']}", f"--out={out}"]
  if torch_python:
    args += [f"--torch_python={torch_python}", f"--torch_device={'cuda' if backend == 'gpu' else 'cpu'}"]
  row = run_part("epoch", args)
  row["data"] = dataset_title(data_dir)
  if row["status"] == "ok":
    res = json.loads(out.read_text())
    rows = res["rows"]
    peer = next((r for r in rows if r["method"].startswith("pytorch")), None)
    for r in rows:
      if peer is not None and r is not peer:
        r["vs_pytorch_epoch"] = r["epoch_s_estimate"] / peer["epoch_s_estimate"]
        r["vs_pytorch_step"] = r["median_step_s"] / peer["median_step_s"]
    row["result"] = res
    row["peer"] = peer["method"] if peer else ("none: no interpreter with torch was found" if not torch_python
                                               else None)
  return row


def part_retrieval(p: dict, tmp: pathlib.Path, has_faiss: bool, machine_name: str) -> dict:
  out = tmp / "retrieval"
  args = ["experiments.bench_retrieval", f"--methods={p['methods']}", "--k=20", "--dim=64",
          f"--faiss={p['faiss'] if has_faiss else ''}", f"--repeats={p['repeats']}", f"--out={out}",
          f"--threads={os.cpu_count()}", f"--machine={machine_name}"]
  if p["gowalla"]:
    args.append(f"--data_dir={_DATA_DIR.value}")
  else:
    args += [f"--num_users={p['num_users']}", f"--num_items={p['num_items']}"]
  row = run_part("retrieval", args)
  row["data"] = dataset_title(_DATA_DIR.value) if p["gowalla"] else None  # None: synthetic sizes
  if row["status"] == "ok":
    res = json.loads((tmp / "retrieval.json").read_text())
    by = {m["method"]: m for m in res["methods"]}
    for m in res["methods"]:
      if m["method"] in FAISS_PEER and FAISS_PEER[m["method"]] in by:
        m["peer"] = FAISS_PEER[m["method"]]
        m["vs_peer"] = m["median_s"] / by[m["peer"]]["median_s"]
      if "float32" in by and m["method"] != "float32" and not m["method"].startswith("faiss"):
        m["vs_jax_float32"] = m["median_s"] / by["float32"]["median_s"]
    row["result"] = res
    row["peer"] = "FAISS (same vectors, same run)" if has_faiss else "none: faiss is not installed"
  return row


_MPE_ROW = re.compile(r"^\|\s*([\d,]+)\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)x\s*\|$")


def part_mpe(p: dict, tmp: pathlib.Path) -> dict:
  out = tmp / "mpe.md"
  args = ["experiments.bench_mpe_step", f"--num_features={p['num_features']}", f"--num_fields={p['num_fields']}",
          f"--batch_size={p['batch_size']}", f"--reps={p['reps']}", f"--warmup={p['warmup']}",
          "--methods=fp,mpe-search,mpe-retrain", f"--output={out}"]
  row = run_part("mpe", args)
  if row["status"] == "ok":
    steps = []
    for line in out.read_text().splitlines():
      m = _MPE_ROW.match(line.strip())
      if m:
        steps.append({"table_rows": int(m[1].replace(",", "")), "step": m[2], "table_optimizer": m[3],
                      "median_ms": float(m[4])})
    for s in steps:
      fp = next((f for f in steps if f["step"] == "fp" and f["table_rows"] == s["table_rows"]
                 and f["table_optimizer"] == s["table_optimizer"]), None)
      if fp is not None:
        s["vs_fp"] = s["median_ms"] / fp["median_ms"]
    if not steps:
      row.update(status="failed", stderr_tail=["bench_mpe_step wrote no table rows"])
    row["result"] = {"steps": steps, "table": out.read_text()}
    row["peer"] = "fp step, same table size, same run"
  return row


_EPOCH_LOG = re.compile(r"^epoch (\d+)/\d+ .* ([\d.]+) s/epoch")


def delta_updates(metrics_jsonl: pathlib.Path) -> int:
  """The delta updates a run made: its `"event": "delta"` lines (the trainer makes them before epochs T, 2T,
  ... after the first, so 20 epochs at T = 10 make one)."""
  return sum(json.loads(line).get("event") == "delta" for line in metrics_jsonl.read_text().splitlines() if line)


def part_curvature(p: dict, tmp: pathlib.Path) -> dict:
  """1-bit GSTE with trace-delta updates vs the plain STE: the curvature's share of the GSTE run's training
  time, the time per delta update, and the median epoch (after the first, which compiles) of both runs."""
  runs = {}
  rows = []
  for estimator in ("ste", "gste"):
    workdir = tmp / f"curvature_{estimator}"
    args = ["experiments.hqgnn", "--config=experiments/configs/hqgnn_lastfm.py", f"--workdir={workdir}",
            f"--config.data_dir={p['data_dir']}", f"--config.train.epochs={p['epochs']}", "--config.quant.bits=1",
            f"--config.quant.estimator={estimator}", "--config.quant.delta=trace",
            f"--config.quant.delta_every={p['delta_every']}", "--config.eval.every=0",
            f"--config.train.checkpoint_every={p['epochs']}", "--config.train.log_every=1"]
    row = run_part(f"curvature ({estimator})", args)
    rows.append(row)
    if row["status"] == "ok":
      res = json.loads((workdir / "results.json").read_text())
      epochs = [float(m[2]) for m in map(_EPOCH_LOG.match, row["stdout"].splitlines()) if m and int(m[1]) > 1]
      runs[estimator] = {"epochs": res["epochs"], "train_seconds": res["train_seconds"],
                         "curvature_seconds": res["curvature_seconds"],
                         "delta_updates": delta_updates(workdir / "metrics.jsonl"),
                         "seconds_per_epoch": res["seconds_per_epoch"],
                         "median_epoch_s_after_first": float(sorted(epochs)[len(epochs) // 2]) if epochs else None,
                         "recall@20": res["metrics"].get("recall@20")}
  combined = {"command": " ; ".join(r["command"] for r in rows), "wall_s": sum(r["wall_s"] for r in rows),
              "status": "ok" if all(r["status"] == "ok" for r in rows) else "failed",
              "stdout": "\n".join(r["stdout"] for r in rows), "data": dataset_title(p["data_dir"])}
  failed = [r for r in rows if r["status"] != "ok"]
  if failed:
    combined["stderr_tail"] = failed[0]["stderr_tail"]
  if "ste" in runs and "gste" in runs:
    g, s = runs["gste"], runs["ste"]
    updates = g["delta_updates"]
    result = {"runs": runs, "delta_updates": updates,
              "seconds_per_delta_update": g["curvature_seconds"] / updates if updates else None,
              "curvature_share_of_gste_training": g["curvature_seconds"] / g["train_seconds"],
              "gste_vs_ste_train_seconds": g["train_seconds"] / s["train_seconds"]}
    if g["median_epoch_s_after_first"] and s["median_epoch_s_after_first"]:
      result["gste_vs_ste_median_epoch"] = g["median_epoch_s_after_first"] / s["median_epoch_s_after_first"]
      if updates:
        result["delta_update_vs_ste_epoch"] = result["seconds_per_delta_update"] / s["median_epoch_s_after_first"]
    combined["result"] = result
    combined["peer"] = "the same run with the plain STE (no curvature updates)"
  return combined


# -------------------------------------------------------------------------------------------- summary


def _f(x, fmt="{:.3f}") -> str:
  return "-" if x is None else fmt.format(x)


def _ratio(x) -> str:
  return "-" if x is None else f"{x:.2f}x"


def markdown(summary: dict) -> str:
  s = summary
  lines = [f"# Benchmark suite, {s['date']} ({s['profile']} profile)", "",
           f"- command: `{s['command']}`", f"- machine: {s['machine']}",
           f"- backend: {s['backend']}; devices: {', '.join(s['devices'])}",
           f"- versions: jax {s['jax']}, jaxlib {s['jaxlib']}, "
           + ", ".join(f"{k} {v}" for k, v in s["versions"].items()),
           f"- git: {s['git']['commit']}" + (" (tracked files modified)" if s["git"]["tracked_files_modified"] else ""),
           f"- load average (1, 5, 15 min): before {s['load_before']}, after {s['load_after']}"
           + (f"; {s['note']}" if s.get("note") else ""),
           f"- total wall time: {s['wall_s'] / 60:.1f} min", "",
           "Every ratio is time / the named peer's time, both measured in this run (< 1: faster than the peer).",
           ""]
  parts = s["parts"]
  if "epoch" in parts:
    e = parts["epoch"]
    on = f" on {e['data']}" if e.get("data") else ""
    lines += [f"## LightGCN training step{on} (`experiments.bench_epoch`)", "", f"`{e['command']}`", ""]
    if "result" in e:
      r = e["result"]
      lines += [f"{r['dataset'].get('train_interactions', '?')} training interactions, batch {r['batch_size']}, "
                f"{r['device']}; peer: {e['peer']}", "",
                "| method | compile (s) | median step (s) | steps/epoch | epoch (s) | vs PyTorch step |",
                "|---|---|---|---|---|---|"]
      for m in r["rows"]:
        lines.append(f"| {m['method']} | {_f(m.get('compile_s'), '{:.1f}')} | {m['median_step_s']:.4f} | "
                     f"{m['steps_per_epoch']} | {m['epoch_s_estimate']:.1f} | {_ratio(m.get('vs_pytorch_epoch'))} |")
    lines += _failure(e)
  if "retrieval" in parts:
    e = parts["retrieval"]
    size = f" at {e['data']} size" if e.get("data") else ""
    lines += ["", f"## All-user top-20 retrieval{size} (`experiments.bench_retrieval`)", "", f"`{e['command']}`", ""]
    if "result" in e:
      r = e["result"]
      lines += [f"{r['query_users']:,} users x {r['num_items']:,} items, d = {r['dim']}, "
                f"{'training items excluded' if r['excluded_train_items'] else 'no exclusions'}, "
                f"{r['repeats']} timed runs (median); measured read bandwidth "
                f"{r['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; peer: {e['peer']}", "",
                "| method | kind | median (s) | queries/s | recall@20 vs float32 | peer | vs peer | vs JAX float32 |",
                "|---|---|---|---|---|---|---|---|"]
      for m in r["methods"]:
        search = f" [{m['kernel']}]" if m.get("kernel") not in (None, "faiss") else ""  # native kernel / JAX search
        lines.append(f"| {m['method']}{search} | {m.get('kind', 'faiss')} | {m['median_s']:.3f} | {m['queries_per_s']:,.0f} | "
                     f"{m['recall']:.4f} | {m.get('peer', '-')} | {_ratio(m.get('vs_peer'))} | "
                     f"{_ratio(m.get('vs_jax_float32'))} |")
    lines += _failure(e)
  if "mpe" in parts:
    e = parts["mpe"]
    lines += ["", "## CTR train step: MPE search / retrain vs full precision (`experiments.bench_mpe_step`)", "",
              f"`{e['command']}`", ""]
    if "result" in e:
      lines += ["| table rows | step | table optimizer | median ms | vs fp |", "|---|---|---|---|---|"]
      for m in e["result"]["steps"]:
        lines.append(f"| {m['table_rows']:,} | {m['step']} | {m['table_optimizer']} | {m['median_ms']:.1f} | "
                     f"{_ratio(m.get('vs_fp'))} |")
    lines += _failure(e)
  if "curvature" in parts:
    e = parts["curvature"]
    on = f", {e['data']}" if e.get("data") else ""
    lines += ["", f"## Curvature-update overhead: 1-bit GSTE (Hutchinson trace delta) vs STE{on} "
              "(`experiments.hqgnn`)", "", f"`{e['command']}`", ""]
    if "result" in e:
      r = e["result"]
      lines += ["| estimator | epochs | train (s) | curvature (s) | median epoch after the first (s) | Recall@20 |",
                "|---|---|---|---|---|---|"]
      for name, run in r["runs"].items():
        lines.append(f"| {name} | {run['epochs']} | {run['train_seconds']:.2f} | {run['curvature_seconds']:.2f} | "
                     f"{_f(run['median_epoch_s_after_first'])} | {_f(run.get('recall@20'), '{:.4f}')} |")
      n = r["delta_updates"]
      lines += ["", f"Curvature share of the GSTE run's training time: "
                f"{100 * r['curvature_share_of_gste_training']:.1f}% ({n} delta update{'' if n == 1 else 's'}, "
                f"{_f(r['seconds_per_delta_update'], '{:.2f}')} s per update = "
                f"{_ratio(r.get('delta_update_vs_ste_epoch'))} an STE epoch); GSTE vs STE: training time "
                f"{_ratio(r['gste_vs_ste_train_seconds'])}, median epoch {_ratio(r.get('gste_vs_ste_median_epoch'))}."]
    lines += _failure(e)
  lines += ["", "## Wall time per part", "", "| part | status | wall (s) |", "|---|---|---|"]
  lines += [f"| {k} | {v['status']} | {v['wall_s']:.0f} |" for k, v in parts.items()]
  return "\n".join(lines) + "\n"


def _failure(part: dict) -> list[str]:
  if part["status"] == "ok":
    return []
  return ["", f"**{part['status']}** (exit {part.get('returncode')}):", "", "```",
          *part.get("stderr_tail", []), "```"]


def summary_of(parts: dict, profile: str, machine_name: str, env: dict, load_before: list, t0: float, sizes: dict,
               done: bool) -> dict:
  load_after = [round(x, 2) for x in os.getloadavg()]
  summary = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "command": " ".join(["python -m experiments.bench_suite"] + sys.argv[1:]), "finished": done,
             "profile": profile, "machine": machine_name, **env, "versions": versions(), "git": git_state(),
             "load_before": load_before, "load_after": load_after, "wall_s": time.perf_counter() - t0,
             "sizes": sizes, "parts": {k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in parts.items()}}
  for name, part in parts.items():
    summary["parts"][name]["stdout_tail"] = part.get("stdout", "").strip().splitlines()[-40:]
  if os.cpu_count() and max(load_before[0], load_after[0]) > 0.5 * os.cpu_count():
    summary["note"] = ("the machine was loaded by other jobs during this run (see the load averages): timings are "
                       "noisier and slower than on a quiet one")
  if not done:
    summary["note"] = (summary.get("note", "") + "; " if summary.get("note") else "") + "run in progress"
  return summary


def write_summary(base: pathlib.Path, summary: dict):
  base.with_suffix(".json").write_text(strict_json.dumps(summary, indent=1) + "\n")
  base.with_suffix(".md").write_text(markdown(summary))


def check_data_dir(parts: list[str], profile: str, data_dir: str):
  """Stops in one line, before any part runs, when a chosen part reads Gowalla from a missing `data_dir`
  (relative: to the repository root, where the parts run)."""
  sizes = PROFILES[profile]
  need = [name for name in parts if (name == "epoch" and "data_dir" not in sizes["epoch"])
          or (name == "retrieval" and sizes["retrieval"]["gowalla"])]
  path = pathlib.Path(data_dir)
  if need and not (path if path.is_absolute() else REPO / path).is_dir():
    raise UserError(f"--data_dir={data_dir}: no such folder; the {' and '.join(need)} part{'s' * (len(need) > 1)} "
                    f"of the {profile} profile read{'s' * (len(need) == 1)} Gowalla (LightGCN text format) there: "
                    "pass its path (make bench BENCH_FLAGS=--data_dir=PATH), or --profile=tiny, which needs no data")


def main(argv):
  del argv  # cli.run refuses positional arguments
  unknown = [p for p in _PARTS.value if p not in PARTS]
  if unknown:
    raise UserError(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})")
  t0 = time.perf_counter()
  load_before = [round(x, 2) for x in os.getloadavg()]
  env = jax_environment()
  backend = env["backend"]
  own_profile = "gpu" if backend in ("gpu", "cuda", "rocm") else "cpu"
  profile = _PROFILE.value if _PROFILE.value != "auto" else own_profile
  sizes = PROFILES[profile]
  check_data_dir(_PARTS.value, profile, _DATA_DIR.value)
  torch_python = find_torch_python() if "epoch" in _PARTS.value else ""
  has_faiss = faiss_installed()
  machine_name = _MACHINE.value or machine(env)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
  print(f"bench_suite: backend {backend}, profile {profile}, torch peer: {torch_python or 'none'}, "
        f"faiss: {has_faiss}; {machine_name}", flush=True)
  out_dir = pathlib.Path(_OUT_DIR.value)
  if not out_dir.is_absolute():
    out_dir = REPO / out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  base = out_dir / (f"{stamp}_{backend}" + ("" if profile == own_profile else f"_{profile}"))
  parts = {}
  with tempfile.TemporaryDirectory(prefix="bench_suite_") as tmp_name:
    tmp = pathlib.Path(tmp_name)
    run = {"epoch": lambda: part_epoch(sizes["epoch"], tmp, torch_python, backend),
           "retrieval": lambda: part_retrieval(sizes["retrieval"], tmp, has_faiss, machine_name),
           "mpe": lambda: part_mpe(sizes["mpe"], tmp),
           "curvature": lambda: part_curvature(sizes["curvature"], tmp)}
    for name in _PARTS.value:
      write_summary(base, summary_of(parts, profile, machine_name, env, load_before, t0, sizes, done=False))
      try:
        parts[name] = run[name]()
      except Exception as e:  # noqa: BLE001  (reading a part's output failed: recorded, the others still run)
        parts[name] = {"command": name, "wall_s": 0.0, "status": "failed", "returncode": None,
                       "stderr_tail": [f"bench_suite could not read the part's output: {type(e).__name__}: {e}"]}
  summary = summary_of(parts, profile, machine_name, env, load_before, t0, sizes, done=True)
  write_summary(base, summary)
  print("\n" + markdown(summary))
  print(f"wrote {base}.json and {base}.md")
  if any(p["status"] != "ok" for p in parts.values()):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, "bench_suite")
