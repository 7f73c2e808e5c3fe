"""Markdown reference of the job spec and the output schema, generated from the code itself.

docs/reference.md embeds them between markers; a test fails when they drift apart.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from imgclf_ray.io.schema import COLUMN_DOCS, OUTPUT_SCHEMA
from imgclf_ray.spec import JobSpec


def _section_model(annotation: Any) -> type[BaseModel] | None:
    candidates = typing.get_args(annotation) or (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _registered(metadata) -> str | None:
    """A registry's names, when the field holds one of them (``Registry.name_type``)."""
    from imgclf_ray.registry import Registry

    found = [m for m in metadata if isinstance(m, Registry)]
    return " \\| ".join(json.dumps(n) for n in found[0].names()) if found else None


def _type_name(annotation: Any, metadata=()) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if _registered(metadata):
        return _registered(metadata)
    if origin is typing.Annotated:
        return _registered(annotation.__metadata__) or _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=list)}`"


def spec_reference(model: type[BaseModel] = JobSpec) -> str:
    """One table of every key (sections flattened): key, type, default, description."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            sub = _section_model(field.annotation)
            if sub is not None:
                lines.append(f"| `{key}` | section | {_default(field)} | {field.description or ''} |")
                walk(sub, key + ".")
            else:
                lines.append(f"| `{key}` | {_type_name(field.annotation, field.metadata)} | {_default(field)} | "
                             f"{field.description or ''} |")

    walk(model, "")
    return "\n".join(lines)


def schema_reference() -> str:
    """The output columns with their Arrow types and meaning."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for f in OUTPUT_SCHEMA:
        lines.append(f"| `{f.name}` | `{f.type}` | {COLUMN_DOCS[f.name]} |")
    return "\n".join(lines)


def train_reference() -> str:
    from imgclf_ray.spec import TrainSpec

    return spec_reference(TrainSpec)


SECTIONS = {"spec-reference": spec_reference, "schema-reference": schema_reference,
            "train-reference": train_reference}


def update_markdown(text: str) -> str:
    """Replace each generated section between its ``<!-- name:start/end -->`` markers."""
    for marker, generate in SECTIONS.items():
        text = re.sub(rf"(<!-- {marker}:start -->\n).*?(\n<!-- {marker}:end -->)",
                      lambda m, g=generate: m.group(1) + g() + m.group(2), text, flags=re.S)
    return text
