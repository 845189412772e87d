"""Turn an uploaded CSV/TSV object, arriving as S3 byte chunks, into records.

Import files can be many gigabytes, so nothing here holds the whole file:
bytes are inflated (gzip) and decoded (UTF-8) incrementally in bounded
pieces, and text is handed to the C ``csv`` reader one segment at a time.
A segment ends at the last line break of the text received so far; the
reader itself says whether the segment's last record is complete, so a quoted
field that spans lines (or chunks) is never cut, and the incomplete tail is
carried into the next segment. Memory therefore grows with the longest
record, not with the file, and a field that keeps growing is refused as soon
as it passes ``max_field_chars``.

Per-character work stays inside C (``csv``, ``zlib``, ``str.rfind``), and
records leave in lists of up to ``batch_rows`` so the per-row cost of the
async machinery is paid once per batch rather than once per row.

``csv.field_size_limit`` is process-wide. Each ``CsvStream`` raises it to at
least its own ``max_field_chars`` (never lowers it), and enforces its own
limit itself whenever the process-wide one is higher.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

DEFAULT_MAX_FIELD_CHARS = 1_048_576
DEFAULT_BATCH_ROWS = 5000
DEFAULT_RATIO_CHECK_BYTES = 16 * 1024 * 1024

_GZIP_MAGIC = b"\x1f\x8b"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Upper bound on the bytes one inflate step may produce: a highly compressed
# chunk must not turn into hundreds of megabytes at once.
_PIECE_BYTES = 1 << 20
# Smallest text segment worth starting a csv reader for; tiny network chunks
# are pooled up to this size.
_MIN_SEGMENT_CHARS = 256 * 1024
_END_OF_DATA = "unexpected end of data"
_FIELD_LIMIT = "field larger than field limit"


class FileProblem(Exception):
    """A problem with the whole file; str(exc) is a user-facing sentence."""


class Record(NamedTuple):
    """One CSV record (a named tuple: the parser makes millions, and a tuple is the cheapest to make).

    ``row`` counts records, not lines, like a spreadsheet showing the file: the
    header is row 1 and the first data record is row 2. Skipped blank lines do
    not count, and a record whose quoted field spans lines is still one row.
    ``line`` is the physical line (1-based, blank lines included) where the
    record starts, for pointing at the spot in a text editor.
    """

    row: int
    line: int
    fields: list[str]


def delimiter_for(key: str) -> str:
    """TAB for ``.tsv``/``.tab`` keys (optionally gzipped), comma otherwise."""
    name = key.lower().removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".tab")) else ","


class CsvStream:
    """Records of one CSV/TSV object: ``await header()``, then ``async for batch in stream``.

    Iterate once; every failure that concerns the file itself is a ``FileProblem``.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        key: str,
        max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        max_inflated_bytes: int | None = None,
        max_compression_ratio: int | None = None,
        ratio_check_bytes: int = DEFAULT_RATIO_CHECK_BYTES,
    ) -> None:
        if max_field_chars < 1:
            raise ValueError("max_field_chars must be positive")
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        if csv.field_size_limit() < max_field_chars:
            csv.field_size_limit(max_field_chars)
        self._chunks = chunks
        self._batch_rows = batch_rows
        self._decoder = _Decoder(
            gzipped=key.lower().endswith(".gz"),
            max_bytes=max_inflated_bytes,
            max_ratio=max_compression_ratio,
            ratio_check_bytes=ratio_check_bytes,
        )
        self._splitter = _Splitter(delimiter_for(key), max_field_chars)
        self._source = self._batches()
        self._header: Record | None = None
        self._leftover: list[Record] = []

    async def header(self) -> Record:
        """The first record; raises ``FileProblem`` if there is none."""
        if self._header is None:
            try:
                first = await anext(self._source)
            except StopAsyncIteration:
                raise FileProblem("the file is empty") from None
            self._header = first[0]
            self._leftover = first[1:]
        return self._header

    def __aiter__(self) -> AsyncIterator[list[Record]]:
        return self._data()

    async def _data(self) -> AsyncIterator[list[Record]]:
        await self.header()
        if self._leftover:
            batch, self._leftover = self._leftover, []
            yield batch
        async for batch in self._source:
            yield batch

    async def _batches(self) -> AsyncIterator[list[Record]]:
        size = self._batch_rows
        ready: list[Record] = []
        async for chunk in self._chunks:
            for text in self._decoder.feed(chunk):
                ready += self._splitter.feed(text)
                if len(ready) >= size:
                    full = len(ready) - len(ready) % size
                    for start in range(0, full, size):
                        yield ready[start : start + size]
                    del ready[:full]
                else:
                    # One small compressed chunk can inflate to gigabytes of text
                    # with no record in it (blank lines): hand the loop back after
                    # every bounded piece, so a cancellation is noticed at once.
                    await asyncio.sleep(0)
        for text in self._decoder.finish():
            ready += self._splitter.feed(text)
        ready += self._splitter.finish()
        for start in range(0, len(ready), size):
            yield ready[start : start + size]


