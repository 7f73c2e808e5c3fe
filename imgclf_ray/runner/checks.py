"""The checks a run must pass before it commits, and user errors brought back out of Ray."""

from __future__ import annotations

import contextlib
from typing import Optional

from imgclf_ray import errors
from imgclf_ray.errors import RunFailed, SpecError, UserError
from imgclf_ray.io.schema import STATUS_ERROR, STATUS_SKIPPED
from imgclf_ray.messages import printable
from imgclf_ray.models.hierarchy import ArtifactInfo
from imgclf_ray.runner.result import RunResult
from imgclf_ray.spec import JobSpec


def check_device_decode(spec: JobSpec, model: Optional[ArtifactInfo]) -> None:
    """SpecError when ``decode.jpeg_on: predictor`` cannot apply: the predictor decodes only for a
    plain torch model whose conditioning torch reproduces, and the decode tasks keep every job
    that needs the pixels themselves (curation measures, a clusterer's embedding, containers)."""
    if spec.decode.jpeg_on != "predictor":
        return
    from imgclf_ray.registry import CURATION_CHECKS

    prep = model.preprocess if model else None
    why = ("there is no model" if model is None else
           "the model is not one torch network" if model.framework != "torch" or model.task == "hierarchical" else
           "the model reads hand-crafted features" if model.features is not None else
           "the model's preprocessing has conditioning ops" if prep.ops else
           "the model reads greyscale (preprocess.channels: 1)" if prep.channels == 1 else
           "torch has no lanczos resize" if prep.interpolation == "lanczos" else
           "source.container splits files in the decode tasks" if spec.source.container else
           "the clusterer's embedding is computed in the decode tasks" if spec.cluster is not None else
           "the curation measures are computed in the decode tasks"
           if any(CURATION_CHECKS.get(c).measured for c in spec.curate_checks()) else None)
    if why:
        raise SpecError(f"decode.jpeg_on: predictor cannot apply: {why}; use decode.jpeg_on: tasks")


@contextlib.contextmanager
def user_errors(metrics=None):
    """Re-raise a user's error (e.g. an artifact refused inside an actor, an object refused for
    permission inside a decode task) that Ray wrapped in its own exception types, so that it reaches
    the CLI as one clear message: from the exception chain when Ray kept it, else from the report
    the stage made to the run's ``metrics`` before raising it (Ray Data does not carry a UDF's
    exception type back)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only re-raised differently when it wraps a UserError
        for cause in errors.chain(exc):
            # (Ray's wrapper of a task's error is an instance of the error's class too, its text
            # Ray's traceback: a streaming task's — the decode stage's chunks — is raised as is)
            if isinstance(cause, UserError) and not _ray_made(cause):
                raise cause from None
        if isinstance(exc, UserError) and not _ray_made(exc):
            raise
        if metrics is not None:
            reported = metrics.first_user_error()
            kind = getattr(errors, reported[0], None) if reported else None
            if isinstance(kind, type) and issubclass(kind, UserError):
                raise kind(reported[1]) from None
        raise


def _ray_made(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Ray's exception types (RayTaskError made an instance of its cause's class)."""
    return any(kind.__module__.split(".")[0] == "ray" for kind in type(exc).__mro__)


def check_budget(spec: JobSpec, result: RunResult) -> None:
    """Skipped rows (files that are no image, with source.extensions: any) do not count."""
    budget = spec.run.max_error_rate
    errors = result.by_status.get(STATUS_ERROR, 0)
    images = result.rows - result.by_status.get(STATUS_SKIPPED, 0)
    if budget is not None and images and errors / images > budget:
        # Nothing is committed, the staged rows go: the message is where the user learns what failed.
        causes = list(result.errors_by_cause.items())[:3]  # most frequent first
        most = "; most often: " + ", ".join(f"{printable(cause, 200)} ({n})" for cause, n in causes) if causes else ""
        first = result.sample_errors[0] if result.sample_errors else None  # the first staged, not listed
        # A file's name is the user's, any characters: no newline or terminal escape passes into the line.
        first_line = f"; one of them: {printable(first['uri'], 300, names=True)}: {printable(first['error'], 300)}" if first else ""
        raise RunFailed(f"{errors} of {images} images failed ({errors / images:.1%}), over "
                        f"the error budget of {budget:.1%} (run.max_error_rate); nothing was committed"
                        f"{most}{first_line}")


def check_thresholds(spec: JobSpec, card: ArtifactInfo, card_thresholds: dict[str, float]) -> None:
    """Job thresholds must fit the model: refused here rather than inside every actor."""
    from imgclf_ray.models.heads import Head

    if spec.model.threshold is None and not spec.model.thresholds:
        return
    if card.scores == "uncalibrated":
        raise SpecError("model.threshold / model.thresholds: this model's scores are uncalibrated (the "
                        "softmax of its decision_function); thresholds need probabilities: train it "
                        "with estimator.calibrate: sigmoid")
    if card.task == "hierarchical":
        raise SpecError("model.threshold / model.thresholds: a hierarchical model uses its nodes' own thresholds")
    try:
        Head(card.task, card.labels, card_thresholds, spec.model.threshold, spec.model.thresholds)
    except ValueError as exc:
        raise SpecError(f"model.thresholds: {exc}") from None


def label_issue_labels(spec: JobSpec, card: Optional[ArtifactInfo], checks: tuple[str, ...]) -> Optional[list[str]]:
    if "label_issue" not in checks:
        return None
    if card is None or card.task not in ("multiclass", "binary"):
        raise SpecError("curate.checks: label_issue needs a multiclass or binary model (its "
                        "class_scores); this one is " + (card.task if card else "absent"))
    if card.scores == "uncalibrated":
        raise SpecError("curate.checks: label_issue needs probabilities; this model's scores are "
                        "uncalibrated (train it with estimator.calibrate: sigmoid)")
    return list(card.labels)
