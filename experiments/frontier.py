r"""FAISS's post-training quantizers on hq_jax's front: Recall@20 and top-20 time against bits per node.

  python -m experiments.frontier --export=runs/lastfm_fp/export.npz --data_dir=lastfm --dataset=LastFM \
      --out_dir=runs/frontier_lastfm --json=results/hqgnn_frontier_lastfm.json \
      --markdown=results/hqgnn_frontier.md --plot=results/hqgnn_frontier_lastfm.png
  # the table and plot again from that JSON (fits nothing), with hq_jax's own rows added:
  python -m experiments.frontier --from_json=results/hqgnn_frontier_lastfm.json \
      --front_rows=results/hqgnn_frontier_pq_lastfm.json --hq_workdirs=runs/lowbit_lastfm/1bit-ste_seed0 \
      --markdown=results/hqgnn_frontier.md --plot=results/hqgnn_frontier_lastfm.png

  # Gowalla (the hqgnn_gowalla_fast.py encoder); OPQ is the slow part, so it can run apart (--keep_rows):
  python -m experiments.frontier --export=runs/gowalla_fast/export.npz --data_dir=../shared/data/gowalla \
      --dataset=Gowalla --out_dir=runs/frontier_gowalla --json=results/hqgnn_frontier_gowalla.json \
      --markdown=results/hqgnn_frontier.md --plot=results/hqgnn_frontier_gowalla.png \
      --families=pq,pq_fastscan,sq,lsh,itq
  python -m experiments.frontier ... (the same) --families=opq --keep_rows

Measured (2026-12-07, 2-core AMD EPYC shared with other jobs, load 13-25; results/hqgnn_frontier.md): LastFM,
all 55 rows in 19 min; OPQ keeps 89-95% of the 0.2493 encoder at 32-64 bits per node, PQ 8-bit sub-codes
97-99% at 128, binary codes 49-80%. Gowalla size without OPQ (an epoch-120 checkpoint as the encoder, not
reported): 21 min.

For the float embeddings of a trained full-precision export, every FAISS peer (`frontier_peers.peer_specs`:
PQ{M}x8np, OPQ{M},PQ{M}x8np, PQ{M}x4fs, SQ4, SQ8, LSH{B}rt, ITQ{B},LSH at --bits per node where the method
has that length) is fitted in the layouts both-shared, both-separate and items (`frontier_peers` docstring),
written as an hq_jax export under --out_dir/<name>/export.npz (PQ / OPQ as product codes, kind "pq", where
the layout allows: `frontier_peers.native_pq_pair`), read back with `hq_jax.export.load_export`
and scored by `hq_jax.evaluation.evaluate` (the code of `experiments.evaluate`) on the test split. Nothing is
chosen for a peer, so no validation split is used (the encoder itself was trained on all of train.txt).
Each row also gets the all-user top-20 time on this CPU of FAISS's own search (the peer's item index, IP,
plain top-20 without excluding training items; binary codes: IndexBinaryFlat over the packed codes) and of
hq_jax's retrieval over the row's export (`hq_jax.retrieval`, training items excluded, through
`hq_jax.retrieval.benchmark.run_jax_method`, as `experiments.bench_retrieval` times it); the CPU model,
OPENBLAS_CORETYPE, load averages and UTC time are recorded before and after.

Writes --json (machine, command, rows), the peers' table into the "FAISS post-training peers" section of
--markdown (one "### <dataset>" subsection per dataset; the rest of the file is left as it is), and --plot:
these rows with the float encoder, the published points of `frontier_peers.PUBLISHED_ROWS` for this dataset
(BiGeaR on Gowalla) and hq_jax's own rows from --front_rows files, finished --hq_workdirs and --lowbit_summaries.

Front row: the one JSON record the table and the plot read (`frontier_peers.FRONT_ROW_FIELDS`, checked by
`check_front_row`). A front-row file is a JSON list of rows, or an object with a "rows" list.
  required
    method                  str    what it is, e.g. "faiss OPQ8,PQ8x8np" or "hq_jax pq M=8 b=8 gste"
    dataset                 str    "lastfm", "gowalla"
    bits_per_node           number stored bits per coded node: codes + per-node scalars (scales, norms);
                                   mean over users and items when both are coded, per item when only the
                                   items are (layout "items", users float32)
    codebook_bits_per_node  number trained parameters stored once (codebooks, rotations, ranges, per-matrix
                                   scalars) in bits, divided by the number of coded nodes
    recall@20, ndcg@20      number, or a list over seeds (the table shows the mean, the plot mean and std);
                                   ndcg@20 may be null where a source's NDCG is not LightGCN's formula
    split                   str    "test" or "valid"
    seeds                   list   the seeds of the recall list (training seeds; [] where none applies)
    topk_seconds            number all-user top-20 seconds of the method's own search on this CPU, or null
    source                  str    the file, log or command the numbers come from
  optional
    family (pq, pq_fastscan, opq, sq, lsh, itq, hq_jax, bigear, float), layout (both-shared, both-separate,
    items, both), user_bits_per_node, topk_index (what was timed), topk_seconds_hq_jax (hq_jax's retrieval
    over the row's export), reference_recall@20 (the float start the % is of, where it is not the table's),
    dim, best_of_epochs (true: the best test epoch was picked, not the final one), note.
"""

