"""The archive pass's parts without Ray: banded near-duplicate matching against brute force,
union-find grouping, exact quartiles from size counts."""

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


def _groups(members: dict[str, tuple[str, bool]]) -> set[frozenset]:
    out: dict[str, set] = {}
    for image, (group, _) in members.items():
        out.setdefault(group, set()).add(image)
    return {frozenset(g) for g in out.values()}


def _banded_links(hashes: np.ndarray, radius: int, partitions: int = 3):
    ids = [f"id{i:05d}" for i in range(len(hashes))]
    rows = pa.table({"image_id": ids, "uri": [f"file:///x/{i}" for i in ids], "phash": pa.array(hashes)})
    parts = archive.route_bands(rows, radius, partitions)
    links, uris = [], {}
    for p in range(partitions):
        part_links, part_uris = archive.reduce_near(radius, parts[p])
        links += part_links
        uris.update(part_uris)
    return ids, links, uris


@pytest.mark.parametrize("radius", [0, 3, 6, 10])
def test_banded_matching_groups_exactly_as_brute_force_pairs_do(radius):
    rng = np.random.default_rng(radius)
    hashes = _near_hashes(rng, 150, 2, radius + 2)
    ids, links, uris = _banded_links(hashes, radius)
    d = hamming(hashes[:, None], hashes[None, :])
    pairs = [(ids[i], ids[j]) for i, j in zip(*np.nonzero(d <= radius)) if i < j]
    brute = archive.link(pairs, {i: f"file:///x/{i}" for pair in pairs for i in pair})
    assert pairs and _groups(archive.link(links, uris)) == _groups(brute)  # no group lost, none merged
    assert len(links) <= (radius + 1) * len(hashes)


@pytest.mark.parametrize("radius", [0, 4])
def test_ten_thousand_near_identical_frames_make_one_group_from_linearly_many_links(radius):
    """A parked car filmed at 1 fps: every frame's hash within a bit or two of the others."""
    rng = np.random.default_rng(1)
    base = np.uint64(rng.integers(0, 2 ** 63, dtype=np.int64))
    flips = rng.integers(0, 64, 10_000).astype(np.uint64)
    noisy = np.where(rng.random(10_000) < 0.5, base, base ^ (np.uint64(1) << flips)) if radius else \
        np.full(10_000, base, np.uint64)
    ids, links, uris = _banded_links(noisy.view(np.int64), radius)
    assert len(links) <= (radius + 1) * len(ids)  # all pairs would be 49,995,000
    groups = _groups(archive.link(links, uris))
    assert groups == {frozenset(ids)}


def test_bands_cover_all_64_bits():
    for radius in range(0, 21):
        bands = archive.bands(radius)
        assert len(bands) == radius + 1 and sum(w for _, w in bands) == 64
        assert min(s for s, _ in bands) == 0


def test_link_groups_transitively_and_picks_the_first_uri():
    uris = {"a": "file:///3.jpg", "b": "file:///1.jpg", "c": "file:///2.jpg", "d": "file:///9.jpg",
            "e": "file:///8.jpg"}
    groups = archive.link([("a", "b"), ("b", "c"), ("d", "e")], uris)
    # Every member is flagged (as cleanvision flags them); the group id is the first by uri.
    assert groups == {"a": ("b", True), "b": ("b", True), "c": ("b", True), "d": ("e", True), "e": ("e", True)}
    # A near group that is exactly an exact-duplicate group is dropped, as cleanvision does.
    exact = {"a": ("b", True), "b": ("b", True), "c": ("b", True)}
    assert archive.without_exact_groups(groups, exact) == {"d": ("e", True), "e": ("e", True)}


def test_exact_duplicates_group_by_pixel_hash():
    t = pa.table({"image_id": ["i1", "i2", "i3", "i4"], "uri": ["z", "a", "m", "q"],
                  "pixel_hash": ["h1", "h1", "h2", "h1"]})
    members = archive.reduce_exact(t.slice(0, 2), t.slice(2))
    assert members == {"i2": ("i2", True), "i4": ("i2", True), "i1": ("i2", True)}


def test_size_quartiles_from_counts_equal_numpys_and_the_odd_size_rule_is_cleanvisions():
    rng = np.random.default_rng(0)
    values = np.sqrt(rng.choice([640 * 480, 1920 * 1080, 400 * 300, 4000 * 3000, 32 * 32], 10_001,
                                p=[0.4, 0.3, 0.2, 0.09, 0.01]).astype(np.float64))
    uniq, counts = np.unique(values, return_counts=True)
    q = archive.percentiles(dict(zip(uniq.tolist(), counts.tolist())), (25, 75))
    np.testing.assert_allclose(q, np.percentile(values, [25, 75]))
    for small in (values[:7], values[:2], np.array([300.0] * 5)):
        u, c = np.unique(small, return_counts=True)
        np.testing.assert_allclose(archive.percentiles(dict(zip(u.tolist(), c.tolist())), (25, 75)),
                                   np.percentile(small, [25, 75]))
    # cleanvision's SizeProperty on the same values
    q1, q3 = np.percentile(values, [25, 75])
    lo, hi = q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)
    theirs = 1 - np.clip(np.abs(values - (lo + hi) / 2) / (hi - lo), 0, 1)
    ours, threshold = archive.size_scores(values, q1, q3, 3.0)
    np.testing.assert_allclose(ours, theirs) and threshold == 0.5
    assert ((ours < 0.5) == ((values < lo) | (values > hi))).all()
