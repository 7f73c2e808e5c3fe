"""What a finished run reports: RunResult (the summary and _run_summary.json), error causes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from collections import Counter
from typing import Any, Optional

from imgclf_ray.models.hierarchy import ArtifactInfo
from imgclf_ray.planner import Plan
from imgclf_ray.spec import JobSpec

@dataclass
class RunResult:
    """What a finished run reports (also the basis of the CLI summary)."""

    run_id: str
    output_uri: str
    rows: int
    by_status: dict[str, int]
    by_label: dict[str, int]
    errors_by_stage: dict[str, int]
    sample_errors: list[dict[str, str]]
    wall_seconds: float
    images_per_second: float
    model_id: Optional[str]
    plan: dict[str, Any] = field(default_factory=dict)
    errors_by_cause: dict[str, int] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    spec_digest: str = ""
    started_at: str = ""
    listing_seconds: Optional[float] = None
    first_batch_seconds: Optional[float] = None
    by_cluster: dict[str, int] = field(default_factory=dict)
    curation_flags: dict[str, int] = field(default_factory=dict)
    curation: dict[str, Any] = field(default_factory=dict)
    clusterer: dict[str, Any] = field(default_factory=dict)
    files: int = 0  # input files (rows can be more: frames, pages, table rows, samples)
    listing_skipped: dict[str, int] = field(default_factory=dict)  # files the listing left out, by why
    nothing_new: str = ""  # why an incremental run committed no rows (an empty run record)
    executor: dict[str, str] = field(default_factory=dict)  # run.executor as chosen (auto), and why
    runtime: dict[str, str] = field(default_factory=dict)  # a torch network's model.runtime as chosen (auto), and why
    int8: Optional[dict[str, Any]] = None  # model.precision int8: the quantized model (runner.int8.Int8)
    selection: dict[str, Any] = field(default_factory=dict)  # incremental: new, changed, model_changed, unchanged, on_new_model
    registered_model: Optional[dict[str, Any]] = None  # model.uri models:/...: the version it resolved to
    ray_log: Optional[str] = None  # quiet runs: where Ray's own console lines went

    def summary(self) -> dict[str, Any]:
        """The machine-readable run summary (``_run_summary.json`` next to the output)."""
        return {
            "run_id": self.run_id,
            "output_uri": self.output_uri,
            **({"executor": self.executor} if self.executor else {}),
            "started_at": self.started_at,
            "wall_seconds": round(self.wall_seconds, 3),
            "listing_seconds": None if self.listing_seconds is None else round(self.listing_seconds, 3),
            "first_batch_seconds": self.first_batch_seconds,
            "rows": self.rows,
            "listing": {"files": self.files, "skipped": self.listing_skipped},
            **({"incremental": self.selection} if self.selection else {}),
            "images_per_second": round(self.images_per_second, 2),
            "by_status": self.by_status,
            "by_label": self.by_label,
            "by_cluster": self.by_cluster,
            "curation_flags": self.curation_flags,
            "curation": self.curation,
            "clusterer": self.clusterer,
            "errors": {"by_stage": self.errors_by_stage, "by_cause": self.errors_by_cause},
            "stages": self.stages,
            "resources": self.plan,
            "model_id": self.model_id,
            **({"runtime": self.runtime} if self.runtime else {}),
            **({"registered_model": self.registered_model} if self.registered_model else {}),
            **({"int8": self.int8} if self.int8 else {}),
            "spec_digest": self.spec_digest,
            **({"nothing_new": self.nothing_new} if self.nothing_new else {}),
        }


def ranked(counts: Counter) -> dict:
    """Value -> rows, most frequent first (the order ``io.tables.count_values`` gives)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def make_result(spec: JobSpec, run_id: str, output_uri: str, summary, wall: float,
                card: Optional[ArtifactInfo], plan: Plan) -> RunResult:
    """The run's result from its staged rows' merged counts (``summary``: a
    ``runner.readback.FileSummary``)."""
    return RunResult(
        run_id=run_id,
        output_uri=output_uri,
        rows=summary.rows,
        by_status=ranked(summary.by_status),
        by_label=ranked(summary.by_label),
        errors_by_stage=ranked(summary.errors_by_stage),
        sample_errors=summary.sample_errors,
        wall_seconds=wall,
        images_per_second=summary.rows / wall if wall > 0 else 0.0,
        model_id=card.model_id if card else None,
        plan=asdict(plan),
        errors_by_cause=dict(sorted(summary.errors_by_cause.items(), key=lambda kv: (-kv[1], kv[0]))),
        spec_digest=spec_digest(spec),
    )


def error_cause(message: str) -> str:
    """The kind of an error message, for grouping: details in parentheses and numbers dropped
    ('decode: image is NxN = N pixels, over the decompression-bomb limit of N ...')."""
    head = re.split(r"\s[(;]", message or "", maxsplit=1)[0]
    return re.sub(r"\d[\d,.]*", "N", head).strip()


def spec_digest(spec: JobSpec) -> str:
    """sha256 of the validated spec (defaults filled in), to tell runs of different specs apart."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def since_process_start(when: Optional[float]) -> Optional[float]:
    """Seconds from this process's start (the CLI invoked) to ``when``."""
    import psutil

    if when is None:
        return None
    return round(when - psutil.Process(os.getpid()).create_time(), 2)
