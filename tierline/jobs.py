"""Jobs in, results out: the job and result models and the streaming JSONL codec.

Two input line formats are accepted, detected per line:

* native: ``{"id", "prompt" | "messages", "system"?, "task"?, "tier"?, "max_tokens"?,
  "temperature"?, "stop"?, "response_format"?, "expect"?, "metadata"?}``
* an OpenAI Batch API line: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
  "body": {...}}``, so files made for OpenAI's Batch API or ``vllm run-batch`` work unchanged.

A bad line never aborts a run: `read_jobs` yields an `InvalidLine` naming the line and the reason,
and the caller turns it into an error result. Everything streams; memory is bounded by one line
plus 16 bytes per job id seen (an `IdSet` of 64-bit hashes, to refuse duplicates).
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from itertools import count, repeat
from typing import IO, Any, Literal, Protocol, cast

import orjson

from .config import CHECK_NAMES
from .errors import JobError, UsageError
from .schemas import schema_errors

__all__ = [
    "MAX_LINE_BYTES",
    "InvalidLine",
    "Job",
    "Message",
    "Result",
    "ResultWriter",
    "RouteHop",
    "Tiered",
    "Usage",
    "dumps",
    "loads",
    "read_jobs",
    "schema_of",
]

# A line longer than this is refused without being parsed: no model context holds it, and
# parsing a huge line would only spend memory. Chosen well above any real prompt.
MAX_LINE_BYTES = 32 * 1024 * 1024

ROLES = frozenset({"system", "user", "assistant"})
NATIVE_FIELDS = frozenset(
    {
        "id",
        "prompt",
        "messages",
        "system",
        "task",
        "tier",
        "max_tokens",
        "temperature",
        "stop",
        "response_format",
        "expect",
        "checks",
        "metadata",
        # written by `tierline classify`, so its output can be fed to `tierline run`
        "why",
        "confidence",
    }
)
# A job with only these fields needs none of the per-field checks below them.
PLAIN_FIELDS = frozenset({"id", "prompt", "messages", "system"})
BATCH_FIELDS = frozenset({"custom_id", "method", "url", "body", "tier", "why", "confidence"})
BATCH_URLS = frozenset({"/v1/chat/completions", "/chat/completions"})
# The `body` keys of a Batch line that tierline carries over; any other key is an error, as an
# unknown native field is: dropping `tools` or `n` silently would change what is asked and paid.
BATCH_BODY_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "stop",
        "response_format",
        "metadata",
    }
)
# Keys accepted only at their default value, which is what tierline sends anyway.
BATCH_BODY_DEFAULTS: Mapping[str, Any] = {"n": 1, "stream": False}


def loads(data: bytes | str) -> Any:
    """Parse JSON (orjson behind one helper, so the codec can change in one place)."""
    return orjson.loads(data)


def dumps(obj: Any) -> bytes:
    """Serialise to one compact JSON line (no newline)."""
    return orjson.dumps(obj)


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Job:
    """One validated input line."""

    id: str
    line: int
    source: str
    messages: tuple[Message, ...]
    system: str | None = None
    task: str | None = None
    tier: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    response_format: Mapping[str, Any] | None = None
    expect: str | tuple[str, ...] | None = None
    checks: tuple[str, ...] | None = None  # answer checks for escalation; None: the tier's
    metadata: Mapping[str, Any] | None = None
    format: Literal["native", "openai-batch"] = "native"
    requested_model: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    key: str | None = field(default=None, compare=False)  # the resume key, once one is given

    @property
    def text(self) -> str:
        """The user-visible text of the job (system prompt and user turns), for tiering."""
        parts = [self.system] if self.system else []
        parts.extend(m.content for m in self.messages if m.role != "assistant")
        return "\n\n".join(parts)

    @property
    def json_schema(self) -> Mapping[str, Any] | None:
        """The JSON schema the answer must follow, if the job asked for one."""
        return schema_of(self.response_format)


def schema_of(response_format: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The JSON schema in either spelling of response_format: OpenAI's
    {"type": "json_schema", "json_schema": {"schema"}} or {"type": "json_object", "schema"}."""
    if not response_format:
        return None
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema") or {}
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
    else:
        schema = response_format.get("schema")
    return schema if isinstance(schema, Mapping) else None


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """A line that could not become a job; it still gets exactly one (error) result."""

    line: int
    source: str
    error: str
    id: str | None = None
    kind: str = "invalid_job"
    key: str | None = None  # the resume key, once one is given


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage normalised across providers.

    `input_tokens` is the whole prompt, cached part included (OpenAI's convention; Anthropic's
    cache reads and writes are added back in by its adapter). `cached_tokens` and
    `cache_write_tokens` are subsets of `input_tokens`; `reasoning_tokens` is a subset of
    `output_tokens`.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


