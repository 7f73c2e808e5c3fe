"""``imgclf``: validate and run image-classification jobs.

Heavy modules (ray, torch) are imported inside the commands that need them, so ``imgclf --help`` and
``imgclf validate`` start in well under a second. Over 400 lines because it is every command's
options and help text, each command a thin function over the API; nothing else lives here.
"""

from __future__ import annotations

import sys
from typing import Optional

import click

from imgclf_ray.errors import SpecError, UserError, describe_failure
from imgclf_ray.ids import id_problem
from imgclf_ray.spec import JobSpec, load_spec, peek_spec

_SET_HELP = ("Override a spec value: --set sink.uri=s3://bucket/out (a training spec: --set data.uri=...; "
             "repeatable; YAML values).")


def _fail(exc: UserError) -> None:
    if exc.exit_code:
        _keep_ray_log()
    # Several problems (a spec's) are several lines, each an ``error:`` line.
    from imgclf_ray.messages import without_credentials

    text = without_credentials(exc)  # (an MLflow URL from the environment may carry one)
    click.echo("\n".join(f"error: {line}" for line in text.splitlines() or [""]) if exc.exit_code else text,
               err=bool(exc.exit_code))
    from imgclf_ray import interrupts

    interrupts.end(exc.exit_code)  # a lost cluster's watcher, should Ray's shutdown hang, says nothing more
    sys.exit(exc.exit_code)


def _keep_ray_log() -> None:
    """A failed or interrupted run keeps its Ray log file (others are pruned to the last 10)."""
    if "imgclf_ray.runner.ray_setup" in sys.modules:
        sys.modules["imgclf_ray.runner.ray_setup"].mark_failed()


def _load(job: str, overrides: tuple[str, ...], model=JobSpec, values: Optional[dict[str, str]] = None):
    head = peek_spec(job) if model is JobSpec else None
    if isinstance(head, dict) and "data" in head and "source" not in head:
        raise SpecError(f"{job} is a training spec (data:, no source:): train with `imgclf train {job}`; "
                        "a job spec names source:, model: and sink:")
    return load_spec(job, list(overrides), model, values)


