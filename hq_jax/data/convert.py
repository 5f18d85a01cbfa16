"""Converts a pair list (`user<TAB>item[<TAB>weight]`, 1-based ids, as LastFM ships) to the LightGCN text format.

Used once to build the embedded LastFM dataset:

  python -m hq_jax.data.convert ../shared/data/lastfm/data1.txt hq_jax/data/lastfm/train.txt
  python -m hq_jax.data.convert ../shared/data/lastfm/test1.txt hq_jax/data/lastfm/test.txt --num_users=1892
"""

import argparse
import sys

import numpy as np

from hq_jax.data import interactions
from hq_jax.errors import UserError, exit_on_user_error


def read_pairs(path: str, one_based: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Reads `user item [...]` rows (tab or space separated, CRLF tolerated) into 0-based id arrays.

  Ids must fit int32 and be dense (`interactions.check_dense_ids`), checked before anything of the id
  space's size is allocated; a leading UTF-8 byte-order mark is dropped.

  Raises:
    UserError: naming `path:line` for a malformed line or an id out of range or too sparse.
  """
  users, items = [], []
  with open(path, encoding="utf-8-sig") as f:
    for lineno, line in enumerate(f, start=1):
      tokens = line.split()
      if not tokens:
        continue
      if len(tokens) < 2:
        raise UserError(f"{path}:{lineno}: expected 'user item [weight]', got {line.strip()!r}")
      try:
        u, i = int(tokens[0]), int(tokens[1])
      except ValueError:
        raise UserError(f"{path}:{lineno}: malformed id in {line.strip()!r}") from None
      u, i = (u - 1, i - 1) if one_based else (u, i)
      if u < 0 or i < 0:
        raise UserError(f"{path}:{lineno}: id below {1 if one_based else 0}")
      if max(u, i) > interactions.MAX_ID:
        raise UserError(f"{path}:{lineno}: id {max(u, i) + one_based} too large (0-based ids must fit in "
                        f"int32: at most {interactions.MAX_ID})")
      users.append(u)
      items.append(i)
  if not users:
    raise UserError(f"{path}: empty file")
  users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
  for what, ids, column in (("user", users, 0), ("item", items, 1)):
    interactions.check_dense_ids(ids, what, lambda largest, c=column: _line_of(path, c, largest + one_based),
                                 "remap the ids to 1..N (or 0..N-1 with --zero_based) first")
  return users, items


def _line_of(path: str, column: int, raw_id: int) -> str:
  """'path:line' of the first line whose `column` holds `raw_id` (an error path)."""
  with open(path, encoding="utf-8-sig") as f:
    for lineno, line in enumerate(f, start=1):
      tokens = line.split()
      if len(tokens) > column and tokens[column].lstrip("-").isdigit() and int(tokens[column]) == raw_id:
        return f"{path}:{lineno}"
  return path


def write_lightgcn(path: str, users: np.ndarray, items: np.ndarray, num_users: int) -> None:
  """Writes one `user item item ...` line per user 0..num_users-1 (items sorted, duplicates dropped)."""
  by_user = [[] for _ in range(num_users)]
  for u, i in sorted(set(zip(users.tolist(), items.tolist()))):
    by_user[u].append(i)
  with open(path, "w", encoding="utf-8") as f:
    for u, its in enumerate(by_user):
      f.write(" ".join(map(str, [u, *its])) + "\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("src")
  parser.add_argument("dst")
  parser.add_argument("--num_users", type=int, default=None)
  parser.add_argument("--zero_based", action="store_true", help="ids in src are already 0-based")
  args = parser.parse_args(argv)
  with exit_on_user_error("convert"):
    users, items = read_pairs(args.src, one_based=not args.zero_based)
    limit = interactions.dense_id_limit(np.unique(users).size)
    if args.num_users is not None and not int(users.max()) < args.num_users <= limit:
      raise UserError(f"--num_users={args.num_users}: must be above the largest 0-based user id "
                      f"{int(users.max())} and at most {limit:,} (the dense-id limit for "
                      f"{np.unique(users).size:,} distinct users)")
    write_lightgcn(args.dst, users, items, args.num_users or int(users.max()) + 1)


if __name__ == "__main__":
  main(sys.argv[1:])