Status = Literal["ok", "error", "invalid", "skipped_budget", "pending", "cancelled"]


class Tiered(Protocol):
    """A tiering decision as a result line records it (`tiering.vote.TierVote` is one)."""

    @property
    def tier(self) -> int: ...
    @property
    def why(self) -> str: ...
    @property
    def confidence(self) -> float: ...


@dataclass(slots=True)
class RouteHop:
    """One backend a job was sent to (or waits at), as its result line's `route` records it.

    README "Result lines" documents the keys; the optional ones are written only when set.
    """

    backend: str
    model: str
    status: str  # "ok", "error", "unavailable", "pending"
    attempts: int = 0
    latency_s: float = 0.0
    tier: int | None = None  # the tier whose route this hop ran on (after an escalation)
    batch: bool = False  # a provider-batch hop: its `batch_id` is written even while None
    batch_id: str | None = None
    error: str | None = None
    check: tuple[str, str] | None = None  # (check name, detail) of the answer check it failed
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend,
            "model": self.model,
            "status": self.status,
            "attempts": self.attempts,
            "latency_s": round(self.latency_s, 4),
        }
        if self.tier is not None:
            out["tier"] = self.tier
        if self.batch:
            out["batch_id"] = self.batch_id
        if self.error:
            out["error"] = self.error
        if self.check is not None:
            out["check"] = {"failed": self.check[0], "detail": self.check[1]}
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_dict(cls, hop: Mapping[str, Any]) -> RouteHop:
        check = hop.get("check")
        return cls(
            backend=hop["backend"],
            model=hop["model"],
            status=hop["status"],
            attempts=int(hop.get("attempts", 0)),
            latency_s=float(hop.get("latency_s", 0.0)),
            tier=hop.get("tier"),
            batch="batch_id" in hop,
            batch_id=hop.get("batch_id"),
            error=hop.get("error"),
            check=(check["failed"], check["detail"]) if isinstance(check, Mapping) else None,
            note=hop.get("note"),
        )


# Result fields written only when set (reused answers), so every other line stays as it was.
_ONLY_WHEN_SET = {"only_when_set": True}