class _Decoder:
    """Raw object bytes in, UTF-8 text out, in pieces of bounded size."""

    def __init__(
        self,
        *,
        gzipped: bool,
        max_bytes: int | None = None,
        max_ratio: int | None = None,
        ratio_check_bytes: int = DEFAULT_RATIO_CHECK_BYTES,
    ) -> None:
        self._gzipped = gzipped
        self._max_bytes = max_bytes
        self._max_ratio = max_ratio
        self._ratio_check_bytes = ratio_check_bytes
        self._compressed = 0  # object bytes taken in, for the compression ratio
        # Held back until two bytes are known, so the gzip magic can be seen
        # even when the first chunks are a single byte each.
        self._head: bytes | None = b""
        self._inflater: zlib._Decompress | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._bom_checked = False
        self._offset = 0  # uncompressed bytes decoded so far, for error messages
        self._newlines = 0  # line breaks decoded so far, for error messages

    def feed(self, chunk: bytes) -> Iterator[str]:
        if self._head is not None:
            self._head += chunk
            if len(self._head) < len(_GZIP_MAGIC):
                return
            chunk, self._head = self._head, None
            self._gzipped = self._gzipped or chunk.startswith(_GZIP_MAGIC)
        yield from self._raw(chunk)

    def finish(self) -> Iterator[str]:
        if self._head is not None:
            chunk, self._head = self._head, None
            yield from self._raw(chunk)
        if self._inflater is not None:
            raise FileProblem("the gzip data is truncated or corrupt")
        try:
            text = self._utf8.decode(b"", True)
        except UnicodeDecodeError as exc:
            raise self._not_utf8(exc, 0) from None
        yield from self._text(text)

    def _raw(self, chunk: bytes) -> Iterator[str]:
        self._compressed += len(chunk)
        if not self._gzipped:
            self._check_size(len(chunk))
            yield from self._decode(chunk)
            return
        for data in self._inflate(chunk):
            self._check_size(len(data))
            yield from self._decode(data)

    def _check_size(self, more: int) -> None:
        inflated = self._offset + more
        if self._max_bytes is not None and inflated > self._max_bytes:
            what = "inflates to" if self._gzipped else "has"
            raise FileProblem(f"the file {what} more than {self._max_bytes} bytes of text, the most a file may have")
        if (
            self._gzipped
            and self._max_ratio is not None
            and inflated > self._ratio_check_bytes
            and inflated > self._max_ratio * self._compressed
        ):
            raise FileProblem(
                f"the file inflates to more than {self._max_ratio} times its compressed size"
                f" ({inflated} bytes from the first {self._compressed}); such a file is refused"
                " as a decompression bomb"
            )

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                if self._inflater is None:
                    # gzip tools accept zero padding after the last member.
                    data = data.lstrip(b"\0")
                    if not data:
                        return
                    self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                inflater = self._inflater
                while True:
                    out = inflater.decompress(data, _PIECE_BYTES)
                    if out:
                        yield out
                    data = inflater.unconsumed_tail
                    # A full piece may leave output pending inside zlib even
                    # when all input is consumed; ask again until it is drained.
                    if not data and len(out) < _PIECE_BYTES:
                        break
                if inflater.eof:
                    # Concatenated members (cat a.gz b.gz) form one valid file.
                    data = inflater.unused_data
                    self._inflater = None
        except zlib.error as exc:
            raise FileProblem("the file is not valid gzip data (it is corrupt or not really compressed)") from exc

    def _decode(self, data: bytes) -> Iterator[str]:
        if not data:
            return
        if self._offset == 0 and data[:2] in _UTF16_BOMS:
            raise FileProblem("the file is UTF-16 text, not UTF-8; save it as CSV UTF-8 and upload it again")
        if b"\0" in data:
            raise FileProblem("the file looks like a binary file, not CSV text")
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise self._not_utf8(exc, len(data)) from None
        self._offset += len(data)
        yield from self._text(text)

    def _text(self, text: str) -> Iterator[str]:
        if not text:
            return
        if not self._bom_checked:
            self._bom_checked = True
            text = text.removeprefix("\ufeff")
        self._newlines += text.count("\n")
        if text:
            yield text

    def _not_utf8(self, exc: UnicodeDecodeError, fed: int) -> FileProblem:
        held = len(exc.object) - fed  # bytes of an unfinished character kept from the previous piece
        offset = max(0, self._offset - held + exc.start)
        line = self._newlines + exc.object.count(b"\n", 0, exc.start) + 1
        return FileProblem(
            f"the file is not UTF-8 text: byte {offset} (line {line}) is not valid UTF-8; "
            "save it as CSV UTF-8 and upload it again"
        )


