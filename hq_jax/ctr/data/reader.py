"""Delimited text files read in chunks of whole lines, each chunk parsed by pyarrow's CSV reader (ours).

The file is cut into chunks of whole lines (CR bytes removed, `.gz` decompressed on the fly), and every
chunk goes to `pyarrow.csv.read_csv` with explicit column names and delimiter, every column typed
`pa.binary()` (the exact bytes: nothing becomes null, nothing is converted), so memory stays bounded for any
file size and every row keeps an exact line number for error messages: a `UserError` names `path:line`.
Blank lines are skipped (and counted); a quoted field follows the CSV rules (`"a,b"`, `""` for a quote).
"""

import concurrent.futures
import csv
import dataclasses
import gzip
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from hq_jax.errors import UserError

# Bytes per chunk: large enough that per-chunk overhead vanishes, small enough that a chunk's columns stay
# in cache (on a 500k-row Criteo-format file `load_criteo` took the least CPU time with 4 MB chunks, of
# 2 / 4 / 8 / 16 MB; see results/ctr_data.md). Does not change the result.
DEFAULT_CHUNK_BYTES = 4 << 20


def open_binary(path: str):
  """The file opened for binary reading (gzip when the name ends in `.gz`).

  Raises:
    UserError: the file does not exist.
  """
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def first_line(path: str) -> bytes:
  """The file's first line without its line ending."""
  with open_binary(path) as f:
    return f.readline().rstrip(b"\r\n")


def read_line_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[int, bytes, int]]:
  """Yields (number of the chunk's first line, bytes of whole lines ending in b'\\n', number of lines).

  CR bytes are removed.

  Raises:
    UserError: the file is missing or cannot be read (e.g. a truncated gzip stream).
  """
  with open_binary(path) as f:
    rest, lineno = b"", 1
    while True:
      try:
        block = f.read(chunk_bytes)
      except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
      if not block:
        break
      block = rest + block
      cut = block.rfind(b"\n")
      if cut < 0:
        rest = block
        continue
      data, rest = block[:cut + 1], block[cut + 1:]
      data = data.replace(b"\r", b"")
      lines = data.count(b"\n")
      yield lineno, data, lines
      lineno += lines
    if rest:
      yield lineno, rest.replace(b"\r", b"") + b"\n", 1


@dataclasses.dataclass
class Chunk:
  """One chunk of a delimited file: its non-blank rows as an arrow table, and where they came from."""

  path: str
  first_line: int  # line number of the chunk's first line (blank or not)
  data: bytes  # the chunk's whole lines, each ending in b'\n', CRs removed
  table: pa.Table  # one row per non-blank line
  blank: int  # blank lines skipped in this chunk

  @property
  def num_rows(self) -> int:
    return self.table.num_rows

  def line(self, row: int) -> int:
    """The file line number of the chunk's row `row`."""
    if not self.blank:
      return self.first_line + int(row)
    buf = np.frombuffer(self.data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return self.first_line + int(np.flatnonzero(ends > starts)[row])

  def fail(self, row: int, column: str, what: str):
    """Raises `UserError('path:line: what, got TOKEN')` for the token at (row, column)."""
    token = self.table.column(column)[int(row)].as_py()
    if isinstance(token, bytes):
      token = token.decode("utf-8", "replace")
    raise UserError(f"{self.path}:{self.line(row)}: {what}, got {token!r}")


def read_csv_chunks(path: str, *, delimiter: str, column_names: Sequence[str],
                    include_columns: Sequence[str] | None = None, skip_first_line: bool = False,
                    chunk_bytes: int = 0) -> Iterator[Chunk]:
  """Yields the file's chunks parsed by pyarrow, every column as `pa.binary()` (the exact bytes).

  The next chunk is read and parsed in a background thread while the caller works on the current one
  (pyarrow releases the GIL while parsing).

  Args:
    path: the file (`.gz` is decompressed).
    delimiter: one character.
    column_names: every column of the file, in order; a line with another number of columns is an error.
    include_columns: the columns to return (default all).
    skip_first_line: the first line is a header (already checked by the caller).
    chunk_bytes: bytes per chunk (0: `DEFAULT_CHUNK_BYTES`); does not change the result.

  Raises:
    UserError: naming `path:line` for a line with the wrong number of columns (or that pyarrow cannot
      parse), or the file is missing or unreadable.
  """
  include = list(include_columns or column_names)
  parse_options = pa_csv.ParseOptions(delimiter=delimiter, quote_char='"', double_quote=True,
                                      ignore_empty_lines=True)
  convert_options = pa_csv.ConvertOptions(
      column_types={c: pa.binary() for c in include}, include_columns=include, null_values=[],
      strings_can_be_null=False, quoted_strings_can_be_null=False, check_utf8=False)
  pieces = read_line_chunks(path, chunk_bytes or DEFAULT_CHUNK_BYTES)
  empty = pa.table({c: pa.array([], pa.binary()) for c in include})

  def parse_next() -> Chunk | None:
    piece = next(pieces, None)
    if piece is None:
      return None
    lineno, data, lines = piece
    if skip_first_line and lineno == 1:
      data = data[data.index(b"\n") + 1:]
      lineno, lines = 2, lines - 1
    if len(data) == lines:  # only blank lines (pyarrow refuses an empty input)
      return Chunk(path, lineno, data, empty, lines)
    read_options = pa_csv.ReadOptions(column_names=list(column_names), block_size=len(data) + 1,
                                      use_threads=False)
    try:
      table = pa_csv.read_csv(pa.py_buffer(data), read_options=read_options, parse_options=parse_options,
                              convert_options=convert_options)
    except pa.ArrowInvalid as e:
      _raise_parse_error(path, lineno, data, delimiter, len(column_names), e)
    return Chunk(path, lineno, data, table, lines - table.num_rows)

  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # one worker: chunks are parsed in order
    pending = pool.submit(parse_next)
    while (chunk := pending.result()) is not None:
      pending = pool.submit(parse_next)
      yield chunk


def _raise_parse_error(path: str, lineno: int, data: bytes, delimiter: str, num_cols: int, error: Exception):
  """Finds the line pyarrow rejected (Python's csv module, line by line) and raises a `UserError`."""
  lines = data.split(b"\n")[:-1]
  for i, line in enumerate(lines):
    if not line:
      continue
    if b'"' in line:
      found = len(next(csv.reader(io.StringIO(line.decode("utf-8", "replace")), delimiter=delimiter)))
    else:
      found = line.count(delimiter.encode()) + 1
    if found != num_cols:
      raise UserError(f"{path}:{lineno + i}: expected {num_cols} columns, found {found}")
  message = " ".join(str(error).split())[:200]
  raise UserError(f"{path}:{lineno}-{lineno + len(lines) - 1}: cannot parse these lines ({message})")


def distinct_tokens(chunk: Chunk, column: str) -> tuple[np.ndarray, pa.Array]:
  """(inverse (m,) int32, distinct tokens) of a column: row r holds token `distinct[inverse[r]]`.

  Labels, integers and hours repeat few distinct tokens, so checks and conversions run on those only
  (`pyarrow.compute.dictionary_encode`, distinct tokens in order of first occurrence).
  """
  encoded = pc.dictionary_encode(chunk.table.column(column).combine_chunks())
  return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary
