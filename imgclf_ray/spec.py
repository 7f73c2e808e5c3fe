"""The job spec: what a YAML file in ``jobs/`` may say, validated before Ray starts.

Every field carries a description; docs/reference.md's job-spec reference is generated from them
(``imgclf reference spec``). Unknown keys are refused (``extra="forbid"``) so that a typo never
silently falls back to a default.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgclf_ray import registry
from imgclf_ray.errors import SpecError
from imgclf_ray.ids import id_problem

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm")
# Pillow's own default for Image.MAX_IMAGE_PIXELS (about 89.5 megapixels).
PILLOW_MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
LAYOUT_FIELDS = ("run_id", "date", "year", "month", "day", "name")
# Names that would put a credential into a spec; refused with a pointer to where they belong.
_SECRET_KEYS = {
    "key", "secret", "token", "password", "session_token", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
}


def _plain(v: str) -> str:
    """A field validator's half of the identifier rule (imgclf_ray.ids)."""
    problem = id_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSpec(_Spec):
    """How to reach object storage. Credentials never go here: they come from the environment
    (``AWS_ACCESS_KEY_ID`` ...), a named profile, or the machine's role."""

    endpoint_url: Optional[str] = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, a moto server); default: AWS, "
        "or the AWS_ENDPOINT_URL environment variable.")
    region: Optional[str] = Field(None, description="Region of the bucket, e.g. eu-west-1.")
    profile: Optional[str] = Field(None, description="Named profile from ~/.aws/config to use.")
    anon: bool = Field(False, description="Read public buckets without credentials.")

    def fsspec_options(self, protocol: str) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem(protocol, ...)``."""
        if protocol not in ("s3", "s3a"):
            return {}
        # A run lists each prefix once; a cached listing in a long-lived process would miss new files.
        opts: dict[str, Any] = {"use_listings_cache": False}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region:
            opts["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            opts["profile"] = self.profile
        if self.anon:
            opts["anon"] = True
        return opts


class LabelsSpec(_Spec):
    """Where the true labels of a labelled archive come from (for evaluate, and the report)."""

    kind: Literal["folder", "table"] = Field(
        "folder", description="folder: the image's folders below source.uri (root/<label>/x.jpg; "
        "root/fruit/apple/x.jpg gives the hierarchical path fruit/apple); table: a CSV or Parquet "
        "table of uri -> label.")
    table: Optional[str] = Field(None, description="The table's URI (kind: table); .csv or .parquet.")
    uri_column: str = Field("uri", description="Its column of image URIs, full or relative to source.uri.")
    label_column: str = Field("label", description="Its column of labels: one label, a list joined by "
                              "the separator (multilabel), or a path fruit/apple (hierarchical).")
    separator: str = Field("|", min_length=1, description="Joins the labels of a multilabel image.")
    split_column: Optional[str] = Field(None, description="imgclf train: a table column giving each "
                                        "image's split (train / validation / test) instead of a seeded one.")

    @model_validator(mode="after")
    def _table_needs_uri(self) -> "LabelsSpec":
        if self.kind == "table" and not self.table:
            raise ValueError("kind: table needs table: <uri of a .csv or .parquet file>")
        return self


class ImageTableSpec(_Spec):
    """Parquet / Arrow tables of images: an image-bytes column and metadata columns."""

    image_column: str = Field("image", description="Column of encoded image bytes (binary), or a "
                              "struct with a 'bytes' field (Hugging Face datasets' Image feature).")
    carry: list[str] = Field(default_factory=list, description="Columns copied, as strings, into "
                             "the output's metadata column.")


class WebDatasetSpec(_Spec):
    """WebDataset tar shards: files sharing a key (``<key>.<ext>``) make one sample."""

    image_extensions: list[str] = Field(default_factory=lambda: ["jpg", "jpeg", "png", "webp", "tif", "tiff"],
                                        description="Member extensions holding the image (first found wins).")
    label_extension: Optional[str] = Field("cls", description="Member holding the label: its text "
                                           "(.cls / .txt), or the 'label' field of a .json member.")
    label_field: str = Field("label", description="The label's field in a .json member.")


class VideoSpec(_Spec):
    """Video files (driving logs): sampled frames, one row each, decoded with PyAV (FFmpeg)."""

    fps: Optional[float] = Field(1.0, gt=0, description="Frames per second to keep: the first frame "
                                 "at or after each 1/fps step of presentation time; null: every frame.")
    keyframes: bool = Field(False, description="Decode keyframes only (the decoder skips the other "
                            "frames, the fastest way through a long log); fps still applies.")
    max_frames: Optional[int] = Field(None, ge=1, description="At most this many rows per file.")


VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".ts")


class SourceSpec(_Spec):
    """Where the images are."""

    uri: str = Field(description="Archive location: a local folder, file://, s3://bucket/prefix, or "
                     "any fsspec URI; a glob (s3://b/2026-*/**/*.jpg) selects files directly.")
    extensions: Any = Field(
        list(DEFAULT_EXTENSIONS),
        description="File extensions to list from a folder or prefix (case-insensitive; other files "
        "are skipped and counted in the run summary), or any: every file is listed and its first "
        "bytes decide (DICOM's DICM preamble, image magic numbers) — for extensionless DICOM series "
        "(IM0001, 1.2.840...); a file that is no image is a 'skipped' row. A glob or a URI naming "
        "one file takes the files it names, whatever their extension.")
    recursive: bool = Field(True, description="Descend into sub-folders / sub-prefixes.")
    labels: Optional[LabelsSpec] = Field(None, description="True labels of a labelled archive: they "
                                         "go into the true_label column; imgclf evaluate needs them.")
    table: Optional[ImageTableSpec] = Field(
        None, description="The archive is Parquet tables with the image bytes in a column (one row "
        "per image; its row index goes into the frame column); extensions default to .parquet.")

    webdataset: Optional[WebDatasetSpec] = Field(
        None, description="The archive is WebDataset tar shards (shard-000000.tar ...): one row per "
        "sample key, its index in the shard in the frame column, its label (when the shard has one) "
        "in true_label; extensions default to .tar.")
    video: Optional[VideoSpec] = Field(
        None, description="The archive is video files: one row per sampled frame, the frame's number "
        "in the stream in the frame column and its presentation time in timestamp; extensions "
        "default to " + ", ".join(VIDEO_EXTENSIONS) + ".")

    @model_validator(mode="before")
    @classmethod
    def _table_files(cls, data: Any) -> Any:
        if isinstance(data, dict) and "extensions" not in data:
            if data.get("table") is not None:
                return {**data, "extensions": [".parquet"]}
            if data.get("webdataset") is not None:
                return {**data, "extensions": [".tar"]}
            if data.get("video") is not None:
                return {**data, "extensions": list(VIDEO_EXTENSIONS)}
        return data

    @model_validator(mode="after")
    def _one_container(self) -> "SourceSpec":
        given = [k for k in ("table", "webdataset", "video") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of table, webdataset, video, not {' and '.join(given)}")
        if given and self.extensions == "any":
            raise ValueError(f"extensions: any reads images by content; {given[0]} files are chosen by "
                             "extension")
        if self.video is not None:
            from imgclf_ray.extras import installed, message

            if not installed("video"):
                raise ValueError(f"video: {message('video')}")
        return self

    @property
    def sniff(self) -> bool:
        """Every file is listed and its content decides (extensions: any)."""
        return self.extensions == "any"

    @property
    def container(self) -> Optional[str]:
        """table, webdataset or video when each file holds several images, else None."""
        return next((k for k in ("table", "webdataset", "video") if getattr(self, k) is not None), None)

    @field_validator("extensions")
    @classmethod
    def _dotted_lower(cls, v: Any) -> Any:
        if v == "any":
            return v
        hint = "; to list every file and decide by its content, write source.extensions: any"
        if not isinstance(v, list) or not v:
            raise ValueError(f"a list of extensions such as ['.jpg', '.dcm'], or any{hint}")
        for e in v:
            if not isinstance(e, str):
                raise ValueError(f"{e!r} is not an extension (a string such as '.dcm'){hint}")
            if e.strip(" .") == "" or set(e) & set("*?[]/\\"):
                raise ValueError(f"{e!r} matches no extension (patterns and empty extensions are not "
                                 f"extensions){hint}")
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]


class DecodeSpec(_Spec):
    """How image bytes become pixels."""

    max_image_pixels: Optional[int] = Field(
        PILLOW_MAX_IMAGE_PIXELS, gt=0,
        description="Decompression-bomb guard: an image whose header claims more pixels is an "
        "error row, never decoded. null turns the guard off (trusted archives only).")
    max_decode_bytes: Optional[int] = Field(
        1 << 30, gt=0,
        description="Memory budget of one image or frame: width x height x channels x bytes per "
        "sample, read from the header, over this is an error row, never decoded (default 1 GiB). "
        "null turns the check off.")
    max_frames: int = Field(
        1000, ge=1,
        description="Most rows made from one multi-frame file (DICOM, TIFF, GIF, ICNS/ICO) with "
        "frames: all: over it, the first max_frames frames and one error row naming the limit. "
        "Video keeps source.video.max_frames.")
    max_member_bytes: int = Field(
        256 << 20, gt=0,
        description="Largest image one member of a container may hold (a tar/WebDataset member, a "
        "row's bytes in an image table), as its header declares; larger ones are error rows, never "
        "read (default 256 MiB).")
    max_container_bytes: int = Field(
        2 << 30, gt=0,
        description="Largest a container file may expand to in memory (a tar/WebDataset shard's "
        "members, an image table's uncompressed row groups); over it the file is one error row "
        "(default 2 GiB).")
    allow_truncated: bool = Field(
        False, description="Decode truncated files as far as they go instead of rejecting them.")
    exif_transpose: bool = Field(True, description="Apply the EXIF orientation tag.")
    frame: int = Field(0, ge=0, description="Which frame of an animated GIF / multi-page TIFF to "
                       "classify.")
    jpeg_draft: bool = Field(
        False, description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when the "
        "model input is much smaller (about 2x faster; pixels differ slightly from a full decode "
        "followed by resizing, so use it when the model was trained that way or tolerates it).")
    background: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB colour that transparent pixels are flattened onto.")
    frames: Literal["one", "all"] = Field(
        "one", description="one: decode.frame of every file; all: one row per frame of multi-frame "
        "files (DICOM, multi-page TIFF, animated GIF), with its index in the frame column.")
    dicom_window: Optional[tuple[float, float]] = Field(
        None, description="DICOM greyscale: the window (centre, width) in modality units (e.g. "
        "Hounsfield: [40, 400] soft tissue), instead of the file's own VOI LUT / window.")
    dicom_attributes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DICOM_ATTRIBUTES),
        description="DICOM attributes (keywords) written to the dicom column of DICOM rows.")
    dicom_allow_phi: bool = Field(False, description="Lift the de-identification keep list (DICOM "
                                  "PS3.15 Annex E Basic Profile, Retain UIDs Option) and the value checks: any "
                                  "non-sequence attribute, patient-identifying ones included (PatientName, "
                                  "PatientID, dates ...), is written as it is. The run warns when it is set.")

    @model_validator(mode="after")
    def _dicom_keywords(self) -> "DecodeSpec":
        if list(self.dicom_attributes) != list(DEFAULT_DICOM_ATTRIBUTES):  # the defaults are kept ones
            from imgclf_ray.deid import check_keywords

            check_keywords(self.dicom_attributes, self.dicom_allow_phi)
        if self.dicom_window is not None and self.dicom_window[1] <= 0:
            raise ValueError("dicom_window: the width must be positive")
        return self


DEFAULT_DICOM_ATTRIBUTES = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                            "BodyPartExamined")


class ModelSpec(_Spec):
    """Which model to apply. Its preprocessing comes from the artifact's model card."""

    uri: str = Field(description="Model artifact folder (local or s3://) holding model_card.json "
                     "and the weights it names.")
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
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Torch models: fp32 is exact; bf16 runs weights and activations in "
        "bfloat16 (GPUs, and CPUs with AVX512-BF16 or AMX): faster, and probabilities move in the "
        "third decimal, so near-ties may change label.")
    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch", description="Torch models: torch runs the network in PyTorch; onnxruntime runs an ONNX "
        "export of it (made once per machine into $IMGCLF_CACHE, default ~/.cache/imgclf-ray, never "
        "into the model folder) with ONNX Runtime on CPU actors (GPU actors need the onnxruntime-gpu "
        "package). ONNX artifacts always run in ONNX Runtime.")

    @model_validator(mode="after")
    def _runtime(self) -> "ModelSpec":
        if self.runtime == "onnxruntime" and self.precision != "fp32":
            raise ValueError("runtime onnxruntime runs in fp32: drop precision: bf16")
        return self


