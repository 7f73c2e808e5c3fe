"""S3 Inventory as a source listing: the manifest.json, CSV (gzipped, URL-encoded keys), Parquet
and ORC data files, and the rows kept (prefix, extensions, hidden names, versions)."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from imgclf_ray.errors import SourceError
from imgclf_ray.io.inventory import inventory_rows, read_inventory
from imgclf_ray.spec import SourceSpec

KEYS = ["cams/a 1.jpg", "cams/b+c.JPG", "cams/.hidden.jpg", "cams/_tmp.jpg", "cams/notes.txt",
        "other/z.jpg", "cams/old.jpg", "cams/gone.jpg"]


def write_inventory(root, file_format: str, keys=KEYS, versions: bool = True, name: str = "2026-11-30T01-00Z",
                    bucket: str = "photos", sizes=None) -> str:
    """An inventory of ``bucket`` under <root>/inv/photos/daily/ as AWS writes it; the manifest's
    URI. ``sizes``: the objects' sizes (default 100, 101, ...)."""
    data = root / "inv" / "photos" / "daily" / "data"
    data.mkdir(parents=True, exist_ok=True)
    n = len(keys)
    latest = [k != "cams/old.jpg" for k in keys]
    deleted = [k == "cams/gone.jpg" for k in keys]
    if file_format == "CSV":
        from urllib.parse import quote_plus

        lines = [f'"{bucket}","{quote_plus(k, safe="/")}","{sizes[i] if sizes else 100 + i}","etag{i}"' + (f',"{str(latest[i]).lower()}","{str(deleted[i]).lower()}"' if versions else "")
                 for i, k in enumerate(keys)]
        path = data / f"{name}.csv.gz"
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
        schema = "Bucket, Key, Size, ETag" + (", IsLatest, IsDeleteMarker" if versions else "")
    else:
        columns = {"bucket": [bucket] * n, "key": keys, "size": pa.array(sizes or [100 + i for i in range(n)], pa.int64()),
                   "e_tag": [f"etag{i}" for i in range(n)]}
        if versions:
            columns |= {"is_latest": latest, "is_delete_marker": deleted}
        table = pa.table(columns)
        path = data / f"{name}.{file_format.lower()}"
        (pq.write_table if file_format == "Parquet" else orc.write_table)(table, str(path))
        schema = "message s3.inventory { ... }"
    manifest = root / "inv" / "photos" / "daily" / name / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "sourceBucket": bucket, "destinationBucket": "arn:aws:s3:::inventories", "fileFormat": file_format,
        "fileSchema": schema, "files": [{"key": f"inv/photos/daily/data/{path.name}", "size": path.stat().st_size}]}))
    return str(manifest)


@pytest.mark.parametrize("file_format", ["CSV", "Parquet", "ORC"])
def test_inventory_rows_keep_the_latest_images_under_the_prefix(tmp_path, file_format):
    uri = write_inventory(tmp_path, file_format)
    inventory = read_inventory(uri)
    assert inventory.files == (str(tmp_path / "inv/photos/daily/data") + "/" + inventory.files[0].rsplit("/", 1)[1],)
    source = SourceSpec(uri="s3://photos/cams", inventory=uri)
    rows, skipped = inventory_rows(inventory, inventory.files[0], source)
    assert rows.column("uri").to_pylist() == ["s3://photos/cams/a 1.jpg", "s3://photos/cams/b+c.JPG"]
    assert rows.column("size").to_pylist() == [100, 101] and rows.column("etag").to_pylist() == ["etag0", "etag1"]
    assert skipped == {"hidden (name starts with '.' or '_')": 2, "extension not in source.extensions": 1,
                       "not the latest version": 1, "delete marker": 1}


def test_inventory_spec_and_manifest_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="uri names the inventoried bucket"):
        SourceSpec(uri=str(tmp_path), inventory="s3://inv/photos/daily/x/manifest.json")
    with pytest.raises(ValueError, match="manifest.json"):
        SourceSpec(uri="s3://photos/cams", inventory="s3://inv/photos/daily/x/")
    (tmp_path / "manifest.json").write_text("{\"files\": [], \"fileFormat\": \"XML\"}")
    with pytest.raises(SourceError, match="fileFormat 'XML' is not one of CSV, Parquet, ORC"):
        read_inventory(str(tmp_path / "manifest.json"))
    (tmp_path / "manifest.json").write_text("not json")
    with pytest.raises(SourceError, match="not an S3 Inventory manifest.json"):
        read_inventory(str(tmp_path / "manifest.json"))


def test_a_damaged_or_foreign_inventory_data_file_is_one_clear_error(tmp_path):
    """What a half-copied or hand-made inventory holds: a gzip stream cut or damaged (zlib's error,
    EOFError), a Parquet file without a key column or with columns of other types. Each is one
    SourceError naming the data file; none is an unexpected error."""
    import random

    source = SourceSpec(uri="s3://photos/cams")
    rng = random.Random(0)
    for file_format, suffix in (("CSV", "csv.gz"), ("Parquet", "parquet"), ("ORC", "orc")):
        inventory = read_inventory(write_inventory(tmp_path, file_format))
        path = tmp_path / f"inv/photos/daily/data/2026-11-30T01-00Z.{suffix}"
        good = path.read_bytes()
        for _ in range(200):
            data = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(10, len(data))] = rng.randrange(256)  # (a gzip header kept: a stream, damaged)
            path.write_bytes(bytes(data[:rng.randrange(len(data) // 2, len(data) + 1)]))
            try:
                inventory_rows(inventory, inventory.files[0], source)
            except SourceError as exc:
                assert str(exc).startswith(f"source.inventory data file {inventory.files[0]}: not a readable "
                                           f"{file_format} inventory ("), exc  # (damaged: not "cannot read")
    uri = write_inventory(tmp_path, "Parquet")
    inventory = read_inventory(uri)
    path = tmp_path / "inv/photos/daily/data/2026-11-30T01-00Z.parquet"
    for columns, why in (({"bucket": ["photos"], "size": [1]}, "no key column"),
                         ({"key": [5], "size": [1]}, "its key column does not hold text"),
                         ({"key": ["cams/a.jpg"], "bucket": [5]}, "its bucket column does not hold text"),
                         ({"key": ["cams/a.jpg"], "size": ["big"]}, "its size column does not hold whole numbers"),
                         ({"key": ["cams/a.jpg"], "e_tag": [[1]]}, "its e_tag column does not hold text"),
                         ({"key": ["cams/a.jpg"], "is_latest": [{"DOE^JANE": 1}]},
                          "its is_latest column does not hold true or false"),
                         ({"key": ["cams/a.jpg"], "size": pa.array([2**63 + 5], pa.uint64())},
                          r"not a readable Parquet inventory \(a column of another type or range than S3 Inventory writes\)$")):
        pq.write_table(pa.table(columns), str(path))
        with pytest.raises(SourceError, match=f"^source.inventory data file .*parquet: {why}"):
            inventory_rows(inventory, inventory.files[0], source)