import json
import os
import re
import sys

# FAISS's OpenMP threads wait passively: on this shared, oversubscribed CPU (load 20-27 on 2 cores) spinning
# threads made IndexBinaryFlat 20-30x slower with 2 threads than with 1 (2.1 s vs 0.07 s); passive: 0.08 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp loads (faiss is imported later)

import jax
import numpy as np
from absl import flags

from experiments import frontier_peers as fp
from hq_jax import cli, evaluation, export, strict_json
from hq_jax.data.interactions import load_dataset
from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.retrieval import benchmark
from hq_jax.workdir import write_json

_EXPORT = flags.DEFINE_string("export", None, "Full-precision export.npz of the trained encoder.")
_DATA_DIR = flags.DEFINE_string("data_dir", "lastfm", "LightGCN folder of its dataset ('lastfm': embedded).")
_DATASET = flags.DEFINE_string("dataset", "", "Dataset label for the table (default: the data folder's name).")
_BITS = flags.DEFINE_list("bits", [str(b) for b in fp.DEFAULT_BITS], "Code bits per coded node.")
_FAMILIES = flags.DEFINE_list("families", list(fp.FAMILIES), "Peer families.")
_LAYOUTS = flags.DEFINE_list("layouts", list(fp.LAYOUTS), "Layouts.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Folder for one export.npz per peer.")
_JSON = flags.DEFINE_string("json", "", "Output JSON (machine, command, front rows).")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Markdown file whose peers section gets this dataset's table.")
_PLOT = flags.DEFINE_string("plot", "", "Output PNG (Recall@20 and top-20 time against bits per node).")
_FRONT_ROWS = flags.DEFINE_list("front_rows", [], "JSON files of front rows (hq_jax's) added to the plot.")
_LOWBIT = flags.DEFINE_list("lowbit_summaries", [], "experiments.hqgnn_lowbit summaries (.json) whose rows join the "
                            "plot (trained 1-8 bit hq_jax codes).")
_HQ_WORKDIRS = flags.DEFINE_list("hq_workdirs", [], "Finished hq_jax workdirs whose results.json rows join the plot.")
_PQ_CODES = flags.DEFINE_bool("pq_codes", True, "Export PQ / OPQ peers as hq_jax product codes (kind 'pq') where "
                               "the layout allows; false: as decoded float rows.")
_TIMING = flags.DEFINE_bool("timing", True, "Time FAISS's and hq_jax's all-user top-20 searches.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per search (after one warm-up run).")
_THREADS = flags.DEFINE_integer("threads", 2, "FAISS OpenMP threads (the CPU's cores).")
_K = flags.DEFINE_integer("k", 20, "Top-K of the timed searches.")
_KEEP_ROWS = flags.DEFINE_bool("keep_rows", False, "Keep the rows of an existing --json that this run does not "
                                "refit (same method and layout), e.g. to redo one family; the earlier runs' commands "
                                "and machines are kept under 'earlier_runs'.")
