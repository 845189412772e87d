"""Reading uploaded CSV/TSV objects: encodings, compression, quoting and streaming."""

from __future__ import annotations

import csv
import gzip
import tracemalloc
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing

import pytest

from services.imports.parsing import CsvStream, FileProblem, Record, delimiter_for

CHUNK_SIZES = [1, 2, 3, 7, 64]
MIB = 1 << 20


async def _chunks(data: bytes, size: int) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _lazy(pieces: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    for piece in pieces:
        yield piece


async def _drain(stream: CsvStream) -> list[Record]:
    records = [await stream.header()]
    async for batch in stream:
        records.extend(batch)
    return records


async def _read(data: bytes, *, key: str = "upload.csv", chunk: int = 64 * 1024, **options: int) -> list[Record]:
    async with aclosing(_chunks(data, chunk)) as source:
        return await _drain(CsvStream(source, key=key, **options))


def _fields(records: list[Record]) -> list[list[str]]:
    return [record.fields for record in records]


async def test_spaces_before_quoted_fields_and_doubled_quotes_parse_as_three_fields() -> None:
    records = await _read(b'"CustomerId1", "John Doe", "Height: 6\'1"""\r\n')
    assert _fields(records) == [["CustomerId1", "John Doe", "Height: 6'1\""]]


async def test_doubled_quotes_inside_a_quoted_field_are_one_quote() -> None:
    records = await _read(b'id,note\n1,"she said ""hi"", then left"\n2,""""\n')
    assert _fields(records)[1:] == [["1", 'she said "hi", then left'], ["2", '"']]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
async def test_lf_and_crlf_line_endings_give_the_same_records(ending: bytes) -> None:
    data = ending.join([b"id,name", b"1,Ann", b"2,Bob"]) + ending
    records = await _read(data)
    assert _fields(records) == [["id", "name"], ["1", "Ann"], ["2", "Bob"]]
    assert [record.line for record in records] == [1, 2, 3]


async def test_mixed_line_endings_in_one_file() -> None:
    records = await _read(b"id,name\r\n1,Ann\n2,Bob\r\n3,Cy")
    assert _fields(records) == [["id", "name"], ["1", "Ann"], ["2", "Bob"], ["3", "Cy"]]


async def test_old_mac_line_endings_are_lines_too() -> None:
    records = await _read(b"id,name\r1,Ann\r2,Bob\r", chunk=3)
    assert _fields(records) == [["id", "name"], ["1", "Ann"], ["2", "Bob"]]


async def test_a_byte_order_mark_is_not_part_of_the_first_column_name() -> None:
    records = await _read(b"\xef\xbb\xbfid,name\n1,Ann\n", chunk=1)
    assert records[0].fields == ["id", "name"]


async def test_quoted_newlines_and_delimiters_keep_rows_and_lines_apart() -> None:
    data = b'id,note\r\n1,"first line\r\nsecond line"\r\n\r\n2,"a, b"\r\n3,"x\n\ny"\n4,plain\n'
    records = await _read(data)
    assert records == [
        Record(row=1, line=1, fields=["id", "note"]),
        Record(row=2, line=2, fields=["1", "first line\r\nsecond line"]),
        Record(row=3, line=5, fields=["2", "a, b"]),
        Record(row=4, line=6, fields=["3", "x\n\ny"]),
        Record(row=5, line=9, fields=["4", "plain"]),
    ]


async def test_blank_and_whitespace_only_lines_are_skipped_and_not_counted_as_rows() -> None:
    records = await _read(b"\n\nid,name\n\n1,Ann\n   \n\r\n2,Bob\n\n\n")
    assert [(record.row, record.line, record.fields) for record in records] == [
        (1, 3, ["id", "name"]),
        (2, 5, ["1", "Ann"]),
        (3, 8, ["2", "Bob"]),
    ]


@pytest.mark.parametrize(
    ("key", "delimiter"),
    [
        ("data.csv", ","),
        ("data.tsv", "\t"),
        ("data.TSV", "\t"),
        ("data.tab", "\t"),
        ("uploads/2024/data.tsv.gz", "\t"),
        ("data.Tab.GZ", "\t"),
        ("data.csv.gz", ","),
        ("data.txt", ","),
        ("tsv", ","),
        ("data.tsv.zip", ","),
    ],
)
def test_delimiter_follows_the_file_name(key: str, delimiter: str) -> None:
    assert delimiter_for(key) == delimiter


@pytest.mark.parametrize("key", ["people.tsv", "people.tab", "people.TSV.GZ"])
async def test_tab_separated_files(key: str) -> None:
    data = b'id\tname\tnote\n1\tAnn, Jr.\t"tab\there"\n'
    if key.lower().endswith(".gz"):
        data = gzip.compress(data)
    records = await _read(data, key=key, chunk=5)
    assert _fields(records) == [["id", "name", "note"], ["1", "Ann, Jr.", "tab\there"]]


async def test_commas_do_not_split_a_tsv_and_tabs_do_not_split_a_csv() -> None:
    assert _fields(await _read(b"a,b\tc\n", key="x.csv")) == [["a", "b\tc"]]
    assert _fields(await _read(b"a,b\tc\n", key="x.tsv")) == [["a,b", "c"]]


PLAIN = 'id,name,city\r\n1,Zoë,東京\r\n2,"Ann, ""the"" first",Z\r\n'.encode()


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_gzip_is_read_by_suffix(chunk: int) -> None:
    assert await _read(gzip.compress(PLAIN), key="people.csv.gz", chunk=chunk) == await _read(PLAIN)


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_gzip_is_recognised_by_its_magic_bytes_whatever_the_name(chunk: int) -> None:
    assert await _read(gzip.compress(PLAIN), key="people.csv", chunk=chunk) == await _read(PLAIN)


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_concatenated_gzip_members_are_one_file(chunk: int) -> None:
    first, second = PLAIN[:20], PLAIN[20:]  # splits a record and a multi-byte character
    data = gzip.compress(first) + gzip.compress(second)
    assert await _read(data, key="people.csv.gz", chunk=chunk) == await _read(PLAIN)


async def test_a_large_compressed_file_streams() -> None:
    rows = b"".join(b"%d,name %d,%s\n" % (i, i, b"x" * 50) for i in range(100_000))
    records = await _read(gzip.compress(b"id,name,pad\n" + rows, compresslevel=1), key="a.csv.gz", chunk=MIB)
    assert len(records) == 100_001
    assert records[-1] == Record(row=100_001, line=100_001, fields=["99999", "name 99999", "x" * 50])


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"id,name\n1,Ann\n", "people.csv.gz"),
        (gzip.compress(PLAIN)[:-6], "people.csv.gz"),
        (gzip.compress(PLAIN) + b"garbage", "people.csv.gz"),
        (gzip.compress(PLAIN)[:-8] + b"\0\0\0\0" + gzip.compress(PLAIN)[-4:], "people.csv"),
    ],
    ids=["not-gzip", "truncated", "trailing-garbage", "bad-checksum"],
)
async def test_broken_gzip_is_a_file_problem(data: bytes, key: str) -> None:
    with pytest.raises(FileProblem, match="gzip"):
        await _read(data, key=key, chunk=7)


