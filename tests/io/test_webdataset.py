"""WebDataset tar shards written by the webdataset library: one row per sample, labels carried."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
from tests.corpus import digit_images, png_bytes
from tests.support.jobs import read_run

pytestmark = pytest.mark.ray


def test_webdataset_shards_one_row_per_sample_with_its_label(ray_session, tiny_model, tmp_path):
    import webdataset as wds
    root = tmp_path / "shards"
    root.mkdir()
    digits = digit_images(10)
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=4) as sink:
        for i, (name, img) in enumerate(digits):
            sample = {"__key__": f"sample{i:03d}", "png": png_bytes(img), "cls": name.rsplit("-", 1)[-1]}
            if i == 9:
                sample = {"__key__": "broken", "png": b"\x89PNG not really", "json": json.dumps({"label": "7"})}
            sink.write(sample)
    assert sorted(p.name for p in root.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    spec = parse_spec({"name": "wds", "source": {"uri": str(root), "webdataset": {}},
                       "model": {"uri": tiny_model}, "sink": {"uri": str(tmp_path / "out")}}, "<test>")
    assert spec.source.extensions == [".tar"]
    result = execute(spec, list_archive(spec.source), "w1")
    assert result.rows == 10 and result.by_status == {"ok": 9, "error": 1}
    rows = {json.loads(r["metadata"])["key"]: r for r in read_run(str(tmp_path / "out"), "w1")}
    assert set(rows) == {f"sample{i:03d}" for i in range(9)} | {"broken"}
    assert all(rows[f"sample{i:03d}"]["true_label"] == str(i % 10) for i in range(9))
    assert rows["sample005"]["frame"] == 1 and Path(rows["sample005"]["uri"]).name == "shard-000001.tar"
    assert rows["broken"]["error"].startswith("decode: ") and rows["broken"]["true_label"] is None  # .cls only


def test_every_source_container_is_a_registered_module_with_a_spec_section():
    """Containers are one module each in imgclf_ray/containers/, found by name; each name is the
    source key holding its options, and a container's split takes a file's bytes to parts."""
    import inspect

    from imgclf_ray.registry import CONTAINERS
    from imgclf_ray.spec import SourceSpec

    assert CONTAINERS.names() == ["table", "video", "webdataset"]
    for name in CONTAINERS.names():
        container = CONTAINERS.get(name)
        assert name in SourceSpec.model_fields and container.stage in ("read", "decode")
        assert list(inspect.signature(container.split).parameters) == ["data", "source", "decode", "side"]
