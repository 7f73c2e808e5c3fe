"""The job spec: model, resources, sink, run, example and incremental sections, and the job itself."""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Literal, Optional

from pydantic import Field, PrivateAttr, field_validator, model_validator

from imgclf_ray import registry
from imgclf_ray.config.base import LAYOUT_FIELDS, plain_name, PlainName, Section, StorageSpec
from imgclf_ray.config.curate import ClusterSpec, CurateSpec
from imgclf_ray.config.source import SourceSpec, DecodeSpec


class ModelSpec(Section):
    """Which model to apply. Its preprocessing comes from the artifact's model card."""

    uri: str = Field(description="Model artifact folder (local or s3://) holding model_card.json "
                     "and the weights it names; or a version in an MLflow registry, models:/NAME@champion "
                     "(an alias) or models:/NAME/3, resolved once when the run starts (the manifest records "
                     "name, version and model id).")
    tracking_uri: Optional[str] = Field(
        None, description="The MLflow registry a models:/ uri is looked up in (absolute: "
        "sqlite:////srv/mlflow.db, http://mlflow:5000); default $MLFLOW_TRACKING_URI.")
    topk: int = Field(5, ge=1, description="How many labels and scores go into topk_labels / "
                      "topk_scores.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: GPU actors when the cluster has GPUs, CPU otherwise.")
    threshold: Optional[float] = Field(
        None, ge=0, le=1, description="Decision threshold for every label, replacing the model "
        "card's (binary: on the positive label's probability; multilabel: on each label's).")
    thresholds: Optional[dict[str, float]] = Field(
        None, description="Per-label decision thresholds (multilabel, or binary's positive label), "
        "replacing the card's and model.threshold for those labels.")
    trusted: bool = Field(
        False, description="Load artifact formats that run code stored in the file (TorchScript: "
        "its code runs when it is loaded and at every prediction). Only for files whose author you "
        "trust; safetensors, state_dict (weights_only) and skops artifacts never need it.")
    precision: Literal["fp32", "tf32", "bf16", "fp16", "int8"] = Field(
        "fp32", description="Torch models: fp32 is IEEE fp32 on CPUs and GPUs alike (TF32 off); tf32 lets "
        "GPUs (Ampere and later) run fp32 convolutions and matmuls on TF32 tensor cores (a 10-bit "
        "mantissa: faster, probabilities move in the third decimal); bf16 runs weights and activations in "
        "bfloat16 (GPUs, and CPUs with AVX512-BF16 or AMX): faster, and probabilities move in the "
        "third decimal, so near-ties may change label; fp16 runs in float16 under autocast on GPU "
        "actors (a CPU actor computes fp16 jobs in fp32 and logs it). int8 (CPU actors; torch and ONNX "
        "artifacts): ONNX Runtime static quantization (QDQ, per-channel int8 weights), calibrated once on "
        "the driver and kept under <sink>/_int8/; refused when its labels (top-1; multilabel: those over "
        "their thresholds) agree with fp32's on fewer than model.int8_min_agreement of held-back images.")
    calibration: Optional[str] = Field(
        None, description="int8: a folder or prefix of images to calibrate on (at least 32); default: a "
        "seeded sample of the archive, drawn on first use and recorded under <sink>/_int8/.")
    int8_min_agreement: float = Field(
        0.99, ge=0, le=1, description="int8: the least share of held-back calibration images whose labels "
        "(top-1; multilabel: those over their thresholds) equal fp32's; below it the first convolution and the classifier head stay in float, and "
        "below it again the run is refused with both figures.")
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="Torch models: torch runs the network in PyTorch; onnxruntime runs an ONNX "
        "export of it (made once per machine into $IMGCLF_CACHE, default ~/.cache/imgclf-ray, never "
        "into the model folder) with ONNX Runtime on CPU actors (GPU actors need the onnxruntime-gpu "
        "package); auto: onnxruntime on CPUs, in fp32, for a plain network that exports, over at least "
        "1,000 listed files (a folder's images) or once the export is made (its forward pass measured 1.29x PyTorch's on "
        "ResNet-18, and its predictors start without importing torch; the export, seconds, once per "
        "machine, shipped from the driver to Ray's nodes), torch otherwise — the run's summary says "
        "which. ONNX artifacts always run in ONNX Runtime.")

    @model_validator(mode="after")
    def _runtime(self) -> "ModelSpec":
        if self.runtime == "onnxruntime" and self.precision not in ("fp32", "int8"):
            raise ValueError(f"runtime onnxruntime runs in fp32 or int8: drop precision: {self.precision}")
        if self.precision == "int8" and self.device == "cuda":
            raise ValueError("precision int8 runs on CPU actors (ONNX Runtime); on a GPU use precision: fp16")
        if self.precision != "int8" and self.calibration:
            raise ValueError("calibration is for precision: int8")
        return self


