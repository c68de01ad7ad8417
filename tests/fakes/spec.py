"""Check JSON bodies against OpenAI's published OpenAPI 3.1 spec (JSON Schema 2020-12).

    spec = OpenAISpec.load()            # TIERLINE_OPENAI_SPEC, else the trimmed copy in openapi/
    spec.validate(body, "CreateChatCompletionRequest")
    spec.check_request(recorded)        # picks the schema from the request's method and path

The real API sends ``null`` for optional fields that the spec types as non-nullable (``Batch``'s
``*_at`` stamps, ``errors``, ...), so by default a ``null`` optional property passes;
``strict_nulls=True`` turns that off. Needs ``pyyaml``, ``jsonschema`` and ``referencing``.

The spec is in the repository beside this module (``openapi/openai-openapi.yaml``, MIT, trimmed by
``scripts/trim_openai_spec.py`` to the paths and schemas below), so every checkout can check.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VAR",
    "REQUEST_SCHEMAS",
    "OpenAISpec",
    "SpecError",
    "SpecMissing",
    "default_spec_path",
]

JSON = Any
ENV_VAR = "TIERLINE_OPENAI_SPEC"
SPEC_URI = "urn:tierline:openai-openapi"
# Request schema for each (method, path) tierline may send.
REQUEST_SCHEMAS: Mapping[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): "CreateChatCompletionRequest",
    ("POST", "/v1/responses"): "CreateResponse",
    ("POST", "/v1/batches"): "CreateBatchRequest",
}
_CACHE: dict[Path, OpenAISpec] = {}
_CACHE_LOCK = threading.Lock()


class SpecMissing(FileNotFoundError):
    """The spec file is not where ``TIERLINE_OPENAI_SPEC`` or the default path says."""


class SpecError(AssertionError):
    """A body does not match its schema; ``errors`` lists every violation."""

    def __init__(self, schema: str, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} violation(s) of {schema}:\n" + "\n".join(errors))
        self.schema = schema
        self.errors = errors


def default_spec_path() -> Path:
    """``$TIERLINE_OPENAI_SPEC``, else the trimmed copy beside this module."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent / "openapi" / "openai-openapi.yaml"


def _properties_allowing_null(
    validator: Any, properties: Mapping[str, JSON], instance: JSON, schema: Mapping[str, JSON]
) -> Iterator[Any]:
    """JSON Schema ``properties``, except that an optional property may be ``null``."""
    if not validator.is_type(instance, "object"):
        return
    required = set(schema.get("required", ()))
    for name, subschema in properties.items():
        if name in instance and not (instance[name] is None and name not in required):
            yield from validator.descend(instance[name], subschema, path=name, schema_path=name)


class OpenAISpec:
    """The spec's ``components/schemas`` as ready-made validators."""

    def __init__(self, document: Mapping[str, JSON]) -> None:
        from jsonschema import Draft202012Validator, validators
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012

        self.document = document
        self.schemas: Mapping[str, JSON] = document.get("components", {}).get("schemas", {})
        resource = DRAFT202012.create_resource(document)
        self._registry: Any = Registry().with_resource(SPEC_URI, resource)
        self._strict = Draft202012Validator
        extend: Any = validators.extend  # untyped in the stubs
        self._lenient = extend(Draft202012Validator, {"properties": _properties_allowing_null})
        self._validators: dict[tuple[str, bool], Any] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> OpenAISpec:
        """Load (once per process) the spec at ``path`` or ``default_spec_path()``."""
        resolved = Path(path) if path is not None else default_spec_path()
        with _CACHE_LOCK:
            if resolved not in _CACHE:
                if not resolved.is_file():
                    raise SpecMissing(
                        f"OpenAI spec not found at {resolved}; set {ENV_VAR} to its path"
                    )
                import yaml

                loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
                with resolved.open(encoding="utf-8") as handle:
                    _CACHE[resolved] = cls(yaml.load(handle, Loader=loader))
            return _CACHE[resolved]

    def validator(self, name: str, *, strict_nulls: bool = False) -> Any:
        """A ``jsonschema`` validator for ``#/components/schemas/<name>``."""
        if name not in self.schemas:
            raise KeyError(f"no schema {name!r} in the OpenAI spec")
        key = (name, strict_nulls)
        if key not in self._validators:
            cls = self._strict if strict_nulls else self._lenient
            ref = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
            self._validators[key] = cls(ref, registry=self._registry)
        return self._validators[key]

    def errors(self, instance: JSON, name: str, *, strict_nulls: bool = False) -> list[str]:
        """Every violation, as ``path: message`` strings (empty when valid)."""
        found = self.validator(name, strict_nulls=strict_nulls).iter_errors(instance)
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]

    def validate(self, instance: JSON, name: str, *, strict_nulls: bool = False) -> None:
        """Raise ``SpecError`` listing every violation of schema ``name``."""
        errors = self.errors(instance, name, strict_nulls=strict_nulls)
        if errors:
            raise SpecError(name, errors)

    def check_request(self, request: Any, *, strict_nulls: bool = True) -> str | None:
        """Validate a recorded request's body by its method and path; returns the schema used.

        ``request`` has ``method``, ``path`` and ``body`` (a ``RecordedRequest``); ``None`` when no
        schema is known for that endpoint.
        """
        name = REQUEST_SCHEMAS.get((request.method, request.path))
        if name is not None:
            self.validate(request.body, name, strict_nulls=strict_nulls)
        return name
