"""The only code that assembles Ray Data calls: manifest -> read/decode tasks -> predictor actors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from imgclf_ray.io import sink
from imgclf_ray.planner import Plan
from imgclf_ray.registry import CURATION_CHECKS
from imgclf_ray.spec import JobSpec

if TYPE_CHECKING:
    from imgclf_ray.runner.plan import RunPlan

# Checks that need the per-image measures (scores and hashes) of the decode tasks.
MEASURED_CHECKS = {n for n in CURATION_CHECKS.names() if CURATION_CHECKS.get(n).measured}


def embedding_of(spec: JobSpec):
    """(conditioning, feature spec) of the job's clustering embedding, or None."""
    from imgclf_ray.models.artifact import PreprocessCard

    if spec.cluster is None:
        return None
    return PreprocessCard.model_validate(spec.cluster.preprocess.model_dump()).conditioning(), spec.cluster.features


def load_dataset(spec: JobSpec, manifest: pa.Table, plan: Plan, stage):
    import ray

    # A container file (image table, shard, video) is many images already: one file per call
    # keeps a batch's rows, and so the task's memory, bounded by one file's images.
    files = 1 if spec.source.container else plan.decode_batch_size
    ds = ray.data.from_arrow(manifest, override_num_blocks=max(1, -(-manifest.num_rows // files)))
    return ds.map_batches(
        stage,
        batch_size=files,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        # The memory ask also keeps decoding in tasks of its own, running beside the predictor
        # actors: Ray fuses maps with equal resource asks, which would serialise the two.
        memory=plan.decode_memory,
    )


def build_dataset(run: "RunPlan", manifest: pa.Table, run_id: str, reporter=None, clusterer=None, rules=None):
    """The Ray Data plan for one run (lazy: nothing executes until it is written)."""
    from ray.data import ActorPoolStrategy

    from imgclf_ray.stages import LoadStage, PredictStage

    spec, card, plan = run.spec, run.model, run.resources
    load = LoadStage(spec.storage, spec.decode, card.preprocess.conditioning() if card else None, reporter,
                     card.features if card else None, measure=bool(set(run.checks) & MEASURED_CHECKS),
                     embed=embedding_of(spec), clusterer=clusterer,
                     keep_embedding=bool(spec.cluster and spec.cluster.embedding), source=spec.source)
    ds = load_dataset(spec, manifest, plan, load)
    model = spec.model
    return ds.map_batches(
        PredictStage,
        fn_constructor_kwargs={
            "model_uri": model.uri if model else None, "storage": spec.storage,
            "topk": model.topk if model else 1, "run_id": run_id, "device": plan.device,
            "threads": plan.torch_threads, "reporter": reporter,
            "threshold": model.threshold if model else None,
            "thresholds": model.thresholds if model else None, "rules": rules,
            "precision": model.precision if model else "fp32",
            "trusted": model.trusted if model else False,
            "runtime": model.runtime if model else "torch",
        },
        batch_size=plan.batch_size,
        batch_format="numpy",
        # Full size at the start, free to shrink: after a node is lost a fixed pool insists on
        # every actor, even when the smaller cluster then has no CPU left for the decode tasks;
        # this one can give idle actors back (tests/test_node_loss.py).
        compute=ActorPoolStrategy(min_size=1, max_size=plan.actors, initial_size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )


class StagedNames:
    """Names staged files so that no ``*.parquet`` glob matches them (Ray's FilenameProvider
    interface: Ray calls ``get_filename_for_task`` and expands ``{i}`` per file)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return sink.staged_filename(write_uuid, task_index)
