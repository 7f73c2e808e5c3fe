"""Each conditioning op against the reference implementation it wraps."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf_ray.imaging import ops


@pytest.fixture(scope="module")
def photo(sample_photo):
    return np.asarray(sample_photo.crop((100, 100, 228, 196)))  # 128x96 RGB


def test_every_op_keeps_uint8_rgb(photo):
    params = {"letterbox": {"size": 64}, "crop": {"left": 2, "top": 3, "width": 20, "height": 10}}
    for name in ops.names():
        out = ops.apply([(name, params.get(name, {}))], photo)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name


def test_equalised_histogram_is_flat(photo):
    grey = ops.grayscale(photo)
    eq = ops.equalize(grey)[:, :, 0]
    cdf = np.cumsum(np.bincount(eq.ravel(), minlength=256)) / eq.size
    # a flat histogram has a straight-line CDF
    assert np.abs(cdf - np.linspace(0, 1, 256)).max() < 0.08
    assert np.abs(np.cumsum(np.bincount(grey[:, :, 0].ravel(), minlength=256)) / eq.size - np.linspace(0, 1, 256)).max() > 0.2


def test_filters_equal_scipy_and_scikit_image(photo):
    from scipy.ndimage import gaussian_filter, median_filter
    from scipy.signal import wiener
    from skimage.exposure import equalize_adapthist

    noisy = np.clip(photo.astype(int) + np.random.default_rng(0).normal(0, 20, photo.shape), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(ops.median(noisy, size=3)[:, :, 1], median_filter(noisy[:, :, 1], size=3))
    ref = np.clip(np.rint(gaussian_filter(noisy[:, :, 0].astype(np.float32), 2.0)), 0, 255)
    np.testing.assert_array_equal(ops.gaussian(noisy, sigma=2.0)[:, :, 0], ref)
    ref = np.clip(np.rint(wiener(noisy[:, :, 2].astype(np.float64), 5)), 0, 255)
    np.testing.assert_array_equal(ops.wiener(noisy, size=5)[:, :, 2], ref)
    ref = np.clip(np.rint(equalize_adapthist(photo, clip_limit=0.02) * 255), 0, 255)
    np.testing.assert_array_equal(ops.clahe(photo, clip_limit=0.02), ref)
    assert ops.median(noisy).astype(float).std() < noisy.astype(float).std()  # it does denoise


def test_clahe_on_a_large_image_is_scikit_image_s_in_a_fraction_of_its_memory(sample_photo):
    """scikit-image's CLAHE of a colour image held about 350 bytes a pixel (a 20-megapixel
    mammogram: 7.1 GB in a decode task). The same pixels, over several blocks of rows, in what
    Python allocated for it (numpy's allocations: tracemalloc sees them) under 100 bytes a pixel."""
    import tracemalloc

    from skimage.exposure import equalize_adapthist

    image = np.tile(np.asarray(sample_photo), (3, 2, 1))[:1200, :1000]  # (1.2 million pixels: many blocks)
    reference = np.clip(np.rint(equalize_adapthist(image) * 255), 0, 255)
    tracemalloc.start()
    try:
        ours = ops.clahe(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(ours, reference)
    assert peak < 100 * image.shape[0] * image.shape[1], peak / (image.shape[0] * image.shape[1])


def test_geometry_ops(photo):
    padded = np.zeros((140, 170, 3), np.uint8)
    padded[20:116, 30:158] = photo
    padded[20:116, 30:158][photo.max(axis=2) < 15] = 50  # keep the content distinguishable from black
    trimmed = ops.trim_border(padded)
    assert trimmed.shape == photo.shape
    box = ops.letterbox(photo, 64)
    assert box.shape == (64, 64, 3) and box[:8].max() == 0 and box[-8:].max() == 0  # bars above and below
    assert ops.minmax(photo // 2 + 40).min() == 0 and ops.minmax(photo // 2 + 40).max() == 255
    with pytest.raises(ValueError, match="does not fit"):
        ops.crop(photo, 100, 0, 50, 10)


def test_registry():
    with pytest.raises(ValueError, match="already registered"):
        ops.register("clahe")(lambda image: image)
    with pytest.raises(KeyError, match="unknown conditioning op 'sharpen'"):
        ops.get("sharpen")


def test_ops_run_in_the_card_before_resize_and_an_unknown_op_is_refused(sample_photo):
    from imgclf_ray.imaging.conditioning import condition
    from imgclf_ray.models.artifact import PreprocessCard

    card = PreprocessCard(resize=40, crop=32, ops=[{"name": "clahe"}, {"name": "median", "params": {"size": 5}}])
    cond = card.conditioning()
    expected = ops.median(ops.clahe(np.asarray(sample_photo)), size=5)
    from PIL import Image

    plain = PreprocessCard(resize=40, crop=32).conditioning()
    np.testing.assert_array_equal(condition(sample_photo, cond), condition(Image.fromarray(expected), plain))
    with pytest.raises(ValueError, match="unknown conditioning op 'sharpen'"):
        PreprocessCard(resize=40, ops=[{"name": "sharpen"}])
