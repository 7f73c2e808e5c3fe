"""The actor stage: the model's scores, the task head's decision, and every output column of a row."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from imgclf_ray import faults
from imgclf_ray.curation.rows import RowRules, row_columns
from imgclf_ray.errors import DeviceFault, device_fault
from imgclf_ray.messages import describe, guard_worker_output
from imgclf_ray.io.schema import OUTPUT_SCHEMA, STATUS_OK, image_id
from imgclf_ray.spec import DecodeSpec, StorageSpec
from imgclf_ray.stages.common import Reporter, Rows, reports_user_errors, cause_of


_PREDICTION_COLUMNS = ("label", "score", "topk_labels", "topk_scores", "labels", "class_scores",
                       "label_path", "path_scores")


@dataclass(frozen=True)
class PredictConfig:
    """What a PredictStage does, decided once (``runner.build.predict_config`` from the run's plan):
    plain values, so that the driver only ever pickles a URI and settings."""

    model_uri: Optional[str]  # None: rows pass through with null predictions (clustering, curation)
    storage: StorageSpec = field(default_factory=StorageSpec)
    topk: int = 1
    run_id: str = ""
    device: str = "auto"
    threads: Optional[int] = None
    threshold: Optional[float] = None
    thresholds: Optional[dict[str, float]] = None
    precision: str = "fp32"
    trusted: bool = False
    runtime: str = "torch"
    decode: Optional[DecodeSpec] = None  # decode.jpeg_on: predictor: the JPEGs this stage decodes
    calls: int = 1  # batches this stage works on at once (threads): each forward pass gets 1/calls of the memory
    export: Any = None  # on Ray, a torch network's ONNX export: an ObjectRef of the driver's bytes


def _release_device_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Passes:
    """How many rows one model call takes: all at first; halved (the device's cache emptied) on an
    out-of-memory error, and kept at what fitted for the later batches. One image that does not
    fit is a device fault, not an error row. Shared by the batches a predictor works on at once
    (resources.calls_per_actor): after an out-of-memory error their passes take turns, so that
    one batch's pass never fails for the memory another's holds."""

    def __init__(self) -> None:
        self.size: Optional[int] = None
        self.halved = 0
        self._turns = threading.Lock()

    def run(self, fn: Callable[[Any], list], inputs: Any) -> list:
        out: list = []
        start = 0
        while start < len(inputs):
            size = min(self.size or len(inputs), len(inputs) - start)
            try:
                with self._turns if self.halved else contextlib.nullcontext():
                    out.extend(fn(inputs[start:start + size]))
                start += size
                continue
            except Exception as exc:  # noqa: BLE001 - only an out-of-memory error is retried here
                if device_fault(exc) != "oom" or (size == 1 and self.halved):
                    raise
            _release_device_memory()  # outside the except: the failed pass's tensors are gone
            self.size, self.halved = max(1, size // 2), self.halved + 1
            logging.getLogger(__name__).warning("predict: out of memory with %d images; retrying in passes of %d",
                                                size, self.size)
        return out


def _fault(exc: BaseException) -> DeviceFault:
    kind = "out of memory with a single image" if device_fault(exc) == "oom" else "failed"
    return DeviceFault(f"predict: the device {kind} ({type(exc).__name__}: {describe(exc).splitlines()[0][:200]}); "
                       "nothing was committed: run the same run id again (on another node, or with a smaller "
                       "resources.batch_size)")


def isolated(fn: Callable[[np.ndarray], list], inputs: Any, rows: Rows, passes: Optional[Passes] = None) -> list:
    """``fn`` (inputs -> one result per row) over the ok rows (in ``passes``: halved on an
    out-of-memory error); when that fails for an error of the rows, row by row, so that a row that
    fails becomes an error row of the predict stage and the others keep theirs. An error of the
    device is never an error row: it raises DeviceFault. Returns one result per row of the batch
    (None where none)."""
    out: list = [None] * len(rows.ok)
    idx = np.flatnonzero(rows.ok)
    if not len(idx):
        return out
    try:
        for i, r in zip(idx, (passes or Passes()).run(fn, inputs[idx])):
            out[i] = r
    except Exception as exc:  # noqa: BLE001 - isolate the rows that fail, keep the others
        if device_fault(exc):
            raise _fault(exc) from None
        for i in idx:
            try:
                out[i] = fn(inputs[i:i + 1])[0]
            except Exception as exc:  # noqa: BLE001
                if device_fault(exc):
                    raise _fault(exc) from None
                rows.fail(i, f"predict: {cause_of(exc)}")
    return out


class PredictStage:
    """Applies a classifier to the ok rows of a batch and emits rows in the output schema.

    ``classifier`` is built in ``__init__`` (once per actor) from its ``PredictConfig``.
    """

    @reports_user_errors
    def __init__(self, config: PredictConfig, reporter: Optional[Reporter] = None, rules: Optional[RowRules] = None):
        from imgclf_ray.models.heads import Head
        from imgclf_ray.models.tree_classifier import HierarchicalClassifier
        from imgclf_ray.models.loader import load_classifier

        self.reporter = reporter
        self.rules = rules
        self.run_id = config.run_id
        self.jpegs = None  # decode.jpeg_on: predictor: the JPEGs the decode tasks passed on
        self.passes = Passes()  # the model calls' size, halved on out-of-memory errors
        # Without a model (clustering / curation jobs) rows pass through with null predictions.
        self.classifier = (load_classifier(config.model_uri, config.storage, device=config.device,
                                           threads=config.threads, precision=config.precision,
                                           trusted=config.trusted, runtime=config.runtime, calls=config.calls,
                                           export=config.export)
                           if config.model_uri else None)
        self.tree = isinstance(self.classifier, HierarchicalClassifier)
        if self.tree or self.classifier is None:
            return
        card = self.classifier.card
        if config.decode is not None:
            from imgclf_ray.stages.device_jpeg import DeviceJpegs

            self.jpegs = DeviceJpegs(card.preprocess.conditioning(), self.classifier.device, config.decode, reporter)
        self.labels = np.asarray(card.labels, dtype=object)
        self.head = Head(card.task, card.labels, card.thresholds, config.threshold, config.thresholds)
        self.topk = min(config.topk, len(self.labels))

    def _decide(self, inputs, rows: Rows) -> dict[str, Any]:
        probs = np.zeros((len(inputs), len(self.labels)), dtype=np.float32)
        for i, p in enumerate(isolated(lambda x: list(self.classifier.predict_proba(x)), inputs, rows, self.passes)):
            if p is not None:
                probs[i] = p
        ok = rows.ok
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

    def _route(self, inputs, rows: Rows) -> dict[str, Any]:
        routed = isolated(lambda x: list(zip(*self.classifier.route(x))), inputs, rows, self.passes)
        ok, n = rows.ok, len(rows.ok)
        paths = [r[0] if r is not None and k else None for r, k in zip(routed, ok)]
        scores = [r[1] if r is not None and k else None for r, k in zip(routed, ok)]
        return {
            "label": [p[-1] if k else None for p, k in zip(paths, ok)],
            "score": [float(np.prod(s)) if k else None for s, k in zip(scores, ok)],
            "topk_labels": [None] * n,
            "topk_scores": [None] * n,
            "labels": [None] * n,
            "class_scores": [None] * n,
            "label_path": paths,
            "path_scores": scores,
        }

    @reports_user_errors
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        guard_worker_output()  # what libraries print while decoding passes the message gate
        faults.point("predict_batch")
        started = time.perf_counter()
        status = np.asarray(batch["status"], dtype=object).copy()
        # Nulls of a string column may come back from Arrow as None or NaN.
        error = np.array([e if isinstance(e, str) else None for e in batch["error"]], dtype=object)
        rows = Rows(status == STATUS_OK, status, error)
        n = len(status)
        inputs, undecodable = batch["inputs"], []
        if "encoded" in batch and self.jpegs is not None:
            pixels = np.asarray(batch["width"], dtype=np.int64) * np.asarray(batch["height"], dtype=np.int64)
            try:
                inputs, undecodable = self.jpegs(inputs, batch["encoded"], rows, pixels)
            except Exception as exc:  # noqa: BLE001 - a device's failure is the run's, never error rows
                if device_fault(exc):
                    raise _fault(exc) from None
                raise
        if self.classifier is None:
            predictions = {name: [None] * n for name in _PREDICTION_COLUMNS}
        elif self.tree:
            predictions = self._route(inputs, rows)
        else:
            predictions = self._decide(inputs, rows)
        uris = [str(u) for u in batch["uri"]]
        frames = np.asarray(batch["frame"], dtype=np.int32)
        width = np.asarray(batch["width"], dtype=np.int32).copy()
        height = np.asarray(batch["height"], dtype=np.int32).copy()
        width[undecodable] = height[undecodable] = 0  # as the decode tasks' error rows
        now = datetime.now(timezone.utc)
        columns = {
            "image_id": [image_id(u, int(f)) for u, f in zip(uris, frames)],
            "uri": uris,
            "frame": frames,
            "timestamp": (pa.array(batch["timestamp"], pa.float64(), mask=np.isnan(batch["timestamp"]))
                          if "timestamp" in batch else pa.nulls(n, pa.float64())),
            "size": pa.array(batch["size"], pa.int64(), from_pandas=True),  # NaN: unknown (a manifest without sizes)
            "etag": [e if isinstance(e, str) else None for e in batch["etag"]],
            "width": pa.array(width, mask=width == 0),
            "height": pa.array(height, mask=height == 0),
            "status": list(status),
            "error": list(error),
            **predictions,
            "true_label": ([t if isinstance(t, str) else None for t in batch["true_label"]]
                           if "true_label" in batch else [None] * n),
            "dicom": [d if isinstance(d, str) else None for d in batch.get("dicom_json", [None] * n)],
            "metadata": [d if isinstance(d, str) else None for d in batch.get("metadata_json", [None] * n)],
            "model_id": [self.classifier.model_id if self.classifier else None] * n,
            "run_id": [self.run_id] * n,
            "processed_at": [now] * n,
            **row_columns(batch, status == STATUS_OK, self.rules),
        }
        table = pa.table(columns, schema=OUTPUT_SCHEMA)
        if self.reporter is not None:
            self.reporter("predict", n, time.perf_counter() - started)
        return table
