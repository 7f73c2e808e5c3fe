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
    batch = {k: np.array([r[k] for r in rows]) for k in ("blur_score", "brightness", "entropy", "color_spread")}
    rules = row_rules(("blurry", "dark", "overexposed", "low_information", "grayscale"), curate, None)
    cols = row_columns(batch, np.ones(len(rows), bool), rules)
    return {k: cols[k].to_numpy(zero_copy_only=False) for k in cols if k.startswith("is_")
            and cols[k].null_count == 0}


def test_blurred_and_darkened_copies_are_flagged_and_the_originals_are_not(album):
    originals = list(album.values())
    flags = _flags(originals + [blurred(p) for p in originals] + [darkened(p) for p in originals])
    n = len(originals)
    assert not flags["is_blurry"][:n].any() and flags["is_blurry"][n:2 * n].all()
    assert not flags["is_dark"][:2 * n].any() and flags["is_dark"][2 * n:].all()
    # Darkening keeps the edges: the blur measure is normalised by the image's own contrast.
    assert not flags["is_blurry"][2 * n:].any()
    assert not flags["is_overexposed"].any() and not flags["is_grayscale"].any()


def test_overexposed_flat_and_grey_images():
    photo = photos()["coffee"]
    bright = Image.eval(photo, lambda v: min(255, int(v * 0.2 + 230)))
    flat = Image.new("RGB", (300, 200), (90, 120, 40))
    grey_as_rgb = photo.convert("L").convert("RGB")  # an RGB file whose channels are equal
    flags = _flags([bright, flat, grey_as_rgb])
    assert flags["is_overexposed"].tolist() == [True, False, False]
    assert flags["is_low_information"].tolist() == [False, True, False]
    assert flags["is_grayscale"].tolist() == [False, False, True]
    assert measure(flat)["entropy"] == 0.0


def test_small_images_are_not_scaled_up_into_blur():
    """A sharp 64x64 patch is measured at its own size, not blurred by upscaling to 256."""
    patch = photos()["rocket"].crop((100, 100, 164, 164))
    assert measure(patch)["blur_score"] > CurateSpec().blur_threshold


def test_perceptual_hash_equals_the_imagehash_reference(album):
    imagehash = pytest.importorskip("imagehash")
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
