"""Reading a spec: YAML (bounded), --set overrides, validation errors as one line each with
the file, line and dotted key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from imgclf_ray.config.base import SECRET_KEYS
from imgclf_ray.config.job import JobSpec
from imgclf_ray.errors import SpecError


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z0-9_.]+", key.strip()):
        raise SpecError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML scalars / flow lists)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {'.'.join(path[:i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return data


def _line_of(text: str, loc: tuple[Any, ...]) -> Optional[int]:
    """1-based line of the deepest node of ``loc`` present in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _credential_urls(data: Any, loc: tuple = ()) -> list[tuple]:
    """Where a spec's values hold a URL with a credential in it (see messages.without_credentials)."""
    from imgclf_ray.messages import without_credentials

    if isinstance(data, dict):
        return [found for k, v in data.items() for found in _credential_urls(v, loc + (k,))]
    if isinstance(data, list):
        return [found for i, v in enumerate(data) for found in _credential_urls(v, loc + (i,))]
    return [loc] if isinstance(data, str) and "://" in data and without_credentials(data) != data else []


def _describe(err: dict[str, Any]) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        if str(loc[-1]).lower() in SECRET_KEYS:
            return ("credentials do not belong in a job spec; use the environment "
                    "(AWS_ACCESS_KEY_ID ...), storage.profile, or the machine's role")
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    return err["msg"]


def parse_spec(data: Any, origin: str, text: str = "", overridden: tuple[str, ...] = (),
               model: type[BaseModel] = JobSpec) -> Any:
    """Validate a mapping as a JobSpec; errors name ``origin`` and the dotted key.

    ``overridden`` lists the dotted keys that came from ``--set``, so that an error in one of them
    points at the command line rather than at a line of the file.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a job spec is a mapping of keys, got {type(data).__name__}")
    secrets = []
    for loc in _credential_urls(data):
        dotted = ".".join(map(str, loc))
        from_set = [k for k in overridden if dotted == k or dotted.startswith(k + ".")]
        line = _line_of(text, loc) if text and not from_set else None
        where = f"{origin} (--set {from_set[0]})" if from_set else f"{origin}:{line}" if line else origin
        secrets.append(f"{where}: {dotted}: a URL holding a credential (user:password@ or a token in its query) "
                       "does not belong in a job spec (it is recorded with the run); use the environment "
                       "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, AWS_ACCESS_KEY_ID ...), "
                       "storage.profile, or the machine's role")
    if secrets:
        raise SpecError("\n".join(secrets))
    try:
        spec = model.model_validate(data)
        if hasattr(spec, "_overridden"):
            spec._overridden = tuple(overridden)
        return spec
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-"))
            if err["type"] == "value_error":
                # Our validators start their message with the key they are about ("params: ...").
                err = {**err, "msg": err["msg"].removeprefix("Value error, ")}
                keyed = re.match(r"^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): (.*)$", err["msg"], re.S)
                if keyed:
                    loc = loc + tuple(keyed.group(1).split("."))
                    err["msg"] = keyed.group(2)
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            from_set = [k for k in overridden if dotted == k or dotted.startswith(k + ".") or
                        (err["type"] == "extra_forbidden" and k.startswith(dotted + "."))]  # (sourc.uri: sourc)
            line = _line_of(text, loc) if text and not from_set else None
            where = f"{origin} (--set {from_set[0]})" if from_set else f"{origin}:{line}" if line else origin
            lines.append(f"{where}: {dotted}: {_describe(err)}")
        raise SpecError("\n".join(lines)) from None


MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past MAX_YAML_NODES nodes (a
    'billion laughs' alias bomb is a few hundred bytes that expand to gigabytes when walked)."""

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def size(n) -> int:  # nodes after alias expansion; each distinct node is measured once
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts once instead of looping
                children = (n.value if isinstance(n, yaml.SequenceNode) else
                            [x for kv in n.value for x in kv] if isinstance(n, yaml.MappingNode) else [])
                sizes[id(n)] = min(1 + sum(size(c) for c in children), MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"aliases expand to more than {MAX_YAML_NODES:,} values (an alias "
                                 "bomb?); write the values out")
        return super().construct_document(node)

    def compose_mapping_node(self, anchor):
        """A key written twice in one mapping is refused (PyYAML keeps the last one silently);
        checked as written, before merges (``<<: *base``, which may override a key) are applied."""
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in first:
                    raise yaml.composer.ComposerError(
                        None, None, f"key {key_node.value!r} given twice in one mapping (first on line "
                        f"{first[key]}); keep one", key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
        return node


def load_yaml(text: str) -> Any:
    """YAML text -> Python values, safely (no tags that run code, aliases bounded)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def peek_spec(path: str | Path) -> Any:
    """The YAML content of a spec file, or None when it cannot be read (load_spec says why)."""
    try:
        return load_yaml(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def apply_values(data: dict[str, Any], values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Set each dotted key of ``values`` in ``data`` to its value, taken as it is (never parsed as
    YAML: the CLI's --run-id and --date, the Python API's overrides). Raises SpecError."""
    for dotted, value in values.items():
        node = data
        for part in dotted.split(".")[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"{origin}: {part} is not a mapping")
        node[dotted.split(".")[-1]] = value
    return data


def load_spec(path: str | Path, overrides: Optional[list[str]] = None, model: type[BaseModel] = JobSpec,
              values: Optional[dict[str, str]] = None) -> Any:
    """Read a YAML spec (a JobSpec unless ``model`` says otherwise), apply ``--set`` overrides,
    then ``values`` (dotted key -> a value taken as it is, never parsed as YAML: the CLI's --run-id
    and --date), validate. Raises SpecError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read job spec ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a YAML job spec (the file is not UTF-8 text)") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if data is None:
        data = {}
    if overrides:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a job spec is a mapping of keys, got {type(data).__name__}")
        data = apply_overrides(data, overrides)
    if values:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a job spec is a mapping of keys, got {type(data).__name__}")
        apply_values(data, values, str(path))
    keys = tuple(item.partition("=")[0].strip() for item in overrides or ()) + tuple(values or ())
    return parse_spec(data, str(path), text, keys, model)