class ResourcesSpec(_Spec):
    """Overrides for the resource planner; leave unset to size from the cluster."""

    actors: Optional[int] = Field(None, ge=1, description="Predictor actors in the pool (it starts "
                                  "with this many and may shrink, e.g. after losing a node).")
    cpus_per_actor: Optional[float] = Field(None, gt=0, description="CPUs reserved by each "
                                            "predictor actor (also its torch thread count).")
    gpus_per_actor: Optional[float] = Field(None, ge=0, description="GPUs per predictor actor; 0 "
                                            "forces CPU inference.")
    batch_size: Optional[int] = Field(None, ge=1, description="Images per predictor call.")
    decode_batch_size: Optional[int] = Field(None, ge=1, description="Images per read+decode "
                                             "task call.")


class SinkSpec(_Spec):
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
        return v if v is None else _plain(v)

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


class RunSpec(_Spec):
    """How the run behaves as a whole."""

    max_error_rate: Optional[float] = Field(
        None, ge=0, le=1,
        description="Error budget: if more than this fraction of images are error rows, the run "
        "fails and commits nothing. null: no budget.")
    ray_address: Optional[str] = Field(
        None, description="Ray cluster to join (ray://..., or 'auto'); default: the RAY_ADDRESS "
        "environment variable, else a local Ray instance started for this run.")


