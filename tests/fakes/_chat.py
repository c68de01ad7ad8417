"""The OpenAI-shaped ``/v1/chat/completions`` and ``/v1/models`` shared by three fakes.

``FakeOpenAI``, ``FakeVLLM`` and ``FakeLlamaServer`` differ only in validation, the error body, the
extra fields of a response and how requests are scheduled; each overrides the hook it needs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from tests.fakes._content import Completion, Reply, resolve_completion
from tests.fakes._core import FakeServer, Routes, new_id

JSON = Any
_NO_SLOT: contextlib.nullcontext[None] = contextlib.nullcontext()
Structured = tuple[Mapping[str, JSON] | None, bool]  # (json schema, plain json mode)


def _copies(payload: dict[str, JSON], body: Mapping[str, JSON]) -> dict[str, JSON]:
    """Honour `n` (and vLLM's `best_of`): n choices, and completion tokens billed for every
    sequence generated, as the real servers do."""
    n, best_of = body.get("n"), body.get("best_of")
    n = n if isinstance(n, int) and n > 1 else 1
    generated = max(n, best_of if isinstance(best_of, int) else 1)
    if generated == 1:
        return payload
    [choice] = payload["choices"]
    payload["choices"] = [{**choice, "index": i} for i in range(n)]
    usage = payload.get("usage")
    if isinstance(usage, dict):
        usage["completion_tokens"] *= generated
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return payload


class ChatFake(FakeServer):
    """A fake serving OpenAI's chat-completions shape."""

    inference_paths = frozenset({"/v1/chat/completions"})
    owned_by = "openai"
    context_window: int | None = None  # prompt + max_tokens above this -> 400
    context_error: tuple[str | None, str | int | None] = (
        "invalid_request_error",
        "context_length_exceeded",
    )

    def __init__(self, *, models: Sequence[str] = ("gpt-4o-mini",), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = list(models)
        self.created = int(time.time())

    def add_routes(self, routes: Routes) -> None:
        routes.post("/v1/chat/completions", self.handle_chat)
        routes.get("/v1/models", self.handle_models)

    # --- hooks ---------------------------------------------------------------------------------

    def validate_chat(self, body: Mapping[str, JSON]) -> web.Response | None:
        """A 4xx for a request the server would refuse, else None."""
        if not isinstance(body.get("model"), str):
            return self.error_response(400, "you must provide a model parameter")
        if not isinstance(body.get("messages"), list):
            return self.error_response(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        return None

    def structured_output(self, body: Mapping[str, JSON]) -> Structured | web.Response:
        """The JSON schema (or plain JSON mode) the request asks for, or a 400."""
        fmt = body.get("response_format")
        if fmt is None:
            return None, False
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            return (schema if isinstance(schema, Mapping) else {"type": "object"}), False
        if kind in ("json_object", "text"):
            return None, kind == "json_object"
        return self.error_response(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )

    def admit(self, body: Mapping[str, JSON], completion: Completion) -> web.Response | None:
        """Refuse a valid request for capacity reasons (rate limits, a full queue), else None."""
        return None

    def compute(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold whatever the request needs while it 'runs' (slots on vLLM and llama-server)."""
        return _NO_SLOT

    def message_payload(self, completion: Completion) -> dict[str, JSON]:
        refused = completion.refusal is not None
        return {
            "role": "assistant",
            "content": None if refused else completion.text,
            "refusal": completion.refusal,
            "annotations": [],
        }

    def usage_payload(self, completion: Completion) -> dict[str, JSON]:
        return {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": completion.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": completion.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def chat_payload(self, completion: Completion) -> dict[str, JSON]:
        return {
            "id": new_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": completion.model,
            "choices": [
                {
                    "index": 0,
                    "message": self.message_payload(completion),
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": self.usage_payload(completion),
        }

    def model_entry(self, model: str) -> dict[str, JSON]:
        return {"id": model, "object": "model", "created": self.created, "owned_by": self.owned_by}

    # --- handlers --------------------------------------------------------------------------------

    def complete(
        self, body: Mapping[str, JSON], reply: Reply | None = None
    ) -> Completion | web.Response:
        """Validate ``body`` and resolve its completion (also used for batch lines)."""
        problem = self.validate_chat(body)
        if problem is not None:
            return problem
        structured = self.structured_output(body)
        if isinstance(structured, web.Response):
            return structured
        schema, json_mode = structured
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        limit = max_tokens if isinstance(max_tokens, int) else None
        completion = resolve_completion(
            reply or self.next_reply(body),
            model=str(body["model"]),
            messages=body["messages"],
            max_tokens=limit,
            schema=schema,
            json_mode=json_mode,
            defaults=self.reply_defaults,
        )
        window = self.context_window
        if window is not None and completion.prompt_tokens + (limit or 0) > window:
            error_type, code = self.context_error
            return self.error_response(
                400,
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{completion.prompt_tokens + (limit or 0)} tokens ({completion.prompt_tokens} in the messages, "
                f"{limit or 0} in the completion). Please reduce the length of the messages or completion.",
                error_type=error_type,
                code=code,
                param="messages",
            )
        return completion

    async def handle_chat(self, request: web.Request) -> web.Response:
        body = self.json_body(request)
        if isinstance(body, web.Response):
            return body
        completion = self.complete(body)
        if isinstance(completion, web.Response):
            return completion
        refused = self.admit(body, completion)
        if refused is not None:
            return refused
        async with self.compute():
            await self.simulate_latency(completion.completion_tokens)
        return self.json(_copies(self.chat_payload(completion), body))

    async def handle_models(self, _request: web.Request) -> web.Response:
        return self.json({"object": "list", "data": [self.model_entry(m) for m in self.models]})
