"""Per-image measures on real photographs with known answers (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf_ray.curation.measure import hamming, measure, phash
from imgclf_ray.curation.rows import row_columns, row_rules
from imgclf_ray.spec import CurateSpec
from tests.corpus import jpeg_bytes
from tests.curation.photos import blurred, darkened, photos, resized


@pytest.fixture(scope="module")
def album():
    return photos()


def _flags(images: list[Image.Image], curate: CurateSpec = CurateSpec()) -> dict[str, np.ndarray]:
    rows = [measure(img) for img in images]
    batch = {k: np.array([r[k] for r in rows]) for k in ("blur_score", "dark_score", "light_score", "entropy",
                                                          "grayscale_score")}
    batch["width"], batch["height"] = np.array([i.width for i in images]), np.array([i.height for i in images])
    rules = row_rules(("blurry", "dark", "overexposed", "low_information", "grayscale", "odd_aspect"), curate, None)
    cols = row_columns(batch, np.ones(len(rows), bool), rules)
    return {k: cols[k].to_numpy(zero_copy_only=False) for k in cols if k.startswith("is_")
            and cols[k].null_count == 0}


def _cleanvision_scores(img: Image.Image) -> dict[str, float]:
    """cleanvision's own property code on one image: its scores, before its thresholds."""
    import pandas as pd
    from cleanvision.issue_managers.image_property import (BlurrinessProperty, BrightnessProperty,
                                                           EntropyProperty, calc_aspect_ratio)

    dark, light = BrightnessProperty("dark"), BrightnessProperty("light")
    raw = pd.DataFrame([{**dark.calculate(img), **BlurrinessProperty().calculate(img),
                         **EntropyProperty().calculate(img)}])
    return {
        "dark_score": float(dark.get_scores(raw, "dark").iloc[0, 0]),
        "light_score": float(light.get_scores(raw, "light").iloc[0, 0]),
        "blur_score": float(BlurrinessProperty().get_scores(raw, "blurry", normalizing_factor=0.01,
                                                              color_threshold=0.18).iloc[0, 0]),
        "entropy": float(raw["entropy"].iloc[0]),  # its score is this / 10, clipped at 1
        "aspect": calc_aspect_ratio(img),
    }


def test_scores_equal_cleanvisions_own_property_code(album):
    images = []
    for img in album.values():
        images += [img, blurred(img), darkened(img), img.convert("L"), Image.eval(img, lambda v: min(255, 200 + v))]
    images += [Image.new("RGB", (300, 200), (90, 120, 40)), album["coffee"].resize((1200, 100))]
    for img in images:
        ours, theirs = measure(img), _cleanvision_scores(img)
        for key in ("dark_score", "light_score", "blur_score"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
        assert ours["entropy"] == pytest.approx(theirs["entropy"], abs=1e-6)
        assert ours["grayscale_score"] == (0.0 if img.mode == "L" else 1.0)


def test_flags_on_known_images(album):
    photo = album["coffee"]
    bright = Image.eval(photo, lambda v: min(255, v // 10 + 245))
    flat = Image.new("RGB", (300, 200), (90, 120, 40))
    strip = photo.resize((1200, 100))
    flags = _flags([photo, darkened(photo), bright, flat, photo.convert("L"), strip])
    assert flags["is_dark"].tolist() == [False, True, False, False, False, False]
    assert flags["is_overexposed"].tolist() == [False, False, True, False, False, False]
    assert flags["is_low_information"].tolist() == [False, False, False, True, False, False]
    assert flags["is_grayscale"].tolist() == [False, False, False, False, True, False]
    assert flags["is_odd_aspect"].tolist() == [False, False, False, False, False, True]
    assert measure(flat)["entropy"] == pytest.approx(np.log2(3))  # Pillow: three one-value channels


def test_perceptual_hash_equals_the_imagehash_reference(album):
    import imagehash
    for img in album.values():
        ref = int(str(imagehash.phash(img)), 16)
        assert phash(img) == (ref - (1 << 64) if ref >= 1 << 63 else ref)


def test_near_copies_are_close_and_different_photos_far(album):
    hashes = {name: phash(img) for name, img in album.items()}
    for name, img in album.items():
        copy = Image.open(io.BytesIO(jpeg_bytes(resized(img, 0.5), quality=60)))
        assert hamming(hashes[name], phash(copy)) <= 4
        others = [hamming(hashes[name], h) for other, h in hashes.items() if other != name]
        assert min(others) > 12


def test_pixel_hash_ignores_the_container_and_sees_one_pixel():
    photo = photos()["chelsea"]
    from_jpeg = Image.open(io.BytesIO(jpeg_bytes(photo))).convert("RGB")
    as_png = io.BytesIO()
    from_jpeg.save(as_png, format="PNG")
    again = Image.open(io.BytesIO(as_png.getvalue())).convert("RGB")
    assert measure(again)["pixel_hash"] == measure(from_jpeg)["pixel_hash"]
    changed = np.asarray(from_jpeg).copy()
    changed[0, 0, 0] ^= 1
    assert measure(Image.fromarray(changed))["pixel_hash"] != measure(from_jpeg)["pixel_hash"]
