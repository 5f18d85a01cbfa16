"""Tests for hq_jax.ctr.data.registry: spec dispatch, plug-in specs without an import cycle, exports."""

import subprocess
import sys
import textwrap

import pytest

from conftest import subprocess_env
from hq_jax.ctr import data
from hq_jax.ctr.data import registry
from hq_jax.errors import UserError


def test_load_ctr_rejects_unknown_specs(tmp_path):
  for spec in ("criteo", "kdd12:/x", "frappe:", "", "criteo-sample:x", "libfm:", "avazu"):
    with pytest.raises(UserError, match="unknown CTR dataset spec"):
      data.load_ctr(spec, cache_dir=str(tmp_path))
  with pytest.raises(UserError, match="not a folder"):
    data.load_ctr(f"frappe:{tmp_path / 'missing'}", cache_dir=str(tmp_path))


@pytest.mark.parametrize("arg,expected", [
    ("a,b,c", (["a", "b", "c"], None, False)),
    ("a,b,c,offsets=0/3/5/9", (["a", "b", "c"], [0, 3, 5, 9], False)),
    ("a,b,c,remap_ids", (["a", "b", "c"], None, True)),
])
def test_parse_libfm_spec(arg, expected):
  assert registry.parse_libfm_spec(arg) == expected


@pytest.mark.parametrize("arg,message", [
    ("a,b", "expected TRAIN,VALID,TEST"), ("a,,c", "expected TRAIN,VALID,TEST"),
    ("a,b,c,d", "expected TRAIN,VALID,TEST"), ("a,b,c,offsets=0/x", "offsets must be integers"),
    ("a,b,c,remap", "expected TRAIN,VALID,TEST"), ("a,b,c,remap_ids,offsets=0/1", "expected TRAIN,VALID,TEST"),
])
def test_parse_libfm_spec_errors(arg, message):
  with pytest.raises(UserError, match=message):
    registry.parse_libfm_spec(arg)


def test_registered_spec_is_checked_for_both_classes(tmp_path, monkeypatch):
  monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # pylint: disable=protected-access
  ds = data.embedded_criteo_sample(str(tmp_path))
  one_class = data.CTRDataset(name="one", ids=ds.ids, labels=ds.labels * 0, field_offsets=ds.field_offsets,
                              counts=ds.counts, splits=ds.splits, summary={})
  data.register_ctr_spec("test-one-class", lambda arg, cache_dir, seed: one_class, argument="none")
  with pytest.raises(UserError, match="^one: the train split has one class only: 0 positives and 7999 "):
    data.load_ctr("test-one-class")
  with pytest.raises(ValueError):
    data.register_ctr_spec("x", lambda *a: None, argument="sometimes")


def test_synthetic_registers_itself_and_the_data_package_does_not_import_it():
  code = textwrap.dedent("""
      import sys
      from hq_jax.ctr import data
      assert "hq_jax.ctr.synthetic" not in sys.modules
      ds = data.load_ctr("synthetic:rows=300,fields=5,features=200")
      assert "hq_jax.ctr.synthetic" in sys.modules and ds.num_fields == 5
      print("ok")
  """)
  out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                       check=False)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "ok"


def test_exports():
  assert sorted(data.__all__) == sorted(set(data.__all__))
  for name in data.__all__:
    assert hasattr(data, name), name
