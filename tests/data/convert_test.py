"""Tests for hq_jax.data.convert: pair lists to the LightGCN format, ids checked before allocation."""

import numpy as np
import pytest

from hq_jax.data import convert, interactions
from hq_jax.errors import UserError


def test_pairs_to_lightgcn_round_trip(tmp_path):
  src = tmp_path / "pairs.txt"
  src.write_bytes(b"\xef\xbb\xbf1\t2\t5\r\n1\t1\n3\t2\n1\t2\n")  # a byte-order mark, CRLF, a duplicate
  users, items = convert.read_pairs(str(src))
  np.testing.assert_array_equal(users, [0, 0, 2, 0])
  np.testing.assert_array_equal(items, [1, 0, 1, 1])
  convert.main([str(src), str(tmp_path / "train.txt")])
  assert (tmp_path / "train.txt").read_text() == "0 0 1\n1\n2 1\n"


@pytest.mark.parametrize("text,where,message", [
    ("1 1\n2 3\n2000000001 2\n", ":3", "user id 2000000000 implies a table of 2,000,000,001 rows for 3 distinct"),
    ("1 1\n2 3000000000\n", ":2", "id 3000000000 too large (0-based ids must fit in int32"),
    ("1 1\n2 99999999999999999999999\n", ":2", "too large"),
])
def test_sparse_or_huge_ids_name_the_line(tmp_path, text, where, message):
  src = tmp_path / "pairs.txt"
  src.write_text(text)
  with pytest.raises(UserError) as e:
    convert.read_pairs(str(src))
  assert str(e.value).startswith(f"{src}{where}: ") and message in str(e.value)


@pytest.mark.parametrize("num_users", ["1", "3000000000"])
def test_num_users_out_of_range_is_one_line(tmp_path, capsys, num_users):
  src = tmp_path / "pairs.txt"
  src.write_text("1 1\n3 2\n")
  with pytest.raises(SystemExit) as e:
    convert.main([str(src), str(tmp_path / "out.txt"), f"--num_users={num_users}"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"convert: error: --num_users={num_users}: must be above the largest 0-based user id 2 "
                        f"and at most {interactions.DENSE_ID_FLOOR:,}") and err.count("\n") == 1
