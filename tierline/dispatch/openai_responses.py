"""The `openai-responses` kind: OpenAI's Responses API (`POST /v1/responses`).

The whole kind is this module plus its line in `tierline.config.KINDS`: a pure codec, and the
OpenAI SDK provider that `openai` uses (client, key, base URL, health by `/models`) around it.
The same codec serves OpenAI's Batch API (`OpenAIBatches`, endpoint `/v1/responses`), so
`mode = "batch"` works as it does for `openai`.

On the wire (OpenAI's OpenAPI spec, `CreateResponse` and `Response`):

* the system prompt is `instructions`, the turns are `input` messages, the budget is
  `max_output_tokens`, a JSON schema is `text.format = {"type": "json_schema", "name",
  "schema"}` (plain JSON mode: `{"type": "json_object"}`);
* there are no stop sequences: a job with `stop` is refused before anything is sent, rather
  than answered with text the job said to cut; and `max_output_tokens` is at least 16, so a
  smaller max_tokens is refused too, rather than raised past what `--max-cost` reserved;
* the answer is the `output_text` parts of the `message` items of `output`; a `refusal` part
  is a refusal; `status: "incomplete"` with reason `max_output_tokens` is "length";
* usage is `input_tokens` (cached tokens included, as tierline counts them) and
  `output_tokens` (reasoning tokens included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import OpenAIBackendConfig
from ..jobs import Usage
from .base import Completion, Request
from .openai_chat import SCHEMA_NAME, ChatCompletionsBackend
from .sdk import api_key

__all__ = ["ResponsesCodec", "backend", "codec", "parse_response"]

JSON = Any
# Why an answer stopped early, in the words results use for every provider.
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}
MIN_OUTPUT_TOKENS = 16  # CreateResponse.max_output_tokens minimum


def parse_response(data: Mapping[str, JSON], fallback_model: str) -> Completion:
    """A Response object as a Completion."""
    texts, refusals = [], []
    for item in data["output"]:
        if item.get("type") != "message":
            continue  # reasoning summaries, tool calls: not the answer
        for part in item["content"]:
            if part.get("type") == "output_text":
                texts.append(part["text"])
            elif part.get("type") == "refusal":
                refusals.append(part["refusal"])
    finish = "stop"
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason")
        finish = INCOMPLETE.get(str(reason), "length")
    if refusals and not texts:
        texts, finish = refusals, "refusal"
    usage = data.get("usage") or {}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens")
    return Completion(
        text="".join(texts),
        finish_reason=finish,
        usage=Usage(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cached_tokens=int(cached or 0),
            reasoning_tokens=int(reasoning or 0),
        ),
        model=str(data.get("model") or fallback_model),
        request_id=data.get("id"),
    )


@dataclass(frozen=True)
class ResponsesCodec:
    """The Responses API on the wire. Pure: no client, no network."""

    model: str
    path = "/responses"
    what = "a response"

    def encode(self, request: Request) -> dict[str, JSON]:
        if request.stop:
            raise ValueError("the Responses API has no stop sequences; this job sets `stop`")
        if request.max_tokens < MIN_OUTPUT_TOKENS:
            raise ValueError(
                f"the Responses API needs max_tokens >= {MIN_OUTPUT_TOKENS}; "
                f"this job asks for {request.max_tokens}"
            )
        body: dict[str, JSON] = {
            "model": self.model,
            "input": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_output_tokens": request.max_tokens,
            "store": False,  # tierline keeps its own results; nothing to fetch later
        }
        if request.system:
            body["instructions"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        rf = request.response_format
        if rf and rf.get("type") in ("json_object", "json_schema"):
            schema = request.json_schema
            fmt: dict[str, JSON] = (
                {"type": "json_schema", "name": SCHEMA_NAME, "schema": dict(schema)}
                if schema is not None
                else {"type": "json_object"}
            )
            body["text"] = {"format": fmt}
        return body

    def decode(self, body: Mapping[str, JSON]) -> Completion:
        return parse_response(body, self.model)


def codec(config: OpenAIBackendConfig) -> ResponsesCodec:
    return ResponsesCodec(config.model)


def backend(name: str, config: OpenAIBackendConfig) -> ChatCompletionsBackend:
    """The OpenAI SDK provider (one endpoint, the key from `api_key_env`) with this codec."""
    key = api_key(name, config.api_key_env)
    return ChatCompletionsBackend(
        name, config, urls=[config.endpoint], key=key, codec=codec(config)
    )
