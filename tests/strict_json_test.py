"""hq_jax.strict_json: the one rule for numbers that JSON cannot hold, as golden cases."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hq_jax import strict_json

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("name, value, expected", [
    ("finite_values_unchanged", {"a": 1.5, "b": [1, 2], "c": "x", "d": None, "e": True},
     {"a": 1.5, "b": [1, 2], "c": "x", "d": None, "e": True}),
    ("infinity", {"compression_bits": INF}, {"compression_bits": None,
                                             "compression_bits_reason": "Infinity (not a finite number)"}),
    ("minus_infinity_numpy", {"logloss": np.float32(-np.inf)}, {"logloss": None,
                                                               "logloss_reason": "-Infinity (not a finite number)"}),
    ("nan_jax_scalar", {"auc": jnp.float32(jnp.nan)}, {"auc": None, "auc_reason": "NaN (not a finite number)"}),
    ("list_positions", {"bits": [1.0, NAN, 2.0, INF]},
     {"bits": [1.0, None, 2.0, None], "bits_reason": "not finite, written as null: [1] NaN, [3] Infinity"}),
    ("array_2d", {"m": np.array([[0.0, np.nan]])},
     {"m": [[0.0, None]], "m_reason": "not finite, written as null: [0][1] NaN"}),
    ("nested_object_gets_its_own_reason", {"g": {"x": INF}},
     {"g": {"x": None, "x_reason": "Infinity (not a finite number)"}}),
    ("objects_in_a_list", {"rows": [{"x": NAN}]}, {"rows": [{"x": None, "x_reason": "NaN (not a finite number)"}]}),
    ("own_reason_wins_after", {"x": INF, "x_reason": "every group pruned"},
     {"x": None, "x_reason": "every group pruned"}),
    ("own_reason_wins_before", {"x_reason": "every group pruned", "x": INF},
     {"x_reason": "every group pruned", "x": None}),
    ("bare_number", NAN, None),
    ("top_level_list", [INF, 1], [None, 1]),
    ("numpy_types", {"i": np.int64(3), "b": np.bool_(False), "f": np.float64(0.25)}, {"i": 3, "b": False, "f": 0.25}),
    ("config_dict", ml_collections.ConfigDict({"t": {"lr": 0.1, "clip": INF}}),
     {"t": {"lr": 0.1, "clip": None, "clip_reason": "Infinity (not a finite number)"}}),
])
def test_json_safe(name, value, expected):
  del name
  assert strict_json.json_safe(value) == expected
  text = strict_json.dumps(value)
  assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == expected


def test_long_lists_name_the_first_positions_only():
  reason = strict_json.json_safe({"v": [NAN] * 20})["v_reason"]
  assert reason.endswith("[7] NaN and 12 more")


def test_dump_writes_a_file_and_passes_options(tmp_path):
  with open(tmp_path / "x.json", "w", encoding="utf-8") as f:
    strict_json.dump({"a": INF, "z": object()}, f, default=lambda o: "object", sort_keys=True)
  assert json.loads((tmp_path / "x.json").read_text()) == {
      "a": None, "a_reason": "Infinity (not a finite number)", "z": "object"}


def test_nothing_else_in_the_project_writes_json_directly():
  """Every json.dump / json.dumps of hq_jax/ and experiments/ goes through strict_json (the peer script runs in
  another Python without hq_jax and passes allow_nan=False itself)."""
  import pathlib
  import re
  root = pathlib.Path(__file__).resolve().parents[1]
  offenders = []
  for path in [*root.glob("hq_jax/**/*.py"), *root.glob("experiments/**/*.py")]:
    if path.name == "strict_json.py":
      continue
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      if re.search(r"\bjson\.dumps?\(", line) and "allow_nan=False" not in line:
        offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
  assert offenders == []
