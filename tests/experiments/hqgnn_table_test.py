"""The table binary on the tiny LastFM config, and every HQ-GNN experiment config loads with the same keys."""

import importlib
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env
from experiments.configs import hqgnn_lastfm

CONFIG = str(REPO / "experiments" / "configs" / "hqgnn_test.py")


def _keys(config, prefix=""):
  out = set()
  for name, value in config.items():
    out |= _keys(value, f"{prefix}{name}.") if hasattr(value, "items") else {prefix + name}
  return out


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "experiments" / "configs").glob("hqgnn_*.py")))
def test_every_hqgnn_config_has_the_base_keys(name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert _keys(config) == _keys(hqgnn_lastfm.get_config())


def test_table_rows_and_curvature_share(tmp_path):
  out = tmp_path / "table.md"
  proc = subprocess.run([sys.executable, "-m", "experiments.hqgnn_table", f"--config={CONFIG}",
                         f"--root={tmp_path / 'runs'}", "--bits=1", "--seeds=0", f"--out={out}",
                         "--config.quant.delta_every=1", "--config.eval.every=0"],
                        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = {line.split("|")[1].strip(): line for line in out.read_text().splitlines() if line.startswith("| ")}
  assert set(rows) == {"model", "full precision", "STE 1 bit", "GSTE 1 bit"}
  share = rows["GSTE 1 bit"].rstrip(" |").rsplit("|", 1)[1].strip()
  assert share.endswith("% of training") and 0 < float(share.split("%")[0]) < 100
  assert rows["STE 1 bit"].rstrip(" |").endswith("| -") and "32.0x" in rows["STE 1 bit"]
