"""What the type checker verifies (tests/test_layers.py runs mypy on this file): both executors
are ``runner.engine.Engine``s. Never imported at run time."""

from __future__ import annotations

from imgclf_ray.runner.build import RayEngine
from imgclf_ray.runner.engine import Engine
from imgclf_ray.runner.local import LocalEngine


def engines(ray_engine: RayEngine, local_engine: LocalEngine) -> list[Engine]:
    return [ray_engine, local_engine]
