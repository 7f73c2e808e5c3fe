"""End to end on the session's real local Ray instance: bad input never kills a run, every listed
input is in the committed output exactly once, and the labels equal the model's outside Ray."""

from __future__ import annotations

import glob
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imgclf_ray.errors import RunFailed
from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.sink import committed_files
from imgclf_ray.runner.job import execute
from tests.corpus import bad_files, good_files
from tests.support.jobs import make_spec, read_run

pytestmark = pytest.mark.ray


def reference_probabilities(model_uri: str, path: Path) -> np.ndarray:
    """The same model applied outside Ray with torchvision's own transforms."""
    import torch
    from torchvision import transforms as T

    import torchvision
    from safetensors.torch import load_file

    card = json.loads((Path(model_uri) / "model_card.json").read_text())
    prep = card["preprocess"]
    tf = T.Compose([T.Resize(prep["resize"]), T.CenterCrop(prep["crop"]), T.ToTensor(),
                    T.Normalize(prep["mean"], prep["std"])])
    net = torchvision.models.get_model(card["architecture"], num_classes=len(card["labels"]))
    net.load_state_dict(load_file(str(Path(model_uri) / "model.safetensors")))
    net.eval()
    with torch.inference_mode():
        x = tf(Image.open(io.BytesIO(path.read_bytes())).convert("RGB")).unsqueeze(0)
        return torch.softmax(net(x), 1)[0].numpy()


def test_bad_files_become_error_rows_and_good_ones_match_the_model(ray_session, mixed_archive, tiny_model, tmp_path, sample_photo):
    spec = make_spec(str(mixed_archive), str(tmp_path / "out"), tiny_model)
    manifest = list_archive(spec.source)
    result = execute(spec, manifest, "run1")
    rows = {Path(r["uri"].removeprefix("file://")).relative_to(mixed_archive).as_posix(): r
            for r in read_run(spec.sink.uri, "run1")}

    expected_bad = bad_files(sample_photo)
    good = good_files(sample_photo)
    assert set(rows) == set(expected_bad) | set(good)
    assert len(rows) == manifest.num_rows == result.rows
    for rel, (_, fragment) in expected_bad.items():
        row = rows[rel]
        assert row["status"] == "error" and fragment in row["error"], (rel, row["error"])
        assert row["label"] is None and row["topk_labels"] is None and row["width"] is None
    for rel in good:
        row = rows[rel]
        assert row["status"] == "ok" and row["error"] is None
        ref = reference_probabilities(tiny_model, mixed_archive / rel)
        assert row["label"] == f"class{int(ref.argmax())}"
        assert row["score"] == pytest.approx(float(ref.max()), abs=1e-4)
        assert row["topk_scores"] == sorted(row["topk_scores"], reverse=True) and len(row["topk_labels"]) == 3
        assert row["run_id"] == "run1" and row["model_id"].startswith("sha256:")
    assert rows["good/photo-0.jpg"]["width"] == 320 and rows["good/photo-0.jpg"]["height"] == 240
    assert result.by_status == {"ok": len(good), "error": len(expected_bad)}
    assert result.errors_by_stage == {"decode": len(expected_bad)}

    run_dir = tmp_path / "out" / "run1"
    manifest_json = json.loads((run_dir / "_manifest.json").read_text())
    assert manifest_json["rows"] == len(rows) and (run_dir / "_SUCCESS").exists()
    summary = json.loads((run_dir / "_run_summary.json").read_text())
    assert summary["by_status"] == result.by_status and summary["rows"] == len(rows)
    assert summary["errors"]["by_cause"] == {
        "decode: empty file": 1, "decode: image is NxN = N pixels, over the decompression-bomb limit of N": 1,
        "decode: looks like HTML/XML text, not an image": 1, "decode: not a format Pillow can identify": 1,
        "decode: truncated file": 1}
    stages = summary["stages"]
    assert stages["read"]["rows"] == len(rows) and stages["predict"]["rows"] == len(rows)
    assert stages["decode"]["rows"] == len(rows) and stages["preprocess"]["rows"] == len(good)
    assert summary["spec_digest"].startswith("sha256:") and summary["resources"]["actors"] == 1
    assert not (tmp_path / "out" / "_staging").exists()


