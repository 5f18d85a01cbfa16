"""Tests of `experiments.frontier` and `experiments.frontier_peers` on a tiny synthetic float export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss (the bench extra) is not installed")

from experiments import frontier_peers as fp  # noqa: E402
from hq_jax import evaluation, export  # noqa: E402
from hq_jax.data.interactions import load_dataset  # noqa: E402
from hq_jax.errors import UserError  # noqa: E402
from hq_jax.quant.quantizer import QuantizedMatrix  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NUM_USERS, NUM_ITEMS, DIM = 60, 300, 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A LightGCN folder (60 users x 300 items) and a float export of correlated embeddings."""
  root = tmp_path_factory.mktemp("tiny")
  rng = np.random.default_rng(0)
  with open(root / "train.txt", "w") as tr, open(root / "test.txt", "w") as te:
    for u in range(NUM_USERS):
      items = rng.choice(NUM_ITEMS, size=12, replace=False)
      tr.write(" ".join(map(str, [u, *items[:8]])) + "\n")
      te.write(" ".join(map(str, [u, *items[8:]])) + "\n")
  base = rng.standard_normal((4, DIM))
  users = (rng.standard_normal((NUM_USERS, 4)) @ base + 0.3 * rng.standard_normal((NUM_USERS, DIM))).astype(np.float32)
  items = (rng.standard_normal((NUM_ITEMS, 4)) @ base + 0.3 * rng.standard_normal((NUM_ITEMS, DIM))).astype(np.float32)
  path = str(root / "export.npz")
  export.save_export(path, users, items)
  return str(root), path, users, items


def numpy_recall_at_20(users: np.ndarray, items: np.ndarray, data) -> float:
  """Plain NumPy reference: exclude training items, rank by score then lower id, Recall@20 over test users."""
  scores = users.astype(np.float64) @ items.astype(np.float64).T
  total = []
  for u in data.test_users():
    s = scores[u].copy()
    s[data.train.row(u)] = -np.inf
    top = np.lexsort((np.arange(s.size), -s))[:20]
    test = set(data.test.row(u).tolist())
    total.append(len(test & set(top.tolist())) / len(test))
  return float(np.mean(total))


# ----------------------------------------------------------------------------------------------------------
# Which peers, and their bits
# ----------------------------------------------------------------------------------------------------------


def test_factory_strings_golden():
  got = {(f, b): fp.factory_string(f, 64, b) for f in fp.FAMILIES for b in (32, 64, 128, 256)}
  assert got[("pq", 32)] == "PQ4x8np" and got[("pq", 256)] == "PQ32x8np"
  assert got[("opq", 64)] == "OPQ8,PQ8x8np"
  assert got[("pq_fastscan", 64)] == "PQ16x4fs" and got[("pq_fastscan", 256)] == "PQ64x4fs"
  assert got[("sq", 256)] == "SQ4" and got[("sq", 64)] is None and fp.factory_string("sq", 64, 512) == "SQ8"
  assert got[("lsh", 128)] == "LSH128rt"
  assert got[("itq", 64)] == "ITQ64,LSH" and got[("itq", 128)] is None  # ITQ cannot add dimensions
  assert fp.factory_string("pq", 40, 128) is None  # M = 16 does not divide 40


def test_peer_specs_layouts():
  specs = fp.peer_specs(64, (64,))
  names = [s.name for s in specs]
  assert "PQ8x8np [both-separate]" in names and "SQ4 [items]" in names and "SQ8 [both-shared]" in names
  assert not any(s.family in fp.BINARY_FAMILIES and s.layout == "both-separate" for s in specs)
  assert len(names) == len(set(names))


@pytest.mark.parametrize("factory,expected", [
    ("PQ4x8np", 4 * 256 * 4),  # M codebooks of 2^b codewords of d / M floats
    ("PQ8x4fs", 8 * 16 * 2),
    ("OPQ4,PQ4x4np", 16 * 16 + 4 * 16 * 4),  # + the d x d rotation
    ("SQ4", 2 * 16),  # per-dimension minimum and range
    ("LSH32rt", 32 * 16 + 32),  # B x d rotation + B thresholds
    ("ITQ8,LSH", 16 + 8 * 16),  # mean + the B x d PCA-then-ITQ matrix
])
def test_trained_floats_hand_count(tiny, factory, expected):
  _, _, users, items = tiny
  index = fp.train_index(factory, np.concatenate([users, items]), threads=1)
  assert fp.trained_floats(index) == expected


