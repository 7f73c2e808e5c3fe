"""Archive scale: listing and incremental selection as Ray tasks (the driver holds references and
counts, never the manifest), `imgclf run --dry-run`, and S3 Inventory as the listing of a nightly job."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from PIL import Image

from imgclf_ray.cli import main
from tests.io.test_inventory import write_inventory
from tests.support.jobs import make_spec

pytestmark = pytest.mark.ray


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (value, 255 - value, value // 2)).save(buf, format="PNG")
    return buf.getvalue()


def _archive(root, names):
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(10 * i))


def test_dry_run_selects_as_the_run_does_and_writes_nothing(ray_session, tiny_model, tmp_path, monkeypatch):
    import yaml

    from imgclf_ray.api import run
    from imgclf_ray.runner import ray_setup

    archive = tmp_path / "archive"
    _archive(archive, ["top.png", "a/1.png", "a/2.png", "b/1.png", "b/deep/2.png", "c/1.png", "c/_skip.png"])
    job = {"name": "nightly", "source": {"uri": str(archive)}, "model": {"uri": tiny_model},
           "sink": {"uri": str(tmp_path / "out")}, "incremental": {}, "run": {"executor": "ray"}}
    run(job, run_id="n1")
    _archive(archive, ["a/3.png", "d/1.png"])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    for executor in ("ray", "local"):
        if executor == "local":  # a local run's dry run starts no Ray, as the run does not
            monkeypatch.setattr(ray_setup, "ensure_ray", lambda *a, **k: pytest.fail("the dry run started Ray"))
        result = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--dry-run", "--run-id", "n2",
                                           "--set", f"run.executor={executor}"])
        assert result.exit_code == 0, result.output
        assert "listing : 8 files" in result.output and "(1 listing task," in result.output  # as the run lists
        assert "select  : 2 new, 0 changed, 0 for a new model, 6 already processed" in result.output
        assert "process : 2 files" in result.output and "1 (hidden" in result.output
        plan = next(line for line in result.output.splitlines() if line.startswith("  plan"))
        assert ("decode worker process" in plan) == (executor == "local") and ("predictor actor" in plan) == (executor == "ray")
        # The runtime model.runtime: auto would take (2 images: PyTorch), said before any run.
        assert "  runtime : torch (auto: 2 files, fewer than 1000)" in result.output.splitlines()
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before  # nothing written


def test_listing_tasks_keep_the_manifest_in_the_object_store(ray_session, tiny_model, tmp_path):
    import ray

    from imgclf_ray.runner.selection import list_blocks

    archive = tmp_path / "archive"
    _archive(archive, ["top.png", "a/1.png", "a/2.png", "b/1.png", "b/deep/2.png", "c/1.png", "a/3.png", "d/1.png"])
    blocks = list_blocks(make_spec(str(archive), str(tmp_path / "x"), tiny_model).source)
    assert blocks.rows == 8 and all(isinstance(r, ray.ObjectRef) for r in blocks.refs)


def test_an_unreadable_inventory_file_is_one_error_line(ray_session, tmp_path):
    import yaml

    manifest = write_inventory(tmp_path, "Parquet")
    (tmp_path / "inv/photos/daily/data/2026-11-30T01-00Z.parquet").write_bytes(b"not parquet at all")
    job = {"name": "inv", "source": {"uri": "s3://photos/cams", "inventory": manifest},
           "curate": {"checks": ["dark"]}, "sink": {"uri": str(tmp_path / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--dry-run"])
    assert result.exit_code != 0
    assert result.output.startswith("error: source.inventory data file ") and "not a readable Parquet" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.s3
def test_nightly_job_listed_by_s3_inventory_processes_only_new_keys(ray_session, s3, moto_server, tiny_model, tmp_path,
                                                                   monkeypatch):
    """Night by night, only the new keys; the driver never holds the rows: the selected blocks go to
    Ray Data and to the output's read-back as object references (the in-process table of the
    blocks and the reading of staged rows are forbidden here)."""
    from imgclf_ray.api import run
    from imgclf_ray.io import tables
    from imgclf_ray.runner.selection import Blocks

    def forbidden(*args, **kwargs):
        raise AssertionError("the driver held the run's rows")
    monkeypatch.setattr(Blocks, "table", forbidden)
    monkeypatch.setattr(tables, "read_columns", forbidden)

    keys = ["cams/1.png", "cams/2.png", "cams/sub/3.png", "cams/notes.txt"]
    data = {k: _png(20 * i) for i, k in enumerate(keys)}
    for k, v in data.items():
        s3.pipe(f"archive/{k}", v)
    s3.mkdir("inventories")

    def inventory(night: str, names: list[str]) -> str:
        local = tmp_path / night
        write_inventory(local, "CSV", keys=names, versions=False, name=night, bucket="archive",
                        sizes=[len(data[k]) for k in names])
        s3.put(str(local / "inv"), "inventories/", recursive=True)
        return f"s3://inventories/inv/photos/daily/{night}/manifest.json"

    # Folder labels and a clusterer fitted on a sample: both taken from the blocks by tasks.
    job = {"name": "cams", "source": {"uri": "s3://archive/cams", "inventory": inventory("2026-11-29T01-00Z", keys),
                                      "labels": {"kind": "folder"}},
           "model": {"uri": tiny_model}, "sink": {"uri": "s3://output/labels"}, "incremental": {},
           "cluster": {"algorithm": "kmeans", "params": {"n_clusters": 2}, "sample": 2},
           "storage": {"endpoint_url": moto_server}, "resources": {"decode_batch_size": 4, "batch_size": 8}}
    first = run(job, run_id="n1")
    assert first.by_status == {"ok": 3} and first.files == 3
    assert first.clusterer["fitted_rows"] == 2 and sum(first.by_cluster.values()) == 3
    data["cams/4.png"] = _png(200)
    s3.pipe("archive/cams/4.png", data["cams/4.png"])
    job["source"]["inventory"] = inventory("2026-11-30T01-00Z", keys + ["cams/4.png"])
    second = run(job, run_id="n2")
    assert second.by_status == {"ok": 1}
    monkeypatch.undo()  # the reading below is the test's own
    from imgclf_ray.api import read_run
    from imgclf_ray.spec import StorageSpec

    rows = read_run("s3://output/labels", "n2", storage=StorageSpec(endpoint_url=moto_server)).to_pylist()
    assert [r["uri"] for r in rows] == ["s3://archive/cams/4.png"]
    night1 = read_run("s3://output/labels", "n1", storage=StorageSpec(endpoint_url=moto_server)).to_pylist()
    assert {r["uri"].rsplit("/", 2)[-2]: r["true_label"] for r in night1} == {"cams": None, "sub": "sub"}


@pytest.mark.ray
def test_the_selection_is_the_same_whatever_the_number_of_partitions(ray_session, tmp_path):
    """One partition (a 1-CPU cluster) and several give the same rows to process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgclf_ray.runner.selection import list_blocks, select_blocks
    from imgclf_ray.spec import SourceSpec, StorageSpec

    for folder in ("a", "b"):
        (tmp_path / "arch" / folder).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "arch" / folder / f"{i}.png").write_bytes(b"x" * (i + 1))
    listed = list_blocks(SourceSpec(uri=str(tmp_path / "arch")))
    rows = listed.table()
    done = rows.filter(pa.array(["/a/" in u for u in rows.column("uri").to_pylist()]))
    record = tmp_path / "processed-n1~x.state"
    pq.write_table(pa.table({"uri": done.column("uri"), "frame": pa.array([0] * done.num_rows, pa.int32()),
                             "size": done.column("size"), "etag": done.column("etag"),
                             "model_id": ["m"] * done.num_rows, "run_id": ["n1"] * done.num_rows}), record)
    picked = {}
    for partitions in (1, 3):
        todo, why = select_blocks(listed, [str(record)], "m", True, StorageSpec(), partitions=partitions)
        picked[partitions] = (sorted(todo.table().column("uri").to_pylist()), why)
    assert picked[1] == picked[3]
    assert len(picked[1][0]) == 5 and picked[1][1] == {"new": 5, "changed": 0, "model_changed": 0, "other_model": 0,
                                                       "unchanged": 5}
