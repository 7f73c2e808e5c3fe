"""Parquet tables of images (source.table): one part per row, its image bytes and carried columns."""

from __future__ import annotations

import io
import json
from typing import Optional

from imgclf_ray.containers.base import Part, over_member
from imgclf_ray.imaging.limits import DecodeError  # our own message: shown as it is
from imgclf_ray.registry import CONTAINERS, Container
from imgclf_ray.spec import DecodeSpec, SourceSpec


def split(data: bytes, source: SourceSpec, decode: DecodeSpec, side: Optional[int] = None) -> list[Part]:
    """Image bytes and carried metadata (JSON) of every row of one image table."""
    import pyarrow.parquet as pq

    table = source.table
    limit = decode.max_container_bytes
    pf = pq.ParquetFile(io.BytesIO(data))
    declared = sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.metadata.num_row_groups))
    if declared > limit:
        raise DecodeError(f"the table expands to {declared / 2**20:,.0f} MiB, over "
                          f"decode.max_container_bytes ({limit / 2**20:,.0f} MiB)")
    _check_columns(pf.schema_arrow, table.image_column, table.carry)
    # One row at a time, counted as it is read: the footer's sizes are the file's own claim, and a
    # dictionary-encoded column repeats one stored value in every row (a file of 1 KB held 40 rows
    # of one 20 MiB value: 800 MiB read at once, its footer saying 20 MiB).
    parts: list[Part] = []
    expanded = 0
    for batch in pf.iter_batches(batch_size=1, columns=[table.image_column, *table.carry]):
        for row in batch.to_pylist():
            i, value = len(parts), row[table.image_column]
            image = value.get("bytes") if isinstance(value, dict) else value
            meta = (json.dumps({k: None if row[k] is None else str(row[k]) for k in table.carry})
                    if table.carry else None)
            expanded += len(image or b"") + len(meta or "")  # an oversize row's too: it was read
            if expanded > limit:
                raise DecodeError(f"the table's rows expand past decode.max_container_bytes "
                                  f"({limit / 2**20:,.0f} MiB) at row {i}")
            # A row's bytes are one still image; a row without bytes is an error row.
            if image is not None and len(image) > decode.max_member_bytes:
                parts.append(Part(i, metadata=meta, error=f"read: {over_member(len(image), decode)}"))
                continue
            parts.append(Part(i, image if image is not None else b"", metadata=meta))
    return parts


def _check_columns(schema, image_column: str, carry: list[str]) -> None:
    """The table has the columns the spec names, its image column holding bytes (binary, or a
    struct with a binary 'bytes' field): else the file is one error row saying which (in the
    spec's names: the file's own column names and types are its bytes)."""
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


CONTAINERS.register("table")(Container(split))
