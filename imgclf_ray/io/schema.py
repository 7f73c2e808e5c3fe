"""The output contract: one Parquet row per image (or frame). Extended, never silently renamed."""

from __future__ import annotations

import hashlib
import json
from typing import Optional

import pyarrow as pa

# 2: side files start with "_" (_run_summary.json, _clusters.json, _evaluation.json); dicom and
#    metadata are JSON object strings, not map columns; every Parquet file carries the run's facts
#    in its key-value metadata (RUN_METADATA_KEYS); a run with nothing to do commits an empty file.
# 1: the first release.
SCHEMA_VERSION = 2

OUTPUT_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("frame", pa.int32()),
    pa.field("timestamp", pa.float64()),
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
    pa.field("dicom", pa.string()),
    pa.field("metadata", pa.string()),
    pa.field("model_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("processed_at", pa.timestamp("us", tz="UTC")),
    # Clustering and curation (null unless the job has a cluster / curate section).
    pa.field("cluster", pa.int32()),
    pa.field("cluster_distance", pa.float32()),
    pa.field("cluster_probability", pa.float32()),
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("outlier_score", pa.float32()),
    pa.field("is_outlier", pa.bool_()),
    pa.field("blur_score", pa.float32()),
    pa.field("is_blurry", pa.bool_()),
    pa.field("brightness", pa.float32()),
    pa.field("dark_score", pa.float32()),
    pa.field("is_dark", pa.bool_()),
    pa.field("light_score", pa.float32()),
    pa.field("is_overexposed", pa.bool_()),
    pa.field("entropy", pa.float32()),
    pa.field("is_low_information", pa.bool_()),
    pa.field("color_spread", pa.float32()),
    pa.field("grayscale_score", pa.float32()),
    pa.field("is_grayscale", pa.bool_()),
    pa.field("size_score", pa.float32()),
    pa.field("is_odd_size", pa.bool_()),
    pa.field("aspect_score", pa.float32()),
    pa.field("is_odd_aspect", pa.bool_()),
    pa.field("pixel_hash", pa.string()),
    pa.field("duplicate_group", pa.string()),
    pa.field("is_duplicate", pa.bool_()),
    pa.field("phash", pa.int64()),
    pa.field("near_duplicate_group", pa.string()),
    pa.field("is_near_duplicate", pa.bool_()),
    pa.field("label_quality", pa.float32()),
    pa.field("is_label_issue", pa.bool_()),
])
# The clustering and curation columns: the tail of the schema, from "cluster" on.
EXTRA_COLUMNS = tuple(OUTPUT_SCHEMA.names[OUTPUT_SCHEMA.get_field_index("cluster"):])

