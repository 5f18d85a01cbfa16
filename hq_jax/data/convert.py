"""Converts a pair list (`user<TAB>item[<TAB>weight]`, 1-based ids, as LastFM ships) to the LightGCN text format.

Used once to build the embedded LastFM dataset:

  python -m hq_jax.data.convert ../shared/data/lastfm/data1.txt hq_jax/data/lastfm/train.txt
  python -m hq_jax.data.convert ../shared/data/lastfm/test1.txt hq_jax/data/lastfm/test.txt --num_users=1892
"""

import argparse
import sys

import numpy as np

from hq_jax.errors import UserError, exit_on_user_error


def read_pairs(path: str, one_based: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Reads `user item [...]` rows (tab or space separated, CRLF tolerated) into 0-based id arrays."""
  users, items = [], []
  with open(path, encoding="utf-8") as f:
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
      users.append(u)
      items.append(i)
  if not users:
    raise UserError(f"{path}: empty file")
  return np.asarray(users, np.int64), np.asarray(items, np.int64)


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
    write_lightgcn(args.dst, users, items, args.num_users or int(users.max()) + 1)


if __name__ == "__main__":
  main(sys.argv[1:])