_NOTE = flags.DEFINE_string("note", None, "A paragraph printed under the dataset's tables (kept in the JSON; with "
                            "--from_json it replaces the stored note and rewrites that file).")
_FROM_JSON = flags.DEFINE_string("from_json", "", "Fit nothing: read a --json this binary wrote and (re)write "
                                 "--markdown and --plot from it (e.g. with hq_jax's --front_rows added).")

PEERS_HEADING = "## FAISS post-training peers"
HEADER = """# hq_jax on the front: Recall@20 against bits per node, beside the strongest alternatives (issue 22)

Every method is scored by hq_jax's evaluation (`hq_jax.evaluation.evaluate`, the LightGCN full-ranking
protocol, Recall@20 / NDCG@20 on test.txt) from an hq_jax export, on the same trained encoders (BiGeaR:
its own logged numbers, marked, on its own d = 256 teacher). Bits per node = stored bits of one coded
node's codes plus its per-node scalars (scales, norms); codebooks, rotations and other parameters stored
once are shown apart, as bits per coded node. Top-20 times are all users on this machine's CPU (2 cores
shared with other jobs: the load averages are given with each table).
Plots: `results/hqgnn_frontier_<dataset>.png` (all rows of both sections; rows are "front rows", schema in
the docstring of `experiments/frontier.py`).

- "hq_jax product codes": product codes trained end to end inside HQ-GNN (deliverables 1, 2, 4).
- "FAISS post-training peers": FAISS quantizers fitted after training on the same float embeddings, and
  BiGeaR's logged points (deliverable 3).
"""


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def _time_hq_jax(user_rep, item_rep, data, cache: dict, key) -> float | None:
  """Median all-user top-K seconds of hq_jax's retrieval over (user_rep, item_rep), once per `key`."""
  if not _TIMING.value:
    return None
  if key not in cache:
    dense = lambda r: np.asarray(r if isinstance(r, np.ndarray) else r.dequantize(), np.float32)
    w = benchmark.Workload(dense(user_rep), dense(item_rep), np.arange(data.num_users), data.train.indptr,
                           data.train.indices, _K.value, user_rep=user_rep, item_rep=item_rep)
    r = benchmark.run_jax_method(w, benchmark.EXPORT_METHOD, batch_users=None, block_items=None,
                                 repeats=_REPEATS.value, bandwidth=1.0)
    cache[key] = r["median_s"]
  return cache[key]


def _time_faiss(index, queries: np.ndarray) -> float | None:
  if not _TIMING.value:
    return None
  median, _ = fp.median_seconds(lambda: index.search(queries, _K.value), _REPEATS.value)
  return median


def _hq_key(user_rep, item_rep) -> tuple:
  """Representations that hq_jax searches with the same code (one timing each)."""
  if isinstance(item_rep, QuantizedMatrix):
    return ("1bit", item_rep.codes.shape[1])
  return (type(user_rep).__name__, type(item_rep).__name__, item_rep.shape[1])


