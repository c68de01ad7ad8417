"""A fake of the Anthropic API: Messages and the stateful Message Batches API."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakes._batches import (
    BatchBook,
    BatchJob,
    BatchLine,
    dumps_lines,
    line_script,
    response_body,
)
from tests.fakes._content import Completion, Reply, resolve_completion
from tests.fakes._core import FakeServer, Fault, RateLimits, Routes, new_id, rfc3339

__all__ = ["FakeAnthropic"]

JSON = Any
MB = 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ERROR_DEFAULTS: Mapping[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}


class FakeAnthropic(FakeServer):
    """Anthropic on 127.0.0.1: ``with FakeAnthropic() as srv: Anthropic(base_url=srv.base_url, ...)``.

    Accepts ``x-api-key`` and ``Authorization: Bearer``, any ``anthropic-version``. The prompt is
    split into ``input_tokens`` + ``cache_read_input_tokens`` + ``cache_creation_input_tokens``
    using ``cache_read_tokens``/``cache_creation_tokens``. Batches move only when the test says so
    (``advance_batches``, ``complete_batch``, ``progress_batch``, ``expire_batch``) or on each
    retrieve with ``auto_advance=True``.
    """

    name = "anthropic"
    sdk_suffix = ""
    inference_paths = frozenset({"/v1/messages"})
    default_fault_mix = (
        Fault(status=429, headers={"retry-after": "0"}),
        Fault(status=500),
        Fault(status=529),
        Fault(kind="reset"),
        Fault(kind="malformed"),
        Fault(kind="slow", delay=0.2),
    )

    def __init__(
        self,
        *,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
        rpm: int | None = None,
        tpm: int | None = None,
        rate_window: float = 60.0,
        auto_advance: bool = False,
        max_batch_requests: int = 100_000,
        max_batch_bytes: int = 256 * MB,
        models: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.reply_defaults = Reply(
            cached_tokens=cache_read_tokens, cache_creation_tokens=cache_creation_tokens
        )
        self.limits = RateLimits(
            {
                "requests": (rpm, 4_000),
                "tokens": (tpm, 2_000_000),
                "input-tokens": (None, 1_600_000),
                "output-tokens": (None, 400_000),
            },
            rate_window,
        )
        self.auto_advance = auto_advance
        self.max_batch_requests = max_batch_requests
        self.max_batch_bytes = max_batch_bytes
        self.batches = BatchBook(self._run_line, seed=self.rng.randrange(1 << 30))
        self.results: dict[str, bytes] = {}

    def add_routes(self, routes: Routes) -> None:
        routes.post("/v1/messages", self.handle_messages)
        routes.post("/v1/messages/batches", self.handle_create_batch)
        routes.get("/v1/messages/batches", self.handle_list_batches)
        routes.get("/v1/messages/batches/{id}", self.handle_get_batch)
        routes.delete("/v1/messages/batches/{id}", self.handle_delete_batch)
        routes.post("/v1/messages/batches/{id}/cancel", self.handle_cancel_batch)
        routes.get("/v1/messages/batches/{id}/results", self.handle_results)
        routes.get("/v1/models/{id}", self.handle_model)

    async def handle_model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{id}``: every model id (or alias) exists unless ``models`` is set."""
        model = request.match_info["id"]
        if self.models is not None and model not in self.models:
            return self.error_response(404, f"model: {model}")
        created = rfc3339(time.time() - 86400, micros=False)
        return self.json(
            {"type": "model", "id": model, "display_name": model, "created_at": created}
        )

    def body_limit(self, path: str) -> int:
        return self.max_batch_bytes if path == "/v1/messages/batches" else 32 * MB

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
        default_type, default_message = _ERROR_DEFAULTS.get(
            status, ("api_error", "Internal server error")
        )
        body = self.error_body(status, message or default_message, error_type or default_type)
        return self.json(
            body, status=status, headers={"request-id": body["request_id"], **(headers or {})}
        )

    @staticmethod
    def error_body(
        status: int, message: str, error_type: str | None = None, request_id: str | None = ""
    ) -> dict[str, JSON]:
        kind = error_type or _ERROR_DEFAULTS.get(status, ("api_error", ""))[0]
        rid = new_id("req_011", 21) if request_id == "" else request_id
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}

    def gate(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None:
            key = request.headers.get("x-api-key") or self.bearer_token(request)
            if not key:
                return self.error_response(401, "x-api-key header is required")
            if key != self.api_key:
                return self.error_response(401, "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return self.error_response(400, "anthropic-version: header is required")
        return None

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("request-id", new_id("req_011", 21))
        if request.path in self.inference_paths:
            now = time.time()
            for kind, window in self.limits.windows.items():
                headers[f"anthropic-ratelimit-{kind}-limit"] = str(window.limit)
                headers[f"anthropic-ratelimit-{kind}-remaining"] = str(window.remaining)
                headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(
                    now + window.reset_in, micros=False
                )

    # --- messages ------------------------------------------------------------------------------

    def complete(
        self, params: Mapping[str, JSON], reply: Reply | None = None
    ) -> Completion | web.Response:
        """Validate Messages ``params`` and resolve the completion (also used for batch lines)."""
        if not isinstance(params.get("model"), str):
            return self.error_response(400, "model: Field required")
        max_tokens = params.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return self.error_response(400, "max_tokens: Field required")
        if max_tokens < 1:
            return self.error_response(
                400, "max_tokens: Input should be greater than or equal to 1"
            )
        messages = params.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.error_response(
                400,
                "messages: Field required"
                if messages is None
                else "messages: at least one message is required",
            )
        for n, message in enumerate(messages):
            if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
                return self.error_response(
                    400, f"messages.{n}.role: Input should be 'user' or 'assistant'"
                )
        return resolve_completion(
            reply or self.next_reply(params),
            model=params["model"],
            messages=messages,
            system=params.get("system"),
            max_tokens=max_tokens,
            defaults=self.reply_defaults,
        )

    def message_payload(
        self, completion: Completion, params: Mapping[str, JSON], tier: str
    ) -> dict[str, JSON]:
        text = completion.refusal if completion.refusal is not None else completion.text
        stop_reason = (
            "refusal"
            if completion.refusal is not None
            else _STOP_REASONS.get(completion.finish_reason, completion.finish_reason)
        )
        stop_sequence = None
        for seq in params.get("stop_sequences") or ():
            if stop_reason == "end_turn" and isinstance(seq, str) and seq and seq in text:
                text, stop_reason, stop_sequence = text[: text.index(seq)], "stop_sequence", seq
        read, creation = completion.cached_tokens, completion.cache_creation_tokens
        return {
            "id": new_id("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": completion.model,
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": completion.prompt_tokens - read - creation,
                "output_tokens": completion.completion_tokens,
                "cache_creation_input_tokens": creation,
                "cache_read_input_tokens": read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": creation,
                    "ephemeral_1h_input_tokens": 0,
                },
                "service_tier": tier,
            },
        }

    async def handle_messages(self, request: web.Request) -> web.Response:
        params = self.json_body(request)
        if isinstance(params, web.Response):
            return params
        completion = self.complete(params)
        if isinstance(completion, web.Response):
            return completion
        refused = self.limits.admit(
            {
                "requests": 1,
                "tokens": completion.prompt_tokens + completion.completion_tokens,
                "input-tokens": completion.prompt_tokens,
                "output-tokens": completion.completion_tokens,
            }
        )
        if refused is not None:
            kind, window, _ = refused
            return self.error_response(
                429,
                f"This request would exceed your organization's rate limit of {window.limit} {kind} per minute.",
                headers={"retry-after": str(max(math.ceil(window.reset_in), 1))},
            )
        await self.simulate_latency(completion.completion_tokens)
        return self.json(self.message_payload(completion, params, "standard"))

    # --- batches: HTTP -----------------------------------------------------------------------------

    def _not_found(self, batch_id: str) -> web.Response:
        return self.error_response(404, f"message_batch {batch_id} not found")

    def _job_or_404(self, request: web.Request) -> BatchJob | web.Response:
        batch_id = request.match_info["id"]
        return self.batches.get(batch_id) or self._not_found(batch_id)

    async def handle_create_batch(self, request: web.Request) -> web.Response:
        body = self.json_body(request)
        if isinstance(body, web.Response):
            return body
        requests = body.get("requests")
        if not isinstance(requests, list) or not 1 <= len(requests) <= self.max_batch_requests:
            return self.error_response(
                400, f"requests: must contain between 1 and {self.max_batch_requests} items"
            )
        seen: set[str] = set()
        lines = []
        for n, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, Mapping) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return self.error_response(
                    400,
                    f"requests.{n}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
                )
            if custom_id in seen:
                return self.error_response(
                    400,
                    f"requests.{n}.custom_id: Duplicate custom_id '{custom_id}'; custom_id must be unique "
                    "within a batch.",
                )
            if not isinstance(item.get("params"), Mapping):
                return self.error_response(400, f"requests.{n}.params: Field required")
            seen.add(custom_id)
            lines.append(BatchLine(custom_id=custom_id, body=item["params"]))
        now = self.batches.now()
        obj: dict[str, JSON] = {
            "id": new_id("msgbatch_01", 22),
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": len(lines),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": None,
            "created_at": rfc3339(now),
            "expires_at": rfc3339(now + 86_400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        with self.batches.lock:
            self.batches.add(
                BatchJob(id=obj["id"], obj=obj, extra={"expires": now + 86_400}), lines
            )
        return self.json(obj)

    async def handle_get_batch(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        if self.auto_advance:
            self._step(job)
        return self.json(job.obj)

    async def handle_list_batches(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return self.error_response(400, "limit: Input should be between 1 and 1000")
        objs = [job.obj for job in reversed(self.batches.jobs.values())]
        page, more = self.batches.page(
            objs,
            lambda o: str(o["id"]),
            request.query.get("after_id"),
            request.query.get("before_id"),
            limit,
        )
        return self.json(
            {
                "data": page,
                "has_more": more,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def handle_cancel_batch(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        with self.batches.lock:
            if job.obj["processing_status"] == "ended":
                return self.error_response(
                    400, f"Batch {job.id} has already ended and cannot be canceled."
                )
            if job.obj["processing_status"] == "in_progress":
                job.obj.update(
                    processing_status="canceling", cancel_initiated_at=rfc3339(self.batches.now())
                )
            return self.json(job.obj)

    async def handle_delete_batch(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        with self.batches.lock:
            if job.obj["processing_status"] != "ended":
                return self.error_response(
                    400,
                    f"Batch {job.id} cannot be deleted while it is still processing; cancel it first.",
                )
            del self.batches.jobs[job.id]
            self.results.pop(job.id, None)
        return self.json({"id": job.id, "type": "message_batch_deleted"})

    async def handle_results(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        data = self.results.get(job.id)
        if data is None:
            return self.error_response(
                400, f"Batch {job.id} is still processing; results are not yet available."
            )
        return web.Response(body=data, content_type="application/x-jsonl")

    # --- batches: time control ----------------------------------------------------------------

    def script_batch_line(
        self,
        custom_id: str,
        reply: Reply | None = None,
        *,
        status: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Script the result of ``custom_id``: a reply, or an ``errored`` result for ``status``."""
        with self.batches.lock:
            self.batches.scripts[custom_id] = line_script(reply, status, message, error_type, None)

    def advance_time(self, seconds: float) -> None:
        """Move the batch clock; batches past ``expires_at`` expire at the next advance."""
        self.batches.offset += seconds

    def advance_batches(self) -> None:
        """Move every unfinished batch one step: ``in_progress``/``canceling`` -> ``ended``."""
        with self.batches.lock:
            for job in list(self.batches.jobs.values()):
                self._step(job)

    def complete_batch(self, batch_id: str) -> dict[str, JSON]:
        """End ``batch_id`` now (all lines processed unless it is canceling); returns it."""
        job = self._job(batch_id)
        self._step(job)
        return job.obj

    def progress_batch(self, batch_id: str, fraction: float) -> dict[str, JSON]:
        """Process ``fraction`` of the lines now; counts stay in ``processing`` until the end."""
        job = self._job(batch_id)
        with self.batches.lock:
            if job.obj["processing_status"] != "ended":
                self.batches.run_fraction(job, fraction)
        return job.obj

    def expire_batch(self, batch_id: str, done_fraction: float = 0.0) -> dict[str, JSON]:
        """End ``batch_id`` with ``done_fraction`` processed and the rest ``expired``."""
        job = self._job(batch_id)
        with self.batches.lock:
            if job.obj["processing_status"] != "ended":
                self.batches.run_fraction(job, done_fraction)
                self._end(job, "expired")
        return job.obj

    def _job(self, batch_id: str) -> BatchJob:
        job = self.batches.get(batch_id)
        if job is None:
            raise KeyError(batch_id)
        return job

    def _step(self, job: BatchJob) -> None:
        with self.batches.lock:
            status = job.obj["processing_status"]
            if status == "canceling":
                self._end(job, "canceled")
            elif status == "in_progress" and self.batches.now() >= job.extra["expires"]:
                self._end(job, "expired")
            elif status == "in_progress":
                self.batches.run_until(job, len(job.lines))
                self._end(job, "canceled")

    def _run_line(self, line: BatchLine, script: Reply | Fault | None) -> tuple[int, JSON]:
        if isinstance(script, Fault):
            message = (
                script.message
                or _ERROR_DEFAULTS.get(script.status, ("", "Internal server error"))[1]
            )
            return script.status, self.error_body(
                script.status, message, script.error_type, request_id=None
            )
        completion = self.complete(line.body, script or Reply())
        if isinstance(completion, web.Response):
            body = response_body(completion)
            body["request_id"] = None
            return completion.status, body
        return 200, self.message_payload(completion, line.body, "batch")

    def _end(self, job: BatchJob, unfinished: str) -> None:
        """End the batch: processed lines succeed or error, the rest become ``unfinished``."""
        rows: list[dict[str, JSON]] = []
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in job.processed:
            ok = line.status is not None and line.status < 300
            kind = "succeeded" if ok else "errored"
            result = {"type": kind, "message" if ok else "error": line.response}
            rows.append({"custom_id": line.custom_id, "result": result})
            counts[kind] += 1
        for line in job.unprocessed:
            rows.append({"custom_id": line.custom_id, "result": {"type": unfinished}})
            counts[unfinished] += 1
        self.batches.rng.shuffle(rows)
        self.results[job.id] = dumps_lines(rows)
        job.obj.update(
            processing_status="ended",
            request_counts=counts,
            ended_at=rfc3339(self.batches.now()),
            results_url=f"{self.url}/v1/messages/batches/{job.id}/results",
        )
