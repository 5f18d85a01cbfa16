"""The training binary as a user runs it: kill -9 and resume, and one-line errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, subprocess_env

CONFIG = str(REPO / "experiments" / "configs" / "hqgnn_test.py")


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "experiments.hqgnn", f"--config={CONFIG}", f"--workdir={workdir}", *extra]


def _run(workdir, *extra):
  return subprocess.run(_cmd(workdir, *extra), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow  # make test-all only: bad_input_test's kill cases cover the kind in make test
def test_kill_nine_then_resume_matches_uninterrupted(tmp_path):
  epochs = ["--config.train.epochs=12", "--config.eval.every=0"]
  clean = _run(tmp_path / "clean", *epochs)
  assert clean.returncode == 0, clean.stderr
  want = json.load(open(tmp_path / "clean" / "results.json"))["metrics"]

  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(workdir, *epochs), cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (workdir / "checkpoints" / "3").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "results.json").exists(), "the run finished before it could be killed"

  resumed = _run(workdir, *epochs)
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed from" in resumed.stdout
  got = json.load(open(workdir / "results.json"))
  assert got["resumed_from_epoch"] >= 3
  for key in want:
    assert got["metrics"][key] == pytest.approx(want[key], rel=1e-6), key


@pytest.mark.parametrize("name,args,message", [
    ("missing_data_dir", ["--config.data_dir=/nonexistent/gowalla"], "data directory not found"),
    ("unknown_config_key", ["--config.train.bogus=1"], "unknown config field"),
    ("k_too_large", ["--config.eval.ks=20,5000"], "K=5000"),
    ("bad_aggregation", ["--config.model.aggregation=dense"], "aggregation"),
    ("missing_config_file", [f"--config={REPO}/experiments/configs/nope.py"], "cannot load the config file"),
])
def test_bad_input_gives_one_error_line(tmp_path, name, args, message):
  del name
  result = _run(tmp_path, *args)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if "error" in l]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert "Traceback" not in result.stderr


def test_malformed_train_file(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  (data / "train.txt").write_text("0 1 2\n1 3 x4\n")
  (data / "test.txt").write_text("0 3\n")
  result = _run(tmp_path / "w", f"--config.data_dir={data}")
  assert result.returncode != 0
  assert f"{data}/train.txt:2: malformed token 'x4'" in result.stderr
  assert "Traceback" not in result.stderr
