"""A fake of the OpenAI API: chat completions, responses, models, files and the stateful Batch API."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
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
from tests.fakes._chat import ChatFake
from tests.fakes._content import Completion, Reply
from tests.fakes._core import STARTED, Fault, RateLimits, Routes, go_duration, new_id

__all__ = ["FakeOpenAI"]

JSON = Any
MB = 1024 * 1024
FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
BATCH_ENDPOINTS = frozenset(
    {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/videos",
    }
)
TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
_ERROR_DEFAULTS: Mapping[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: ("invalid_request_error", None, "Not found."),
    409: ("invalid_request_error", None, "Conflict."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM). Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_UNFINISHED = {
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "cancelled": (
        "batch_cancelled",
        "This request was not executed because the batch was cancelled.",
    ),
}


class FakeOpenAI(ChatFake):
    """OpenAI on 127.0.0.1: ``with FakeOpenAI(api_key="sk-test") as srv: OpenAI(base_url=srv.base_url, ...)``.

    ``cached_tokens``/``reasoning_tokens`` set the default usage details (subsets of the prompt
    and completion counts). Rate limits: ``rpm``/``tpm`` given -> enforced (429 ``rate_limit_exceeded`` with ``retry-after``
    and ``retry-after-ms``) over windows of ``rate_window`` seconds; otherwise headers only.
    Batches: see ``advance_batches``, ``complete_batch``, ``progress_batch``, ``expire_batch``,
    ``advance_time`` and ``script_batch_line``; ``auto_advance=True`` steps a batch on each retrieve.
    """

    name = "openai"
    inference_paths = frozenset({"/v1/chat/completions", "/v1/responses"})

    def __init__(
        self,
        *,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4.1", "gpt-5.4"),
        rpm: int | None = None,
        tpm: int | None = None,
        rate_window: float = 60.0,
        auto_advance: bool = False,
        max_batch_requests: int = 50_000,
        max_batch_file_bytes: int = 200 * MB,
        strict_models: bool = False,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(models=models, **kwargs)
        self.reply_defaults = Reply(cached_tokens=cached_tokens, reasoning_tokens=reasoning_tokens)
        self.limits = RateLimits(
            {"requests": (rpm, 10_000), "tokens": (tpm, 30_000_000)}, rate_window
        )
        self.auto_advance = auto_advance
        self.max_batch_requests = max_batch_requests
        self.max_batch_file_bytes = max_batch_file_bytes
        self.strict_models = strict_models
        self.files: dict[str, tuple[dict[str, JSON], bytes]] = {}
        self.batches = BatchBook(self._run_line, seed=self.rng.randrange(1 << 30))

    def add_routes(self, routes: Routes) -> None:
        super().add_routes(routes)
        routes.post("/v1/responses", self.handle_responses)
        routes.post("/v1/files", self.handle_upload)
        routes.get("/v1/files", self.handle_list_files)
        routes.get("/v1/files/{id}", self.handle_get_file)
        routes.delete("/v1/files/{id}", self.handle_delete_file)
        routes.get("/v1/files/{id}/content", self.handle_file_content)
        routes.post("/v1/batches", self.handle_create_batch)
        routes.get("/v1/batches", self.handle_list_batches)
        routes.get("/v1/batches/{id}", self.handle_get_batch)
        routes.post("/v1/batches/{id}/cancel", self.handle_cancel_batch)

    def body_limit(self, path: str) -> int:
        return 512 * MB + MB if path == "/v1/files" else 64 * MB

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
        default_type, default_code, default_message = _ERROR_DEFAULTS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
        )
        error = {
            "message": message or default_message,
            "type": error_type or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
        return self.json({"error": error}, status=status, headers=headers)

    def gate(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        token = self.bearer_token(request)
        if not token:
            return self.error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        if token != self.api_key:
            return self.error_response(
                401, f"Incorrect API key provided: {token[:3]}***{token[-4:]}."
            )
        return None

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("x-request-id", new_id("req_", 32))
        headers["openai-version"] = "2020-10-01"
        headers["openai-organization"] = "org-fake"
        elapsed = time.monotonic() - request.get(STARTED, time.monotonic())
        headers["openai-processing-ms"] = str(int(elapsed * 1000))
        if request.path in self.inference_paths:
            for kind, window in self.limits.windows.items():
                headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(window.reset_in)

    # --- chat ----------------------------------------------------------------------------------

    def validate_chat(self, body: Mapping[str, JSON]) -> web.Response | None:
        problem = super().validate_chat(body)
        if problem is None and self.strict_models and body["model"] not in self.models:
            return self.error_response(
                404,
                f"The model `{body['model']}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return problem

    def admit(self, body: Mapping[str, JSON], completion: Completion) -> web.Response | None:
        cost = completion.prompt_tokens + completion.completion_tokens
        refused = self.limits.admit({"requests": 1, "tokens": cost})
        if refused is None:
            return None
        kind, window, units = refused
        wait = max(window.reset_in, 0.001)
        label = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        return self.error_response(
            429,
            f"Rate limit reached for {body['model']} in organization org-fake on {label}: "
            f"Limit {window.limit}, Used {window.used}, Requested {units}. "
            f"Please try again in {go_duration(wait)}.",
            error_type=kind,
            code="rate_limit_exceeded",
            headers={
                "retry-after": str(math.ceil(wait)),
                "retry-after-ms": str(math.ceil(wait * 1000)),
            },
        )

    def chat_payload(self, completion: Completion) -> dict[str, JSON]:
        payload = super().chat_payload(completion)
        payload["service_tier"] = "default"
        payload["system_fingerprint"] = "fp_fake0000"
        return payload

    # --- responses -----------------------------------------------------------------------------

    def as_chat(self, body: Mapping[str, JSON]) -> dict[str, JSON] | web.Response:
        """A Responses request as the chat request it amounts to: one answer engine serves both
        (``instructions`` first, then the ``input`` messages; ``text.format`` as response_format)."""
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list):
            return self.error_response(
                400,
                "Missing required parameter: 'input'.",
                param="input",
                code="missing_required_parameter",
            )
        instructions = body.get("instructions")
        messages = [{"role": "system", "content": instructions}] if instructions else []
        messages += [{"role": i.get("role"), "content": i.get("content")} for i in items]
        chat: dict[str, JSON] = {"model": body.get("model"), "messages": messages}
        if isinstance(body.get("max_output_tokens"), int):
            chat["max_tokens"] = body["max_output_tokens"]
        fmt = (body.get("text") or {}).get("format")
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            spec = {"name": fmt.get("name"), "schema": fmt.get("schema")}
            chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif isinstance(fmt, Mapping):
            chat["response_format"] = {"type": fmt.get("type")}
        return chat

    def response_payload(self, completion: Completion, body: Mapping[str, JSON]) -> dict[str, JSON]:
        """A ``Response`` object (every field the spec requires)."""
        cut = completion.finish_reason == "length"
        part: dict[str, JSON] = (
            {"type": "refusal", "refusal": completion.refusal}
            if completion.refusal is not None
            else {"type": "output_text", "text": completion.text, "annotations": [], "logprobs": []}
        )
        prompt, output = completion.prompt_tokens, completion.completion_tokens
        return {
            "id": new_id("resp_", 48),
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if cut else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": completion.model,
            "output": [
                {
                    "type": "message",
                    "id": new_id("msg_", 48),
                    "status": "incomplete" if cut else "completed",
                    "role": "assistant",
                    "content": [part],
                }
            ],
            "parallel_tool_calls": True,
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "top_p": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "metadata": {},
            "text": body.get("text") or {"format": {"type": "text"}},
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {
                    "cached_tokens": completion.cached_tokens,
                    "cache_write_tokens": 0,
                },
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": completion.reasoning_tokens},
                "total_tokens": prompt + output,
            },
        }

    async def handle_responses(self, request: web.Request) -> web.Response:
        body = self.json_body(request)
        if isinstance(body, web.Response):
            return body
        chat = self.as_chat(body)
        if isinstance(chat, web.Response):
            return chat
        completion = self.complete(chat)
        if isinstance(completion, web.Response):
            return completion
        refused = self.admit(chat, completion)
        if refused is not None:
            return refused
        await self.simulate_latency(completion.completion_tokens)
        return self.json(self.response_payload(completion, body))

    # --- files ---------------------------------------------------------------------------------

    def _no_such(self, what: str, ident: str) -> web.Response:
        return self.error_response(404, f"No such {what}: '{ident}'", param="id")

    def add_file(
        self, data: bytes, *, filename: str, purpose: str, expires_at: int | None = None
    ) -> dict[str, JSON]:
        """Store a file as if uploaded; returns its ``OpenAIFile`` object."""
        obj: dict[str, JSON] = {
            "id": new_id("file-", 22),
            "object": "file",
            "bytes": len(data),
            "created_at": int(self.batches.now()),
            "expires_at": expires_at,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self.files[obj["id"]] = (obj, data)
        return obj

    async def handle_upload(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except ValueError:
            return self.error_response(400, "Could not parse multipart form.")
        purpose, upload = str(form.get("purpose")), form.get("file")
        if purpose not in FILE_PURPOSES:
            return self.error_response(
                400,
                f"Invalid value: '{purpose}'. Supported values are: {sorted(FILE_PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        if not isinstance(upload, web.FileField):
            return self.error_response(400, "Missing required parameter: 'file'.", param="file")
        data = upload.file.read()
        seconds = form.get("expires_after[seconds]")
        expires_at = int(self.batches.now()) + int(str(seconds)) if seconds else None
        return self.json(
            self.add_file(data, filename=upload.filename, purpose=purpose, expires_at=expires_at)
        )

    async def handle_list_files(self, request: web.Request) -> web.Response:
        data = [obj for obj, _ in reversed(self.files.values())]
        purpose = request.query.get("purpose")
        data = [obj for obj in data if purpose is None or obj["purpose"] == purpose]
        return self.json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    async def handle_get_file(self, request: web.Request) -> web.Response:
        entry = self.files.get(request.match_info["id"])
        return self.json(entry[0]) if entry else self._no_such("File", request.match_info["id"])

    async def handle_delete_file(self, request: web.Request) -> web.Response:
        with self._lock:
            entry = self.files.pop(request.match_info["id"], None)
        if entry is None:
            return self._no_such("File", request.match_info["id"])
        return self.json({"id": entry[0]["id"], "object": "file", "deleted": True})

    async def handle_file_content(self, request: web.Request) -> web.Response:
        entry = self.files.get(request.match_info["id"])
        if entry is None:
            return self._no_such("File", request.match_info["id"])
        return web.Response(body=entry[1], content_type="application/octet-stream")

    # --- batches: HTTP ---------------------------------------------------------------------------

    async def handle_create_batch(self, request: web.Request) -> web.Response:
        body = self.json_body(request)
        if isinstance(body, web.Response):
            return body
        problem = self._check_create(body)
        if problem is not None:
            return problem
        now = int(self.batches.now())
        obj: dict[str, JSON] = {
            "id": new_id("batch_", 24),
            "object": "batch",
            "endpoint": body["endpoint"],
            "model": None,
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86_400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": _usage([]),
            "metadata": body.get("metadata"),
        }
        with self.batches.lock:
            self.batches.add(BatchJob(id=obj["id"], obj=obj), [])
        return self.json(obj)

    def _check_create(self, body: Mapping[str, JSON]) -> web.Response | None:
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body:
                return self.error_response(
                    400,
                    f"Missing required parameter: '{key}'.",
                    param=key,
                    code="missing_required_parameter",
                )
        if body["endpoint"] not in BATCH_ENDPOINTS:
            return self.error_response(
                400,
                f"Invalid value: '{body['endpoint']}'. Supported values are: {sorted(BATCH_ENDPOINTS)}.",
                param="endpoint",
                code="invalid_value",
            )
        if body["completion_window"] != "24h":
            return self.error_response(
                400,
                f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                param="completion_window",
                code="invalid_value",
            )
        metadata = body.get("metadata") or {}
        if (
            not isinstance(metadata, Mapping)
            or len(metadata) > 16
            or any(len(str(k)) > 64 or len(str(v)) > 512 for k, v in metadata.items())
        ):
            return self.error_response(
                400,
                "Invalid 'metadata': at most 16 pairs, keys <= 64 and values <= 512 characters.",
                param="metadata",
                code="invalid_value",
            )
        entry = self.files.get(body["input_file_id"])
        if entry is None:
            return self.error_response(
                400,
                f"Invalid 'input_file_id': '{body['input_file_id']}'. File not found.",
                param="input_file_id",
            )
        if entry[0]["purpose"] != "batch":
            return self.error_response(
                400, "The input file must have purpose 'batch'.", param="input_file_id"
            )
        return None

    async def handle_get_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        job = self.batches.get(batch_id)
        if job is None:
            return self._no_such("batch", batch_id)
        if self.auto_advance:
            self._step(job)
        return self.json(job.obj)

    async def handle_cancel_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        with self.batches.lock:
            job = self.batches.get(batch_id)
            if job is None:
                return self._no_such("batch", batch_id)
            status = job.obj["status"]
            if status in TERMINAL or status == "cancelling":
                return self.error_response(409, f"Cannot cancel a batch with status '{status}'.")
            job.obj["status"] = "cancelling"
            job.obj["cancelling_at"] = int(self.batches.now())
            return self.json(job.obj)

    async def handle_list_batches(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return self.error_response(
                400, "Invalid 'limit': must be between 1 and 100.", param="limit"
            )
        objs = [job.obj for job in reversed(self.batches.jobs.values())]
        page, more = self.batches.page(
            objs, lambda o: str(o["id"]), request.query.get("after"), None, limit
        )
        return self.json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": more,
            }
        )

    # --- batches: time control ----------------------------------------------------------------

    def script_batch_line(
        self,
        custom_id: str,
        reply: Reply | None = None,
        *,
        status: int | None = None,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """Script the outcome of the batch line ``custom_id``: a reply, or an HTTP error ``status``."""
        with self.batches.lock:
            self.batches.scripts[custom_id] = line_script(reply, status, message, error_type, code)

    def advance_time(self, seconds: float) -> None:
        """Move the batch clock; batches past ``expires_at`` expire at the next advance."""
        self.batches.offset += seconds

    def advance_batches(self) -> None:
        """Move every unfinished batch one step along its lifecycle."""
        with self.batches.lock:
            for job in list(self.batches.jobs.values()):
                self._step(job)

    def complete_batch(self, batch_id: str) -> dict[str, JSON]:
        """Step ``batch_id`` until it ends (``completed``, ``failed`` or ``cancelled``); returns it."""
        job = self._job(batch_id)
        for _ in range(8):
            if job.obj["status"] in TERMINAL:
                break
            self._step(job)
        return job.obj

    def progress_batch(self, batch_id: str, fraction: float) -> dict[str, JSON]:
        """Process ``fraction`` of an ``in_progress`` (or ``cancelling``) batch's lines now."""
        job = self._job(batch_id)
        with self.batches.lock:
            if job.obj["status"] == "validating":
                self._step(job)
            if job.obj["status"] in ("in_progress", "cancelling"):
                self.batches.run_fraction(job, fraction)
                self._count(job)
        return job.obj

    def expire_batch(self, batch_id: str, done_fraction: float = 0.0) -> dict[str, JSON]:
        """End ``batch_id`` as ``expired`` with ``done_fraction`` of its lines finished."""
        job = self._job(batch_id)
        with self.batches.lock:
            if job.obj["status"] == "validating":
                self._step(job)
            if job.obj["status"] not in TERMINAL:
                self.batches.run_fraction(job, done_fraction)
                self._finish(job, "expired")
        return job.obj

    def _job(self, batch_id: str) -> BatchJob:
        job = self.batches.get(batch_id)
        if job is None:
            raise KeyError(batch_id)
        return job

    def _step(self, job: BatchJob) -> None:
        with self.batches.lock:
            obj, now = job.obj, int(self.batches.now())
            status = obj["status"]
            if status == "validating":
                self._validate(job)
            elif status == "in_progress" and now >= obj["expires_at"]:
                self._finish(job, "expired")
            elif status == "in_progress":
                self.batches.run_until(job, len(job.lines))
                self._count(job)
                obj.update(status="finalizing", finalizing_at=now)
            elif status == "finalizing":
                self._finish(job, "completed")
            elif status == "cancelling":
                self._finish(job, "cancelled")

    def _validate(self, job: BatchJob) -> None:
        obj, now = job.obj, int(self.batches.now())
        data = self.files[obj["input_file_id"]][1]
        lines, errors = self._parse_input(data, obj["endpoint"])
        if errors:
            obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return
        self.batches.add(job, lines)
        model = next(
            (line.body.get("model") for line in lines if isinstance(line.body.get("model"), str)),
            None,
        )
        obj.update(status="in_progress", in_progress_at=now, model=model)
        obj["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}

    def _parse_input(
        self, data: bytes, endpoint: str
    ) -> tuple[list[BatchLine], list[dict[str, JSON]]]:
        def err(
            code: str, message: str, line: int | None, param: str | None = None
        ) -> dict[str, JSON]:
            return {"code": code, "message": message, "param": param, "line": line}

        if len(data) > self.max_batch_file_bytes:
            return [], [
                err(
                    "exceeded_max_size",
                    f"The input file exceeds the maximum size of "
                    f"{self.max_batch_file_bytes // MB} MB.",
                    None,
                )
            ]
        rows = [row for row in data.splitlines() if row.strip()]
        if len(rows) > self.max_batch_requests:
            return [], [
                err(
                    "too_many_requests",
                    f"The input file contains {len(rows)} requests; the maximum is "
                    f"{self.max_batch_requests}.",
                    None,
                )
            ]
        lines: list[BatchLine] = []
        errors: list[dict[str, JSON]] = []
        seen: set[str] = set()
        for number, row in enumerate(rows, start=1):
            try:
                item = json.loads(row)
            except ValueError:
                errors.append(
                    err("invalid_json_line", "This line is not parseable as valid JSON.", number)
                )
                continue
            custom_id = item.get("custom_id") if isinstance(item, Mapping) else None
            if not isinstance(custom_id, str) or not isinstance(item.get("body"), Mapping):
                errors.append(
                    err(
                        "missing_required_parameter",
                        "Each line needs 'custom_id', 'method', 'url' and an object 'body'.",
                        number,
                        "custom_id",
                    )
                )
            elif item.get("url") != endpoint:
                errors.append(
                    err(
                        "invalid_url",
                        f"The URL provided for this request does not match the batch "
                        f"endpoint '{endpoint}'.",
                        number,
                        "url",
                    )
                )
            elif item.get("method") != "POST":
                errors.append(
                    err("invalid_method", "Only the POST method is supported.", number, "method")
                )
            elif custom_id in seen:
                errors.append(
                    err(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another "
                        "request. The custom_id parameter must be unique for each request in a batch.",
                        number,
                        "custom_id",
                    )
                )
            else:
                seen.add(custom_id)
                lines.append(BatchLine(custom_id=custom_id, body=item["body"], url=endpoint))
        return lines, errors

    def _run_line(self, line: BatchLine, script: Reply | Fault | None) -> tuple[int, JSON]:
        if isinstance(script, Fault):
            error = self.error_response(
                script.status, script.message, error_type=script.error_type, code=script.code
            )
            return script.status, response_body(error)
        responses = line.url == "/v1/responses"
        chat = self.as_chat(line.body) if responses else line.body
        if isinstance(chat, web.Response):
            return chat.status, response_body(chat)
        completion = self.complete(chat, script or Reply())
        if isinstance(completion, web.Response):
            return completion.status, response_body(completion)
        if responses:
            return 200, self.response_payload(completion, line.body)
        return 200, self.chat_payload(completion)

    def _count(self, job: BatchJob) -> None:
        done = job.processed
        ok = [line for line in done if line.status is not None and line.status < 300]
        job.obj["request_counts"] = {
            "total": len(job.lines),
            "completed": len(ok),
            "failed": len(done) - len(ok),
        }
        job.obj["usage"] = _usage([line.response.get("usage", {}) for line in ok])

    def _finish(self, job: BatchJob, status: str) -> None:
        """Write the output and error files and end the batch as ``status``."""
        self._count(job)
        output: list[JSON] = []
        errors: list[JSON] = []
        for line in job.processed:
            row = {
                "id": new_id("batch_req_", 24),
                "custom_id": line.custom_id,
                "response": {
                    "status_code": line.status,
                    "request_id": new_id("req_", 32),
                    "body": line.response,
                },
                "error": None,
            }
            (output if line.status is not None and line.status < 300 else errors).append(row)
        if status in _UNFINISHED:
            code, message = _UNFINISHED[status]
            for line in job.unprocessed:
                errors.append(
                    {
                        "id": new_id("batch_req_", 24),
                        "custom_id": line.custom_id,
                        "response": None,
                        "error": {"code": code, "message": message},
                    }
                )
        self.batches.rng.shuffle(output)
        self.batches.rng.shuffle(errors)
        obj = job.obj
        for key, rows, suffix in (
            ("output_file_id", output, "output"),
            ("error_file_id", errors, "error"),
        ):
            if rows:
                name = f"{obj['id']}_{suffix}.jsonl"
                obj[key] = self.add_file(dumps_lines(rows), filename=name, purpose="batch_output")[
                    "id"
                ]
        obj["status"] = status
        obj[f"{status}_at"] = int(self.batches.now())


def _usage(usages: Sequence[Mapping[str, JSON]]) -> dict[str, JSON]:
    def total(key: str, detail: str | None = None, sub: str | None = None) -> int:
        if detail is None:
            return sum(int(u.get(key) or 0) for u in usages)
        return sum(int((u.get(detail) or {}).get(sub) or 0) for u in usages)

    # Chat Completions lines count prompt/completion tokens, Responses lines input/output.
    prompt = total("prompt_tokens") + total("input_tokens")
    completion = total("completion_tokens") + total("output_tokens")
    cached = total("", "prompt_tokens_details", "cached_tokens")
    reasoning = total("", "completion_tokens_details", "reasoning_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached + total("", "input_tokens_details", "cached_tokens")
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": reasoning + total("", "output_tokens_details", "reasoning_tokens")
        },
        "total_tokens": prompt + completion,
    }
