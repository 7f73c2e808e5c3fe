"""Curation equals the references: imgclf's flags against cleanvision's on the same real photos and
their altered copies (through a real run), and label issues against cleanlab's confident learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.sink import committed_files
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import parse_spec
from tests.corpus import jpeg_bytes, png_bytes
from tests.curation.photos import blurred, darkened, photos, resized

# cleanvision issue -> imgclf flag column
PAIRS = {"dark": "is_dark", "light": "is_overexposed", "blurry": "is_blurry", "grayscale": "is_grayscale",
         "low_information": "is_low_information", "odd_aspect_ratio": "is_odd_aspect", "odd_size": "is_odd_size",
         "exact_duplicates": "is_duplicate", "near_duplicates": "is_near_duplicate"}


def _copies(root: Path) -> None:
    """scikit-image's and scikit-learn's photos, and darkened, brightened, blurred, greyscaled,
    resized, low-information, odd-shaped and duplicated copies of them, as JPEG and PNG files."""
    album = photos()
    for name, img in album.items():
        original = jpeg_bytes(img, quality=95)
        (root / f"a-{name}.jpg").write_bytes(original)
        (root / f"b-{name}-blurred.jpg").write_bytes(jpeg_bytes(blurred(img), quality=95))
        (root / f"c-{name}-dark.jpg").write_bytes(jpeg_bytes(darkened(img), quality=95))
        (root / f"d-{name}-light.png").write_bytes(png_bytes(Image.eval(img, lambda v: min(255, 200 + v // 4))))
        (root / f"e-{name}-grey.png").write_bytes(png_bytes(img.convert("L")))
        (root / f"f-{name}-small.jpg").write_bytes(jpeg_bytes(resized(img, 0.5), quality=80))
        (root / f"g-{name}-copy.jpg").write_bytes(original)  # an exact duplicate
        (root / f"h-{name}-soft.png").write_bytes(png_bytes(img.filter(ImageFilter.GaussianBlur(1))))
    (root / "z-strip.jpg").write_bytes(jpeg_bytes(album["coffee"].resize((1200, 100))))
    (root / "z-tall.png").write_bytes(png_bytes(album["rocket"].resize((60, 400))))
    (root / "z-thumb.jpg").write_bytes(jpeg_bytes(album["rocket"].resize((40, 30))))
    (root / "z-poster.png").write_bytes(png_bytes(album["china"].resize((2400, 1800))))
    (root / "z-flat.png").write_bytes(png_bytes(Image.new("RGB", (400, 300), (90, 120, 40))))
    (root / "z-two-tone.png").write_bytes(png_bytes(Image.new("L", (400, 300), 30).crop((0, 0, 400, 300))))


@pytest.mark.ray
@pytest.mark.slow
def test_flags_agree_with_cleanvision_on_real_photos_and_altered_copies(ray_session, tmp_path):
    import cleanvision
    root = tmp_path / "album"
    root.mkdir()
    _copies(root)
    lab = cleanvision.Imagelab(data_path=str(root))
    lab.find_issues(n_jobs=1, verbose=False)
    theirs = lab.issues
    theirs.index = [Path(p).name for p in theirs.index]

    spec = parse_spec({"name": "cv", "source": {"uri": str(root)}, "sink": {"uri": str(tmp_path / "out")},
                       "curate": {"checks": list(PAIRS)}, "resources": {"decode_batch_size": 8}}, "<test>")
    execute(spec, list_archive(spec.source), "cv")
    ours = {Path(r["uri"]).name: r for r in pq.read_table(
        [f.removeprefix("file://") for f in committed_files(spec.sink.uri, "cv")]).to_pylist()}
    assert set(ours) == set(theirs.index)
    differ = [(name, issue, bool(theirs.loc[name, f"is_{issue}_issue"]), ours[name][flag])
              for name in sorted(ours) for issue, flag in PAIRS.items()
              if bool(theirs.loc[name, f"is_{issue}_issue"]) != bool(ours[name][flag])]
    pairs = len(ours) * len(PAIRS)
    flagged = int(sum(theirs[f"is_{i}_issue"].sum() for i in PAIRS))
    assert flagged >= 40  # the set exercises every issue, not only clean images
    assert (pairs - len(differ)) / pairs >= 0.98, differ
    # Every difference is one the README explains (none are expected on this set).
    assert differ == [], differ


def test_label_issues_equal_cleanlabs_confident_learning():
    import cleanlab.filter as cleanlab_filter
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from imgclf_ray.curation.archive import label_issues

    d = load_digits()
    rng = np.random.default_rng(0)
    given = d.target.copy()
    flip = rng.choice(len(given), 120, replace=False)  # 120 wrong labels
    given[flip] = (given[flip] + rng.integers(1, 10, len(flip))) % 10
    probs = cross_val_predict(LogisticRegression(max_iter=2000), d.data / 16.0, given, cv=5, method="predict_proba")
    reference = cleanlab_filter.find_label_issues(given, probs, filter_by="confident_learning")
    k = probs.shape[1]
    thresholds = np.array([max(probs[given == c, c].mean(), 2e-6) for c in range(k)])
    ours = label_issues(probs, given, thresholds)
    assert ours.sum() >= 80 and np.array_equal(ours, reference)