def test_file_deleted_after_listing_is_a_read_error(ray_session, tiny_model, tmp_path, sample_photo):
    archive = tmp_path / "arch"
    archive.mkdir()
    for rel, data in good_files(sample_photo, n_digits=3).items():
        (archive / Path(rel).name).write_bytes(data)
    spec = make_spec(str(archive), str(tmp_path / "out"), tiny_model)
    manifest = list_archive(spec.source)
    (archive / "photo-1.jpg").unlink()
    execute(spec, manifest, "r")
    rows = {Path(r["uri"]).name: r for r in read_run(spec.sink.uri, "r")}
    assert len(rows) == manifest.num_rows
    assert rows["photo-1.jpg"]["status"] == "error"
    assert rows["photo-1.jpg"]["error"].startswith("read: FileNotFoundError")
    assert sum(r["status"] == "ok" for r in rows.values()) == manifest.num_rows - 1


def test_error_budget_fails_the_run_and_commits_nothing(ray_session, mixed_archive, tiny_model, tmp_path):
    spec = make_spec(str(mixed_archive), str(tmp_path / "out"), tiny_model, run={"max_error_rate": 0.2})
    with pytest.raises(RunFailed, match=r"5 of 16 images failed \(31.2%\), over the error budget of 20.0%") as refused:
        execute(spec, list_archive(spec.source), "over")
    # What failed is said (nothing else is left to read): the commonest causes, the first file and its error.
    message = str(refused.value)
    assert "; most often: decode: " in message and "; one of them: file://" in message and "\n" not in message
    assert committed_files(spec.sink.uri, "over") == []
    assert glob.glob(str(tmp_path / "out" / "**" / "*"), recursive=True) == []


def test_rerun_replaces_and_readers_see_only_committed_files(ray_session, tiny_model, tmp_path, sample_photo):
    archive = tmp_path / "arch"
    archive.mkdir()
    for rel, data in good_files(sample_photo, n_digits=4).items():
        (archive / Path(rel).name).write_bytes(data)
    out = tmp_path / "out"
    spec = make_spec(str(archive), str(out), tiny_model)
    manifest = list_archive(spec.source)
    execute(spec, manifest, "nightly")
    first = sorted(os.listdir(out / "nightly"))
    # A crashed attempt left staged files behind; readers must not see them, and the next attempt
    # of the run id (which holds its lock, so every other attempt is dead) removes them.
    dead = out / "_staging" / "nightly" / "deadbeef"
    dead.mkdir(parents=True)
    (dead / "x-0.parquet.staged").write_bytes(b"partial")
    execute(spec, manifest, "nightly")
    visible = glob.glob(str(out / "**" / "*.parquet"), recursive=True)
    assert all("/nightly/part-" in v for v in visible)
    rows = pq.read_table(visible).to_pylist()
    assert len(rows) == manifest.num_rows
    assert len({r["image_id"] for r in rows}) == manifest.num_rows
    assert not (out / "_staging").exists() and not (out / "_locks").exists()
    names = sorted(os.listdir(out / "nightly"))
    assert names[:3] == ["_SUCCESS", "_manifest.json", "_run_summary.json"]
    assert re.fullmatch(r"part-00000-[0-9a-f]{12}\.parquet", names[3]) and names[3] not in first