def _plain_id(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """Click callback: a run id given on the command line is a plain name (imgclf_ray.ids), refused
    with exit 2 before anything starts."""
    problem = None if value is None else id_problem(value)
    if problem:
        name = param.opts[0] if param.param_type_name == "option" else param.human_readable_name
        _fail(SpecError(f"{name}: {problem}"))
    return value


class _Command(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.UsageError as exc:  # click leaves some without the command's context
            exc.ctx = exc.ctx or ctx  # (an option missing its value): the line names this command
            raise


class _Group(click.Group):
    command_class = _Command


class _OneLineErrors(click.Group):
    """Every failure a user can cause or meet is one ``error:`` line and an exit code, never a
    traceback (set IMGCLF_DEBUG=1 to see one)."""

    command_class = _Command
    group_class = _Group

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:  # the group's own options (imgclf --bogus), before invoke
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.exceptions.UsageError as exc:
            _usage(exc)
            raise  # not reached

    def invoke(self, ctx: click.Context):
        import os

        from imgclf_ray import interrupts

        try:
            with interrupts.handled():
                try:
                    return super().invoke(ctx)
                except interrupts.Interrupted as exc:
                    _stop(exc)  # still under the handlers: a second signal while stopping exits at once
                except Exception:  # noqa: BLE001 - a library turned the interruption into its own error
                    if interrupts.raised() is None:
                        raise
                    _stop(interrupts.raised())
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group given no command: its help, as click shows it
        except click.exceptions.UsageError as exc:  # an unknown option or command, a missing argument
            _usage(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except UserError as exc:
            _fail(exc)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for the CLI
            if os.environ.get("IMGCLF_DEBUG"):
                _traceback(exc)
            _fail(describe_failure(exc))


def _usage(exc: click.exceptions.UsageError) -> None:
    where = exc.ctx.command_path if exc.ctx else "imgclf"
    click.echo(f"error: {where}: {exc.format_message()} (see {where} --help)", err=True)
    sys.exit(exc.exit_code)


def _stop(exc) -> None:
    """A signal ended the command: one line saying what was committed and what to do, Ray's
    processes stopped (this process started them), exit 130 (SIGINT) or 143 (SIGTERM)."""
    from imgclf_ray import interrupts

    _keep_ray_log()
    click.echo(interrupts.describe(exc), err=True)
    interrupts.end(exc.exit_code)
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    sys.exit(exc.exit_code)


def _traceback(exc: BaseException) -> None:
    """IMGCLF_DEBUG=1: where it failed (files, lines, functions; no locals) and the exception
    through the message gate, on stderr."""
    import traceback

    from imgclf_ray.messages import describe

    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    click.echo("Traceback (most recent call last):\n" + "".join(frames) + describe(exc, cap=300), err=True)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgclf-ray")
def main() -> None:
    """Batch image classification on Ray: archive in, labelled Parquet out."""


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def validate(job: str, overrides: tuple[str, ...]) -> None:
    """Check a job spec (or a training spec) without starting Ray (exit 2 on any problem)."""
    from imgclf_ray.spec import TrainSpec

    head = peek_spec(job)
    if isinstance(head, dict) and "data" in head and "source" not in head:
        spec = _load(job, overrides, TrainSpec)
        click.echo(f"{job}: ok (training {spec.name!r}: {spec.data.uri} -> {spec.model.output})")
        return
    spec = _load(job, overrides)
    click.echo(f"{job}: ok (job {spec.name!r}: {spec.source.uri} -> {spec.sink.uri})")


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-id", default=None, callback=_plain_id, help="Run id (output folder name); overrides sink.run_id. "
              "Running a committed run id again replaces it.")
@click.option("--date", "date", default=None, metavar="YYYY-MM-DD|today",
              help="Scheduled runs: run id <name>-<date>, once per date; a second run of a committed "
              "date does nothing and says so.")
@click.option("--address", default=None, help="Ray cluster address; overrides run.ray_address.")
@click.option("-q", "--quiet", is_flag=True, help="Progress as a log line every 10 s instead of bars "
              "(the default when stderr is not a terminal, e.g. under cron).")
@click.option("-v", "--verbose", is_flag=True, help="Show Ray Data's own execution logs.")
@click.option("--dry-run", is_flag=True, help="List, select (incremental jobs) and plan with the executor the run "
              "would use, print the counts and the plan; decode nothing, write nothing.")
@click.option("--local", is_flag=True, help="Run in this process without Ray (run.executor: local): "
              "no start-up cost, one machine. Default (run.executor: auto): Ray when a cluster is named or "
              "running, else this.")
@click.option("--ray", "use_ray", is_flag=True, help="Run on Ray (run.executor: ray): the named or running "
              "cluster, else a Ray instance started for the run.")
def run(job: str, overrides: tuple[str, ...], run_id: Optional[str], date: Optional[str],
        address: Optional[str], quiet: bool, verbose: bool, dry_run: bool, local: bool, use_ray: bool) -> None:
    """Run a job: list the archive, classify every image, commit Parquet."""
    if local and use_ray:
        _fail(SpecError("give --local or --ray, not both"))
    extra, values = list(overrides), {}
    once = False
    if date:
        if run_id:
            _fail(SpecError("give --run-id or --date, not both"))
        run_id, once = _dated_run_id(job, overrides, date), True
        values["sink.run_date"] = run_id[-10:]
    if run_id:
        values["sink.run_id"] = run_id
    if address:
        extra.append(f"run.ray_address={address}")
    if local or use_ray:
        extra.append(f"run.executor={'local' if local else 'ray'}")
    spec = _load(job, tuple(extra), values=values)
    if dry_run:
        from imgclf_ray.runner.dry_run import dry_run as plan_only
        from imgclf_ray.runner.job import run_id_of

        click.echo(plan_only(spec, run_id_of(spec, run_id), verbose).format())
        return
    from imgclf_ray import interrupts
    from imgclf_ray.runner.job import run_id_of, run_job
    from imgclf_ray.report.summary import format_summary

    run_id = run_id_of(spec, run_id)
    # A dated run resumes with its date (its run id and date partition), spelled out: "today" moves.
    again = f"--date {run_id[-10:]}" if once else f"--run-id {run_id}"
    interrupts.resume(f"run {run_id}", f"rerun with {again} to resume")
    _prepare_example(spec)
    result = run_job(spec, run_id=run_id, quiet=quiet, verbose=verbose, once=once, redirect_ray=True)
    click.echo(format_summary(result))


def _prepare_example(spec: JobSpec) -> None:
    """Write a spec's bundled example data and train its example model where they are missing."""
    if spec.example is not None:
        from imgclf_ray.training.example_models import prepare

        prepare(spec, echo=click.echo)


def _dated_run_id(job: str, overrides: tuple[str, ...], date: str) -> str:
    from datetime import datetime, timezone

    if date == "today":
        date = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    import re

    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise ValueError
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        _fail(SpecError(f"--date {date!r}: expected YYYY-MM-DD or today"))
    return f"{_load(job, overrides).name}-{date}"


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-id", default=None, callback=_plain_id, help="Run id (default: <name>-curate-<UTC time>).")
@click.option("--address", default=None, help="Ray cluster address; overrides run.ray_address.")
@click.option("-q", "--quiet", is_flag=True, help="Progress as log lines.")
@click.option("-v", "--verbose", is_flag=True, help="Show Ray Data's own execution logs.")
def curate(job: str, overrides: tuple[str, ...], run_id: Optional[str], address: Optional[str],
           quiet: bool, verbose: bool) -> None:
    """Curate an archive: the job's curation checks (every one that applies when the job has no
    curate section) and its clustering, without applying its model. label_issue needs the model's
    predictions, so it runs with `imgclf run` only."""

    extra = list(overrides)
    if address:
        extra.append(f"run.ray_address={address}")
    head = peek_spec(job)
    if isinstance(head, dict) and "curate" not in head:
        extra.insert(0, "curate={}")
    spec = _load(job, tuple(extra), values={"sink.run_id": run_id} if run_id else None)
    curate_spec = spec.curate.model_dump() if spec.curate else {}
    if curate_spec.get("checks"):
        curate_spec["checks"] = [c for c in curate_spec["checks"] if c != "label_issue"]
    spec = JobSpec.model_validate({**spec.model_dump(), "model": None, "curate": curate_spec})
    from imgclf_ray import interrupts
    from imgclf_ray.runner.job import run_id_of, run_job

    run_id = run_id_of(spec, run_id, kind="curate")
    from imgclf_ray.report.summary import format_summary

    interrupts.resume(f"run {run_id}", f"rerun with --run-id {run_id} to resume")
    _prepare_example(spec)
    result = run_job(spec, run_id=run_id, quiet=quiet, verbose=verbose, redirect_ray=True)
    click.echo(format_summary(result))


_ADDRESS_HELP = ("Ray Jobs API (the head's dashboard), e.g. http://HEAD:8265; default "
                 "$RAY_API_SERVER_ADDRESS, an http(s) $RAY_ADDRESS, else http://127.0.0.1:8265. A "
                 "cluster with token authentication takes its token from RAY_AUTH_TOKEN / "
                 "RAY_AUTH_TOKEN_PATH with RAY_AUTH_MODE=token.")


def _address(fn):
    return click.option("--address", default=None, help=_ADDRESS_HELP)(fn)


def _cluster_call(fn, *args, **kwargs):
    from imgclf_ray.submission import default_address

    return fn(kwargs.pop("address") or default_address(), *args, **kwargs)


def _print_status(st) -> None:
    from datetime import datetime, timezone

    def when(t):
        return f"{datetime.fromtimestamp(t, timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if t else "-"

    click.echo(f"{st.run_id}: {st.status}  (started {when(st.started)}, ended {when(st.ended)})")
    if st.message:
        click.echo(f"  {st.message.splitlines()[0]}")


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-id", default=None, callback=_plain_id, help="Run id, also the Ray submission id (default: "
              "<name>-<UTC time>).")
@click.option("--date", "date", default=None, metavar="YYYY-MM-DD|today", help="Scheduled runs: run "
              "id <name>-<date>; a date already submitted is not submitted again (one that failed or "
              "was stopped is resubmitted and resumes), one already committed does nothing.")
@_address
@click.option("--wait", is_flag=True, help="Follow the run's log until it ends; exit 0 only when it "
              "succeeded.")
@click.option("--skip-preflight", is_flag=True, help="Submit without first asking the cluster's Python "
              "(a short probe job) whether it has the project's dependencies, the job's extras and this "
              "client's Ray: for clusters that forbid extra jobs.")
def submit(job: str, overrides: tuple[str, ...], run_id: Optional[str], date: Optional[str],
           address: Optional[str], wait: bool, skip_preflight: bool) -> None:
    """Submit a job to a Ray cluster through the Ray Jobs API (spec and package shipped with it).
    A probe job first checks the cluster's Python (dependencies, the job's extras, Ray's version):
    a mismatch is refused with exit 2, nothing submitted."""
    from imgclf_ray import submission

    if date and run_id:
        _fail(SpecError("give --run-id or --date, not both"))
    spec = _load(job, overrides)
    if date:
        run_id = _dated_run_id(job, overrides, date)
        date = run_id[len(spec.name) + 1:]
    elif not run_id:
        from imgclf_ray.runner.job import run_id_of

        run_id = run_id_of(spec)
    done = _cluster_call(submission.submit, job, list(overrides), spec, run_id, date, not skip_preflight,
                         address=address)
    if done.action.startswith("already"):
        click.echo(f"run {run_id} is {done.action} on the cluster; nothing was submitted")
        return
    again = f" (the earlier attempt {done.previous}; it resumes)" if done.previous else ""
    click.echo(f"{done.action} run {run_id}{again}")
    if not wait:
        click.echo(f"  follow it: imgclf logs {run_id} --follow   stop it: imgclf stop {run_id}")
        return
    _echo_logs(run_id, True, address)
    st = _cluster_call(submission.wait, run_id, address=address)
    _print_status(st)
    sys.exit(0 if st.status == "SUCCEEDED" else 1)


@main.command()
@click.argument("run_id", callback=_plain_id)
@_address
def status(run_id: str, address: Optional[str]) -> None:
    """Where a submitted run stands: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    from imgclf_ray import submission

    _print_status(_cluster_call(submission.status, run_id, address=address))


@main.command()
@click.argument("run_id", callback=_plain_id)
@_address
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
def logs(run_id: str, address: Optional[str], follow: bool) -> None:
    """A submitted run's driver log."""
    _echo_logs(run_id, follow, address)


def _echo_logs(run_id: str, follow: bool, address: Optional[str]) -> None:
    from imgclf_ray.submission import logs

    def echo(where: str) -> None:
        for chunk in logs(where, run_id, follow=follow):
            click.echo(chunk, nl=False)

    _cluster_call(echo, address=address)


@main.command()
@click.argument("run_id", callback=_plain_id)
@_address
def stop(run_id: str, address: Optional[str]) -> None:
    """Stop a submitted run: it stops at its next safe point, committing nothing (a commit already
    under way completes); submitting it again resumes it."""
    from imgclf_ray import submission

    before = _cluster_call(submission.status, run_id, address=address)
    if before.status in submission.TERMINAL:  # the Jobs API stops nothing that has ended
        click.echo(f"run {run_id} had already ended ({before.status}); nothing was stopped")
        return
    _print_status(_cluster_call(submission.stop, run_id, address=address))


@main.group()
def model() -> None:
    """Model artifacts: bring a model trained elsewhere; promote a registered version on evidence."""


class _RegistryChoice(click.Choice):
    """A choice among a registry's names, looked up only when a command is parsed (so that
    ``imgclf --help`` imports none of the code behind them)."""

    def __init__(self, registry_name: str):
        super().__init__([])
        self.registry_name = registry_name

    @property
    def choices(self):
        from imgclf_ray import registry

        return tuple(getattr(registry, self.registry_name).names())

    @choices.setter
    def choices(self, value) -> None:
        pass


@model.command("import")
@click.argument("source", type=click.Path(exists=True))
@click.option("--format", "fmt", required=True, type=_RegistryChoice("MODEL_FORMATS"),
              help="timm: a hub-style folder (config.json + model.safetensors) or a checkpoint with "
              "--architecture; hf: a transformers save_pretrained folder; torchvision: a state_dict "
              "(.pth / .safetensors) with --architecture and/or --weights; onnx: a .onnx file (or its "
              "folder, with external data); skops: a fitted scikit-learn pipeline with --features.")
@click.option("--out", required=True, help="Artifact folder to write (local or s3://); model.uri takes it.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Label names, one per line, in output order (overrides the model's own).")
@click.option("--preprocess", "preprocess_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON/YAML of the card's preprocess keys (resize, crop, interpolation, mean, std, ...).")
@click.option("--architecture", default=None, help="timm / torchvision model name.")
@click.option("--weights", default=None, help="torchvision weights name, e.g. ResNet50_Weights.IMAGENET1K_V2: "
              "its categories and transforms (metadata shipped with torchvision; nothing is downloaded).")
@click.option("--task", type=click.Choice(["multiclass", "binary", "multilabel"]), default=None,
              help="Default: the model's own (Hugging Face problem_type), else multiclass.")
@click.option("--features", default=None, help="skops: the feature extractor the pipeline was fitted on: "
              "a name, or '{name: hog, params: {...}}'.")
def model_import(source: str, fmt: str, out: str, labels_file: Optional[str], preprocess_file: Optional[str],
                 architecture: Optional[str], weights: Optional[str], task: Optional[str],
                 features: Optional[str]) -> None:
    """Import a model from SOURCE as an artifact that model.uri accepts, read with its own library
    (nothing unpickled, downloaded or executed), and print what was found and where from."""
    from imgclf_ray.models.importers import import_model

    card, origins = import_model(fmt, source, out, labels_file, preprocess_file, architecture, weights, task, features)
    p = card.preprocess
    shape = f"resize {p.resize}" + (f", centre crop {p.crop}" if p.crop else " (square)")
    norm = f"mean {p.mean} std {p.std}" if p.normalize == "dataset" else "per image"
    names = ", ".join(card.labels[:5]) + (f", ... ({len(card.labels)})" if len(card.labels) > 5 else "")
    click.echo(f"imported {fmt} {card.architecture} -> {out}")
    click.echo(f"  task        : {card.task} ({origins.get('task', 'default')})")
    click.echo(f"  labels      : {names} ({origins.get('labels')})")
    click.echo(f"  input       : {p.channels}x{p.crop or p.resize}x{p.crop or p.resize}, {shape}, "
               f"{p.interpolation} ({origins.get('preprocess')})")
    click.echo(f"  normalise   : {norm}")
    if card.framework != "sklearn":
        click.echo(f"  outputs     : {card.outputs}")
    click.echo(f"  model id    : {card.model_id()}")


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def train(job: str, overrides: tuple[str, ...]) -> None:
    """Train a model from a training spec: a scikit-learn estimator over features, or a CNN."""
    from imgclf_ray.spec import TrainSpec

    spec = _load(job, overrides, TrainSpec)
    from imgclf_ray.evaluate import format_metrics
    from imgclf_ray import interrupts
    from imgclf_ray.training.trainer import train_job

    interrupts.resume(f"the model at {spec.model.output}", "run the same command again")
    metrics = train_job(spec)
    if metrics.get("example_written"):
        click.echo(f"example: wrote {metrics['example_written']} {spec.example.dataset} images to {spec.data.uri}")
    for name, node in (metrics["nodes"].items() if metrics.get("task") == "hierarchical" else [("", metrics)]):
        click.echo((f"[{name}] " if name else "") + "held-out " + format_metrics(node))
    click.echo(f"  artifact: {spec.model.output}  ({metrics['seconds']} s)")
    if metrics.get("gold_images_left_out"):
        click.echo(f"  left out: {metrics['gold_images_left_out']} gold-set images (they judge models; never trained on)")
    if metrics.get("registered"):
        r = metrics["registered"]  # (Version.record(): the tracking URI without a credential)
        click.echo(f"  registered: {r['name']} version {r['version']} in {r['tracking_uri']} (promote it with "
                   f"imgclf model promote {r['name']} {r['version']} --job NIGHTLY_JOB)")


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-id", default=None, callback=_plain_id, help="Run id of the evaluation run.")
@click.option("-q", "--quiet", is_flag=True, help="Progress as log lines.")
@click.option("--history", is_flag=True, help="List the evaluations kept under the job's sink (one "
              "per evaluation run: when, model, data digest, headline metric) instead of running one.")
def evaluate(job: str, overrides: tuple[str, ...], run_id: Optional[str], quiet: bool, history: bool) -> None:
    """Score a model on a labelled archive (source.labels): run the job, compare with the true
    labels, write _evaluation.json into the run's folder (every evaluation is kept: --history)."""
    spec = _load(job, overrides, values={"sink.run_id": run_id} if run_id else None)
    from imgclf_ray.evaluate import evaluate_job, evaluation_history, format_history, format_metrics

    if history:
        found = evaluation_history(spec.sink.uri, spec.storage)
        click.echo(format_history(found) if found else f"{spec.sink.uri}: no evaluation kept yet")
        return

    from imgclf_ray import interrupts

    interrupts.resume("the evaluation run", "run the same command again")
    _prepare_example(spec)
    result, metrics = evaluate_job(spec, quiet=quiet, redirect_ray=True)
    click.echo(format_metrics(metrics))
    from imgclf_ray.evaluate import EVALUATION_FILE

    click.echo(f"  written : {result.output_uri}/{EVALUATION_FILE}")


def _storage_options(fn):
    """--endpoint-url / --region / --profile for commands that read outputs directly."""
    fn = click.option("--profile", default=None, help="AWS profile for s3:// URIs.")(fn)
    fn = click.option("--region", default=None, help="Region for s3:// URIs.")(fn)
    return click.option("--endpoint-url", default=None, help="S3-compatible endpoint (MinIO ...).")(fn)


def _storage(endpoint_url: Optional[str], region: Optional[str], profile: Optional[str]):
    from imgclf_ray.spec import StorageSpec

    return StorageSpec(endpoint_url=endpoint_url, region=region, profile=profile)


@main.command()
@click.argument("output_uri")
@click.option("--json", "as_json", is_flag=True, help="Every run's manifest as one JSON list (for scripts).")
@_storage_options
def runs(output_uri: str, as_json: bool, endpoint_url: Optional[str], region: Optional[str],
         profile: Optional[str]) -> None:
    """List the committed runs under a sink location, oldest first (a night with nothing new shows
    as a run of 0 rows)."""
    import json

    from imgclf_ray.io.sink import list_runs
    from imgclf_ray.io.storage import filesystem

    storage = _storage(endpoint_url, region, profile)
    fs, path = filesystem(output_uri, storage)
    if not fs.exists(path):
        raise UserError(f"{output_uri}: no such folder or prefix")
    found = list_runs(output_uri, storage, damaged=True)
    if as_json:
        click.echo(json.dumps(found, indent=1, default=str))
        return
    if not found:
        click.echo(f"{output_uri}: no committed run")
        return
    click.echo(f"{'run id':<36} {'committed at (UTC)':<20} {'rows':>9} {'ok':>9} {'errors':>7}  model")
    for m in found:
        if "damaged" in m:
            click.echo(f"{m['run_id']:<36} DAMAGED (left out by every reader): {m['damaged']}")
            continue
        counts = m.get("by_status", {})
        note = "  (nothing new)" if m.get("nothing_new") else ""
        click.echo(f"{m['run_id']:<36} {m.get('committed_at', '')[:19]:<20} {m.get('rows', 0):>9} "
                   f"{counts.get('ok', 0):>9} {counts.get('error', 0):>7}  {(m.get('model_id') or '-')[:19]}{note}")


@main.command()
@click.argument("sink_uri")
@click.option("--to", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Write every image's current label as CSV or JSON Lines (default: counts only).")
@click.option("--where", default=None, help="Images to keep, as imgclf export's --where: e.g. \"label_source == "
              "'human'\", 'score < 0.6'.")
@click.option("--sort", default=None, help="Order by a column, ascending, or descending with '-' ('-score').")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many images.")
@click.option("-o", "--out", default=None, help="File to write, local or s3:// ('-' or none: standard output).")
@_storage_options
def labels(sink_uri: str, fmt: Optional[str], where: Optional[str], sort: Optional[str], limit: Optional[int],
           out: Optional[str], endpoint_url: Optional[str], region: Optional[str], profile: Optional[str]) -> None:
    """The archive's current labels: one row per image, its latest model row over every committed
    night and its latest human label (label_source: human or model)."""
    from imgclf_ray.io.sink import Sink
    from imgclf_ray.review.labels import current_labels

    sink = Sink(sink_uri, _storage(endpoint_url, region, profile))
    if not sink.fs.exists(sink.root):
        raise UserError(f"{sink_uri}: no such folder or prefix")
    table = current_labels(sink)
    if table.num_rows and (where or sort or limit):
        from imgclf_ray.report.export import select as keep

        table = keep(table, where, sort, limit)
    if fmt is None:
        sources = table.column("label_source").to_pylist() if table.num_rows else []
        click.echo(f"{sink_uri}: {table.num_rows} images; {sources.count('human')} labelled by a reviewer, "
                   f"{sources.count('model')} by the model")
        return
    from imgclf_ray.report.export import to_csv, to_jsonl

    from imgclf_ray.review.labels import LABEL_COLUMNS

    shown = table.select([c for c in LABEL_COLUMNS if c in table.column_names])
    blob = to_csv(shown, shown.column_names) if fmt == "csv" else to_jsonl(shown)
    _write_out(blob, out, _storage(endpoint_url, region, profile), f"{shown.num_rows} rows")


@model.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--sink", "sink_uri", default=None, help="The sink whose gold set judges (images decoded with "
              "the default decode settings); or --job.")
@click.option("--job", default=None, help="The nightly job whose sink's gold set judges, its images decoded "
              "as its nights decode them.")
@click.option("--metric", default="accuracy", show_default=True, help="accuracy, macro_f1 or balanced_accuracy.")
@click.option("--margin", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="Promote when the 95 % interval's lower bound of (candidate - champion) is above -margin: "
              "the candidate is better, or shown worse by less than the margin (0: only a candidate shown better).")
@click.option("--floor", type=click.FloatRange(0, 1), default=None,
              help="With no champion yet: the least lower bound of the candidate's metric.")
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--tracking-uri", default=None, help="The MLflow registry (absolute); default $MLFLOW_TRACKING_URI.")
@_storage_options
def model_promote(name: str, version: str, sink_uri: Optional[str], job: Optional[str], metric: str, margin: float,
                  floor: Optional[float], resamples: int, seed: int, tracking_uri: Optional[str],
                  endpoint_url: Optional[str], region: Optional[str], profile: Optional[str]) -> None:
    """Make VERSION of registered model NAME the champion only if the gold set shows it is not worse
    than the champion (paired bootstrap); the evidence is printed and recorded on the version."""
    from imgclf_ray.io.sink import Sink
    from imgclf_ray.models.mlflow_registry import tracking_uri as registry_uri
    from imgclf_ray.review.promote import Gate, promote
    from imgclf_ray.spec import parse_spec

    if (sink_uri is None) == (job is None):
        raise UserError("give --sink SINK or --job JOB (the job whose sink holds the gold set)")
    if job is not None:
        spec = _load(job, ())
        if spec.model is None:
            raise UserError(f"{job}: a job without a model: promote judges models as its nights run them")
    else:
        spec = parse_spec({"name": "gold", "source": {"uri": sink_uri}, "sink": {"uri": sink_uri},
                           "model": {"uri": "-"}, "storage": _storage(endpoint_url, region, profile).model_dump()},
                          "--sink")
    given = tracking_uri or (spec.model.tracking_uri if job else None)
    tracking = registry_uri(given, "--tracking-uri" if tracking_uri or not given else "model.tracking_uri")
    done = promote(name, version, Sink(spec.sink.uri, spec.storage, spec.sink.format), spec, tracking,
                   Gate(metric, margin, floor, resamples, seed))
    click.echo("\n".join(done.lines()))
    if not done.promote:
        raise SystemExit(1)


@main.group()
def review() -> None:
    """The review loop: select what a human should review, bring the answers back."""


def _archive_tasks(address: Optional[str]):
    """The tasks a review selection runs as: Ray's on the cluster at ``address`` ("auto": the
    running one), else calls in this process."""
    if not address:
        return None
    from imgclf_ray.runner.build import RayTasks
    from imgclf_ray.runner.ray_setup import ensure_ray

    ensure_ray(address, quiet=True)
    return RayTasks()


_SELECT_ADDRESS = ("Run the selection as Ray tasks on this cluster ('auto': the running one), so that no machine "
                   "holds the whole archive's labels; default: in this process.")


@review.command("select")
@click.argument("sink_uri")
@click.option("--budget", type=click.IntRange(min=1), required=True, help="How many images to review.")
@click.option("--strategy", default="uncertainty", show_default=True,
              help="uncertainty (the model least sure first); diverse (from the --pool x budget most uncertain, one "
              "per duplicate group, spread over the embedding: --spread); label_issues "
              "(existing labels least likely right first: curate.checks [label_issue]); disagreement (images two "
              "nights, or two models: --against, labelled differently first); random (the baseline).")
@click.option("--pool", type=click.IntRange(min=1), default=5, show_default=True,
              help="diverse: how many times the budget of most uncertain images it spreads the batch over.")
@click.option("--measure", default="margin", show_default=True,
              help="uncertainty: margin, entropy or least_confidence (whatever this says, multilabel: the class "
              "score nearest its threshold; hierarchical: the least confident decision on the path).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random selections.")
@click.option("--document-root", default=None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, the folder its "
              "tasks' local image paths are relative to: required when the sink's images are local files.")
@click.option("--spread", type=click.Choice(["k_center", "clusters"]), default="k_center", show_default=True,
              help="diverse: spread the batch by k-center greedy (the core set), or one image per k-means cluster "
              "of the pool (cluster-stratified).")
@click.option("--spread-on", type=click.Choice(["scores", "hog"]), default="scores", show_default=True,
              help="diverse, where the nights stored no embedding: spread over the model's class scores, or over "
              "HOG of each pool image (computed for the pool only).")
@click.option("--include-flagged", is_flag=True, help="Images an image-quality check flagged (is_*: blurry, dark, "
              "odd size ...) are candidates too.")
@click.option("--against", default=None, metavar="SINK",
              help="disagreement: compare with the labels another model gave the same images in another "
              "sink (a candidate's shadow nights, say) instead of the night before's.")
@click.option("--address", default=None, help=_SELECT_ADDRESS)
@_storage_options
def review_select(sink_uri: str, budget: int, document_root: Optional[str], address: Optional[str],
                  endpoint_url: Optional[str], region: Optional[str], profile: Optional[str], **ask) -> None:
    """Commit a review batch of the images a reviewer should see next: Label Studio tasks with the
    model's answers as pre-annotations, the labeling config, a CSV, and the batch's record."""
    from imgclf_ray.io.sink import Sink
    from imgclf_ray.review.select import Ask, commit_batch

    record = commit_batch(Sink(sink_uri, _storage(endpoint_url, region, profile)), budget, Ask(**ask), document_root,
                          _archive_tasks(address))
    click.echo(f"review batch {record['batch_id']}: {record['images']} images ({record['strategy']}"
               f"{', ' + record['measure'] if record['measure'] else ''})\n"
               f"  tasks  : {record['uri']}/tasks.json (import into a Label Studio project)\n"
               f"  config : {record['uri']}/labeling-config.xml (the project's labeling interface)\n"
               f"  csv    : {record['uri']}/batch.csv")


@review.command("gold")
@click.argument("sink_uri")
@click.option("--size", type=click.IntRange(min=1), required=True, help="How many images the gold set holds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw.")
@click.option("--exclude-labels", "exclude", multiple=True, metavar="TABLE",
              help="A labels table (CSV or Parquet with a uri column, uris full or relative to the archive) whose "
              "images models were trained on: none of them goes into the gold set. Repeatable.")
@click.option("--document-root", default=None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, the folder its "
              "tasks' local image paths are relative to: required when the sink's images are local files.")
@click.option("--address", default=None, help=_SELECT_ADDRESS)
@_storage_options
def review_gold(sink_uri: str, size: int, seed: int, exclude: tuple[str, ...], document_root: Optional[str],
                address: Optional[str], endpoint_url: Optional[str], region: Optional[str],
                profile: Optional[str]) -> None:
    """Draw the sink's gold set, once: images stratified by the model's label, committed as a
    review batch. Its answers judge models (imgclf model promote); training never uses them."""
    from imgclf_ray.io.sink import Sink
    from imgclf_ray.review.select import commit_gold

    from imgclf_ray.io.labels import table_uris

    storage = _storage(endpoint_url, region, profile)
    excluded = [u for table in exclude for u in table_uris(table, storage)]
    record = commit_gold(Sink(sink_uri, storage), size, seed, document_root, excluded, _archive_tasks(address))
    click.echo(f"gold set {record['batch_id']}: {record['images']} images, stratified by the model's label\n"
               f"  tasks  : {record['uri']}/tasks.json (import into a Label Studio project)\n"
               f"  config : {record['uri']}/labeling-config.xml (the project's labeling interface)\n"
               f"  csv    : {record['uri']}/batch.csv")


MAX_REVIEW_FILE = 256 * 2 ** 20  # bytes: far above any export of a review batch


@review.command("ingest")
@click.argument("file")
@click.option("--sink", "sink_uri", required=True, help="The sink whose images were reviewed.")
@click.option("--format", "fmt", type=click.Choice(["auto", "label-studio", "label-studio-min", "csv"]),
              default="auto", show_default=True, help="Label Studio's JSON or JSON-MIN export, or a CSV "
              "of image_id,label.")
@_storage_options
def review_ingest(file: str, sink_uri: str, fmt: str, endpoint_url: Optional[str], region: Optional[str],
                  profile: Optional[str]) -> None:
    """Bring reviewers' answers into the sink's human-labels table (ingesting a file twice adds nothing)."""
    from imgclf_ray.io.sink import Sink
    from imgclf_ray.io.storage import read_bytes
    from imgclf_ray.review.ingest import ingest

    from imgclf_ray.io.storage import filesystem

    storage = _storage(endpoint_url, region, profile)
    fs, path = filesystem(file, storage)
    if not fs.isfile(path):
        raise UserError(f"{file}: no such file")
    if fs.size(path) > MAX_REVIEW_FILE:
        raise UserError(f"{file}: {fs.size(path):,} bytes; a review file holds at most {MAX_REVIEW_FILE:,} "
                        "(split the export)")
    done = ingest(Sink(sink_uri, storage), read_bytes(file, storage), fmt, file)
    click.echo(f"ingested {done.added} reviews into {sink_uri}"
               + (f" ({done.already} already there)" if done.already else "")
               + (f"; {done.cancelled} cancelled annotation{'s' if done.cancelled != 1 else ''} skipped"
                  if done.cancelled else "")
               + (f"; {done.blank} row{'s' if done.blank != 1 else ''} without a label skipped" if done.blank else "")
               + (f"; {done.stale} for images changed since their task (kept, marked stale, not applied)"
                  if done.stale else ""))
    if done.unknown:
        from imgclf_ray.review.ingest import shown_id

        shown = ", ".join(map(shown_id, done.unknown[:5])) + (" ..." if len(done.unknown) > 5 else "")
        n = len(done.unknown)
        click.echo(f"warning: {n} answer{'s name' if n != 1 else ' names'} images this sink never labelled, "
                   f"left out: {shown}",
                   err=True)


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--sink", "sink_uri", default=None, help="Sink location: RUN_A and RUN_B are then run ids "
              "under it (else each is a run folder); '@labels' for either is the sink's current labels "
              "(imgclf labels: reviewers' answers where they apply).")
@click.option("--json", "as_json", is_flag=True, help="The comparison as JSON.")
@_storage_options
def compare(run_a: str, run_b: str, sink_uri: Optional[str], as_json: bool, endpoint_url: Optional[str],
            region: Optional[str], profile: Optional[str]) -> None:
    """Compare two committed runs: label counts and shares, drift per label (population stability
    index, chi-square p-value), the confidence shift, error causes new in RUN_B."""
    import json

    from imgclf_ray.io.sink import resolve_run
    from imgclf_ray.report.compare import compare_counts, format_comparison, run_counts
    from imgclf_ray.review.labels import CURRENT, current_counts as current

    storage = _storage(endpoint_url, region, profile)

    def counts(run: str):
        if run == CURRENT:
            if not sink_uri:
                raise UserError(f"{CURRENT}: the current labels of which sink? give --sink")
            return current(sink_uri, storage)
        return run_counts(resolve_run(sink_uri, run, storage) if sink_uri else resolve_run(run, None, storage), storage)

    result = compare_counts(counts(run_a), counts(run_b))
    click.echo(json.dumps(result, indent=1) if as_json else format_comparison(result))


@main.command()
@click.argument("output_uri")
@click.option("--run", "run_id", default=None, callback=_plain_id, help="Run id (default: the latest "
              "committed run, or OUTPUT_URI itself when it is a run folder).")
@click.option("--to", "fmt", type=click.Choice(["csv", "jsonl", "label-studio"]), required=True)
@click.option("--where", default=None, help="Rows to keep, e.g. 'is_label_issue', 'score < 0.6', "
              "\"label == 'cat' and not is_dark\", \"(status != 'ok' or score < 0.5)\": and, or, not, "
              "parentheses; values compared as the column's type.")
@click.option("--sort", default=None, help="Order by a column, ascending ('score': least confident "
              "first) or descending ('-score').")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@click.option("--document-root", default=None, help="label-studio, local images: Label Studio's "
              "LOCAL_FILES_DOCUMENT_ROOT (images are served relative to it).")
@click.option("-o", "--out", default=None, help="File to write, local or s3:// ('-' or none: standard output).")
@_storage_options
def export(output_uri: str, run_id: Optional[str], fmt: str, where: Optional[str], sort: Optional[str],
           limit: Optional[int], document_root: Optional[str], out: Optional[str], endpoint_url: Optional[str],
           region: Optional[str], profile: Optional[str]) -> None:
    """Export rows of a committed run for review: CSV, JSON Lines, or Label Studio tasks with
    the predicted choice and score as pre-annotations."""
    from imgclf_ray.report.export import export_run

    storage = _storage(endpoint_url, region, profile)
    blob, n = export_run(output_uri, run_id, fmt, where, sort, limit, document_root, storage)
    _write_out(blob, out, storage, f"{n} {'tasks' if fmt == 'label-studio' else 'rows'}")


def _write_out(blob: bytes, out: Optional[str], storage, what: str = "") -> None:
    """``blob`` to the file ``out`` (local or s3://), or to standard output for '-' or none."""
    import sys

    if out is None or out == "-":
        if sys.stdout.isatty():  # a terminal, as ls shows names: a control character (ESC, CR) in a name is '?'
            import re

            blob = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)", "?",  # (a CSV line ends in CR LF)
                          blob.decode("utf-8", "replace")).encode()
        sys.stdout.buffer.write(blob)
        sys.stdout.flush()
        return
    from imgclf_ray.io.storage import filesystem

    fs, path = filesystem(out, storage)
    fs.pipe_file(path, blob)
    click.echo(f"{what + ' ' if what else ''}written to {out}", err=True)


