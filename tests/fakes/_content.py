"""Deterministic, content-derived completions shared by every fake.

A fake never runs a model: the reply text is derived from a hash of the prompt, token counts are
estimated as ``len(text) / 4`` and structured output is a minimal instance of the requested JSON
schema, so the same request always gets the same answer and tests can predict it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Completion",
    "Reply",
    "derived_text",
    "digest",
    "estimate_tokens",
    "message_text",
    "resolve_completion",
    "schema_instance",
]

JSON = Any


def estimate_tokens(text: str) -> int:
    """Roughly four characters a token, at least one for any non-empty text."""
    return math.ceil(len(text) / 4)


def digest(text: str) -> str:
    """A short stable hash of ``text``."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _block_text(block: JSON) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping):
        for key in ("text", "content", "input_text"):
            value = block.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list):
                return _block_text(value)
        return ""
    if isinstance(block, Sequence):
        return "\n".join(_block_text(item) for item in block)
    return ""


def message_text(messages: JSON, system: JSON = None) -> str:
    """Flatten an OpenAI or Anthropic ``messages`` list (plus optional ``system``) to text."""
    parts = [_block_text(system)] if system else []
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        parts.extend(
            _block_text(m.get("content") if isinstance(m, Mapping) else m) for m in messages
        )
    return "\n".join(p for p in parts if p)


def _last_user_text(messages: JSON) -> str:
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return _block_text(message.get("content"))
    return ""


def derived_text(messages: JSON, system: JSON = None, prompt: str | None = None) -> str:
    """The default reply: a hash of the whole prompt plus the start of the last user turn."""
    snippet = " ".join(_last_user_text(messages).split())[:32]
    whole = message_text(messages, system) if prompt is None else prompt
    return f"{digest(whole)}: {snippet}".rstrip()


# --- minimal JSON-schema instances -------------------------------------------------------------

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


