"""Fakes of llama.cpp's ``llama-server`` and of ``python -m llama_cpp.server``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from tests.fakes._chat import ChatFake, Structured
from tests.fakes._content import Completion
from tests.fakes._core import STARTED, Routes, SlotPool, prometheus_text

__all__ = ["FakeLlamaCppPython", "FakeLlamaServer"]

JSON = Any
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
_OPEN_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models"})


class FakeLlamaServer(ChatFake):
    """llama.cpp ``llama-server`` on 127.0.0.1: ``with FakeLlamaServer(n_parallel=2) as srv: ...``.

    ``n_parallel`` slots run at once and surplus requests wait FIFO (never refused). For
    ``loading_seconds`` after start every endpoint answers 503 "Loading model";
    ``finish_loading()`` ends that at once. ``response_format`` may be ``json_object`` (with an
    optional ``schema``) or OpenAI's ``json_schema``; a top-level ``json_schema`` works too.
    """

    name = "llama-server"
    owned_by = "llamacpp"
    context_error = ("exceed_context_size_error", 400)

    def __init__(
        self,
        *,
        model: str = "SmolLM2-135M-Instruct-Q8_0.gguf",
        n_parallel: int = 4,
        n_ctx: int = 8192,
        loading_seconds: float = 0.0,
        metrics: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(models=[model], **kwargs)
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        self.context_window = n_ctx // n_parallel
        self.loading_seconds = loading_seconds
        self.metrics_enabled = metrics
        self.pool = SlotPool(n_parallel)
        self.counters = {"prompt_tokens": 0, "tokens_predicted": 0, "n_decode": 0}
        self._ready_at = float("inf")
        self._task_ids = 0

    def add_routes(self, routes: Routes) -> None:
        super().add_routes(routes)
        for path in ("/health", "/v1/health"):
            routes.get(path, self.handle_health)
        routes.get("/models", self.handle_models)
        routes.get("/slots", self.handle_slots)
        routes.get("/metrics", self.handle_metrics)
        routes.get("/props", self.handle_props)

    def start(self) -> FakeLlamaServer:
        self._ready_at = time.monotonic() + self.loading_seconds
        super().start()
        return self

    def finish_loading(self) -> None:
        """End the warm-up now: ``/health`` answers 200 from here on."""
        self._ready_at = 0.0

    @property
    def loading(self) -> bool:
        return time.monotonic() < self._ready_at

    # --- wire format ---------------------------------------------------------------------------

    def error_response(
        self,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        error = {
            "code": code if isinstance(code, int) else status,
            "message": message or f"HTTP {status}",
            "type": error_type or _ERROR_TYPES.get(status, "server_error"),
        }
        return self.json({"error": error}, status=status, headers=headers)

    def gate(self, request: web.Request) -> web.Response | None:
        if self.loading:
            return self.error_response(503, "Loading model")
        if self.api_key is None or request.path in _OPEN_PATHS:
            return None
        key = request.headers.get("X-Api-Key") or self.bearer_token(request)
        if key not in self.api_key.split(","):
            return self.error_response(401, "Invalid API Key")
        return None

    # --- chat ----------------------------------------------------------------------------------

    def validate_chat(self, body: Mapping[str, JSON]) -> web.Response | None:
        if not isinstance(body.get("messages"), list):
            return self.error_response(400, "'messages' is required")
        return None

    def structured_output(self, body: Mapping[str, JSON]) -> Structured | web.Response:
        if "json_schema" in body and "grammar" in body:
            return self.error_response(
                400, 'Either "json_schema" or "grammar" can be specified, but not both'
            )
        if isinstance(body.get("json_schema"), Mapping):
            return body["json_schema"], False
        fmt = body.get("response_format")
        if fmt is None:
            return None, False
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind == "json_object":
            schema = fmt.get("schema")
            return (schema, False) if isinstance(schema, Mapping) else ({"type": "object"}, False)
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            return (schema if isinstance(schema, Mapping) else {"type": "object"}), False
        if kind == "text":
            return None, False
        return self.error_response(
            400, f'response_format type must be one of "text" or "json_object", but got: {kind}'
        )

    @contextlib.asynccontextmanager
    async def compute(self) -> AsyncIterator[None]:
        async with self.pool.slot():
            self._task_ids += 1
            yield

    def admit(self, body: Mapping[str, JSON], completion: Completion) -> web.Response | None:
        self.counters["prompt_tokens"] += completion.prompt_tokens
        self.counters["tokens_predicted"] += completion.completion_tokens
        self.counters["n_decode"] += max(completion.completion_tokens, 1)
        return None

    def message_payload(self, completion: Completion) -> dict[str, JSON]:
        return {"role": "assistant", "content": completion.text}

    def usage_payload(self, completion: Completion) -> dict[str, JSON]:
        return {
            "completion_tokens": completion.completion_tokens,
            "prompt_tokens": completion.prompt_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
        }

    def chat_payload(self, completion: Completion) -> dict[str, JSON]:
        payload = super().chat_payload(completion)
        ms = max(self.latency * 1000, 0.001)
        payload["system_fingerprint"] = "b6700-0c1e570"
        payload["timings"] = {
            "cache_n": completion.cached_tokens,
            "prompt_n": completion.prompt_tokens - completion.cached_tokens,
            "prompt_ms": ms / 4,
            "prompt_per_token_ms": ms / 4 / max(completion.prompt_tokens, 1),
            "prompt_per_second": completion.prompt_tokens / (ms / 4) * 1000,
            "predicted_n": completion.completion_tokens,
            "predicted_ms": ms * 3 / 4,
            "predicted_per_token_ms": ms * 3 / 4 / max(completion.completion_tokens, 1),
            "predicted_per_second": completion.completion_tokens / (ms * 3 / 4) * 1000,
        }
        return payload

    # --- operational endpoints ---------------------------------------------------------------------

    async def handle_health(self, _request: web.Request) -> web.Response:
        return self.json({"status": "ok"})

    async def handle_slots(self, request: web.Request) -> web.Response:
        busy = self.pool.running
        if request.query.get("fail_on_no_slot") == "1" and busy >= self.n_parallel:
            return self.error_response(503, "no slot available")
        slots = [
            {
                "id": i,
                "id_task": self._task_ids - i if i < busy else -1,
                "n_ctx": self.context_window,
                "speculative": False,
                "is_processing": i < busy,
                "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
                "next_token": {"has_next_token": i < busy, "n_remain": -1, "n_decoded": 0},
            }
            for i in range(self.n_parallel)
        ]
        return self.json(slots)

    async def handle_props(self, _request: web.Request) -> web.Response:
        return self.json(
            {
                "total_slots": self.n_parallel,
                "model_path": self.models[0],
                "default_generation_settings": {"n_ctx": self.context_window},
                "build_info": "b6700-0c1e570",
            }
        )

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        if not self.metrics_enabled:
            return self.error_response(
                501, "This server does not support metrics endpoint. Start it with `--metrics`"
            )
        c = self.counters
        samples: list[tuple[str, str, str, dict[str, str], float]] = [
            (
                "llamacpp:prompt_tokens_total",
                "counter",
                "Number of prompt tokens processed.",
                {},
                c["prompt_tokens"],
            ),
            (
                "llamacpp:tokens_predicted_total",
                "counter",
                "Number of generation tokens processed.",
                {},
                c["tokens_predicted"],
            ),
            (
                "llamacpp:n_decode_total",
                "counter",
                "Total number of llama_decode() calls",
                {},
                c["n_decode"],
            ),
            (
                "llamacpp:n_tokens_max",
                "counter",
                "Largest observed n_tokens.",
                {},
                float(self.n_ctx // self.n_parallel),
            ),
            (
                "llamacpp:prompt_tokens_seconds",
                "gauge",
                "Average prompt throughput in tokens/s.",
                {},
                1000.0,
            ),
            (
                "llamacpp:predicted_tokens_seconds",
                "gauge",
                "Average generation throughput in tokens/s.",
                {},
                100.0,
            ),
            (
                "llamacpp:requests_processing",
                "gauge",
                "Number of requests processing.",
                {},
                self.pool.running,
            ),
            (
                "llamacpp:requests_deferred",
                "gauge",
                "Number of requests deferred.",
                {},
                len(self.pool.waiting),
            ),
        ]
        return web.Response(
            text=prometheus_text(samples), content_type="text/plain", charset="utf-8"
        )


class FakeLlamaCppPython(ChatFake):
    """``python -m llama_cpp.server``: strictly serial, no ``/health``, ``json_schema`` -> HTTP 500.

    Its pydantic request model only knows ``text`` and ``json_object`` (optionally with
    ``schema``); anything else escapes as a 500 ``internal_server_error``, which SDKs retry.
    """

    name = "llama-cpp-python"
    owned_by = "me"

    def __init__(
        self,
        *,
        model: str = "/models/SmolLM2-135M-Instruct-Q8_0.gguf",
        n_ctx: int = 2048,
        **kwargs: Any,
    ) -> None:
        super().__init__(models=[model], **kwargs)
        self.context_window = n_ctx
        self.pool = SlotPool(1)

    def error_response(
        self,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        default_type = "invalid_request_error" if status < 500 else "internal_server_error"
        error = {
            "message": message or f"HTTP {status}",
            "type": error_type or default_type,
            "param": param,
            "code": code,
        }
        return self.json({"error": error}, status=status, headers=headers)

    def gate(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and self.bearer_token(request) != self.api_key:
            return self.json({"detail": "Invalid API key"}, status=401)
        return None

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        elapsed = time.monotonic() - request.get(STARTED, time.monotonic())
        response.headers["openai-processing-ms"] = str(int(elapsed * 1000))

    def validate_chat(self, body: Mapping[str, JSON]) -> web.Response | None:
        if not isinstance(body.get("messages"), list):
            return self.error_response(
                500,
                "1 validation error for CreateChatCompletionRequest\nmessages\n  "
                "Field required [type=missing]",
            )
        return None

    def structured_output(self, body: Mapping[str, JSON]) -> Structured | web.Response:
        fmt = body.get("response_format")
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if fmt is None or kind == "text":
            return None, False
        if kind == "json_object":
            schema = fmt.get("schema")
            return (schema, False) if isinstance(schema, Mapping) else (None, True)
        return self.error_response(
            500,
            "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  "
            f"Input should be 'text' or 'json_object' [type=literal_error, input_value='{kind}', input_type=str]",
        )

    def compute(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self.pool.slot()

    def message_payload(self, completion: Completion) -> dict[str, JSON]:
        return {"role": "assistant", "content": completion.text}

    def usage_payload(self, completion: Completion) -> dict[str, JSON]:
        return {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        }

    def chat_payload(self, completion: Completion) -> dict[str, JSON]:
        payload = super().chat_payload(completion)
        payload["model"] = self.models[0]
        return payload

    def model_entry(self, model: str) -> dict[str, JSON]:
        return {"id": model, "object": "model", "owned_by": self.owned_by, "permissions": []}
