"""Delimited text files read in chunks of whole records, each chunk parsed by pyarrow's CSV reader (ours).

The file is cut into chunks of whole records (CR bytes removed, a leading UTF-8 byte-order mark dropped,
`.gz` decompressed on the fly), and every chunk goes to `pyarrow.csv.read_csv` with explicit column names
and delimiter, every column typed `pa.binary()` (the exact bytes: nothing becomes null, nothing is
converted), so memory stays bounded for any file size and every row keeps an exact line number for error
messages: a `UserError` names `path:line`.

Quoting: with `quoting=True` a field follows RFC 4180 (`"a,b"`, `""` for a quote, a newline inside quotes
belongs to the value), as in Python's `csv` module; a `"` inside an unquoted field is an ordinary character.
A chunk is cut only at a newline outside quotes (`record_ends`), so the rows never depend on the chunk size.
With `quoting=False` (formats without a quoting convention, e.g. the raw Criteo TSV) `"` is an ordinary
character and every line is one record.

Every record is accounted for: a chunk's rows must be its non-blank records (else a `UserError` names the
line where they part), `Chunk.blank` counts truly blank lines (empty records) only, and a quoted value that
never closes is an error naming the line where it opens.
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

# A record (a line, or lines joined by quoted newlines) longer than this is refused: it is an unbalanced
# quote or not a text table, and reading on would hold the rest of the file in memory.
MAX_RECORD_BYTES = 64 << 20

UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
               (b"\xfe\xff", "UTF-16"))
_NEWLINE, _QUOTE = 10, 34


def strip_bom(head: bytes, path: str) -> bytes:
  """`head` (the first bytes of a file) without a UTF-8 byte-order mark.

  Raises:
    UserError: the file starts with a UTF-16 or UTF-32 byte-order mark (naming it).
  """
  if head.startswith(UTF8_BOM):
    return head[len(UTF8_BOM):]
  for bom, encoding in _OTHER_BOMS:
    if head.startswith(bom):
      raise UserError(f"{path}:1: the file starts with a {encoding} byte-order mark; expected UTF-8 text "
                      "(save it as UTF-8)")
  return head


def open_binary(path: str):
  """The file opened for binary reading (gzip when the name ends in `.gz`).

  Raises:
    UserError: the file does not exist.
  """
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_all(path: str) -> bytes:
  """The whole file (decompressed), CR bytes removed and a UTF-8 byte-order mark dropped.

  Raises:
    UserError: the file is missing or unreadable, or starts with a UTF-16 / UTF-32 byte-order mark.
  """
  with open_binary(path) as f:
    try:
      data = f.read()
    except (OSError, EOFError) as e:
      raise UserError(f"{path}: cannot read ({e})") from None
  return strip_bom(data, path).replace(b"\r", b"")


def first_line(path: str) -> bytes:
  """The file's first line without its line ending (and without a UTF-8 byte-order mark)."""
  with open_binary(path) as f:
    return strip_bom(f.readline(), path).rstrip(b"\r\n")


def record_ends(data: bytes, delimiter: str | None) -> tuple[np.ndarray | None, int]:
  """(positions of the newlines that end records, position of a quote still open at the end or -1).

  `data` must start at a record boundary. The positions are None when every newline ends a record:
  `delimiter` None (no quoting) or no `"` at all. Otherwise a `"` opens a quoted value where a field starts
  (at the start, after the delimiter or after a record's newline), `""` inside is a quote, the next lone `"`
  closes it, and newlines inside quotes belong to the value (RFC 4180, as pyarrow and Python's `csv` parse
  it; a `"` inside an unquoted field is a character). When every other quote opens a field (or follows a
  quote), quotes pair up in order and the state is found without a loop; otherwise each quote is visited.
  """
  if delimiter is None or b'"' not in data:
    return None, -1
  buf = np.frombuffer(data, np.uint8)
  newlines = np.flatnonzero(buf == _NEWLINE)
  quotes = np.flatnonzero(buf == _QUOTE)
  before = buf[np.maximum(quotes - 1, 0)]
  field_start = (quotes == 0) | (before == ord(delimiter)) | (before == _NEWLINE)
  escaped = np.zeros(quotes.size, bool)  # right after another quote: the second of a "" pair
  escaped[1:] = quotes[1:] == quotes[:-1] + 1
  if np.all(field_start[0::2] | escaped[0::2]):
    opens, closes = quotes[0::2], quotes[1::2]
  else:
    opens, closes = _quote_spans(data, quotes.tolist(), ord(delimiter))
  if not opens.size:  # every '"' is inside an unquoted field
    return newlines, -1
  unclosed = int(opens[-1]) if opens.size > closes.size else -1
  closes = np.concatenate([closes, [len(data)] * (opens.size - closes.size)]).astype(np.int64)
  span = np.searchsorted(opens, newlines) - 1  # the last quote opened before each newline
  inside = (span >= 0) & (closes[np.maximum(span, 0)] > newlines)
  return newlines[~inside], unclosed


