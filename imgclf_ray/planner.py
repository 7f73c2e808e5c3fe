"""Cluster resources -> actor pool and batch sizes.

The rule that matters on small machines: the predictor pool never takes every CPU. Ray Data's read
and decode tasks need CPUs too; with a pool holding them all (two 1-CPU actors on a 2-CPU laptop),
no decode task is ever scheduled and the pipeline waits forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from imgclf_ray.errors import SpecError
from imgclf_ray.spec import ResourcesSpec


# Working memory a read+decode task asks for: a batch of model inputs plus one full-size decoded
# image (a 24-megapixel RGB photo is 72 MB).
DECODE_TASK_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How the run uses the cluster (all plain numbers, logged and recorded in the manifest)."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int
    decode_batch_size: int
    decode_cpus: float
    decode_memory: int
    torch_threads: int
    cluster_cpus: float
    cluster_gpus: float
    present_gpus: float = -1.0  # the GPUs the cluster had when planned (-1: as cluster_gpus)
    calls_per_actor: int = 1  # batches a predictor works on at once (threads): 2 on GPUs, host work beside the forward

    def devices(self) -> list[str]:
        """The local executor's predictors, one per device: each GPU (cuda:i), or this CPU."""
        if not self.gpus_per_actor:
            return ["cpu"]
        present = self.cluster_gpus if self.present_gpus < 0 else self.present_gpus
        return [f"cuda:{i}" for i in range(max(1, min(int(present), self.actors)))]

    @property
    def awaits_gpus(self) -> bool:
        """Planned for more GPUs than the cluster had (resources.gpus): the pool (fixed, all its
        actors asked for at once) waits for nodes."""
        return self.gpus_per_actor > 0 and 0 <= self.present_gpus < self.cluster_gpus

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"


def plan_resources(cluster: Mapping[str, float], overrides: ResourcesSpec = ResourcesSpec(),
                   device: str = "auto", light: bool = False) -> Plan:
    """Size the predictor pool and batches from ``ray.cluster_resources()``.

    ``light``: the predictor is cheap next to decoding (a scikit-learn estimator over features,
    or no model at all): it gets a quarter CPU per actor, one actor per 8 CPUs, and the decode
    tasks, which then do nearly all the work, ask for half a CPU each so that they fill the cores.
    """
    cpus = float(cluster.get("CPU", 0))
    present = float(cluster.get("GPU", 0))
    # A declared target (resources.gpus): planned for now, the autoscaler asked for it (the runner).
    gpus = max(present, float(overrides.gpus or 0)) if device != "cpu" else present
    if cpus <= 0:
        raise SpecError("the Ray cluster reports no CPUs; cannot read or decode images")
    if device == "cuda" and gpus == 0 and overrides.gpus_per_actor != 0:
        raise SpecError("model.device is 'cuda' but the Ray cluster has no GPUs")
    use_gpu = device != "cpu" and gpus > 0 and overrides.gpus_per_actor != 0
    # Each read+decode task asks for one CPU (half of a 1-CPU machine); the pool leaves them at
    # least a quarter of the cluster, and always one task's worth.
    decode_cpus = min(1.0, cpus / 2)
    reserve = max(decode_cpus, math.floor(cpus / 4))

    if light and not use_gpu:
        cpus_per_actor = overrides.cpus_per_actor or 0.25
        actors = overrides.actors or max(1, int(cpus // 8))
        decode = min(0.5, cpus / 4)
        if actors * cpus_per_actor > cpus - decode + 1e-9:
            raise SpecError(f"resources: {actors} actors x {cpus_per_actor} CPUs leave no CPU for "
                            f"reading and decoding on a cluster of {cpus:g} CPUs")
        return Plan(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=0.0,
                    batch_size=overrides.batch_size or 256,
                    # Cheap rows: bigger blocks amortise the per-task cost of Ray (~10 ms a task).
                    decode_batch_size=overrides.decode_batch_size or 256, decode_cpus=decode,
                    decode_memory=DECODE_TASK_MEMORY, torch_threads=1, cluster_cpus=cpus, cluster_gpus=gpus,
                    calls_per_actor=overrides.calls_per_actor or 1)
    if use_gpu:
        gpus_per_actor = overrides.gpus_per_actor or 1.0
        cpus_per_actor = overrides.cpus_per_actor or 1.0
        by_gpu = int(gpus // gpus_per_actor)
        # A GPU node brings its own CPUs: with a target beyond the GPUs present, the CPUs do not
        # bound the actors (those nodes are not there to count yet).
        by_cpu = int((cpus - reserve) // cpus_per_actor) if gpus <= present else by_gpu
        actors = overrides.actors or max(1, min(by_gpu, by_cpu))
        batch = overrides.batch_size or 128
    else:
        gpus_per_actor = 0.0
        cpus_per_actor = overrides.cpus_per_actor or min(cpus - reserve, 1.0 if cpus <= 4 else 2.0)
        actors = overrides.actors or max(1, int((cpus - reserve) // cpus_per_actor))
        batch = overrides.batch_size or 32
    now = max(1, min(actors, int(present // gpus_per_actor))) if use_gpu and gpus > present else actors
    # The actors that start now land on the nodes there are now (those to come bring their own CPUs).
    if now * cpus_per_actor > cpus - decode_cpus + 1e-9:
        raise SpecError(f"resources: {now} actors x {cpus_per_actor} CPUs leave no CPU for "
                        f"reading and decoding on a cluster of {cpus:g} CPUs")
    return Plan(
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        batch_size=batch,
        decode_batch_size=overrides.decode_batch_size or 32,
        decode_cpus=decode_cpus,
        decode_memory=DECODE_TASK_MEMORY,
        # CPU actors may also use the cores the decode tasks leave idle: decoding is several
        # times cheaper per image than a CNN's forward pass, so its CPUs are mostly free.
        torch_threads=max(1, int(round(cpus_per_actor)),
                          0 if use_gpu else int(cpus // actors)),
        cluster_cpus=cpus,
        cluster_gpus=gpus,
        present_gpus=present,
        calls_per_actor=overrides.calls_per_actor or (2 if use_gpu else 1),
    )