def test_bits_accounting_hand_count():
  spec = fp.PeerSpec(family="pq", factory="PQ4x8np", code_bits=32, layout="both-separate")
  acct = fp.bits_accounting(spec, num_users=60, num_items=300, dim=16, trained=2 * 4096)
  assert acct["bits_per_node"] == 32.0 and acct["coded_nodes"] == 360
  assert acct["codebook_bits"] == 32 * 8192 and acct["codebook_bits_per_node"] == pytest.approx(32 * 8192 / 360)
  assert acct["stored_bytes"] == (360 * 32 + 32 * 8192) // 8
  items_only = fp.bits_accounting(dataclass_replace(spec, layout="items"), num_users=60, num_items=300, dim=16,
                                  trained=4096)
  assert items_only["bits_per_node"] == 32.0 and items_only["user_bits_per_node"] == 32 * 16
  assert items_only["codebook_bits_per_node"] == pytest.approx(32 * 4096 / 300)
  assert items_only["stored_bytes"] == (60 * 512 + 300 * 32 + 32 * 4096) // 8


def dataclass_replace(spec, **kw):
  import dataclasses  # noqa: PLC0415
  return dataclasses.replace(spec, **kw)


# ----------------------------------------------------------------------------------------------------------
# Decoding and ranking
# ----------------------------------------------------------------------------------------------------------


def test_no_polysemous_training_decodes_identically(tiny):
  _, _, users, items = tiny
  x = np.concatenate([users, items])
  a, b = fp.train_index("PQ4x4", x, threads=1), fp.train_index("PQ4x4np", x, threads=1)
  np.testing.assert_array_equal(fp.decode(a, x), fp.decode(b, x))


@pytest.mark.parametrize("layout", ["both-shared", "both-separate", "items"])
def test_decoded_export_is_ranked_by_hq_jax_evaluation(tiny, tmp_path, layout):
  data_dir, _, users, items = tiny
  data = load_dataset(data_dir)
  spec = fp.PeerSpec(family="pq", factory="PQ4x4np", code_bits=16, layout=layout)  # 16 codewords: 60 users suffice
  peer = fp.fit_peer(spec, users, items, threads=1, native_pq=False)  # the decoded rows (SQ's, OPQ separate's)
  item_index = peer.item_index
  np.testing.assert_array_equal(peer.item_rep, item_index.sa_decode(item_index.sa_encode(items)))
  if layout == "items":
    np.testing.assert_array_equal(peer.user_rep, users)
  path = str(tmp_path / "export.npz")
  export.save_export(path, peer.user_rep, peer.item_rep)
  ur, ir = export.load_export(path)
  got = evaluation.evaluate(ur, ir, data)["recall@20"]
  assert got == pytest.approx(numpy_recall_at_20(peer.user_rep, peer.item_rep, data), abs=1e-6)


@pytest.mark.parametrize("factory", ["LSH32rt", "ITQ16,LSH", "ITQ8,LSH"])
def test_binary_codes_are_faiss_codes_and_hamming_ranks(tiny, factory):
  _, _, users, items = tiny
  index = fp.train_index(factory, np.concatenate([users, items]), threads=1)
  codes = fp.binary_codes(index, items)
  g = fp.binary_affine(index, items)
  np.testing.assert_array_equal(codes, np.where(g >= 0, 1, -1))  # FAISS's bit: g >= 0
  bits = codes.shape[1]
  binary = faiss.IndexBinaryFlat(bits)
  binary.add(index.sa_encode(items))
  dist, ids = binary.search(index.sa_encode(users), NUM_ITEMS)
  inner = fp.binary_codes(index, users).astype(np.int64) @ codes.T.astype(np.int64)  # B - 2 Hamming
  np.testing.assert_array_equal(np.take_along_axis(inner, ids, axis=1), bits - 2 * dist)


@pytest.mark.parametrize("factory", ["LSH32rt", "ITQ16,LSH", "ITQ8,LSH"])
def test_binary_affine_is_affine(tiny, factory):
  """g(x) = x L + g(0): what the items-only layout's asymmetric score relies on (FAISS's ITQ normalises each
  vector, which is not affine: g leaves it out)."""
  _, _, users, items = tiny
  index = fp.train_index(factory, items, threads=1)
  lin = fp.binary_linear_map(index, DIM)
  g0 = fp.binary_affine(index, np.zeros((1, DIM), np.float32))
  np.testing.assert_allclose(fp.binary_affine(index, users), users @ lin + g0, rtol=1e-4, atol=1e-4)