SAMPLE = (
    '\ufeffid,name,note\r\n1,Zoë,"Grüße aus 東京"\r\n\r\n2,"Ann ""A"" Lee","multi\r\nline, 東京"\n3,Łódź,x\r\n'.encode()
)
SAMPLE_RECORDS = [
    Record(row=1, line=1, fields=["id", "name", "note"]),
    Record(row=2, line=2, fields=["1", "Zoë", "Grüße aus 東京"]),
    Record(row=3, line=4, fields=["2", 'Ann "A" Lee', "multi\r\nline, 東京"]),
    Record(row=4, line=6, fields=["3", "Łódź", "x"]),
]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_every_chunking_gives_the_same_records(chunk: int) -> None:
    # Small chunks split multi-byte characters, CRLF pairs, the BOM and quoted fields.
    assert await _read(SAMPLE, chunk=chunk) == SAMPLE_RECORDS


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_records_cut_at_any_point_between_reads_come_out_whole(chunk: int) -> None:
    # A tiny field limit makes the reader hand text to csv every few characters,
    # so reads end inside quoted fields, between CR and LF, and mid-character.
    assert await _read(SAMPLE, chunk=chunk, max_field_chars=20) == SAMPLE_RECORDS


@pytest.mark.parametrize("chunk", range(1, 24))
async def test_line_numbers_survive_a_read_ending_inside_a_multiline_record(chunk: int) -> None:
    data = b'id,note\n1,a\n2,"x\n\ny"\n3,b\n\n4,"c\r\nd"\r\n5,e\n'
    assert await _read(data, chunk=chunk, max_field_chars=5) == [
        Record(row=1, line=1, fields=["id", "note"]),
        Record(row=2, line=2, fields=["1", "a"]),
        Record(row=3, line=3, fields=["2", "x\n\ny"]),
        Record(row=4, line=6, fields=["3", "b"]),
        Record(row=5, line=8, fields=["4", "c\r\nd"]),
        Record(row=6, line=10, fields=["5", "e"]),
    ]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_every_chunking_of_a_gzipped_file_gives_the_same_records(chunk: int) -> None:
    assert await _read(gzip.compress(SAMPLE), key="sample.csv.gz", chunk=chunk) == SAMPLE_RECORDS


