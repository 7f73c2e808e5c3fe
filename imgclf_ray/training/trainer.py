"""``imgclf train``, the one trainer: scikit-learn estimators over a feature extractor, and CNNs
(:mod:`imgclf_ray.training.cnn`), from a labelled archive.

Features are extracted in parallel by the same Ray Data stage that inference uses (read, decode,
condition, extract), so training and inference see identical inputs. The split is seeded and
stratified; an optional grid search runs on the training split; metrics come from the held-out
test split; the artifact is written with skops and a card that records all of it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray import interrupts
from imgclf_ray.errors import SourceError, SpecError
from imgclf_ray.evaluate import evaluate_rows
from imgclf_ray.io.labels import attach_true_labels
from imgclf_ray.io.listing import list_archive
from imgclf_ray.io.storage import filesystem, join, to_uri
from imgclf_ray.messages import printable, scrub, without_credentials
from imgclf_ray.models.artifact import CARD_FILE, save_sklearn_artifact
from imgclf_ray.models.heads import Head
from imgclf_ray.spec import EstimatorSpec, TrainSpec


def make_estimator(spec: EstimatorSpec, seed: int = 0, multilabel: bool = False, features: Optional[str] = None):
    """The scikit-learn estimator a spec names (its registry entry: imgclf_ray/estimators/), with
    scikit-learn's defaults (plus ``random_state`` = the seed for seeded ones, and the entry's
    defaults, e.g. max_iter), as scikit-learn would fit it on the same features. A StandardScaler
    goes first when ``spec.scale`` says so, by default only for a scale-sensitive estimator on
    features that are not already bounded to [0, 1] (``features``: the extractor's name; see
    BOUNDED_FEATURES). ``spec.calibrate`` wraps it in CalibratedClassifierCV (cv=3). With a grid
    search when asked. For multilabel targets, estimators without native multilabel support are
    fitted one-vs-rest (one binary model per label)."""
    import importlib

    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from imgclf_ray.features.extractors import BOUNDED_FEATURES
    from imgclf_ray.registry import ESTIMATORS

    entry = ESTIMATORS.get(spec.name)
    module, _, name = entry.cls.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults = {**entry.defaults, **({"random_state": seed} if entry.seeded else {})}

    def base(params: dict[str, Any]):
        return cls(**{**defaults, **params})

    scaled = spec.scale if spec.scale is not None else (entry.scale_sensitive and features not in BOUNDED_FEATURES)
    calibrated = spec.calibrate is not None
    native = entry.native_multilabel

    def build(params: dict[str, Any]):
        est = base(params)
        if calibrated:  # SVC(probability=True) is deprecated: this is scikit-learn's way
            est = CalibratedClassifierCV(est, method=spec.calibrate, cv=3)
        if multilabel and not native:
            from sklearn.multiclass import OneVsRestClassifier

            est = OneVsRestClassifier(est)
        return make_pipeline(StandardScaler(), est) if scaled else est

    if spec.search is None:
        return build(spec.params)
    from sklearn.model_selection import GridSearchCV

    # Search parameters address the estimator itself: C, not calibratedclassifiercv__estimator__C.
    prefix = "estimator__" if calibrated else ""
    if multilabel and not native:
        prefix = "estimator__" + prefix
    step = f"{build({}).steps[-1][0]}__" if scaled else ""  # the pipeline's name for the estimator
    grid = {f"{step}{prefix}{k}": v for k, v in spec.search.grid.items()}
    if spec.search.halving:
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV

        return HalvingGridSearchCV(build(spec.params), grid, cv=spec.search.cv, scoring=spec.search.scoring,
                                   random_state=seed)
    return GridSearchCV(build(spec.params), grid, cv=spec.search.cv, scoring=spec.search.scoring)


# Up to this many labelled images, features are extracted in this process: a Ray Data pass costs
# 2-8 s of start-up that a small archive's extraction (1.5 s for the 1,797 digits) does not.
IN_PROCESS_IMAGES = 4096


def extract_features(spec: TrainSpec, manifest: pa.Table) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], int]:
    """(model inputs, true labels, error rows) for the manifest, made by the inference CPU stage:
    features for an estimator, conditioned (C, H, W) uint8 pixels for a CNN. Ray Data tasks do it
    for an archive of more than IN_PROCESS_IMAGES images, this process for a smaller one."""
    from imgclf_ray.models.artifact import FeaturesCard, PreprocessCard
    from imgclf_ray.stages import LoadConfig, LoadStage

    prep = PreprocessCard(**spec.model.preprocess.model_dump())
    features = FeaturesCard(**spec.model.features.model_dump()) if spec.model.features else None
    stage = LoadStage(LoadConfig(spec.storage, spec.decode, prep.conditioning(), features=features))
    batch = spec.resources.decode_batch_size or 32
    given = "split" in manifest.column_names
    columns = ["inputs", "status", "true_label"] + (["split"] if given else [])
    # Through the engine contract (runner.engine), in manifest order: the seeded split needs it.
    if manifest.num_rows <= IN_PROCESS_IMAGES:
        from imgclf_ray.runner.local import LocalEngine

        engine = LocalEngine(light=True, in_process=True)
    else:
        from imgclf_ray.runner.build import RayEngine
        from imgclf_ray.runner.ray_setup import ensure_ray

        ensure_ray(spec.run.ray_address)
        engine = RayEngine()
    from imgclf_ray.planner import plan_resources
    from imgclf_ray.spec import ResourcesSpec

    # Decoding only: the spec's actor settings (a run's predictors) do not apply to it.
    plan = plan_resources(engine.resources(), ResourcesSpec(decode_batch_size=batch), "cpu", light=True)
    outputs = engine.load_batches(manifest, plan, stage, columns, batch, ordered=True)
    xs, ys, ss, errors = [], [], [], 0
    for out in outputs:
        ok = out["status"] == "ok"
        errors += int((~ok).sum())
        xs.append(np.stack(list(out["inputs"][ok])) if out["inputs"].dtype == object else out["inputs"][ok])
        ys.append(np.asarray(out["true_label"])[ok])
        if given:
            ss.append(np.asarray(out["split"])[ok])
    splits = np.concatenate(ss).astype(str) if given else None
    return np.concatenate(xs), np.concatenate(ys).astype(str), splits, errors


def _named(spec: TrainSpec, labels: list[str]) -> str:
    """The labels, for a message, when they are folder names (the user's own, in every path
    shown); a labels table's values are data, never shown (a wrong column can hold names)."""
    if spec.data.labels is None or spec.data.labels.kind != "folder":
        return ""
    return ": " + printable(", ".join(labels[:10]), names=True) + (" ..." if len(labels) > 10 else "")


