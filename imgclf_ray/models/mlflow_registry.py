"""Model versions and the champion alias in an MLflow model registry (the ``[mlflow]`` extra).

A version is registered with its artifact's own URI as source (where ``imgclf train`` wrote it)
and the card's ``model_id`` as tag ``imgclf.model_id``: resolving ``models:/NAME@ALIAS`` (or
``models:/NAME/VERSION``) gives that URI, once, on the driver, and refuses an artifact whose card
no longer has the version's model id (trained again into the same folder since). The tracking URI
is explicit and absolute: MLflow's own default, ``sqlite:///mlflow.db``, is a file in whatever
folder the command runs in.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from imgclf_ray.errors import SpecError, UserError
from imgclf_ray.messages import describe
from imgclf_ray.spec import StorageSpec

MODEL_ID_TAG = "imgclf.model_id"
CHAMPION = "champion"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))$")


def is_registered(uri: Optional[str]) -> bool:
    return bool(uri) and str(uri).startswith("models:/")


def tracking_uri(given: Optional[str], where: str) -> str:
    """The registry to use: ``given``, else $MLFLOW_TRACKING_URI; refused when neither names one,
    or when it is a relative file (``where``: the option or key that sets it, for the message)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not given and uri:
        where = "MLFLOW_TRACKING_URI"
    if not uri:
        raise SpecError(f"{where}: no MLflow tracking URI; set it (or MLFLOW_TRACKING_URI) to the registry, e.g. "
                        "sqlite:////srv/mlflow/mlflow.db or http://mlflow.internal:5000")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise SpecError(f"{where}: {uri} is a file relative to the current folder; give an absolute path "
                        "(sqlite:////abs/path/mlflow.db: four slashes)")
    if uri.startswith("databricks"):  # databricks, databricks-uc, databricks://profile
        return uri
    if uri.startswith("file:") and not uri.startswith(("file:/", "file:///")):
        raise SpecError(f"{where}: {uri} is a folder relative to the current one; give an absolute path")
    if ":" not in uri and not os.path.isabs(uri):
        raise SpecError(f"{where}: {uri} is a folder relative to the current one; give an absolute path or a "
                        "server's URL")
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def is_local_file(uri: str) -> bool:
    """Whether the registry is a file on this machine (a cluster cannot reach it)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _client(uri: str):
    from imgclf_ray.extras import require

    mlflow = require("mlflow")
    from mlflow import MlflowClient
    for name in ("mlflow", "alembic"):  # its INFO lines (creating tables ...) are not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or None)


def _call(what: str, fn, *args, **kwargs):
    """An MLflow call; its failure one line (the registry unreachable, a name unknown ...)."""
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        if "API request to" in str(exc) and "failed with exception" in str(exc):  # (after MLflow's retries)
            import mlflow

            from imgclf_ray.messages import without_credentials

            raise UserError(f"MLflow registry: {what}: the tracking server at {without_credentials(mlflow.get_tracking_uri())} "
                            "could not be reached (after MLflow's retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES sets "
                            "how many): check registry.tracking_uri / MLFLOW_TRACKING_URI and that the server "
                            "is up") from None
        raise UserError(f"MLflow registry: {what}: {' '.join(describe(exc).split())[:600]}") from None


@dataclass(frozen=True)
class Version:
    """One registered version, as a run's manifest records it."""

    tracking_uri: str
    name: str
    version: str
    source: str  # the artifact's URI
    model_id: Optional[str]
    alias: Optional[str] = None

    def record(self) -> dict[str, Any]:
        """What a run records (its manifest, its summary): the tracking URI without a credential
        (MLFLOW_TRACKING_URI may hold a password)."""
        from imgclf_ray.messages import without_credentials

        return {**asdict(self), "tracking_uri": without_credentials(self.tracking_uri)}


def _version(client, uri: str, mv, alias: Optional[str] = None) -> Version:
    return Version(uri, mv.name, str(mv.version), mv.source, (mv.tags or {}).get(MODEL_ID_TAG), alias)


def champion_version(uri: str, name: str) -> Optional[str]:
    """The version the ``champion`` alias names; None when the model has none (an unreachable
    registry is an error, not "no champion")."""
    client = _client(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) or (
                exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc) and "not found" in str(exc)):
            return None  # no such model, or no such alias (the SQL store's answer): no champion yet
        raise UserError(f"MLflow registry: the champion of {name}: {' '.join(describe(exc).split())[:600]}") from None


