"""The archive pass's parts without Ray: banded near-duplicate matching against brute force,
union-find grouping, histogram medians."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from imgclf_ray.curation import archive
from imgclf_ray.curation.measure import hamming


def _near_hashes(rng, n_base: int, copies: int, flips: int) -> np.ndarray:
    """Random 64-bit hashes, each with copies that differ in up to ``flips`` bits."""
    base = rng.integers(-(2 ** 63), 2 ** 63 - 1, n_base, dtype=np.int64)
    out = [base]
    for _ in range(copies):
        noisy = base.copy().view(np.uint64)
        for i in range(n_base):
            for bit in rng.choice(64, rng.integers(0, flips + 1), replace=False):
                noisy[i] ^= np.uint64(1) << np.uint64(bit)
        out.append(noisy.view(np.int64))
    return np.concatenate(out)


@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_banded_matching_finds_exactly_the_pairs_brute_force_finds(radius):
    rng = np.random.default_rng(radius)
    hashes = _near_hashes(rng, 150, 2, radius + 2)
    ids = [f"id{i:04d}" for i in range(len(hashes))]
    partitions = 3
    rows = pa.table({"image_id": ids, "uri": [f"file:///x/{i}" for i in ids], "phash": pa.array(hashes)})
    parts = archive.route_bands(rows, radius, partitions)
    found = set()
    for p in range(partitions):
        pairs, _ = archive.reduce_near(radius, parts[p])
        found.update(pairs)
    d = hamming(hashes[:, None], hashes[None, :])
    expected = {(ids[i], ids[j]) for i, j in zip(*np.nonzero(d <= radius)) if i < j}
    assert found == expected and expected  # banding loses no pair within the radius, adds none


def test_bands_cover_all_64_bits():
    for radius in range(0, 21):
        bands = archive.bands(radius)
        assert len(bands) == radius + 1 and sum(w for _, w in bands) == 64
        assert min(s for s, _ in bands) == 0


def test_link_groups_transitively_and_picks_the_first_uri():
    uris = {"a": "file:///3.jpg", "b": "file:///1.jpg", "c": "file:///2.jpg", "d": "file:///9.jpg",
            "e": "file:///8.jpg"}
    groups = archive.link([("a", "b"), ("b", "c"), ("d", "e")], uris)
    assert groups["a"] == ("b", True) and groups["b"] == ("b", False) and groups["c"] == ("b", True)
    assert groups["e"] == ("e", False) and groups["d"] == ("e", True)


def test_exact_duplicates_group_by_pixel_hash():
    t = pa.table({"image_id": ["i1", "i2", "i3", "i4"], "uri": ["z", "a", "m", "q"],
                  "pixel_hash": ["h1", "h1", "h2", "h1"]})
    members = archive.reduce_exact(t.slice(0, 2), t.slice(2))
    assert members == {"i2": ("i2", False), "i4": ("i2", True), "i1": ("i2", True)}


def test_histogram_median_and_mad():
    rng = np.random.default_rng(0)
    values = np.log(rng.integers(100, 5000, 10_000) * 300.0)
    counts = np.histogram(values, archive.AREA_EDGES)[0]
    median, mad = archive._median_mad(counts, archive.AREA_EDGES)
    assert median == pytest.approx(np.median(values), abs=0.01)
    assert mad == pytest.approx(np.median(np.abs(values - np.median(values))), abs=0.02)
