"""The short text summary ``imgclf run`` prints when a run is committed."""

from __future__ import annotations

from imgclf_ray.messages import printable
from imgclf_ray.runner.result import RunResult


def _line(counts: dict[str, int], limit: int = 12) -> str:
    items = list(counts.items())
    text = ", ".join(f"{k}: {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text or "-"


def format_summary(result: RunResult, max_errors: int = 5) -> str:
    """Rows by status and label, errors by stage with a few examples, throughput, output location."""
    files = (f" from {result.files:,} file{'' if result.files == 1 else 's'}" if result.files and result.files != result.rows
             else "")
    if result.nothing_new:
        return (f"run {result.run_id}: nothing new ({result.nothing_new}); committed an empty run "
                f"record\n  output : {result.output_uri}")
    on = f", {result.executor['name']} executor: {result.executor['why']}" if result.executor else ""
    lines = [
        f"run {result.run_id}: {result.rows} images{files} in {result.wall_seconds:.1f} s "
        f"({result.images_per_second:.1f} images/s){on}",
        f"  status : {_line(result.by_status)}",
        f"  labels : {_line(result.by_label)}",
    ]
    if result.listing_skipped:
        lines.append("  listing: skipped " + ", ".join(f"{n} file{'s' * (n != 1)} ({why})"
                                                       for why, n in result.listing_skipped.items()))
    if result.errors_by_stage:
        lines.append(f"  errors : {_line(result.errors_by_stage)}")
        shown = list(dict.fromkeys((err["uri"], err["error"]) for err in result.sample_errors))  # (a file's frames: once)
        for uri, error in shown[:max_errors]:
            lines.append(f"           {printable(uri, 300, names=True)}: {printable(error, 300)}")
    if result.by_cluster:
        lines.append(f"  clusters: {_line(result.by_cluster)}")
    if result.curation_flags:
        lines.append(f"  flagged: {_line(result.curation_flags)}")
    runtime = f" (runtime {result.runtime['name']}: {result.runtime['why']})" if result.runtime else ""
    lines.append(f"  model  : {result.model_id or '- (no model)'}{runtime}")
    if result.int8:
        q = result.int8
        lines.append(f"  int8   : labels equal fp32's on {q['agreement']:.1%} of {q['calibration']['held_back']} "
                     f"held-back images (base {q['base_model_id']})")
    if result.registered_model:
        r = result.registered_model
        lines.append(f"  version: {r['uri']} = {r['name']} version {r['version']} ({r['source']})")
    if "/_runs/" in result.output_uri:  # a Delta sink: the table, and the run's record beside it
        table = result.output_uri.rsplit("/_runs/", 1)[0]
        lines.append(f"  output : {table}  (Delta table, rows where run_id = '{result.run_id}'; "
                     f"run record {result.output_uri})")
    else:
        lines.append(f"  output : {result.output_uri}  (committed: _manifest.json, _SUCCESS)")
    if result.ray_log:
        lines.append(f"  log    : {result.ray_log}")
    return "\n".join(lines)
