"""Small helpers over output tables, shared by the pipeline, evaluation and the report."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union

import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray.io.storage import filesystem
from imgclf_ray.spec import StorageSpec


def count_values(column: Union[pa.Array, pa.ChunkedArray]) -> dict[Any, int]:
    """Value -> rows, most frequent first, nulls left out (values keep their type)."""
    pairs = [(c["values"], c["counts"]) for c in column.value_counts().to_pylist()
             if c["values"] is not None] if len(column) else []
    return dict(sorted(pairs, key=lambda kv: (-kv[1], str(kv[0]))))


def read_columns(uris: Iterable[str], columns: Union[list[str], Callable[[str], bool]],
                 storage: StorageSpec = StorageSpec()) -> pa.Table:
    """The given columns of Parquet files (any fsspec URIs): a list of names, or a test that picks
    the ones each file has. An empty table (those columns) when there is no file."""
    tables = []
    for uri in uris:
        fs, path = filesystem(uri, storage)
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = columns if isinstance(columns, list) else [n for n in pf.schema_arrow.names if columns(n)]
            tables.append(pf.read(columns=names))
    if not tables:
        return pa.table({n: pa.array([], pa.string()) for n in columns}) if isinstance(columns, list) else pa.table({})
    return pa.concat_tables(tables, promote_options="default")