def test_binary_items_only_is_the_asymmetric_score(tiny):
  _, _, users, items = tiny
  spec = fp.PeerSpec(family="lsh", factory="LSH32rt", code_bits=32, layout="items")
  peer = fp.fit_peer(spec, users, items, threads=1)
  lin = fp.binary_affine(peer.item_index, users) - fp.binary_affine(peer.item_index, np.zeros((1, DIM), np.float32))
  codes = fp.binary_codes(peer.item_index, items).astype(np.float64)
  np.testing.assert_allclose(users.astype(np.float64) @ peer.item_rep.T.astype(np.float64), lin @ codes.T,
                             rtol=1e-4, atol=1e-4)


def test_binary_both_coded_is_a_one_bit_export(tiny, tmp_path):
  data_dir, _, users, items = tiny
  peer = fp.fit_peer(fp.PeerSpec(family="itq", factory="ITQ16,LSH", code_bits=16, layout="both-shared"),
                     users, items, threads=1)
  assert isinstance(peer.item_rep, QuantizedMatrix) and peer.item_rep.bits == 1
  path = str(tmp_path / "export.npz")
  export.save_export(path, peer.user_rep, peer.item_rep)
  ur, ir = export.load_export(path)
  data = load_dataset(data_dir)
  codes = lambda rep: np.asarray(rep.codes, np.float32)
  ref = numpy_recall_at_20(codes(peer.user_rep), codes(peer.item_rep), data)
  assert evaluation.evaluate(ur, ir, data)["recall@20"] == pytest.approx(ref, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Front rows, table, markdown
# ----------------------------------------------------------------------------------------------------------


def good_row(**kw):
  return {"method": "m", "dataset": "lastfm", "bits_per_node": 64.0, "codebook_bits_per_node": 1.5,
          "recall@20": [0.24, 0.25], "ndcg@20": 0.18, "split": "test", "seeds": [0, 1], "topk_seconds": None,
          "source": "x", **kw}


def test_front_row_schema(tmp_path):
  assert fp.check_front_row(good_row()) is not None
  bad = good_row()
  del bad["split"]
  with pytest.raises(UserError, match="split"):
    fp.check_front_row(bad)
  with pytest.raises(UserError, match="bits_per_node"):
    fp.check_front_row(good_row(bits_per_node=True))
  with pytest.raises(UserError, match="recall@20"):
    fp.check_front_row(good_row(**{"recall@20": "high"}))
  path = tmp_path / "rows.json"
  path.write_text(json.dumps({"rows": [good_row()]}))
  assert fp.load_front_rows(str(path))[0]["seeds"] == [0, 1]
  path.write_text(json.dumps([good_row(), {"method": "only"}]))
  with pytest.raises(UserError, match="row 1"):
    fp.load_front_rows(str(path))


def test_row_from_workdir(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps({
      "config": {"seed": 2, "eval": {"split": "valid"}}, "model": "hqgnn-1bit",
      "dataset": {"num_users": 10, "num_items": 30},
      "metrics": {"recall@20": 0.2, "ndcg@20": 0.1}, "representation_bytes": 400, "bits_per_node": 80.0}))
  row = fp.row_from_workdir(str(tmp_path), "lastfm")
  assert row["bits_per_node"] == 80.0 and row["split"] == "valid" and row["seeds"] == [2]
  assert row["method"] == "hq_jax hqgnn-1bit"


def test_markdown_table_rows_and_percent():
  table = fp.markdown_table([good_row(method="a", layout="items"), good_row(method="b", bits_per_node=32.0,
                                                                           topk_seconds=0.5)], reference=0.25)
  lines = table.splitlines()
  assert len(lines) == 4 and lines[2].startswith("| b |")  # sorted by bits per node
  assert "| 0.2450 | 98.0 |" in lines[3] and "| 0.500 |" in lines[2]


def test_replace_section_keeps_the_other_sections():
  text = "# T\n\nhead\n\n## hq_jax product codes\n\ntheirs\n\n## FAISS post-training peers\n\nold\n\n### LastFM\n\nx\n"
  out = fp.replace_section(text, "### LastFM", "new lastfm")
  assert "theirs" in out and "new lastfm" in out and "\nx\n" not in out and "old" in out
  out = fp.replace_section(out, "### Gowalla", "g")
  assert out.index("new lastfm") < out.index("### Gowalla")
  out = fp.replace_section(out, "## hq_jax product codes", "mine")
  assert "theirs" not in out and "new lastfm" in out


def test_published_bigear_point():
  (row,) = fp.published_rows("Gowalla")
  fp.check_front_row(row)
  assert row["bits_per_node"] == 768 + 3 * 32 and row["best_of_epochs"] and row["dim"] == 256
  assert row["recall@20"] / row["reference_recall@20"] == pytest.approx(0.981, abs=1e-3)
  assert fp.published_rows("lastfm") == []


# ----------------------------------------------------------------------------------------------------------
# The binary, end to end
# ----------------------------------------------------------------------------------------------------------


def test_frontier_binary_end_to_end(tiny, tmp_path):
  data_dir, path, users, items = tiny
  md = tmp_path / "front.md"
  md.write_text("# header\n\n## hq_jax product codes\n\ntheir rows\n")
  hq_rows = tmp_path / "hq.json"
  hq_rows.write_text(json.dumps([good_row(method="hq_jax pq", dataset="tiny", family="hq_jax")]))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.frontier", f"--export={path}", f"--data_dir={data_dir}", "--dataset=Tiny",
       f"--out_dir={tmp_path / 'peers'}", f"--json={tmp_path / 'f.json'}", f"--markdown={md}",
       f"--plot={tmp_path / 'f.png'}", f"--front_rows={hq_rows}", "--bits=32", "--families=sq,lsh,pq_fastscan",
       "--layouts=both-shared,items", "--timing=false"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads((tmp_path / "f.json").read_text())
  methods = [(r["method"], r.get("layout")) for r in doc["rows"]]
  assert methods[0][0].startswith("float32")
  assert ("faiss LSH32rt", "both-shared") in methods and ("faiss PQ8x4fs", "items") in methods
  assert ("faiss SQ4", "items") in methods  # SQ at its own length, 4 d = 64 bits
  data = load_dataset(data_dir)
  for r in doc["rows"]:
    fp.check_front_row(r)
    assert r["dataset"] == "tiny"
    if r["method"] != doc["rows"][0]["method"]:  # every peer's recall is its export's, by hq_jax's evaluation
      ur, ir = export.load_export(r["source"])
      assert r["recall@20"] == pytest.approx(evaluation.evaluate(ur, ir, data)["recall@20"], abs=1e-9)
  assert doc["rows"][0]["recall@20"] == pytest.approx(numpy_recall_at_20(users, items, data), abs=1e-6)
  text = md.read_text()
  assert "their rows" in text and "## FAISS post-training peers" in text and "### Tiny" in text
  assert text.index("## hq_jax product codes") < text.index("## FAISS post-training peers")
  assert (tmp_path / "f.png").stat().st_size > 0
  # --from_json redraws the table and plot without fitting, here with a finished hq_jax workdir added
  workdir = tmp_path / "hq_run"
  workdir.mkdir()
  (workdir / "results.json").write_text(json.dumps({
      "config": {"seed": 0}, "model": "hqgnn-pq", "dataset": {"num_users": NUM_USERS, "num_items": NUM_ITEMS},
      "metrics": {"recall@20": 0.3, "ndcg@20": 0.2}, "bits_per_node": 32.0}))
  (tmp_path / "f.png").unlink()
  md.write_text(text.replace("### Tiny", "### Tiny\n\nstale line"))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.frontier", f"--from_json={tmp_path / 'f.json'}", f"--markdown={md}",
       f"--plot={tmp_path / 'f.png'}", f"--hq_workdirs={workdir}"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "stale line" not in md.read_text() and md.read_text().count("### Tiny") == 1
  assert (tmp_path / "f.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------------------
# Product codes (export kind "pq")
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["PQ4x8np", "PQ8x4fs", "OPQ4,PQ4x4np"])
def test_product_codes_decode_like_faiss(tiny, factory):
  _, _, users, items = tiny
  index = fp.train_index(factory, np.concatenate([users, items]), threads=1)
  pc, rotation = fp.product_codes(index, items)
  decoded = np.asarray(pc.dequantize(), np.float64)
  if rotation is not None:
    decoded = decoded @ rotation  # FAISS's reconstruction rotates back
  np.testing.assert_allclose(decoded, fp.decode(index, items), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory,layout", [("PQ4x4np", "both-separate"), ("PQ8x4fs", "items"),
                                            ("OPQ4,PQ4x4np", "both-shared"), ("OPQ4,PQ4x4np", "items")])
