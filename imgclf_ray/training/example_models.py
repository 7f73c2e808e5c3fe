"""The example jobs' models: ``example.model`` names a training spec in ``jobs/train/`` that the one
trainer (:mod:`imgclf_ray.training.trainer`) runs into the job's ``model.uri`` when no artifact is
there yet, after the bundled data set (:mod:`imgclf_ray.training.bundled`) is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from imgclf_ray.errors import SpecError
from imgclf_ray.io.storage import filesystem, join
from imgclf_ray.spec import JobSpec, StorageSpec, TrainSpec
from imgclf_ray.training.bundled import NOUNS, ensure_example_archive, moved

TRAIN_SPECS = Path(__file__).resolve().parents[2] / "jobs" / "train"
# example.model -> (training spec in jobs/train/, --set overrides)
EXAMPLE_MODELS: dict[str, tuple[str, list[str]]] = {
    "resnet18": ("digits-resnet18.yaml", []),
    "mobilenet_v3_small": ("digits-resnet18.yaml", ["model.cnn.architecture=mobilenet_v3_small"]),
    "efficientnet_b0": ("digits-resnet18.yaml", ["model.cnn.architecture=efficientnet_b0"]),
    "svm-hog": ("digits-svm-hog.yaml", []),
    "logreg-hog": ("faces-hog.yaml", []),
    "mlp-attributes": ("digits-attributes-mlp.yaml", []),
    "tree-hog": ("digits-tree-hog.yaml", []),
    "forest-lbp": ("textures-lbp.yaml", []),
}


def example_training_spec(model: str, data_uri: str, output: str,
                          storage: StorageSpec = StorageSpec()) -> TrainSpec:
    """The training spec of an example model (jobs/train/), reading ``data_uri`` and writing
    ``output``; a label table inside the spec's data folder moves with it."""
    from imgclf_ray.config.loading import load_spec

    file, overrides = EXAMPLE_MODELS[model]
    path = TRAIN_SPECS / file
    if not path.is_file():
        raise SpecError(f"example.model {model}: its training spec {path} is missing (the example "
                        "training specs ship in jobs/train/ of the source checkout)")
    spec = load_spec(path, overrides, TrainSpec)
    data: dict[str, Any] = {"uri": data_uri}
    labels = spec.data.labels
    if labels.table and labels.table.startswith(spec.data.uri.rstrip("/") + "/"):
        moved = data_uri.rstrip("/") + labels.table[len(spec.data.uri.rstrip("/")):]
        data["labels"] = labels.model_copy(update={"table": moved})
    return spec.model_copy(update={
        "data": spec.data.model_copy(update=data), "storage": storage,
        "model": spec.model.model_copy(update={"output": output})})


def train_example(model: str, data_uri: str, output: str, storage: StorageSpec = StorageSpec()) -> dict[str, Any]:
    """Train an example model with the one trainer; its held-out metrics."""
    from imgclf_ray.training.trainer import train_job

    return train_job(example_training_spec(model, data_uri, output, storage))


def _held_out(metrics: dict[str, Any]) -> str:
    if metrics.get("task") == "hierarchical":
        return ", ".join(f"{node} accuracy {m.get('accuracy')}" for node, m in metrics["nodes"].items())
    keys = ("accuracy", "roc_auc", "micro_f1", "macro_f1")
    return ", ".join(f"{k} {metrics[k]}" for k in keys if isinstance(metrics.get(k), (int, float)))


def prepare(spec: JobSpec, echo: Optional[Callable[[str], None]] = print) -> None:
    """Materialise the spec's example data and model where they are missing (no-op otherwise)."""
    if spec.example is None:
        return
    echo = echo or (lambda _: None)
    n = ensure_example_archive(spec.example.dataset, spec.source, spec.storage, moved(spec, "source.uri"))
    if n:
        echo(f"example: wrote {n} {NOUNS[spec.example.dataset]} to {spec.source.uri}")
    if spec.model is None or not spec.example.train_model:
        return
    if spec.model.uri.startswith("models:"):  # (it made a folder named models: beside the job)
        from imgclf_ray.errors import SpecError

        raise SpecError(f"example.train_model: trains the example's model into a folder, and model.uri "
                        f"{spec.model.uri} names a registered model: set example.train_model: false, or give "
                        "model.uri a folder")
    from imgclf_ray import interrupts
    from imgclf_ray.models.artifact import CARD_FILE

    fs, model_path = filesystem(spec.model.uri, spec.storage)
    if fs.exists(join(model_path, CARD_FILE)):
        return
    model = spec.example.model
    echo(f"example: training a {model} on the {spec.example.dataset} into {spec.model.uri} "
         f"(jobs/train/{EXAMPLE_MODELS[model][0]}) ...")
    with interrupts.steps():  # (the example's model is no commit of the run's: a signal after it commits nothing)
        metrics = train_example(model, spec.source.uri, spec.model.uri, spec.storage)
    echo(f"example: trained in {metrics['seconds']} s; held out: {_held_out(metrics)}")
