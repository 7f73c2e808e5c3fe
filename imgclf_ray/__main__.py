"""``python -m imgclf_ray``: the imgclf command (what a Ray job's entry point runs)."""

try:
    from imgclf_ray.cli import main
except ImportError as exc:  # a Python without the project's dependencies (a cluster node's, often)
    import sys

    from imgclf_ray.errors import describe_failure

    print(f"error: {describe_failure(exc)}", file=sys.stderr)
    sys.exit(1)

main(prog_name="imgclf")
