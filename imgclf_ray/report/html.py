"""``imgclf report``: one self-contained HTML page about a committed run.

No CDN, no external file: CSS inline, charts (matplotlib) and image thumbnails as data URIs. Sections
appear when the run has what they show: a confusion matrix when true labels are known, cluster and
curation sections when the output has ``cluster`` / ``is_<check>`` columns.
"""

from __future__ import annotations

import base64
import html
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgclf_ray.io import sink
from imgclf_ray.io.storage import filesystem, read_bytes
from imgclf_ray.io.tables import count_values
from imgclf_ray.spec import StorageSpec

THUMB = 96
_COLUMNS = ("uri", "status", "error", "label", "score", "cluster")


@dataclass
class RunData:
    """A committed run as the report sees it."""

    uri: str
    manifest: dict[str, Any]
    summary: Optional[dict[str, Any]]
    table: pa.Table


def load_run(run_uri: str, storage: StorageSpec = StorageSpec()) -> RunData:
    """Read the manifest, the summary and the columns the report needs (not the whole rows)."""
    table = sink.read_rows(run_uri,
                           lambda n: n in _COLUMNS or n.startswith("is_") or n == "true_label", storage)
    return RunData(run_uri, sink.read_manifest(run_uri, storage),
                   sink.read_run_json(run_uri, sink.SUMMARY_FILE, storage), table)


def thumbnail(uri: str, storage: StorageSpec = StorageSpec(), size: int = THUMB) -> Optional[str]:
    """A JPEG data URI of the image at ``uri``, at most ``size`` px; None if it cannot be read."""
    from PIL import Image

    from imgclf_ray.imaging.decode import decode_image

    try:
        img, _ = decode_image(read_bytes(uri, storage))
    except Exception:  # noqa: BLE001 - a thumbnail that cannot be made is left out
        return None
    if max(img.size) < 64:  # tiny images (8x8 digits) enlarged with visible pixels
        scale = 64 // max(img.size)
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    img.thumbnail((size, size))
    # Pixels only: Pillow's JPEG writer copies the file's own comment (a JPEG COM, a PNG text chunk,
    # a GIF comment: a patient's name, in a report mailed round) from the image's info.
    img.info.clear()
    buf = io.BytesIO()
    try:
        img.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError):  # a mode JPEG cannot hold: left out, as an unreadable image is
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bar_chart(counts: dict[str, int], title: str, xlabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(counts.items())[:40]
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(items) + 2), 3))
    ax.bar([str(k) for k, _ in items], [v for _, v in items], color="#3b6ea5")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=45 if len(items) > 12 else 0)
    return _figure_uri(fig)


def _histogram(scores: np.ndarray) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(scores, bins=20, range=(0, 1), color="#3b6ea5")
    ax.set_title("Confidence of the top label")
    ax.set_xlabel("score")
    ax.set_ylabel("images")
    return _figure_uri(fig)


