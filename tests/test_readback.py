"""What a run reads back from its staged files before it commits (runner.readback): the output
check that refuses a lost or duplicated row, the summary's counts equal to counts over all rows,
the state record streamed part by part — as Ray tasks and as calls in this process; and a Ray
run's driver never reading the staged rows itself."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from imgclf_ray.errors import RunFailed
from imgclf_ray.io.listing import manifest_table
from imgclf_ray.io.schema import image_id
from imgclf_ray.io.tables import count_values
from imgclf_ray.runner.local import LocalTasks
from imgclf_ray.runner.readback import read_back, write_state
from imgclf_ray.runner.result import error_cause
from tests.support.jobs import make_spec


def _tasks(kind: str):
    if kind == "local":
        return LocalTasks()
    from imgclf_ray.runner.build import RayTasks

    return RayTasks()


def _staged(folder, files: list[list[tuple]]) -> list[str]:
    """Staged files of rows (uri, frame, status, error, label, cluster, distance)."""
    folder.mkdir(exist_ok=True)
    out = []
    for i, rows in enumerate(files):
        t = pa.table({
            "image_id": [image_id(r[0], r[1]) for r in rows], "uri": [r[0] for r in rows],
            "frame": pa.array([r[1] for r in rows], pa.int32()), "status": [r[2] for r in rows],
            "error": pa.array([r[3] for r in rows], pa.string()), "label": pa.array([r[4] for r in rows], pa.string()),
            "cluster": pa.array([r[5] for r in rows], pa.int32()),
            "cluster_distance": pa.array([r[6] for r in rows], pa.float32()),
            "is_dark": [r[2] == "ok" and r[4] == "a" for r in rows],
            "size": pa.array([1] * len(rows), pa.int64()), "etag": ["e"] * len(rows),
            "model_id": ["m"] * len(rows), "run_id": ["r"] * len(rows),
        })
        path = folder / f"part-{i}.parquet.staged"
        pq.write_table(t, path)
        out.append(f"file://{path}")
    return out


def _rows(n: int) -> list[tuple]:
    out = []
    for i in range(n):
        uri = f"file:///archive/img-{i:03d}.jpg"
        if i % 5 == 4:
            out.append((uri, 0, "error", f"decode: image is {i}x{i} = {i * i} pixels, over the limit", None, None, None))
        else:
            out.append((uri, 0, "ok", None, "ab"[i % 2], i % 3, float(i % 7) if i % 11 else float("nan")))
    return out


@pytest.mark.parametrize("kind", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_the_output_check_refuses_a_lost_or_a_duplicated_row(kind, request, tmp_path):
    if kind == "ray":
        request.getfixturevalue("ray_session")
    tasks = _tasks(kind)
    spec = make_spec(str(tmp_path), str(tmp_path / "out"), str(tmp_path / "model"))
    rows = _rows(12)
    manifest = manifest_table((r[0], 1, "e") for r in rows)
    whole = _staged(tmp_path / "whole", [rows[:5], rows[5:]])
    read_back(tasks, spec, whole, [tasks.put(manifest)]).check_complete()
    lost = _staged(tmp_path / "lost", [rows[:5], rows[6:]])
    with pytest.raises(RunFailed, match=r"12 images listed, 11 rows written \(11 distinct\)"):
        read_back(tasks, spec, lost, [tasks.put(manifest)]).check_complete()
    twice = _staged(tmp_path / "twice", [rows[:6], rows[5:]])
    with pytest.raises(RunFailed, match=r"12 images listed, 13 rows written \(12 distinct\)"):
        read_back(tasks, spec, twice, [tasks.put(manifest)]).check_complete()
    # decode.frames: all: rows per frame, every listed file present at least once.
    frames = [(r[0], f, *r[2:]) for r in rows[:3] for f in range(2)]
    staged = _staged(tmp_path / "frames", [frames[:3], frames[3:]])
    read_back(tasks, spec, staged, [tasks.put(manifest.slice(0, 3))]).check_complete("all")
    with pytest.raises(RunFailed, match=r"4 files listed, 1 missing from the 6 rows written"):
        read_back(tasks, spec, staged, [tasks.put(manifest.slice(0, 4))]).check_complete("all")


@pytest.mark.ray
def test_the_summary_counts_equal_counts_over_all_rows_and_the_state_streams(ray_session, tmp_path):
    spec = make_spec(str(tmp_path), str(tmp_path / "out"), str(tmp_path / "model"),
                     curate={"checks": ["dark"]}, incremental={})
    rows = _rows(40)
    files = _staged(tmp_path / "staged", [rows[:7], rows[7:8], rows[8:30], rows[30:]])
    back = read_back(_tasks("ray"), spec, files, [_tasks("ray").put(manifest_table((r[0], 1, "e") for r in rows))])
    back.check_complete()
    t = pa.concat_tables([pq.read_table(f.removeprefix("file://")) for f in files])
    s = back.summary
    assert s.rows == 40 and dict(s.by_status) == count_values(t.column("status"))
    ok = t.filter(pc.equal(t.column("status"), "ok"))
    assert dict(s.by_label) == count_values(ok.column("label"))
    errors = t.filter(pc.equal(t.column("status"), "error"))
    assert s.sample_errors == errors.slice(0, 20).select(["uri", "error"]).to_pylist()
    assert dict(s.errors_by_cause) == {error_cause(errors.column("error")[0].as_py()): 8}
    assert dict(s.errors_by_stage) == {"decode": 8} and s.flags["dark"] == pc.sum(t.column("is_dark")).as_py()
    for c in back.cluster_doc():
        members = ok.filter(pc.equal(ok.column("cluster"), c["cluster"]))
        d = members.column("cluster_distance").to_numpy(zero_copy_only=False)
        assert c["size"] == members.num_rows
        assert c["mean_distance"] == pytest.approx(float(np.nanmean(d.astype("float64"))), abs=1e-4)
        order = sorted(range(len(d)), key=lambda i: (d[i] if d[i] == d[i] else float("inf"), i))
        assert c["exemplars"] == [members.column("uri")[i].as_py() for i in order[:5]]
    # The state record: the ok rows, streamed from the scans' parts into one Parquet file.
    state = tmp_path / "state" / "processed-r~a.state"
    assert write_state(str(state), spec.storage, back.state_parts) == 32
    written = pq.read_table(state)
    assert written.column_names == ["uri", "frame", "size", "etag", "model_id", "run_id"]
    assert written.column("uri").to_pylist() == ok.column("uri").to_pylist()


@pytest.mark.ray
def test_a_ray_run_never_reads_its_staged_rows_on_the_driver(ray_session, tiny_model, tmp_path, monkeypatch,
                                                              sample_photo):
    from imgclf_ray.io import tables
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.job import execute
    from tests.corpus import good_files

    for rel, data in good_files(sample_photo, n_digits=3).items():
        (tmp_path / "arch" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "arch" / rel).write_bytes(data)
    spec = make_spec(str(tmp_path / "arch"), str(tmp_path / "out"), tiny_model, incremental={},
                     curate={"checks": ["dark"]})
    manifest = list_archive(spec.source)

    def forbidden(*args, **kwargs):
        raise AssertionError("the driver read the staged rows")
    monkeypatch.setattr(tables, "read_columns", forbidden)
    result = execute(spec, manifest, "r")
    assert result.rows == 6 and result.by_status == {"ok": 6} and "dark" in result.curation_flags