class ExampleSpec(_Spec):
    """Self-contained examples: materialise data and a model that a dependency ships."""

    dataset: Literal["digits", "faces", "textures"] = Field(
        description="Written as PNG files into source.uri (one folder per class) when that folder "
        "holds no images yet. digits: scikit-learn's 1,797 handwritten digits; faces: scikit-image's "
        "lfw_subset, 100 faces and 100 non-faces; textures: 64x64 patches of scikit-image's brick, "
        "grass and gravel photographs, 64 each.")
    train_model: bool = Field(
        True, description="Train the example model into model.uri when no artifact is there yet.")
    model: Literal["resnet18", "mobilenet_v3_small", "efficientnet_b0", "svm-hog", "logreg-hog",
                   "mlp-attributes", "tree-hog", "forest-lbp"] = Field(
        "resnet18", description="Which example model to train: a torchvision CNN (digits); svm-hog, "
        "a calibrated RBF SVM over HOG (digits); logreg-hog, binary logistic regression over HOG "
        "(faces); mlp-attributes, a multilabel MLP on pixels predicting digit attributes (even, "
        "large, prime, closed-loop); tree-hog, a hierarchical tree (small or large digit, then the "
        "digit) of calibrated SVMs over HOG; forest-lbp, a random forest over LBP histograms "
        "(textures).")