class _Splitter:
    """Text in, complete records out; keeps the unfinished last record for later."""

    def __init__(self, delimiter: str, max_field_chars: int) -> None:
        self._delimiter = delimiter
        self._max = max_field_chars
        self._carry = ""  # text from the start of an unfinished record
        self._parts: list[str] = []
        self._parts_chars = 0
        self._need = self._next_need(0)
        self._lines = 0  # physical lines before the carry
        self._rows = 0  # records produced so far

    def feed(self, text: str) -> list[Record]:
        self._parts.append(text)
        self._parts_chars += len(text)
        if self._parts_chars < self._need:
            return []
        return self._segment(final=False)

    def finish(self) -> list[Record]:
        return self._segment(final=True)

    def _segment(self, *, final: bool) -> list[Record]:
        text = self._carry + "".join(self._parts)
        self._parts = []
        self._parts_chars = 0
        if final:
            cut = len(text)
        else:
            cut = text.rfind("\n") + 1
            # A lone CR (old Mac files) ends a line too, but a CR as the very
            # last character may be the first half of a CRLF split by a chunk.
            cut = max(cut, text.rfind("\r", cut, len(text) - 1) + 1)
        records = self._read(text[:cut], text[cut:], final=final)
        open_chars = self._open_field_chars()
        self._need = self._next_need(open_chars)
        return records

    def _read(self, complete: str, rest: str, *, final: bool) -> list[Record]:
        records: list[Record] = []
        if not complete:
            self._carry = rest
            return records
        append = records.append
        source = io.StringIO(complete, newline="")
        reader = csv.reader(source, delimiter=self._delimiter, skipinitialspace=True, strict=True)
        # The C reader enforces the process-wide limit; only when that is
        # higher than ours, and a field could be longer, check each record.
        check = len(complete) > self._max and csv.field_size_limit() > self._max
        rows = self._rows
        first_line = self._lines + 1
        consumed = 0
        try:
            for fields in reader:
                # Blank and whitespace-only lines come back as [] and [''].
                if len(fields) > 1 or (fields and fields[0]):
                    rows += 1
                    if check and max(map(len, fields)) > self._max:
                        spans_lines = reader.line_num - consumed > 1
                        raise self._too_long(rows, first_line + consumed if spans_lines else None)
                    append(Record(rows, first_line + consumed, fields))
                consumed = reader.line_num
        except csv.Error as exc:
            self._rows = rows
            message = str(exc)
            if message == _END_OF_DATA and not final:
                # The last record is still inside a quoted field: keep it, from
                # its first line, for the next segment.
                source.seek(0)
                for _ in range(consumed):
                    source.readline()
                self._carry = complete[source.tell() :] + rest
                self._lines += consumed
                return records
            spans_lines = reader.line_num - consumed > 1
            raise self._malformed(message, rows + 1, first_line + consumed, spans_lines=spans_lines) from None
        self._rows = rows
        self._lines += reader.line_num
        self._carry = rest
        return records

    def _open_field_chars(self) -> int:
        """How long the unfinished record's last field may already be.

        Cheap unless the carry itself is longer than the field limit; then it is
        parsed (leniently, as the rest of it has not arrived) to find out.
        """
        if len(self._carry) <= self._max:
            return len(self._carry)
        reader = csv.reader(
            io.StringIO(self._carry, newline=""), delimiter=self._delimiter, skipinitialspace=True, strict=False
        )
        longest = last = 0
        try:
            for fields in reader:
                if fields:
                    longest = max(longest, *map(len, fields))
                    last = len(fields[-1])
        except csv.Error as exc:
            if not str(exc).startswith(_FIELD_LIMIT):
                raise self._malformed(str(exc), self._rows + 1, self._lines + 1) from None
            longest = self._max + 1
        if longest <= self._max:
            return last
        spans_lines = "\n" in self._carry or "\r" in self._carry
        raise self._too_long(self._rows + 1, self._lines + 1 if spans_lines else None)

    def _next_need(self, open_chars: int) -> int:
        # Segments grow with the carry so re-reading it stays linear overall,
        # but never past the point where the open field could exceed the limit.
        pooled = max(_MIN_SEGMENT_CHARS, len(self._carry))
        return max(1, min(pooled, self._max + 1 - open_chars))

    def _too_long(self, row: int, multiline_from: int | None = None) -> FileProblem:
        message = f"a field on row {row} is longer than {self._max} characters"
        if multiline_from is not None:
            # A field running over many lines is usually a quote never closed.
            message += (
                f"; if it should not be, check for a missing closing quote (the row starts on line {multiline_from})"
            )
        return FileProblem(message)

    def _malformed(self, message: str, row: int, line: int, *, spans_lines: bool = False) -> FileProblem:
        if message.startswith(_FIELD_LIMIT):
            return self._too_long(row, line if spans_lines else None)
        if message == _END_OF_DATA:
            return FileProblem(
                f"row {row} (starting on line {line}) has a quoted field that is never closed; "
                "check for a missing closing quote"
            )
        if "expected after" in message:
            return FileProblem(
                f"row {row} (starting on line {line}) has text after the closing quote of a quoted field; "
                'a quote inside a quoted field must be doubled ("")'
            )
        return FileProblem(f"row {row} (starting on line {line}) could not be read: {message}")
