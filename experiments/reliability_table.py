r"""Runs the bad-input cases of tests/experiments/bad_input_test.py and writes their table (results/reliability.md).

  python -m experiments.reliability_table --output=results/reliability.md

Each case runs as a real `python -m experiments.<binary>` subprocess (`--runner=fork` uses the test's faster
forked children instead); the table shows the command, the exit status and the line the binary printed, with
the case's temporary folder written as `C` (its workdir is `C/w`). When the --output file holds the lines
`<!-- bad-input table -->` and `<!-- end of the bad-input table -->`, the summary and the table replace what
is between them; otherwise the file gets them alone. Exit status 1 when a case does not behave as the table
expects (the rows say why).
"""

import importlib.util
import os
import re
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OUTPUT = flags.DEFINE_string("output", "", "Markdown file for the table (default: print it).")
_RUNNER = flags.DEFINE_enum("runner", "exec", ["exec", "fork"], "exec: `python -m` subprocesses (what a user "
                            "sees); fork: children of preloaded processes (the test's runner, faster).")
_CASES = flags.DEFINE_string("cases", "", "Regex on 'binary-name': run only the matching cases.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Cases run at once.")


def load_cases_module():
  """tests/experiments/bad_input_test.py, imported by path (tests/ is not a package)."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  path = os.path.join(REPO, "tests", "experiments", "bad_input_test.py")
  spec = importlib.util.spec_from_file_location("bad_input_test", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def _cell(text: str) -> str:
  return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else ""


def table(outcomes, root: str) -> str:
  lines = ["| # | binary | case | arguments (C = the case's folder, W = C/w) | before | exit | stderr (the line "
           "shown) | as expected | s |", "|---|---|---|---|---|---|---|---|---|"]
  for i, outcome in enumerate(outcomes, 1):
    case = outcome.case

    def short(text):
      return text.replace(os.path.join(root, f"{case.binary}_{case.name}"), "C").replace("C/w", "W")

    args = " ".join(short(a) for a in outcome.argv)
    first = f"killed ({case.kill})" if case.kill else (f"W: a trained {case.workdir} run" if case.workdir else "")
    found = "; ".join(p for p in outcome.problems if not p.startswith("stderr tail"))
    if case.known_bug:
      ok = f"no, known bug: {case.known_bug} ({found})" if outcome.problems else "yes (known bug fixed?)"
    else:
      ok = "yes" if not outcome.problems else f"NO: {found}"
    lines.append(f"| {i} | {case.binary} | {case.name} | {_cell(args)} | {first} | {outcome.result.status} | "
                 f"{_cell(short(outcome.error_line()))} | {short(ok)} | {outcome.seconds:.1f} |")
  return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bad-input table -->", "<!-- end of the bad-input table -->"


def write_table(path: str, text: str) -> None:
  """Replaces what is between BEGIN and END in `path` with `text` (or writes `text` alone)."""
  old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
  if BEGIN in old and END in old:
    head, rest = old.split(BEGIN, 1)
    text = f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}"
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def main(argv):
  del argv
  cases_module = load_cases_module()
  cases = [c for c in cases_module.CASES if re.search(_CASES.value, cases_module.case_id(c))]
  runner = cases_module.ForkRunner() if _RUNNER.value == "fork" else cases_module.ExecRunner()
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix="reliability") as root:
    try:
      outcomes = cases_module.run_cases(cases, runner, root, workers=_WORKERS.value)
    finally:
      runner.close()
    text = table([outcomes[cases_module.case_id(c)] for c in cases], root)
  failed = [name for name, o in outcomes.items() if bool(o.problems) != bool(o.case.known_bug)]
  known = [name for name, o in outcomes.items() if o.problems and o.case.known_bug]
  summary = (f"{len(cases)} cases, {len(cases) - len(failed) - len(known)} as expected, {len(known)} failing on a "
             f"known bug ({', '.join(known) or 'none'}), {len(failed)} unexpected ({', '.join(failed) or 'none'}); "
             f"runner {_RUNNER.value}, {time.time() - t0:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             "\n")
  if _OUTPUT.value:
    write_table(_OUTPUT.value, summary + "\n" + text)
  else:
    print(text)
  print(summary, end="")
  for name in failed:
    print(f"\n{name}:\n  " + "\n  ".join(outcomes[name].problems))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
