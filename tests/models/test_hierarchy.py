"""Hierarchical models: routing, the tree's checks, and the whole path through Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgclf_ray.errors import ArtifactError
from imgclf_ray.models.hierarchy import describe_artifact
from imgclf_ray.models.tree_classifier import HierarchicalClassifier


def _features(digits_archive, n=60):
    """HOG features of n digits, decoded and conditioned as the tree example's training does."""
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.models.artifact import FeaturesCard, PreprocessCard
    from imgclf_ray.spec import DecodeSpec, SourceSpec, StorageSpec
    from imgclf_ray.stages import LoadConfig, LoadStage

    prep = PreprocessCard(resize=32, crop=32, channels=1)
    loader = LoadStage(LoadConfig(StorageSpec(), DecodeSpec(), prep.conditioning(),
                                  features=FeaturesCard(name="hog", params={"orientations": 9, "pixels_per_cell": 8,
                                                                            "cells_per_block": 2})))
    uris = np.array(list_archive(SourceSpec(uri=digits_archive), StorageSpec()).column("uri").to_pylist())
    pick = np.random.default_rng(0).choice(len(uris), n, replace=False)
    x = np.stack([loader.load_one(u)[0] for u in uris[pick]])
    return x, np.array([u.rsplit("/", 2)[1] for u in uris[pick]])


def test_each_child_sees_only_the_rows_routed_to_it(tree_model, digits_archive):
    clf = HierarchicalClassifier(tree_model)
    seen = {}
    for key, (_, node_clf, _) in clf.nodes.items():
        real = node_clf.predict_proba

        def spy(x, real=real, key=key):
            seen[key] = seen.get(key, 0) + len(x)
            return real(x)
        node_clf.predict_proba = spy
    x, names = _features(digits_archive)
    paths, scores = clf.route(x)
    assert seen[()] == len(x)
    assert seen[("small",)] == sum(p[0] == "small" for p in paths)
    assert seen[("large",)] == sum(p[0] == "large" for p in paths)
    assert all(len(p) == 2 and len(s) == 2 for p, s in zip(paths, scores))
    assert np.mean([p[-1] == n for p, n in zip(paths, names)]) >= 0.95
    assert all(p[1] in (["0", "1", "2", "3", "4"] if p[0] == "small" else ["5", "6", "7", "8", "9"]) for p in paths)


def test_tree_checks(tree_model, tmp_path):
    info = describe_artifact(tree_model)
    assert info.task == "hierarchical" and info.framework == "sklearn" and info.features.name == "hog"
    assert info.labels == sorted(["large", "small"] + [str(i) for i in range(10)])
    bad = tmp_path / "bad"
    shutil.copytree(tree_model, bad)
    card = json.loads((bad / "model_card.json").read_text())
    card["root"]["children"]["medium"] = {"model": "node/small"}
    (bad / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"children for labels its model lacks: \['medium'\]"):
        describe_artifact(str(bad))
    card["root"]["children"].pop("medium")
    (bad / "model_card.json").write_text(json.dumps(card))
    small = json.loads((bad / "node" / "small" / "model_card.json").read_text())
    small["preprocess"]["resize"] = 40
    (bad / "node" / "small" / "model_card.json").write_text(json.dumps(small))
    with pytest.raises(ArtifactError, match="node small prepares images differently"):
        describe_artifact(str(bad))


@pytest.mark.ray
def test_hierarchical_through_ray_equals_routing_by_hand(ray_session, tree_model, digits_archive, tmp_path):
    import skops.io as sio
    from PIL import Image
    from skimage.feature import hog
    from torchvision import transforms as T

    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.runner.job import execute
    from tests.support.jobs import digits_subset, make_spec, read_run

    archive = tmp_path / "arch"
    digits_subset(digits_archive, archive, 60)
    spec = make_spec(str(archive), str(tmp_path / "out"), tree_model)
    result = execute(spec, list_archive(spec.source), "tree")
    rows = read_run(spec.sink.uri, "tree")
    assert result.by_status == {"ok": len(rows)} and len(rows) == 30

    def load(name):
        blob = (Path(tree_model) / name / "model.skops").read_bytes()
        labels = json.loads((Path(tree_model) / name / "model_card.json").read_text())["labels"]
        return sio.loads(blob, trusted=sio.get_untrusted_types(data=blob)), labels

    nodes = {"root": load("root"), "small": load("node/small"), "large": load("node/large")}
    tf = T.Compose([T.Resize(32), T.CenterCrop(32)])
    for row in rows:
        grey = np.asarray(tf(Image.open(row["uri"].removeprefix("file://")).convert("RGB")).convert("L"),
                          dtype=np.float32) / 255
        f = hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")[None]
        root, root_labels = nodes["root"]
        p_root = root.predict_proba(f.astype(np.float32))[0]
        group = root_labels[p_root.argmax()]
        leaf, leaf_labels = nodes[group]
        p_leaf = leaf.predict_proba(f.astype(np.float32))[0]
        digit = leaf_labels[p_leaf.argmax()]
        assert row["label_path"] == [group, digit] and row["label"] == digit
        assert row["path_scores"] == pytest.approx([p_root.max(), p_leaf.max()], abs=1e-5)
        assert row["score"] == pytest.approx(p_root.max() * p_leaf.max(), abs=1e-5)
        assert row["topk_labels"] is None and row["class_scores"] is None
