"""The CPU stage: read -> split containers (frames, pages, table rows, shard samples, video
frames) -> decode -> measure -> embed / assign clusters -> condition -> features."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np

from imgclf_ray import faults
from imgclf_ray.curation.measure import FLOAT_MEASURES
from imgclf_ray.curation.measure import measure as measure_image
from imgclf_ray.errors import AccessDenied
from imgclf_ray.features.extractors import BATCHED, extract, extract_many
from imgclf_ray.imaging.conditioning import Conditioning, condition
from imgclf_ray.imaging.decode import SNIFF_BYTES, decode_image, frame_count, looks_like_image
from imgclf_ray.imaging.device_decode import for_device
from imgclf_ray.imaging.dicom import attributes as dicom_attributes
from imgclf_ray.imaging.dicom import is_dicom
from imgclf_ray.containers.base import Part
from imgclf_ray.io.schema import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED
from imgclf_ray.io.storage import filesystem, read_bytes
from imgclf_ray.messages import guard_worker_output, printable
from imgclf_ray.models.artifact import FeaturesCard
from imgclf_ray.registry import CONTAINERS
from imgclf_ray.spec import DecodeSpec, FeatureSpec, SourceSpec, StorageSpec
from imgclf_ray.stages.common import Reporter, reports_user_errors, cause_of, StageError

if TYPE_CHECKING:
    from imgclf_ray.clustering import Clusterer


def _read_if_image(uri: str, storage: StorageSpec) -> Optional[bytes]:
    """The whole file when its first bytes are an image's, else None (the rest is never read)."""
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb", block_size=SNIFF_BYTES) as fh:  # one small ranged GET first
        head = fh.read(SNIFF_BYTES)
        return head + fh.read() if looks_like_image(head) else None


# A LoadStage call yields its rows in chunks of about this many bytes of model inputs (LoadStage.chunks).
CHUNK_BYTES = 64 << 20

VIDEO_MEASURE_SIDE = 256  # video frames are measured at this shorter side at most


