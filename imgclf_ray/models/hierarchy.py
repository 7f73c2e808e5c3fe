"""Hierarchical classification: a tree of ordinary models, routed inside the predictor.

A hierarchical artifact is a folder whose ``model_card.json`` has ``task: hierarchical`` and a tree::

    {"format_version": 1, "task": "hierarchical",
     "root": {"model": "root", "children": {
         "fruit": {"model": "fruit", "children": {"apple": {"model": "apple"}}},
         "vegetable": {"model": "vegetable"}}}}

Each ``model`` is the path (relative to the folder) of a multiclass or binary artifact; a label of a
node without an entry under ``children`` is a leaf. Every node shares one conditioning and feature
extractor, so each image is read and prepared once. The root runs on every image; each child runs
only on the rows routed to it, so a batch pays only for the models it needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imgclf_ray.errors import ArtifactError
from imgclf_ray.messages import describe
from imgclf_ray.models.artifact import CARD_FILE, FeaturesCard, ModelCard, PreprocessCard, first_error, read_card
from imgclf_ray.ids import id_problem
from imgclf_ray.io.storage import describe_os_error, filesystem, join
from imgclf_ray.spec import StorageSpec


class TreeNode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Artifact path inside the tree's folder: plain names joined by '/'.")
    children: dict[str, "TreeNode"] = Field(default_factory=dict, description="Child node by label.")

    @field_validator("model")
    @classmethod
    def _inside(cls, v: str) -> str:
        problems = [id_problem(part) for part in v.split("/")]
        if any(problems):
            raise ValueError(f"{v!r} must stay inside the artifact folder ({next(p for p in problems if p)})")
        return v


TreeNode.model_rebuild()


class TreeCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    task: str = Field("hierarchical", pattern="^hierarchical$")
    root: TreeNode
    description: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = ""


@dataclass(frozen=True)
class ArtifactInfo:
    """What the pipeline needs to know of any artifact, plain or hierarchical."""

    task: str
    framework: str  # "torch" when any node is a torch model (GPU actors may help), else "sklearn"
    preprocess: PreprocessCard
    features: Optional[FeaturesCard]
    labels: list[str]
    model_id: str
    scores: str = "probability"  # "uncalibrated" when any model's scores are (ModelCard.scores)
    # Every card read to make this summary: () -> the card of a plain artifact; each node's path ->
    # its card for a tree. What the checks before a run need, so that a run reads its cards once.
    cards: Mapping[tuple[str, ...], ModelCard] = field(default_factory=dict, compare=False, repr=False)


def _raw_card(uri: str, storage: StorageSpec) -> dict[str, Any]:
    fs, path = filesystem(join(uri, CARD_FILE), storage)
    try:
        return json.loads(fs.cat_file(path))
    except (OSError, ValueError) as exc:
        cause = describe_os_error(exc) if isinstance(exc, OSError) else f"not JSON: {describe(exc)}"
        raise ArtifactError(f"{uri}: no readable {CARD_FILE} ({cause}) (model.uri)") from None


def read_tree(uri: str, storage: StorageSpec = StorageSpec()) -> TreeCard:
    try:
        return TreeCard.model_validate(_raw_card(uri, storage))
    except ValidationError as exc:
        raise ArtifactError(f"{uri}/{CARD_FILE}: {first_error(exc)}") from None


def _nodes(node: TreeNode, path: tuple[str, ...] = ()):
    yield path, node
    for label, child in node.children.items():
        yield from _nodes(child, path + (label,))


def node_cards(uri: str, tree: TreeCard, storage: StorageSpec = StorageSpec()) -> dict[tuple[str, ...], ModelCard]:
    """The card of every node, checked: known child labels, one shared conditioning and extractor."""
    cards = {path: read_card(join(uri, node.model), storage) for path, node in _nodes(tree.root)}
    root = cards[()]
    for path, node in _nodes(tree.root):
        card = cards[path]
        where = "/".join(path) or "root"
        if card.task not in ("multiclass", "binary"):
            raise ArtifactError(f"{uri}: node {where} is a {card.task} model; tree nodes are multiclass or binary")
        unknown = set(node.children) - set(card.labels)
        if unknown:
            raise ArtifactError(f"{uri}: node {where} has children for labels its model lacks: {sorted(unknown)}")
        if card.preprocess != root.preprocess or card.features != root.features:
            raise ArtifactError(f"{uri}: node {where} prepares images differently from the root; every "
                                "node of a tree must share preprocess and features")
    return cards


def describe_artifact(uri: str, storage: StorageSpec = StorageSpec()) -> ArtifactInfo:
    """Read the card(s) of any artifact, once, and summarise them for planning the pipeline."""
    raw = _raw_card(uri, storage)
    if raw.get("task") != "hierarchical":
        try:
            card = ModelCard.model_validate(raw)
        except ValidationError as exc:
            raise ArtifactError(f"{uri}/{CARD_FILE}: {first_error(exc)}") from None
        return ArtifactInfo(card.task, card.framework, card.preprocess, card.features, card.labels, card.model_id(),
                            card.scores, {(): card})
    tree = read_tree(uri, storage)
    cards = node_cards(uri, tree, storage)
    root = cards[()]
    digest = hashlib.sha256(json.dumps({"tree": tree.model_dump(mode="json"),
                                        "nodes": {"/".join(p): c.model_id() for p, c in cards.items()}},
                                       sort_keys=True).encode()).hexdigest()
    labels = sorted({lab for c in cards.values() for lab in c.labels})
    framework = "torch" if any(c.framework == "torch" for c in cards.values()) else "sklearn"
    scores = "uncalibrated" if any(c.scores == "uncalibrated" for c in cards.values()) else "probability"
    return ArtifactInfo("hierarchical", framework, root.preprocess, root.features, labels, "sha256:" + digest, scores,
                        cards)


# Artifact formats whose loading runs code stored in the file; refused unless the job trusts it.
CODE_FORMATS = {"torchscript": "TorchScript runs code stored in the file when it is loaded and at every prediction"}


def refuse_code(model_uri: str, storage: StorageSpec = StorageSpec(), trusted: bool = False,
                info: Optional[ArtifactInfo] = None) -> None:
    """ArtifactError unless every weights file of the artifact (each node of a tree) is in a format
    that cannot run code, or the job marks the artifact trusted (model.trusted). Reads only cards
    (none when given the artifact's ``info``)."""
    if trusted:
        return
    for card in (info or describe_artifact(model_uri, storage)).cards.values():
        why = CODE_FORMATS.get(card.weights.format)
        if why:
            raise ArtifactError(f"{model_uri}: {card.weights.file} is {card.weights.format}; {why}, so it is "
                                "refused. Export the weights to safetensors, or set model.trusted: true "
                                "in the job if you trust the file's author")
