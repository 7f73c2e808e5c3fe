"""Parquet tables of images (source.table): one part per row, its image bytes and carried columns."""

from __future__ import annotations

import io
import json
from typing import Optional

from imgclf_ray.containers.base import Part, over_member
from imgclf_ray.registry import CONTAINERS, Container
from imgclf_ray.spec import DecodeSpec, SourceSpec


def split(data: bytes, source: SourceSpec, decode: DecodeSpec, side: Optional[int] = None) -> list[Part]:
    """Image bytes and carried metadata (JSON) of every row of one image table."""
    import pyarrow.parquet as pq

    table = source.table
    pf = pq.ParquetFile(io.BytesIO(data))
    expanded = sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.metadata.num_row_groups))
    if expanded > decode.max_container_bytes:
        raise ValueError(f"the table expands to {expanded / 2**20:,.0f} MiB, over "
                         f"decode.max_container_bytes ({decode.max_container_bytes / 2**20:,.0f} MiB)")
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



CONTAINERS.register("table")(Container(split))
