from __future__ import annotations

import pytest

from imgclf_ray.errors import SourceError
from imgclf_ray.io.listing import list_archive
from imgclf_ray.spec import SourceSpec, StorageSpec


@pytest.fixture
def archive(tmp_path):
    for rel in ["a.jpg", "b.PNG", "notes.txt", ".hidden.jpg", "x/c.jpeg", "x/y/d.png", "z/e.tif", "z/_tmp.jpg"]:
        p = tmp_path / "arch" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"12345")
    return tmp_path / "arch"


def names(table):
    return [u.rsplit("/arch/", 1)[1] for u in table.column("uri").to_pylist()]


def test_lists_recursively_with_extension_filter(archive):
    table = list_archive(SourceSpec(uri=str(archive)))
    assert names(table) == ["a.jpg", "b.PNG", "x/c.jpeg", "x/y/d.png", "z/e.tif"]
    assert table.column("uri")[0].as_py().startswith("file:///")
    assert set(table.column("size").to_pylist()) == {5}
    assert all(e.startswith("mtime:") for e in table.column("etag").to_pylist())


def test_non_recursive_glob_and_single_file(archive):
    assert names(list_archive(SourceSpec(uri=str(archive), recursive=False))) == ["a.jpg", "b.PNG"]
    assert names(list_archive(SourceSpec(uri=f"{archive}/x/**/*.png"))) == ["x/y/d.png"]
    assert names(list_archive(SourceSpec(uri=f"file://{archive}/z/e.tif"))) == ["z/e.tif"]
    assert names(list_archive(SourceSpec(uri=str(archive), extensions=["tif"]))) == ["z/e.tif"]


def test_symbolic_links_to_files_are_listed_as_their_files(tmp_path):
    """A Hugging Face or DVC cache, a curated subset: links to files in the folder and outside it
    are inputs (size and etag of the target); a broken link is counted as skipped, not an input."""
    import os

    from imgclf_ray.io.listing import skipped_counts

    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_bytes(b"1234567")
    root = tmp_path / "arch"
    (root / "sub").mkdir(parents=True)
    (root / "real.png").write_bytes(b"12")
    os.symlink(tmp_path / "blobs" / "abc", root / "outside.jpg")
    os.symlink(root / "real.png", root / "sub" / "again.png")
    os.symlink(tmp_path / "gone.jpg", root / "broken.jpg")
    os.symlink(tmp_path / "blobs", root / "folder-link")
    table = list_archive(SourceSpec(uri=str(root)))
    assert names(table) == ["outside.jpg", "real.png", "sub/again.png"]
    assert table.column("size").to_pylist() == [7, 2, 2]
    assert skipped_counts(table) == {"not a regular file (a broken link, a link to a folder, a device, a socket)": 2}


def test_names_of_every_kind_are_listed_and_names_not_in_utf8_are_counted_as_skipped(tmp_path):
    """A name is data: newlines, '%', '#', '?', escapes, combining marks, 240 bytes are listed as
    they are; a name in another encoding (Latin-1 bytes from an old scanner: no URI or Parquet
    string can hold it) is counted as skipped with the reason, in a folder so named too."""
    import os

    from imgclf_ray.io.listing import skipped_counts

    root = tmp_path / "arch"
    root.mkdir()
    odd = ["new\nline.png", "tab\t.png", "pct%20.png", "hash#1.png", "q?x=1.png", "caf\u00e9.png", "cafe\u0301.png",
           "esc\x1b[31m.png", "back\\slash.png", "x" * 236 + ".png", "\U0001f600.png"]
    for name in odd:
        (root / name).write_bytes(b"1")
    os.mkdir(os.path.join(bytes(root), b"sub"))
    os.mkdir(os.path.join(bytes(root), b"d\xe9j\xe0"))
    for raw in (b"caf\xe9.png", b"sub/\xff\xfe.png", b"d\xe9j\xe0/ok.png", b"notes\xe9.txt", b".hid\xe9.png"):
        with open(os.path.join(bytes(root), raw), "wb") as fh:
            fh.write(b"1")
    table = list_archive(SourceSpec(uri=str(root)))
    assert names(table) == sorted(odd)
    assert skipped_counts(table) == {"name not UTF-8: rename to read it": 3, "extension not in source.extensions": 1,
                                     "hidden (name starts with '.' or '_')": 1}
    # A folder of such names only: the error says why nothing was found.
    only = tmp_path / "only"
    only.mkdir()
    with open(os.path.join(bytes(only), b"caf\xe9.png"), "wb") as fh:
        fh.write(b"1")
    with pytest.raises(SourceError, match="no files with extensions .*; 1 whose names are not UTF-8 were skipped "
                                          r"\(rename them to read them\)$"):
        list_archive(SourceSpec(uri=str(only)))
    assert all(uri.encode("utf-8") for uri in table.column("uri").to_pylist())  # (raises on a surrogate)


def test_missing_and_empty_locations_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such folder or prefix"):
        list_archive(SourceSpec(uri=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files with extensions"):
        list_archive(SourceSpec(uri=str(tmp_path / "empty")))


@pytest.mark.s3
def test_s3_listing_has_etags(s3, moto_server):
    for key in ["p/1.jpg", "p/sub/2.png", "p/sub/deeper/3.png", "p/readme.md", "q/4.jpg"]:
        s3.pipe(f"archive/{key}", b"abc")
    storage = StorageSpec(endpoint_url=moto_server)
    table = list_archive(SourceSpec(uri="s3://archive/p"), storage)
    assert table.column("uri").to_pylist() == [
        "s3://archive/p/1.jpg", "s3://archive/p/sub/2.png", "s3://archive/p/sub/deeper/3.png"]
    assert all(len(e) == 32 for e in table.column("etag").to_pylist())  # MD5 ETags
    with pytest.raises(SourceError, match="no such folder"):
        list_archive(SourceSpec(uri="s3://archive/nothing-here"), storage)
    with pytest.raises(SourceError, match="cannot list|no such folder"):
        list_archive(SourceSpec(uri="s3://no-such-bucket/x"), storage)
    # What the example may write into (imgclf_ray.training.bundled): nothing there, or a folder
    # made in the S3 console (its zero-byte "digits/" marker) — not a prefix holding any file.
    from imgclf_ray.errors import NothingThere

    s3.pipe("archive/digits/", b"")
    for uri, nothing in (("s3://archive/nothing-here", True), ("s3://archive/digits", True), ("s3://archive/q", False),
                         ("s3://archive/p/*.gif", False)):
        with pytest.raises(SourceError) as refused:
            list_archive(SourceSpec(uri=uri, extensions=[".gif"]), storage)
        assert isinstance(refused.value, NothingThere) == nothing, (uri, refused.value)
    with pytest.raises(SourceError) as refused:  # files, none an image
        list_archive(SourceSpec(uri="s3://archive/p", extensions=[".gif"]), storage)
    assert not isinstance(refused.value, NothingThere) and "4 other files were skipped" in str(refused.value)
