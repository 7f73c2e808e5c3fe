"""``imgclf compare``: two committed runs side by side — label counts and shares, a drift statistic
per label (population stability index, with the chi-square p-value of that label's share beside
it), the shift of the confidence distribution, and error causes new in the second run."""

from __future__ import annotations

import math
from typing import Any, Optional

from imgclf_ray.spec import StorageSpec

EPS = 1e-4  # share floor in the PSI (a label absent on one side)


def run_counts(uri: str, storage: StorageSpec) -> dict[str, Any]:
    from imgclf_ray.io.sink import read_manifest, read_rows

    manifest = read_manifest(uri, storage)
    return counts(read_rows(uri, ["status", "label", "score", "error"], storage), manifest["run_id"],
                   manifest.get("nothing_new"))


def counts(t: Any, run_id: str, nothing_new: Optional[str]) -> dict[str, Any]:
    """A run's (or any table's with status, label, score and error) counts as compared."""
    from imgclf_ray.runner.result import error_cause

    if not t.num_rows:
        return {"run_id": run_id, "rows": 0, "ok": 0, "nothing_new": nothing_new, "errors": 0, "labels": {},
                "scores": [], "causes": {}}
    status = t.column("status").to_pylist()
    ok = [s == "ok" for s in status]
    labels = [lab for lab, k in zip(t.column("label").to_pylist(), ok) if k and lab is not None]
    scores = [s for s, k in zip(t.column("score").to_pylist(), ok) if k and s is not None]
    causes: dict[str, int] = {}
    for e, s in zip(t.column("error").to_pylist(), status):
        if s == "error" and e:
            causes[error_cause(e)] = causes.get(error_cause(e), 0) + 1
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return {"run_id": run_id, "rows": t.num_rows, "ok": sum(ok), "nothing_new": nothing_new,
            "errors": sum(s == "error" for s in status), "labels": counts, "scores": scores, "causes": causes}


def psi(p: float, q: float) -> float:
    """One label's term of the population stability index, shares p (before) and q (after)."""
    p, q = max(p, EPS), max(q, EPS)
    return (q - p) * math.log(q / p)


def compare_runs(uri_a: str, uri_b: str, storage: StorageSpec = StorageSpec()) -> dict[str, Any]:
    """The comparison of two committed run folders, as a JSON-ready dict."""
    return compare_counts(run_counts(uri_a, storage), run_counts(uri_b, storage))


def compare_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The comparison of two runs' counts (``_run``, ``current``), as a JSON-ready dict."""
    import numpy as np
    from scipy.stats import chi2_contingency, ks_2samp

    na, nb = sum(a["labels"].values()), sum(b["labels"].values())
    labels = []
    for lab in sorted(set(a["labels"]) | set(b["labels"])):
        ca, cb = a["labels"].get(lab, 0), b["labels"].get(lab, 0)
        pa_, pb = (ca / na if na else 0.0), (cb / nb if nb else 0.0)
        p_value: Optional[float] = None
        if na and nb and (ca + cb) and (na - ca + nb - cb):
            p_value = float(chi2_contingency([[ca, na - ca], [cb, nb - cb]])[1])
        labels.append({"label": lab, "count_a": ca, "count_b": cb,
                       # a run without labelled images has no shares (not 0 %: nothing to compare)
                       "share_a": round(pa_, 4) if na else None, "share_b": round(pb, 4) if nb else None,
                       "share_change": round(pb - pa_, 4) if na and nb else None,
                       "psi": round(psi(pa_, pb), 4) if na and nb else None,
                       "chi2_p": None if p_value is None else round(p_value, 4)})
    confidence: dict[str, Any] = {}
    if a["scores"] and b["scores"]:
        ks = ks_2samp(a["scores"], b["scores"])
        confidence = {"mean_a": round(float(np.mean(a["scores"])), 4), "mean_b": round(float(np.mean(b["scores"])), 4),
                      "median_a": round(float(np.median(a["scores"])), 4),
                      "median_b": round(float(np.median(b["scores"])), 4),
                      "ks_statistic": round(float(ks.statistic), 4), "ks_p": round(float(ks.pvalue), 4)}
    return {
        "a": {k: a[k] for k in ("run_id", "rows", "ok", "errors", "nothing_new")},
        "b": {k: b[k] for k in ("run_id", "rows", "ok", "errors", "nothing_new")},
        "error_rate_a": round(a["errors"] / a["rows"], 4) if a["rows"] else None,
        "error_rate_b": round(b["errors"] / b["rows"], 4) if b["rows"] else None,
        "labels": labels,
        # A run without labelled images (a night with nothing new) has no distribution to drift from.
        "psi_total": round(sum(row["psi"] for row in labels), 4) if na and nb else None,
        "no_images": [r["run_id"] for r in (a, b) if not sum(r["labels"].values())],
        "confidence": confidence,
        "new_error_causes": {c: n for c, n in sorted(b["causes"].items()) if c not in a["causes"]},
    }


def format_comparison(c: dict[str, Any]) -> str:
    a, b = c["a"], c["b"]
    lines = [f"{a['run_id']} ({a['rows']} rows, {a['errors']} errors) -> {b['run_id']} ({b['rows']} rows, "
             f"{b['errors']} errors)",
             f"  {'label':<20} {'count A':>8} {'count B':>8} {'share A':>8} {'share B':>8} {'change':>8} "
             f"{'PSI':>7} {'chi2 p':>7}"]
    for row in c["labels"]:
        p = "-" if row["chi2_p"] is None else f"{row['chi2_p']:.3f}"
        def num(value, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        lines.append(f"  {row['label'][:20]:<20} {row['count_a']:>8} {row['count_b']:>8} {num(row['share_a'], '.3f'):>8} "
                     f"{num(row['share_b'], '.3f'):>8} {num(row['share_change'], '+.3f'):>8} {num(row['psi'], '.3f'):>7} {p:>7}")
    if c["psi_total"] is None:
        for side in (a, b):
            if side["run_id"] in c["no_images"]:
                why = "nothing new that night" if side.get("nothing_new") else "no labelled images"
                lines.append(f"  {side['run_id']}: no images ({why}); no drift is computed against it")
    else:
        drift = "no drift" if c["psi_total"] < 0.1 else ("moderate drift" if c["psi_total"] < 0.25 else "significant drift")
        lines.append(f"  PSI total {c['psi_total']:.3f} ({drift}: < 0.1 none, 0.1-0.25 moderate, > 0.25 significant)")
    conf = c["confidence"]
    if conf:
        lines.append(f"  confidence: mean {conf['mean_a']:.3f} -> {conf['mean_b']:.3f}, median {conf['median_a']:.3f} "
                     f"-> {conf['median_b']:.3f}, KS {conf['ks_statistic']:.3f} (p {conf['ks_p']:.3f})")
    if c["new_error_causes"]:
        lines.append("  new error causes: " + "; ".join(f"{k} ({n})" for k, n in c["new_error_causes"].items()))
    return "\n".join(lines)
