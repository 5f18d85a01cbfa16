"""The pieces of the low-bit table binary (experiments.lowbit_variants): the variant grammar, merging earlier
summaries, and the plot."""

import json

import pytest

from experiments import lowbit_variants
from experiments.configs import hqgnn_test
from hq_jax.errors import UserError


@pytest.mark.parametrize("name, expected", [
    ("fp", {"quant.bits": "none"}),
    ("start", {"quant.bits": "none", "train.epochs": 0}),
    ("3bit-layerwise", {"quant.bits": "3", "quant.codes": "layerwise"}),
    ("1bit-row8-gaussian-itq", {"quant.bits": "1", "quant.one_bit_scale": "row", "quant.scale_bits": 8,
                                "quant.estimator": "gaussian", "quant.rotation": "itq"}),
    ("1bit-row8-itemscales", {"quant.bits": "1", "quant.one_bit_scale": "row", "quant.scale_bits": 8,
                              "quant.drop_user_scales": True}),
    ("1bit-row32-trace100x", {"quant.bits": "1", "quant.one_bit_scale": "row", "quant.scale_bits": 32,
                              "quant.estimator": "gste", "quant.delta": "trace", "quant.delta_multiplier": 100.0}),
    ("1bit-diag10x", {"quant.bits": "1", "quant.estimator": "gste", "quant.delta": "diagonal",
                      "quant.delta_multiplier": 10.0}),
    ("1bit-fixed0.5", {"quant.bits": "1", "quant.estimator": "gste", "quant.delta": "fixed",
                       "quant.fixed_delta": 0.5}),
    ("1bit-pre200-distill1", {"quant.bits": "1", "train.pretrain_epochs": 200, "distill.weight": 1.0}),
])
def test_variant_names_set_config_keys(name, expected):
  assert lowbit_variants.variant_overrides(name) == expected


def test_unknown_variant_token_is_a_user_error():
  with pytest.raises(UserError, match=r"unknown token 'rowwise' in '1bit-rowwise'"):
    lowbit_variants.variant_overrides("1bit-rowwise")


def _summary(path, rows):
  path.write_text(json.dumps({name: {"bits_per_node": bits, "seeds": [0], "recall@20": [r]}
                              for name, (bits, r) in rows.items()}))
  return str(path)


def test_merged_summaries_later_files_replace_rows_of_the_same_name(tmp_path):
  a = _summary(tmp_path / "a.json", {"start": (2048.0, 0.18), "1bit-ste": (64.0, 0.07)})
  b = _summary(tmp_path / "b.json", {"1bit-ste": (64.0, 0.08), "2bit-ste": (128.0, 0.15)})
  rows = lowbit_variants.merged_summaries([a, b])
  assert {n: r["recall@20"] for n, r in rows.items()} == {"start": [0.18], "1bit-ste": [0.08], "2bit-ste": [0.15]}


def test_merged_summaries_refuse_what_is_not_a_summary(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps({"metrics": {"recall@20": 0.1}}))
  with pytest.raises(UserError, match=r"results.json is not a summary written by --out \(row 'metrics'\)"):
    lowbit_variants.merged_summaries([str(tmp_path / "results.json")])
  with pytest.raises(UserError, match=r"--merge: cannot read .*missing.json"):
    lowbit_variants.merged_summaries([str(tmp_path / "missing.json")])
  (tmp_path / "list.json").write_text("[1, 2]")
  with pytest.raises(UserError, match="not a summary"):
    lowbit_variants.merged_summaries([str(tmp_path / "list.json")])


def test_plot_writes_a_png(tmp_path):
  rows = lowbit_variants.merged_summaries([_summary(tmp_path / "a.json", {"start": (2048.0, 0.18),
                                                                       "1bit-ste": (64.0, 0.07)})])
  lowbit_variants.plot(rows, str(tmp_path / "p.png"), "test")
  assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_results_only_for_the_same_config(tmp_path):
  config = hqgnn_test.get_config()
  workdir = tmp_path / "run"
  workdir.mkdir()
  assert lowbit_variants.finished_results(str(workdir), config) is None  # nothing there
  (workdir / "config.json").write_text(json.dumps({"config": config.to_dict()}))
  (workdir / "results.json").write_text(json.dumps({"metrics": {"recall@20": 0.25}}))
  assert lowbit_variants.finished_results(str(workdir), config) == {"metrics": {"recall@20": 0.25}}
  neutral = config.copy_and_resolve_references()
  neutral.eval.batch_size += 1  # a key a rerun may change
  assert lowbit_variants.finished_results(str(workdir), neutral) is not None
  other = config.copy_and_resolve_references()
  other.train.epochs += 1
  assert lowbit_variants.finished_results(str(workdir), other) is None
  (workdir / "results.json").write_text('{"status": "stopped"')  # torn: not a finished run
  assert lowbit_variants.finished_results(str(workdir), config) is None