class IncrementalSpec(_Spec):
    """What earlier runs processed is recorded per run in a state store (any fsspec URI)."""

    state: Optional[str] = Field(None, description="State store location (local or s3://); default "
                                 "<sink.uri>/_state/<name>.")
    reprocess_on_model_change: bool = Field(
        True, description="Images processed by another model (model id) are processed again.")


class JobSpec(_Spec):
    """One imgclf job: list an archive, classify every image, commit Parquet."""

    name: str = Field(description="Job name; part of the default run id and of state paths (a plain "
                      "name: letters, digits, '_', '-', '.').")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _plain(v)
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
        return tuple(c for c in CURATION_CHECKS if can[registry.CURATION_CHECKS.get(c).needs])


ESTIMATORS = tuple(registry.ESTIMATORS.names())  # imgclf_ray/estimators/


class SearchSpec(_Spec):
    """Hyper-parameter search over the estimator's parameters, by cross-validation on the training split."""

    grid: dict[str, list[Any]] = Field(description="Parameter name -> values to try, e.g. {C: [1, 10, 100]}.")
    cv: int = Field(3, ge=2, description="Cross-validation folds.")
    halving: bool = Field(False, description="Successive halving (HalvingGridSearchCV) instead of a full grid.")
    scoring: Optional[str] = Field(None, description="scikit-learn scorer name; default: the estimator's score.")


class EstimatorSpec(_Spec):
    """A scikit-learn classifier by name."""

    name: Literal[ESTIMATORS] = Field(description="The scikit-learn classifier with its defaults: svm "
                                      "is SVC (RBF), linear_svm LinearSVC, mlp MLPClassifier (the fully "
                                      "connected 'ANN'); see docs/models.md for scaling.")
    calibrate: Optional[Literal["sigmoid", "isotonic"]] = Field(
        None, description="Calibrate the scores with CalibratedClassifierCV(method=..., cv=3): three "
        "more fits on two thirds of the training split each, probabilities averaged (labels can "
        "differ slightly from the bare estimator's). Needed for job thresholds and label_issue on "
        "estimators without predict_proba (svm, linear_svm).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the estimator.")
    search: Optional[SearchSpec] = Field(None, description="Grid search over these parameters.")

    @model_validator(mode="after")
    def _known_params(self) -> "EstimatorSpec":
        for key, names in (("params", self.params), ("search.grid", self.search.grid if self.search else {})):
            _check_params(registry.ESTIMATORS.get(self.name).cls, names, key)
        return self




