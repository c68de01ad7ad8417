"""Check Anthropic request and response bodies against the official `anthropic` SDK's types.

Anthropic publishes no OpenAPI spec; its SDK's types are the published shapes. Responses are
validated by the SDK's pydantic models in strict mode, and a field the SDK does not define (its
models accept and keep unknown fields) is an error too. Request bodies are validated against the
SDK's TypedDict params with unknown keys forbidden at every level.

    check_response(raw_bytes, Message)
    check_request(body, MessageCreateParamsNonStreaming)
"""

from __future__ import annotations

import copy
import functools
from typing import Any, TypeVar

import pydantic
from pydantic_core import SchemaValidator

M = TypeVar("M", bound=pydantic.BaseModel)


def check_response(raw: bytes | str, model: type[M]) -> M:
    """Parse `raw` JSON strictly as the SDK model `model`; fail on any field it does not define."""
    value = model.model_validate_json(raw, strict=True)
    unknown = list(_extras(value, model.__name__))
    assert not unknown, f"fields the anthropic SDK does not define: {unknown}"
    return value


def _extras(value: object, path: str) -> Any:
    if isinstance(value, pydantic.BaseModel):
        for name in value.model_extra or {}:
            yield f"{path}.{name}"
        for name in type(value).model_fields:
            yield from _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _extras(item, f"{path}[{key!r}]")


# Sampling keys the SDK dropped from its typed params in 1.0 (its MIGRATION.md: "removed
# deprecated request parameters", to be sent with extra_body): the API still takes them on the
# models that have sampling options, so they are checked here by type only.
WIRE_ONLY = {"temperature": float, "top_p": float, "top_k": int}


def check_request(body: object, params: Any) -> None:
    """Validate a request body against an SDK TypedDict (`MessageCreateParamsNonStreaming`,
    `BatchCreateParams`): types strictly, no key the SDK does not know, at any depth."""
    _consume(_params_validator(params).validate_python(_wire_only(body), strict=True))


def _wire_only(body: object) -> object:
    """`body` without the WIRE_ONLY keys (in a message or in each batch request's params),
    after checking their types."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("requests"), list):
        return {**body, "requests": [_wire_only(r) for r in body["requests"]]}
    if isinstance(body.get("params"), dict):
        return {**body, "params": _wire_only(body["params"])}
    for key, kind in WIRE_ONLY.items():
        if key in body:
            assert isinstance(body[key], (kind, int)), (key, body[key])
    return {k: v for k, v in body.items() if k not in WIRE_ONLY}


@functools.cache
def _params_validator(params: Any) -> SchemaValidator:
    schema = copy.deepcopy(pydantic.TypeAdapter(params).core_schema)
    return SchemaValidator(_forbid_extras(schema))  # type: ignore[arg-type]


def _forbid_extras(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "typed-dict":
            node["extra_behavior"] = "forbid"
        for value in node.values():
            _forbid_extras(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_extras(value)
    return node


def _consume(value: object) -> object:
    """The SDK types lists as `Iterable[...]`, which pydantic validates lazily: walk them all."""
    if isinstance(value, dict):
        return {k: _consume(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ValidatorIterator":
        return [_consume(v) for v in value]  # type: ignore[attr-defined]
    return value


def check_sent(server: Any) -> None:
    """Every POST a FakeAnthropic received matches the SDK's params for its endpoint (a POST to
    an endpoint without known params fails too, rather than going unchecked)."""
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
    from anthropic.types.messages.batch_create_params import BatchCreateParams

    params = {
        "/v1/messages": MessageCreateParamsNonStreaming,
        "/v1/messages/batches": BatchCreateParams,
    }
    for request in server.requests:
        if request.method == "POST" and not request.path.endswith("/cancel"):
            assert request.path in params, request
            check_request(request.body, params[request.path])
