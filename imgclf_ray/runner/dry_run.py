"""``imgclf run --dry-run``: list, select, plan, print counts and the plan; decode nothing, write
nothing, take no lock. Listing and selection are the run's own (``runner.job.select``): Ray tasks
for an inventory (the driver holds counts and object references, never the manifest), this process
otherwise; a local run's dry run starts no Ray."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from imgclf_ray.spec import JobSpec


@dataclass
class DryRun:
    """What a run would do."""

    run_id: str
    source: str
    files: int
    skipped: dict[str, int]
    listing_tasks: int
    listing_seconds: float
    selection: Optional[dict[str, int]]  # incremental jobs: new, changed, model_changed, unchanged
    to_process: int
    model: Optional[dict[str, Any]]
    plan: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, str] = field(default_factory=dict)  # the network's runtime the run would take: name, why

    def summary(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"dry run {self.run_id}: nothing decoded, nothing written",
                 f"  listing : {self.files:,} file{'s' if self.files != 1 else ''} from {self.source} ({self.listing_tasks} listing "
                 f"task{'s' if self.listing_tasks != 1 else ''}, {self.listing_seconds:.1f} s)"]
        if self.skipped:
            lines.append("  skipped : " + ", ".join(f"{n:,} ({why})" for why, n in sorted(self.skipped.items())))
        if self.selection is not None:
            s = self.selection
            lines.append(f"  select  : {s['new']:,} new, {s['changed']:,} changed, {s['model_changed']:,} for a "
                         f"new model, {s['unchanged']:,} already processed")
        lines.append(f"  process : {self.to_process:,} file{'s' if self.to_process != 1 else ''}")
        if self.model:
            lines.append(f"  model   : {self.model['framework']} {self.model['task']}, "
                         f"{self.model['labels']} labels, {self.model['model_id']}")
            if self.model.get("version"):
                v = self.model["version"]
                lines.append(f"  version : {v['uri']} = {v['name']} version {v['version']} ({v['source']})")
        if self.runtime:
            lines.append(f"  runtime : {self.runtime['name']} ({self.runtime['why']})")
        p = self.plan
        lines.append(f"  executor: {p.get('executor')} ({p.get('executor_why')})")
        if p.get("executor") == "local":
            lines.append(f"  plan    : run.executor local: the model in this process ({p['device']}, batch "
                         f"{p['batch_size']}), {p['decode_workers']} decode worker process{'es' * (p['decode_workers'] != 1)} of "
                         f"{p['decode_batch_size']} files each (this machine: {p['cluster_cpus']:g} CPUs)")
            return "\n".join(lines)
        lines.append(f"  plan    : {p['actors']} predictor actor{'s' * (p['actors'] != 1)} x {p['cpus_per_actor']} CPU / "
                     f"{p['gpus_per_actor']} GPU on {p['device']}, batch {p['batch_size']}; decode tasks of "
                     f"{p['decode_batch_size']} files x {p['decode_cpus']} CPU (cluster: {p['cluster_cpus']:g} "
                     f"CPUs, {p['cluster_gpus']:g} GPUs)")
        return "\n".join(lines)


def dry_run(spec: JobSpec, run_id: str, verbose: bool = False) -> DryRun:
    """List and select as a run would (incremental jobs: against the committed state, the run id's
    own record not counting), make the plan, and report; refuses what a run would refuse first."""
    from imgclf_ray.runner.job import engine_for, select
    from imgclf_ray.runner.plan import make_plan, refuse_before_work, registered_model, with_runtime
    from imgclf_ray.runner.ray_setup import ensure_ray

    from imgclf_ray.runner.executor import choose

    spec, why = choose(spec)
    spec, registered = registered_model(spec)
    info = refuse_before_work(spec)
    if spec.source.inventory or spec.run.executor == "ray":  # listing tasks; the cluster's resources
        ensure_ray(spec.run.ray_address, verbose, quiet=not verbose)
    started = time.perf_counter()
    selected = select(spec, info.model_id if info else None, "off", run_id)  # exactly as the run selects
    seconds = time.perf_counter() - started
    run = make_plan(spec, engine_for(spec, info).resources(), info)  # run.executor: local plans for this machine
    run, runtime = with_runtime(run, selected.rows.num_rows, export=False)
    plan = {**asdict(run.resources), "device": run.resources.device, "executor": spec.run.executor,
            "executor_why": why}
    if spec.run.executor == "local":
        from imgclf_ray.runner.local import decode_workers

        plan["decode_workers"] = decode_workers(run.resources, info is None or info.framework == "sklearn")
    model = None if info is None else {"framework": info.framework, "task": info.task,
                                       "labels": len(info.labels or []), "model_id": info.model_id,
                                       **({"version": registered} if registered else {})}
    return DryRun(run_id, spec.source.inventory or spec.source.uri, selected.listed, selected.skipped,
                  selected.listing_tasks, round(seconds, 2), selected.why, selected.rows.num_rows, model, plan, runtime)