@dataclass(slots=True)
class Result:
    """One output line per input job. README "Result lines" documents every field.

    Build one with the constructor of its outcome (`answered`, `invalid`, `skipped`,
    `pending`, `copied`, `from_cache`); `to_dict` is the one serialiser and `from_record` reads
    a line back. A new field is one line here (and its row in the docs, which a test checks).
    """

    id: str | None
    line: int
    source: str
    status: Status
    tier: int | None = None
    why: str | None = None
    confidence: float | None = None
    backend: str | None = None
    model: str | None = None
    output: str | None = None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    route: list[RouteHop] = field(default_factory=list)
    escalations: int = 0  # times a failed answer check moved the job up a tier
    error: dict[str, str] | None = None
    metadata: Mapping[str, Any] | None = None
    key: str | None = None  # the resume key of the job (resume.job_key), when it has one
    dedup_of: str | None = field(default=None, metadata=_ONLY_WHEN_SET)  # copied from this id
    cached: bool = field(default=False, metadata=_ONLY_WHEN_SET)  # from the answer cache

    # --- constructors, one per outcome --------------------------------------------------------

    @classmethod
    def _of(cls, job: Job, vote: Tiered, status: Status, **values: Any) -> Result:
        """The fields every outcome of a tiered job shares."""
        return cls(
            id=job.id,
            line=job.line,
            source=job.source,
            status=status,
            tier=vote.tier,
            why=vote.why,
            confidence=round(vote.confidence, 3),
            metadata=job.metadata,
            key=job.key,
            **values,
        )

    @classmethod
    def answered(
        cls,
        job: Job,
        vote: Tiered,
        *,
        error: dict[str, str] | None,
        route: list[RouteHop],
        **values: Any,
    ) -> Result:
        """A job that was sent: `ok`, or `error` when `error` says why not."""
        status: Status = "ok" if error is None else "error"
        return cls._of(job, vote, status, error=error, route=route, **values)

    @classmethod
    def skipped(cls, job: Job, vote: Tiered, reason: str) -> Result:
        """A job the budget did not let through: never sent, so it cost nothing."""
        return cls._of(job, vote, "skipped_budget", error={"type": "budget", "message": reason})

    @classmethod
    def pending(cls, job: Job, vote: Tiered, backend: str, model: str) -> Result:
        """A job waiting in a provider batch; collection completes it. Batch answers are not
        checked (docs/escalation.md), so `escalations` stays 0."""
        hop = RouteHop(backend, model, "pending", batch=True)
        return cls._of(job, vote, "pending", backend=backend, model=model, route=[hop])

    @classmethod
    def invalid(cls, bad: InvalidLine) -> Result:
        """A line that is not a valid job (it still gets its one result line)."""
        return cls(
            id=bad.id,
            line=bad.line,
            source=bad.source,
            status="invalid",
            error={"type": bad.kind, "message": f"{bad.source}:{bad.line}: {bad.error}"},
            key=bad.key,
        )

    def copied(self, job: Job) -> Result:
        """`job`'s own line with this answer (an identical job's): nothing was paid for it."""
        return replace(
            self,
            id=job.id,
            line=job.line,
            source=job.source,
            metadata=job.metadata,
            key=job.key,
            usage=Usage(),
            cost_usd=0.0,
            latency_s=0.0,
            attempts=0,
            route=[],
            dedup_of=self.id,
            cached=False,
        )

    @classmethod
    def from_cache(cls, answer: Mapping[str, Any], job: Job) -> Result:
        """`job`'s line with an answer from the answer cache (`CACHED` fields): cost 0."""
        kept: dict[str, Any] = {name: answer.get(name) for name in CACHED}
        kept["escalations"] = int(kept["escalations"] or 0)
        return cls(
            id=job.id,
            line=job.line,
            source=job.source,
            status="ok",
            metadata=job.metadata,
            key=job.key,
            cached=True,
            **kept,
        )

    # --- the codec ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The result line as JSON-ready values, in field order."""
        record: dict[str, Any] = {}
        for name, only_when_set in _FIELDS:
            value = getattr(self, name)
            if only_when_set and not value:
                continue
            record[name] = _ENCODE[name](value) if name in _ENCODE else value
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Result:
        """A result line read back (from the ledger's batch rows or a results file)."""
        values = {k: v for k, v in record.items() if k in _NAMES}
        values["usage"] = Usage(**record.get("usage") or {})
        values["route"] = [RouteHop.from_dict(h) for h in record.get("route") or []]
        return cls(**values)


# What a cached answer keeps: everything that does not belong to one job or one call.
CACHED = ("tier", "why", "confidence", "backend", "model", "output", "finish_reason", "escalations")
_FIELDS = tuple((f.name, bool(f.metadata.get("only_when_set"))) for f in fields(Result))
_NAMES = frozenset(name for name, _ in _FIELDS)
_ENCODE: dict[str, Callable[[Any], Any]] = {
    "usage": Usage.as_dict,
    "latency_s": lambda v: round(v, 4),
    "route": lambda hops: [h.to_dict() for h in hops],
}


