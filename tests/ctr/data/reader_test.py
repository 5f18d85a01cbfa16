"""Tests for hq_jax.ctr.data.reader: chunks of whole lines, pyarrow parsing, line numbers, errors."""

import gzip

import numpy as np
import pytest

from hq_jax.ctr.data import reader
from hq_jax.errors import UserError

# A header, blank lines, a quoted delimiter, a CRLF line and no newline after the last line.
TEXT = b"a,b,c\n1,x,\n\n2,\"y,z\",w\r\n3,,\n\n\n4,q,r\n5,s,t"


@pytest.mark.parametrize("chunk_bytes", [1, 7, 13, 1 << 20])
def test_chunks_are_whole_lines_with_line_numbers(tmp_path, chunk_bytes):
  path = tmp_path / "f.csv"
  path.write_bytes(TEXT)
  pieces = list(reader.read_line_chunks(str(path), chunk_bytes))
  assert b"".join(p[1] for p in pieces) == TEXT.replace(b"\r", b"") + b"\n"
  assert [p[0] for p in pieces] == list(np.cumsum([1] + [p[2] for p in pieces[:-1]]))
  assert all(p[1].endswith(b"\n") and p[1].count(b"\n") == p[2] for p in pieces)


@pytest.mark.parametrize("chunk_bytes", [5, 16, 1 << 20])
@pytest.mark.parametrize("gz", [False, True])
def test_read_csv_chunks_rows_blank_lines_and_line_numbers(tmp_path, chunk_bytes, gz):
  path = tmp_path / ("f.csv.gz" if gz else "f.csv")
  path.write_bytes(gzip.compress(TEXT) if gz else TEXT)
  chunks = list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"],
                                       include_columns=["a", "b"], skip_first_line=True,
                                       chunk_bytes=chunk_bytes))
  rows = [(r["a"], r["b"]) for c in chunks for r in c.table.to_pylist()]
  assert rows == [(b"1", b"x"), (b"2", b"y,z"), (b"3", b""), (b"4", b"q"), (b"5", b"s")]
  assert sum(c.blank for c in chunks) == 3
  lines = [c.line(r) for c in chunks for r in range(c.num_rows)]
  assert lines == [2, 4, 5, 8, 9]
  assert all(c.table.column_names == ["a", "b"] for c in chunks)


def test_chunk_fail_names_line_and_token(tmp_path):
  path = tmp_path / "f.csv"
  path.write_bytes(TEXT)
  chunk = next(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"],
                                      skip_first_line=True))
  with pytest.raises(UserError, match=rf"^{path}:4: bad b, got 'y,z'$"):
    chunk.fail(1, "b", "bad b")
  inverse, distinct = reader.distinct_tokens(chunk, "c")
  assert distinct.to_pylist() == [b"", b"w", b"r"]  # the last line (no final newline) is the next chunk
  np.testing.assert_array_equal(inverse, [0, 1, 0, 2])


@pytest.mark.parametrize("text,line,found", [
    (b"1,2,3\n4,5\n", 2, 2), (b"1,2,3\n\n4,5,6,7\n", 3, 4), (b'1,2,3\n"4,5",6\n', 2, 2),
])
def test_wrong_column_count_names_the_line(tmp_path, text, line, found):
  path = tmp_path / "f.csv"
  path.write_bytes(text)
  with pytest.raises(UserError, match=rf"^{path}:{line}: expected 3 columns, found {found}$"):
    list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"]))


def test_missing_and_truncated_files(tmp_path):
  with pytest.raises(UserError, match="file not found"):
    list(reader.read_line_chunks(str(tmp_path / "none"), 100))
  path = tmp_path / "t.gz"
  path.write_bytes(gzip.compress(b"1,2\n" * 1000)[:-20])
  with pytest.raises(UserError, match="cannot read"):
    list(reader.read_line_chunks(str(path), 100))
