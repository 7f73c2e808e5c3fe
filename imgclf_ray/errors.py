"""Errors a user can act on. The CLI prints them as one message each and no traceback."""

from __future__ import annotations

from typing import Optional


class UserError(Exception):
    """A problem with what the user gave us (spec, archive, model), not a bug in imgclf-ray."""

    exit_code = 1


class SpecError(UserError):
    """A job spec that cannot be run: refused before Ray starts."""

    exit_code = 2


class ArtifactError(UserError):
    """A model artifact that is missing, malformed, or fails its integrity or safety check."""


class SourceError(UserError):
    """The archive cannot be listed (missing bucket or folder, no permission, nothing matched)."""


class NothingThere(SourceError):
    """The archive's folder or prefix does not exist, or holds nothing but folders (not a glob)."""


class AccessDenied(UserError):
    """An object the listing showed cannot be read for permission: the credentials or policies
    are wrong for the whole run, so it stops and commits nothing (not one error row per image)."""


class RunFailed(UserError):
    """The run finished its work but must not be committed (error budget exceeded, rows lost)."""


class DeviceFault(RunFailed):
    """The accelerator failed (out of memory for one image, a CUDA/cuDNN/cuBLAS error, a lost
    device): the run stops and commits nothing, never error rows for the images it held."""


# Out of memory in disguise: cuBLAS/cuDNN failing to allocate (or a batch too large for a kernel).
_OOM_MARKS = ("Failed to allocate memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
              "CUBLAS_STATUS_NOT_INITIALIZED", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_INTERNAL_ERROR",
              "CUDNN_STATUS_NOT_SUPPORTED")
_FATAL_MARKS = ("CUDA error", "CUDA driver", "CUDNN_STATUS", "CUBLAS_STATUS", "cudaError", "device-side assert",
                "NCCL error", "CUDA failure", "no CUDA-capable device", "GPU is lost", "CUDNN_BACKEND")


def device_fault(exc: BaseException) -> Optional[str]:
    """"oom" for an out-of-memory error (torch.OutOfMemoryError, ONNX Runtime's failed
    allocation, a host allocator's), "fatal" for another error of the device or its libraries
    (torch.AcceleratorError, CUDA, cuDNN, cuBLAS, NCCL), None for an error of the rows."""
    name, text = type(exc).__name__, str(exc)
    if name == "OutOfMemoryError" or "out of memory" in text.lower() or any(mark in text for mark in _OOM_MARKS):
        return "oom"
    if name == "AcceleratorError" or any(mark in text for mark in _FATAL_MARKS):
        return "fatal"
    return None



class NothingToDo(UserError):
    """Not an error: the run had nothing to do (an incremental run with nothing new, a dated run
    already committed). The CLI says so and exits 0."""

    exit_code = 0


def chain(exc: BaseException):
    """An exception and its causes, Ray's wrapped ones (``.cause``) included; the exception it was
    raised while handling too, unless ``raise ... from None`` set it aside (as tracebacks do)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = getattr(exc, "cause", None)
        exc = ((cause if isinstance(cause, BaseException) else None) or exc.__cause__
               or (None if exc.__suppress_context__ else exc.__context__))


def describe_failure(exc: BaseException) -> UserError:
    """A failure that is not a UserError, as one message with its cause and what to do (the CLI's
    last line of defence: unreachable storage, files where folders should be, corrupt side files,
    a worker killed for memory)."""
    import json

    for e in chain(exc):
        kind = type(e).__name__
        module = type(e).__module__ or ""
        if module.startswith("ray") and any(k in kind or k in _first_line(e) for k in
                                            ("OutOfMemoryError", "WorkerCrashedError", "ObjectLostError")):
            return RunFailed("a Ray worker was killed for memory or crashed, so the run stopped and nothing "
                             "was committed: lower resources.decode_batch_size / resources.batch_size or "
                             "decode.max_decode_bytes, or give the machine more memory; rerun the same "
                             "run id to resume")
        if module.startswith(("botocore", "aiobotocore")) or kind in ("NoCredentialsError", "ClientError"):
            endpoint = (getattr(e, "kwargs", None) or {}).get("endpoint_url")
            if isinstance(endpoint, str):  # the configuration's, not a file's: its scheme, host and port
                from urllib.parse import urlsplit

                parts = urlsplit(endpoint)
                at = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
                return UserError(f"object storage could not be reached at {at} ({kind}): check "
                                 "storage.endpoint_url / AWS_ENDPOINT_URL and that the endpoint is up")
            return UserError(f"object storage refused or could not be reached ({kind}: {_first_line(e)}): check "
                             "storage.endpoint_url / AWS_ENDPOINT_URL, the credentials in the environment "
                             "(AWS_ACCESS_KEY_ID ...) or storage.profile, and the bucket name")
        if isinstance(e, ImportError):
            import sys

            missing = e.name or _first_line(e)
            return UserError(f"this Python ({sys.executable}) cannot import {missing}: imgclf-ray's dependencies "
                             "are not installed here (on a cluster: install imgclf-ray with the job's extras on "
                             "every node, or build the image from infra/Dockerfile; locally: make install)")
        if isinstance(e, json.JSONDecodeError):
            return UserError(f"a JSON file is corrupt ({e.msg} at line {e.lineno}); if it is a run's "
                             "_manifest.json, rerun that run id to rewrite it")
        if isinstance(e, NotADirectoryError):
            return UserError(f"{e.filename or _first_line(e)}: a file stands where a folder is needed "
                             "(check sink.uri / the path given)")
        if isinstance(e, FileNotFoundError):
            return UserError(f"{e.filename or _first_line(e)}: no such file or folder")
        if isinstance(e, PermissionError):
            return UserError(f"{e.filename or _first_line(e)}: permission denied")
        if isinstance(e, (ConnectionError, TimeoutError)):
            import os

            # A Ray cluster with token authentication refuses a driver without the token, and Ray
            # says only that it could not connect (to its GCS).
            ray_side = "gcs" in str(e).lower() or "ray" in str(e).lower() or type(e).__module__.startswith("ray")
            token = "" if not ray_side or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") else (
                "; if the Ray cluster uses token authentication, this environment needs RAY_AUTH_MODE=token "
                "and its token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
            return UserError(f"could not connect ({kind}: {_first_line(e)}): check the address or endpoint{token}")
    if isinstance(exc, OSError):
        return UserError(f"{kind_of(exc)}: {_first_line(exc)}")
    if type(exc).__module__.startswith("ray.train") and "worker" in kind_of(exc).lower():
        from imgclf_ray.messages import scrub

        # Ray Train's error text ends with the worker's own exception; its first line says only "failed".
        root = next((line for line in reversed(str(exc).splitlines()) if line.strip()), "")
        return UserError(f"CNN training failed in a Ray Train worker ({scrub(root.strip(), cap=300)}); the "
                         "worker's traceback is above and in Ray's session logs (<ray temp folder>/session_latest/logs)")
    return UserError(f"unexpected {kind_of(exc)}: {_first_line(exc)} (set IMGCLF_DEBUG=1 for the traceback "
                     "and report it)")


def kind_of(exc: BaseException) -> str:
    return type(exc).__name__


def _first_line(exc: BaseException) -> str:
    from imgclf_ray.messages import scrub

    return scrub(str(exc).strip() or type(exc).__name__, cap=300)