@pytest.mark.parametrize(
    "data",
    [b"", b"\xef\xbb\xbf", b"\n\n", b"\xef\xbb\xbf\r\n  \r\n\n", gzip.compress(b"")],
    ids=["zero-bytes", "bom-only", "newlines", "bom-and-blank-lines", "empty-gzip"],
)
@pytest.mark.parametrize("chunk", [1, 64])
async def test_empty_file(data: bytes, chunk: int) -> None:
    with pytest.raises(FileProblem, match=r"^the file is empty$"):
        await _read(data, chunk=chunk)


@pytest.mark.parametrize("chunk", [1, 64])
async def test_latin1_text_is_refused_as_not_utf8_with_its_line(chunk: int) -> None:
    data = "id,name\n1,Ann\n2,Zoë\n".encode("latin-1")
    with pytest.raises(FileProblem, match=r"not UTF-8.*line 3") as raised:
        await _read(data, chunk=chunk)
    assert "byte 18" in str(raised.value)


async def test_utf16_is_refused_as_not_utf8() -> None:
    with pytest.raises(FileProblem, match="UTF-8"):
        await _read("id,name\n1,Ann\n".encode("utf-16"))


async def test_invalid_utf8_start_bytes_are_refused() -> None:
    with pytest.raises(FileProblem, match="UTF-8"):
        await _read(b"\xff\xfeid,name\n")


async def test_a_character_cut_off_at_the_end_of_the_file_is_not_utf8() -> None:
    with pytest.raises(FileProblem, match="UTF-8"):
        await _read("id\n東".encode()[:-1], chunk=1)


@pytest.mark.parametrize("key", ["data.csv", "data.csv.gz"])
async def test_a_nul_byte_means_a_binary_file(key: str) -> None:
    data = b"id,name\n1,Ann\n2,B\x00b\n"
    if key.endswith(".gz"):
        data = gzip.compress(data)
    with pytest.raises(FileProblem, match="looks like a binary file, not CSV text"):
        await _read(data, key=key, chunk=3)


@pytest.mark.parametrize("chunk", [1, 64])
async def test_a_quote_never_closed_names_the_row_and_line_it_starts_on(chunk: int) -> None:
    data = b'id,note\n1,fine\n\n2,"never closed\n3,x\n4,y\n'
    with pytest.raises(FileProblem, match=r"row 3 \(starting on line 4\).*never closed"):
        await _read(data, chunk=chunk)


async def test_text_after_a_closing_quote_is_a_file_problem_naming_the_row() -> None:
    with pytest.raises(FileProblem, match=r"row 2 \(starting on line 2\).*closing quote"):
        await _read(b'id,note\n1,"quoted"tail\n')


async def test_a_quote_inside_an_unquoted_field_is_kept_as_text() -> None:
    records = await _read(b'id,size\n1,12" pizza\n2,6\'1"\n', chunk=3)
    assert _fields(records)[1:] == [["1", '12" pizza'], ["2", "6'1\""]]


async def test_the_field_limit_is_this_streams_own() -> None:
    ok = await _read(b"id,note\n1," + b"x" * 10 + b"\n", max_field_chars=10)
    assert ok[1].fields == ["1", "x" * 10]
    with pytest.raises(FileProblem, match=r"^a field on row 3 is longer than 10 characters$"):
        await _read(b'id,note\n1,ok\n2,"' + b"y" * 11 + b'"\n3,ok\n', max_field_chars=10)