def test_product_code_export_ranks_like_faiss(tiny, tmp_path, factory, layout):
  data_dir, _, users, items = tiny
  family = "opq" if factory.startswith("OPQ") else ("pq_fastscan" if factory.endswith("fs") else "pq")
  spec = fp.PeerSpec(family=family, factory=factory, code_bits=16, layout=layout)
  peer = fp.fit_peer(spec, users, items, threads=1)
  assert isinstance(peer.item_rep, fp.ProductCodes)
  path = str(tmp_path / "export.npz")
  export.save_export(path, peer.user_rep, peer.item_rep)
  ur, ir = export.load_export(path)
  # FAISS's scores: the decoded floats (users float in the items layout)
  decoded = fp.fit_peer(spec, users, items, threads=1, native_pq=False)
  data = load_dataset(data_dir)
  assert evaluation.evaluate(ur, ir, data)["recall@20"] == pytest.approx(
      numpy_recall_at_20(decoded.user_rep, decoded.item_rep, data), abs=1e-6)


def test_keep_rows_merges_an_earlier_run(tmp_path):
  machine = {"utc": "t", "loadavg": [1.0, 1.0, 1.0]}
  float_row = good_row(method="float32 encoder (the export)", family="float", layout="both")
  earlier = {"dataset": "lastfm", "command": "first", "machine_before": machine, "machine_after": machine,
             "rows": [float_row, good_row(method="faiss ITQ8,LSH", layout="items", **{"recall@20": 0.1}),
                      good_row(method="faiss SQ4", layout="items")]}
  path = tmp_path / "f.json"
  path.write_text(json.dumps(earlier))
  doc = {"dataset": "lastfm", "command": "second", "machine_before": machine, "machine_after": machine,
         "rows": [float_row, good_row(method="faiss ITQ8,LSH", layout="items", **{"recall@20": 0.2})]}
  merged = fp.merged_with_earlier(doc, str(path))
  assert [(r["method"], r["recall@20"]) for r in merged["rows"][1:]] == [("faiss ITQ8,LSH", 0.2),
                                                                        ("faiss SQ4", [0.24, 0.25])]
  assert [run["command"] for run in merged["earlier_runs"]] == ["first"]
  with pytest.raises(UserError, match="gowalla"):
    fp.merged_with_earlier({**doc, "dataset": "gowalla"}, str(path))


