"""Validate JSON bodies against the official OpenAI OpenAPI spec (tests only).

The spec is OpenAPI 3.1 but still carries 3.0-style `nullable: true` in places; those are
rewritten to `anyOf: [schema, {type: null}]` before jsonschema (draft 2020-12) sees them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_ENV = "OPENAI_OPENAPI_SPEC"
DEFAULT_SPEC = Path(__file__).resolve().parents[3] / "shared/openai/openapi.yaml"
_SPEC_URI = "urn:openai:openapi"

# Friendly names -> component names in the spec (identity where they already match).
ALIASES: dict[str, str] = {
    "ChatCompletion": "CreateChatCompletionResponse",
    "ChatCompletionChunk": "CreateChatCompletionStreamResponse",
    "Completion": "CreateCompletionResponse",
    "CreateEmbeddingResponse": "CreateEmbeddingResponse",
    "EmbeddingList": "CreateEmbeddingResponse",
    "ListModelsResponse": "ListModelsResponse",
    "ModelList": "ListModelsResponse",
    "Model": "Model",
    "ErrorResponse": "ErrorResponse",
    "ChatCompletionRequest": "CreateChatCompletionRequest",
    "CompletionRequest": "CreateCompletionRequest",
    "EmbeddingRequest": "CreateEmbeddingRequest",
}

_MAX_REPORTED = 8


def spec_path() -> Path:
    """Where the spec is read from: $OPENAI_OPENAPI_SPEC, else ../shared beside the checkout."""
    env = os.environ.get(SPEC_ENV)
    return Path(env) if env else DEFAULT_SPEC


def _convert(node: Any) -> Any:
    """Rewrite OpenAPI-only keywords into plain JSON Schema 2020-12, recursively."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {key: _convert(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _components() -> dict[str, Any]:
    path = spec_path()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as f:
        spec = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader either way
    version = str(spec.get("openapi", ""))
    if not version.startswith("3."):
        raise RuntimeError(f"{path}: expected an OpenAPI 3.x document, got {version!r}")
    return {"components": {"schemas": _convert(spec["components"]["schemas"])}}


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(_components(), default_specification=DRAFT202012)
    registry: Registry = Registry().with_resource(_SPEC_URI, resource)
    return registry


def schema_names() -> list[str]:
    """All component schema names in the spec."""
    return sorted(_components()["components"]["schemas"])


def resolve_name(schema_name: str) -> str:
    """Map a friendly name to the spec's component name; fail clearly for unknown names."""
    name = ALIASES.get(schema_name, schema_name)
    if name not in _components()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {spec_path()}")
    return name


@functools.cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _describe(error: jsonschema.ValidationError) -> str:
    steps = error.absolute_path
    where = "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in steps)
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    return f"  at {where}: {message}"


def errors(schema_name: str, obj: object) -> list[str]:
    """Readable validation errors (empty when `obj` is valid)."""
    validator = _validator(resolve_name(schema_name))
    found = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    # anyOf failures are more useful through their innermost causes.
    leaves = [leaf for e in found for leaf in _leaves(e)]
    return [_describe(e) for e in leaves]


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if not error.context:
        return [error]
    best = jsonschema.exceptions.best_match(error.context)
    return _leaves(best) if best is not None else [error]


def validate(schema_name: str, obj: object) -> None:
    """Raise AssertionError listing what is wrong when `obj` does not match the schema."""
    problems = errors(schema_name, obj)
    if problems:
        shown = problems[:_MAX_REPORTED]
        more = len(problems) - len(shown)
        tail = [f"  ... and {more} more"] if more else []
        name = resolve_name(schema_name)
        raise AssertionError("\n".join([f"not a valid {name}:", *shown, *tail]))


@functools.cache
def _stream_event_schemas() -> dict[str, str]:
    """Responses stream event `type` -> the component schema of that event."""
    schemas = _components()["components"]["schemas"]
    out: dict[str, str] = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        kind = schemas[name].get("properties", {}).get("type", {})
        for value in kind.get("enum", ()):
            out[value] = name
    return out


def validate_response_event(obj: dict[str, Any]) -> None:
    """Validate a Responses stream event against the schema its `type` names (a plain anyOf
    over all events reports only the least helpful branch)."""
    name = _stream_event_schemas().get(obj.get("type", ""))
    if name is None:
        raise AssertionError(f"not a Responses stream event type: {obj.get('type')!r}")
    validate(name, obj)
