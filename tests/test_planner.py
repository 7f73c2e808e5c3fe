from __future__ import annotations

import pytest

from imgclf_ray.errors import SpecError
from imgclf_ray.planner import plan_resources
from imgclf_ray.spec import ResourcesSpec


def test_two_cpu_laptop_leaves_a_cpu_for_decoding():
    plan = plan_resources({"CPU": 2.0})
    assert plan.actors == 1 and plan.cpus_per_actor == 1 and plan.gpus_per_actor == 0
    assert plan.actors * plan.cpus_per_actor + plan.decode_cpus <= 2
    assert plan.torch_threads == 2  # the decode CPU is mostly idle: torch may use it too


def test_one_cpu_machine_shares_it():
    plan = plan_resources({"CPU": 1.0})
    assert plan.actors * plan.cpus_per_actor + plan.decode_cpus <= 1
    assert plan.torch_threads == 1


def test_big_cpu_node_keeps_a_quarter_for_decoding():
    plan = plan_resources({"CPU": 16.0})
    assert plan.device == "cpu" and plan.cpus_per_actor == 2 and plan.actors == 6
    assert plan.torch_threads == 2


def test_gpus_get_one_actor_each():
    plan = plan_resources({"CPU": 16.0, "GPU": 4.0})
    assert plan.device == "cuda" and plan.actors == 4 and plan.gpus_per_actor == 1
    assert plan_resources({"CPU": 16.0, "GPU": 4.0}, device="cpu").device == "cpu"
    assert plan_resources({"CPU": 16.0, "GPU": 4.0}, ResourcesSpec(gpus_per_actor=0)).device == "cpu"


def test_a_gpu_predictor_takes_two_batches_at_once_and_the_local_executor_one_per_gpu():
    """Host work of one batch beside the other's forward pass on a GPU; a CPU's forward pass
    already has every core. The local executor runs a predictor on each GPU."""
    gpu = plan_resources({"CPU": 16.0, "GPU": 4.0})
    assert gpu.calls_per_actor == 2 and gpu.devices() == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    cpu = plan_resources({"CPU": 16.0, "GPU": 4.0}, device="cpu")
    assert cpu.calls_per_actor == 1 and cpu.devices() == ["cpu"]
    assert plan_resources({"CPU": 8.0}, light=True).calls_per_actor == 1
    assert plan_resources({"CPU": 8.0}, ResourcesSpec(calls_per_actor=3)).calls_per_actor == 3
    assert plan_resources({"CPU": 8.0, "GPU": 1.0}, ResourcesSpec(calls_per_actor=1)).calls_per_actor == 1


def test_overrides_and_impossible_requests():
    plan = plan_resources({"CPU": 8.0}, ResourcesSpec(actors=3, batch_size=7, cpus_per_actor=2))
    assert (plan.actors, plan.batch_size, plan.cpus_per_actor) == (3, 7, 2)
    with pytest.raises(SpecError, match="leave no CPU for reading"):
        plan_resources({"CPU": 2.0}, ResourcesSpec(actors=2))
    with pytest.raises(SpecError, match="no GPUs"):
        plan_resources({"CPU": 2.0}, device="cuda")


def test_light_predictors_leave_the_cores_to_decoding():
    """scikit-learn over features (or no model): decoding is the work, so it gets the CPUs."""
    plan = plan_resources({"CPU": 2.0}, light=True)
    assert plan.actors == 1 and plan.cpus_per_actor == 0.25 and plan.decode_cpus == 0.5
    assert int((2.0 - plan.actors * plan.cpus_per_actor) // plan.decode_cpus) >= 3  # decode tasks at once
    big = plan_resources({"CPU": 32.0}, light=True)
    assert big.actors == 4 and big.device == "cpu"
    with pytest.raises(SpecError, match="leave no CPU"):
        plan_resources({"CPU": 2.0}, ResourcesSpec(actors=8, cpus_per_actor=1), light=True)


def test_a_declared_gpu_target_plans_gpu_actors_before_the_gpu_nodes_join():
    """cluster/kuberay's GPU group starts at zero replicas: cluster_resources() shows no GPU when a
    run plans. With resources.gpus the plan is for that many GPU actors, all asked for at once (a
    fixed pool whose pending actors start the GPU nodes: tests/test_autoscaling.py)."""
    plan = plan_resources({"CPU": 4.0}, ResourcesSpec(gpus=2))
    assert (plan.device, plan.actors, plan.gpus_per_actor) == ("cuda", 2, 1)
    assert plan.awaits_gpus and not plan_resources({"CPU": 16.0, "GPU": 4.0}).awaits_gpus
    assert plan_resources({"CPU": 4.0}, ResourcesSpec(gpus=1)).awaits_gpus  # one GPU actor, none there yet
    plan = plan_resources({"CPU": 4.0, "GPU": 1.0}, ResourcesSpec(gpus=4))
    assert (plan.actors, plan.awaits_gpus) == (4, True)
    plan = plan_resources({"CPU": 16.0, "GPU": 4.0}, ResourcesSpec(gpus=2))  # more present than declared
    assert (plan.actors, plan.awaits_gpus) == (4, False)
    assert plan_resources({"CPU": 4.0}, ResourcesSpec(gpus=2), device="cpu").device == "cpu"
    assert plan_resources({"CPU": 2.0}, ResourcesSpec(gpus=2), device="cuda").actors == 2  # no "no GPUs"
    # The actors that start now share this cluster's CPUs with decoding (those to come bring theirs).
    with pytest.raises(SpecError, match="2 actors x 4.0 CPUs leave no CPU"):
        plan_resources({"CPU": 8.0, "GPU": 2.0}, ResourcesSpec(gpus=4, cpus_per_actor=4))
