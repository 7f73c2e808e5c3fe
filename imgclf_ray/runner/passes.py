"""The passes around the main one: the clusterer's fit sample, the archive-wide curation pass,
and what is read back from the staged output."""

from __future__ import annotations

import logging
import json
import time
from typing import Any, Optional

import numpy as np

from imgclf_ray.errors import RunFailed, SpecError
from imgclf_ray.io.schema import STATUS_OK
from imgclf_ray.io.storage import join
from imgclf_ray.messages import describe
from imgclf_ray.planner import Plan
from imgclf_ray.progress import Mode, Progress
from imgclf_ray.runner.build import embedding_of
from imgclf_ray.runner.result import RunResult
from imgclf_ray.spec import JobSpec

log = logging.getLogger(__name__)


def cluster_artifact_uri(spec: JobSpec) -> str:
    return spec.cluster.artifact or join(spec.sink.uri, "_clusterers", spec.name)


def _embedded_batches(engine, spec: JobSpec, manifest, plan: Plan):
    """Raw embedding features of the manifest's decodable rows, batch by batch (a pass of the engine's)."""
    from imgclf_ray.stages import LoadConfig, LoadStage

    stage = LoadStage(LoadConfig(spec.storage, spec.decode, None, embed=embedding_of(spec), source=spec.source))
    from imgclf_ray.runner.build import files_per_call

    for batch in engine.load_batches(manifest, plan, stage, ["status", "cluster_features"], files_per_call(spec, plan)):
        yield np.asarray(batch["cluster_features"])[np.asarray(batch["status"]) == STATUS_OK]


def prepare_clusterer(engine, spec: JobSpec, manifest, plan: Plan, progress: Mode = "off"):
    """The job's clusterer: the saved artifact when there is one (so ids stay stable from run to
    run), else fitted now on a seeded sample (or streamed over the archive) and saved."""
    from imgclf_ray import clustering

    if spec.cluster is None:
        return None
    c, uri = spec.cluster, cluster_artifact_uri(spec)
    if not c.refit and clustering.exists(uri, spec.storage):
        clusterer = clustering.load(uri, spec.storage)
        if not clusterer.card.matches(c):
            raise SpecError(f"cluster: the clusterer at {uri} was fitted with other settings "
                            f"({clusterer.card.algorithm} {clusterer.card.params}, features "
                            f"{clusterer.card.features.name}, pca {clusterer.card.pca}); set "
                            f"cluster.refit: true to replace it, or point cluster.artifact elsewhere")
        log.info("cluster: reusing %s (%s)", uri, clusterer.clusterer_id)
        return clusterer
    rng = np.random.default_rng(c.seed)
    n = manifest.num_rows
    sample = manifest.take(np.sort(rng.choice(n, min(n, c.sample), replace=False)))
    Progress.note(f"cluster: fitting {c.algorithm} on a sample of {sample.num_rows} images", progress)
    batches = list(_embedded_batches(engine, spec, sample, plan))
    features = np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)
    stream = _embedded_batches(engine, spec, manifest, plan) if c.fit == "stream" else None
    try:
        clusterer = clustering.fit(c, features, stream)
    except ValueError as exc:
        raise RunFailed(f"cluster: cannot fit {c.algorithm}: {describe(exc)}") from None
    return clustering.save(uri, clusterer, spec.storage)


def scan_columns(run) -> tuple[str, ...]:
    """What the writer keeps of the ok rows for the run's archive-wide checks (none: nothing)."""
    from imgclf_ray.curation import archive

    return archive.scan_columns(archive.archive_checks(run.checks), run.label_issue_labels)


def archive_checks(tasks, spec: JobSpec, staged: list[str], inputs: list[str], run, metrics
                   ) -> tuple[dict[str, Any], Optional[list]]:
    """The archive-wide curation pass over the staged files, as the engine's ``tasks`` (Ray tasks,
    or calls in this process): a scan per scan-inputs file (``inputs``: what the writer kept of
    the ok rows, so no staged file is read before its rewrite), a hash shuffle into one partition per CPU, a
    reduce per partition and shuffled check, each check's fact merged here, a rewrite per file,
    which also makes the read-back's scan of the rows it wrote (``runner.readback.Scan``).
    Returns the curation summary and those scans (None without an archive-wide check: the
    read-back reads the files itself)."""
    from imgclf_ray.curation import archive
    from imgclf_ray.runner.readback import scan_of

    checks = archive.archive_checks(run.checks)
    if not checks:
        return {}, None
    started = time.perf_counter()
    p = tasks.cpus  # partitions of the hash shuffle
    job = archive.Pass(spec.storage, checks, spec.curate, run.label_issue_labels, p)
    shuffled = job.shuffled()
    scans = [tasks.submit(archive.scan, uri, job, num_returns=1 + len(shuffled) * p) for uri in inputs]
    if not shuffled:  # one return: the (stats,) tuple itself
        stats = [t[0] for t in tasks.get(scans)]
    else:
        stats = tasks.get([s[0] for s in scans])
    reduced = {name: [tasks.submit(archive.reduce, name, job, *[s[1 + k * p + i] for s in scans]) for i in range(p)]
               for k, name in enumerate(shuffled)}
    facts = archive.merge(job, stats, {n: tasks.get(r) for n, r in reduced.items()})
    scanned = sum(s[archive.ROWS] for s in stats)
    facts_ref, then = tasks.put(facts), scan_of(spec, p)
    rewritten = [tasks.submit(archive.rewrite, uri, i, job, facts_ref, then, num_returns=2 + p)
                 for i, uri in enumerate(staged)]
    tasks.get([r[0] for r in rewritten])  # written (its rows are scanned: the read-back waits on the rest)
    metrics.add("curate_archive", len(staged), time.perf_counter() - started)
    return {**archive.summarise(job, facts), "scanned_rows": scanned}, rewritten


def cluster_and_flag_summary(spec: JobSpec, back, result: RunResult, clusterer) -> dict[str, bytes]:
    """Fills the run's cluster and flag counts from its staged rows read back (``back``: a
    ``runner.readback.Readback``); returns _clusters.json (sizes, exemplars) when the job clusters."""
    if spec.cluster is None and spec.curate is None:
        return {}
    result.curation_flags = {c: back.summary.flags.get(c, 0) for c in spec.curate_checks()}
    if clusterer is None:
        return {}
    clusters = back.cluster_doc()
    result.by_cluster = {str(c["cluster"]): c["size"] for c in clusters}
    result.clusterer = {"clusterer_id": clusterer.clusterer_id, "artifact": cluster_artifact_uri(spec),
                        "algorithm": clusterer.card.algorithm, "n_clusters": clusterer.card.n_clusters,
                        "fitted_rows": clusterer.card.fitted_rows, "fitted_at": clusterer.card.fitted_at}
    doc = {**result.clusterer, "clusters": clusters}
    return {"_clusters.json": json.dumps(doc, indent=2).encode()}
