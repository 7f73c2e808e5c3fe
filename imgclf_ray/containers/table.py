"""Parquet tables of images (source.table): one part per row, its image bytes and carried columns."""

from __future__ import annotations

import io
import json
from typing import Any, Optional

from imgclf_ray.containers.base import Part, over_member
from imgclf_ray.imaging.limits import DecodeError  # our own message: shown as it is
from imgclf_ray.registry import CONTAINERS, Container
from imgclf_ray.spec import DecodeSpec, SourceSpec


# What one row becomes downstream (its parts, then its output row) is counted as at least this
# much: a file of a few KB holding millions of empty rows is bounded like one holding their bytes.
ROW_COST = 1024
BATCH_ROWS = 256
BATCH_BYTES = 64 << 20


def split(data: bytes, source: SourceSpec, decode: DecodeSpec, side: Optional[int] = None) -> list[Part]:
    """Image bytes and carried metadata (JSON) of every row of one image table, read within
    ``decode.max_container_bytes``: the pages' own headers (what decompressing them allocates) are
    summed before a row is read, and the rows are counted as they are expanded, in batches no
    larger than BATCH_BYTES, before their values are made."""
    import pyarrow.parquet as pq

    table, limit = source.table, decode.max_container_bytes
    groups = _footer(data)  # (read here: pyarrow's per-chunk metadata aborts the process on some damage)
    declared = max(sum(group["bytes"] for group in groups), ROW_COST * sum(group["rows"] for group in groups))
    if declared > limit:
        raise DecodeError(f"the table expands to {declared / 2**20:,.0f} MiB, "
                          f"over decode.max_container_bytes ({limit / 2**20:,.0f} MiB)")
    pf = pq.ParquetFile(io.BytesIO(data))
    image_path = _check_columns(pf.schema_arrow, table.image_column, table.carry)
    names = [image_path, *table.carry]
    # The leaves read, by position (Arrow reads a row group's j-th chunk for the schema's j-th
    # leaf, whatever path the chunk itself names).
    leaves = [pf.schema.column(j) for j in range(len(pf.schema))]
    read = [j for j, leaf in enumerate(leaves) if any(_under(leaf.path, n) for n in names)]
    for j in read:
        if leaves[j].max_repetition_level > 0:  # (a list's elements: one dictionary value, any number of times)
            name = next(n for n in table.carry if _under(leaves[j].path, n))
            raise DecodeError(f"the table's column {name!r} holds lists or maps: source.table.carry takes "
                              "columns of one value per row")
    if any(len(group["columns"]) != len(leaves) for group in groups):
        raise DecodeError("not a readable Parquet table: its footer is damaged")
    paged, largest = _pages_expand_to(data, [(j, group["columns"][j]) for group in groups for j in read], limit)
    if paged > limit:
        raise DecodeError(f"the table's pages expand to {paged / 2**20:,.0f} MiB, over "
                          f"decode.max_container_bytes ({limit / 2**20:,.0f} MiB)")
    # A row's value in a column is no larger than that column's largest page (a dictionary-encoded
    # value: its dictionary page), so a batch of this many rows is made within BATCH_BYTES.
    batch_rows = max(1, min(BATCH_ROWS, BATCH_BYTES // max(1, sum(largest.values()))))
    parts: list[Part] = []
    expanded = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=names):
        expanded += sum(_dense(column) for column in batch.columns) + ROW_COST * batch.num_rows
        if expanded > limit:
            raise DecodeError(f"the table's rows expand past decode.max_container_bytes "
                              f"({limit / 2**20:,.0f} MiB) by row {len(parts) + batch.num_rows}")
        for row in batch.to_pylist():
            i, value = len(parts), row[table.image_column]
            image = value.get("bytes") if isinstance(value, dict) else value
            metadata = (json.dumps({k: None if row[k] is None else str(row[k]) for k in table.carry})
                        if table.carry else None)
            # A row's bytes are one still image; a row without bytes is an error row.
            if image is not None and len(image) > decode.max_member_bytes:
                parts.append(Part(i, metadata=metadata, error=f"read: {over_member(len(image), decode)}"))
            else:
                parts.append(Part(i, image if image is not None else b"", metadata=metadata))
    return parts


def _under(path: str, column: str) -> bool:
    """Whether a leaf's dotted ``path`` is ``column`` or one of its fields."""
    return path == column or path.startswith(column + ".")


def _dense(array) -> int:
    """Bytes ``array`` takes once its values are made: a dictionary's entries as often as they are
    used (computed from their lengths, none made)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if isinstance(array, pa.ChunkedArray):
        return sum(_dense(chunk) for chunk in array.chunks)
    if pa.types.is_dictionary(kind):
        values = array.dictionary
        lengths = (pc.binary_length(values) if _binary_like(values.type)
                   else pa.array([values.nbytes // max(1, len(values))] * len(values), pa.int64()))
        return int(pc.sum(pc.take(lengths, array.indices)).as_py() or 0) + array.indices.nbytes
    if pa.types.is_struct(kind):
        return sum(_dense(array.field(i)) for i in range(kind.num_fields)) + len(array) // 8
    return array.nbytes  # (no lists: a carried column of lists is refused before a row is read)


def _binary_like(kind) -> bool:
    import pyarrow as pa

    return any(test(kind) for test in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string,
                                       pa.types.is_large_string, pa.types.is_binary_view, pa.types.is_string_view))


class _Damaged(Exception):
    pass


def _footer(data: bytes) -> list[dict]:
    """The row groups as the file's footer gives them, read as Thrift's C++ library reads it for
    Arrow (compact protocol; a field of another type than the one expected is skipped, the last of
    a repeated one kept; FileMetaData: 4 row_groups, 6 created_by; RowGroup: 1 columns, 2
    total_byte_size, 3 num_rows; ColumnChunk: 3 meta_data; ColumnMetaData: 7
    total_compressed_size, 9 data_page_offset, 11 dictionary_page_offset): each group's bytes,
    rows and column chunks (the byte range Arrow reads of each). Refused: chunks whose ranges
    overlap (one page counted many times over), and files from parquet-mr before 1.2.9, whose
    chunks Arrow reads 100 bytes past their end."""
    import re

    try:
        if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
            raise _Damaged
        length = int.from_bytes(data[-8:-4], "little")
        if length > len(data) - 12:
            raise _Damaged
        meta = _value(memoryview(data)[len(data) - 8 - length:len(data) - 8], 0, 12, 0)[0]
        made_by = bytes(_field(meta, 6, 8, b"")).decode("utf-8", "replace").strip().lower()
        if made_by.startswith("parquet-mr"):
            version = re.match(r"parquet-mr\s+version\s+(\d+)\.(\d+)\.(\d+)", made_by)
            if not version or tuple(map(int, version.groups())) < (1, 2, 9):
                raise DecodeError("a Parquet table written by parquet-mr before 1.2.9 is not read (Arrow reads "
                                  "past its column chunks)")
        groups, ranges = [], []
        for group in _field(meta, 4, 9):
            columns = []
            for chunk in _field(group, 1, 9):
                cmd = _field(chunk, 3, 12)
                start, dictionary = _field(cmd, 9, 6), _field(cmd, 11, 6, 0)
                if 0 < dictionary < start:
                    start = dictionary
                columns.append({"start": start, "length": _field(cmd, 7, 6)})
                ranges.append((start, start + columns[-1]["length"]))
            groups.append({"bytes": _field(group, 2, 6), "rows": _field(group, 3, 6), "columns": columns})
        ranges.sort()
        if any(later[0] < earlier[1] for earlier, later in zip(ranges, ranges[1:])):
            raise _Damaged
        return groups
    except (_Damaged, IndexError):
        raise DecodeError("not a readable Parquet table: its footer is damaged") from None


_MISSING = object()


def _field(struct: Any, field: int, kind: int, default: Any = _MISSING) -> Any:
    """Field ``field`` of a struct ``_value`` read, of compact type ``kind`` (6 i64, 8 binary, 9
    list, 12 struct), not negative; else ``default`` or a damaged file."""
    value = struct.get((field, kind), _MISSING) if isinstance(struct, dict) else _MISSING
    if value is _MISSING or (isinstance(value, int) and value < 0):
        if default is _MISSING:
            raise _Damaged
        return default
    return value


def _pages_expand_to(data: bytes, chunks: list[tuple[int, dict]], limit: int) -> tuple[int, dict[int, int]]:
    """What decompressing every page of ``chunks`` ((leaf, chunk) pairs) allocates, summed from the
    pages' own headers (PageHeader: 2 uncompressed_page_size, 3 compressed_page_size, i32) with
    the headers themselves (as the footer's total_uncompressed_size counts them), walking each
    chunk's byte range, which is all Arrow reads of it; stops past ``limit``. Also each leaf's
    largest page. A header that cannot be walked is a damaged table."""
    total, largest = 0, {}
    try:
        for leaf, chunk in chunks:
            start, end = chunk["start"], chunk["start"] + chunk["length"]
            if end > len(data):
                raise _Damaged
            view, pos = memoryview(data)[:end], start
            while pos < end:
                header, header_end = _value(view, pos, 12, 0)
                expands, stored = _field(header, 2, 5), _field(header, 3, 5)
                total += header_end - pos + expands  # (a header's statistics are read too)
                largest[leaf] = max(largest.get(leaf, 0), header_end - pos + expands)
                pos = header_end + stored
                if total > limit:
                    return total, largest
    except (_Damaged, IndexError):
        raise DecodeError("not a readable Parquet table: its page headers are damaged") from None
    return total, largest


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Damaged


def _signed(raw: int, bits: int) -> int:
    """A zigzag varint as Thrift's C++ reads it into an integer of ``bits``: cut to 64 or 32 bits,
    unzigzagged, then an i16 cut from the i32."""
    raw &= (1 << max(bits, 32)) - 1
    value = (raw >> 1) ^ -(raw & 1)
    return (value + 2**15) % 2**16 - 2**15 if bits == 16 else value


# Arrow's defaults for the Thrift it reads (ReaderProperties): no list or map longer, no string larger.
MAX_CONTAINER, MAX_STRING = 1_000_000, 100_000_000


def _value(buf, pos: int, kind: int, depth: int, element: bool = False) -> tuple[Any, int]:
    """One value of Thrift's compact protocol from ``pos``, and where it ends: integers as Thrift's
    C++ reads them (i16, i32, i64), binary as a memoryview, lists and sets as lists, maps as lists
    of pairs, structs as dicts keyed by (field id, type) with the last of a repeated field (a
    bool is in its field's header, but a byte of its own as an element)."""
    if depth > 32:
        raise _Damaged
    if kind in (1, 2):
        return (buf[pos] == 1, pos + 1) if element else (kind == 1, pos)
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        raw, pos = _varint(buf, pos)
        return _signed(raw, {4: 16, 5: 32, 6: 64}[kind]), pos
    if kind == 7:
        if pos + 8 > len(buf):
            raise _Damaged
        return None, pos + 8
    if kind == 8:
        size, pos = _varint(buf, pos)
        if size > MAX_STRING or pos + size > len(buf):
            raise _Damaged
        return buf[pos:pos + size], pos + size
    if kind in (9, 10, 11):
        if kind == 11:
            size, pos = _varint(buf, pos)
            head = buf[pos] if size else 0
            kinds, pos = [head >> 4, head & 0x0F], pos + (1 if size else 0)
        else:
            head = buf[pos]
            size, kinds, pos = head >> 4, [head & 0x0F], pos + 1
            if size == 15:
                size, pos = _varint(buf, pos)
        if size > MAX_CONTAINER or size > len(buf) - pos:  # (every element takes a byte at least)
            raise _Damaged
        items = []
        for _ in range(size):
            for inner in kinds:
                item, pos = _value(buf, pos, inner, depth + 1, True)
                items.append(item)
        return items, pos
    if kind == 12:
        fields: dict[tuple[int, int], Any] = {}
        last = 0
        while True:
            head = buf[pos]
            pos += 1
            if head == 0:
                return fields, pos
            inner, delta = head & 0x0F, head >> 4
            if delta:
                last = (last + delta + 2**15) % 2**16 - 2**15  # (an i16, as Thrift's C++ adds it)
            else:
                raw, pos = _varint(buf, pos)
                last = _signed(raw, 16)
            value, pos = _value(buf, pos, inner, depth + 1)
            fields[(last, 2 if inner == 1 else inner)] = value  # (true and false: one type)
    raise _Damaged


def _check_columns(schema, image_column: str, carry: list[str]) -> str:
    """The table has the columns the spec names, its image column holding bytes (binary, or a
    struct with a binary 'bytes' field): else the file is one error row saying which (in the
    spec's names: the file's own column names and types are its bytes). Returns the column path to
    read (a struct's ``bytes`` field alone: not its other fields)."""
    import pyarrow as pa

    if image_column not in schema.names:
        raise DecodeError(f"the table has no column {image_column!r} (source.table.image_column)")
    missing = [c for c in carry if c not in schema.names]
    if missing:
        raise DecodeError(f"the table has no column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(repr, missing))} (source.table.carry)")
    kind = schema.field(image_column).type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        kind = kind.field("bytes").type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not any(test(kind) for test in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary,
                                       pa.types.is_binary_view)):
        raise DecodeError(f"the table's column {image_column!r} holds no image bytes (binary, or a struct with a "
                          "binary 'bytes' field: source.table.image_column)")
    return f"{image_column}.bytes" if pa.types.is_struct(schema.field(image_column).type) else image_column


CONTAINERS.register("table")(Container(split))