@main.command()
@click.argument("output_uri")
@click.option("--run", "run_id", default=None, callback=_plain_id, help="Run id (default: the latest committed run, or "
              "OUTPUT_URI itself when it is a run folder).")
@click.option("-o", "--out", default=None, help="Where to write the HTML (local, s3://, or - for standard output); default "
              "<run_id>-report.html here.")
@click.option("--truth-from-folder", is_flag=True, help="Take each image's parent folder name as its "
              "true label (folder-per-class archives): adds a confusion matrix and per-class metrics.")
@_storage_options
def report(output_uri: str, run_id: Optional[str], out: Optional[str], truth_from_folder: bool,
           endpoint_url: Optional[str], region: Optional[str], profile: Optional[str]) -> None:
    """Write a self-contained HTML report of a committed run."""
    from imgclf_ray.report.html import write_report

    where = write_report(output_uri, run_id, out, _storage(endpoint_url, region, profile),
                         truth_from_folder=truth_from_folder)
    if where != "-":
        click.echo(f"report written to {where}")


@main.command()
@click.argument("what", type=click.Choice(["spec", "train", "schema"]), default="spec")
@click.option("--update", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Rewrite the generated sections of this Markdown file (docs/reference.md) instead.")
def reference(what: str, update: Optional[str]) -> None:
    """Print the job-spec, training-spec or output-schema reference as Markdown (as in docs/reference.md)."""
    from pathlib import Path

    from imgclf_ray.reference import schema_reference, spec_reference, train_reference, update_markdown

    if update:
        Path(update).write_text(update_markdown(Path(update).read_text()))
        click.echo(f"{update}: generated sections updated")
        return
    click.echo({"spec": spec_reference, "train": train_reference, "schema": schema_reference}[what]())


if __name__ == "__main__":
    main()
