"""A fake of vLLM's OpenAI-compatible server (``vllm serve``): admission control, /metrics, /health."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakes._chat import ChatFake, Structured
from tests.fakes._content import Completion
from tests.fakes._core import Routes, SlotPool, prometheus_text

__all__ = ["FakeVLLM"]

JSON = Any
PROTECTED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
QUEUE_FULL = "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance."
_ERROR_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


class FakeVLLM(ChatFake):
    """vLLM on 127.0.0.1: ``with FakeVLLM(max_num_seqs=4, max_queued=2) as srv: ...``.

    ``max_num_seqs`` requests run at once (each takes ``latency_ms``); up to ``max_queued`` wait
    (``None``: unbounded, vLLM's default); beyond that 503 ``Service Unavailable``. ``/metrics``
    reports the live running/waiting counts; ``override_metric`` pins a gauge for backpressure
    tests; ``set_engine_dead()`` makes ``/health`` answer 503.
    """

    name = "vllm"
    owned_by = "vllm"
    context_error = ("BadRequestError", 400)

    def __init__(
        self,
        *,
        model: str = "Qwen/Qwen2.5-1.5B-Instruct",
        served_model_name: str | None = None,
        max_model_len: int = 32_768,
        max_num_seqs: int = 256,
        max_queued: int | None = None,
        enable_prompt_tokens_details: bool = False,
        version: str = "0.33.0",
        **kwargs: Any,
    ) -> None:
        super().__init__(models=[served_model_name or model], **kwargs)
        self.root = model
        self.context_window = max_model_len
        self.pool = SlotPool(max_num_seqs, max_queued)
        self.prompt_details = enable_prompt_tokens_details
        self.version = version
        self.engine_dead = False
        self.metric_overrides: dict[str, float] = {}
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "request_success": 0}

    def add_routes(self, routes: Routes) -> None:
        super().add_routes(routes)
        routes.get("/health", self.handle_health)
        routes.get("/version", self.handle_version)
        routes.get("/metrics", self.handle_metrics)

    # --- controls --------------------------------------------------------------------------------

    def set_engine_dead(self, dead: bool = True) -> None:
        """A dead engine: ``/health`` 503, inference 500."""
        self.engine_dead = dead

    def override_metric(self, name: str, value: float | None) -> None:
        """Pin a gauge (e.g. ``vllm:kv_cache_usage_perc``) to ``value``; ``None`` unpins it."""
        if value is None:
            self.metric_overrides.pop(name, None)
        else:
            self.metric_overrides[name] = value

    # --- wire format -------------------------------------------------------------------------------

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
        default_message = QUEUE_FULL if status == 503 else f"HTTP {status}"
        error = {
            "message": message or default_message,
            "type": error_type
            or ("Service Unavailable" if status == 503 else _ERROR_TYPES.get(status, "Error")),
            "param": param,
            "code": code if isinstance(code, int) else status,
        }
        return self.json({"error": error}, status=status, headers=headers)

    def gate(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or not request.path.startswith(PROTECTED_PREFIXES):
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.json({"error": "Unauthorized"}, status=401)
        return None

    # --- chat ----------------------------------------------------------------------------------------

    def validate_chat(self, body: Mapping[str, JSON]) -> web.Response | None:
        problem = super().validate_chat(body)
        if problem is None and body["model"] not in self.models:
            return self.error_response(
                404, f"The model `{body['model']}` does not exist.", param="model"
            )
        return problem

    def structured_output(self, body: Mapping[str, JSON]) -> Structured | web.Response:
        # guided_json & co. were removed: vLLM ignores them with a warning, output unconstrained.
        outputs = body.get("structured_outputs")
        if isinstance(outputs, Mapping):
            if isinstance(outputs.get("json"), Mapping):
                return outputs["json"], False
            if outputs.get("json_object"):
                return None, True
        return super().structured_output(body)

    def admit(self, body: Mapping[str, JSON], completion: Completion) -> web.Response | None:
        if self.engine_dead:
            return self.error_response(
                500, "EngineCore encountered an issue. See stack trace (above) for the root cause."
            )
        if self.pool.full:
            self.pool.rejected += 1
            return self.error_response(503, QUEUE_FULL)
        self.counters["prompt_tokens"] += completion.prompt_tokens
        self.counters["generation_tokens"] += completion.completion_tokens
        self.counters["request_success"] += 1
        return None

    def compute(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self.pool.slot()

    def message_payload(self, completion: Completion) -> dict[str, JSON]:
        return {
            "role": "assistant",
            "content": completion.text if completion.refusal is None else None,
            "refusal": completion.refusal,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning": None,
        }

    def usage_payload(self, completion: Completion) -> dict[str, JSON]:
        usage = super().usage_payload(completion)
        del usage["completion_tokens_details"]
        usage["prompt_tokens_details"] = (
            {"cached_tokens": completion.cached_tokens} if self.prompt_details else None
        )
        return usage

    def chat_payload(self, completion: Completion) -> dict[str, JSON]:
        payload = super().chat_payload(completion)
        payload["choices"][0].update(stop_reason=None, token_ids=None)
        payload.update(
            service_tier=None,
            system_fingerprint=None,
            prompt_logprobs=None,
            prompt_token_ids=None,
            kv_transfer_params=None,
        )
        return payload

    def model_entry(self, model: str) -> dict[str, JSON]:
        entry = super().model_entry(model)
        entry.update(
            root=self.root,
            parent=None,
            max_model_len=self.context_window,
            permission=[
                {
                    "id": f"modelperm-{model.replace('/', '-')}",
                    "object": "model_permission",
                    "created": self.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        )
        return entry

    # --- operational endpoints ---------------------------------------------------------------------

    async def handle_health(self, _request: web.Request) -> web.Response:
        return web.Response(status=503 if self.engine_dead else 200)

    async def handle_version(self, _request: web.Request) -> web.Response:
        return self.json({"version": self.version})

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        labels = {"engine": "0", "model_name": self.models[0]}
        waiting = len(self.pool.waiting)
        gauges = {
            "vllm:num_requests_running": float(self.pool.running),
            "vllm:num_requests_waiting": float(waiting),
            "vllm:kv_cache_usage_perc": self.pool.running / self.pool.slots,
        }
        gauges.update((k, v) for k, v in self.metric_overrides.items() if k in gauges)
        samples = [
            (
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                labels,
                gauges["vllm:num_requests_running"],
            ),
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                labels,
                gauges["vllm:num_requests_waiting"],
            ),
            (
                "vllm:num_requests_waiting_by_reason",
                "gauge",
                "Number of requests waiting, by reason.",
                {**labels, "reason": "capacity"},
                gauges["vllm:num_requests_waiting"],
            ),
            (
                "vllm:num_requests_waiting_by_reason",
                "gauge",
                "Number of requests waiting, by reason.",
                {**labels, "reason": "deferred"},
                0.0,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                labels,
                gauges["vllm:kv_cache_usage_perc"],
            ),
            (
                "vllm:admission_rejections_total",
                "counter",
                "Requests rejected at admission.",
                {**labels, "reason": "max_num_queued_reqs"},
                float(self.pool.rejected),
            ),
            (
                "vllm:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                labels,
                float(self.counters["prompt_tokens"]),
            ),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                labels,
                float(self.counters["generation_tokens"]),
            ),
            (
                "vllm:request_success_total",
                "counter",
                "Count of successfully processed requests.",
                {**labels, "finished_reason": "stop"},
                float(self.counters["request_success"]),
            ),
        ]
        return web.Response(
            text=prometheus_text(samples), content_type="text/plain", charset="utf-8"
        )
