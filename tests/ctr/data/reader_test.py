"""Tests for hq_jax.ctr.data.reader: chunks of whole lines, pyarrow parsing, line numbers, errors."""

import csv
import gzip
import io

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


# ---- RFC 4180 records at every chunk size, blank lines, line numbers, quoting off, byte-order marks

def _random_csv(seed: int, rows: int = 60) -> bytes:
  """CSV text of 3 columns: plain tokens, a '"' inside an unquoted token (an ordinary character), quoted
  values holding the delimiter, '""' and newlines, and blank lines; CRLF on some lines."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(rows):
    fields = []
    for _ in range(3):
      kind = rng.integers(0, 5)
      if kind == 0:
        fields.append("")
      elif kind == 1:
        fields.append("t%d" % rng.integers(0, 9))
      elif kind == 2:
        fields.append('x"y' if rng.random() < 0.5 else 'end"')
      else:
        body = "".join(rng.choice(["a", ",", '""', "\n", "\n\n", " "], size=rng.integers(0, 6)))
        fields.append(f'"{body}"')
    out.append(",".join(fields) + ("\r\n" if rng.random() < 0.2 else "\n"))
    if rng.random() < 0.15:
      out.append("\n")
  return "".join(out).encode()


def _python_csv_records(text: bytes) -> tuple[list, int]:
  """([(first line, fields) of every non-blank record], blank lines), by Python's csv module (CRs removed)."""
  rows = csv.reader(io.StringIO(text.decode().replace("\r", ""), newline=""))
  out, line, blank = [], 1, 0
  for row in rows:
    if row:
      out.append((line, row))
    else:
      blank += 1
    line = rows.line_num + 1
  return out, blank


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 31, 200, 1 << 20])
def test_quoted_records_equal_python_csv_at_every_chunk_size(tmp_path, seed, chunk_bytes):
  text = _random_csv(seed)
  path = tmp_path / "q.csv"
  path.write_bytes(text)
  chunks = list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"],
                                       chunk_bytes=chunk_bytes))
  got = [(c.line(r), [v.decode() for v in row.values()]) for c in chunks
         for r, row in enumerate(c.table.to_pylist())]
  want, blank = _python_csv_records(text)
  assert got == want
  assert sum(c.blank for c in chunks) == blank
  assert sum(c.quoted_newlines for c in chunks) == sum(f.count("\n") for _, row in want for f in row)


def test_blank_lines_count_blank_lines_only(tmp_path):
  path = tmp_path / "q.csv"
  path.write_bytes(b'a,b,c\n1,"x\n\ny",z\n\n2,"\n",w\n\n\n3,q,r\n')
  chunks = list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"],
                                       skip_first_line=True, chunk_bytes=4))
  assert [r["b"] for c in chunks for r in c.table.to_pylist()] == [b"x\n\ny", b"\n", b"q"]
  assert [c.line(r) for c in chunks for r in range(c.num_rows)] == [2, 6, 10]
  assert sum(c.blank for c in chunks) == 3 and sum(c.quoted_newlines for c in chunks) == 3


@pytest.mark.parametrize("chunk_bytes", [5, 1 << 20])
def test_parse_error_names_the_line_where_the_bad_record_starts(tmp_path, chunk_bytes):
  path = tmp_path / "q.csv"
  path.write_bytes(b'1,"two\nlines",3\n4,5,6\n\n7,"x\ny"\n8,9,10\n')  # the record of lines 5-6 is short
  with pytest.raises(UserError, match=rf"^{path}:5: expected 3 columns, found 2$"):
    list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"],
                                chunk_bytes=chunk_bytes))


@pytest.mark.parametrize("chunk_bytes", [1, 6, 1 << 20])
def test_unclosed_quote_names_the_line_where_it_opens(tmp_path, chunk_bytes):
  path = tmp_path / "q.csv"
  path.write_bytes(b'1,2,3\n4,"5,6\n7,8,9\n')
  with pytest.raises(UserError, match=rf"^{path}:2: a quoted value opens here and is not closed"):
    list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"],
                                chunk_bytes=chunk_bytes))


def test_a_record_longer_than_the_limit_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(reader, "MAX_RECORD_BYTES", 100)
  path = tmp_path / "q.csv"
  path.write_bytes(b'1,2,3\n4,"5' + b"\nx" * 200 + b'",6\n')
  with pytest.raises(UserError, match=rf"^{path}:2: a quoted value opens here and is not closed within"):
    list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"], chunk_bytes=16))


@pytest.mark.parametrize("chunk_bytes", [1, 9, 1 << 20])
def test_without_quoting_a_quote_is_a_character_and_every_line_a_row(tmp_path, chunk_bytes):
  path = tmp_path / "t.tsv"
  path.write_bytes(b'1\ta\tb\n2\t"c\td\n3\te\tf\n4\tg"\th\n5\t""\t"\n')
  chunks = list(reader.read_csv_chunks(str(path), delimiter="\t", column_names=["a", "b", "c"],
                                       chunk_bytes=chunk_bytes, quoting=False))
  rows = [tuple(r.values()) for c in chunks for r in c.table.to_pylist()]
  assert rows == [tuple(l.split(b"\t")) for l in path.read_bytes().splitlines()]
  assert [c.line(r) for c in chunks for r in range(c.num_rows)] == [1, 2, 3, 4, 5]
  assert sum(c.blank for c in chunks) == 0


def test_rows_that_differ_from_the_records_name_the_line(tmp_path, monkeypatch):
  """If pyarrow and the record scanner ever disagree, the load stops at the first record where they part."""
  path = tmp_path / "q.csv"
  path.write_bytes(b'1,2,3\n4,5,6\n7,"8\n9",10\n11,12,13\n')
  every_line = reader.record_ends
  monkeypatch.setattr(reader, "record_ends", lambda data, delimiter: every_line(data, None))
  with pytest.raises(UserError, match=rf"^{path}:3: the CSV parser reads this record as another number"):
    list(reader.read_csv_chunks(str(path), delimiter=",", column_names=["a", "b", "c"]))


@pytest.mark.parametrize("chunk_bytes", [1, 2, 5, 1 << 20])
@pytest.mark.parametrize("gz", [False, True])
def test_utf8_byte_order_mark_is_dropped(tmp_path, chunk_bytes, gz):
  text = reader.UTF8_BOM + b"a,b,c\n1,2,3\n"
  path = tmp_path / ("f.csv.gz" if gz else "f.csv")
  path.write_bytes(gzip.compress(text) if gz else text)
  assert reader.first_line(str(path)) == b"a,b,c"
  assert b"".join(p[1] for p in reader.read_line_chunks(str(path), chunk_bytes)) == b"a,b,c\n1,2,3\n"
  assert reader.read_all(str(path)) == b"a,b,c\n1,2,3\n"


@pytest.mark.parametrize("bom,name", [(b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
                                      (b"\xff\xfe\x00\x00", "UTF-32")])
def test_other_byte_order_marks_are_named(tmp_path, bom, name):
  path = tmp_path / "f.csv"
  path.write_bytes(bom + "a,b\n".encode("utf-16-le"))
  with pytest.raises(UserError, match=rf"^{path}:1: the file starts with a {name} byte-order mark"):
    reader.first_line(str(path))
  with pytest.raises(UserError, match=f"{name} byte-order mark"):
    list(reader.read_line_chunks(str(path), 3))
