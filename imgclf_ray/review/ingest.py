"""`imgclf review ingest`: reviewers' answers into the sink's human-labels table.

Reads Label Studio's JSON export (tasks with ``annotations``), its JSON-MIN export (one flat record
per annotation) or a CSV of ``image_id,label`` (``|`` between a multilabel answer's labels, ``/``
in a hierarchical path). Cancelled annotations are skipped; an answer already ingested (same image,
annotation, answer, annotator and time) adds nothing; a label the batch's model does not know is
refused naming the valid ones, before anything is written; an image id the sink never labelled is
reported, not guessed; a review of an image whose content changed since its task was made (etag)
is kept, marked stale, and not applied. Two reviews of one image are both kept: the latest counts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from imgclf_ray import faults
from imgclf_ray.errors import UserError
from imgclf_ray.io.cells import uncell
from imgclf_ray.io.sink import Sink
from imgclf_ray.io.sink.layout import put_atomic
from imgclf_ray.io.storage import join
from imgclf_ray.io.reviews import LABELS_DIR, LOCK_NAME, REVIEW_SCHEMA, REVIEWS_SUFFIX, reviews
from imgclf_ray.review.labels import latest_model_rows, latest_night

FORMATS = ("auto", "label-studio", "label-studio-min", "csv")


@dataclass
class Answer:
    image_id: str
    labels: list[str]  # the chosen classes (one unless multilabel)
    path: Optional[list[str]] = None  # hierarchical: root to leaf
    annotator: Optional[str] = None
    reviewed_at: Optional[datetime] = None
    annotation: str = ""  # the tool's id of the annotation, when it has one
    uri: Optional[str] = None
    etag: Optional[str] = None
    batch_id: Optional[str] = None
    model_label: Optional[str] = None
    model_score: Optional[float] = None


@dataclass
class Parsed:
    answers: list[Answer] = field(default_factory=list)
    cancelled: int = 0
    source: str = ""
    blank: int = 0  # rows of a CSV whose label is left empty


def _time(value: Any) -> Optional[datetime]:
    """An ISO time in UTC; None for anything else, or for a year outside 1970-2999 (Label Studio
    writes none, and Arrow and every reader can hold every time in that range)."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None
    return when if 1970 <= when.year <= 2999 else None


def _text(value: Any) -> Optional[str]:
    """A plain field of a task (uri, etag, batch, the model's label): a string, or None."""
    return value if isinstance(value, str) and len(value) <= 4096 else None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _choices(value: Any) -> list[str]:
    """Choices as Label Studio writes them: a list of strings (one string taken as one choice)."""
    if isinstance(value, str):
        return [value]
    return [str(c) for c in value if isinstance(c, (str, int))] if isinstance(value, list) else []


def _who(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    return None if value is None else str(value)


def _result(items: Any) -> tuple[list[str], Optional[list[str]]]:
    """(labels, path) of an annotation's result items of the batch's control (Choices or Taxonomy)."""
    from imgclf_ray.review.select import FROM_NAME

    labels: list[str] = []
    path = None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("from_name", FROM_NAME) != FROM_NAME:
            continue
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        if "choices" in value:
            labels += _choices(value["choices"])
        elif isinstance(value.get("taxonomy"), list) and value["taxonomy"]:
            path = _choices(value["taxonomy"][0])
            labels += ["/".join(path)] if path else []
    return labels, path


def _task_facts(data: dict) -> dict[str, Any]:
    return {"uri": _text(data.get("uri")), "etag": _text(data.get("etag")), "batch_id": _text(data.get("batch_id")),
            "model_label": _text(data.get("model_label")), "model_score": _number(data.get("model_score"))}


def _image_id(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value)[:200])


def parse_label_studio(tasks: list) -> Parsed:
    out = Parsed(source="label-studio")
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        annotations = task.get("annotations") if isinstance(task.get("annotations"), list) else []
        for ann in (a for a in annotations if isinstance(a, dict)):
            if ann.get("was_cancelled"):
                out.cancelled += 1
                continue
            labels, path = _result(ann.get("result"))
            if not labels:
                continue
            out.answers.append(Answer(_image_id(data.get("image_id")), labels, path,
                                      _who(ann.get("completed_by")), _time(ann.get("updated_at") or ann.get("created_at")),
                                      str(ann.get("id", ""))[:64], **_task_facts(data)))
    return out