class ResourcesSpec(Section):
    """Overrides for the resource planner; leave unset to size from the cluster."""

    actors: Optional[int] = Field(None, ge=1, description="Predictor actors in the pool (it starts "
                                  "with this many and may shrink, e.g. after losing a node).")
    cpus_per_actor: Optional[float] = Field(None, gt=0, description="CPUs reserved by each "
                                            "predictor actor (also its torch thread count).")
    gpus_per_actor: Optional[float] = Field(None, ge=0, description="GPUs per predictor actor; 0 "
                                            "forces CPU inference.")
    batch_size: Optional[int] = Field(None, ge=1, description="Images per predictor call.")
    calls_per_actor: Optional[int] = Field(
        None, ge=1, le=4, description="Batches each predictor works on at once, in threads: default 2 on a "
        "GPU (one batch's host work — its inputs copied in, its output rows built — overlaps the other's "
        "forward pass; each forward pass is sized to its share of the device's memory), 1 on CPUs (the "
        "forward pass already takes every core the predictor has).")
    decode_batch_size: Optional[int] = Field(None, ge=1, description="Images per read+decode "
                                             "task call.")
    gpus: Optional[int] = Field(
        None, ge=1, description="GPUs the run plans its GPU actors for when the cluster has fewer now (an "
        "autoscaling GPU group at zero replicas, as cluster/kuberay's): all its GPU actors are asked for at "
        "once, and their pending demand makes the autoscaler start the GPU nodes; when they are not all up "
        "after gpu_wait seconds the run fails, committing nothing.")
    gpu_wait: float = Field(600.0, gt=0, description="Seconds to wait for the GPU actors (with gpus).")