def _quote_spans(data: bytes, quotes: list, delimiter: int) -> tuple[np.ndarray, np.ndarray]:
  """(opening, closing) quote positions, visiting each quote in turn (see `record_ends`)."""
  opens, closes = [], []
  inside, j = False, 0
  while j < len(quotes):
    q = quotes[j]
    if not inside:
      if q == 0 or data[q - 1] in (delimiter, _NEWLINE):
        opens.append(q)
        inside = True
      j += 1
    elif j + 1 < len(quotes) and quotes[j + 1] == q + 1:  # "" inside quotes
      j += 2
    else:
      closes.append(q)
      inside = False
      j += 1
  return np.array(opens, np.int64), np.array(closes, np.int64)


def _line_at(data: bytes, lineno: int, pos: int) -> int:
  return lineno + data.count(b"\n", 0, pos)


@dataclasses.dataclass(frozen=True)
class Piece:
  """Whole records of a file: `data` ends in a record's newline; `ends` are the records' newlines."""

  lineno: int  # line number of the first line
  data: bytes  # CRs removed
  ends: np.ndarray | None  # positions in `data` of the newlines that end records (None: every newline)
  lines: int  # newlines in `data`


def read_record_chunks(path: str, chunk_bytes: int, delimiter: str | None = None) -> Iterator[Piece]:
  """Yields the file as consecutive pieces of whole records of about `chunk_bytes` each.

  Args:
    path: the file (`.gz` is decompressed).
    chunk_bytes: bytes read per step.
    delimiter: the field delimiter when quoted values may hold newlines (see `record_ends`); None: every
      line is a record.

  Raises:
    UserError: the file is missing or cannot be read (e.g. a truncated gzip stream), starts with a UTF-16
      or UTF-32 byte-order mark, holds a quoted value that is never closed, or a record longer than
      `MAX_RECORD_BYTES`.
  """
  with open_binary(path) as f:
    rest, lineno, head = b"", 1, True

    def read(size):
      try:
        return f.read(size)
      except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None

    while True:
      block = read(chunk_bytes)
      if head:  # the byte-order mark may straddle tiny reads
        while len(block) < 4 and (more := read(4)):  # 4: the longest byte-order mark (UTF-32)
          block += more
        block, head = strip_bom(block, path), False
      if not block:
        break
      block = rest + block.replace(b"\r", b"")
      ends, _ = record_ends(block, delimiter)
      cut = block.rfind(b"\n") + 1 if ends is None else int(ends[-1]) + 1 if ends.size else 0
      if not cut:
        rest = block
        if len(rest) > MAX_RECORD_BYTES:
          _raise_long_record(path, lineno, rest, delimiter)
        continue
      piece = Piece(lineno, block[:cut], ends, block.count(b"\n", 0, cut))
      rest = block[cut:]
      yield piece
      lineno += piece.lines
    if rest:
      data = rest + b"\n"
      ends, unclosed = record_ends(data, delimiter)
      if unclosed >= 0:
        raise UserError(f"{path}:{_line_at(data, lineno, unclosed)}: a quoted value opens here and is not "
                        "closed before the end of the file (an unbalanced '\"'?)")
      yield Piece(lineno, data, ends, data.count(b"\n"))


def _raise_long_record(path: str, lineno: int, rest: bytes, delimiter: str | None):
  _, unclosed = record_ends(rest, delimiter)
  if unclosed >= 0:
    raise UserError(f"{path}:{_line_at(rest, lineno, unclosed)}: a quoted value opens here and is not "
                    f"closed within {MAX_RECORD_BYTES >> 20} MiB (an unbalanced '\"'?)")
  raise UserError(f"{path}:{lineno}: a line longer than {MAX_RECORD_BYTES >> 20} MiB; not a text table?")


