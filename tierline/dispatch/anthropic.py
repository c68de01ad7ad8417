"""Anthropic Messages through the official `anthropic` SDK's async client.

Structured output: a job's `response_format` becomes Messages' native structured outputs,
`output_config={"format": {"type": "json_schema", "schema": ...}}` (plain JSON mode gets the
schema `{"type": "object"}`). Prefilling `{` is refused by newer models and a forced tool call
wraps the answer in a tool block; the native form is what the API documents for JSON answers.
A model that does not support it answers 400, which is reported, never retried.

Usage: Anthropic's `input_tokens` excludes cache reads and writes; the adapter adds them back so
that `Usage.input_tokens` is the whole prompt, as for every other provider.

Two parts: `MessagesCodec`, the pure wire format (reused by the Message Batches provider), and
`AnthropicBackend`, the provider (SDK client, key, base URL, health).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..config import AnthropicBackendConfig
from ..jobs import Usage
from .base import BaseBackend, Completion, Request
from .health import CheckResult, check_endpoint
from .sdk import api_key, http_client, import_sdk, send

__all__ = [
    "AnthropicBackend",
    "MessagesCodec",
    "anthropic_client",
    "messages_codec",
    "parse_message",
]

JSON = Any
VERSION = "2023-06-01"  # for the plain GET of `check`; the SDK sends its own on messages

# Anthropic's stop reasons in OpenAI's words (what results report across providers).
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "refusal",
}


def parse_message(data: Mapping[str, JSON], fallback_model: str) -> Completion:
    """A Messages response body as a Completion, with usage normalised."""
    text = "".join(
        block.get("text", "") for block in data["content"] if block.get("type") == "text"
    )
    stop = data.get("stop_reason") or "end_turn"
    usage = data.get("usage") or {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    return Completion(
        text=text,
        finish_reason=STOP_REASONS.get(stop, stop),
        usage=Usage(
            input_tokens=int(usage.get("input_tokens") or 0) + read + write,
            output_tokens=int(usage.get("output_tokens") or 0),
            cached_tokens=read,
            cache_write_tokens=write,
        ),
        model=str(data.get("model") or fallback_model),
        request_id=data.get("id"),
    )


@dataclass(frozen=True)
class MessagesCodec:
    """Anthropic Messages on the wire. Pure: no client, no network."""

    model: str
    path = "/v1/messages"
    what = "a message"

    def encode(self, request: Request) -> dict[str, JSON]:
        """The JSON body of a Messages request."""
        # Messages takes the system prompt apart from the turns.
        system = [request.system] if request.system else []
        system += [m.content for m in request.messages if m.role == "system"]
        body: dict[str, JSON] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            # Anthropic accepts 0..1; a job written for OpenAI (0..2) is clamped, not refused.
            body["temperature"] = min(request.temperature, 1.0)
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.response_format and request.response_format.get("type") != "text":
            schema = request.json_schema or {"type": "object"}
            body["output_config"] = {"format": {"type": "json_schema", "schema": dict(schema)}}
        return body

    def decode(self, body: Mapping[str, JSON]) -> Completion:
        return parse_message(body, self.model)


def messages_codec(config: AnthropicBackendConfig) -> MessagesCodec:
    return MessagesCodec(config.model)


def anthropic_client(sdk: ModuleType, config: Any, *, key: str | None, http: Any) -> Any:
    """An `AsyncAnthropic` on the backend's URL; the SDK's retries off (the one retry layer
    is tierline's, dispatch/retry.py)."""
    return sdk.AsyncAnthropic(
        api_key=key,
        base_url=config.endpoint.rstrip("/"),
        max_retries=0,
        timeout=config.timeout_s,
        http_client=http,
    )


class AnthropicBackend(BaseBackend):
    """Claude models through the Messages API."""

    def __init__(self, name: str, config: AnthropicBackendConfig) -> None:
        self.name = name
        self.model = config.model
        self.config = config
        self.codec = messages_codec(config)
        self._sdk: ModuleType = import_sdk("anthropic", name, "anthropic")
        self._key = api_key(name, config.api_key_env)
        self._url = config.endpoint.rstrip("/")
        self._http = http_client(
            self._sdk,
            config.http_client,
            connections=config.max_concurrency,
            timeout_s=config.timeout_s,
        )
        self._client = anthropic_client(self._sdk, config, key=self._key, http=self._http)

    async def complete(self, request: Request) -> Completion:
        return await send(self._client, self.codec, request, sdk=self._sdk, backend=self.name)

    async def check(self) -> list[CheckResult]:
        """GET /v1/models/{model}: reachable, key accepted, model known (aliases resolve)."""
        headers = {"x-api-key": self._key or "", "anthropic-version": VERSION}

        async def get(url: str) -> tuple[int, str]:
            response = await self._http.get(url, headers=headers, timeout=10.0)
            return int(response.status_code), str(response.text)

        base = CheckResult(self.name, self.config.kind, self._url, self.model, False)
        result = await check_endpoint(
            base,
            get,
            f"{self._url}/v1/models/{self.model}",
            model_listed=lambda _body: True,
            not_found_means_no_model=True,
        )
        return [result]

    async def aclose(self) -> None:
        await self._http.aclose()
