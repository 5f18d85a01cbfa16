"""The wheel works on its own: built from the tree, installed with only its declared dependencies, run from
outside the checkout.

The wheel (built by `pip wheel --no-deps` from a copy of the tree) is installed by `pip install <wheel> -c
requirements.txt` into a fresh venv without system site-packages: only what setup.cfg's `install_requires`
brings in (no extras), at the tested versions. `pip check` must pass. Measured on the busy 2-core machine
with this machine's local package indexes: the venv in 114 s, the whole file in 214 s.

From a temporary folder holding a copy of experiments/ (the binaries and configs, which are not in the
wheel) and nothing of hq_jax, the venv's Python imports every module of hq_jax (all from the venv), then
runs `experiments.hqgnn` and `experiments.mpe` on their tiny test configs (experiments/configs/hqgnn_test.py,
mpe_test.py: the embedded LastFM data and Criteo sample) to their results table, results.json and export.npz.

Skips, with the reason, when the package index cannot be reached. The slow tests build and install; the
import check against setup.cfg is quick.
"""

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from conftest import REPO


PACKAGE_DATA = ("hq_jax/data/lastfm/train.txt", "hq_jax/data/lastfm/test.txt", "hq_jax/data/lastfm/README.md",
                "hq_jax/ctr/datasets/criteo_10k.csv.gz", "hq_jax/ctr/datasets/README.md")
SOURCES = ("hq_jax", "setup.cfg", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE")


def _pip(python, *args, timeout=1800, **kwargs):
  return subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True,
                        timeout=timeout, **kwargs)


def _install_requires() -> str:
  text = (REPO / "setup.cfg").read_text()
  match = re.search(r"^install_requires\s*=\s*\n((?:[ \t]+\S.*\n)+)", text, re.M)
  assert match, "setup.cfg has no install_requires"
  return match.group(1)


def _requirement_names(lines: str) -> set[str]:
  return {_normal(re.split(r"[<>=!~\[;\s]", l.strip(), maxsplit=1)[0]) for l in lines.splitlines() if l.strip()}


def _normal(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _imports(tree: ast.Module):
  """(top-level names imported when the module is imported, names imported inside functions only)."""
  eager, lazy = set(), set()

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        visit(child, True)
        continue
      names = []
      if isinstance(child, ast.Import):
        names = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom) and not child.level:
        names = [child.module]
      for name in names:
        (lazy if in_function else eager).add(name.split(".")[0])
      visit(child, in_function)

  visit(tree, False)
  return eager, lazy - eager


def test_every_package_that_hq_jax_imports_is_declared():
  """Module-level imports of hq_jax/ need an install_requires entry; imports inside functions (optional
  features) at least an extra. Names map to distributions through the current environment."""
  text = (REPO / "setup.cfg").read_text()
  required = _requirement_names(_install_requires())
  extras = set()
  section = text.split("[options.extras_require]")[1].split("\n[")[0] + "\n"
  for block in re.findall(r"^[a-z0-9_]+ =\s*\n((?:[ \t]+\S.*\n)+)", section, re.M):
    extras |= _requirement_names(block)
  distributions = importlib.metadata.packages_distributions()
  missing = []
  for path in sorted((REPO / "hq_jax").rglob("*.py")):
    eager, lazy = _imports(ast.parse(path.read_text()))
    for names, allowed, what in ((eager, required, "install_requires"), (lazy, required | extras, "an extra")):
      for name in sorted(names - set(sys.stdlib_module_names) - {"hq_jax", "__future__"}):
        dists = {_normal(d) for d in distributions.get(name, [name])}
        if not dists & allowed:
          missing.append(f"{path.relative_to(REPO)} imports {name} ({'/'.join(sorted(dists))}), not in {what}")
  assert not missing, "\n".join(missing)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """The wheel built from a copy of the working tree (no build files left in the checkout)."""
  pins = [l for l in (REPO / "requirements.txt").read_text().splitlines() if "==" in l and not l.startswith("#")]
  probe = _pip(sys.executable, "download", "--no-deps", "-d", str(tmp_path_factory.mktemp("probe")), pins[0],
               timeout=300)
  if probe.returncode != 0:
    pytest.skip(f"package index unreachable ({probe.stderr.strip().splitlines()[-1:]})")
  src = tmp_path_factory.mktemp("src")
  for name in SOURCES:
    path = REPO / name
    if path.is_dir():
      shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    elif path.exists():
      shutil.copy2(path, src / name)
  dist = tmp_path_factory.mktemp("dist")
  built = _pip(sys.executable, "wheel", "--no-deps", "-w", str(dist), str(src), timeout=900)
  assert built.returncode == 0, built.stderr[-3000:]
  (path,) = dist.glob("hq_jax-*.whl")
  return path