class _SchemaWalker:
    """Builds a small instance of a JSON schema, taking values from a seed string."""

    def __init__(self, root: Mapping[str, JSON], seed: str) -> None:
        self.root = root
        self.seed = seed
        self.depth = 0

    def pick(self, options: Sequence[JSON], salt: str) -> JSON:
        return options[int(digest(self.seed + salt), 16) % len(options)]

    def resolve(self, schema: Mapping[str, JSON]) -> Mapping[str, JSON]:
        seen = 0
        while "$ref" in schema and seen < 32:
            ref = str(schema["$ref"])
            target: JSON = self.root
            for part in ref.lstrip("#/").split("/") if ref.startswith("#") else []:
                target = target[part.replace("~1", "/").replace("~0", "~")]
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest}
            seen += 1
        if "allOf" in schema:
            merged: dict[str, JSON] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                sub = self.resolve(part)
                merged["required"] = [*merged.get("required", []), *sub.get("required", [])]
                merged["properties"] = {**merged.get("properties", {}), **sub.get("properties", {})}
                merged.update({k: v for k, v in sub.items() if k not in ("required", "properties")})
            schema = merged
        return schema

    def build(self, schema: JSON, path: str = "") -> JSON:
        if schema is True or not isinstance(schema, Mapping):
            return self.seed_text(path, {})
        schema = self.resolve(schema)
        self.depth += 1
        try:
            return self._build(schema, path)
        finally:
            self.depth -= 1

    def _build(self, schema: Mapping[str, JSON], path: str) -> JSON:
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.pick(schema["enum"], path)
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                branches = [
                    b
                    for b in schema[key]
                    if not (isinstance(b, Mapping) and b.get("type") == "null")
                ]
                return self.build((branches or schema[key])[0], path)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        builder = getattr(self, f"build_{kind}", None)
        return builder(schema, path) if builder else None

    def build_object(self, schema: Mapping[str, JSON], path: str) -> JSON:
        props: Mapping[str, JSON] = schema.get("properties", {})
        required = list(dict.fromkeys(schema.get("required", [])))
        # Strict structured outputs list every property as required; otherwise stay minimal,
        # except for a top-level object, where one property makes the answer useful.
        keys = required or (list(props)[:1] if self.depth == 1 else [])
        out = {key: self.build(props.get(key, {}), f"{path}/{key}") for key in keys}
        extra = schema.get("additionalProperties", True)
        for n in range(len(out), int(schema.get("minProperties", 0))):
            out[f"key{n}"] = self.build(
                extra if isinstance(extra, Mapping) else {}, f"{path}/key{n}"
            )
        return out

    def build_array(self, schema: Mapping[str, JSON], path: str) -> JSON:
        prefix = list(schema.get("prefixItems", []))
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 1)))
        count = max(lo, len(prefix), min(1, hi) if self.depth < 8 else lo)
        items = schema.get("items", {})
        out = [
            self.build(prefix[i] if i < len(prefix) else items, f"{path}/{i}") for i in range(count)
        ]
        if schema.get("uniqueItems") and out and all(isinstance(v, str) for v in out):
            out = [f"{v}{i}" if i else v for i, v in enumerate(out)]
        return out

    def build_string(self, schema: Mapping[str, JSON], path: str) -> JSON:
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        return self.seed_text(path, schema)

    def seed_text(self, path: str, schema: Mapping[str, JSON]) -> str:
        text = digest(self.seed + path)[:8]
        lo, hi = int(schema.get("minLength", 0)), int(schema.get("maxLength", 1 << 30))
        if len(text) < lo:
            text = (text * (lo // len(text) + 1))[:lo]
        return text[:hi]

    def build_integer(self, schema: Mapping[str, JSON], path: str) -> JSON:
        value = self.build_number(schema, path, integer=True)
        return int(value)

    def build_number(self, schema: Mapping[str, JSON], path: str, integer: bool = False) -> JSON:
        lo = _bound(schema, "minimum", "exclusiveMinimum", +1, integer)
        hi = _bound(schema, "maximum", "exclusiveMaximum", -1, integer)
        step = schema.get("multipleOf")
        value: float = 0 if lo is None else lo
        if hi is not None and value > hi:
            value = hi
        if lo is None and hi is not None:
            value = min(0, hi)
        if step:
            value = (
                math.ceil(value / step) * step
                if lo is not None
                else math.floor(value / step) * step
            )
        return int(value) if integer or (float(value).is_integer() and not step) else value

    def build_boolean(self, schema: Mapping[str, JSON], path: str) -> JSON:
        return bool(int(digest(self.seed + path), 16) % 2)

    def build_null(self, schema: Mapping[str, JSON], path: str) -> JSON:
        return None


def _bound(
    schema: Mapping[str, JSON], inclusive: str, exclusive: str, sign: int, integer: bool
) -> float | None:
    value = schema.get(inclusive)
    excl = schema.get(exclusive)
    if isinstance(excl, bool):  # draft-4 style boolean flags
        excl = value if excl else None
    if excl is not None:
        nudged = excl + sign * (1 if integer else 1e-6)
        nudged = (
            math.floor(nudged) if integer and sign < 0 else math.ceil(nudged) if integer else nudged
        )
        value = (
            nudged if value is None else (max(value, nudged) if sign > 0 else min(value, nudged))
        )
    if value is not None and integer:
        value = math.ceil(value) if sign > 0 else math.floor(value)
    return None if value is None else float(value) if not integer else int(value)


def schema_instance(schema: Mapping[str, JSON], seed: str = "") -> JSON:
    """A minimal instance of ``schema``: required properties, first non-null branch, bounds kept.

    Strings and booleans are derived from ``seed`` so different prompts give different values;
    ``pattern`` is not honoured.
    """
    return _SchemaWalker(schema, seed).build(schema)


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A scripted reply; every field left as ``None`` is derived from the request.

    ``finish_reason`` uses OpenAI's words (``stop``, ``length``, ``content_filter``, ...); the
    Anthropic fake maps them (``length`` -> ``max_tokens``) and passes its own words through.
    """

    content: str | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None
    model: str | None = None


@dataclass(frozen=True)
class Completion:
    """A resolved reply: text and token counts in OpenAI terms (cached and reasoning are subsets)."""

    text: str
    finish_reason: str
    refusal: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    model: str


def resolve_completion(
    reply: Reply,
    *,
    model: str,
    messages: JSON,
    system: JSON = None,
    max_tokens: int | None = None,
    schema: Mapping[str, JSON] | None = None,
    json_mode: bool = False,
    defaults: Reply = Reply(),
) -> Completion:
    """Fill in everything ``reply`` leaves open, honouring ``max_tokens`` like a model would."""
    prompt = message_text(messages, system)
    text = reply.content
    if text is None and reply.refusal is None:
        if schema is not None:
            text = json.dumps(schema_instance(schema, prompt), separators=(",", ":"))
        elif json_mode:
            text = json.dumps({"result": derived_text(messages, system, prompt)})
        else:
            text = derived_text(messages, system, prompt)
    text = text or ""
    finish = reply.finish_reason
    reasoning = _first(reply.reasoning_tokens, defaults.reasoning_tokens, 0)
    visible = (
        estimate_tokens(text)
        if reply.completion_tokens is None
        else reply.completion_tokens - reasoning
    )
    if finish is None and max_tokens is not None and visible + reasoning > max_tokens:
        visible = max(max_tokens - reasoning, 0)
        text = text[: visible * 4]
        finish = "length"
    prompt_tokens = _first(reply.prompt_tokens, defaults.prompt_tokens, estimate_tokens(prompt))
    cached = min(_first(reply.cached_tokens, defaults.cached_tokens, 0), prompt_tokens)
    creation = min(
        _first(reply.cache_creation_tokens, defaults.cache_creation_tokens, 0),
        prompt_tokens - cached,
    )
    return Completion(
        text=text,
        finish_reason=finish or "stop",
        refusal=reply.refusal,
        prompt_tokens=prompt_tokens,
        completion_tokens=visible + reasoning,
        cached_tokens=cached,
        cache_creation_tokens=creation,
        reasoning_tokens=reasoning,
        model=reply.model or model,
    )


def _first(*values: int | None) -> int:
    return next(v for v in values if v is not None)
