"""The clustering and curation columns of an output batch, and the per-image flags.

Per-image flags (blurry, dark, overexposed, low_information, grayscale, odd_aspect, outlier) are
decided here, in the predictor, from the scores the decode tasks measured (``curation.measure``,
cleanvision's definitions); the archive-wide ones (odd_size, duplicate, near_duplicate,
label_issue) by ``curation.archive`` after all rows exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from imgclf_ray.io.schema import EXTRA_COLUMNS, OUTPUT_SCHEMA
from imgclf_ray.registry import CURATION_CHECKS

# flag -> (score column, comparison, threshold field of CurateSpec or None: the clusterer's), from
# the row checks of the registry (imgclf_ray/curation_checks/).
ROW_CHECKS = {name: (c.score, c.op, c.threshold) for name in CURATION_CHECKS.names()
              if (c := CURATION_CHECKS.get(name)).kind == "row"}
FLOAT_COLUMNS = ("blur_score", "brightness", "dark_score", "light_score", "entropy", "color_spread",
                 "grayscale_score", "aspect_score", "cluster_distance", "cluster_probability", "outlier_score")


@dataclass(frozen=True)
class RowRules:
    """The per-image checks a job runs and their thresholds (picklable, shipped to the actors)."""

    thresholds: dict[str, float] = field(default_factory=dict)  # check -> threshold

    def flags(self, batch: dict[str, Any], ok: np.ndarray) -> dict[str, pa.Array]:
        out = {}
        for check, threshold in self.thresholds.items():
            column, op, _ = ROW_CHECKS[check]
            if column not in batch:
                continue
            values = np.asarray(batch[column], dtype=np.float64)
            flag = values < threshold if op == "<" else values > threshold
            out[f"is_{check}"] = pa.array(flag, mask=~ok | np.isnan(values))
        return out


def row_rules(checks: tuple[str, ...], curate: Any, outlier_threshold: Optional[float]) -> RowRules:
    thresholds = {}
    for check in checks:
        if check not in ROW_CHECKS:
            continue
        attr = ROW_CHECKS[check][2]
        value = outlier_threshold if attr is None else getattr(curate, attr)
        if value is not None:
            thresholds[check] = float(value)
    return RowRules(thresholds)


def row_columns(batch: dict[str, Any], ok: np.ndarray, rules: Optional[RowRules]) -> dict[str, pa.Array]:
    """Every clustering / curation column the batch carries, nulls on error rows; flags by ``rules``."""
    n = len(ok)
    out: dict[str, pa.Array] = {}
    if rules is not None and "odd_aspect" in rules.thresholds and "width" in batch:
        w, h = (np.asarray(batch[k], dtype=np.float64) for k in ("width", "height"))
        with np.errstate(divide="ignore", invalid="ignore"):
            batch = {**batch, "aspect_score": np.where((w > 0) & (h > 0), np.minimum(w / h, h / w), np.nan)}
    for name in FLOAT_COLUMNS:
        if name in batch:
            values = np.asarray(batch[name], dtype=np.float32)
            out[name] = pa.array(values, mask=~ok | np.isnan(values))
    if "cluster" in batch:
        out["cluster"] = pa.array(np.asarray(batch["cluster"], dtype=np.int32), mask=~ok)
    if "phash" in batch:
        out["phash"] = pa.array(np.asarray(batch["phash"], dtype=np.int64), mask=~ok)
    if "pixel_hash" in batch:
        out["pixel_hash"] = pa.array([h if k and isinstance(h, str) else None
                                      for h, k in zip(batch["pixel_hash"], ok)], pa.string())
    if "embedding" in batch:
        emb = np.asarray(batch["embedding"], dtype=np.float32).reshape(n, -1)
        out["embedding"] = pa.array([list(e) if k else None for e, k in zip(emb, ok)], pa.list_(pa.float32()))
    if rules is not None:
        out.update(rules.flags(batch, ok))
    return {name: out.get(name, pa.nulls(n, OUTPUT_SCHEMA.field(name).type)) for name in EXTRA_COLUMNS}