def _targets(spec: TrainSpec, names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    sep = spec.data.labels.separator
    if spec.task == "multilabel":
        sets = [set(n.split(sep)) - {""} for n in names]
        labels = sorted(set().union(*sets))
        return np.array([[int(lab in s) for lab in labels] for s in sets]), labels
    labels = sorted(set(names))
    if spec.task == "binary":
        if len(labels) != 2:
            raise SpecError(f"task: binary needs two labels, the data has {len(labels)}{_named(spec, labels)}")
        positive = spec.positive or labels[1]
        if positive not in labels:
            raise SpecError(f"positive: {positive!r} is not one of the data's two labels{_named(spec, labels)}")
        labels = [lab for lab in labels if lab != positive] + [positive]
    # Indices into the card's labels: predict_proba's columns follow the card.
    return np.array([labels.index(n) for n in names]), labels


def _tune_thresholds(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Per-label threshold maximising F1 on the validation split (multilabel)."""
    out = {}
    for j, lab in enumerate(labels):
        best, best_f1 = 0.5, -1.0
        for t in np.linspace(0.05, 0.95, 19):
            pred = probs[:, j] >= t
            tp = int((pred & (y[:, j] == 1)).sum())
            f1 = 2 * tp / max(int(pred.sum()) + int(y[:, j].sum()), 1)
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(round(t, 2)), f1
        out[lab] = best
    return out


def _probs(estimator, x: np.ndarray, multilabel: bool = False) -> np.ndarray:
    from imgclf_ray.models.sklearn_classifier import estimator_scores

    return estimator_scores(estimator, x, multilabel)


def _rows(probs: np.ndarray, truth: list[str], labels: list[str], task: str, thresholds: dict[str, float]):
    """Test-split predictions as output-like rows, decided by the same head inference uses."""
    decision = Head(task, labels, thresholds).decide(probs)
    return [{"status": "ok", "label": labels[decision.label[i]], "true_label": truth[i],
             "labels": [labels[j] for j in decision.chosen[i]] if decision.chosen is not None else None,
             "label_path": None, "class_scores": probs[i].tolist()} for i in range(len(probs))]


def _split(spec: TrainSpec, key: str, idx: np.ndarray, size: float, strat, seed: int, classes: int):
    """A seeded, stratified split; a set too small to split by class is the user's error, named."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(idx, test_size=size, stratify=strat, random_state=seed)
    except ValueError as exc:
        raise SourceError(f"{spec.data.uri}: {len(idx)} labelled images cannot be split by class ({key}: {size}, "
                          f"{classes} classes: {scrub(str(exc).splitlines()[0], 160)}); label more images of each class, "
                          f"or change {key}") from None


def _fit_one(spec: TrainSpec, x: np.ndarray, names: np.ndarray, output: str, seed: int,
             card_extra: Optional[dict[str, Any]] = None, splits: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Split, (search,) fit, score and save one model; returns its test metrics."""
    import sklearn

    task = "multiclass" if spec.task == "hierarchical" else spec.task
    y, labels = _targets(spec.model_copy(update={"task": task}), names)
    if len(labels) < 2:
        raise SourceError(f"{spec.data.uri}: training needs at least two labels, the data has {len(labels)}"
                          f"{_named(spec, labels)}")
    idx = np.arange(len(y))
    thresholds: dict[str, float] = {}
    val_idx = np.array([], dtype=int)
    if splits is not None:  # given by the labels table
        train_idx, val_idx, test_idx = (idx[splits == part] for part in ("train", "validation", "test"))
        if not len(train_idx) or not len(test_idx):
            raise SourceError(f"{spec.data.uri}: the given split has {len(train_idx)} train and "
                              f"{len(test_idx)} test images; both are needed")
    else:
        strat = names if task != "multilabel" else None
        train_idx, test_idx = _split(spec, "split.test", idx, spec.split.test, strat, seed, len(labels))
        if spec.split.validation and (task == "multilabel" or spec.model.cnn is not None):
            train_idx, val_idx = _split(spec, "split.validation", train_idx, spec.split.validation,
                                        None if task == "multilabel" else y[train_idx], seed, len(labels))
    if spec.model.cnn is not None:
        return _fit_cnn_one(spec, task, x, y, labels, names, train_idx, val_idx, test_idx, output, seed, card_extra)
    estimator = make_estimator(spec.model.estimator, seed, task == "multilabel",
                               spec.model.features.name).fit(x[train_idx], y[train_idx])
    search = {}
    if hasattr(estimator, "best_params_"):
        search = {"best_params": estimator.best_params_, "best_score": round(float(estimator.best_score_), 4)}
        estimator = estimator.best_estimator_
    if len(val_idx):
        thresholds = _tune_thresholds(_probs(estimator, x[val_idx], task == "multilabel"), y[val_idx], labels)
    truth = list(names[test_idx])
    probs = _probs(estimator, x[test_idx], task == "multilabel")
    metrics = evaluate_rows(_rows(probs, truth, labels, task, thresholds), task, labels,
                            spec.data.labels.separator, threshold=thresholds.get(labels[-1], 0.5) if task == "binary" else None)
    card = {
        "task": task, "labels": labels, "thresholds": thresholds,
        "preprocess": spec.model.preprocess.model_dump(), "features": spec.model.features.model_dump(),
        "metrics": {"test": metrics, **({"search": search} if search else {})},
        "training": {"data": spec.data.uri, "train_images": int(len(train_idx)), "validation_images": int(len(val_idx)),
                     "test_images": int(len(test_idx)), "seed": seed, "estimator": spec.model.estimator.model_dump(),
                     **(card_extra or {})},
        "library_versions": {"scikit-learn": sklearn.__version__},
    }
    with interrupts.shielded():  # an artifact is written whole
        save_sklearn_artifact(output, card, estimator, spec.storage)
    return metrics


def _fit_cnn_one(spec: TrainSpec, task: str, x: np.ndarray, y: np.ndarray, labels: list[str], names: np.ndarray,
                 train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray, output: str, seed: int,
                 card_extra: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Train a CNN on Ray Train, save it as safetensors, tune multilabel thresholds, score the test split."""
    import torch
    import torchvision

    from imgclf_ray.models.artifact import load_state_dict, read_card, save_artifact
    from imgclf_ray.models.torch_classifier import TorchClassifier
    from imgclf_ray.training.cnn import fit_cnn

    cnn = spec.model.cnn
    prep = spec.model.preprocess.model_dump()
    if prep["mean"] is None and prep["normalize"] == "dataset":
        scaled = x[train_idx].astype(np.float32) / 255.0
        prep["mean"] = scaled.mean(axis=(0, 2, 3)).round(4).tolist()
        prep["std"] = np.maximum(scaled.std(axis=(0, 2, 3)), 1e-3).round(4).tolist()
    init, network = None, {"library": "torchvision", "architecture": cnn.architecture, "network_config": {}}
    if cnn.init_weights:
        init_card = read_card(cnn.init_weights, spec.storage)
        network = {"library": init_card.library, "architecture": init_card.architecture,
                   "network_config": init_card.network_config}
        init = load_state_dict(cnn.init_weights, init_card, spec.storage)
    if cnn.workers:  # Ray Train's worker group (the features of a small archive were made without Ray)
        from imgclf_ray.runner.ray_setup import ensure_ray

        ensure_ray(spec.run.ray_address)
    state, history = fit_cnn(cnn, x[train_idx], y[train_idx], x[val_idx], y[val_idx], len(labels),
                             task == "multilabel", prep["mean"], prep["std"], seed, init, network=network)
    fields = {
        "framework": "torch", **network, "task": task, "labels": labels,
        "preprocess": prep,
        "training": {"data": spec.data.uri, "train_images": int(len(train_idx)), "validation_images": int(len(val_idx)),
                     "test_images": int(len(test_idx)), "seed": seed,
                     "best_epoch": history[-1]["epoch"] if history else None,
                     "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                                  if k in ("epoch", "train_loss", "val_loss", "val_accuracy")} for h in history],
                     "cnn": cnn.model_dump(), **(card_extra or {})},
        "library_versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                             **_library_version(network["library"])},
    }
    # The artifact is written, scored on the test split and written again with its metrics: one
    # step for a signal (a model without its metrics is never left as if complete).
    with interrupts.shielded():
        save_artifact(output, fields, state, spec.storage)
        clf = TorchClassifier(output, spec.storage, device="cpu")
        thresholds: dict[str, float] = {}
        if task == "multilabel" and len(val_idx):
            thresholds = _tune_thresholds(clf.predict_proba(x[val_idx]), y[val_idx], labels)
        probs = np.concatenate([clf.predict_proba(x[test_idx][i:i + 256]) for i in range(0, len(test_idx), 256)])
        metrics = evaluate_rows(_rows(probs, list(names[test_idx]), labels, task, thresholds), task, labels,
                                spec.data.labels.separator, threshold=thresholds.get(labels[-1], 0.5) if task == "binary" else None)
        save_artifact(output, {**fields, "thresholds": thresholds, "metrics": {"test": metrics}}, state, spec.storage)
    return metrics


def _library_version(library: str) -> dict[str, str]:
    if library == "torchvision":
        return {}
    import importlib.metadata

    return {library: importlib.metadata.version(library)}


def with_init_network(spec: TrainSpec) -> TrainSpec:
    """A CNN fine-tuned from an artifact takes that artifact's network, and its preprocess when the
    spec gives none; a Hugging Face network is refused (fine-tune it with transformers)."""
    cnn = spec.model.cnn
    if cnn is None or not cnn.init_weights:
        return spec
    from imgclf_ray.models import mlflow_registry as registry
    from imgclf_ray.models.artifact import read_card
    from imgclf_ray.spec import PreprocessSpec

    if registry.is_registered(cnn.init_weights):  # models:/NAME@champion: that version's artifact
        tracking = registry.tracking_uri(spec.registry.tracking_uri if spec.registry else None, "registry.tracking_uri")
        cnn = cnn.model_copy(update={"init_weights": registry.resolve(cnn.init_weights, tracking, spec.storage).source})

    card = read_card(cnn.init_weights, spec.storage)
    where = f"model.cnn.init_weights {cnn.init_weights}"
    if card.framework != "torch" or card.weights.format == "torchscript" or card.library == "transformers":
        raise SpecError(f"{where}: a {card.library if card.framework == 'torch' else card.framework} "
                        f"{card.weights.format} model cannot be fine-tuned here (torchvision and timm networks can)")
    if cnn.architecture and cnn.architecture != card.architecture:
        raise SpecError(f"model.cnn.architecture {cnn.architecture!r} differs from {where}'s "
                        f"{card.architecture!r}; drop one")
    update: dict[str, Any] = {"cnn": cnn.model_copy(update={"architecture": card.architecture})}
    if spec.model.preprocess is None:
        update["preprocess"] = PreprocessSpec(**card.preprocess.model_dump())
    return spec.model_copy(update={"model": spec.model.model_copy(update=update)})


def train_job(spec: TrainSpec) -> dict[str, Any]:
    """Train and save the model a TrainSpec describes; returns the test metrics (for hierarchical
    tasks: per node)."""
    from imgclf_ray.training.bundled import ensure_example_archive, moved

    started = time.perf_counter()
    if spec.registry is not None:
        _check_registry(spec)  # before any work: a version needs its own folder, and a reachable source
    spec = with_init_network(spec)
    written = (ensure_example_archive(spec.example.dataset, spec.data, spec.storage, moved(spec, "data.uri"))
               if spec.example else 0)
    manifest = attach_true_labels(list_archive(spec.data, spec.storage), spec.data, spec.storage, "data.labels")
    manifest, gold = _without_gold(spec, manifest)
    truth = manifest.column("true_label")  # (an empty cell of a labels table: no label, but for multilabel)
    labelled = manifest.filter(truth.is_valid() if spec.task == "multilabel" else
                               pc.fill_null(pc.not_equal(truth, ""), False))
    if not labelled.num_rows:
        raise SourceError(f"{spec.data.uri}: no image has a label (data.labels)")
    x, names, splits, errors = extract_features(spec, labelled)
    digest = hashlib.sha256("\n".join(f"{u} {e}" for u, e in zip(labelled.column("uri").to_pylist(),
                                                                   labelled.column("etag").to_pylist())).encode()).hexdigest()
    extra = {"data_digest": "sha256:" + digest, "unlabelled_images": manifest.num_rows - labelled.num_rows,
             "unreadable_images": errors, **({"gold_images_left_out": gold} if gold else {})}
    seed = spec.split.seed
    if spec.task != "hierarchical":
        metrics = _fit_one(spec, x, names, spec.model.output, seed, extra, splits)
    else:
        metrics = _fit_tree(spec, x, names, seed, extra, splits)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    if written:
        metrics["example_written"] = written
    if gold:
        metrics["gold_images_left_out"] = gold
    if spec.registry is not None:
        metrics["registered"] = _register(spec, metrics)
    return metrics


def _without_gold(spec: TrainSpec, manifest: pa.Table) -> tuple[pa.Table, int]:
    """The manifest without the gold set's images of the sink whose reviews label it (data.labels
    kind: reviewed): the images that judge models are never trained on. Returns how many it left out."""
    labels = spec.data.labels
    if labels.kind != "reviewed":
        return manifest, 0
    from imgclf_ray.io.reviews import gold_batch
    from imgclf_ray.io.sink import Sink

    gold = gold_batch(Sink(labels.sink, spec.storage))
    if not gold:
        return manifest, 0
    keep = pc.invert(pc.is_in(manifest.column("uri"), pa.array(gold.get("uris") or [], pa.string())))
    return manifest.filter(keep), manifest.num_rows - pc.sum(keep.cast(pa.int64())).as_py()


def _check_registry(spec: TrainSpec) -> None:
    from imgclf_ray.io.storage import is_local
    from imgclf_ray.models import mlflow_registry as registry

    tracking = registry.tracking_uri(spec.registry.tracking_uri, "registry.tracking_uri")
    fs, path = filesystem(spec.model.output, spec.storage)
    if fs.exists(join(path, CARD_FILE)):
        raise SpecError(f"model.output {spec.model.output} holds an artifact already: with registry: each "
                        "version is a folder of its own (the registry records its model id; training into a "
                        "registered folder would change what that version is): give model.output a new folder")
    if registry.is_server(tracking) and is_local(fs):
        where = "registry.tracking_uri" if spec.registry.tracking_uri else "MLFLOW_TRACKING_URI"
        raise SpecError(f"{where} {without_credentials(tracking)} is a tracking server: it registers only sources it can "
                        f"read, and the cluster's nodes must read them too; model.output {spec.model.output} is a "
                        "folder on this machine: write the model to object storage (s3://...)")


def _register(spec: TrainSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    """Log the training in MLflow and register the artifact as a new version (spec.registry)."""
    from imgclf_ray.models import mlflow_registry as registry
    from imgclf_ray.models.hierarchy import describe_artifact

    tracking = registry.tracking_uri(spec.registry.tracking_uri, "registry.tracking_uri")
    model_id = describe_artifact(spec.model.output, spec.storage).model_id
    m = spec.model
    params = {"task": spec.task, "data": spec.data.uri, "labels": spec.data.labels.kind, "split_seed": spec.split.seed,
              "features": m.features.name if m.features else None,
              "estimator": m.estimator.name if m.estimator else None,
              "cnn": m.cnn.architecture if m.cnn else None, "init_weights": m.cnn.init_weights if m.cnn else None}
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    artifact = to_uri(*filesystem(spec.model.output, spec.storage))  # absolute: read from anywhere
    version = registry.register(tracking, spec.registry.name or spec.name, artifact, model_id,
                                {k: v for k, v in params.items() if v is not None}, numbers,
                                {"imgclf.spec": spec.name})
    return {**version.record(), "model_id": model_id}  # (as a run records it: the tracking URI without a credential)


def _fit_tree(spec: TrainSpec, x: np.ndarray, names: np.ndarray, seed: int, extra: dict[str, Any],
              splits: Optional[np.ndarray] = None) -> dict[str, Any]:
    """One model per parent node of the label paths, each on its branch's rows; then the tree card."""
    from datetime import datetime, timezone

    from imgclf_ray.models.hierarchy import TreeCard

    paths = [n.split("/") for n in names]
    results: dict[str, Any] = {}

    def node(prefix: tuple[str, ...]) -> dict[str, Any]:
        rows = np.array([p[:len(prefix)] == list(prefix) and len(p) > len(prefix) for p in paths])
        nxt = np.array([paths[i][len(prefix)] for i in np.flatnonzero(rows)])
        folder = "/".join(("node",) + prefix) if prefix else "root"
        results[folder] = _fit_one(spec, x[rows], nxt, join(spec.model.output, folder), seed, extra,
                                   None if splits is None else splits[rows])
        children = {}
        for label in sorted(set(nxt)):
            if any(len(p) > len(prefix) + 1 and p[len(prefix)] == label for p in paths):
                children[label] = node(prefix + (label,))
        return {"model": folder, "children": children}

    with interrupts.steps():  # the nodes' artifacts: the model is committed by its tree card
        root = node(())
    tree = TreeCard(root=root, description=f"trained by imgclf train ({spec.name})",
                    metrics={"nodes": {k: {m: v for m, v in r.items() if isinstance(v, (int, float))}
                                       for k, r in results.items()}},
                    created_at=datetime.now(timezone.utc).isoformat())
    fs, path = filesystem(spec.model.output, spec.storage)
    with interrupts.shielded():
        fs.pipe_file(join(path, CARD_FILE), tree.model_dump_json(indent=2).encode())
    return {"task": "hierarchical", "nodes": results}