async def test_a_higher_limit_than_the_process_default_is_honoured() -> None:
    before = csv.field_size_limit()
    try:
        data = b'id,note\n1,"' + b"z" * (3 * MIB // 2) + b'"\n2,ok\n'
        records = await _read(data, chunk=MIB, max_field_chars=2 * MIB)
        assert len(records[1].fields[1]) == 3 * MIB // 2
        assert records[2].fields == ["2", "ok"]
        assert csv.field_size_limit() >= 2 * MIB
    finally:
        csv.field_size_limit(before)


def _huge_field(opening: bytes, piece: bytes, closing: bytes, sent: list[int]) -> Iterable[bytes]:
    head = b"id,note\r\n1," + opening
    sent.append(len(head))
    yield head
    for _ in range(50 * MIB // len(piece)):
        sent.append(len(piece))
        yield piece
    yield closing + b"\r\n2,ok\r\n"


@pytest.mark.parametrize(
    ("opening", "piece", "closing"),
    [
        (b'"', b"x" * 65536, b'"'),
        (b"", b"x" * 65536, b""),
        (b'"', (b"x" * 1023 + b"\n") * 64, b'"'),
    ],
    ids=["quoted", "unquoted", "quoted-many-lines"],
)
async def test_a_50_mb_field_is_refused_without_holding_the_file(opening: bytes, piece: bytes, closing: bytes) -> None:
    sent: list[int] = []
    tracemalloc.start()
    try:
        async with aclosing(_lazy(_huge_field(opening, piece, closing, sent))) as source:
            stream = CsvStream(source, key="big.csv")
            with pytest.raises(FileProblem, match=r"^a field on row 2 is longer than 1048576 characters"):
                await _drain(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * MIB
    # Refused as soon as the field passes the limit, not after reading on.
    assert sum(sent) <= MIB + 2 * len(piece)


async def test_batches_never_exceed_batch_rows() -> None:
    data = b"id\n" + b"".join(b"%d\n" % i for i in range(1, 101))
    async with aclosing(_chunks(data, 11)) as source:
        stream = CsvStream(source, key="ids.csv", batch_rows=7)
        assert (await stream.header()).fields == ["id"]
        batches = [batch async for batch in stream]
    assert batches
    assert all(0 < len(batch) <= 7 for batch in batches)
    assert [int(record.fields[0]) for batch in batches for record in batch] == list(range(1, 101))


def _rows(count: int) -> Iterable[bytes]:
    yield b"id,first,last,email,city,country,ltv,score,vip,joined,note\r\n"
    for start in range(0, count, 1000):
        yield b"".join(
            b'c%d,Zo\xc3\xab,Lee,c%d@example.com,"Berlin, Mitte",DE,%d,%d.5,true,2024-01-02,"say ""hi"""\r\n'
            % (i, i, i * 3, i % 100)
            for i in range(start, min(start + 1000, count))
        )


async def test_200k_rows_stream_in_batches() -> None:
    pieces = _rows(200_000)
    seen = 0
    data_rows = 0
    last: Record | None = None

    async def counted() -> AsyncGenerator[bytes, None]:
        nonlocal seen
        for piece in pieces:
            seen += 1
            yield piece

    async with aclosing(counted()) as source:
        stream = CsvStream(source, key="people.csv", batch_rows=5000)
        header = await stream.header()
        assert seen < 100, "the header should arrive long before the end of the file"
        async for batch in stream:
            assert len(batch) <= 5000
            data_rows += len(batch)
            last = batch[-1]
    assert header == Record(
        1, 1, ["id", "first", "last", "email", "city", "country", "ltv", "score", "vip", "joined", "note"]
    )
    assert data_rows == 200_000
    assert last == Record(
        row=200_001,
        line=200_001,
        fields=[
            "c199999",
            "Zoë",
            "Lee",
            "c199999@example.com",
            "Berlin, Mitte",
            "DE",
            "599997",
            "99.5",
            "true",
            "2024-01-02",
            'say "hi"',
        ],
    )


async def test_a_header_only_file_has_no_data_batches() -> None:
    async with aclosing(_chunks(b"id,name\n", 3)) as source:
        stream = CsvStream(source, key="x.csv")
        assert (await stream.header()).fields == ["id", "name"]
        assert [batch async for batch in stream] == []