def read_line_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[int, bytes, int]]:
  """Yields (number of the chunk's first line, bytes of whole lines ending in b'\\n', number of lines).

  CR bytes and a leading UTF-8 byte-order mark are removed.

  Raises:
    UserError: as `read_record_chunks`.
  """
  for piece in read_record_chunks(path, chunk_bytes):
    yield piece.lineno, piece.data, piece.lines


@dataclasses.dataclass
class Chunk:
  """One chunk of a delimited file: its non-blank records as an arrow table, and where they came from."""

  path: str
  first_line: int  # line number of the chunk's first line (blank or not)
  data: bytes  # the chunk's whole records, the last ending in b'\n', CRs removed
  table: pa.Table  # one row per non-blank record
  blank: int  # blank lines (empty records) skipped in this chunk
  ends: np.ndarray | None = None  # positions of the records' newlines in `data` (None: every newline)

  @property
  def num_rows(self) -> int:
    return self.table.num_rows

  @property
  def quoted_newlines(self) -> int:
    """Newlines inside quoted values (lines that continue a record)."""
    return 0 if self.ends is None else self.data.count(b"\n") - int(self.ends.size)

  def line(self, row: int) -> int:
    """The file line number where the chunk's row `row` starts."""
    if not self.blank and not self.quoted_newlines:
      return self.first_line + int(row)
    return int(self.record_lines()[int(row)])

  def record_lines(self) -> np.ndarray:
    """(rows,) line numbers where the chunk's non-blank records start."""
    return _record_lines(self.data, self.first_line, self.ends)[0]

  def fail(self, row: int, column: str, what: str):
    """Raises `UserError('path:line: what, got TOKEN')` for the token at (row, column)."""
    token = self.table.column(column)[int(row)].as_py()
    if isinstance(token, bytes):
      token = token.decode("utf-8", "replace")
    raise UserError(f"{self.path}:{self.line(row)}: {what}, got {token!r}")


def _blank_lines(data: bytes) -> int:
  """Empty lines of `data` (whole lines, each ending in a newline)."""
  if not data.startswith(b"\n") and b"\n\n" not in data:
    return 0
  newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == _NEWLINE)
  return int(np.count_nonzero(np.diff(newlines) == 1)) + int(data.startswith(b"\n"))


def _record_lines(data: bytes, lineno: int, ends: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """(line numbers where the non-blank records start, their start offsets in `data`)."""
  buf = np.frombuffer(data, np.uint8)
  newlines = np.flatnonzero(buf == _NEWLINE)
  ends = newlines if ends is None else ends
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
  starts = starts[ends > starts]
  return lineno + np.searchsorted(newlines, starts), starts


def read_csv_chunks(path: str, *, delimiter: str, column_names: Sequence[str],
                    include_columns: Sequence[str] | None = None, skip_first_line: bool = False,
                    chunk_bytes: int = 0, quoting: bool = True) -> Iterator[Chunk]:
  """Yields the file's chunks parsed by pyarrow, every column as `pa.binary()` (the exact bytes).

  The next chunk is read and parsed in a background thread while the caller works on the current one
  (pyarrow releases the GIL while parsing).

  Args:
    path: the file (`.gz` is decompressed).
    delimiter: one character.
    column_names: every column of the file, in order; a record with another number of columns is an error.
    include_columns: the columns to return (default all).
    skip_first_line: the first record is a header (already checked by the caller).
    chunk_bytes: bytes per chunk (0: `DEFAULT_CHUNK_BYTES`); does not change the result.
    quoting: RFC 4180 quoted values (see the module docstring); False: `"` is an ordinary character.

  Raises:
    UserError: naming `path:line` for a record with the wrong number of columns (or that pyarrow cannot
      parse, or whose rows differ from the records), a quoted value never closed, or the file is missing
      or unreadable.
  """
  include = list(include_columns or column_names)
  parse_options = pa_csv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                      double_quote=quoting, newlines_in_values=quoting,
                                      ignore_empty_lines=True)
  convert_options = pa_csv.ConvertOptions(
      column_types={c: pa.binary() for c in include}, include_columns=include, null_values=[],
      strings_can_be_null=False, quoted_strings_can_be_null=False, check_utf8=False)
  pieces = read_record_chunks(path, chunk_bytes or DEFAULT_CHUNK_BYTES, delimiter if quoting else None)
  empty = pa.table({c: pa.array([], pa.binary()) for c in include})

  def parse(data: bytes) -> pa.Table:
    read_options = pa_csv.ReadOptions(column_names=list(column_names), block_size=len(data) + 1,
                                      use_threads=False)
    return pa_csv.read_csv(pa.py_buffer(data), read_options=read_options, parse_options=parse_options,
                           convert_options=convert_options)

  def parse_next() -> Chunk | None:
    piece = next(pieces, None)
    if piece is None:
      return None
    lineno, data, ends, lines = piece.lineno, piece.data, piece.ends, piece.lines
    if skip_first_line and lineno == 1:
      cut = data.index(b"\n") + 1 if ends is None else int(ends[0]) + 1
      header_lines = data.count(b"\n", 0, cut)
      lineno, data, lines = lineno + header_lines, data[cut:], lines - header_lines
      ends = None if ends is None else ends[1:] - cut
    if ends is None:  # every line a record: blank lines are counted only if pyarrow's rows fall short
      records = None if len(data) > lines else 0
    else:
      starts = np.concatenate([[0], ends[:-1] + 1]) if ends.size else ends
      records = int(np.count_nonzero(ends > starts))
    if records == 0:  # only blank lines (pyarrow refuses an empty input)
      return Chunk(path, lineno, data, empty, lines if ends is None else int(ends.size), ends)
    try:
      table = parse(data)
    except pa.ArrowInvalid as e:
      _raise_parse_error(path, lineno, data, ends, delimiter, quoting, len(column_names), e)
    if records is None:
      records = lines - (0 if table.num_rows == lines else _blank_lines(data))
    blank = (lines if ends is None else int(ends.size)) - records
    if table.num_rows != records:
      _raise_row_mismatch(path, lineno, data, ends, parse)
    return Chunk(path, lineno, data, table, blank, ends)

  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # one worker: chunks are parsed in order
    pending = pool.submit(parse_next)
    while (chunk := pending.result()) is not None:
      pending = pool.submit(parse_next)
      yield chunk