def _check_params(dotted_class: str, params: dict[str, Any], key: str) -> None:
    """Refuse keyword arguments the scikit-learn class does not take (named in the message)."""
    import importlib
    import inspect

    module, _, name = dotted_class.rpartition(".")
    accepted = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{key}: {', '.join(unknown)} not accepted by {name} "
                         f"(accepted: {', '.join(accepted)})")


class OpSpec(_Spec):
    """One conditioning operation (imgclf_ray/imaging/ops.py)."""

    name: str = Field(description="grayscale, equalize, clahe, gaussian, median, wiener, minmax, "
                      "trim_border, letterbox, crop.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments, e.g. "
                                   "{sigma: 1.5} for gaussian, {size: 256} for letterbox.")


class PreprocessSpec(_Spec):
    """Conditioning recorded in the model card and applied identically at inference."""

    ops: list[OpSpec] = Field(default_factory=list, description="Operations run in order on the "
                              "decoded image before resize and crop (histogram equalisation, CLAHE, "
                              "denoising, border trimming, letterbox ...).")
    resize: int = Field(gt=0, description="Shorter side after resizing.")
    crop: Optional[int] = Field(None, gt=0, description="Centre-crop side.")
    crop_offset: Literal["round", "floor"] = Field(
        "round", description="How the centre crop's offset is rounded when the margin is odd: round "
        "(torchvision, timm) or floor (Hugging Face image processors).")
    channels: Literal[1, 3] = Field(3, description="1 = greyscale, 3 = RGB.")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    resampler: Literal["pil", "torch"] = Field(
        "pil", description="pil: Pillow's resize (torchvision and timm transforms on PIL images); torch: "
        "torchvision's uint8 tensor resize with antialiasing (Hugging Face's torchvision-backed image "
        "processors).")
    normalize: Literal["dataset", "per_image"] = Field(
        "dataset", description="CNN input normalisation: dataset = (x - mean) / std with the per-channel "
        "mean/std below; per_image = per-image standardisation, each image by its own mean and standard "
        "deviation over all pixels and channels (std floored at 1/sqrt(pixels), as "
        "tf.image.per_image_standardization), for archives whose exposure varies image to image.")
    mean: Optional[list[float]] = Field(None, description="CNNs: per-channel mean on the 0..1 scale; "
                                        "default: measured on the training split.")
    std: Optional[list[float]] = Field(None, description="CNNs: per-channel standard deviation; "
                                       "default: measured on the training split.")


class AugmentSpec(_Spec):
    """Training-only augmentation of CNN inputs (never applied at inference)."""

    hflip: bool = Field(False, description="Random horizontal flips.")
    vflip: bool = Field(False, description="Random vertical flips.")
    rotation: float = Field(0.0, ge=0, le=180, description="Random rotation up to this many degrees.")
    crop_scale: Optional[tuple[float, float]] = Field(None, description="Random resized crop (zoom): "
                                                      "area fraction range, e.g. [0.8, 1.0].")
    brightness: float = Field(0.0, ge=0, description="Random brightness factor range 1 +/- this.")
    contrast: float = Field(0.0, ge=0, description="Random contrast factor range 1 +/- this.")
    blur: float = Field(0.0, ge=0, description="Random Gaussian blur, sigma up to this many pixels.")


class CnnSpec(_Spec):
    """A torchvision CNN trained with Ray Train (CPU workers here, GPU workers where the cluster has GPUs)."""

    architecture: Optional[str] = Field(None, description="torchvision classification model name, e.g. "
                                        "resnet18 (default: init_weights' architecture).")
    init_weights: Optional[str] = Field(None, description="A torch model artifact to fine-tune from, "
                                        "trained here or imported (torchvision, timm): its network, and "
                                        "its preprocess unless model.preprocess is given; the head is "
                                        "replaced when the label count differs. Default: train from scratch.")
    epochs: int = Field(10, ge=1, description="Most epochs to train.")
    batch_size: int = Field(64, ge=1, description="Images per step and worker.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW, cosine decay).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    patience: Optional[int] = Field(3, ge=1, description="Early stopping: epochs without a better "
                                    "validation loss (needs split.validation > 0); null: all epochs.")
    workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: Literal["auto", True, False] = Field("auto", description="GPU workers: auto when the cluster has GPUs.")
    augment: AugmentSpec = Field(AugmentSpec(), description="Training-only augmentation.")

    @model_validator(mode="after")
    def _network(self) -> "CnnSpec":
        if self.architecture is None and self.init_weights is None:
            raise ValueError("give architecture (a torchvision model name) or init_weights (an artifact)")
        return self


