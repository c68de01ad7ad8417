"""Chat Completions backends through the official `openai` SDK's async client.

One adapter serves two kinds:

* `openai-compatible`: vLLM, llama.cpp `llama-server`, `python -m llama_cpp.server`, any URL; its
  `flavor` picks the request dialect (below) and how a replica's health is probed. Several
  `base_urls` are replicas, balanced by `ReplicaPool`.
* `openai`: the OpenAI API itself (one endpoint, `max_completion_tokens`, no health probes).

Two parts: `ChatCodec`, the pure wire format (a Request as a body in the server's dialect, a
response body as a Completion), which the OpenAI Batch provider reuses; and
`ChatCompletionsBackend`, the provider (SDK clients per replica, key, base URLs, health).
Requests go through the SDK client's `post()` (see `sdk.send`): the SDK sends the request
(auth, headers, timeouts; its retries are off, ours are the only ones); the raw response gives
the rate-limit headers and a body decoded once with orjson.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import orjson

from ..config import OpenAIBackendConfig, OpenAICompatibleBackendConfig
from ..errors import BackendError
from ..jobs import Usage, schema_of
from .base import BaseBackend, Codec, Completion, Request
from .health import CheckResult, check_endpoint
from .replicas import PROBE_TIMEOUT_S, Backpressure, Replica, ReplicaPool
from .sdk import api_key, decode_json, http_client, import_sdk, root_url, send

__all__ = [
    "DIALECTS",
    "ChatCodec",
    "ChatCompletionsBackend",
    "Dialect",
    "chat_codec",
    "openai_client",
    "parse_chat_completion",
]

INSTALL = "openai[aiohttp]"
JSON = Any
SCHEMA_NAME = "output"  # OpenAI requires json_schema.name (^[a-zA-Z0-9_-]{1,64}$)


def as_json_schema(rf: Mapping[str, JSON]) -> dict[str, JSON]:
    """OpenAI's form: `json_object` + `schema` (llama.cpp's spelling) becomes `json_schema`."""
    schema = schema_of(rf)
    if rf.get("type") == "json_object" and schema is None:
        return {"type": "json_object"}
    if rf.get("type") not in ("json_object", "json_schema"):
        return dict(rf)
    spec = dict(rf.get("json_schema") or {})
    spec.setdefault("name", SCHEMA_NAME)
    spec["schema"] = schema if schema is not None else {"type": "object"}
    return {"type": "json_schema", "json_schema": spec}


def as_json_object(rf: Mapping[str, JSON]) -> dict[str, JSON]:
    """llama_cpp.server's form: its request model knows only `text` and `json_object` (+ an
    optional `schema`); a `json_schema` there fails validation and comes back as HTTP 500."""
    if rf.get("type") not in ("json_object", "json_schema"):
        return dict(rf)
    schema = schema_of(rf)
    return (
        {"type": "json_object", "schema": schema} if schema is not None else {"type": "json_object"}
    )


@dataclass(frozen=True)
class Dialect:
    """How one kind of server wants its requests, and where its health shows."""

    tokens_field: str
    response_format: Callable[[Mapping[str, JSON]], dict[str, JSON]]
    # Health probe URLs, tried in order: "/health" on the server root, "models" = base_url/models.
    health: tuple[str, ...]
    # Whether `model` must name a served model (vLLM answers 404 otherwise); single-model
    # llama.cpp servers answer whatever name is sent.
    strict_model: bool = True


DIALECTS: dict[str, Dialect] = {
    # o-series models reject max_tokens; max_completion_tokens is the current name.
    "openai": Dialect("max_completion_tokens", as_json_schema, ()),
    "vllm": Dialect("max_tokens", as_json_schema, ("/health",)),
    "llama-server": Dialect("max_tokens", as_json_schema, ("/health",), strict_model=False),
    # No /health, /metrics or /slots on python -m llama_cpp.server.
    "llama-cpp-python": Dialect("max_tokens", as_json_object, ("models",), strict_model=False),
    "generic": Dialect("max_tokens", as_json_schema, ("/health", "models"), strict_model=False),
}

_FINISH_REFUSAL = "refusal"


def parse_chat_completion(data: Mapping[str, JSON], fallback_model: str) -> Completion:
    """A Chat Completions response body as a Completion; usage normalised (cached tokens are
    part of prompt_tokens and reasoning tokens part of completion_tokens, as tierline's are)."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content")
    finish = choice.get("finish_reason") or "stop"
    if text is None and message.get("refusal"):
        text, finish = message["refusal"], _FINISH_REFUSAL
    usage = data.get("usage") or {}
    prompt = usage.get("prompt_tokens_details") or {}
    output = usage.get("completion_tokens_details") or {}
    return Completion(
        text=text or "",
        finish_reason=finish,
        usage=Usage(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt.get("cached_tokens") or 0),
            cache_write_tokens=int(prompt.get("cache_write_tokens") or 0),
            reasoning_tokens=int(output.get("reasoning_tokens") or 0),
        ),
        model=str(data.get("model") or fallback_model),
        request_id=data.get("id"),
    )


decode = decode_json  # the name other adapters import