def test_classical_model_through_ray_equals_the_estimator_outside(ray_session, mixed_archive, svm_hog_model, tmp_path, sample_photo):
    """The svm-hog example: features in the CPU tasks, the estimator on CPU actors; same
    probabilities as scikit-image HOG + the skops-loaded estimator applied by hand."""
    import skops.io as sio
    from skimage.feature import hog
    from torchvision import transforms as T

    spec = make_spec(str(mixed_archive), str(tmp_path / "out"), svm_hog_model)
    result = execute(spec, list_archive(spec.source), "svm")
    assert result.plan["gpus_per_actor"] == 0 and result.by_status == {"ok": 11, "error": 5}
    rows = {Path(r["uri"].removeprefix("file://")).relative_to(mixed_archive).as_posix(): r
            for r in read_run(spec.sink.uri, "svm")}
    blob = (Path(svm_hog_model) / "model.skops").read_bytes()
    estimator = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    tf = T.Compose([T.Resize(32), T.CenterCrop(32)])
    for rel in good_files(sample_photo):
        grey = np.asarray(tf(Image.open(mixed_archive / rel).convert("RGB")).convert("L"), dtype=np.float32) / 255
        features = hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
        ref = estimator.predict_proba(features[None].astype(np.float32))[0]
        row = rows[rel]
        assert row["label"] == str(estimator.classes_[ref.argmax()])
        assert row["score"] == pytest.approx(float(ref.max()), abs=1e-5)
    for rel, name in [(r, r.split("-")[-1].removesuffix(".png")) for r in good_files(sample_photo) if "digit" in r]:
        assert rows[rel]["label"] == name  # the digits are recognised
    assert result.stages["features"]["rows"] == 11


def test_the_driver_reads_the_model_card_once(ray_session, tiny_model, tmp_path, sample_photo, monkeypatch):
    """The card is read once before a run (the plan is made from it); the actors load their own."""
    from fsspec.implementations.local import LocalFileSystem

    from imgclf_ray.runner.job import run_job

    archive = tmp_path / "archive"
    archive.mkdir()
    for name, data in list(good_files(sample_photo, n_digits=2).items())[:2]:
        (archive / Path(name).name).write_bytes(data)
    reads = []
    real = LocalFileSystem.cat_file

    def counting(self, path, *args, **kwargs):
        if str(path).endswith("model_card.json"):
            reads.append(path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "cat_file", counting)
    result = run_job(make_spec(str(archive), str(tmp_path / "out"), tiny_model), "once", quiet=True)
    assert result.rows == 2 and len(reads) == 1, reads


def test_the_summary_shows_a_file_s_identical_errors_once_and_counts_its_files():
    """A file's frames past decode.max_seconds were five identical example lines; "1 files"."""
    from imgclf_ray.report.summary import format_summary
    from imgclf_ray.runner.result import RunResult

    same = {"uri": "file:///a/anim.gif", "error": "decode: the file's frames took more than decode.max_seconds"}
    other = {"uri": "file:///a/b.png", "error": "decode: empty file (0 bytes)"}
    result = RunResult("r", "out", 9, {"ok": 2, "error": 7}, {"cat": 2}, {"decode": 7}, [same] * 6 + [other],
                       1.0, 9.0, None, files=1)
    text = format_summary(result)
    assert text.startswith("run r: 9 images from 1 file in ")
    assert text.count("anim.gif") == 1 and "b.png: decode: empty file" in text


def test_a_file_name_with_a_newline_or_terminal_escape_stays_inside_its_line(tmp_path, tiny_model):
    """The budget refusal and the summary name failing files: a name is the user's, any characters."""
    from imgclf_ray.report.summary import format_summary
    from imgclf_ray.runner.checks import check_budget
    from imgclf_ray.runner.result import RunResult

    hostile = "file:///archive/café\nerror: fake\x1b[31m.png"
    result = RunResult("r", "out", 2, {"ok": 1, "error": 1}, {"cat": 1}, {"decode": 1},
                       [{"uri": hostile, "error": "decode: cannot identify image file\r(OSError)"}], 1.0, 2.0, None,
                       errors_by_cause={"decode: cannot identify image file": 1})
    spec = make_spec(str(tmp_path), str(tmp_path / "out"), tiny_model, run={"max_error_rate": 0.1})
    with pytest.raises(RunFailed) as refused:
        check_budget(spec, result)
    for text in (str(refused.value), format_summary(result)):
        assert "\x1b" not in text and "\r" not in text and "café?error: fake?[31m.png" in text
    assert "\n" not in str(refused.value)