def _confusion_chart(matrix: np.ndarray, labels: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = max(3.5, 0.45 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 12 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > matrix.max() / 2 else "black")
    return _figure_uri(fig)


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Thumbs:
    """Fetches thumbnails in parallel (object stores answer slowly, one request at a time)."""

    def __init__(self, storage: StorageSpec, budget: int):
        self.storage, self.budget, self.cache = storage, budget, {}

    def prefetch(self, uris: list[str]) -> None:
        todo = [u for u in dict.fromkeys(uris) if u not in self.cache][: max(0, self.budget - len(self.cache))]
        with ThreadPoolExecutor(8) as pool:
            for uri, data in zip(todo, pool.map(lambda u: thumbnail(u, self.storage), todo)):
                self.cache[uri] = data

    def grid(self, items: list[tuple[str, str]]) -> str:
        """Figures for (uri, caption) pairs whose thumbnail could be made."""
        self.prefetch([u for u, _ in items])
        cells = []
        for uri, caption in items:
            data = self.cache.get(uri)
            if data:
                cells.append(f'<figure><img class="thumb" src="{data}" alt="{_esc(uri)}" title="{_esc(uri)}">'
                             f"<figcaption>{_esc(caption)}</figcaption></figure>")
        return f'<div class="grid">{"".join(cells)}</div>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{padding:10px 28px 40px}section{background:#fff;border:1px solid #dde1e7;border-radius:8px;
padding:14px 18px;margin:16px 0}h2{margin:0 0 10px;font-size:17px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #dde1e7;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#eef1f5}
.kpis{display:flex;gap:14px;flex-wrap:wrap}.kpi{background:#eef1f5;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:20px}.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:104px;text-align:center;font-size:11px;word-break:break-all}
img.thumb{width:96px;height:96px;object-fit:contain;background:#222;border-radius:4px}
img.chart{max-width:100%}td.err{color:#a4161a}h3{font-size:14px;margin:12px 0 6px}
"""


def recent_nights(run_uri: str, manifest: dict[str, Any], storage: StorageSpec = StorageSpec(),
                  last: int = 8) -> list[dict[str, Any]]:
    """The runs of the same sink up to this one (at most ``last``, oldest first): run id, rows,
    error rate and label shares, from their manifests and summaries."""
    run_path = str(manifest.get("run_path") or manifest.get("run_id", ""))
    base = run_uri.rstrip("/")
    if not run_path or not base.endswith("/" + run_path):
        return []
    runs = sink.list_runs(base[: -len(run_path) - 1], storage)
    ids = [r["run_id"] for r in runs]
    if manifest.get("run_id") not in ids:
        return []
    out = []
    for r in runs[max(0, ids.index(manifest["run_id"]) - last + 1): ids.index(manifest["run_id"]) + 1]:
        summary = sink.read_run_json(r["uri"], sink.SUMMARY_FILE, storage) or {}
        by_label = summary.get("by_label") or {}
        labelled = sum(by_label.values())
        rows = int(r.get("rows", 0))
        out.append({"run_id": r["run_id"], "rows": rows,
                    "error_rate": (r.get("by_status") or {}).get("error", 0) / rows if rows else None,
                    "shares": {k: v / labelled for k, v in by_label.items()} if labelled else {},
                    "nothing_new": bool(r.get("nothing_new"))})
    return out


OTHER = "other"


def top_labels(nights: list[dict[str, Any]], k: int) -> tuple[list[str], list[dict[str, float]]]:
    """The ``k`` labels with the largest share summed over the nights (largest first) and each
    night's shares of them, the rest summed as "other": every label is counted, none is cut."""
    total: dict[str, float] = {}
    for night in nights:
        for label, share in night["shares"].items():
            total[label] = total.get(label, 0.0) + share
    ranked = sorted(total, key=lambda lab: (-total[lab], str(lab)))
    keep = ranked if len(ranked) <= k else ranked[: k - 1]
    shares = []
    for night in nights:
        row = {lab: night["shares"].get(lab, 0.0) for lab in keep}
        if len(keep) < len(ranked):
            row[OTHER] = sum(v for lab, v in night["shares"].items() if lab not in keep)
        shares.append(row)
    return [str(lab) for lab in keep] + ([OTHER] if len(keep) < len(ranked) else []), shares


def _nights_chart(nights: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, shares = top_labels(nights, 12)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(5, 0.6 * len(nights) + 3), 5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    x = np.arange(len(nights))
    base = np.zeros(len(nights))
    for label in labels:
        share = np.array([s.get(label, 0.0) for s in shares])
        top.bar(x, share, bottom=base, label=str(label))
        base += share
    top.set_ylabel("label share")
    top.set_title("Recent nights")
    if labels:
        top.legend(fontsize=7, ncol=min(4, len(labels)), loc="upper left", bbox_to_anchor=(1, 1))
    # A night with no images has no error rate: a gap in the line, not 0 %.
    bottom.plot(x, [np.nan if n["error_rate"] is None else 100 * n["error_rate"] for n in nights], marker="o",
                color="#b03a2e")
    bottom.set_ylabel("errors %")
    bottom.set_xticks(x, [n["run_id"] for n in nights], rotation=45, ha="right", fontsize=7)
    return _figure_uri(fig)


def render_report(run: RunData, storage: StorageSpec = StorageSpec(), truth_from_folder: bool = False,
                  per_group: int = 8, max_thumbnails: int = 400,
                  nights: Optional[list[dict[str, Any]]] = None) -> str:
    """The HTML text of the report for ``run``."""
    _require_matplotlib()
    t = run.table
    n = t.num_rows
    m, s = run.manifest, run.summary or {}
    thumbs = _Thumbs(storage, max_thumbnails)
    status = _counts(t, "status")
    ok = t.filter(pc.equal(t.column("status"), "ok")) if n else t
    labels = _counts(ok, "label")
    errors = t.filter(pc.equal(t.column("status"), "error")) if n else t
    ok_labels = ok.column("label").to_pylist() if ok.num_rows else []
    sections = []

    kpis = [("images", n), ("ok", status.get("ok", 0)), ("errors", status.get("error", 0)),
            ("labels", len(labels)), ("images/s", s.get("images_per_second", "-")),
            ("wall time (s)", m.get("wall_seconds", "-"))]
    meta_rows = [["run id", m.get("run_id")], ["job", m.get("job")], ["committed at", m.get("committed_at")],
                 ["model id", m.get("model_id")], ["output", run.uri], ["spec digest", s.get("spec_digest")],
                 ["files", len(m.get("files", []))]]
    for key in ("executor", "runtime"):  # which engine ran it, and the network's runtime (and why)
        if s.get(key):
            meta_rows.append([key, f"{s[key].get('name')} ({s[key].get('why')})"])
    plan = m.get("plan") or {}
    if plan:
        meta_rows.append(["resources", ", ".join(f"{k}={v}" for k, v in plan.items())])
    sections.append(('run', "Run", '<div class="kpis">' + "".join(
        f'<div class="kpi" id="kpi-{_esc(k).replace(" ", "-").replace("/", "-")}"><b>{_esc(v)}</b>{_esc(k)}</div>'
        for k, v in kpis) + "</div>" + _table(["field", "value"], meta_rows)))

    stage_rows = [[k, v.get("rows"), v.get("worker_seconds"), v.get("rows_per_worker_second")]
                  for k, v in (s.get("stages") or {}).items()]
    sections.append(("status", "Status", _table(["status", "images"], [[k, v] for k, v in status.items()])
                     + (_table(["stage", "rows", "worker seconds", "rows / worker second"], stage_rows)
                        if stage_rows else "")))

    if labels:
        sections.append(("classes", "Class distribution",
                         f'<img class="chart" src="{_bar_chart(labels, "Images per label", "label")}" alt="class distribution">'
                         + _table(["label", "images", "share"],
                                  [[k, v, f"{100 * v / max(1, ok.num_rows):.1f}%"] for k, v in labels.items()])))
        scores = ok.column("score").to_numpy(zero_copy_only=False).astype(float)
        uris = ok.column("uri").to_pylist()
        order = np.argsort(scores)[:per_group * 2]
        sections.append(("confidence", "Confidence",
                         f'<img class="chart" src="{_histogram(scores)}" alt="confidence histogram">'
                         f"<p>median score {np.median(scores):.3f}; {int((scores < 0.5).sum())} images below 0.5</p>"
                         "<h3>Least confident</h3>"
                         + thumbs.grid([(uris[i], f"{ok_labels[i]} {scores[i]:.2f}") for i in order])))
        parts = []
        for label in list(labels)[:40]:
            rows = ok.filter(pc.equal(ok.column("label"), label))
            best = np.argsort(-rows.column("score").to_numpy(zero_copy_only=False))[:per_group]
            r_uris, r_scores = rows.column("uri").to_pylist(), rows.column("score").to_pylist()
            parts.append(f"<h3>{_esc(label)} ({rows.num_rows})</h3>"
                         + thumbs.grid([(r_uris[i], f"{r_scores[i]:.2f}") for i in best]))
        sections.append(("exemplars", "Most confident images per label", "".join(parts)))

    truth = _truth(ok, truth_from_folder) if m.get("task") not in ("multilabel", None) else None
    if truth is not None and any(t is not None for t in truth):
        sections.append(("confusion", "Against the true labels", _confusion(truth, ok_labels)))

    if "cluster" in t.column_names and t.column("cluster").null_count < t.num_rows:
        clustered = t.filter(pc.is_valid(t.column("cluster")))
        sizes = _counts(clustered, "cluster")
        parts = [f'<img class="chart" src="{_bar_chart(sizes, "Images per cluster", "cluster")}" alt="cluster sizes">']
        for cluster in list(sizes)[:30]:
            rows = clustered.filter(pc.equal(clustered.column("cluster"), cluster))
            parts.append(f"<h3>cluster {_esc(cluster)} ({rows.num_rows})</h3>"
                         + thumbs.grid([(u, "") for u in rows.column("uri").to_pylist()[:per_group]]))
        sections.append(("clusters", "Clusters", "".join(parts)))

    # Checks the run did not do have all-null columns.
    flags = [c for c in t.column_names if c.startswith("is_") and t.column(c).null_count < t.num_rows]
    if flags:
        counts = {c[3:]: int(pc.sum(t.column(c)).as_py() or 0) for c in flags}
        parts = [_table(["check", "flagged", "share"],
                        [[k, v, f"{100 * v / max(1, n):.1f}%"] for k, v in counts.items()])]
        for c in flags:
            flagged = t.filter(pc.fill_null(t.column(c), False))
            if flagged.num_rows:
                parts.append(f"<h3>{_esc(c[3:])} ({flagged.num_rows})</h3>"
                             + thumbs.grid([(u, "") for u in flagged.column("uri").to_pylist()[:per_group]]))
        sections.append(("curation", "Curation flags", "".join(parts)))

    if nights and len(nights) > 1:
        top, shares = top_labels(nights, 8)
        rows = [[night["run_id"], night["rows"], "—" if night["error_rate"] is None else f"{100 * night['error_rate']:.1f}%"]
                + [f"{100 * share.get(k, 0):.1f}%" for k in top] for night, share in zip(nights, shares)]
        sections.append(("nights", "Recent nights",
                         f'<img class="chart" src="{_nights_chart(nights)}" alt="label shares and error rate by night">'
                         + _table(["run", "images", "errors"] + [str(k) for k in top], rows)))

    causes = (s.get("errors") or {}).get("by_cause") or {}
    err_rows = [[u, e] for u, e in zip(errors.column("uri").to_pylist()[:200], errors.column("error").to_pylist()[:200])]
    sections.append(("errors", f"Errors ({errors.num_rows})",
                     (_table(["cause", "images"], [[k, v] for k, v in causes.items()]) if causes else "")
                     + (_table(["uri", "error"], err_rows, "errors") if err_rows else "<p>No errors.</p>")))

    body = "".join(f'<section id="{sid}"><h2>{_esc(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    title = f"imgclf run {m.get('run_id', '')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><header><h1>{_esc(title)}</h1>"
            f"<p>{n} images · {status.get('ok', 0)} ok · {status.get('error', 0)} errors · "
            f"model {_esc(m.get('model_id', '-'))}</p></header><main>{body}</main></body></html>")


def _counts(t: pa.Table, column: str) -> dict[Any, int]:
    return count_values(t.column(column)) if column in t.column_names else {}


def _truth(ok: pa.Table, from_folder: bool) -> Optional[list[str]]:
    if "true_label" in ok.column_names and ok.column("true_label").null_count < ok.num_rows:
        # Hierarchical truths are paths (a/b/c); the label is the leaf.
        return [None if v is None else str(v).rsplit("/", 1)[-1] for v in ok.column("true_label").to_pylist()]
    if from_folder:
        return [u.rstrip("/").rsplit("/", 2)[-2] for u in ok.column("uri").to_pylist()]
    return None


def _confusion(truth: list[Optional[str]], predicted: list[str]) -> str:
    import warnings

    with warnings.catch_warnings():  # one label only: scikit-learn warns that its matrices are 1x1, as they are
        warnings.simplefilter("ignore", UserWarning)
        return _confusion_html(truth, predicted)


def _confusion_html(truth: list[Optional[str]], predicted: list[str]) -> str:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    pairs = [(t, p) for t, p in zip(truth, predicted) if t is not None]
    y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    labels = sorted(set(y_true) | set(y_pred))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    rows = [[lab, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", int(n)] for lab, p, r, f, n in zip(labels, precision, recall, f1, support)]
    acc = accuracy_score(y_true, y_pred)
    bal = balanced_accuracy_score(y_true, y_pred)
    return (f'<p id="accuracy">accuracy <b>{acc:.4f}</b> · balanced accuracy {bal:.4f} · '
            f"macro F1 {float(np.mean(f1)):.4f} · {len(y_true)} images with a true label</p>"
            f'<img class="chart" src="{_confusion_chart(matrix, labels)}" alt="confusion matrix">'
            + _table(["label", "precision", "recall", "F1", "support"], rows))


def _require_matplotlib() -> None:
    from imgclf_ray.extras import require

    require("report")


def write_report(output_uri: str, run_id: Optional[str] = None, out: Optional[str] = None,
                 storage: StorageSpec = StorageSpec(), truth_from_folder: bool = False) -> str:
    """Render the report of a committed run and write it to ``out`` (default
    ``<run_id>-report.html`` in the current directory; ``-``: standard output). Returns where it
    was written."""
    run_uri = sink.resolve_run(output_uri, run_id, storage)
    run = load_run(run_uri, storage)
    page = render_report(run, storage, truth_from_folder=truth_from_folder,
                         nights=recent_nights(run_uri, run.manifest, storage))
    if out == "-":  # standard output
        import sys

        sys.stdout.buffer.write(page.encode())
        sys.stdout.flush()
        return out
    out = out or f"{run.manifest.get('run_id', 'run')}-report.html"
    fs, path = filesystem(out, storage)
    fs.pipe_file(path, page.encode())
    return out