class FeatureSpec(_Spec):
    name: str = Field(description="Feature extractor: pixels, color_histogram, hog, lbp, glcm, edges, cnn_embedding.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its keyword arguments.")


class TrainModelSpec(_Spec):
    """What to train and where to put it: an estimator over features, or a CNN."""

    output: str = Field(description="Artifact folder to write (local or s3://).")
    preprocess: Optional[PreprocessSpec] = Field(None, description="Conditioning (before feature "
                                                 "extraction); default with cnn.init_weights: that "
                                                 "artifact's.")
    features: Optional[FeatureSpec] = Field(None, description="Feature extractor (with estimator).")
    estimator: Optional[EstimatorSpec] = Field(None, description="A scikit-learn classifier.")
    cnn: Optional[CnnSpec] = Field(None, description="A torchvision CNN (instead of an estimator).")

    @model_validator(mode="after")
    def _one_kind(self) -> "TrainModelSpec":
        if (self.estimator is None) == (self.cnn is None):
            raise ValueError("give either estimator (with features) or cnn")
        if self.estimator is not None and self.features is None:
            raise ValueError("an estimator needs features: {name: ...}")
        if self.preprocess is None and (self.cnn is None or self.cnn.init_weights is None):
            raise ValueError("preprocess is required (resize, crop, ...) unless cnn.init_weights gives it")
        return self


class SplitSpec(_Spec):
    """Seeded, stratified train / validation / test split."""

    test: float = Field(0.2, gt=0, lt=1, description="Fraction held out for the test metrics.")
    validation: float = Field(0.0, ge=0, lt=1, description="Fraction of the rest held for validation: "
                              "multilabel threshold tuning and CNN early stopping (0: neither).")
    seed: int = Field(0, description="Seed of the split (and of seeded estimators).")


