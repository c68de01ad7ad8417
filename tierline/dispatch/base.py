"""The one small backend protocol every backend implements, and the codec protocol under it.

A backend takes a `Request` and returns a `Completion` carrying normalised `Usage`; it never
returns raw SDK objects, and it raises only `tierline.errors.BackendError` subclasses, so the
router and the single retry layer can treat every provider alike. It also reports its own
health (`check`), so `backends check` needs no per-kind code.

An HTTP backend is two parts: a `Codec`, pure functions between a `Request` and a provider's
wire JSON (tested on recorded bodies, no network), and a provider around it that owns the
client, the key and the base URL. The provider batch APIs reuse the same codecs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from typing_extensions import Self

from ..config import Config
from ..jobs import Job, Message, Usage, schema_of
from .health import CheckResult

__all__ = ["Backend", "BaseBackend", "CheckResult", "Codec", "Completion", "Request", "request_for"]


@dataclass(frozen=True, slots=True)
class Request:
    """What a backend is asked to do: provider-neutral, already resolved against defaults."""

    messages: tuple[Message, ...]
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    # {"type": "json_object"} or {"type": "json_object", "schema": {...}} or OpenAI's
    # {"type": "json_schema", "json_schema": {"name", "schema", "strict"?}}; each adapter
    # translates it to what its server understands.
    response_format: Mapping[str, Any] | None = None
    job_id: str | None = None

    @property
    def json_schema(self) -> Mapping[str, Any] | None:
        return schema_of(self.response_format)

    def openai_messages(self) -> list[dict[str, str]]:
        """Messages in Chat Completions form, system prompt first."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.extend({"role": m.role, "content": m.content} for m in self.messages)
        return out


@dataclass(frozen=True, slots=True)
class Completion:
    """A backend's answer."""

    text: str
    finish_reason: str  # "stop", "length", "refusal", ... (provider values normalised)
    usage: Usage
    model: str  # the model the provider says answered
    request_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Rate-limit headers said a window is used up: send nothing more to this backend for this
    # many seconds (0: no pause). The router's limiter acts on it.
    pause_s: float = 0.0


class Codec(Protocol):
    """A wire format: a Request as a provider's JSON body, and its response body as a
    Completion. Pure: no client, no key, no network (tests feed it recorded bodies)."""

    path: str  # where bodies are POSTed, relative to the provider's base URL
    what: str  # what a response is, for errors: "a chat completion"

    def encode(self, request: Request) -> dict[str, Any]:
        """The JSON body for a request."""
        ...

    def decode(self, body: Mapping[str, Any]) -> Completion:
        """A response body as a Completion; raises KeyError/TypeError/... on a foreign shape."""
        ...


@runtime_checkable
class Backend(Protocol):
    """One configured destination for requests (an in-process model, a server, an API)."""

    name: str
    model: str

    async def complete(self, request: Request) -> Completion:
        """Answer one request or raise a BackendError."""
        ...

    async def check(self) -> list[CheckResult]:
        """Health, one row per endpoint: reachable, key accepted, model served."""
        ...

    async def aclose(self) -> None:
        """Release clients, threads and models."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def request_for(job: Job, config: Config, backend: str) -> Request:
    """The request `job` sends to `backend`: its own settings first, then the config's. The
    token limit is `Config.max_tokens_for`, the rule the budget and the plan reserve by."""
    temperature = job.temperature if job.temperature is not None else config.defaults.temperature
    return Request(
        messages=job.messages,
        system=job.system,
        max_tokens=config.max_tokens_for(backend, job),
        temperature=temperature,
        stop=job.stop,
        response_format=job.response_format,
        job_id=job.id,
    )


class BaseBackend:
    """Shared plumbing for backends: async-context-manager support around `aclose`."""

    name: str
    model: str

    async def check(self) -> list[CheckResult]:
        """Without a way to ask, a backend that could be built counts as usable."""
        return [CheckResult(self.name, "", "-", self.model, True)]

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