# --- parsing -----------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _as_written(value: Any) -> str:
    """A value as the line spelled it (`true`, `"2"`, `7`), or the type of a container."""
    if isinstance(value, dict | list):
        return _type_name(value)
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _want(obj: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass; `"max_tokens": true` is a mistake, not 1.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise JobError(f"'{key}' must be {what}, got boolean")
    if not isinstance(value, kinds):
        raise JobError(f"'{key}' must be {what}, got {_type_name(value)}")
    return value


def _content_text(content: Any, where: str) -> str:
    """Message content: a string, or a list of text parts (images are not supported)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else _type_name(part)
                raise JobError(
                    f"{where}: content part of type {kind!r} is not supported (text only)"
                )
        return "\n".join(texts)
    raise JobError(f"{where}: 'content' must be a string or a list of text parts")


def _messages(value: Any) -> tuple[str | None, tuple[Message, ...]]:
    """Split a chat message list into (system prompt, turns)."""
    if not isinstance(value, list) or not value:
        raise JobError("'messages' must be a non-empty array of {role, content} objects")
    system: list[str] = []
    turns: list[Message] = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise JobError(f"{where} must be an object, got {_type_name(msg)}")
        role = msg.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise JobError(f"{where}: role must be one of system, user, assistant; got {role!r}")
        text = _content_text(msg.get("content"), where)
        if role == "system":
            system.append(text)
        else:
            turns.append(Message(role, text))
    if not turns or turns[-1].role != "user":
        raise JobError("'messages' must end with a user message")
    return ("\n\n".join(system) or None), tuple(turns)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise JobError("'stop' must be a string or an array of strings")


def _response_format(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise JobError(f"'response_format' must be an object, got {_type_name(value)}")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = value.get("schema")
        if schema is not None and not isinstance(schema, Mapping):
            raise JobError("'response_format.schema' must be a JSON schema object")
    elif kind == "json_schema":
        inner = value.get("json_schema")
        if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
            raise JobError(
                "'response_format' of type json_schema needs 'json_schema': {'name', 'schema'}"
            )
    else:
        raise JobError(
            f"'response_format.type' must be 'text', 'json_object' or 'json_schema'; got {kind!r}"
        )
    schema = schema_of(value)
    if schema is not None:
        problem = _schema_problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
        if problem is not None:
            raise JobError(f"'response_format' schema: {problem}")
    return value


@lru_cache(maxsize=256)
def _schema_problem(schema_json: bytes) -> str | None:
    """Checked once per distinct schema: a file's jobs usually share one."""
    return schema_errors(orjson.loads(schema_json))


def _checks(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(c, str) and c in CHECK_NAMES for c in value):
        return tuple(value)
    raise JobError(f"'checks' must be an array of check names from {', '.join(CHECK_NAMES)}")


def _expect(value: Any) -> str | tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as exc:
            # Refused now, not when an answer is checked: with escalation on, a job that can
            # never pass its check would be escalated and paid at every tier before failing.
            raise JobError(f"'expect' is not a valid regex: {exc}") from None
        return value
    if value is None:
        return None
    if isinstance(value, list) and value and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise JobError("'expect' must be a regex string or a non-empty array of labels")


# `metadata` is copied into every result line and hashed into the resume key; orjson, which
# writes both, stops at 254 levels, so deeper JSON crashed the run instead of being a bad line.
MAX_METADATA_DEPTH = 64


def _shallow(value: Any, key: str) -> Any:
    """`value` (an object of the line, or None) nested at most MAX_METADATA_DEPTH levels."""
    level, frontier = 0, [value] if value is not None else []
    while frontier:
        level += 1
        if level > MAX_METADATA_DEPTH:
            raise JobError(f"'{key}' is nested deeper than {MAX_METADATA_DEPTH} levels")
        frontier = [
            inner
            for outer in frontier
            for inner in (outer.values() if isinstance(outer, dict) else outer)
            if isinstance(inner, dict | list)
        ]
    return value


def _tier(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value not in (1, 2, 3):
        raise JobError(f"'tier' must be 1, 2 or 3; got {_as_written(value)}")
    return int(value)


def _number_fields(obj: Mapping[str, Any], max_tokens_key: str = "max_tokens") -> dict[str, Any]:
    if max_tokens_key not in obj and "temperature" not in obj:
        return _NO_NUMBERS  # the common case, without the checks below
    max_tokens = _want(obj, max_tokens_key, int, "a positive integer")
    if max_tokens is not None and max_tokens < 1:
        raise JobError(f"'{max_tokens_key}' must be a positive integer; got {max_tokens}")
    temperature = _want(obj, "temperature", (int, float), "a number")
    if temperature is not None and not (0 <= temperature <= 2 and math.isfinite(temperature)):
        raise JobError(f"'temperature' must be between 0 and 2; got {temperature}")
    return {
        "max_tokens": max_tokens,
        "temperature": None if temperature is None else float(temperature),
    }


_NO_NUMBERS: dict[str, Any] = {"max_tokens": None, "temperature": None}


def _parse_native(obj: Mapping[str, Any], line: int, source: str) -> Job:
    if not NATIVE_FIELDS.issuperset(obj):
        unknown = sorted(set(obj) - NATIVE_FIELDS)
        raise JobError(
            f"unknown field {unknown[0]!r}; put your own data under 'metadata' "
            f"(known fields: {', '.join(sorted(NATIVE_FIELDS - {'why', 'confidence'}))})"
        )
    job_id = _job_id(obj.get("id"), "id", line, source)
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if prompt is not None and messages is not None:
        raise JobError("give either 'prompt' or 'messages', not both")
    system = _want(obj, "system", str, "a string")
    if messages is not None:
        msg_system, turns = _messages(messages)
        if msg_system and system:
            raise JobError("give the system prompt either in 'system' or in 'messages', not both")
        system = system or msg_system
    elif isinstance(prompt, str) and prompt.strip():
        turns = (Message("user", prompt),)
    elif prompt is None:
        raise JobError("missing 'prompt' (or 'messages')")
    else:
        got = "an empty one" if isinstance(prompt, str) else _type_name(prompt)
        raise JobError(f"'prompt' must be a non-empty string, got {got}")
    if PLAIN_FIELDS.issuperset(obj):  # the common job, without the checks it cannot need
        return Job(job_id, line, source, turns, system, raw=obj)
    metadata = _shallow(_want(obj, "metadata", dict, "an object"), "metadata")
    return Job(
        id=job_id,
        line=line,
        source=source,
        messages=turns,
        system=system,
        task=_want(obj, "task", str, "a string"),
        tier=_tier(obj.get("tier")),
        stop=_stop(obj.get("stop")),
        response_format=_response_format(obj.get("response_format")),
        expect=_expect(obj.get("expect")),
        checks=_checks(obj.get("checks")),
        metadata=metadata,
        raw=obj,
        **_number_fields(obj),
    )


def _parse_batch(obj: Mapping[str, Any], line: int, source: str) -> Job:
    unknown = sorted(set(obj) - BATCH_FIELDS)
    if unknown:
        raise JobError(f"unknown field {unknown[0]!r} in an OpenAI Batch line")
    job_id = _job_id(obj.get("custom_id"), "custom_id", line, source, required=True)
    if obj.get("method", "POST") != "POST":
        raise JobError(f"'method' must be POST; got {obj.get('method')!r}")
    url = obj.get("url")
    if url not in BATCH_URLS:
        raise JobError(f"'url' must be /v1/chat/completions; got {url!r}")
    body = obj.get("body")
    if not isinstance(body, Mapping):
        raise JobError(f"'body' must be an object, got {_type_name(body)}")
    _check_body_keys(body)
    system, turns = _messages(body.get("messages"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    model = body.get("model")
    return Job(
        id=job_id,
        line=line,
        source=source,
        messages=turns,
        system=system,
        tier=_tier(obj.get("tier")),
        stop=_stop(body.get("stop")),
        response_format=_response_format(body.get("response_format")),
        metadata=_shallow(_want(body, "metadata", dict, "an object"), "body.metadata"),
        format="openai-batch",
        requested_model=model if isinstance(model, str) else None,
        raw=obj,
        **_number_fields(body, key),
    )


def _check_body_keys(body: Mapping[str, Any]) -> None:
    for key in sorted(set(body) - BATCH_BODY_FIELDS):
        default = BATCH_BODY_DEFAULTS.get(key, _NO_DEFAULT)
        if default is not _NO_DEFAULT and body[key] == default and type(body[key]) is type(default):
            continue
        if default is not _NO_DEFAULT:
            raise JobError(
                f"'body.{key}' is not supported other than {orjson.dumps(default).decode()}"
            )
        raise JobError(
            f"'body.{key}' is not supported (tierline sends only: "
            f"{', '.join(sorted(BATCH_BODY_FIELDS))})"
        )


_NO_DEFAULT = object()


def _job_id(value: Any, key: str, line: int, source: str, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise JobError(f"missing '{key}'")
        # Jobs piped from other tools often carry no id; the position is a stable one.
        return f"{os.path.basename(source)}:{line}" if source != "-" else f"line-{line}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise JobError(f"'{key}' must be a string or an integer, got {_type_name(value)}")
    text = str(value)
    if not text:
        raise JobError(f"'{key}' must not be empty")
    return text


def parse_line(raw: bytes, line: int, source: str) -> Job:
    """Parse one JSONL line into a Job, or raise JobError saying why not."""
    return parse_object(load_line(raw), raw, line, source)


def load_line(raw: bytes) -> Any:
    """The JSON value of one line, or JobError saying why it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "invalid UTF-8" if "utf-8" in str(exc).lower() else f"invalid JSON ({exc})"
        raise JobError(reason, kind="invalid_json") from None


def parse_object(obj: Any, raw: bytes, line: int, source: str) -> Job:
    """The Job of a line already read as JSON (``raw``: its bytes), or JobError."""
    if not isinstance(obj, dict):
        raise JobError(f"a job line must be a JSON object, got {_type_name(obj)}")
    if isinstance(obj.get("id"), float) or isinstance(obj.get("custom_id"), float):
        obj = _exact_ids(raw, obj)
    if "custom_id" in obj or "body" in obj:
        return _parse_batch(obj, line, source)
    return _parse_native(obj, line, source)


def plain_prompt(obj: Any, line: int, source: str) -> tuple[str, str] | None:
    """(id, prompt) of a line that is only a non-blank prompt and maybe an id, exactly as
    `parse_object` reads it; None for any other line, which `parse_object` must read.

    Most lines of a big file are this simple; `tierline classify` takes them without building
    a `Job` (whose other fields would all be their defaults).
    """
    if type(obj) is not dict or type(prompt := obj.get("prompt")) is not str:
        return None
    size = len(obj)
    if size > 2 or (size == 2 and "id" not in obj) or not prompt or prompt.isspace():
        return None  # isspace: blank as strip() sees it, without copying the prompt
    job_id = obj.get("id")
    if type(job_id) is str and job_id:
        return job_id, prompt
    if type(job_id) is int:
        return str(job_id), prompt
    if job_id is None:
        return _job_id(None, "id", line, source), prompt
    return None  # a float, an empty string, another type: parse_object says what is wrong


def read_item(raw: bytes | None, line: int, source: str, obj: Any = None) -> Job | InvalidLine:
    """One non-blank line (None: one over MAX_LINE_BYTES) as a Job or an InvalidLine; ``obj``:
    the line already read as JSON, if it was (None: read it; a JSON null is read again). The
    duplicate-id check is the reader's (`read_jobs`), which sees every line."""
    if raw is None:
        return InvalidLine(
            line, source, f"line longer than {MAX_LINE_BYTES} bytes", kind="line_too_long"
        )
    try:
        if obj is None:
            return parse_line(raw, line, source)
        return parse_object(obj, raw, line, source)
    except JobError as exc:
        return InvalidLine(line, source, str(exc), _best_effort_id(raw), exc.kind)


def _exact_ids(raw: bytes, obj: dict[str, Any]) -> dict[str, Any]:
    """orjson reads an integer beyond 64 bits as a float; the standard library keeps it exact,
    so a 23-digit integer id stays that id, as its digits (no JSON encoder downstream has to
    handle an integer beyond 64 bits); a genuine float id is still refused."""
    import json

    exact = json.loads(raw)
    obj = dict(obj)
    for key in ("id", "custom_id"):
        if isinstance(exact.get(key), int) and not isinstance(exact.get(key), bool):
            obj[key] = str(exact[key])
    return obj


def _best_effort_id(raw: bytes) -> str | None:
    """The id of a line that failed validation, so its error result can name it."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        if isinstance(obj.get("id"), float) or isinstance(obj.get("custom_id"), float):
            obj = _exact_ids(raw, obj)  # a 23-digit integer id, read exactly
        value = obj.get("id", obj.get("custom_id"))
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


_BLOCK = 1 << 20


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, bytes) with endings stripped; None for a line over MAX_LINE_BYTES."""
    for first, lines in _line_blocks(stream):
        yield from zip(count(first), lines)


def _line_blocks(stream: IO[bytes]) -> Iterator[tuple[int, list[bytes | None]]]:
    """The lines of `stream` a block at a time: (number of the first, the lines with their
    endings stripped, None for one over MAX_LINE_BYTES).

    Read a block at a time (`read1`: what a pipe has now, so a slow producer's lines are not
    held back) and split in C: a `readline` per line cost as much as parsing it. A line over
    the limit is skipped without being kept, whatever its length.
    """
    number = 1  # of the next line
    pending: list[bytes] = []  # the unfinished line's pieces so far
    held = 0  # their length; -1 while skipping a line over the limit
    read = getattr(stream, "read1", None) or stream.read
    while True:
        block = read(_BLOCK)
        if not block:
            if not pending and held == 0:
                return
            block = b"\n"  # the end finishes the last line, which had no newline
        lines: list[bytes | None] = list(block.split(b"\n"))
        last = lines.pop()  # what follows the block's last newline: an unfinished line
        if lines:
            _finish(lines, pending, held, number, len(block), b"\r" in block)
            pending, held = [], 0
            yield number, lines
            number += len(lines)
        if last and held >= 0:
            pending.append(last)
            held += len(last)
            if held > MAX_LINE_BYTES:
                pending, held = [], -1


def _finish(
    lines: list[bytes | None], pending: list[bytes], held: int, number: int, size: int, cr: bool
) -> None:
    """Complete a block's lines in place: the first one with the pieces before it, None for a
    line over the limit, no byte order mark on line 1, no line ending."""
    first = lines[0]
    if held < 0:
        lines[0] = None
    elif pending:
        lines[0] = first = b"".join([*pending, first or b""])
    if first is not None and first.endswith(b"\r"):
        cr = True
    # Past the first, a line is no longer than its block: look at each only in a huge block.
    if (first is not None and len(first) > MAX_LINE_BYTES) or size > MAX_LINE_BYTES:
        for i, line in enumerate(lines):
            if line is not None and len(line) > MAX_LINE_BYTES:
                lines[i] = None
    if number == 1 and (line := lines[0]) is not None and line.startswith(b"\xef\xbb\xbf"):
        lines[0] = line[3:]  # a UTF-8 byte order mark
    if cr:
        lines[:] = [None if line is None else line.rstrip(b"\r\n") for line in lines]


def open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


_MASK_64 = (1 << 64) - 1


class IdSet:
    """The job ids seen so far, as 64-bit hashes in an open-addressing table.

    16 bytes per id (the table is kept at most half full) instead of about 70 for a Python set
    of ints, so checking a million-job file for duplicate ids costs 16 MB rather than 70. Two
    distinct ids share a 64-bit hash with odds of about 3 in 10^8 in a million-job file.
    """

    def __init__(self) -> None:
        self._slots = array("Q", [0]) * 1024
        self._count = 0

    def add(self, job_id: str) -> bool:
        """Record the id; False when it was already there."""
        return not self.seen_before((job_id,))

    def seen_before(self, ids: Iterable[str | None]) -> list[int]:
        """Record every id (None: no id, skipped); the positions of those already there.

        `add` for a batch, in one loop: it is the one per-job step left to the process that
        writes `tierline classify`'s results while workers tier them.
        """
        again = []
        # Python's own string hash: 64 bits, keyed per process (all this set needs), and cached
        # on the string; a tenth of the cost of a cryptographic digest per job.
        slots, count = self._slots, self._count
        mask = len(slots) - 1
        for position, job_id in enumerate(ids):
            if job_id is None:
                continue
            digest = hash(job_id) & _MASK_64 or 1  # 0 marks an empty slot
            i = digest & mask
            while slots[i]:
                if slots[i] == digest:
                    again.append(position)
                    break
                i = (i + 1) & mask
            else:
                slots[i] = digest
                count += 1
                if count * 2 > mask:
                    self._count = count
                    self._grow()
                    slots, mask = self._slots, len(self._slots) - 1
        self._count = count
        return again

    def _grow(self) -> None:
        old, self._slots = self._slots, array("Q", [0]) * (len(self._slots) * 2)
        mask = len(self._slots) - 1
        slots = self._slots
        for digest in filter(None, old):  # 0 marks an empty slot
            i = digest & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = digest

    def __len__(self) -> int:
        return self._count


def read_jobs(
    paths: Sequence[str], opener: Callable[[str], IO[bytes]] | None = None
) -> Iterator[Job | InvalidLine]:
    """Stream jobs from JSONL files ('-' is stdin), one item per non-blank line, in order.

    Blank lines are skipped (they are not jobs). Every other line yields a Job or an
    InvalidLine; duplicate ids are InvalidLines after the first. `opener` opens each path
    (default: a local file; --engine ray also serves URIs, tierline/ray/inputs.py).
    """
    seen = IdSet()
    for path in paths:
        stream = (opener or open_input)(path)
        try:
            yield from _read_one(stream, path, seen)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def _read_one(stream: IO[bytes], source: str, seen: IdSet) -> Iterator[Job | InvalidLine]:
    for number, raw in _lines(stream):
        if raw is not None and not raw.strip():
            continue
        item = read_item(raw, number, source)
        if isinstance(item, Job) and not seen.add(item.id):
            yield duplicate(item.id, number, source)
            continue
        yield item


def duplicate(job_id: str, line: int, source: str) -> InvalidLine:
    """The InvalidLine of a job whose id an earlier line of the run already had."""
    return InvalidLine(line, source, f"duplicate id {job_id!r}", job_id, "duplicate_id")


def raw_lines(paths: Sequence[str]) -> Iterator[tuple[str, Sequence[int], list[bytes | None]]]:
    """(source, line numbers, bytes) of the non-blank lines of `paths`, in order, unparsed
    (None for a line over MAX_LINE_BYTES), a block of lines at a time: `read_jobs` without
    the parsing, for a reader that parses elsewhere (`tierline classify`'s worker processes).
    """
    for path in paths:
        stream = open_input(path)
        try:
            for first, lines in _line_blocks(stream):
                if _objects_only(lines):  # the common block: nothing to skip, nothing to number
                    yield path, range(first, first + len(lines)), lines
                    continue
                kept = [
                    (n, raw) for n, raw in zip(count(first), lines) if raw is None or raw.strip()
                ]
                yield path, [n for n, _ in kept], [raw for _, raw in kept]
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def _objects_only(lines: list[bytes | None]) -> bool:
    """Whether every line starts with '{' (so none is blank or over the limit), checked in C
    rather than a Python step per line."""
    try:
        return all(map(bytes.startswith, cast(list[bytes], lines), repeat(b"{")))
    except TypeError:  # a None: a line over the limit
        return False


def jobs_from_lines(
    lines: Iterable[str | bytes], source: str = "<memory>"
) -> Iterator[Job | InvalidLine]:
    """Parse jobs from in-memory lines (for library users and tests)."""
    data = b"\n".join(s.encode() if isinstance(s, str) else s for s in lines)
    yield from _read_one(io.BytesIO(data), source, IdSet())


class ResultWriter:
    """Writes one JSON line per result to a file or stdout.

    A file is written under a temporary name beside it and moved into place by `commit()`, so a
    Makefile target or a downstream job never sees a half-written file as complete.
    """

    def __init__(self, path: str | None, *, flush_each: bool = True) -> None:
        self.path = path
        self.flush_each = flush_each
        self.count = 0
        if path is None or path == "-":
            self._tmp: str | None = None
            self._stream: IO[bytes] = sys.stdout.buffer
        else:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise UsageError(f"cannot write {path}: directory {directory} does not exist")
            self._tmp = f"{path}.partial"
            self._stream = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit()/close()

    def write(self, record: Result | Mapping[str, Any]) -> None:
        """One line: a `Result`'s, or a record of its own (`tierline classify`'s jobs)."""
        if isinstance(record, Result):
            record = record.to_dict()
        self._stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.count += 1
        if self.flush_each:
            self._stream.flush()

    def write_lines(self, data: bytes, count: int) -> None:
        """``count`` result lines already serialised, each ending in a newline."""
        self._stream.write(data)
        self.count += count
        if self.flush_each:
            self._stream.flush()

    def commit(self) -> None:
        """Flush, fsync and move the file into place."""
        self._stream.flush()
        if self._tmp is not None and self.path is not None:
            os.fsync(self._stream.fileno())
            self._stream.close()
            os.replace(self._tmp, self.path)
            self._tmp = None

    def close(self) -> None:
        """Close without committing (a crashed run leaves its `.partial` file for inspection)."""
        if self._tmp is not None and not self._stream.closed:
            self._stream.close()