def run(data, users: np.ndarray, items: np.ndarray, dataset: str) -> dict:
  """Fits, exports, scores and times every peer; returns the JSON document (machine, rows)."""
  import faiss  # noqa: PLC0415

  faiss.omp_set_num_threads(_THREADS.value)
  bits = tuple(int(b) for b in _BITS.value)
  specs = fp.peer_specs(users.shape[1], bits, tuple(_FAMILIES.value), tuple(_LAYOUTS.value))
  machine_before = fp.machine_state()
  print(strict_json.dumps(machine_before), flush=True)
  reference = evaluation.evaluate(users, items, data)
  hq_cache, faiss_cache = {}, {}
  flat = faiss.IndexFlatIP(users.shape[1])
  flat.add(items)
  float_row = fp.check_front_row({
      "method": "float32 encoder (the export)", "dataset": dataset, "family": "float", "layout": "both",
      "bits_per_node": 32.0 * users.shape[1], "codebook_bits_per_node": 0.0,
      "user_bits_per_node": 32.0 * users.shape[1],
      "recall@20": reference["recall@20"], "ndcg@20": reference["ndcg@20"], "split": "test", "seeds": [],
      "topk_seconds": _time_faiss(flat, users), "topk_index": "faiss IndexFlatIP",
      "topk_seconds_hq_jax": _time_hq_jax(users, items, data, hq_cache, _hq_key(users, items)),
      "source": _EXPORT.value})
  rows = [float_row]
  print(f"float32: Recall@20 {reference['recall@20']:.4f}", flush=True)
  for spec in specs:
    peer = fp.fit_peer(spec, users, items, threads=_THREADS.value, native_pq=_PQ_CODES.value)
    folder = os.path.join(_OUT_DIR.value, _slug(spec.name))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "export.npz")
    export.save_export(path, peer.user_rep, peer.item_rep)
    user_rep, item_rep = export.load_export(path)  # what is scored is what the file holds
    metrics = evaluation.evaluate(user_rep, item_rep, data)
    acct = fp.bits_accounting(spec, num_users=data.num_users, num_items=data.num_items, dim=users.shape[1],
                              trained=peer.trained_floats)
    if spec.factory not in faiss_cache:  # FAISS's search cost does not depend on how the queries were made
      index, transform = fp.faiss_search_index(peer, items)
      what = f"faiss {type(index).__name__} over the items ({spec.factory})"
      faiss_cache[spec.factory] = (_time_faiss(index, transform(users)), what)
    faiss_s, what = faiss_cache[spec.factory]
    row = fp.check_front_row({
        "method": f"faiss {spec.factory}", "dataset": dataset, "family": spec.family, "layout": spec.layout,
        "bits_per_node": acct["bits_per_node"], "codebook_bits_per_node": acct["codebook_bits_per_node"],
        "user_bits_per_node": acct["user_bits_per_node"], "recall@20": metrics["recall@20"],
        "ndcg@20": metrics["ndcg@20"], "split": "test", "seeds": [], "topk_seconds": faiss_s, "topk_index": what,
        "topk_seconds_hq_jax": _time_hq_jax(user_rep, item_rep, data, hq_cache, _hq_key(user_rep, item_rep)),
        "source": path, "note": f"fit {peer.fit_seconds:.1f} s; stored bytes {acct['stored_bytes']}"})
    rows.append(row)
    print(f"{spec.name}: {acct['bits_per_node']:g} b/node, Recall@20 {metrics['recall@20']:.4f} "
          f"({100 * metrics['recall@20'] / reference['recall@20']:.1f}%), fit {peer.fit_seconds:.1f} s, "
          f"faiss {faiss_s} s", flush=True)
  return {"dataset": dataset, "num_users": data.num_users, "num_items": data.num_items,
          "command": " ".join(["python -m experiments.frontier"] + sys.argv[1:]),
          "faiss_version": faiss.__version__, "jax": jax.__version__, "faiss_threads": _THREADS.value,
          "k": _K.value, "repeats": _REPEATS.value, "machine_before": machine_before,
          "machine_after": fp.machine_state(), "reference": reference, "rows": rows}