COLUMN_DOCS = {
    "image_id": "Stable id: first 32 hex digits of sha256('<uri>#<frame>'); the same image gets the "
                "same id in every run.",
    "uri": "Full URI of the source file (file:///..., s3://bucket/key).",
    "frame": "Frame index within the file (0 for still images; the decode.frame asked for; each "
             "frame with decode.frames: all), the row index within an image table, the sample's index "
             "in a shard, or a video frame's number in its stream.",
    "timestamp": "Video frames: presentation time in seconds from the file's start (null for "
                 "anything else).",
    "size": "Bytes of the source file, from the listing.",
    "etag": "S3 ETag, or 'mtime:<seconds>' for filesystems without one, from the listing.",
    "width": "Decoded width in pixels, after EXIF orientation (null when decoding failed).",
    "height": "Decoded height in pixels, after EXIF orientation (null when decoding failed).",
    "status": "'ok'; 'error' when any stage failed for this row; 'skipped' when source.extensions is "
              "any and the file's first bytes are no image format (cause in error; not counted against "
              "run.max_error_rate).",
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
    "dicom": "DICOM rows: a JSON object of the attributes decode.dicom_attributes names "
             "(SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID, Modality, BodyPartExamined by "
             "default), values as strings; patient-identifying ones only with "
             "decode.dicom_allow_phi; null otherwise.",
    "metadata": "Image tables (source.table): a JSON object of the source.table.carry columns of "
                "the image's row, values as strings; null otherwise.",
    "model_id": "'sha256:<hex>' digest of the model card, which records the weights' sha256.",
    "run_id": "The run that wrote this row (also the output folder name).",
    "processed_at": "UTC time the row left the predictor.",
    "cluster": "Cluster id from the job's clusterer (cluster section); -1 = noise (dbscan).",
    "cluster_distance": "Euclidean distance, in the clusterer's (PCA-reduced) space, to the centre, "
                        "centroid, mixture mean or nearest core sample the row was assigned to.",
    "cluster_probability": "gmm: posterior probability of `cluster`; null for other algorithms.",
    "embedding": "The row's embedding in the clusterer's space (cluster.embedding: true).",
    "outlier_score": "Distance to the k-th nearest image (k = 5) of the clusterer's reference sample.",
    "is_outlier": "outlier_score above the curate.outlier_quantile of the reference sample's own "
                  "k-th-neighbour distances.",
    "blur_score": "cleanvision's blurry score: edge strength (FIND_EDGES std) and histogram spread "
                  "of a greyscale copy at most 64 px on its longer side, 0..1 (lower = blurrier).",
    "is_blurry": "blur_score < curate.blur_threshold (0.29, cleanvision's).",
    "brightness": "Mean brightness sqrt(.241 R² + .691 G² + .068 B²) / 255 of the channel means, 0..1.",
    "dark_score": "99th percentile of per-pixel brightness, 0..1.",
    "is_dark": "dark_score < curate.dark_threshold (0.32, cleanvision's).",
    "light_score": "1 - the 5th percentile of per-pixel brightness, 0..1.",
    "is_overexposed": "light_score < curate.overexposed_threshold (0.05; cleanvision's 'light').",
    "entropy": "Pillow's Image.entropy() of the image as stored, in bits.",
    "is_low_information": "entropy < curate.low_information_threshold (3.0 bits; cleanvision's 0.3 "
                          "on entropy / 10).",
    "color_spread": "Mean over pixels of (largest - smallest channel) of the RGB image, 0..255.",
    "grayscale_score": "0 when the file stores one channel (Pillow mode L, LA, 1, I, I;16, F; "
                       "greyscale DICOM), 1 for colour.",
    "is_grayscale": "grayscale_score < curate.grayscale_threshold (0.5).",
    "size_score": "cleanvision's odd-size score of sqrt(width x height): 1 - its distance from the "
                  "middle of [Q1 - k IQR, Q3 + k IQR] over that range's width (the run's quartiles).",
    "is_odd_size": "size_score < 0.5 (sqrt(width x height) outside Q1 - k IQR .. Q3 + k IQR, k = "
                   "curate.odd_size_threshold, 3).",
    "aspect_score": "min(width / height, height / width).",
    "is_odd_aspect": "aspect_score < curate.odd_aspect_threshold (0.35, cleanvision's).",
    "pixel_hash": "MD5 of the pixel bytes as the file stores them (cleanvision's exact hash).",
    "duplicate_group": "Exact duplicates (same pixel_hash): the image_id of the group's first "
                       "image by uri; null when the image has no duplicate.",
    "is_duplicate": "In a duplicate group (every member, as cleanvision flags them).",
    "phash": "64-bit DCT perceptual hash (as imagehash.phash), as a signed int64.",
    "near_duplicate_group": "Near duplicates (phash within curate.near_duplicate_radius bits, 0 by "
                            "default: equal hashes, as cleanvision; linked transitively), except a "
                            "group that is exactly a duplicate group: the image_id of its first image by uri.",
    "is_near_duplicate": "In a near-duplicate group (every member).",
    "label_quality": "Probability the model gives the true label (self-confidence); needs "
                     "true_label and class_scores.",
    "is_label_issue": "Confident learning: a class other than true_label reaches its per-class "
                      "threshold (mean self-confidence of that class) and is the most probable "
                      "such class.",
}

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"  # source.extensions: any, and the file's content is no image


def image_id(uri: str, frame: int = 0) -> str:
    """Stable row id from uri + frame."""
    return hashlib.sha256(f"{uri}#{frame}".encode()).hexdigest()[:32]


RUN_METADATA_KEYS = ("imgclf.schema_version", "imgclf.run_id", "imgclf.model_id", "imgclf.labels")


def run_schema(run_id: str, model_id: Optional[str], labels: Optional[list[str]]) -> pa.Schema:
    """OUTPUT_SCHEMA with the run's facts in its key-value metadata (written into every Parquet
    file of the run): the schema version, run id, model digest and the label order of
    class_scores (a JSON list; "null" without a model)."""
    return OUTPUT_SCHEMA.with_metadata({
        "imgclf.schema_version": str(SCHEMA_VERSION), "imgclf.run_id": run_id,
        "imgclf.model_id": model_id or "", "imgclf.labels": json.dumps(labels),
    })
