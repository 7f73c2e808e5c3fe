"""How often a run reads what it staged and looks its sink up (the local executor: every task in
this process, so every read is seen): the read-back reads each staged file once, or takes the
rows the archive-wide pass rewrote from that pass; the commit counts no file again; the sink is
made once."""

from __future__ import annotations

import collections

import fsspec.implementations.local as local_fs
import pytest

from imgclf_ray.io import sink as sink_module
from imgclf_ray.io.sink import STAGED_SUFFIX
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import load_spec
from tests.support.jobs import digits_subset


@pytest.fixture
def counted(monkeypatch):
    """Reads of staged files (by name) and Sink objects made, while the test runs."""
    reads: collections.Counter = collections.Counter()
    sinks: list = []
    open_file, make_sink = local_fs.LocalFileSystem._open, sink_module.Sink.__init__

    def _open(self, path, mode="rb", *args, **kwargs):
        if str(path).endswith(STAGED_SUFFIX) and "r" in mode:
            reads[str(path).rsplit("/", 1)[-1]] += 1
        return open_file(self, path, mode, *args, **kwargs)

    def _sink(self, *args, **kwargs):
        sinks.append(args[0] if args else kwargs.get("uri"))
        make_sink(self, *args, **kwargs)

    monkeypatch.setattr(local_fs.LocalFileSystem, "_open", _open)
    monkeypatch.setattr(sink_module.Sink, "__init__", _sink)
    return reads, sinks


@pytest.mark.parametrize("checks, reads_per_file", [
    ("[blurry, dark]", 1),  # row checks: the read-back's one read
    ("[duplicate, near_duplicate, odd_size, blurry]", 2),  # the archive scan's, then the rewrite's
])
def test_each_staged_file_is_read_once_by_the_read_back_and_the_sink_made_once(
        counted, checks, reads_per_file, tiny_model, digits_archive, tmp_path):
    reads, sinks = counted
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 60)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: counted\nsource: {{uri: {archive}}}\nmodel: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}, max_rows_per_file: 10}}\nincremental: {{}}\n"
                   f"curate: {{checks: {checks}}}\nrun: {{executor: local}}\n")
    result = run_job(load_spec(job), "r1", quiet=True)
    assert result.rows == 30 and len(reads) == 3  # three staged files of 10 rows
    assert set(reads.values()) == {reads_per_file}, reads
    assert sinks == [str(tmp_path / "out")]