def _ragged(inputs: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """One array per row: its pixels when decoded here, else an empty one (a variable-shaped
    tensor column in Arrow)."""
    out = np.empty(len(inputs), dtype=object)
    empty = np.zeros((0,) * (inputs.ndim - 1), dtype=inputs.dtype)
    for i, done in enumerate(decoded):
        out[i] = inputs[i] if done else empty
    return out


def dense_inputs(inputs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``_ragged``'s column back to one (N, *shape) uint8 array (zeros where a row has none). In
    Arrow a column whose rows all have one shape is a plain tensor column: (N, *shape) when the
    tasks decoded every row, (N, 0, 0, 0) when they decoded none."""
    if inputs.dtype != object:
        return inputs if inputs.shape[1:] == tuple(shape) else np.zeros((len(inputs), *shape), dtype=np.uint8)
    out = np.zeros((len(inputs), *shape), dtype=np.uint8)
    for i, row in enumerate(inputs):
        if row is not None and np.size(row):
            out[i] = row
    return out


class Encoded:
    """A JPEG file's bytes that the predictor decodes (decode.jpeg_on: predictor)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class Later:
    """A row's conditioned pixels whose extractor has a batch form: extracted with the batch's others."""

    __slots__ = ("pixels",)

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels


class NotAnImage(Exception):
    """source.extensions: any, and the file's first bytes are no image format: a skipped row."""


@dataclass(frozen=True)
class LoadConfig:
    """What a LoadStage does, decided once (``runner.build.load_stage`` from the run's plan; the
    trainer and the clusterer's fitting pass make their own): plain values a task is built from."""

    storage: StorageSpec = field(default_factory=StorageSpec)
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    conditioning: Optional[Conditioning] = None  # the model's; None: no inputs (N, 0)
    features: Optional[FeaturesCard] = None  # the card's feature extractor
    measure: bool = False  # the curation measures
    embed: Optional[tuple[Conditioning, FeatureSpec]] = None  # the clustering embedding
    keep_embedding: bool = False  # the embedding column in the output
    source: Optional[SourceSpec] = None  # containers, labels, inventory


class LoadStage:
    """read -> decode -> condition [-> features], one row at a time; adds frame, width, height,
    status, error and ``inputs``: the model's input, (N, C, H, W) uint8 pixels, or (N, D) float32
    features when the model card names a feature extractor ((N, 0) without a model). Error rows
    carry zero inputs and width = height = 0. With ``decode.jpeg_on: predictor`` a plain JPEG's
    row carries zero inputs and its bytes in ``encoded`` (the predictor decodes them).

    From the same decoded image, optionally: the curation measures (``measure``; see
    ``curation.measure``), and the clustering embedding (``embed``: conditioning + feature
    extractor), which a fitted ``clusterer`` reduces and assigns in the same task (columns cluster,
    cluster_distance, cluster_probability, outlier_score, embedding); without a clusterer the raw
    features come out as ``cluster_features`` (the clusterer's fitting pass).
    """

    def __init__(self, config: "LoadConfig", reporter: Optional[Reporter] = None,
                 clusterer: Optional["Clusterer"] = None):
        self.config = config
        self.storage = config.storage
        self.source = config.source
        self.decode = config.decode
        self.cond = config.conditioning
        self.reporter = reporter
        self.features = config.features
        self.measure = config.measure
        self.embed = config.embed
        self.clusterer = clusterer
        self.keep_embedding = config.keep_embedding
        self._timing: dict[str, list[float]] = {}
        self._input_shape: Optional[tuple[int, ...]] = None
        self._embed_len: Optional[int] = None
        self._dicom: Optional[str] = None  # attributes (JSON) of the row being loaded
        self._opened: dict = {}  # the file whose frames are being decoded (decode_image's cache)
        self._decode_cpu = 0.0  # CPU seconds the last decode_image took (decode.max_seconds)
        self.chunk_bytes = CHUNK_BYTES

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one row's input (features: the extractor's length on a blank image)."""
        if self._input_shape is None:
            if self.cond is None:
                self._input_shape = (0,)
                return self._input_shape
            shape = self.cond.output_shape
            if self.features is not None:
                blank = np.zeros(shape, dtype=np.uint8)
                shape = extract(self.features.name, blank, self.features.params).shape
            self._input_shape = shape
        return self._input_shape

    def embed_length(self) -> int:
        if self._embed_len is None:
            cond, spec = self.embed
            self._embed_len = len(extract(spec.name, np.zeros(cond.output_shape, np.uint8), spec.params))
        return self._embed_len

    def _target_side(self) -> Optional[int]:
        sides = [c.crop or c.resize for c in (self.cond, self.embed[0] if self.embed else None) if c]
        if self.measure:
            if self.source is None or self.source.container != "video":
                return None  # the curation measures look at the whole image, as cleanvision does
            sides.append(VIDEO_MEASURE_SIDE)
        return max(sides) if sides else None

    def _timed(self, stage: str, fn, *args, rows: int = 1):
        started = time.perf_counter()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure becomes an error row for this stage
            raise StageError(stage, cause_of(exc)) from exc
        finally:
            entry = self._timing.setdefault(stage, [0, 0.0])
            entry[0] += rows
            entry[1] += time.perf_counter() - started

    def _read(self, uri: str) -> bytes:
        """The file's bytes; a read refused for permission stops the run (AccessDenied). With
        source.extensions: any, only the first bytes of a file that is no image are read
        (NotAnImage)."""
        try:
            if self.source is not None and self.source.sniff:
                data = self._timed("read", _read_if_image, uri, self.storage)
                if data is None:
                    raise NotAnImage("read: not an image (its first bytes match no image format)")
                return data
            return self._timed("read", read_bytes, uri, self.storage)
        except StageError as exc:
            if isinstance(exc.__cause__, PermissionError):
                raise AccessDenied(f"{uri}: access denied (PermissionError) while reading an object the "
                                   "listing showed; the run stopped and nothing was committed: check "
                                   "the object's ACL, the bucket policy or KMS key permissions for "
                                   "the credentials the workers use") from None
            raise

    def _embed_one(self, img) -> np.ndarray:
        cond, spec = self.embed
        return extract(spec.name, condition(img, cond), spec.params)

    def _decode_spec(self, frame: Optional[int]) -> DecodeSpec:
        if frame is None or frame == self.decode.frame:
            return self.decode
        return self.decode.model_copy(update={"frame": frame})

    def load_one(self, uri: str, part: Optional[Part] = None
                 ) -> tuple[Optional[np.ndarray], int, int, Optional[dict], Optional[np.ndarray]]:
        """Model input, (width, height), curation measures and embedding features of one image:
        the file at ``uri``, or ``part`` of it (its bytes, or its already decoded frame); raises
        tagged errors ('read: ...')."""
        part = part or Part(self.decode.frame)
        stored: dict = {} if self.measure else None  # the image as its file stores it, for curation
        if part.image is not None:
            img, (width, height) = part.image, part.size
        else:
            data = part.data if part.data is not None else self._read(uri)
            if self.decode.jpeg_on == "predictor" and self.cond is not None:
                size = self._timed("decode", for_device, data, self.decode, self.cond.resize if self.cond.crop else None)
                if size is not None:  # the predictor decodes it
                    return Encoded(data), *size, None, None
            if is_dicom(data):
                # (the file parsed once: into the cache its decode reads next)
                self._dicom = json.dumps(self._timed("decode", dicom_attributes, data, self.decode.dicom_attributes,
                                                     self.decode.dicom_allow_phi, self.decode.max_container_bytes,
                                                     self.decode.max_seconds, self._opened))
            started = time.thread_time()
            try:
                img, (width, height) = self._timed("decode", decode_image, data, self._decode_spec(part.decode_frame),
                                                   self._target_side(), self._opened, stored)
            finally:
                self._decode_cpu = time.thread_time() - started  # (decode.max_seconds: the file's frames)
        measures = self._timed("curate", measure_image, img, stored.get("image")) if self.measure else None
        embedded = None
        if self.embed:
            cond, spec = self.embed
            embedded = (Later(self._timed("embed", condition, img, cond)) if spec.name in BATCHED
                        else self._timed("embed", self._embed_one, img))
        if self.cond is None:
            return None, width, height, measures, embedded
        pixels = self._timed("preprocess", condition, img, self.cond)
        if self.features is not None:
            pixels = (Later(pixels) if self.features.name in BATCHED
                      else self._timed("features", extract, self.features.name, pixels, self.features.params))
        return pixels, width, height, measures, embedded

    def _extract_later(self, stage: str, spec, later: list, out: np.ndarray, status, error) -> list[int]:
        """The features of the rows whose extractor has a batch form, in one call; when that fails,
        image by image, so that only the images that fail are error rows. Returns those rows. (The
        embedding's rows were counted when conditioned for it; the features' are counted here.)"""
        if not later:
            return []
        rows = [i for i, _ in later]
        counted = len(rows) if stage == "features" else 0
        try:
            out[rows] = self._timed(stage, extract_many, spec.name, np.stack([p for _, p in later]), spec.params,
                                    rows=counted)
            return []
        except StageError:
            pass
        failed = []
        for i, pixels in later:
            try:
                out[i] = self._timed(stage, extract, spec.name, pixels, spec.params, rows=0)
            except StageError as exc:
                status[i], error[i] = STATUS_ERROR, str(exc)
                failed.append(i)
        return failed

    def _unmeasured(self, failed: list[int], width: np.ndarray, height: np.ndarray, extra: dict) -> None:
        """Rows that failed after they were measured become error rows as any other: no size, no measures."""
        if failed:
            width[failed] = height[failed] = 0
            for key, column in self._extra_columns(len(failed)).items():
                extra[key][failed] = column

    def _report(self) -> None:
        if self.reporter is not None:
            for stage, (rows, seconds) in self._timing.items():
                self.reporter(stage, rows, seconds)
        self._timing = {}

    def _extra_columns(self, n: int) -> dict[str, np.ndarray]:
        """The batch's curation measures and passed-on JPEGs, as error rows keep them."""
        extra: dict[str, np.ndarray] = {}
        if self.measure:
            extra.update({k: np.full(n, np.nan, dtype=np.float32) for k in FLOAT_MEASURES})
            extra["pixel_hash"] = np.full(n, None, dtype=object)
            extra["phash"] = np.zeros(n, dtype=np.int64)
        if self.decode.jpeg_on == "predictor":
            extra["encoded"] = np.full(n, None, dtype=object)
        return extra

    def _frames(self, data: bytes) -> list[Part]:
        """decode.frames: all — every frame of a multi-frame file, decoded from the same bytes (the
        opened file kept between them), at most decode.max_frames, then one error row."""
        n, limit = frame_count(data, self.decode, self._opened), self.decode.max_frames
        parts = [Part(i, data, decode_frame=i) for i in range(min(n, limit))]
        if n > limit:
            parts.append(Part(limit, error=f"decode: the file has {n:,} frames, over decode.max_frames "
                                           f"({limit:,}): the first {limit:,} were classified"))
        return parts

    def _splitter(self) -> Optional[tuple[str, Callable[[bytes], list[Part]]]]:
        """(the stage a failure is charged to, the function that splits a file into parts)."""
        name = self.source.container if self.source is not None else None
        if name is not None:
            container = CONTAINERS.get(name)
            return container.stage, lambda data: container.split(data, self.source, self.decode, self._target_side())
        return ("decode", self._frames) if self.decode.frames == "all" else None

    def _expand(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[Part]]:
        """One output row per part of each file: the frames of a multi-frame file or a video, the
        rows of an image table, the samples of a shard (without a container: the file itself).
        Each file is read once; one that cannot be read or split is one error row with the cause.
        Returns the batch's columns repeated per part (``frame`` = the part's number in its file,
        ``timestamp``, and the shard's label in ``true_label``), and the parts."""
        splitter = self._splitter()
        if splitter is None:
            parts = [Part(self.decode.frame) for _ in batch["uri"]]
            counts = [1] * len(parts)
        else:
            stage, split = splitter
            parts, counts = [], []
            for uri in batch["uri"]:
                try:
                    data = self._read(str(uri))
                    found = self._timed(stage, split, data) or [Part(self.decode.frame, error=f"{stage}: no images in this file")]
                except StageError as exc:
                    found = [Part(self.decode.frame, error=str(exc))]
                except NotAnImage as exc:
                    found = [Part(self.decode.frame, error=str(exc), skipped=True)]
                parts.extend(found)
                counts.append(len(found))
        expanded = {k: np.repeat(np.asarray(v), counts, axis=0) for k, v in batch.items()}
        expanded["frame"] = np.asarray([p.frame for p in parts], dtype=np.int32)
        expanded["timestamp"] = np.asarray([p.timestamp for p in parts], dtype=np.float64)
        expanded["metadata_json"] = np.asarray([p.metadata for p in parts], dtype=object)
        if any(p.label is not None for p in parts):  # the shard's label, else the listing's
            listed = expanded.get("true_label", [None] * len(parts))
            expanded["true_label"] = np.asarray([p.label if p.label is not None else (t if isinstance(t, str) else None)
                                                 for p, t in zip(parts, listed)], dtype=object)
        return expanded, parts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's output rows in one dict (``chunks``' joined: for callers holding few images)."""
        out = list(self.chunks(batch))
        return out[0] if len(out) == 1 else {k: np.concatenate([c[k] for c in out]) for k in out[0]}

    def chunk_rows(self) -> int:
        """Output rows a chunk holds: as many as ``chunk_bytes`` of inputs (and embeddings) take."""
        item = 1 if self.features is None else 4
        row = int(np.prod(self.input_shape())) * item + (4 * self.embed_length() if self.embed else 0)
        return max(1, self.chunk_bytes // max(row, 1))

    @reports_user_errors
    def chunks(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The batch's output rows, a chunk (``chunk_rows``) at a time: a container's file is many
        images (a table's rows, a shard's samples, a video's frames), and a chunk's inputs are
        allocated only when it is loaded, so that memory follows the chunk, not the file (a
        483-byte table of 20,000 rows made 3 GB of inputs at once)."""
        guard_worker_output()  # what libraries print while decoding passes the message gate
        faults.point("decode_batch")
        self._timing = {}  # (the reads and splits are reported with the first chunk)
        batch, parts = self._expand(batch)
        step = self.chunk_rows()
        spent: dict[str, float] = {}  # CPU seconds decoding the frames of each multi-frame file took
        try:
            for start in range(0, max(len(parts), 1), step):
                yield self._load_rows({k: v[start:start + step] for k, v in batch.items()},
                                      parts[start:start + step], spent)
        finally:
            self._opened.clear()

    def _load_rows(self, batch: dict[str, np.ndarray], parts: list[Part], spent: dict[str, float]
                   ) -> dict[str, np.ndarray]:
        """One chunk's rows: ``batch``'s columns (one row per part) and the loaded columns;
        ``spent``: the CPU seconds each multi-frame file's frames took so far (decode.max_seconds)."""
        n = len(parts)
        shape = self.input_shape()
        inputs = np.zeros((n, *shape), dtype=np.uint8 if self.features is None else np.float32)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        status = np.full(n, STATUS_OK, dtype=object)
        error = np.full(n, None, dtype=object)
        extra = self._extra_columns(n)
        embedded = np.zeros((n, self.embed_length()), dtype=np.float32) if self.embed else None
        dicom = np.full(n, None, dtype=object)
        decoded = np.zeros(n, dtype=bool)
        later_inputs: list = []  # (row, conditioned pixels) for an extractor with a batch form
        later_embedded: list = []
        limit = self.decode.max_seconds
        for i, (uri, part) in enumerate(zip(batch["uri"], parts)):
            if part.error is not None:
                status[i], error[i] = STATUS_SKIPPED if part.skipped else STATUS_ERROR, printable(part.error)
                continue
            frame_of_file = part.decode_frame is not None  # (decode.frames: all; a video's are timed as read)
            if limit is not None and frame_of_file and spent.get(uri, 0.0) > limit:
                status[i], error[i] = STATUS_ERROR, (f"decode: the file's frames took more than decode.max_seconds "
                                                     f"({limit:g} s of CPU): this one was not decoded")
                continue
            self._dicom, self._decode_cpu = None, 0.0
            try:
                row, width[i], height[i], measures, vector = self.load_one(str(uri), part)
            except StageError as exc:
                status[i], error[i] = STATUS_ERROR, str(exc)
                continue
            except NotAnImage as exc:
                status[i], error[i] = STATUS_SKIPPED, str(exc)
                continue
            finally:
                dicom[i] = self._dicom
                if frame_of_file:
                    spent[uri] = spent.get(uri, 0.0) + self._decode_cpu
                else:  # a file of one row: nothing to keep of it
                    self._opened.clear()
            if isinstance(row, Encoded):
                extra["encoded"][i] = row.data
            elif isinstance(row, Later):
                later_inputs.append((i, row.pixels))
            elif row is not None:
                inputs[i] = row
            decoded[i] = row is not None and not isinstance(row, Encoded)
            for key, value in (measures or {}).items():
                extra[key][i] = value
            if isinstance(vector, Later):
                later_embedded.append((i, vector.pixels))
            elif vector is not None:
                embedded[i] = vector
        failed = (self._extract_later("embed", self.embed[1] if self.embed else None, later_embedded, embedded,
                                      status, error)
                  + self._extract_later("features", self.features, later_inputs, inputs, status, error))
        self._unmeasured(failed, width, height, extra)
        if embedded is not None:
            extra.update(self._cluster(embedded, status == STATUS_OK))
        self._report()
        if self.decode.jpeg_on == "predictor":  # no zeros shipped for the rows the predictor decodes
            inputs = _ragged(inputs, decoded)
        return {**batch, "width": width, "height": height, "status": status, "error": error,
                "inputs": inputs, "dicom_json": dicom, **extra}

    def _cluster(self, features: np.ndarray, ok: np.ndarray) -> dict[str, np.ndarray]:
        if self.clusterer is None:
            return {"cluster_features": features}
        started = time.perf_counter()
        n, idx = len(ok), np.flatnonzero(ok)
        z = self.clusterer.reduce(features[idx])
        cluster = np.full(n, -1, dtype=np.int32)
        distance = np.full(n, np.nan, dtype=np.float32)
        probability = np.full(n, np.nan, dtype=np.float32)
        outlier = np.full(n, np.nan, dtype=np.float32)
        labels, dist, proba = self.clusterer.assign(z)
        cluster[idx], distance[idx], outlier[idx] = labels, dist, self.clusterer.outlier_scores(z)
        if proba is not None:
            probability[idx] = proba
        out = {"cluster": cluster, "cluster_distance": distance, "cluster_probability": probability,
               "outlier_score": outlier}
        if self.keep_embedding:
            embedding = np.zeros((n, z.shape[1]), dtype=np.float32)
            embedding[idx] = z
            out["embedding"] = embedding
        if self.reporter is not None:
            self.reporter("cluster", int(len(idx)), time.perf_counter() - started)
        return out