def test_rows_from_lowbit_summary(tmp_path):
  path = tmp_path / "lowbit.json"
  path.write_text(json.dumps({"start": {"bits_per_node": 2048.0, "recall@20": [0.18]},
                              "1bit-ste": {"bits_per_node": 96.0, "seeds": [0, 1], "recall@20": [0.14, 0.15],
                                           "ndcg@20": [0.12, 0.13]}}))
  (row,) = fp.rows_from_lowbit_summary(str(path), "gowalla")
  assert row["method"] == "hq_jax 1bit-ste" and row["bits_per_node"] == 96.0 and row["seeds"] == [0, 1]
  assert fp.mean_of(row["recall@20"]) == pytest.approx(0.145)
  path.write_text(json.dumps({"x": {"recall@20": [0.1]}}))
  with pytest.raises(UserError, match="row 'x'"):
    fp.rows_from_lowbit_summary(str(path), "gowalla")


def test_merge_seeds_and_head_to_head():
  row = lambda method, layout, bits, recall, seed, family="hq_jax": {
      "method": method, "dataset": "lastfm", "family": family, "layout": layout, "bits_per_node": bits,
      "codebook_bits_per_node": 0.0, "recall@20": recall, "ndcg@20": 0.1, "split": "test", "seeds": [seed],
      "topk_seconds": None}
  ours = fp.merge_seeds([row("hq_jax pq8", "both", 64.0, 0.25, 0), row("hq_jax pq8", "both", 64.0, 0.24, 1),
                         row("hq_jax pq8 items", "items", 64.0, 0.26, 0)])
  assert [(r["method"], r["recall@20"], r["seeds"]) for r in ours] == [
      ("hq_jax pq8", [0.25, 0.24], [0, 1]), ("hq_jax pq8 items", [0.26], [0])]
  assert ours[0]["ndcg@20"] == [0.1, 0.1]
  peers = [row("faiss PQ8x8np", "both-shared", 64.0, 0.23, 0, "pq"), row("faiss OPQ8", "both-separate", 64.0, 0.246, 0, "opq"),
           row("faiss PQ8x8np", "items", 64.0, 0.27, 0, "pq"), row("faiss SQ4", "items", 256.0, 0.2, 0, "sq")]
  lines = fp.head_to_head(peers, ours, reference=0.5).splitlines()
  assert lines[2] == ("| 64 | both | faiss OPQ8: 0.2460 (49.2%) | hq_jax pq8: 0.2450 (49.0%), 2 seeds | -0.0010 |")
  assert lines[3] == "| 64 | items | faiss PQ8x8np: 0.2700 (54.0%) | hq_jax pq8 items: 0.2600 (52.0%) | -0.0100 |"
  assert lines[4] == "| 256 | items | faiss SQ4: 0.2000 (40.0%) | - | - |"
