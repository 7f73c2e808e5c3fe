"""One run's plan, made once before any work from the spec, the model card's description and the
cluster's resources; the rest of the run reads the plan, never the card or the cluster again."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from imgclf_ray.models.hierarchy import ArtifactInfo, describe_artifact
from imgclf_ray.models.loader import check_artifact
from imgclf_ray.planner import Plan, plan_resources
from imgclf_ray.runner.checks import check_device_decode, check_thresholds, label_issue_labels
from imgclf_ray.spec import JobSpec


@dataclass(frozen=True)
class RunPlan:
    """What a run decided before it started (frozen)."""

    spec: JobSpec
    model: Optional[ArtifactInfo]  # the artifact's description (card read once), None without a model
    checks: tuple[str, ...]  # the curation checks it runs
    label_issue_labels: Optional[list[str]]  # the card's labels when label_issue runs
    resources: Plan  # actors, batch sizes, device, memory


def registered_model(spec: JobSpec) -> tuple[JobSpec, Optional[dict[str, Any]]]:
    """A job whose model.uri names an MLflow registry version (models:/NAME@champion) with that
    uri replaced by the version's artifact, resolved once here on the driver (actors read the
    artifact's own URI), and the version's record for the manifest; other jobs as they are."""
    from imgclf_ray.models import mlflow_registry as registry

    if spec.model is None or not registry.is_registered(spec.model.uri):
        return spec, None
    uri = registry.tracking_uri(spec.model.tracking_uri, "model.tracking_uri")
    version = registry.resolve(spec.model.uri, uri, spec.storage)
    model = spec.model.model_copy(update={"uri": version.source})
    return spec.model_copy(update={"model": model}), {"uri": spec.model.uri, **version.record()}


def refuse_before_work(spec: JobSpec, model: Optional[ArtifactInfo] = None) -> Optional[ArtifactInfo]:
    """What a run refuses before any work, checked once: a bad artifact (tampered, untrusted, one
    that would run code, thresholds it lacks) and a ``decode.jpeg_on`` that cannot apply. Returns
    the artifact's description (the card read once, handed on); None without a model."""
    if spec.model is not None:
        model = model or describe_artifact(spec.model.uri, spec.storage)
        # A tampered, untrusted or malformed file is refused with a clear message before any work
        # starts (the actors load it again).
        check_thresholds(spec, model, check_artifact(spec.model.uri, spec.storage, spec.model.trusted,
                                                     spec.model.runtime, model))
    check_device_decode(spec, model)
    return model


def make_plan(spec: JobSpec, cluster_resources: Mapping[str, Any], model: Optional[ArtifactInfo] = None) -> RunPlan:
    """Decide the run from the spec, the artifact's description (``refuse_before_work``'s) and the
    cluster's resources."""
    checks = spec.curate_checks()
    labels = label_issue_labels(spec, model, checks)
    light = model is None or model.framework == "sklearn"
    # Classical estimators (and jobs without a model) run on CPU actors whatever the cluster has.
    device = "cpu" if light else spec.model.device
    resources = plan_resources(cluster_resources, spec.resources, device, light=light)
    if model is not None and model.task == "hierarchical" and not spec.resources.calls_per_actor:
        resources = replace(resources, calls_per_actor=1)  # each node sizes its passes to the whole memory
    return RunPlan(spec, model, checks, labels, resources)


# From here on ONNX Runtime: a first run of 1,000 images about earns back the export's seconds
# (ResNet-18: ~5 s against ~3.8 ms saved an image on 2 cores); every later run gains all of it,
# and a run that finds the export made takes it whatever its size.
ORT_MIN_IMAGES = 1000


def _files(n: int) -> str:
    """The files listed, as the runtime's reason says them (a table or a video is many images)."""
    return f"{n} file" if n == 1 else f"{n} files"


def _made(card) -> bool:
    """Whether this machine's cache holds the network's ONNX export (a cache that cannot be
    entered holds none)."""
    from imgclf_ray.models.onnx_runtime import export_path

    try:
        return export_path(card).exists()
    except OSError:
        return False


def with_runtime(run: RunPlan, rows: int, export: bool = True) -> tuple[RunPlan, dict[str, str]]:
    """``model.runtime: auto`` decided for this run, on either executor: ONNX Runtime for a plain
    torch network run on CPUs in fp32 — its forward pass measured 1.29x PyTorch's on ResNet-18 (2
    cores), and its predictors start without importing torch (~2 s sooner) — over at least
    ORT_MIN_IMAGES listed files (a table or a video is one of many images), or fewer when this machine's cache holds the export already; exported
    here once per machine (seconds), and on Ray shipped to the nodes (``build.shipped_export``).
    PyTorch otherwise, and when the network does not export. Returns the plan with the runtime
    set, and what the run records of it: {name, why} (empty for other models). ``export=False``
    (a dry run, which writes nothing): ONNX Runtime is said as the choice, the export left to the
    run (found in the cache, or made at its start; PyTorch if it fails)."""
    from imgclf_ray.errors import ArtifactError

    model = run.spec.model
    if model is None or run.model is None or run.model.framework != "torch" or run.model.task == "hierarchical":
        return run, {}  # (a tree's nodes run in PyTorch whatever model.runtime says)
    if model.runtime != "auto":
        return run, {"name": model.runtime, "why": "model.runtime"}
    why, made = None, _made(run.model.cards[()])
    if run.resources.device != "cpu" or model.precision != "fp32":
        why = f"auto: {model.precision} on {run.resources.device}"
    elif run.spec.decode.jpeg_on == "predictor":
        why = "auto: decode.jpeg_on predictor"
    elif rows < ORT_MIN_IMAGES and not made:
        why = f"auto: {_files(rows)}, fewer than {ORT_MIN_IMAGES}"
    elif export and not made:  # (made: nothing to export, nor the card to read again)
        from imgclf_ray.models.torch_classifier import onnx_export

        try:
            onnx_export(model.uri, run.spec.storage, model.trusted)  # made now (once per machine)
        except ArtifactError as exc:
            why = f"auto: {str(exc).split(' (', 1)[0]}"
        except Exception as exc:  # noqa: BLE001 - the cache folder unwritable, ...: PyTorch runs it as before
            why = f"auto: no ONNX export ({type(exc).__name__})"
    runtime = "torch" if why else "onnxruntime"
    why = why or (f"auto: fp32 on CPUs, {_files(rows)}" + (", the ONNX export made" if rows < ORT_MIN_IMAGES else "")
                  + ("" if export or made else "; if the network exports to ONNX"))
    spec = run.spec.model_copy(update={"model": model.model_copy(update={"runtime": runtime})})
    return RunPlan(spec, run.model, run.checks, run.label_issue_labels, run.resources), {"name": runtime, "why": why}