@pytest.mark.slow
def test_wheel_holds_the_package_data_and_no_experiments(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  missing = [p for p in PACKAGE_DATA if p not in names]
  assert not missing, f"package data missing from the wheel: {missing}"
  tops = {n.split("/")[0] for n in names}
  assert tops == {"hq_jax", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
  ours = sorted(str(p.relative_to(REPO)).replace(os.sep, "/") for p in (REPO / "hq_jax").rglob("*.py"))
  assert sorted(n for n in names if n.endswith(".py")) == ours


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
  """A fresh venv (no system site-packages) into which pip installs the wheel and what its install_requires
  resolve to (no extras), at the tested versions (`-c requirements.txt`), from the configured package
  indexes; pip's cache and any configured --find-links keep a repeated run from downloading again.
  `pip check` must pass."""
  path = tmp_path_factory.mktemp("venv")
  t0 = time.time()
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
  python = str(path / "bin" / "python")
  pip = lambda *args: _pip(sys.executable, "--python", python, *args)  # noqa: E731 - this pip, that venv
  installed = pip("install", "-q", str(wheel), "-c", str(REPO / "requirements.txt"))
  if installed.returncode != 0 and re.search(r"(?i)connection|network|resolve host|timed out", installed.stderr):
    pytest.skip(f"package index unreachable: {installed.stderr.strip().splitlines()[-1]}")
  assert installed.returncode == 0, installed.stderr[-3000:]
  print(f"packaging venv ready in {time.time() - t0:.0f} s")
  checked = pip("check")
  assert checked.returncode == 0, checked.stdout + checked.stderr
  return python


IMPORT_ALL = textwrap.dedent('''
    import importlib, json, pkgutil
    import hq_jax
    modules = [m.name for m in pkgutil.walk_packages(hq_jax.__path__, "hq_jax.")]
    for name in modules:
      importlib.import_module(name)
    print(json.dumps({"modules": len(modules), "files": sorted({importlib.import_module(m).__file__
                                                                 for m in ["hq_jax"] + modules})}))
''')


@pytest.mark.slow
def test_installed_wheel_runs_the_test_configs_from_outside_the_checkout(venv, tmp_path):
  """Only experiments/ (binaries and configs, not in the wheel) is copied beside the workdirs: hq_jax comes
  from the venv. Both binaries run their tiny test config to the end."""
  shutil.copytree(REPO / "experiments", tmp_path / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
  env.update(JAX_PLATFORMS="cpu", HQ_JAX_CACHE=str(tmp_path / "cache"))

  def run(*args):
    return subprocess.run([venv, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

  imported = run("-c", IMPORT_ALL)
  assert imported.returncode == 0, imported.stderr[-4000:]
  found = json.loads(imported.stdout.strip().splitlines()[-1])
  assert found["modules"] >= 30
  outside = [f for f in found["files"] if not f.startswith(str(os.path.dirname(os.path.dirname(venv))))]
  assert not outside, f"hq_jax modules imported from outside the venv: {outside}"
  for binary in ("hqgnn", "mpe"):
    r = run("-m", f"experiments.{binary}", f"--config=experiments/configs/{binary}_test.py",
            f"--workdir={binary}_workdir")
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip().splitlines()[-1].startswith("|"), r.stdout  # the results table
    results = json.loads((tmp_path / f"{binary}_workdir" / "results.json").read_text())
    assert (tmp_path / f"{binary}_workdir" / "export.npz").exists(), binary
    if binary == "hqgnn":
      assert results["dataset"]["name"] == "lastfm" and 0 < results["metrics"]["recall@20"] < 1
    else:
      assert "criteo" in results["dataset"]["name"] and 0.5 < results["test_auc"] < 1