def parse_label_studio_min(records: list) -> Parsed:
    """JSON-MIN: the task's data fields, the control's answer under its name (a string, a list,
    or {"choices": [...]} / {"taxonomy": [[...]]}), and annotator, annotation_id, created_at,
    updated_at."""
    from imgclf_ray.review.select import FROM_NAME

    out = Parsed(source="label-studio-min")
    for rec in records:
        answer = rec.get(FROM_NAME)
        path = None
        if isinstance(answer, dict) and isinstance(answer.get("taxonomy"), list) and answer["taxonomy"]:
            path = _choices(answer["taxonomy"][0])
            labels = ["/".join(path)] if path else []
        elif isinstance(answer, dict):
            labels = _choices(answer.get("choices"))
        else:
            labels = [c for c in _choices(answer) if c]
        if not labels:  # no answer (an empty choice is none)
            continue
        out.answers.append(Answer(_image_id(rec.get("image_id")), labels, path, _who(rec.get("annotator")),
                                  _time(rec.get("updated_at") or rec.get("created_at")),
                                  str(rec.get("annotation_id", ""))[:64], **_task_facts(rec)))
    return out


def parse_csv(text: str) -> Parsed:
    out = Parsed(source="csv")
    if text.startswith("sep="):  # Excel's line naming the separator
        text = text.split("\n", 1)[1] if "\n" in text else ""
    header = text.split("\n", 1)[0]  # commas; semicolons or tabs as a spreadsheet in another locale saves it
    delimiter = next((d for d in (",", ";", "\t")
                      if {"image_id", "label"} <= {c.strip().strip('"') for c in header.split(d)}), ",")
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames or not {"image_id", "label"} <= set(reader.fieldnames):
        raise UserError("a review CSV needs the columns image_id and label, separated by commas, semicolons or tabs "
                        "(optional: etag, batch_id, model_label, model_score, annotator, reviewed_at)")
    for raw in reader:
        rec = {k: uncell(v) if isinstance(v, str) else v for k, v in raw.items()}  # (batch.csv's ' off)
        value = (rec.get("label") or "").strip()
        if not value:
            out.blank += 1
            continue
        labels = [v.strip() for v in value.split("|") if v.strip()]
        path = value.split("/") if "/" in value and len(labels) == 1 else None
        score = _float(rec.get("model_score"), decimal_comma=delimiter == ";")
        out.answers.append(Answer((rec.get("image_id") or "").strip(), labels, path, rec.get("annotator") or None,
                                  _time(rec.get("reviewed_at")), "", **_task_facts({**rec, "model_score": score})))
    return out


def _float(value: Optional[str], decimal_comma: bool = False) -> Optional[float]:
    """A number, or None; ``decimal_comma``: 0,93 as a semicolon-separated spreadsheet writes it."""
    try:
        return float(value.replace(",", ".") if value and decimal_comma else value) if value else None
    except ValueError:
        return None


def parse(blob: bytes, fmt: str = "auto", name: str = "") -> Parsed:
    """The answers in a review file (``fmt`` auto: JSON with ``annotations`` is Label Studio's
    export, other JSON its JSON-MIN, anything else a CSV)."""
    what = name or "the review file"
    text = blob.decode("utf-8-sig", errors="replace")  # a CSV as Excel saves it starts with a BOM
    if fmt == "csv" or (fmt == "auto" and not text.lstrip().startswith(("[", "{"))):
        try:
            return parse_csv(text)
        except csv.Error:
            raise UserError(f"{what}: not a CSV of image_id,label (nor JSON)") from None
    try:
        records = json.loads(text)
    except (ValueError, RecursionError):
        raise UserError(f"{what}: not JSON, and not a CSV either (--format)") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{what}: expected Label Studio's export (a JSON list of tasks)")
    if fmt == "label-studio" or (fmt == "auto" and any("annotations" in r for r in records)):
        return parse_label_studio(records)
    return parse_label_studio_min(records)


def tree_path(a: Answer, tree: list[tuple[str, ...]], name: str) -> list[str]:
    """A hierarchical answer's root-to-leaf path: the one it gives (Label Studio's Taxonomy, or
    ``a/b/c`` in a CSV), or the one path ending in the leaf it names; UserError otherwise."""
    given = tuple(a.path) if a.path else None
    text = a.labels[0] if a.labels else ""
    found = [p for p in tree if p == given] if given else [p for p in tree if p[-1] == text]
    if len(found) == 1 and len(a.labels) == 1:
        return list(found[0])
    shown = ", ".join("/".join(p) for p in tree[:8]) + (f" ... ({len(tree)} in all)" if len(tree) > 8 else "")
    why = (f"its label names {len(found)} leaves: give the path" if len(found) > 1 else
           f"{len(a.labels)} answers (one expected)" if len(a.labels) > 1 else "its label is none of the model's paths")
    raise UserError(f"{name or 'the review file'}: image {shown_id(a.image_id)}: {why}; the model's leaf paths: "
                    f"{shown}; nothing was ingested")