class SinkSpec(Section):
    """Where the Parquet output goes."""

    uri: str = Field(description="Output location (local folder or s3://bucket/prefix). Each run "
                     "is committed to <uri>/<layout>/ with _manifest.json and _SUCCESS.")
    run_id: Optional[str] = Field(
        None,
        description="Name of this run's output folder (a plain name: letters, digits, '_', '-', "
        "'.'); default <job name>-<UTC timestamp>. Rerunning an existing run_id replaces that run's "
        "output, whatever its date in the layout.")
    layout: str = Field("{run_id}", description="Path of a run's folder under uri, a template of "
                        "{run_id} (the last part, always), {date} (YYYY-MM-DD), {year}, {month}, {day} "
                        "and {name}: e.g. 'date={date}/{run_id}' (Hive-style partitions: readers "
                        "prune by date) or '{year}/{month}/{day}/{run_id}'.")
    run_date: Optional[date] = Field(None, description="The run's date in the layout; default: the "
                                     "date of `imgclf run --date`, else the UTC date the run starts.")
    min_rows_per_file: int = Field(50_000, ge=1, description="Rows gathered before a Parquet file "
                                   "is written (fewer only for the last files of a run).")
    max_rows_per_file: int = Field(500_000, ge=1, description="Upper bound on rows per Parquet file.")
    format: Literal["parquet", "delta"] = Field(
        "parquet", description="parquet: one folder of Parquet files per run (any Parquet reader). "
        "delta: uri is one Delta Lake table partitioned by run_id; each run replaces its run id's rows "
        "in one transaction (Spark, DuckDB, polars, Trino, deltalake read it); run records go to "
        "<uri>/_runs/<run_id>/. A sink holds one format or the other.")

    @model_validator(mode="after")
    def _delta_layout(self) -> "SinkSpec":
        if self.format == "delta" and self.layout != "{run_id}":
            raise ValueError("sink.layout applies to format parquet; a Delta table is partitioned by "
                             "run_id (leave layout unset)")
        return self

    @field_validator("run_id")
    @classmethod
    def _plain_run_id(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else plain_name(v)

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        import string

        fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        unknown = sorted(fields - set(LAYOUT_FIELDS))
        if unknown:
            raise ValueError(f"unknown field {{{unknown[0]}}} (known: {', '.join(LAYOUT_FIELDS)})")
        parts = v.strip("/").split("/")
        if parts[-1] != "{run_id}":
            raise ValueError("the last part must be {run_id} (one folder per run)")
        if any(p in ("", ".", "..") or p.startswith(("_", ".")) for p in parts):
            raise ValueError("parts may not be empty, '.', '..' or start with '_' or '.' (reserved)")
        sample = v.format(run_id="r", date="2026-01-01", year="2026", month="01", day="01", name="n")
        if any(not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]*", p) for p in sample.strip("/").split("/")):
            raise ValueError("parts are plain names: letters, digits, '_', '-', '.' and '=' (no spaces "
                             "or control characters)")
        return v.strip("/")


class RunSpec(Section):
    """How the run behaves as a whole."""

    max_error_rate: Optional[float] = Field(
        None, ge=0, le=1,
        description="Error budget: if more than this fraction of images are error rows, the run "
        "fails and commits nothing. null: no budget.")
    ray_address: Optional[str] = Field(
        None, description="Ray cluster to join (ray://..., or 'auto'); default: the RAY_ADDRESS "
        "environment variable, else a local Ray instance started for this run.")
    executor: Literal["auto", "ray", "local"] = Field(
        "auto", description="auto: ray when a Ray cluster is named or running (run.ray_address or "
        "--address, RAY_ADDRESS, Ray initialised in the calling process, a `ray start` instance on this "
        "machine, source.inventory), else local; the run's summary says which and why. ray: Ray Data "
        "tasks and an actor pool, on a cluster or a local Ray instance started for the run. local: the "
        "same stages and the same commit in this process, without Ray (reading and decoding in worker "
        "processes, the model here): no Ray start-up, for one machine; a worker that dies fails the run "
        "(nothing committed) where Ray would retry it.")


class ExampleSpec(Section):
    """Self-contained examples: materialise data and a model that a dependency ships."""

    dataset: Literal["digits", "faces", "textures"] = Field(
        description="Written as PNG files into source.uri (one folder per class) when that folder "
        "holds no images yet. digits: scikit-learn's 1,797 handwritten digits; faces: scikit-image's "
        "lfw_subset, 100 faces and 100 non-faces; textures: 64x64 patches of scikit-image's brick, "
        "grass and gravel photographs, 64 each.")
    train_model: bool = Field(
        True, description="Train the example model into model.uri when no artifact is there yet.")
    anywhere: bool = Field(
        False, description="Write the example data also where source.uri (a training spec's data.uri) was set on the command line "
        "(--set source.uri=s3://bucket/digits: a demo on S3). Without it the data is written only to "
        "the spec's own source.uri — never into an archive a job was pointed at — and only where "
        "nothing is yet (no file, not a glob).")
    model: Literal["resnet18", "mobilenet_v3_small", "efficientnet_b0", "svm-hog", "logreg-hog",
                   "mlp-attributes", "tree-hog", "forest-lbp"] = Field(
        "resnet18", description="Which example model to train: a torchvision CNN (digits); svm-hog, "
        "a calibrated RBF SVM over HOG (digits); logreg-hog, binary logistic regression over HOG "
        "(faces); mlp-attributes, a multilabel MLP on pixels predicting digit attributes (even, "
        "large, prime, closed-loop); tree-hog, a hierarchical tree (small or large digit, then the "
        "digit) of calibrated SVMs over HOG; forest-lbp, a random forest over LBP histograms "
        "(textures).")


class IncrementalSpec(Section):
    """What earlier runs processed is recorded per run in a state store (any fsspec URI)."""

    state: Optional[str] = Field(None, description="State store location (local or s3://); default "
                                 "<sink.uri>/_state/<name>.")
    on_new_model: Literal["relabel", "new_only"] = Field(
        "relabel", description="When the model changes (another model id: a retrained artifact, a promoted "
        "champion): relabel the images another model labelled, or new_only (only new and changed images; the "
        "older labels stay current). The run's summary says which. reprocess_on_model_change (true or false) is "
        "the older spelling of relabel and new_only.")

    @model_validator(mode="before")
    @classmethod
    def _older_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and "reprocess_on_model_change" in data:
            data = dict(data)
            old = data.pop("reprocess_on_model_change")
            if "on_new_model" in data:
                raise ValueError("give on_new_model, not also reprocess_on_model_change (its older spelling)")
            if not isinstance(old, bool):
                raise ValueError("reprocess_on_model_change: true or false (or on_new_model: relabel | new_only)")
            data["on_new_model"] = "relabel" if old else "new_only"
        return data
    overlap: Literal["refuse", "wait"] = Field(
        "refuse", description="When a night of this job starts while another is still running (the job-wide "
        "lock is held): refuse (one line naming the running run id, exit 75: a temporary failure to cron), or "
        "wait up to overlap_wait seconds for it to end, then refuse. Two nights never select the same images.")
    overlap_wait: float = Field(3600.0, ge=0, description="Seconds to wait when overlap: wait.")


class JobSpec(Section):
    """One imgclf job: list an archive, classify every image, commit Parquet."""

    _overridden: tuple[str, ...] = PrivateAttr(default=())  # the dotted keys set on the command line

    name: PlainName = Field(description="Job name; part of the default run id and of state paths (a plain "
                      "name: letters, digits, '_', '-', '.').")
    description: str = Field("", description="Free text for people.")
    source: SourceSpec = Field(description="Where the images are.")
    decode: DecodeSpec = Field(DecodeSpec(), description="How bytes become pixels.")
    model: Optional[ModelSpec] = Field(None, description="Which model to apply (none: a clustering "
                                       "and/or curation job).")
    cluster: Optional[ClusterSpec] = Field(None, description="Cluster the images (output columns "
                                           "cluster, cluster_distance, cluster_probability, embedding).")
    curate: Optional[CurateSpec] = Field(None, description="Curation checks: a score and an is_<check> "
                                         "flag per image and check.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="Planner overrides.")
    storage: StorageSpec = Field(StorageSpec(), description="Object-storage settings shared by "
                                 "source, sink and model URIs.")
    sink: SinkSpec = Field(description="Where the output goes.")
    run: RunSpec = Field(RunSpec(), description="Run-wide behaviour.")
    example: Optional[ExampleSpec] = Field(None, description="Bundled example data and model.")
    incremental: Optional[IncrementalSpec] = Field(
        None, description="Nightly runs over a growing archive: process only images that are new, "
        "changed, or were labelled by another model, as recorded in a state store.")

    @model_validator(mode="after")
    def _has_work(self) -> "JobSpec":
        if self.model is None and self.cluster is None and self.curate is None:
            raise ValueError("the job does nothing: give model, cluster or curate")
        if self.run.executor == "local":
            if self.run.ray_address:
                raise ValueError("run.executor: local runs in this process, without Ray; "
                                 "run.ray_address (--address) needs run.executor: ray")
            if self.source.inventory:
                raise ValueError("run.executor: local: source.inventory is listed by Ray tasks; "
                                 "use run.executor: ray")
        if self.curate is not None and self.curate.checks is not None:
            if "outlier" in self.curate.checks and self.cluster is None:
                raise ValueError("curate.checks: outlier measures distances in the clusterer's "
                                 "embedding space; add a cluster section")
            if "label_issue" in self.curate.checks and (self.model is None or self.source.labels is None):
                raise ValueError("curate.checks: label_issue needs a model and true labels "
                                 "(source.labels)")
        return self

    def curate_checks(self) -> tuple[str, ...]:
        """The curation checks this job runs: those asked for, or every one it can run."""
        if self.curate is None:
            return ()
        if self.curate.checks is not None:
            return tuple(dict.fromkeys(self.curate.checks))
        can = {None: True, "cluster": self.cluster is not None,
               "labels": self.model is not None and self.source.labels is not None}
        return tuple(c for c in registry.CURATION_CHECKS.names() if can[registry.CURATION_CHECKS.get(c).needs])

