r"""Scores exported user/item representations with the LightGCN full-ranking protocol.

  python -m experiments.evaluate --data_dir=../shared/data/gowalla --embeddings=run/embeddings.npz

prints one JSON line: {"recall@20": ..., "ndcg@20": ..., "recall@50": ..., "ndcg@50": ...,
"num_eval_users": ...}. `--data_dir` empty or `lastfm` means the embedded LastFM data. The .npz is an
export (format in `hq_jax.export`): float `user_embeddings` / `item_embeddings`, quantized codes (one
matrix per side, with float32 or 8-bit per-row scales, or layer-wise codes), ranked exactly from its integer
codes, or product codes (both sides, or float users with coded items), ranked from their decoded rows as
the decoded float32 pair. `--storage` adds what the export stores (`hq_jax.quant.family.storage`:
representation_bytes with the codebooks, bits_per_node of codes and per-node scalars, and the codebooks'
share beside it as codebook_bits_per_node). Bad input stops with one `evaluate: error: ...` line and exit
status 2.
"""


from absl import flags

from hq_jax import cli
from hq_jax import evaluation
from hq_jax import export
from hq_jax import strict_json
from hq_jax.data.interactions import load_dataset
from hq_jax.errors import UserError
from hq_jax.quant import family

_DATA_DIR = flags.DEFINE_string("data_dir", "", "LightGCN-format folder (train.txt, test.txt); empty or "
                                "'lastfm' for the embedded LastFM data.")
_EMBEDDINGS = flags.DEFINE_string("embeddings", None, "Exported representations (.npz).")
_KS = flags.DEFINE_list("ks", ["20", "50"], "Cutoffs K, comma separated.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", evaluation.DEFAULT_BATCH_SIZE, "Users scored at once.")
_STORAGE = flags.DEFINE_bool("storage", False, "Also print the stored bytes, bits per node and the codebooks' "
                             "bits per node beside them.")


def parse_ks(values: list[str]) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise UserError(f"--ks: expected comma-separated integers, got {','.join(values)!r}") from None


def main(argv):
  del argv
  data = load_dataset(_DATA_DIR.value)
  ks = evaluation.check_ks(parse_ks(_KS.value), data.num_items)
  user_rep, item_rep = export.load_export(_EMBEDDINGS.value)
  try:
    evaluation.check_representations(user_rep, item_rep, data)
  except UserError as e:
    raise UserError(f"{_EMBEDDINGS.value}: {e}") from None
  result = evaluation.evaluate(user_rep, item_rep, data, ks=ks, batch_size=_BATCH_SIZE.value)
  if _STORAGE.value:
    result = {**result, **family.storage(user_rep, item_rep)}
  print(strict_json.dumps(result), flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("embeddings")
  cli.run(main, "evaluate")