def shown_id(image_id: str) -> str:
    """An answer's image id as a message shows it: itself when it is one (32 hex digits, as
    io.schema.image_id makes them), else a placeholder. Nothing else of a review file is shown:
    its labels are what a reviewer typed (a free-text answer can hold a name)."""
    return image_id if re.fullmatch(r"[0-9a-f]{32}", image_id or "") else "<not an image id>"


def _key(a: Answer) -> str:
    facts = [a.image_id, a.annotation, "|".join(a.labels), a.annotator or "", a.reviewed_at.isoformat() if a.reviewed_at else ""]
    return hashlib.sha256("\x1f".join(facts).encode()).hexdigest()[:32]


@dataclass
class Ingested:
    added: int
    already: int
    cancelled: int
    unknown: list[str]
    stale: int
    file: Optional[str]
    blank: int = 0


def ingest(sink: Sink, blob: bytes, fmt: str = "auto", name: str = "") -> Ingested:
    """Parse, check and commit the answers of one review file (see the module's docstring)."""
    from imgclf_ray.io.lock import RunLock

    parsed = parse(blob, fmt, name)
    runs = sink.list_runs()
    facts = latest_night(sink, runs)
    task, valid = facts.get("task") or "multiclass", set(facts.get("labels") or [])
    if task == "hierarchical":
        tree = [tuple(p) for p in facts.get("label_tree") or []]
        if not tree:
            raise UserError(f"{sink.uri}: its latest night's manifest lists no label tree (an older imgclf wrote "
                            "it); run the night again to review a hierarchical model's labels")
        for a in parsed.answers:
            a.path = tree_path(a, tree, name)
            a.labels = [a.path[-1]]
    for a in parsed.answers:
        wrong = [label for label in a.labels if label not in valid]
        if valid and wrong:
            raise UserError(f"{name or 'the review file'}: image {shown_id(a.image_id)}: a label that is none of the "
                            f"model's labels ({', '.join(sorted(valid))}); nothing was ingested")
        if task != "multilabel" and len(a.labels) > 1:
            raise UserError(f"{name or 'the review file'}: image {shown_id(a.image_id)}: {len(a.labels)} labels for a "
                            f"{task} model (one expected); nothing was ingested")
    with RunLock.on(sink, LOCK_NAME, uuid.uuid4().hex[:12], name=LOCK_NAME):
        model = latest_model_rows(sink, ["image_id", "uri", "etag"], runs)
        current = {r["image_id"]: r for r in model.to_pylist()}
        seen = set(reviews(sink).column("review_key").to_pylist())
        rows, unknown, already, stale = [], [], 0, 0
        now = datetime.now(timezone.utc)
        ingest_id = f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        for a in parsed.answers:
            if a.image_id not in current:
                unknown.append(a.image_id)  # (shown by the CLI through shown_id)
                continue
            key = _key(a)
            if key in seen:
                already += 1
                continue
            seen.add(key)
            now_etag = current[a.image_id]["etag"]
            is_stale = a.etag is not None and now_etag is not None and a.etag != now_etag
            stale += is_stale
            rows.append({"image_id": a.image_id, "uri": a.uri or current[a.image_id]["uri"],
                         "etag": a.etag if a.etag is not None else now_etag, "label": a.labels[0] if len(a.labels) == 1 else None,
                         "labels": a.labels, "label_path": a.path, "annotator": a.annotator,
                         "reviewed_at": a.reviewed_at or now, "batch_id": a.batch_id, "model_label": a.model_label,
                         "model_score": a.model_score, "stale": is_stale, "review_key": key, "source": parsed.source,
                         "ingest_id": ingest_id, "ingested_at": now})
        where = None
        if rows:
            out = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, REVIEW_SCHEMA), out)
            folder = join(sink.root, LABELS_DIR)
            sink.fs.makedirs(folder, exist_ok=True)
            where = join(folder, ingest_id + REVIEWS_SUFFIX)
            faults.point("review_ingest")
            put_atomic(sink.fs, where, out.getvalue())
    return Ingested(len(rows), already, parsed.cancelled, unknown, stale, where, parsed.blank)
