"""Metrics of a committed run against its true labels, for every task type.

* multiclass / binary: accuracy, balanced accuracy, macro-F1, per-class precision / recall / F1,
  confusion matrix; binary adds ROC-AUC of the positive probability and the threshold used.
* multilabel: hamming loss, micro- and macro-F1, subset accuracy, per-label precision / recall / F1.
* hierarchical: hierarchical precision / recall / F1 (each path extended with its ancestors, sets
  compared), accuracy of the whole path and of the leaf.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


def _per_class(y_true, y_pred, labels) -> dict[str, dict[str, float]]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {lab: {"precision": round(float(a), 4), "recall": round(float(b), 4), "f1": round(float(c), 4),
                  "support": int(d)} for lab, a, b, c, d in zip(labels, p, r, f, n)}


def _single_label(rows: list[dict[str, Any]], labels: list[str], task: str, threshold: Optional[float]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    y_true = [r["true_label"] for r in rows]
    y_pred = [r["label"] for r in rows]
    out: dict[str, Any] = {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(y_true, y_pred)), 4),
        # Over the classes the archive or the model's answers hold (scikit-learn's default): a class
        # of the model that appears in neither has no F1 to average.
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=[lab for lab in labels if lab in {*y_true, *y_pred}],
                                         average="macro", zero_division=0)), 4),
        "per_class": _per_class(y_true, y_pred, labels),
        "confusion_matrix": {"labels": labels, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
    }
    if task == "binary":
        positive = labels[1]
        truth = np.array([t == positive for t in y_true])
        if 0 < truth.sum() < len(truth):
            out["roc_auc"] = round(float(roc_auc_score(truth, [r["class_scores"][1] for r in rows])), 4)
        out["positive_label"] = positive
        out["threshold"] = threshold
    return out


def _multilabel(rows: list[dict[str, Any]], labels: list[str], separator: str) -> dict[str, Any]:
    from sklearn.metrics import f1_score, hamming_loss

    def onehot(chosen):
        return [int(lab in chosen) for lab in labels]

    y_true = np.array([onehot(set(r["true_label"].split(separator)) - {""}) for r in rows])
    y_pred = np.array([onehot(set(r["labels"] or [])) for r in rows])
    per = {}
    for j, lab in enumerate(labels):
        tp = int((y_true[:, j] & y_pred[:, j]).sum())
        p = tp / max(int(y_pred[:, j].sum()), 1)
        r = tp / max(int(y_true[:, j].sum()), 1)
        per[lab] = {"precision": round(p, 4), "recall": round(r, 4),
                    "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "support": int(y_true[:, j].sum())}
    return {
        "hamming_loss": round(float(hamming_loss(y_true, y_pred)), 4),
        "micro_f1": round(float(f1_score(y_true, y_pred, average="micro", zero_division=0)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
        "subset_accuracy": round(float((y_true == y_pred).all(axis=1).mean()), 4),
        "per_class": per,
    }


def _hierarchical(rows: list[dict[str, Any]], leaf_paths: dict[str, list[str]]) -> dict[str, Any]:
    inter = predicted = true = 0
    exact = leaf = 0
    for r in rows:
        truth = r["true_label"].split("/")
        if len(truth) == 1:  # a leaf label: its ancestors come from the tree
            truth = leaf_paths.get(truth[0], truth)
        pred = r["label_path"] or []
        t, p = set(enumerate(truth)), set(enumerate(pred))
        inter += len(t & p)
        predicted += len(p)
        true += len(t)
        exact += pred == truth
        leaf += bool(pred) and pred[-1] == truth[-1]
    hp, hr = inter / max(predicted, 1), inter / max(true, 1)
    return {"hierarchical_precision": round(hp, 4), "hierarchical_recall": round(hr, 4),
            "hierarchical_f1": round(2 * hp * hr / (hp + hr), 4) if hp + hr else 0.0,
            "path_accuracy": round(exact / len(rows), 4), "leaf_accuracy": round(leaf / len(rows), 4)}


def evaluate_rows(rows: list[dict[str, Any]], task: str, labels: list[str], separator: str = "|",
                  threshold: Optional[float] = None, leaf_paths: Optional[dict[str, list[str]]] = None,
                  folders: bool = True) -> dict[str, Any]:
    """Metrics for the ok rows that have a true label; counts of what was left out. An empty true
    label (a labels table's empty cell) is none, but for multilabel: no label applies. ``folders``:
    the true labels are folder names (shown in a refusal; a table's values are not)."""
    unlabelled = (None,) if task == "multilabel" else (None, "")
    scored = [r for r in rows if r["status"] == "ok" and r.get("true_label") not in unlabelled]
    out: dict[str, Any] = {"task": task, "images": len(scored),
                           "left_out": {"error_rows": sum(r["status"] != "ok" for r in rows),
                                        "without_true_label": sum(r["status"] == "ok" and r.get("true_label")
                                                                  in unlabelled for r in rows)}}
    if not scored:
        return out
    if task not in ("multilabel", "hierarchical"):
        truth = sorted({r["true_label"] for r in scored})
        if not set(truth) & set(labels):
            from imgclf_ray.errors import UserError
            from imgclf_ray.messages import printable

            model = f"the model's labels ({', '.join(labels[:5])}{' ...' if len(labels) > 5 else ''})"
            if folders:  # (folder names: the user's own, in every path shown)
                raise UserError(printable(
                    f"the true labels ({', '.join(truth[:5])}{' ...' if len(truth) > 5 else ''}) are none of {model}: "
                    "with source.labels from folders, source.uri is the folder that holds one folder per label"))
            # A labels table's values are data, never shown: a wrong column can hold names.
            raise UserError(printable(f"no true label is one of {model} ({len(truth):,} distinct values in the "
                                      "labels table's column): is source.labels.label_column the column of labels?"))
    import warnings

    with warnings.catch_warnings():  # scikit-learn's notes on classes absent from one side: the output says so
        warnings.simplefilter("ignore", UserWarning)
        if task == "multilabel":
            out.update(_multilabel(scored, labels, separator))
        elif task == "hierarchical":
            out.update(_hierarchical(scored, leaf_paths or {}))
        else:
            out.update(_single_label(scored, labels, task, threshold))
    return out


# Numbers a training's result carries that are not its metrics (the command prints them on their own).
_NOT_METRICS = ("images", "example_written", "gold_images_left_out")


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short text table of the headline numbers and the per-class ones."""
    lines = [f"{metrics['task']} evaluation on {metrics['images']} labelled images "
             f"(left out: {metrics['left_out']['error_rows']} error rows, "
             f"{metrics['left_out']['without_true_label']} without a true label)"]
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and key not in _NOT_METRICS and not isinstance(value, bool):
            lines.append(f"  {key:<24} {value}")
    per = metrics.get("per_class")
    if per:
        lines.append(f"  {'label':<16} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
        for lab, m in per.items():
            lines.append(f"  {lab:<16} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['support']:>8}")
    return "\n".join(lines)


def _leaf_paths(model_uri: str, storage) -> dict[str, list[str]]:
    """For a hierarchical artifact: each leaf label -> its full path from the root."""
    from imgclf_ray.models.hierarchy import _nodes, node_cards, read_tree

    tree = read_tree(model_uri, storage)
    cards = node_cards(model_uri, tree, storage)
    paths = {}
    for path, node in _nodes(tree.root):
        for label in cards[path].labels:
            if label not in node.children:
                paths[label] = [*path, label]
    return paths


def evaluate_job(spec, run_id: Optional[str] = None, quiet: bool = False, verbose: bool = False,
                 redirect_ray: bool = False):
    """Run the job on its labelled archive and score the committed output against the true labels.

    Writes ``_evaluation.json`` into the run's folder (never into the user's model folder: a job
    touches only its own output); returns (RunResult, metrics).
    """
    import hashlib
    import json
    from datetime import datetime, timezone

    from imgclf_ray.errors import SpecError
    from imgclf_ray.io import sink
    from imgclf_ray.models.hierarchy import describe_artifact
    from imgclf_ray.runner.job import run_job

    if spec.source.labels is None:
        raise SpecError("source.labels: imgclf evaluate needs true labels (e.g. source.labels.kind: folder)")
    if spec.model is None:
        raise SpecError("model: imgclf evaluate needs a model to evaluate")
    result = run_job(spec, run_id, quiet=quiet, verbose=verbose, redirect_ray=redirect_ray)
    info = describe_artifact(spec.model.uri, spec.storage)
    columns = ["status", "label", "labels", "label_path", "class_scores", "true_label"]
    rows = sink.read_rows(result.output_uri, columns, spec.storage).to_pylist()
    threshold = None
    if info.task == "binary":
        from imgclf_ray.models.artifact import read_card

        card = read_card(spec.model.uri, spec.storage)
        positive = card.labels[1]
        threshold = ((spec.model.thresholds or {}).get(positive) or spec.model.threshold
                     or card.thresholds.get(positive, 0.5))
    metrics = evaluate_rows(rows, info.task, info.labels, spec.source.labels.separator, threshold,
                            _leaf_paths(spec.model.uri, spec.storage) if info.task == "hierarchical" else None,
                            folders=spec.source.labels.kind == "folder")
    if not metrics["images"]:
        from imgclf_ray.errors import UserError

        left = metrics["left_out"]
        hint = {"folder": "source.uri must be the folder that holds one folder per label",
                "table": "the labels table's source.labels.uri_column must name the images as the listing does "
                         "(full URIs, or paths relative to source.uri)",
                "reviewed": "no image of the run has been reviewed in source.labels.sink"}[spec.source.labels.kind]
        raise UserError(f"nothing was scored: of the run's {len(rows):,} images none is an ok row with a true label "
                        f"({left['error_rows']:,} error rows, {left['without_true_label']:,} without a true label); "
                        f"{hint} (run {result.run_id} was committed)")
    inputs = sink.read_rows(result.output_uri, ["uri", "etag"], spec.storage)
    data = sorted(set(zip(inputs.column("uri").to_pylist(), inputs.column("etag").to_pylist())))
    metrics.update({"run_id": result.run_id, "model_id": result.model_id, "data": spec.source.uri,
                    "data_digest": "sha256:" + hashlib.sha256(json.dumps(data).encode()).hexdigest(),
                    "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    sink.add_side_file(result.output_uri, EVALUATION_FILE, json.dumps(metrics, indent=2).encode(), spec.storage)
    return result, metrics


EVALUATION_FILE = "_evaluation.json"
_HEADLINE = ("accuracy", "micro_f1", "path_accuracy")


def evaluation_history(sink_uri: str, storage=None) -> list[dict[str, Any]]:
    """Every evaluation kept under a sink (one per committed evaluation run), oldest first."""
    from imgclf_ray.io import sink
    from imgclf_ray.spec import StorageSpec

    storage = storage or StorageSpec()
    found = []
    for run in sink.list_runs(sink_uri, storage):
        if {EVALUATION_FILE, sink.LEGACY_NAMES[EVALUATION_FILE]} & set(run.get("side_files", [])):
            found.append(sink.read_run_json(run["uri"], EVALUATION_FILE, storage) or {})
    return sorted(found, key=lambda m: (str(m.get("evaluated_at", "")), str(m.get("run_id", ""))))


def format_history(history: list[dict[str, Any]]) -> str:
    """One line per evaluation: when, run, model, data digest, the headline metric."""
    lines = [f"{'evaluated at (UTC)':<20} {'run id':<32} {'model':<16} {'data':<16} metric"]
    for m in history:
        name = next((k for k in _HEADLINE if k in m), None)
        value = f"{name} {m[name]:.4f}" if name else "-"
        lines.append(f"{str(m.get('evaluated_at', ''))[:19]:<20} {str(m.get('run_id', '')):<32} "
                     f"{str(m.get('model_id') or '-')[7:19]:<16} {str(m.get('data_digest') or '-')[7:19]:<16} {value}")
    return "\n".join(lines)
