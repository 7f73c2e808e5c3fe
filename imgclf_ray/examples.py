"""Self-contained examples: real images that a dependency ships, and a model trained here on them.

Nothing is downloaded: scikit-learn's handwritten digits are written out as PNG files, and a small
torchvision CNN is trained on them with the same decode and conditioning code that inference uses.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np

from imgclf_ray.io.storage import filesystem, join
from imgclf_ray.models.artifact import CARD_FILE, ModelCard, save_artifact, save_sklearn_artifact
from imgclf_ray.models.hierarchy import TreeCard
from imgclf_ray.progress import Mode, Progress
from imgclf_ray.spec import DecodeSpec, JobSpec, SourceSpec, StorageSpec

log = logging.getLogger(__name__)

DIGITS_PREPROCESS = {"resize": 32, "crop": 32, "channels": 3, "interpolation": "bilinear"}


def write_digits_archive(uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """Write scikit-learn's 1,797 digits as 8x8 greyscale PNGs: ``<uri>/<digit>/digit-NNNN.png``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    fs, root = filesystem(uri, storage)
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        grey = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(grey, "L").save(buf, format="PNG")
        path = join(root, str(target), f"digit-{i:04d}.png")
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, buf.getvalue())
    return len(digits.target)


def load_labelled_folder(uri: str, card_preprocess: dict, storage: StorageSpec = StorageSpec(),
                         features: Optional[dict] = None):
    """(inputs, labels) from a folder-per-class archive, decoded, conditioned and (with
    ``features``) feature-extracted exactly as inference does it."""
    from imgclf_ray.io.listing import list_archive
    from imgclf_ray.models.artifact import FeaturesCard, PreprocessCard
    from imgclf_ray.stages import LoadStage

    prep = PreprocessCard(**card_preprocess)
    manifest = list_archive(SourceSpec(uri=uri), storage)
    loader = LoadStage(storage, DecodeSpec(), prep.conditioning(),
                       features=FeaturesCard(**features) if features else None)
    uris = manifest.column("uri").to_pylist()
    pixels = np.stack([loader.load_one(u)[0] for u in uris])
    labels = np.array([u.rstrip("/").split("/")[-2] for u in uris])
    return pixels, labels


def train_digits_model(archive_uri: str, model_uri: str, storage: StorageSpec = StorageSpec(),
                       architecture: str = "resnet18", epochs: int = 6, seed: int = 0,
                       progress: Mode = "off") -> ModelCard:
    """Train a torchvision CNN on the digits archive; save it as a safe artifact at ``model_uri``.

    A seeded, stratified 80/20 split; the held-out accuracy goes into the model card.
    """
    import torch
    import torchvision
    from sklearn.model_selection import train_test_split

    from imgclf_ray.models.torch_classifier import build_network

    started = time.perf_counter()
    torch.manual_seed(seed)
    pixels, names = load_labelled_folder(archive_uri, DIGITS_PREPROCESS, storage)
    labels = sorted(set(names))
    y = np.array([labels.index(n) for n in names])
    x_train, x_test, y_train, y_test = train_test_split(pixels, y, test_size=0.2, stratify=y, random_state=seed)
    scaled = x_train.astype(np.float32) / 255.0
    mean = scaled.mean(axis=(0, 2, 3)).tolist()
    std = np.maximum(scaled.std(axis=(0, 2, 3)), 1e-3).tolist()

    def normalise(batch: np.ndarray) -> "torch.Tensor":
        t = torch.from_numpy(batch).float() / 255.0
        return (t - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)

    net = build_network(architecture, len(labels))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x_train) / 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = np.random.default_rng(seed)
    net.train()
    with Progress("training", steps, unit="step", mode=progress) as shown:
        for _ in range(epochs):
            order = gen.permutation(len(x_train))
            for start in range(0, len(order), 64):
                idx = order[start:start + 64]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(normalise(x_train[idx])),
                                                         torch.from_numpy(y_train[idx]))
                loss.backward()
                opt.step()
                sched.step()
                shown.update()
    net.eval()
    with torch.inference_mode():
        pred = np.concatenate([net(normalise(x_test[i:i + 256])).argmax(1).numpy()
                               for i in range(0, len(x_test), 256)])
    accuracy = float((pred == y_test).mean())
    card = save_artifact(model_uri, {
        "architecture": architecture,
        "labels": labels,
        "preprocess": {**DIGITS_PREPROCESS, "mean": mean, "std": std},
        "metrics": {"test_accuracy": round(accuracy, 4), "test_images": int(len(y_test))},
        "training": {"data": archive_uri, "train_images": int(len(y_train)), "epochs": epochs,
                     "seed": seed, "seconds": round(time.perf_counter() - started, 1)},
        "library_versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }, net.state_dict(), storage)
    log.info("trained %s on digits: test accuracy %.3f", architecture, accuracy)
    return card


def _svm_hog():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    # SVC(probability=True) is deprecated: calibrated probabilities come from CalibratedClassifierCV.
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(C=10.0, gamma="scale"), cv=3))