class TrainSpec(_Spec):
    """`imgclf train`: fit a classical model on a labelled archive and write a safe artifact."""

    name: str = Field(description="Training job name (a plain name: letters, digits, '_', '-', '.').")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _plain(v)
    description: str = Field("", description="Free text for people.")
    data: SourceSpec = Field(description="The labelled archive; data.labels says where the labels are.")
    decode: DecodeSpec = Field(DecodeSpec(), description="How bytes become pixels.")
    task: Literal["multiclass", "binary", "multilabel", "hierarchical"] = Field(
        "multiclass", description="hierarchical: one model per parent node of the label paths "
        "(folders fruit/apple/...), each trained on its branch's images.")
    positive: Optional[str] = Field(None, description="binary: the positive label (default: the "
                                    "second in sorted order).")
    model: TrainModelSpec = Field(description="What to train.")
    split: SplitSpec = Field(SplitSpec(), description="How the data is split.")
    storage: StorageSpec = Field(StorageSpec(), description="Object-storage settings.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="Planner overrides (decode batch size).")
    run: RunSpec = Field(RunSpec(), description="ray_address for the feature-extraction pass.")
    example: Optional[ExampleSpec] = Field(None, description="Materialise bundled example data into "
                                           "data.uri (example.model is not used).")

    @model_validator(mode="after")
    def _needs_labels(self) -> "TrainSpec":
        if self.data.labels is None:
            raise ValueError("data.labels must say where the labels are (e.g. {kind: folder})")
        if self.data.container:
            raise ValueError(f"data.{self.data.container}: training reads one image per file (image "
                             "tables, shards and videos are read by imgclf run, not yet by imgclf train)")
        return self


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z0-9_.]+", key.strip()):
        raise SpecError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML scalars / flow lists)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {'.'.join(path[:i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return data


def _line_of(text: str, loc: tuple[Any, ...]) -> Optional[int]:
    """1-based line of the deepest node of ``loc`` present in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe(err: dict[str, Any]) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        if str(loc[-1]).lower() in _SECRET_KEYS:
            return ("credentials do not belong in a job spec; use the environment "
                    "(AWS_ACCESS_KEY_ID ...), storage.profile, or the machine's role")
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    return err["msg"]


def parse_spec(data: Any, origin: str, text: str = "", overridden: tuple[str, ...] = (),
               model: type[BaseModel] = JobSpec) -> Any:
    """Validate a mapping as a JobSpec; errors name ``origin`` and the dotted key.

    ``overridden`` lists the dotted keys that came from ``--set``, so that an error in one of them
    points at the command line rather than at a line of the file.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a job spec is a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-"))
            if err["type"] == "value_error":
                # Our validators start their message with the key they are about ("params: ...").
                err = {**err, "msg": err["msg"].removeprefix("Value error, ")}
                keyed = re.match(r"^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): (.*)$", err["msg"], re.S)
                if keyed:
                    loc = loc + tuple(keyed.group(1).split("."))
                    err["msg"] = keyed.group(2)
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            from_set = [k for k in overridden if dotted == k or dotted.startswith(k + ".")]
            line = _line_of(text, loc) if text and not from_set else None
            where = f"{origin} (--set {from_set[0]})" if from_set else f"{origin}:{line}" if line else origin
            lines.append(f"{where}: {dotted}: {_describe(err)}")
        raise SpecError("\n".join(lines)) from None


MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past MAX_YAML_NODES nodes (a
    'billion laughs' alias bomb is a few hundred bytes that expand to gigabytes when walked)."""

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def size(n) -> int:  # nodes after alias expansion; each distinct node is measured once
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts once instead of looping
                children = (n.value if isinstance(n, yaml.SequenceNode) else
                            [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else [])
                sizes[id(n)] = min(1 + sum(size(c) for c in children), MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"aliases expand to more than {MAX_YAML_NODES:,} values (an alias "
                                 "bomb?); write the values out")
        return super().construct_document(node)


def load_yaml(text: str) -> Any:
    """YAML text -> Python values, safely (no tags that run code, aliases bounded)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def peek_spec(path: str | Path) -> Any:
    """The YAML content of a spec file, or None when it cannot be read (load_spec says why)."""
    try:
        return load_yaml(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def apply_values(data: dict[str, Any], values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Set each dotted key of ``values`` in ``data`` to its value, taken as it is (never parsed as
    YAML: the CLI's --run-id and --date, the Python API's overrides). Raises SpecError."""
    for dotted, value in values.items():
        node = data
        for part in dotted.split(".")[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"{origin}: {part} is not a mapping")
        node[dotted.split(".")[-1]] = value
    return data


def load_spec(path: str | Path, overrides: Optional[list[str]] = None, model: type[BaseModel] = JobSpec,
              values: Optional[dict[str, str]] = None) -> Any:
    """Read a YAML spec (a JobSpec unless ``model`` says otherwise), apply ``--set`` overrides,
    then ``values`` (dotted key -> a value taken as it is, never parsed as YAML: the CLI's --run-id
    and --date), validate. Raises SpecError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read job spec ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a YAML job spec (the file is not UTF-8 text)") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if data is None:
        data = {}
    if overrides:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a job spec is a mapping of keys, got {type(data).__name__}")
        data = apply_overrides(data, overrides)
    if values:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a job spec is a mapping of keys, got {type(data).__name__}")
        apply_values(data, values, str(path))
    keys = tuple(item.partition("=")[0].strip() for item in overrides or ()) + tuple(values or ())
    return parse_spec(data, str(path), text, keys, model)


CLUSTER_ALGORITHMS = tuple(registry.CLUSTER_ALGORITHMS.names())  # imgclf_ray/cluster_algorithms/
STREAMING_ALGORITHMS = tuple(n for n in CLUSTER_ALGORITHMS if registry.CLUSTER_ALGORITHMS.get(n).streaming)


def _default_cluster_preprocess() -> PreprocessSpec:
    return PreprocessSpec(resize=64)


class ClusterSpec(_Spec):
    """Group the images without labels: features (+ PCA) -> a clusterer fitted on a seeded sample
    (or streamed over the whole archive), then every image assigned inside the pipeline."""

    algorithm: Literal[tuple(CLUSTER_ALGORITHMS)] = Field(
        description="kmeans, minibatch_kmeans, gmm (Gaussian mixture, EM; per-row probability), "
        "meanshift, dbscan, agglomerative or birch (scikit-learn's). Rows are assigned by "
        "nearest centre (kmeans, minibatch_kmeans, meanshift; birch: nearest subcluster centre's "
        "cluster; agglomerative: nearest cluster centroid), by posterior probability (gmm), or "
        "dbscan: the nearest core sample's cluster when within eps, else noise -1.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the "
                                   "scikit-learn class, e.g. {n_clusters: 8} or {eps: 0.5, min_samples: 5}.")
    features: FeatureSpec = Field(FeatureSpec(name="color_histogram"), description="Feature extractor "
                                  "that makes the embedding (cnn_embedding with a backbone artifact "
                                  "for CNN embeddings).")
    preprocess: PreprocessSpec = Field(default_factory=_default_cluster_preprocess,
                                       description="Conditioning before the feature extractor.")
    pca: Optional[int] = Field(None, ge=1, description="Reduce the features to this many principal "
                               "components first (fitted on the sample).")
    fit: Literal["sample", "stream"] = Field(
        "sample", description="sample: fit on a seeded sample; stream: partial_fit over every image "
        "(minibatch_kmeans, birch), PCA still from the sample.")
    sample: int = Field(5000, ge=2, description="Images in the fitting sample.")
    seed: int = Field(0, description="Seed of the sample and of seeded algorithms.")
    artifact: Optional[str] = Field(None, description="Where the fitted clusterer is kept (local or "
                                    "s3://); default <sink.uri>/_clusterers/<name>. A later run reuses "
                                    "it, so cluster ids stay stable from night to night.")
    refit: bool = Field(False, description="Fit anew and replace the artifact even when one exists.")
    embedding: bool = Field(False, description="Write each image's embedding (after PCA) to the "
                            "embedding column.")

    @model_validator(mode="after")
    def _check(self) -> "ClusterSpec":
        from imgclf_ray.registry import EXTRACTORS

        try:
            EXTRACTORS.get(self.features.name)
        except KeyError as exc:
            raise ValueError(f"features: {exc.args[0]}") from None
        if self.fit == "stream" and self.algorithm not in STREAMING_ALGORITHMS:
            raise ValueError(f"fit: stream needs partial_fit, which only "
                             f"{' and '.join(STREAMING_ALGORITHMS)} have")
        _check_params(registry.CLUSTER_ALGORITHMS.get(self.algorithm).cls, self.params, "params")
        return self


CURATION_CHECKS = tuple(registry.CURATION_CHECKS.names())  # imgclf_ray/curation_checks/
# cleanvision's issue names, accepted in curate.checks.
CLEANVISION_NAMES = {registry.CURATION_CHECKS.get(c).cleanvision: c for c in CURATION_CHECKS
                     if registry.CURATION_CHECKS.get(c).cleanvision}


class CurateSpec(_Spec):
    """Per-image quality scores and flags, and archive-wide checks (a second, distributed pass)."""

    checks: Optional[list[Literal[CURATION_CHECKS]]] = Field(
        None, description="Which checks set their is_<check> flag; default every one the job can "
        "run (outlier needs a cluster section; label_issue a model and source.labels). cleanvision's "
        "names are accepted too: light, odd_aspect_ratio, exact_duplicates, near_duplicates.")
    blur_threshold: float = Field(0.29, ge=0, le=1, description="blurry when blur_score "
                                  "(cleanvision's blurry score, 0..1) is below this (cleanvision's default).")
    dark_threshold: float = Field(0.32, ge=0, le=1, description="dark when dark_score (99th "
                                  "percentile of brightness, 0..1) is below this (cleanvision's default).")
    overexposed_threshold: float = Field(0.05, ge=0, le=1, description="overexposed (cleanvision's "
                                         "light) when light_score (1 - the 5th percentile of "
                                         "brightness) is below this (cleanvision's default).")
    low_information_threshold: float = Field(3.0, ge=0, le=32, description="low_information when "
                                             "entropy (Pillow's Image.entropy(), bits) is below this "
                                             "(cleanvision's 0.3 on entropy / 10).")
    grayscale_threshold: float = Field(0.5, ge=0, le=1, description="grayscale when grayscale_score "
                                       "(0: the file stores one channel, 1: colour) is below this.")
    odd_size_threshold: float = Field(3.0, gt=0, description="odd_size when sqrt(width x height) is "
                                      "outside Q1 - k IQR .. Q3 + k IQR of the run, k = this "
                                      "(cleanvision's iqr_factor).")
    odd_aspect_threshold: float = Field(0.35, gt=0, le=1, description="odd_aspect when aspect_score "
                                        "(min(width / height, height / width)) is below this "
                                        "(cleanvision's default).")
    near_duplicate_radius: int = Field(0, ge=0, le=20, description="near_duplicate when the 64-bit "
                                       "perceptual hashes differ in at most this many bits; 0 (equal "
                                       "hashes) is cleanvision's definition.")

    @field_validator("checks", mode="before")
    @classmethod
    def _cleanvision_names(cls, v: Any) -> Any:
        return [CLEANVISION_NAMES.get(c, c) for c in v] if isinstance(v, list) else v
    outlier_quantile: float = Field(0.99, gt=0, lt=1, description="outlier when outlier_score "
                                    "exceeds this quantile of the same distance within the "
                                    "clusterer's reference sample.")


JobSpec.model_rebuild()