def markdown_subsection(doc: dict, ours: list[dict] = ()) -> str:
  """The dataset's subsection: command, machine, the summary table, hq_jax's rows on the same encoder
  against the best FAISS row (when `ours` has any), every row."""
  mb, ma = doc["machine_before"], doc["machine_after"]
  reference = doc["reference"]["recall@20"]
  png = _PLOT.value
  return (f"`{doc['command']}`\n\n"
          f"{mb['cpu_model']} ({mb['cpus']} CPUs), OPENBLAS_CORETYPE={mb['openblas_coretype']}, "
          f"OMP_WAIT_POLICY={mb['omp_wait_policy']}, faiss {doc['faiss_version']} ({doc['faiss_threads']} threads), "
          f"jax {doc['jax']}; {mb['utc']} to {ma['utc']}; load averages (1, 5, 15 min) {mb['loadavg']} before, "
          f"{ma['loadavg']} after (other jobs shared the 2 cores: timings are indicative). Top-20: median of "
          f"{doc['repeats']} runs after a warm-up, all {doc['num_users']} users x {doc['num_items']} items. "
          f"Float32 encoder: Recall@20 {reference:.4f}, NDCG@20 {doc['reference']['ndcg@20']:.4f}."
          + (f" Plot: `{png}`." if png else "")
          + "".join(f"\n\nRows not fitted by that command come from another run, `{run['command']}` "
                    f"({run['machine_before']['utc']} to {run['machine_after']['utc']}, load averages "
                    f"{run['machine_before']['loadavg']} before, {run['machine_after']['loadavg']} after)."
                    for run in doc.get("earlier_runs", [])) + "\n\n"
          + fp.summary_table(doc["rows"], reference) + "\n\n" + (doc["note"] + "\n\n" if doc.get("note") else "")
          + ("hq_jax on this encoder against the best FAISS row of each length and layout group:\n\n"
             + fp.head_to_head(doc["rows"], list(ours), reference) + "\n\n" if ours else "")
          + "Every row:\n\n"
          + fp.markdown_table(doc["rows"] + list(ours) + fp.published_rows(doc["dataset"]), reference) + "\n")


def update_markdown(path: str, doc: dict, ours: list[dict] = ()) -> None:
  text = open(path).read() if os.path.exists(path) else HEADER
  if PEERS_HEADING not in text.splitlines():
    text = fp.replace_section(text, PEERS_HEADING, PEERS_INTRO)
  lines = text.splitlines()
  start = lines.index(PEERS_HEADING)
  end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
  section = fp.replace_section("\n".join(lines[start:end]), f"### {doc['label']}", markdown_subsection(doc, ours))
  out = "\n".join(lines[:start]) + ("\n" if start else "") + section.rstrip("\n") + "\n"
  if end < len(lines):
    out += "\n" + "\n".join(lines[end:]) + "\n"
  with open(path, "w") as f:
    f.write(out)


PEERS_INTRO = """FAISS post-training quantizers fitted on the float embeddings of the full-precision encoder
(`python -m experiments.frontier`, `experiments/frontier_peers.py`), each written as an hq_jax export and ranked
by `hq_jax.evaluation.evaluate` on test. Nothing is chosen for a peer, so no validation split is used.

- Factory strings (d = 64; at 32, 64, 128, 256 bits per coded node where the method has that length):
  PQ{M}x8np (M = B / 8), OPQ{M},PQ{M}x8np, PQ{M}x4fs (M = B / 4), SQ4 (4 d = 256 bits), SQ8 (8 d = 512 bits),
  LSH{B}rt (random rotation to B bits, thresholds trained), ITQ{B},LSH (B <= d). "np" skips polysemous
  re-numbering of the codewords (same decoded vectors, 10-20x faster training).
- Layouts: both-shared (users and items coded, one quantizer trained on both), both-separate (one per side),
  items (items coded with a quantizer trained on the items, users float32; bits per node count the items).
  Binary codes are both-shared or items only (separately rotated codes do not compare).
- Stored and ranked as FAISS ranks: PQ and OPQ as hq_jax product codes (export kind "pq": FAISS's codes
  and codebooks; OPQ's rotation applied to the float users of the items layout; OPQ both-separate as
  decoded rows), SQ by the decoded rows (`sa_decode`); binary codes both coded by
  Hamming = <s_u, s_i> on the codes themselves (a 1-bit hq_jax export), items only by <u L, s_i> (the
  float query against the codes through the index's linear map L, exported as items s_i L^T).
- Bits per node: code bits (no FAISS code here stores a per-vector scalar); trained parameters (codebooks,
  OPQ rotation, SQ per-dimension ranges, LSH rotation and thresholds, ITQ mean and projection) as bits per
  coded node beside it (both-separate: two sets).
- Top-20 s: FAISS = the peer's item index searched with all users (plain top-20; one timing per factory
  string: the search does not depend on the layout); hq_jax = `hq_jax.retrieval` over the row's export
  (training items excluded; every decoded-float export is the same float32 search, each 1-bit export the
  XOR/popcount search of its B bits).
- BiGeaR (Gowalla only): its logged best-of-epochs point, d = 256, 3 layers x 256 sign bits + 3 float32
  scales per node, from the BiGeaR++ repository's logs (`frontier_peers.BIGEAR_LOG`); % of its own teacher."""