def _raise_parse_error(path: str, lineno: int, data: bytes, ends: np.ndarray, delimiter: str, quoting: bool,
                       num_cols: int, error: Exception):
  """Finds the record pyarrow rejected (record by record) and raises a `UserError` naming its first line."""
  lines, starts = _record_lines(data, lineno, ends)
  stops = np.concatenate([starts[1:], [len(data)]])
  for line, start, stop in zip(lines.tolist(), starts.tolist(), stops.tolist()):
    record = data[start:stop].rstrip(b"\n")
    if not record:
      continue
    if quoting and b'"' in record:
      text = record.decode("utf-8", "replace")
      found = len(next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), []))
    else:
      found = record.count(delimiter.encode()) + 1
    if found != num_cols:
      raise UserError(f"{path}:{line}: expected {num_cols} columns, found {found}")
  message = " ".join(str(error).split())[:200]
  last = lineno + data.count(b"\n") - 1
  raise UserError(f"{path}:{lineno}-{last}: cannot parse these lines ({message})")


def _raise_row_mismatch(path: str, lineno: int, data: bytes, ends: np.ndarray, parse):
  """Raises a `UserError` naming the first record where pyarrow's rows and the records part.

  Bisects on prefixes of whole records: the first prefix whose row count differs from its non-blank
  records (or that does not parse alone) ends in the record to blame.
  """
  lines, starts = _record_lines(data, lineno, ends)
  stops = np.concatenate([starts[1:], [len(data)]])

  def parts(k: int) -> bool:  # the first k + 1 records do not give k + 1 rows
    try:
      return parse(data[:stops[k]]).num_rows != k + 1
    except pa.ArrowInvalid:
      return True

  lo, hi = 0, lines.size - 1  # the prefix through record hi parts; find the smallest such prefix
  while lo < hi:
    mid = (lo + hi) // 2
    if parts(mid):
      hi = mid
    else:
      lo = mid + 1
  raise UserError(f"{path}:{lines[lo]}: the CSV parser reads this record as another number of rows than "
                  "one; check its quotes")


def distinct_tokens(chunk: Chunk, column: str) -> tuple[np.ndarray, pa.Array]:
  """(inverse (m,) int32, distinct tokens) of a column: row r holds token `distinct[inverse[r]]`.

  Labels, integers and hours repeat few distinct tokens, so checks and conversions run on those only
  (`pyarrow.compute.dictionary_encode`, distinct tokens in order of first occurrence).
  """
  encoded = pc.dictionary_encode(chunk.table.column(column).combine_chunks())
  return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary
