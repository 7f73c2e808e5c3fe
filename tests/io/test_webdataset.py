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


def test_a_sample_whose_label_cannot_be_read_is_one_error_row_and_the_shard_is_read():
    """Labels as a shard writer may leave them: text in another encoding, JSON that is no object,
    a field holding an object, JSON nested past the parser's depth. That sample is an error row
    saying why; the shard's other samples keep their images and labels."""
    import io
    import tarfile

    from imgclf_ray.containers.webdataset import split

    def shard(label_extension: str, bad: bytes) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, data in ((f"a.{label_extension}", bad), ("a.png", png), ("b.png", png),
                               (f"b.{label_extension}", b'{"label": 3}' if label_extension == "json" else b" 3\n"),
                               ("c.png", png)):  # c: no label member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    png = png_bytes(digit_images(1)[0][1])
    member = "read: the sample's label member"
    for extension, bad, why in (
            ("cls", b"caf\xe9", "(.cls) is not UTF-8 text"),
            ("json", b"[1, 2]", "(.json) is a JSON array, not an object with a 'label' field"),
            ("json", b'{"label": {"name": "cat"}}', "(.json) has an object in its 'label' field, not a string, number or boolean"),
            ("json", b"[" * 100_000 + b"]" * 100_000, "(.json) is not valid JSON"),
            ("json", b'{"label": "\xff"}', "(.json) is not valid JSON"),
            ("json", b'{"label": NaN}', "(.json) is not valid JSON"),
            ("json", b'{"label": 1e400}', "(.json) has a number too large in its 'label' field"),
            ("json", b"null", "(.json) is a JSON null, not an object with a 'label' field")):
        spec = parse_spec({"name": "wds", "source": {"uri": "/shards", "webdataset": {"label_extension": extension}},
                           "model": {"uri": "/m"}, "sink": {"uri": "/o"}}, "<test>")
        a, b, c = split(shard(extension, bad), spec.source, spec.decode)
        assert (a.error, a.data, json.loads(a.metadata)) == (f"{member} {why}", None, {"key": "a"}), extension
        assert (b.error, b.label, b.data) == (None, "3", png) and (c.error, c.label, c.data) == (None, None, png)
    # A label member over decode.max_member_bytes is not read, and says so (it was a sample without
    # a label); a member name not in UTF-8 (Latin-1 bytes) keeps its sample, named with an escape.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in (("big.png", png), ("big.cls", b"x" * 4096), ("caf\udce9.png", png), ("caf\udce9.cls", b"7")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    spec = parse_spec({"name": "wds", "source": {"uri": "/shards", "webdataset": {}}, "decode": {"max_member_bytes": 2048},
                       "model": {"uri": "/m"}, "sink": {"uri": "/o"}}, "<test>")
    big, latin = split(out.getvalue(), spec.source, spec.decode)
    assert big.error == ("read: the sample's label member (.cls) is a member of 0 MiB, over decode.max_member_bytes "
                         "(0 MiB); not read") and big.data is None
    assert (latin.error, latin.label, json.loads(latin.metadata)) == (None, "7", {"key": "caf\\xe9"})


def test_a_compressed_shard_that_inflates_in_its_headers_or_its_count_of_members_is_one_error():
    """tarfile reads a GNU long-name or pax header record whole before it yields the member it
    names: a gzip shard of 64 KB whose first record declares 64 MiB made Python hold 64 MiB
    (3 GiB: 12.7 GB at the peak) before any limit saw a member. Refused past 1 MiB; what Python
    allocated meanwhile (tracemalloc: gzip's output is Python bytes) stays small. A shard of many
    empty members counts each at least 1 KiB against decode.max_container_bytes. Sparse members
    are refused."""
    import gzip
    import io
    import tarfile
    import tracemalloc

    from imgclf_ray.containers.webdataset import split
    from imgclf_ray.imaging.limits import DecodeError

    spec = parse_spec({"name": "wds", "source": {"uri": "/shards", "webdataset": {}},
                       "model": {"uri": "/m"}, "sink": {"uri": "/o"}}, "<test>")
    png = png_bytes(digit_images(1)[0][1])
    for kind, fmt in ((tarfile.GNUTYPE_LONGNAME, tarfile.GNU_FORMAT), (tarfile.XHDTYPE, tarfile.PAX_FORMAT)):
        record = tarfile.TarInfo("././@LongLink")
        record.type, record.size = kind, 64 << 20
        image = tarfile.TarInfo("s1.png")
        image.size = len(png)
        body = (b"19 path=" + b"a" * 10 + b"\n") * ((64 << 20) // 19) if kind == tarfile.XHDTYPE else b"a" * (64 << 20)
        body = body.ljust(64 << 20, b"\n")
        shard = gzip.compress(record.tobuf(format=fmt) + body + image.tobuf(format=fmt) + png.ljust(-(-len(png) // 512) * 512, b"\0")
                              + b"\0" * 1024, compresslevel=9)
        assert len(shard) < 1 << 20
        tracemalloc.start()
        try:
            with pytest.raises(DecodeError, match=f"a tar header record \\(long name or pax\\) declares {64 << 20:,} "
                                                  "bytes, over 1,048,576"):
                split(shard, spec.source, spec.decode)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, (kind, peak)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i in range(3000):
            tar.addfile(tarfile.TarInfo(f"{i}.txt"), io.BytesIO(b""))
        image = tarfile.TarInfo("last.png")
        image.size = len(png)
        tar.addfile(image, io.BytesIO(png))
    small = parse_spec({"name": "wds", "source": {"uri": "/shards", "webdataset": {}},
                        "decode": {"max_container_bytes": 2 << 20}, "model": {"uri": "/m"}, "sink": {"uri": "/o"}}, "<test>")
    with pytest.raises(DecodeError, match="the shard expands past decode.max_container_bytes \\(2 MiB\\)"):
        split(out.getvalue(), small.source, small.decode)
    assert [p.data for p in split(out.getvalue(), spec.source, spec.decode)] == [png]  # (within the default)
    # A member over max_member_bytes is not read, but passing over it in a compressed shard inflates
    # it (bz2: 75 s of CPU for a 24 KB shard whose member declared 30 GiB): its declared size counts.
    import bz2
    import lzma

    big = tarfile.TarInfo("big.png")
    big.size = 3 << 20  # (3 MiB of zeros: a few hundred bytes compressed)
    plain = big.tobuf() + bytes(big.size) + image.tobuf() + png.ljust(-(-len(png) // 512) * 512, b"\0") + bytes(1024)
    skip = parse_spec({"name": "wds", "source": {"uri": "/shards", "webdataset": {}},
                       "decode": {"max_container_bytes": 2 << 20, "max_member_bytes": 1 << 20},
                       "model": {"uri": "/m"}, "sink": {"uri": "/o"}}, "<test>")
    for compress in (gzip.compress, bz2.compress, lzma.compress):
        with pytest.raises(DecodeError, match="the shard expands past decode.max_container_bytes \\(2 MiB\\)"):
            split(compress(plain), skip.source, skip.decode)
    parts = split(plain, skip.source, skip.decode)  # (uncompressed, passing over it is a seek: read on)
    assert [p.data for p in parts] == [None, png] and "decode.max_member_bytes" in parts[0].error
    # An old-GNU sparse member ('S') and its extended map blocks (tarfile reads them all before the
    # member: 2 million blocks in a 3.7 MB gzip shard held 9 GB): refused, whatever their count.
    def octal(n: int, width: int) -> bytes:
        return b"%0*o" % (width - 1, n) + b"\0"

    header = bytearray(512)
    header[0:6], header[100:108], header[124:136], header[136:148] = b"a.jpg\0", octal(0o644, 8), octal(0, 12), octal(0, 12)
    header[156:157], header[257:265], header[482], header[483:495] = b"S", b"ustar  \0", 1, octal(1, 12)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o" % sum(header) + b"\0 "
    block = bytearray(512)
    for i in range(21):
        block[i * 24:i * 24 + 24] = octal(1, 12) + octal(1, 12)
    block[504] = 1
    shard = gzip.compress(bytes(header) + bytes(block) * 10 + bytes(512) * 3)
    with pytest.raises(DecodeError, match="^a sparse tar member \\(GNU sparse format\\): not read$"):
        split(shard, spec.source, spec.decode)

    def written(members, fmt=tarfile.PAX_FORMAT, **options) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=fmt, **options) as tar:
            for info, data in members:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    # A pax sparse 1.0 member (its map read from its data, as long as it says).
    sparse = tarfile.TarInfo("a.png")
    sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "a.png",
                          "GNU.sparse.realsize": "10"}
    with pytest.raises(DecodeError, match="^a sparse tar member \\(pax GNU.sparse 1.0\\): not read$"):
        split(written([(sparse, b"1\n0\n10\n".ljust(512, b"\0"))]), spec.source, spec.decode)
    # A pax global header is copied into every member after it: over 64 KiB, refused; a small one
    # (git archive's) is counted once a member; many members each with its copy stay bounded.
    with pytest.raises(DecodeError, match=f"declares {100_016:,} bytes, over {64 << 10:,}$"):
        split(written([(tarfile.TarInfo("a.png"), png)], pax_headers={"comment": "x" * 100_000}), spec.source,
              spec.decode)
    members = [(tarfile.TarInfo(f"{i}.png"), png) for i in range(3)]
    assert len(split(written(members, pax_headers={"comment": "c" * 60_000}), spec.source, spec.decode)) == 3
    with pytest.raises(DecodeError, match="the shard expands past decode.max_container_bytes"):
        split(written([(tarfile.TarInfo(f"{i}.txt"), b"") for i in range(40)], pax_headers={"comment": "c" * 60_000}),
              small.source, small.decode)  # (40 x 60 KB counted: 2.4 MB, over 2 MiB)
    # Header records one after another (each read whole, recursively): more than 8 refused.
    chain = b""
    for _ in range(9):
        record = tarfile.TarInfo("././@LongLink")
        record.type, record.size = tarfile.GNUTYPE_LONGNAME, 10
        chain += record.tobuf(format=tarfile.GNU_FORMAT) + b"long-name\0".ljust(512, b"\0")
    with pytest.raises(DecodeError, match="^more than 8 tar header records \\(long name or pax\\) in a row$"):
        split(chain + written([(tarfile.TarInfo("a.png"), png)], fmt=tarfile.GNU_FORMAT), spec.source, spec.decode)


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
