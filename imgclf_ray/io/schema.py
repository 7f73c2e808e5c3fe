"""The output contract: one Parquet row per image (or frame). Extended, never silently renamed."""

from __future__ import annotations

import hashlib

import pyarrow as pa

OUTPUT_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32()),
    pa.field("size", pa.int64()),
    pa.field("etag", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("label", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("topk_labels", pa.list_(pa.string())),
    pa.field("topk_scores", pa.list_(pa.float32())),
    pa.field("labels", pa.list_(pa.string())),
    pa.field("class_scores", pa.list_(pa.float32())),
    pa.field("label_path", pa.list_(pa.string())),
    pa.field("path_scores", pa.list_(pa.float32())),
    pa.field("true_label", pa.string()),
    pa.field("model_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("processed_at", pa.timestamp("us", tz="UTC")),
])

COLUMN_DOCS = {
    "image_id": "Stable id: first 32 hex digits of sha256('<uri>#<frame>'); the same image gets the "
                "same id in every run.",
    "uri": "Full URI of the source file (file:///..., s3://bucket/key).",
    "frame": "Frame index within the file (0 for still images; the decode.frame asked for).",
    "size": "Bytes of the source file, from the listing.",
    "etag": "S3 ETag, or 'mtime:<seconds>' for filesystems without one, from the listing.",
    "width": "Decoded width in pixels, after EXIF orientation (null when decoding failed).",
    "height": "Decoded height in pixels, after EXIF orientation (null when decoding failed).",
    "status": "'ok', or 'error' when any stage failed for this row.",
    "error": "'<stage>: <cause>' with stage one of read / decode / preprocess / features / predict; null "
             "when ok.",
    "label": "The decision: multiclass and multilabel the most probable label; binary the positive "
             "label when its probability reaches the threshold, else the negative (null on error rows).",
    "score": "Probability of `label` (softmax; sigmoid per label for multilabel).",
    "topk_labels": "The model.topk most probable labels, best first (null for hierarchical).",
    "topk_scores": "Their probabilities.",
    "labels": "Multilabel: every label whose probability reaches its threshold (may be empty); null "
              "for other tasks.",
    "class_scores": "Probability of every label, in the order of the model card's labels (listed "
                    "in the run's _manifest.json); null for hierarchical models.",
    "label_path": "Hierarchical: the label chosen at each level, root first (label is the last).",
    "path_scores": "Hierarchical: the score of each level's choice (score is their product).",
    "true_label": "The known label when source.labels says where labels are (multilabel: joined by "
                  "the separator; hierarchical: a path a/b/c); null otherwise.",
    "model_id": "'sha256:<hex>' digest of the model card, which records the weights' sha256.",
    "run_id": "The run that wrote this row (also the output folder name).",
    "processed_at": "UTC time the row left the predictor.",
}

STATUS_OK = "ok"
STATUS_ERROR = "error"


def image_id(uri: str, frame: int = 0) -> str:
    """Stable row id from uri + frame."""
    return hashlib.sha256(f"{uri}#{frame}".encode()).hexdigest()[:32]
