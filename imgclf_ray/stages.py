"""The pipeline's stages as plain batch callables (``dict[str, np.ndarray]`` in and out).

They know nothing of Ray: ``pipeline`` maps them over a Dataset; tests call them directly. Each
stage catches failures per row: a row that fails gets ``status="error"`` and
``error="<stage>: <cause>"`` and travels on untouched, so every listed input reaches the sink once.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from imgclf_ray.features.extractors import extract
from imgclf_ray.imaging.conditioning import Conditioning, condition
from imgclf_ray.imaging.decode import DecodeError, decode_image
from imgclf_ray.io.schema import OUTPUT_SCHEMA, STATUS_ERROR, STATUS_OK, image_id
from imgclf_ray.io.storage import describe_os_error, read_bytes
from imgclf_ray.models.artifact import FeaturesCard
from imgclf_ray.spec import DecodeSpec, StorageSpec


# Called as reporter(stage, rows, seconds) once per batch and stage: rows that entered the stage and
# the wall seconds spent in it. The pipeline passes one that forwards to a Ray actor.
Reporter = Callable[[str, int, float], None]


def _cause(exc: BaseException) -> str:
    if isinstance(exc, DecodeError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return f"{type(exc).__name__}: {exc}"


class StageError(Exception):
    """A per-row failure tagged with the stage it happened in."""

    def __init__(self, stage: str, cause: str):
        super().__init__(f"{stage}: {cause}")
        self.stage = stage


class LoadStage:
    """read -> decode -> condition [-> features], one row at a time; adds frame, width, height,
    status, error and ``inputs``: the model's input, (N, C, H, W) uint8 pixels, or (N, D) float32
    features when the model card names a feature extractor. Error rows carry zero inputs and
    width = height = 0."""

    def __init__(self, storage: StorageSpec, decode: DecodeSpec, conditioning: Conditioning,
                 reporter: Optional[Reporter] = None, features: Optional[FeaturesCard] = None):
        self.storage = storage
        self.decode = decode
        self.cond = conditioning
        self.reporter = reporter
        self.features = features
        self._timing: dict[str, list[float]] = {}
        self._input_shape: Optional[tuple[int, ...]] = None

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one row's input (features: the extractor's length on a blank image)."""
        if self._input_shape is None:
            shape = self.cond.output_shape
            if self.features is not None:
                blank = np.zeros(shape, dtype=np.uint8)
                shape = extract(self.features.name, blank, self.features.params).shape
            self._input_shape = shape
        return self._input_shape

    def _timed(self, stage: str, fn, *args):
        started = time.perf_counter()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any failure becomes an error row for this stage
            raise StageError(stage, _cause(exc)) from exc
        finally:
            entry = self._timing.setdefault(stage, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started

    def load_one(self, uri: str) -> tuple[np.ndarray, int, int]:
        """Model input and (width, height) of one image; raises tagged errors ('read: ...')."""
        data = self._timed("read", read_bytes, uri, self.storage)
        img, (width, height) = self._timed("decode", decode_image, data, self.decode,
                                           self.cond.crop or self.cond.resize)
        pixels = self._timed("preprocess", condition, img, self.cond)
        if self.features is None:
            return pixels, width, height
        return self._timed("features", extract, self.features.name, pixels, self.features.params), width, height

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        shape = self.input_shape()
        inputs = np.zeros((n, *shape), dtype=np.uint8 if self.features is None else np.float32)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        status = np.full(n, STATUS_OK, dtype=object)
        error = np.full(n, None, dtype=object)
        self._timing = {}
        for i, uri in enumerate(batch["uri"]):
            try:
                inputs[i], width[i], height[i] = self.load_one(str(uri))
            except StageError as exc:
                status[i], error[i] = STATUS_ERROR, str(exc)
        if self.reporter is not None:
            for stage, (rows, seconds) in self._timing.items():
                self.reporter(stage, rows, seconds)
        return {**batch, "frame": np.full(n, self.decode.frame, dtype=np.int32), "width": width,
                "height": height, "status": status, "error": error, "inputs": inputs}


class PredictStage:
    """Applies a classifier to the ok rows of a batch and emits rows in the output schema.

    ``classifier`` is built in ``__init__`` (once per actor) from plain arguments, so the driver only
    ever pickles a URI and settings.
    """

    def __init__(self, model_uri: str, storage: StorageSpec, topk: int, run_id: str,
                 device: str = "auto", threads: Optional[int] = None,
                 reporter: Optional[Reporter] = None, threshold: Optional[float] = None,
                 thresholds: Optional[dict[str, float]] = None):
        from imgclf_ray.models.heads import Head
        from imgclf_ray.models.hierarchy import HierarchicalClassifier
        from imgclf_ray.models.loader import load_classifier

        self.reporter = reporter
        self.classifier = load_classifier(model_uri, storage, device=device, threads=threads)
        self.run_id = run_id
        self.tree = isinstance(self.classifier, HierarchicalClassifier)
        if self.tree:
            return
        card = self.classifier.card
        self.labels = np.asarray(card.labels, dtype=object)
        self.head = Head(card.task, card.labels, card.thresholds, threshold, thresholds)
        self.topk = min(topk, len(self.labels))

    def _proba(self, inputs: np.ndarray, ok: np.ndarray, error: np.ndarray, status: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(inputs), len(self.labels)), dtype=np.float32)
        idx = np.flatnonzero(ok)
        if not len(idx):
            return probs
        try:
            probs[idx] = self.classifier.predict_proba(inputs[idx])
        except Exception:  # noqa: BLE001 - isolate the rows that fail, keep the others
            for i in idx:
                try:
                    probs[i] = self.classifier.predict_proba(inputs[i:i + 1])[0]
                except Exception as exc:  # noqa: BLE001
                    ok[i], status[i], error[i] = False, STATUS_ERROR, f"predict: {_cause(exc)}"
        return probs

    def _decide(self, inputs, ok, error, status) -> dict[str, Any]:
        probs = self._proba(inputs, ok, error, status)
        decision = self.head.decide(probs)
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.topk]
        top_scores = np.take_along_axis(probs, order, axis=1)
        n = len(ok)
        return {
            "label": pa.array(self.labels[decision.label], mask=~ok),
            "score": pa.array(decision.score.astype(np.float32), mask=~ok),
            "topk_labels": [list(self.labels[o]) if k else None for o, k in zip(order, ok)],
            "topk_scores": [list(s) if k else None for s, k in zip(top_scores, ok)],
            "labels": [list(self.labels[c]) if k else None for c, k in zip(decision.chosen, ok)]
                      if decision.chosen is not None else [None] * n,
            "class_scores": [list(p) if k else None for p, k in zip(probs, ok)],
            "label_path": [None] * n,
            "path_scores": [None] * n,
        }

    def _route(self, inputs, ok, error, status) -> dict[str, Any]:
        n = len(ok)
        paths: list = [None] * n
        scores: list = [None] * n
        idx = np.flatnonzero(ok)
        try:
            routed = self.classifier.route(inputs[idx])
            for j, i in enumerate(idx):
                paths[i], scores[i] = routed[0][j], routed[1][j]
        except Exception:  # noqa: BLE001 - isolate the rows that fail, keep the others
            for i in idx:
                try:
                    (paths[i],), (scores[i],) = self.classifier.route(inputs[i:i + 1])
                except Exception as exc:  # noqa: BLE001
                    ok[i], status[i], error[i] = False, STATUS_ERROR, f"predict: {_cause(exc)}"
        return {
            "label": [p[-1] if k else None for p, k in zip(paths, ok)],
            "score": [float(np.prod(s)) if k else None for s, k in zip(scores, ok)],
            "topk_labels": [None] * n,
            "topk_scores": [None] * n,
            "labels": [None] * n,
            "class_scores": [None] * n,
            "label_path": [p if k else None for p, k in zip(paths, ok)],
            "path_scores": [s if k else None for s, k in zip(scores, ok)],
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        started = time.perf_counter()
        status = np.asarray(batch["status"], dtype=object).copy()
        # Nulls of a string column may come back from Arrow as None or NaN.
        error = np.array([e if isinstance(e, str) else None for e in batch["error"]], dtype=object)
        ok = status == STATUS_OK
        n = len(status)
        if self.tree:
            predictions = self._route(batch["inputs"], ok, error, status)
        else:
            predictions = self._decide(batch["inputs"], ok, error, status)
        uris = [str(u) for u in batch["uri"]]
        frames = np.asarray(batch["frame"], dtype=np.int32)
        width = np.asarray(batch["width"], dtype=np.int32)
        height = np.asarray(batch["height"], dtype=np.int32)
        now = datetime.now(timezone.utc)
        columns = {
            "image_id": [image_id(u, int(f)) for u, f in zip(uris, frames)],
            "uri": uris,
            "frame": frames,
            "size": pa.array(batch["size"], pa.int64()),
            "etag": [e if isinstance(e, str) else None for e in batch["etag"]],
            "width": pa.array(width, mask=width == 0),
            "height": pa.array(height, mask=height == 0),
            "status": list(status),
            "error": list(error),
            **predictions,
            "true_label": ([t if isinstance(t, str) else None for t in batch["true_label"]]
                           if "true_label" in batch else [None] * n),
            "model_id": [self.classifier.model_id] * n,
            "run_id": [self.run_id] * n,
            "processed_at": [now] * n,
        }
        table = pa.table(columns, schema=OUTPUT_SCHEMA)
        if self.reporter is not None:
            self.reporter("predict", n, time.perf_counter() - started)
        return table