def write_outputs(doc: dict) -> None:
  """--markdown and --plot from a run's document (hq_jax's rows of --front_rows, --hq_workdirs and
  --lowbit_summaries join both)."""
  dataset = doc["dataset"]
  extra = [r for path in _FRONT_ROWS.value for r in fp.load_front_rows(path)]
  extra += [fp.row_from_workdir(w, dataset) for w in _HQ_WORKDIRS.value]
  extra += [r for path in _LOWBIT.value for r in fp.rows_from_lowbit_summary(path, dataset)]
  ours = fp.merge_seeds([r for r in extra if r["dataset"].lower() == dataset])
  if _MARKDOWN.value:
    update_markdown(_MARKDOWN.value, doc, ours)
  if _PLOT.value:
    rows = doc["rows"][1:] + fp.published_rows(dataset) + ours
    float_row = doc["rows"][0]
    fp.plot_front(rows, _PLOT.value, f"{doc['label']}: Recall@20 against bits per node (test)",
                  reference=doc["reference"]["recall@20"],
                  reference_seconds={"FAISS IndexFlatIP": float_row["topk_seconds"],
                                     "hq_jax": float_row.get("topk_seconds_hq_jax")})


def main(argv):
  del argv
  if _FROM_JSON.value:
    try:
      with open(_FROM_JSON.value) as f:
        doc = json.load(f)
      for k, row in enumerate(doc["rows"]):
        fp.check_front_row(row, f"{_FROM_JSON.value} row {k}")
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"--from_json: {_FROM_JSON.value} is not a document this binary wrote ({e})") from None
    if _NOTE.value is not None:
      doc["note"] = _NOTE.value
      write_json(_FROM_JSON.value, doc)
    write_outputs(doc)
    return
  if not _EXPORT.value or not _OUT_DIR.value:
    raise UserError("--export and --out_dir are required (or --from_json)")
  for flag, values, known in (("--families", _FAMILIES.value, fp.FAMILIES), ("--layouts", _LAYOUTS.value, fp.LAYOUTS)):
    if unknown := [v for v in values if v not in known]:
      raise UserError(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
  if not _BITS.value or not all(b.isdigit() and int(b) > 0 for b in _BITS.value):
    raise UserError(f"--bits: positive integers expected, got {','.join(_BITS.value)!r}")
  data = load_dataset(_DATA_DIR.value)
  users, items = export.load_export(_EXPORT.value)
  if not isinstance(users, np.ndarray) or users.dtype.kind != "f":
    raise UserError(f"{_EXPORT.value}: a full-precision export (user_embeddings, item_embeddings) is needed")
  evaluation.check_representations(users, items, data)
  label = _DATASET.value or data.name
  dataset = label.lower()
  doc = run(data, np.ascontiguousarray(users, np.float32), np.ascontiguousarray(items, np.float32), dataset)
  doc["label"] = label
  if _NOTE.value is not None:
    doc["note"] = _NOTE.value
  if _KEEP_ROWS.value and _JSON.value and os.path.exists(_JSON.value):
    doc = fp.merged_with_earlier(doc, _JSON.value)
  if _JSON.value:
    write_json(_JSON.value, doc)
  write_outputs(doc)


if __name__ == "__main__":
  cli.run(main, "frontier")
