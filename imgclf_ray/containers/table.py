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
    pf = pq.ParquetFile(io.BytesIO(data))
    expanded = sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.metadata.num_row_groups))
    if expanded > decode.max_container_bytes:
        raise DecodeError(f"the table expands to {expanded / 2**20:,.0f} MiB, over "
                         f"decode.max_container_bytes ({decode.max_container_bytes / 2**20:,.0f} MiB)")
    _check_columns(pf.schema_arrow, table.image_column, table.carry)
    t = pf.read(columns=[table.image_column, *table.carry])
    carried = ([json.dumps({k: None if v is None else str(v) for k, v in row.items()})
                for row in t.select(table.carry).to_pylist()] if table.carry else [None] * t.num_rows)
    parts = []
    for i, (value, meta) in enumerate(zip(t.column(table.image_column).to_pylist(), carried)):
        image = value.get("bytes") if isinstance(value, dict) else value
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
