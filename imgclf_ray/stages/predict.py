"""The actor stage: the model's scores, the task head's decision, and every output column of a row."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from imgclf_ray.curation.rows import RowRules, row_columns
from imgclf_ray.messages import guard_worker_output
from imgclf_ray.io.schema import OUTPUT_SCHEMA, STATUS_ERROR, STATUS_OK, image_id
from imgclf_ray.spec import DecodeSpec, StorageSpec
from imgclf_ray.stages.common import Reporter, reports_user_errors, cause_of


_PREDICTION_COLUMNS = ("label", "score", "topk_labels", "topk_scores", "labels", "class_scores",
                       "label_path", "path_scores")


class PredictStage:
    """Applies a classifier to the ok rows of a batch and emits rows in the output schema.

    ``classifier`` is built in ``__init__`` (once per actor) from plain arguments, so the driver only
    ever pickles a URI and settings.
    """

    @reports_user_errors
    def __init__(self, model_uri: Optional[str], storage: StorageSpec, topk: int, run_id: str,
                 device: str = "auto", threads: Optional[int] = None,
                 reporter: Optional[Reporter] = None, threshold: Optional[float] = None,
                 thresholds: Optional[dict[str, float]] = None, rules: Optional[RowRules] = None,
                 precision: str = "fp32", trusted: bool = False, runtime: str = "torch",
                 decode: Optional[DecodeSpec] = None):
        from imgclf_ray.models.heads import Head
        from imgclf_ray.models.tree_classifier import HierarchicalClassifier
        from imgclf_ray.models.loader import load_classifier

        self.reporter = reporter
        self.rules = rules
        self.run_id = run_id
        self.decode = decode  # decode.jpeg_on: predictor: the JPEGs this stage decodes
        # Without a model (clustering / curation jobs) rows pass through with null predictions.
        self.classifier = (load_classifier(model_uri, storage, device=device, threads=threads,
                                           precision=precision, trusted=trusted, runtime=runtime)
                           if model_uri else None)
        self.tree = isinstance(self.classifier, HierarchicalClassifier)
        if self.tree or self.classifier is None:
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
                    ok[i], status[i], error[i] = False, STATUS_ERROR, f"predict: {cause_of(exc)}"
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
                    ok[i], status[i], error[i] = False, STATUS_ERROR, f"predict: {cause_of(exc)}"
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

    def _decoded(self, inputs: np.ndarray, encoded: np.ndarray, ok, error, status):
        """The batch's inputs on the model's device, the JPEGs the decode tasks passed on decoded
        there (``imaging.device_decode``), and the rows of files that failed (error rows of the
        decode stage)."""
        import torch

        from imgclf_ray.imaging.device_decode import decode_batch
        from imgclf_ray.stages.load import dense_inputs

        cond = self.classifier.card.preprocess.conditioning()
        device = self.classifier.device
        x = torch.from_numpy(dense_inputs(inputs, cond.output_shape))
        idx = [i for i, e in enumerate(encoded) if ok[i] and isinstance(e, (bytes, bytearray))]
        if not idx:
            return x, []
        started = time.perf_counter()
        x = x.to(device)
        images, errors = decode_batch([bytes(encoded[i]) for i in idx], cond, self.decode or DecodeSpec(), device)
        failed = []
        for i, img, why in zip(idx, images, errors):
            if why is None:
                x[i] = img
            else:
                ok[i], status[i], error[i] = False, STATUS_ERROR, why
                failed.append(i)
        if self.reporter is not None:
            self.reporter("device_decode", len(idx), time.perf_counter() - started)
        return x, failed

    @reports_user_errors
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        guard_worker_output()  # what libraries print while decoding passes the message gate
        started = time.perf_counter()
        status = np.asarray(batch["status"], dtype=object).copy()
        # Nulls of a string column may come back from Arrow as None or NaN.
        error = np.array([e if isinstance(e, str) else None for e in batch["error"]], dtype=object)
        ok = status == STATUS_OK
        n = len(status)
        inputs, undecodable = batch["inputs"], []
        if "encoded" in batch and self.classifier is not None and not self.tree:
            inputs, undecodable = self._decoded(inputs, batch["encoded"], ok, error, status)
        if self.classifier is None:
            predictions = {name: [None] * n for name in _PREDICTION_COLUMNS}
        elif self.tree:
            predictions = self._route(inputs, ok, error, status)
        else:
            predictions = self._decide(inputs, ok, error, status)
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
            "size": pa.array(batch["size"], pa.int64()),
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
