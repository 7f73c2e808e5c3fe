"""How often a run reads what it staged and looks its sink up (the local executor: every task in
this process, so every read is seen): each staged file is read once after it is written — by the
read-back, or with archive-wide checks by their rewrite, whose rows the read-back takes (the
checks' scan reads what the writer kept beside each file instead); the commit counts no file
again; the sink is made once."""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import fsspec.implementations.local as local_fs
import pytest

from imgclf_ray.io import storage

from imgclf_ray.io import sink as sink_module
from imgclf_ray.io.sink import SCAN_SUFFIX, STAGED_SUFFIX
from imgclf_ray.runner.job import run_job
from imgclf_ray.spec import load_spec
from tests.support.jobs import digits_subset


@pytest.fixture
def counted(monkeypatch):
    """Reads of staged files and of scan inputs (by name), Sink objects made, and filesystem
    lookups by caller, while the test runs."""
    reads: collections.Counter = collections.Counter()
    sinks: list = []
    lookups: collections.Counter = collections.Counter()
    open_file, make_sink, protocol = local_fs.LocalFileSystem._open, sink_module.Sink.__init__, storage._protocol

    def _open(self, path, mode="rb", *args, **kwargs):
        if str(path).endswith((STAGED_SUFFIX, SCAN_SUFFIX)) and "r" in mode:
            reads[str(path).rsplit("/", 1)[-1]] += 1
        return open_file(self, path, mode, *args, **kwargs)

    def _sink(self, *args, **kwargs):
        sinks.append(args[0] if args else kwargs.get("uri"))
        make_sink(self, *args, **kwargs)

    def _protocol(uri):  # storage.filesystem's first step: one call per lookup
        caller = traceback.extract_stack(limit=3)[0]
        lookups[(str(uri), f"{Path(caller.filename).name}:{caller.name}")] += 1
        return protocol(uri)

    monkeypatch.setattr(local_fs.LocalFileSystem, "_open", _open)
    monkeypatch.setattr(sink_module.Sink, "__init__", _sink)
    monkeypatch.setattr(storage, "_protocol", _protocol)
    return reads, sinks, lookups


@pytest.mark.parametrize("checks, scanned", [
    ("[blurry, dark]", False),  # row checks: the read-back's one read
    ("[duplicate, near_duplicate, odd_size, label_issue, blurry]", True),  # the rewrite's (the scan's are beside)
])
def test_each_staged_file_is_read_once_and_the_sink_made_once(
        counted, checks, scanned, tiny_model, digits_archive, tmp_path):
    reads, sinks, lookups = counted
    archive = tmp_path / "archive"
    digits_subset(digits_archive, archive, 60)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: counted\nsource: {{uri: {archive}, labels: {{kind: folder}}}}\n"
                   f"model: {{uri: {tiny_model}}}\n"
                   f"sink: {{uri: {tmp_path / 'out'}, max_rows_per_file: 10}}\nincremental: {{}}\n"
                   f"curate: {{checks: {checks}}}\nrun: {{executor: local}}\n")
    result = run_job(load_spec(job), "r1", quiet=True)
    staged = {n: k for n, k in reads.items() if n.endswith(STAGED_SUFFIX)}
    assert result.rows == 30 and len(staged) == 3  # three staged files of 10 rows
    assert set(staged.values()) == {1}, reads
    kept = {n: k for n, k in reads.items() if n.endswith(SCAN_SUFFIX)}
    assert kept == ({f"{n}{SCAN_SUFFIX}": 1 for n in staged} if scanned else {}), reads
    assert sinks == [str(tmp_path / "out")]
    # The driver looks the sink up once (the Sink: locks, format check, staging, commit). The
    # engine's tasks look it up where they run (a Ray worker has no Sink), and the incremental
    # state store, a URI of its own (by default under the sink), is looked up by its functions.
    out = str(tmp_path / "out")
    driver = {caller: n for (uri, caller), n in lookups.items() if uri.startswith((out, f"file://{out}"))
              and not caller.startswith(("archive.py:", "readback.py:", "tables.py:", "state.py:"))}
    assert driver == {"__init__.py:__init__": 1}, lookups
    if scanned:  # each check's facts came from the kept inputs (tests/curation checks their values)
        assert {"size_quartiles", "duplicate_groups", "label_thresholds"} <= set(result.curation)
