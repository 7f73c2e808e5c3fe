"""imgclf-ray: batch image classification on Ray. The Python API (``imgclf_ray.api``):
``run``, ``read_run``, ``read_run_dataset``, ``run_files``, ``read_labels``, ``load_job``; imported on
first use."""

__all__ = ["run", "read_run", "read_run_dataset", "run_files", "read_labels", "load_job"]


def __getattr__(name: str):
    if name in __all__:
        from imgclf_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgclf_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The API's names too (tab completion), without importing it."""
    return sorted(set(globals()) | set(__all__))
