"""Where the images come from and how they are decoded: source, labels, containers, decode."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from imgclf_ray.config.base import DEFAULT_EXTENSIONS, PILLOW_MAX_IMAGE_PIXELS, Section


class LabelsSpec(Section):
    """Where the true labels of a labelled archive come from (for evaluate, and the report)."""

    kind: Literal["folder", "table", "reviewed"] = Field(
        "folder", description="folder: the image's folders below source.uri (root/<label>/x.jpg; "
        "root/fruit/apple/x.jpg gives the hierarchical path fruit/apple); table: a CSV or Parquet "
        "table of uri -> label; reviewed: the answers reviewers gave (imgclf review ingest) in the "
        "sink named by `sink`, each image's latest that applies to its content (its etag).")
    table: Optional[str] = Field(None, description="The table's URI (kind: table); .csv or .parquet. With kind: "
                                 "reviewed: the labels the archive had before any review, for the images "
                                 "nobody reviewed (a review's answer wins).")
    sink: Optional[str] = Field(None, description="kind: reviewed: the sink whose human-labels table "
                                "(<sink>/_reviews/) labels the images.")
    folder_fallback: bool = Field(False, description="kind: reviewed: an image without a review takes its "
                                  "folder's label (else it is left unlabelled).")
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
        if self.kind == "reviewed" and not self.sink:
            raise ValueError("kind: reviewed needs sink: <the sink whose reviews label the images>")
        return self


class ImageTableSpec(Section):
    """Parquet / Arrow tables of images: an image-bytes column and metadata columns."""

    image_column: str = Field("image", description="Column of encoded image bytes (binary), or a "
                              "struct with a 'bytes' field (Hugging Face datasets' Image feature).")
    carry: list[str] = Field(default_factory=list, description="Columns copied, as strings, into "
                             "the output's metadata column (one value per row: a column of lists or "
                             "maps makes the file one error row).")


class WebDatasetSpec(Section):
    """WebDataset tar shards: files sharing a key (``<key>.<ext>``) make one sample."""

    image_extensions: list[str] = Field(default_factory=lambda: ["jpg", "jpeg", "png", "webp", "tif", "tiff"],
                                        description="Member extensions holding the image (first found wins).")
    label_extension: Optional[str] = Field("cls", description="Member holding the label: its text "
                                           "(.cls / .txt), or the 'label' field of a .json member (a "
                                           "string, number or boolean); a sample whose label member is "
                                           "none of these is an error row saying why.")
    label_field: str = Field("label", description="The label's field in a .json member.")


class VideoSpec(Section):
    """Video files (driving logs): sampled frames, one row each, decoded with PyAV (FFmpeg)."""

    fps: Optional[float] = Field(1.0, gt=0, description="Frames per second to keep: the first frame "
                                 "at or after each 1/fps step of presentation time; null: every frame.")
    keyframes: bool = Field(False, description="Decode keyframes only (the decoder skips the other "
                            "frames, the fastest way through a long log); fps still applies.")
    max_frames: Optional[int] = Field(None, ge=1, description="At most this many rows per file.")


VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".ts")


class SourceSpec(Section):
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
    inventory: Optional[str] = Field(
        None, description="An S3 Inventory manifest.json (…/<config>/<date>/manifest.json; CSV, "
        "Parquet or ORC inventory, any fsspec URI): the archive's keys are read from its data "
        "files, one Ray task per file, instead of listing source.uri, whose bucket and prefix "
        "select the rows (the way to list billions of keys).")
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
    def _inventory(self) -> "SourceSpec":
        if self.inventory is None:
            return self
        from urllib.parse import urlparse

        if urlparse(self.uri).scheme in ("", "file") or not urlparse(self.uri).netloc:
            raise ValueError("with inventory, uri names the inventoried bucket and prefix "
                             "(s3://bucket/prefix)")
        if set("*?[") & set(self.uri):
            raise ValueError("with inventory, uri is a prefix, not a glob")
        if not self.inventory.rstrip("/").endswith("manifest.json"):
            raise ValueError("inventory is the inventory's manifest.json (…/<config>/<date>/manifest.json)")
        return self

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


class DecodeSpec(Section):
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
        "members, at least 1 KiB each, and their header records; in a compressed shard a member left "
        "unread too, at its declared size, as passing over it inflates it; an image table's "
        "pages as their headers declare them, and its rows as they are made, at least 1 KiB each; "
        "a deflated DICOM's dataset, counted before it is inflated; a video's frames kept, as "
        "scaled); over it the file is one error row (a video: the frames before it and one error row; "
        "default 2 GiB).")
    max_seconds: Optional[float] = Field(
        120, gt=0,
        description="CPU seconds one file's frames may take to decode (a video's packets, the frames "
        "of a multi-frame file with frames: all, the frames before decode.frame that a GIF, APNG or "
        "WebP composites to reach it), counted as they are decoded: past it, one error row "
        "per frame not decoded (a video: the frames before it and one error row); and reading a "
        "DICOM file's dataset, looked at every few thousand elements (past it, the file's one error row). A nightly run "
        "is not held for hours by one small file (a 249 KB video of 3,000 frames of 8192x8192 took "
        "88 s at fps 1; a 1.2 MB deflated DICOM of 100 million empty elements, 900 s). null: no limit.")
    allow_truncated: bool = Field(
        False, description="Decode truncated files as far as they go instead of rejecting them.")
    exif_transpose: bool = Field(True, description="Apply the EXIF orientation tag.")
    frame: int = Field(0, ge=0, description="Which frame of an animated GIF / multi-page TIFF to "
                       "classify.")
    jpeg_draft: bool = Field(
        False, description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when the "
        "model input is much smaller (about 2x faster; pixels differ slightly from a full decode "
        "followed by resizing, so use it when the model was trained that way or tolerates it).")
    jpeg_on: Literal["tasks", "predictor"] = Field(
        "tasks", description="Where plain JPEG files are decoded: tasks (the CPU decode tasks, "
        "Pillow), or predictor: batched on the predictor's device with torchvision.io.decode_jpeg "
        "(nvJPEG on GPU actors; libjpeg-turbo on CPU ones), resized and cropped there with torch's "
        "antialiased resize (equal to resampler: torch cards' conditioning; within one grey level of "
        "Pillow's otherwise). The decode tasks then only read files and JPEG headers. Other formats, "
        "CMYK or EXIF-rotated JPEGs decode in the tasks. For torch models without conditioning ops, "
        "curation measures or a clusterer.")
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
        if self.jpeg_on == "predictor" and self.jpeg_draft:
            raise ValueError("jpeg_draft: draft decoding is for the decode tasks; with jpeg_on: predictor "
                             "JPEGs decode at full size on the predictor's device")
        return self


DEFAULT_DICOM_ATTRIBUTES = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                            "BodyPartExamined")