@dataclass(frozen=True)
class ChatCodec:
    """Chat Completions on the wire, in one server dialect. Pure: no client, no network."""

    model: str
    dialect: Dialect
    extra_body: Mapping[str, JSON] = field(default_factory=dict)
    path = "/chat/completions"
    what = "a chat completion"

    def encode(self, request: Request) -> dict[str, JSON]:
        """The JSON body of a request, in this server's dialect."""
        body: dict[str, JSON] = {
            "model": self.model,
            "messages": request.openai_messages(),
            self.dialect.tokens_field: request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if request.response_format:
            body["response_format"] = self.dialect.response_format(request.response_format)
        if self.extra_body:
            body.update(self.extra_body)  # vLLM's extras (top_k, chat_template_kwargs, ...)
        return body

    def decode(self, body: Mapping[str, JSON]) -> Completion:
        return parse_chat_completion(body, self.model)


def chat_codec(config: OpenAICompatibleBackendConfig | OpenAIBackendConfig) -> ChatCodec:
    """The codec of an `openai-compatible` (its flavor's dialect) or `openai` backend."""
    if isinstance(config, OpenAICompatibleBackendConfig):
        return ChatCodec(config.model, DIALECTS[config.flavor], dict(config.extra_body))
    return ChatCodec(config.model, DIALECTS["openai"])


def openai_client(sdk: ModuleType, config: Any, *, url: str, key: str | None, http: Any) -> Any:
    """An `AsyncOpenAI` for one base URL: the SDK's retries off (the one retry layer is
    tierline's, dispatch/retry.py); servers without auth still need a non-empty key."""
    return sdk.AsyncOpenAI(
        api_key=key or "unused",
        base_url=url,
        organization=getattr(config, "organization", None),
        max_retries=0,
        timeout=config.timeout_s,
        http_client=http,
    )


class ChatCompletionsBackend(BaseBackend):
    """`openai` and `openai-compatible` backends (see the module docstring)."""

    def __init__(
        self,
        name: str,
        config: OpenAICompatibleBackendConfig | OpenAIBackendConfig,
        *,
        urls: Sequence[str],
        key: str | None,
        codec: Codec | None = None,
    ) -> None:
        """`codec`: another OpenAI API's wire format on the same provider (default: Chat
        Completions in the config's dialect)."""
        self.name = name
        self.model = config.model
        self.config = config
        self.codec: Codec = codec or chat_codec(config)
        self.dialect = chat_codec(config).dialect  # how the server shows its health
        self._sdk: ModuleType = import_sdk("openai", name, INSTALL)
        self._http = http_client(
            self._sdk,
            config.http_client,
            connections=config.max_concurrency,
            timeout_s=config.timeout_s,
        )
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        replicas = [
            Replica(url, openai_client(self._sdk, config, url=url, key=key, http=self._http))
            for url in urls
        ]
        self.pool = self._pool(config, replicas)

    def _pool(
        self, config: OpenAICompatibleBackendConfig | OpenAIBackendConfig, replicas: list[Replica]
    ) -> ReplicaPool:
        if not isinstance(config, OpenAICompatibleBackendConfig):
            # The OpenAI API: one endpoint, no health probes, no /metrics.
            return ReplicaPool(self.name, replicas, per_replica=config.max_concurrency)
        probes = config.health_check and bool(self.dialect.health)
        backpressure = (
            Backpressure(config.metrics_interval_s, config.max_waiting, config.max_kv_cache_usage)
            if config.metrics
            else None
        )
        return ReplicaPool(
            self.name,
            replicas,
            per_replica=config.max_in_flight_per_replica or config.max_concurrency,
            probe=self._get if probes else None,
            health_urls=self._health_urls,
            health_interval_s=config.health_interval_s,
            backpressure=backpressure,
        )

    async def complete(self, request: Request) -> Completion:
        replica = await self.pool.acquire()
        error: BackendError | None = None
        try:
            return await send(replica.client, self.codec, request, sdk=self._sdk, backend=self.name)
        except BackendError as exc:
            error = exc
            raise
        finally:
            self.pool.release(replica, error)

    # --- health ----------------------------------------------------------------------------------

    def _health_urls(self, replica: Replica) -> list[str]:
        return [
            replica.url + "/models" if path == "models" else root_url(replica.url) + path
            for path in self.dialect.health
        ]

    async def _get(self, _replica: Replica, url: str) -> tuple[int, str]:
        response = await self._http.get(url, headers=self._auth, timeout=PROBE_TIMEOUT_S)
        return int(response.status_code), str(response.text)

    async def check(self) -> list[CheckResult]:
        """Each replica: reachable, key accepted, model served, and how long /models took."""
        results = []
        for replica in self.pool.replicas:
            base = CheckResult(self.name, self.config.kind, replica.url, self.model, False)
            result = await check_endpoint(
                base,
                functools.partial(self._get, replica),
                replica.url + "/models",
                model_listed=self._lists_model,
            )
            if result.reachable and result.auth is None and self.pool.probes:
                # No /models here: the health probe decides.
                result = replace(result, reachable=await self.pool.healthy(replica))
            results.append(result)
        return results

    def _lists_model(self, body: str) -> bool | None:
        try:
            data = orjson.loads(body)
            listed = self.model in {m.get("id") for m in data.get("data", [])}
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return None
        return listed if listed or self.dialect.strict_model else None

    async def aclose(self) -> None:
        await self.pool.aclose()
        await self._http.aclose()


# --- factories (registered in registry.py) --------------------------------------------------------


def openai_compatible(name: str, config: OpenAICompatibleBackendConfig) -> ChatCompletionsBackend:
    key = api_key(name, config.api_key_env)
    return ChatCompletionsBackend(name, config, urls=config.base_urls, key=key)


def openai_api(name: str, config: OpenAIBackendConfig) -> ChatCompletionsBackend:
    key = api_key(name, config.api_key_env)
    return ChatCompletionsBackend(name, config, urls=[config.endpoint], key=key)