def _logreg_hog():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


def _forest():
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, random_state=0)


def _mlp():
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(128,), max_iter=1000, random_state=0)


# Attributes of a digit, the labels of the multilabel example.
DIGIT_ATTRIBUTES = {"even": {0, 2, 4, 6, 8}, "large": {5, 6, 7, 8, 9}, "prime": {2, 3, 5, 7},
                    "closed-loop": {0, 4, 6, 8, 9}}
_HOG = {"name": "hog", "params": {"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2}}
_GREY32 = {"resize": 32, "crop": 32, "channels": 1}


@dataclass(frozen=True)
class Recipe:
    """A classical example model: conditioning, features, estimator, and the task it learns."""

    preprocess: dict[str, Any]
    features: dict[str, Any]
    make: Callable[[], Any]
    task: str = "multiclass"
    positive: Optional[str] = None  # binary: the folder name of the positive class


SKLEARN_RECIPES: dict[str, Recipe] = {
    "svm-hog": Recipe(_GREY32, _HOG, _svm_hog),
    "logreg-hog": Recipe(_GREY32, _HOG, _logreg_hog, task="binary", positive="face"),
    "mlp-attributes": Recipe({"resize": 16, "crop": 16, "channels": 1}, {"name": "pixels"}, _mlp,
                             task="multilabel"),
    "forest-lbp": Recipe({"resize": 64, "crop": 64, "channels": 1},
                         {"name": "lbp", "params": {"points": 16, "radius": 2}}, _forest),
}


def _targets(recipe: Recipe, names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Training targets and the card's labels for a recipe, from the folder names."""
    if recipe.task == "multilabel":
        labels = list(DIGIT_ATTRIBUTES)
        y = np.array([[int(n) in DIGIT_ATTRIBUTES[lab] for lab in labels] for n in names], dtype=np.int64)
        return y, labels
    if recipe.task == "binary":
        negative = sorted(set(names) - {recipe.positive})
        if len(negative) != 1:
            raise ValueError(f"a binary archive has two folders, got {sorted(set(names))}")
        # 0 = negative, 1 = positive: the estimator's columns follow the card's [negative, positive].
        return (names == recipe.positive).astype(np.int64), [negative[0], recipe.positive]
    return names, sorted(set(names))


def train_sklearn_example(recipe_name: str, archive_uri: str, model_uri: str,
                          storage: StorageSpec = StorageSpec(), seed: int = 0) -> ModelCard:
    """Fit a classical example model on a folder-per-class archive (features extracted with the
    inference code) and save it with skops; held-out metrics go into the card."""
    import sklearn
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    recipe = SKLEARN_RECIPES[recipe_name]
    started = time.perf_counter()
    x, names = load_labelled_folder(archive_uri, recipe.preprocess, storage, recipe.features)
    y, labels = _targets(recipe, names)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=names, random_state=seed)
    estimator = recipe.make().fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    if recipe.task == "multilabel":
        metrics = {"test_micro_f1": round(float(f1_score(y_test, predicted, average="micro")), 4)}
    else:
        metrics = {"test_accuracy": round(float((predicted == y_test).mean()), 4)}
    if recipe.task == "binary":
        scores = estimator.predict_proba(x_test)[:, 1]
        metrics["test_roc_auc"] = round(float(roc_auc_score(y_test, scores)), 4)
    return save_sklearn_artifact(model_uri, {
        "task": recipe.task,
        "labels": labels,
        "preprocess": recipe.preprocess,
        "features": recipe.features,
        "metrics": {**metrics, "test_images": int(len(y_test))},
        "training": {"data": archive_uri, "recipe": recipe_name, "train_images": int(len(y_train)),
                     "seed": seed, "seconds": round(time.perf_counter() - started, 1)},
        "library_versions": {"scikit-learn": sklearn.__version__},
    }, estimator, storage)


DIGIT_GROUPS = {"small": ["0", "1", "2", "3", "4"], "large": ["5", "6", "7", "8", "9"]}


def train_tree_example(archive_uri: str, model_uri: str, storage: StorageSpec = StorageSpec(),
                       seed: int = 0) -> TreeCard:
    """A two-level tree on the digits: small (0-4) or large (5-9) at the root, then the digit, each
    node a calibrated SVM over HOG. Writes root/, small/, large/ and the tree card."""
    import sklearn
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    x, names = load_labelled_folder(archive_uri, _GREY32, storage, _HOG)
    x_train, x_test, n_train, n_test = train_test_split(x, names, test_size=0.2, stratify=names, random_state=seed)
    group_of = {d: g for g, digits in DIGIT_GROUPS.items() for d in digits}
    fields = {"preprocess": _GREY32, "features": _HOG, "library_versions": {"scikit-learn": sklearn.__version__}}
    root = _svm_hog().fit(x_train, [group_of[n] for n in n_train])
    save_sklearn_artifact(join(model_uri, "root"), fields, root, storage)
    children = {}
    for group, digits in DIGIT_GROUPS.items():
        rows = np.isin(n_train, digits)
        children[group] = _svm_hog().fit(x_train[rows], n_train[rows])
        save_sklearn_artifact(join(model_uri, group), fields, children[group], storage)
    routed = root.predict(x_test)
    leaf = np.array([children[g].predict(row[None])[0] for g, row in zip(routed, x_test)])
    tree = TreeCard(root={"model": "root", "children": {g: {"model": g} for g in DIGIT_GROUPS}},
                    description="digits: small/large, then the digit",
                    metrics={"test_path_accuracy": round(float((leaf == n_test).mean()), 4),
                             "test_images": int(len(n_test)),
                             "training_seconds": round(time.perf_counter() - started, 1)},
                    created_at=datetime.now(timezone.utc).isoformat())
    fs, path = filesystem(model_uri, storage)
    fs.pipe_file(join(path, CARD_FILE), tree.model_dump_json(indent=2).encode())
    return tree


def write_textures_archive(uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """Cut scikit-image's brick, grass and gravel photographs (512x512 greyscale) into 64x64 patches:
    ``<uri>/<texture>/patch-NN.png``, 64 per texture."""
    from PIL import Image
    from skimage import data

    fs, root = filesystem(uri, storage)
    n = 0
    for name in ("brick", "grass", "gravel"):
        image = getattr(data, name)()
        fs.makedirs(join(root, name), exist_ok=True)
        for k, (i, j) in enumerate((i, j) for i in range(0, 512, 64) for j in range(0, 512, 64)):
            buf = io.BytesIO()
            Image.fromarray(image[i:i + 64, j:j + 64], "L").save(buf, format="PNG")
            fs.pipe_file(join(root, name, f"patch-{k:02d}.png"), buf.getvalue())
            n += 1
    return n


def write_faces_archive(uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """Write scikit-image's lfw_subset (100 faces, 100 non-faces, 25x25 greyscale) as PNG files:
    ``<uri>/face/`` and ``<uri>/non-face/``."""
    from PIL import Image
    from skimage.data import lfw_subset

    images = lfw_subset()
    fs, root = filesystem(uri, storage)
    for i, img in enumerate(images):
        folder = "face" if i < 100 else "non-face"
        buf = io.BytesIO()
        Image.fromarray(np.rint(img * 255).astype(np.uint8), "L").save(buf, format="PNG")
        fs.makedirs(join(root, folder), exist_ok=True)
        fs.pipe_file(join(root, folder, f"{folder}-{i:03d}.png"), buf.getvalue())
    return len(images)


def _has_images(source: SourceSpec, storage: StorageSpec) -> bool:
    from imgclf_ray.errors import SourceError
    from imgclf_ray.io.listing import list_archive

    try:
        list_archive(source, storage)
    except SourceError:
        return False
    return True


def ensure_example_archive(dataset: str, source: SourceSpec, storage: StorageSpec = StorageSpec()) -> int:
    """Write the bundled data set into ``source.uri`` unless images are there; how many were written."""
    if _has_images(source, storage):
        return 0
    write = {"digits": write_digits_archive, "faces": write_faces_archive,
             "textures": write_textures_archive}[dataset]
    return write(source.uri, storage)


def prepare(spec: JobSpec, echo=print, progress: Mode = "off") -> None:
    """Materialise the spec's example data and model where they are missing (no-op otherwise)."""
    if spec.example is None:
        return
    n = ensure_example_archive(spec.example.dataset, spec.source, spec.storage)
    if n:
        noun = {"digits": "digit images", "faces": "face / non-face images", "textures": "texture patches"}
        echo(f"example: wrote {n} {noun[spec.example.dataset]} to {spec.source.uri}")
    if spec.model is None:
        return
    fs, model_path = filesystem(spec.model.uri, spec.storage)
    if spec.example.train_model and not fs.exists(join(model_path, CARD_FILE)):
        recipe = spec.example.model
        echo(f"example: training a {recipe} on the {spec.example.dataset} into {spec.model.uri} ...")
        if recipe == "tree-hog":
            tree = train_tree_example(spec.source.uri, spec.model.uri, spec.storage)
            echo(f"example: trained a 3-node tree; held out: path accuracy {tree.metrics['test_path_accuracy']}")
            return
        if recipe in SKLEARN_RECIPES:
            card = train_sklearn_example(recipe, spec.source.uri, spec.model.uri, spec.storage)
        else:
            card = train_digits_model(spec.source.uri, spec.model.uri, spec.storage, architecture=recipe,
                                      progress=progress)
        held_out = ", ".join(f"{k.removeprefix('test_')} {v}" for k, v in card.metrics.items()
                             if k != "test_images")
        echo(f"example: trained in {card.training['seconds']} s; held out: {held_out}")
