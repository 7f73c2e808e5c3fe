"""Clustering and curation through the real pipeline on the session's local Ray, on real photos
and digits with known answers: flags, duplicate groups, odd sizes, label issues, cluster recovery,
and the nightly reuse of a fitted clusterer."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from imgclf_ray.cli import main
from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.labels import attach_true_labels
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
from tests.corpus import digit_images, jpeg_bytes, png_bytes
from tests.curation.photos import blurred, darkened, photos, resized
from tests.support.jobs import read_run

pytestmark = pytest.mark.ray


def _spec(source: str, sink: str, labels: bool = False, **sections):
    data = {"name": "cur", "source": {"uri": source, **({"labels": {"kind": "folder"}} if labels else {})},
            "sink": {"uri": sink}, "resources": {"decode_batch_size": 8, "batch_size": 16}, **sections}
    return parse_spec(data, "<test>")


def _run(spec, run_id: str):
    manifest = attach_true_labels(list_archive(spec.source, spec.storage), spec.source, spec.storage)
    return execute(spec, manifest, run_id)


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["uri"]).name: r for r in rows}


@pytest.fixture(scope="module")
def album_archive(tmp_path_factory):
    """Seven photographs (a-), blurred (b-), darkened (c-), resized + re-encoded (d-) copies, the
    same pixels in a PNG (e-), and two odd shapes: a long strip and a thumbnail."""
    root = tmp_path_factory.mktemp("album")
    album = photos()
    for name, img in album.items():
        original = jpeg_bytes(img, quality=95)
        (root / f"a-{name}.jpg").write_bytes(original)
        (root / f"b-{name}-blurred.jpg").write_bytes(jpeg_bytes(blurred(img), quality=95))
        (root / f"c-{name}-dark.jpg").write_bytes(jpeg_bytes(darkened(img), quality=95))
        (root / f"d-{name}-small.jpg").write_bytes(jpeg_bytes(resized(img, 0.9), quality=60))
        (root / f"e-{name}-same-pixels.png").write_bytes(png_bytes(Image.open(io.BytesIO(original))))
    wide = album["coffee"].resize((1200, 100))
    (root / "z-strip.jpg").write_bytes(jpeg_bytes(wide))
    (root / "z-thumb.jpg").write_bytes(jpeg_bytes(album["rocket"].resize((40, 30))))
    return root, sorted(album)


def test_curate_flags_blur_dark_duplicates_and_odd_shapes(ray_session, album_archive, tmp_path):
    root, names = album_archive
    job = tmp_path / "job.yaml"
    job.write_text(f"name: album\nsource: {{uri: {root}}}\nsink: {{uri: {tmp_path / 'out'}}}\n"
                   "resources: {decode_batch_size: 8}\ncurate: {near_duplicate_radius: 6}\n")
    result = CliRunner().invoke(main, ["curate", str(job), "--run-id", "c1", "-q"])
    assert result.exit_code == 0, result.output
    assert "model  : - (no model)" in result.output
    rows = _by_name(read_run(str(tmp_path / "out"), "c1"))
    assert len(rows) == 7 * 5 + 2 and all(r["status"] == "ok" for r in rows.values())
    assert all(r["label"] is None and r["model_id"] is None for r in rows.values())
    assert all(r["is_blurry"] is not None for r in rows.values())  # cleanvision's rule: tests/curation/test_cleanvision.py
    family = {n: r for n, r in rows.items() if not n.startswith("z-")}
    assert {n for n, r in family.items() if r["is_dark"]} == {f"c-{p}-dark.jpg" for p in names}
    # Exact duplicates: the PNG holding the JPEG's decoded pixels; every member flagged (as
    # cleanvision does), the group named by its first image by uri.
    dups = {n: r for n, r in rows.items() if r["duplicate_group"] is not None}
    assert set(dups) == {f"a-{p}.jpg" for p in names} | {f"e-{p}-same-pixels.png" for p in names}
    for p in names:
        original = rows[f"a-{p}.jpg"]
        assert original["duplicate_group"] == original["image_id"] and original["is_duplicate"]
        assert rows[f"e-{p}-same-pixels.png"]["duplicate_group"] == original["image_id"]
        assert rows[f"e-{p}-same-pixels.png"]["is_duplicate"]
        # Near duplicates within 6 bits: the resized, re-encoded copy joins its original's group ...
        assert rows[f"d-{p}-small.jpg"]["near_duplicate_group"] == original["image_id"]
        assert rows[f"d-{p}-small.jpg"]["is_near_duplicate"]
    # ... and no group ever holds two different photographs.
    groups: dict[str, set[str]] = {}
    for n, r in family.items():
        if r["near_duplicate_group"]:
            groups.setdefault(r["near_duplicate_group"], set()).add(n.split(".")[0].split("-")[1])
    assert len(groups) == len(names) and all(len(v) == 1 for v in groups.values())
    assert {n for n, r in rows.items() if r["is_odd_aspect"]} == {"z-strip.jpg"}
    # cleanvision's IQR rule: nearly every image is 400x300, so the IQR is 0 and any other size is odd.
    assert {n for n, r in rows.items() if r["is_odd_size"]} == {"z-thumb.jpg"} | {f"d-{p}-small.jpg" for p in names}
    assert rows["z-strip.jpg"]["aspect_score"] == pytest.approx(100 / 1200) and rows["a-coffee.jpg"]["size_score"] == 1
    summary = json.loads((tmp_path / "out" / "c1" / "_run_summary.json").read_text())
    flags = summary["curation_flags"]
    assert flags["duplicate"] == 14 and flags["odd_size"] == 8 and flags["odd_aspect"] == 1
    assert "outlier" not in flags and "label_issue" not in flags  # no clusterer, no model
    assert summary["curation"]["duplicate_groups"] == 7
    assert summary["curation"]["size_quartiles"] == [pytest.approx(346.41, abs=0.01)] * 2
    # A run without a model is listed and reported like any other.
    runs = CliRunner().invoke(main, ["runs", str(tmp_path / "out")])
    assert runs.exit_code == 0 and re.search(r"^c1\s.*\s37\s+37\s+0\s+-$", runs.output, re.M), runs.output
    from imgclf_ray.report.html import load_run, render_report

    html = render_report(load_run(str(tmp_path / "out" / "c1")))
    assert 'id="curation"' in html and 'id="classes"' not in html and "<td>duplicate</td><td>14</td>" in html


@pytest.fixture(scope="module")
def two_families(tmp_path_factory):
    """30 handwritten digits and 30 patches of colourful photographs: two families."""
    root = tmp_path_factory.mktemp("families")
    (root / "digits").mkdir()
    (root / "photos").mkdir()
    for name, img in digit_images(30):
        (root / "digits" / f"{name}.png").write_bytes(png_bytes(img.resize((32, 32))))
    rng = np.random.default_rng(0)
    colourful = ("coffee", "chelsea", "china", "flower", "immunohistochemistry")
    album = [img for name, img in photos().items() if name in colourful]
    for i in range(30):
        img = album[i % len(album)]
        x, y = rng.integers(0, img.width - 64), rng.integers(0, img.height - 64)
        (root / "photos" / f"patch-{i:02d}.png").write_bytes(png_bytes(img.crop((x, y, x + 64, y + 64))))
    return root


CLUSTER = {"algorithm": "kmeans", "params": {"n_clusters": 2}, "features": {"name": "color_histogram"},
           "preprocess": {"resize": 32}, "embedding": True}


def test_two_families_recovered_and_the_clusterer_is_reused_night_after_night(ray_session, two_families, tmp_path):
    out = str(tmp_path / "out")
    spec = _spec(str(two_families), out, cluster=CLUSTER, curate={"checks": ["outlier"]})
    first = _run(spec, "night-1")
    rows = read_run(out, "night-1")
    family = [Path(r["uri"]).parent.name for r in rows]
    assert adjusted_rand_score(family, [r["cluster"] for r in rows]) >= 0.9
    assert all(len(r["embedding"]) == 48 for r in rows)  # 3 HSV channels x 16 bins
    clusters = json.loads((tmp_path / "out" / "night-1" / "_clusters.json").read_text())
    assert sorted(c["size"] for c in clusters["clusters"]) == [30, 30]
    assert all(len(c["exemplars"]) == 5 for c in clusters["clusters"])
    assert first.by_cluster == {"0": 30, "1": 30} and first.clusterer["fitted_rows"] == 60
    artifact = tmp_path / "out" / "_clusterers" / "cur"
    blob = (artifact / "clusterer.safetensors").read_bytes()

    # The next night reuses the artifact: identical ids, nothing refitted.
    odd = two_families / "photos" / "solid-green.png"
    odd.write_bytes(png_bytes(Image.new("RGB", (64, 64), (0, 255, 0))))
    try:
        second = _run(spec, "night-2")
    finally:
        odd.unlink()
    again = {r["uri"]: r for r in read_run(out, "night-2")}
    assert all(again[r["uri"]]["cluster"] == r["cluster"] for r in rows)
    assert second.clusterer["clusterer_id"] == first.clusterer["clusterer_id"]
    assert (artifact / "clusterer.safetensors").read_bytes() == blob
    # An image unlike anything in the reference sample is an outlier; the families mostly are not.
    noise = [r for u, r in again.items() if u.endswith("solid-green.png")][0]
    assert noise["is_outlier"] and noise["outlier_score"] > 0
    assert sum(r["is_outlier"] for r in again.values()) <= 1 + 3

    # Other settings against the saved clusterer: refused until refit is asked for.
    changed = _spec(str(two_families), out, cluster={**CLUSTER, "params": {"n_clusters": 3}})
    with pytest.raises(Exception, match="cluster.refit: true"):
        _run(changed, "night-3")
    refit = _spec(str(two_families), out, cluster={**CLUSTER, "params": {"n_clusters": 3}, "refit": True})
    assert len(_run(refit, "night-3").by_cluster) == 3


def test_dbscan_through_ray_follows_its_assignment_rule(ray_session, two_families, tmp_path):
    from imgclf_ray import clustering

    out = str(tmp_path / "out")
    spec = _spec(str(two_families), out, cluster={**CLUSTER, "algorithm": "dbscan", "pca": 4,
                                                  "params": {"eps": 0.2, "min_samples": 4}})
    _run(spec, "d1")
    rows = read_run(out, "d1")
    fitted = clustering.load(str(tmp_path / "out" / "_clusterers" / "cur"))
    expected, distance, _ = fitted.assign(np.array([r["embedding"] for r in rows]))
    assert [r["cluster"] for r in rows] == expected.tolist()
    np.testing.assert_allclose([r["cluster_distance"] for r in rows], distance, rtol=1e-4, atol=1e-5)
    assert len(set(expected.tolist()) - {-1}) >= 2


@pytest.mark.slow
def test_flipped_labels_are_found_by_confident_learning(ray_session, digits_archive, svm_hog_model, tmp_path):
    """20 images per digit, 10 of them moved into the wrong class folder: the model (never trained
    on the wrong labels) disagrees confidently with exactly those."""
    root = tmp_path / "noisy"
    flipped = set()
    for digit in range(10):
        files = sorted((Path(digits_archive) / str(digit)).glob("*.png"))[-20:]
        for i, f in enumerate(files):
            label = (digit + 3) % 10 if i == 0 else digit
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / str(label) / f.name)
            if label != digit:
                flipped.add(f.name)
    spec = _spec(str(root), str(tmp_path / "out"), labels=True, model={"uri": svm_hog_model},
                 curate={"checks": ["label_issue"]})
    result = _run(spec, "l1")
    rows = read_run(str(tmp_path / "out"), "l1")
    issues = {Path(r["uri"]).name for r in rows if r["is_label_issue"]}
    assert len(issues & flipped) >= 9 and len(issues - flipped) <= 4
    quality = {Path(r["uri"]).name: r["label_quality"] for r in rows}
    assert max(quality[f] for f in flipped) < np.median(list(quality.values()))
    assert result.curation["label_thresholds"].keys() == {str(d) for d in range(10)}
    assert all(r["is_blurry"] is None for r in rows)  # only the checks asked for set flags


def test_gmm_on_cnn_embeddings_gives_probabilities(ray_session, two_families, tiny_model, tmp_path):
    """CNN embeddings (a torch artifact's pooled features) -> PCA -> Gaussian mixture."""
    out = str(tmp_path / "out")
    spec = _spec(str(two_families), out, cluster={
        "algorithm": "gmm", "params": {"n_components": 2}, "pca": 8, "embedding": True,
        "features": {"name": "cnn_embedding", "params": {"backbone": tiny_model}},
        "preprocess": {"resize": 36, "crop": 32}})
    result = _run(spec, "g1")
    rows = read_run(out, "g1")
    assert sum(result.by_cluster.values()) == 60 and len(rows[0]["embedding"]) == 8
    assert all(0.5 <= r["cluster_probability"] <= 1.0 for r in rows)  # the most probable of two
