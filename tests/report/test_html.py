"""The HTML report, looked at in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from imgclf_ray.cli import main
from imgclf_ray.io import sink
from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.report.html import load_run, render_report
from tests.corpus import bad_files, digit_images, png_bytes
from tests.support.jobs import make_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars"]


@pytest.fixture(scope="module")
def labelled_run(ray_session, tmp_path_factory, tiny_model, sample_photo):
    """A committed run over a folder-per-class archive: 12 digits in 3 folders plus 2 bad files."""
    root = tmp_path_factory.mktemp("labelled")
    for i, (name, img) in enumerate(digit_images(12)):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.png").write_bytes(png_bytes(img))
    (root / "class0" / "page.jpg").write_bytes(bad_files(sample_photo)["bad/page.jpg"][0])
    (root / "class1" / "empty.jpg").write_bytes(b"")
    out = tmp_path_factory.mktemp("out")
    spec = make_spec(str(root), str(out), tiny_model)
    execute(spec, list_archive(spec.source), "labelled")
    return out


def _browser(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={cwd / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.ray
@pytest.mark.slow
def test_report_in_a_headless_browser(labelled_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: `make test` installs it")
        pytest.skip("chromium not installed (make test installs it)")
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(labelled_run), "-o", str(page), "--truth-from-folder"])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?https?://""", text), "report must be self-contained"

    shot = tmp_path / "shot.png"
    _browser("--window-size=1280,2400", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280) and pixels.std() > 10  # something is drawn, not a blank page

    dom = _browser("--dump-dom", page.as_uri(), cwd=tmp_path).stdout
    for section in ("run", "status", "classes", "confidence", "exemplars", "confusion", "errors"):
        assert f'id="{section}"' in dom, section
    assert re.search(r'id="kpi-images"><b>14</b>', dom)
    assert re.search(r'id="kpi-errors"><b>2</b>', dom)
    assert "Errors (2)" in dom and "decode: looks like HTML" in dom and "decode: empty file" in dom
    assert len(re.findall(r'<img class="thumb" src="data:image/jpeg;base64,', dom)) >= 12
    assert len(re.findall(r'<img class="chart" src="data:image/png;base64,', dom)) == 3
    assert re.search(r'id="accuracy">accuracy <b>0\.\d{4}</b>', dom)


@pytest.mark.ray
def test_cluster_and_curation_sections_appear_with_their_columns(labelled_run, tmp_path):
    """Runs whose rows carry cluster / is_<check> columns get those sections with thumbnails."""
    run = load_run(str(labelled_run / "labelled"))
    t = run.table
    n = t.num_rows
    t = t.set_column(t.schema.get_field_index("cluster"), "cluster", pa.array(np.arange(n) % 2, pa.int32()))
    t = t.set_column(t.schema.get_field_index("is_dark"), "is_dark", pa.array([i < 3 for i in range(n)]))
    staging = sink.Staging.new(str(tmp_path), "curated")
    Path(staging.uri).mkdir(parents=True)
    pq.write_table(t, Path(staging.uri) / "x-0.parquet.staged")
    sink.commit(staging, {"job": "t"})
    html = render_report(load_run(str(tmp_path / "curated")))
    assert 'id="clusters"' in html and "cluster 0 (7)" in html and "cluster 1 (7)" in html
    assert 'id="curation"' in html and "<td>dark</td><td>3</td>" in html
    assert "<td>blurry</td>" not in html  # checks the run did not do (all-null columns) are left out
    assert 'id="confusion"' not in html  # no true labels asked for


@pytest.mark.ray
def test_runs_lists_committed_runs_only(labelled_run):
    result = CliRunner().invoke(main, ["runs", str(labelled_run)])
    assert result.exit_code == 0
    assert re.search(r"labelled\s+\S+\s+14\s+12\s+2\s+sha256:", result.output)
    missing = CliRunner().invoke(main, ["report", str(labelled_run), "--run", "nope"])
    assert missing.exit_code == 1 and "no run 'nope' (`imgclf runs " in missing.output


def test_a_thumbnail_carries_the_pixels_and_nothing_else_of_the_file(tmp_path):
    """A JPEG's comment, a PNG's text chunks, a GIF's comment were written into the report's
    thumbnails word for word (Pillow's JPEG writer takes the comment from the decoded image): a
    patient's name in a report mailed round. Every format's text, EXIF, ICC and XMP carriers hold a
    marker; no thumbnail holds it, each still shows the picture, and a GIF comment too long for a
    JPEG (it failed the whole report) is no matter."""
    import base64
    import io

    from PIL import PngImagePlugin, TiffImagePlugin

    from imgclf_ray.report.html import thumbnail

    marker = "PATIENT_7731_DOE^JANE"
    exif = Image.Exif()
    exif[0x010E], exif[0x013B], exif[0x9286] = marker, marker, marker  # description, artist, user comment
    icc = bytes(128) + marker.encode() * 4
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", marker)
    text.add_itxt("Author", marker)
    text.add_text("Patient", marker, zip=True)
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[270] = marker
    picture = Image.new("RGB", (80, 60), (10, 120, 200))
    made = {"a.jpg": (picture, {"comment": marker, "exif": exif.tobytes(), "icc_profile": icc}),
            "cmyk.jpg": (picture.convert("CMYK"), {"comment": marker}),
            "a.png": (picture, {"pnginfo": text, "exif": exif.tobytes(), "icc_profile": icc}),
            "deep.png": (picture.convert("I;16"), {"pnginfo": text}),
            "a.gif": (picture.convert("P"), {"comment": marker}),
            "long.gif": (picture.convert("P"), {"comment": marker * 4000}),
            "a.webp": (picture, {"exif": exif.tobytes(), "icc_profile": icc, "xmp": marker.encode()}),
            "a.tif": (picture, {"tiffinfo": tags, "icc_profile": icc})}
    for name, (img, extra) in made.items():
        img.save(tmp_path / name, **extra)
        assert marker.encode() in (tmp_path / name).read_bytes(), name
        uri = thumbnail(str(tmp_path / name))
        assert uri is not None and uri.startswith("data:image/jpeg;base64,"), name
        jpeg = base64.b64decode(uri.split(",", 1)[1])
        assert marker.encode() not in jpeg and marker.encode("utf-16-be") not in jpeg, name
        shown = Image.open(io.BytesIO(jpeg))
        assert shown.size == (80, 60) and not shown.info.get("comment"), name
        if name not in ("cmyk.jpg", "deep.png", "a.gif", "long.gif"):  # (those change colour on the way)
            assert np.abs(np.asarray(shown.convert("RGB"), float).mean((0, 1)) - (10, 120, 200)).max() < 6, name
