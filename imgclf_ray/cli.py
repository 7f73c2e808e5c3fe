"""``imgclf``: validate and run image-classification jobs.

Heavy modules (ray, torch) are imported inside the commands that need them, so ``imgclf --help`` and
``imgclf validate`` start in well under a second.
"""

from __future__ import annotations

import sys
from typing import Optional

import click

from imgclf_ray.errors import UserError
from imgclf_ray.spec import JobSpec, load_spec

_SET_HELP = "Override a spec value: --set source.uri=s3://bucket/prefix (repeatable; YAML values)."


def _fail(exc: UserError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _load(job: str, overrides: tuple[str, ...]) -> JobSpec:
    try:
        return load_spec(job, list(overrides))
    except UserError as exc:
        _fail(exc)
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgclf-ray")
def main() -> None:
    """Batch image classification on Ray: archive in, labelled Parquet out."""


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def validate(job: str, overrides: tuple[str, ...]) -> None:
    """Check a job spec without starting Ray (exit 2 on any problem)."""
    spec = _load(job, overrides)
    click.echo(f"{job}: ok (job {spec.name!r}: {spec.source.uri} -> {spec.sink.uri})")


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-id", default=None, help="Run id (output folder name); overrides sink.run_id.")
@click.option("--address", default=None, help="Ray cluster address; overrides run.ray_address.")
@click.option("-q", "--quiet", is_flag=True, help="Progress as a log line every 10 s instead of bars "
              "(the default when stderr is not a terminal, e.g. under cron).")
@click.option("-v", "--verbose", is_flag=True, help="Show Ray Data's own execution logs.")
def run(job: str, overrides: tuple[str, ...], run_id: Optional[str], address: Optional[str],
        quiet: bool, verbose: bool) -> None:
    """Run a job: list the archive, classify every image, commit Parquet."""
    extra = list(overrides)
    if run_id:
        extra.append(f"sink.run_id={run_id}")
    if address:
        extra.append(f"run.ray_address={address}")
    spec = _load(job, tuple(extra))
    from imgclf_ray.pipeline import run_job
    from imgclf_ray.report.summary import format_summary

    try:
        result = run_job(spec, quiet=quiet, verbose=verbose)
    except UserError as exc:
        _fail(exc)
    click.echo(format_summary(result))


@main.command()
@click.argument("what", type=click.Choice(["spec", "schema"]), default="spec")
def reference(what: str) -> None:
    """Print the job-spec reference or the output schema as Markdown (as in the README)."""
    from imgclf_ray.reference import schema_reference, spec_reference

    click.echo(spec_reference() if what == "spec" else schema_reference())


if __name__ == "__main__":
    main()
