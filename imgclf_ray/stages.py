"""The pipeline's stages as plain batch callables (``dict[str, np.ndarray]`` in and out).

They know nothing of Ray: ``pipeline`` maps them over a Dataset; tests call them directly. Each
stage catches failures per row: a row that fails gets ``status="error"`` and
``error="<stage>: <cause>"`` and travels on untouched, so every listed input reaches the sink once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa

from imgclf_ray.imaging.conditioning import Conditioning, condition
from imgclf_ray.imaging.decode import DecodeError, DecodeOptions, decode_image
from imgclf_ray.io.schema import OUTPUT_SCHEMA, STATUS_ERROR, STATUS_OK, image_id
from imgclf_ray.io.storage import describe_os_error, read_bytes
from imgclf_ray.spec import StorageSpec


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
    """read -> decode -> condition, one row at a time; adds frame, width, height, status, error,
    pixels (N, C, H, W uint8). Error rows carry zero pixels and width = height = 0."""

    def __init__(self, storage: StorageSpec, decode: DecodeOptions, conditioning: Conditioning):
        self.storage = storage
        self.decode = decode
        self.cond = conditioning

    def load_one(self, uri: str) -> tuple[np.ndarray, int, int]:
        """Pixels and (width, height) of one image; raises tagged errors ('read: ...')."""
        try:
            data = read_bytes(uri, self.storage)
        except Exception as exc:  # noqa: BLE001 - any read failure becomes an error row
            raise StageError("read", _cause(exc)) from exc
        try:
            img, (width, height) = decode_image(data, self.decode, self.cond.crop or self.cond.resize)
        except Exception as exc:  # noqa: BLE001
            raise StageError("decode", _cause(exc)) from exc
        try:
            return condition(img, self.cond), width, height
        except Exception as exc:  # noqa: BLE001
            raise StageError("preprocess", _cause(exc)) from exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        pixels = np.zeros((n, *self.cond.output_shape), dtype=np.uint8)
        width = np.zeros(n, dtype=np.int32)
        height = np.zeros(n, dtype=np.int32)
        status = np.full(n, STATUS_OK, dtype=object)
        error = np.full(n, None, dtype=object)
        for i, uri in enumerate(batch["uri"]):
            try:
                pixels[i], width[i], height[i] = self.load_one(str(uri))
            except StageError as exc:
                status[i], error[i] = STATUS_ERROR, str(exc)
        return {**batch, "frame": np.full(n, self.decode.frame, dtype=np.int32), "width": width,
                "height": height, "status": status, "error": error, "pixels": pixels}


class PredictStage:
    """Applies a classifier to the ok rows of a batch and emits rows in the output schema.

    ``classifier`` is built in ``__init__`` (once per actor) from plain arguments, so the driver only
    ever pickles a URI and settings.
    """

    def __init__(self, model_uri: str, storage: StorageSpec, topk: int, run_id: str,
                 device: str = "auto", threads: Optional[int] = None):
        from imgclf_ray.models.torch_classifier import TorchClassifier

        self.classifier = TorchClassifier(model_uri, storage, device=device, threads=threads)
        self.labels = np.asarray(self.classifier.card.labels, dtype=object)
        self.topk = min(topk, len(self.labels))
        self.run_id = run_id

    def _proba(self, pixels: np.ndarray, ok: np.ndarray, error: np.ndarray, status: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(pixels), len(self.labels)), dtype=np.float32)
        idx = np.flatnonzero(ok)
        if not len(idx):
            return probs
        try:
            probs[idx] = self.classifier.predict_proba(pixels[idx])
        except Exception:  # noqa: BLE001 - isolate the rows that fail, keep the others
            for i in idx:
                try:
                    probs[i] = self.classifier.predict_proba(pixels[i:i + 1])[0]
                except Exception as exc:  # noqa: BLE001
                    ok[i], status[i], error[i] = False, STATUS_ERROR, f"predict: {_cause(exc)}"
        return probs

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        status = np.asarray(batch["status"], dtype=object).copy()
        # Nulls of a string column may come back from Arrow as None or NaN.
        error = np.array([e if isinstance(e, str) else None for e in batch["error"]], dtype=object)
        ok = status == STATUS_OK
        probs = self._proba(batch["pixels"], ok, error, status)
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.topk]
        top_scores = np.take_along_axis(probs, order, axis=1)
        n = len(status)
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
            "label": pa.array(self.labels[order[:, 0]], mask=~ok),
            "score": pa.array(top_scores[:, 0], mask=~ok),
            "topk_labels": [list(self.labels[o]) if k else None for o, k in zip(order, ok)],
            "topk_scores": [list(s) if k else None for s, k in zip(top_scores, ok)],
            "model_id": [self.classifier.model_id] * n,
            "run_id": [self.run_id] * n,
            "processed_at": [now] * n,
        }
        return pa.table(columns, schema=OUTPUT_SCHEMA)