def resolve(models_uri: str, uri: str, storage: StorageSpec = StorageSpec()) -> Version:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the version, its artifact checked to
    be the one registered (the card's model_id)."""
    from imgclf_ray.models.hierarchy import describe_artifact

    m = _MODELS_URI.match(models_uri)
    if not m:
        raise SpecError(f"{models_uri}: a registered model is models:/NAME@ALIAS or models:/NAME/VERSION")
    client = _client(uri)
    if m["alias"]:
        mv = _call(f"{models_uri}", client.get_model_version_by_alias, m["name"], m["alias"])
    else:
        mv = _call(f"{models_uri}", client.get_model_version, m["name"], m["version"])
    found = _version(client, uri, mv, m["alias"])
    source = found.source
    readable = source.startswith("/") or bool(re.match(r"^[a-z][a-z0-9+.-]*://", source))
    if not readable or source.startswith(("runs:", "models:", "mlflow-artifacts:", "dbfs:")):
        raise UserError(f"{models_uri} is version {found.version}, whose source {source!r} is not an imgclf artifact "
                        "folder every node can read by an absolute path or an object-store URI (imgclf train with "
                        "registry: registers those)")
    actual = describe_artifact(source, storage).model_id
    if found.model_id and actual != found.model_id:
        raise UserError(f"{models_uri} is version {found.version}, registered with model id {found.model_id}, but "
                        f"the artifact at {found.source} is now {actual} (trained again into that folder?); "
                        "register the new artifact as a version of its own")
    return found


def register(uri: str, name: str, artifact_uri: str, model_id: str, params: dict[str, Any],
             metrics: dict[str, float], tags: dict[str, str]) -> Version:
    """Log a training run (parameters, metrics, the artifact's URI and model id) in experiment
    ``name`` and register the artifact as a new version of model ``name``."""
    client = _client(uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    _call(f"experiment {name}", mlflow.set_experiment, name)
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tags({**tags, MODEL_ID_TAG: model_id, "imgclf.artifact": artifact_uri})
    try:
        client.get_registered_model(name)
    except MlflowException:
        _call(f"create {name}", client.create_registered_model, name)
    mv = _call(f"register {name}", client.create_model_version, name, artifact_uri, run.info.run_id,
               tags={MODEL_ID_TAG: model_id})
    return _version(client, uri, mv)


def record_decision(uri: str, name: str, version: str, evidence: dict[str, Any], promote: bool) -> None:
    """The evidence as tags of the version (``imgclf.promotion.*``; a winner's decision reads
    "promoting" until its alias has moved), then, when it wins, the ``champion`` alias moved to it,
    then its decision "promoted": an interrupted promotion never claims what it did not do."""
    from imgclf_ray import faults

    client = _client(uri)

    def tag(key: str, value: Any) -> None:
        _call("tag the version", client.set_model_version_tag, name, str(version), f"imgclf.promotion.{key}",
              str(value)[:5000])

    for key, value in {**evidence, "decision": "promoting" if promote else evidence["decision"]}.items():
        tag(key, value)
    if promote:
        now = champion_version(uri, name)  # another promotion may have moved it while this one judged
        if now != evidence.get("champion_version"):
            tag("decision", "refused")
            raise UserError(f"{name}: the champion changed while version {version} was judged (now version "
                            f"{now}); nothing was moved: run the promotion again")
        faults.point("promote_alias")
        _call("move the champion alias", client.set_registered_model_alias, name, CHAMPION, str(version))
        faults.point("promote_moved")
        tag("decision", "promoted")


def decision_of(uri: str, name: str, version: str) -> Optional[str]:
    """The ``imgclf.promotion.decision`` tag of a version (None without one)."""
    client = _client(uri)
    mv = _call(f"{name} version {version}", client.get_model_version, name, str(version))
    return (mv.tags or {}).get("imgclf.promotion.decision")


def complete(uri: str, name: str, version: str) -> None:
    """A promotion killed after its alias moved: its decision finally says so."""
    client = _client(uri)
    _call("tag the version", client.set_model_version_tag, name, str(version), "imgclf.promotion.decision", "promoted")
