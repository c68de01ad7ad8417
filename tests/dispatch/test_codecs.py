"""The wire codecs on their own: a Request encoded and a recorded response body decoded, with no
server, no SDK client and no key. The batch providers send what these encode."""

from __future__ import annotations

from typing import Any

import pytest

from tierline.config import config_from_mapping
from tierline.dispatch.anthropic import MessagesCodec
from tierline.dispatch.base import Request
from tierline.dispatch.batch.providers import make_provider
from tierline.dispatch.openai_chat import DIALECTS, ChatCodec
from tierline.dispatch.registry import codec_for
from tierline.jobs import Message

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
REQUEST = Request(
    messages=(Message("user", "What is 2+2?"),),
    max_tokens=64,
    system="Be brief.",
    temperature=1.5,
    stop=("END",),
    response_format={"type": "json_object", "schema": SCHEMA},
)

# Recorded from the OpenAI API (ids shortened): a Chat Completions answer with cached and
# reasoning tokens.
CHAT_BODY: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "4", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0},
    },
    "service_tier": "default",
}

# Recorded from the Anthropic API: a Messages answer that hit max_tokens, with cache use.
MESSAGE_BODY: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": '{"a": 4'}],
    "stop_reason": "max_tokens",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 100,
        "output_tokens": 64,
    },
}


def test_chat_codec_encodes_the_openai_dialect() -> None:
    body = ChatCodec("gpt-4o", DIALECTS["openai"]).encode(REQUEST)
    assert body == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
        ],
        "max_completion_tokens": 64,
        "temperature": 1.5,
        "stop": ["END"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": SCHEMA},
        },
    }


def test_chat_codec_dialects_and_extra_body() -> None:
    """llama_cpp.server gets json_object + schema and max_tokens; vLLM extras are merged last."""
    llama = ChatCodec("m", DIALECTS["llama-cpp-python"]).encode(REQUEST)
    assert llama["max_tokens"] == 64 and "max_completion_tokens" not in llama
    assert llama["response_format"] == {"type": "json_object", "schema": SCHEMA}
    vllm = ChatCodec("m", DIALECTS["vllm"], {"top_k": 5}).encode(REQUEST)
    assert vllm["top_k"] == 5 and vllm["response_format"]["type"] == "json_schema"


def test_chat_codec_decodes_a_recorded_answer() -> None:
    completion = ChatCodec("fallback", DIALECTS["openai"]).decode(CHAT_BODY)
    assert (completion.text, completion.finish_reason) == ("4", "stop")
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.request_id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    usage = completion.usage
    assert (usage.input_tokens, usage.output_tokens) == (1117, 46)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (1024, 12)


def test_chat_codec_refuses_a_foreign_body() -> None:
    """A body of another shape raises (the provider turns it into a retryable 502)."""
    with pytest.raises(KeyError):
        ChatCodec("m", DIALECTS["openai"]).decode(MESSAGE_BODY)


def test_messages_codec_encodes_system_apart_and_clamps_temperature() -> None:
    body = MessagesCodec("claude-x").encode(REQUEST)
    assert body == {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "system": "Be brief.",
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }


def test_messages_codec_decodes_a_recorded_answer() -> None:
    completion = MessagesCodec("fallback").decode(MESSAGE_BODY)
    assert (completion.text, completion.finish_reason) == ('{"a": 4', "length")
    assert completion.usage.input_tokens == 12 + 3 + 100  # the whole prompt, as everywhere
    assert (completion.usage.cached_tokens, completion.usage.cache_write_tokens) == (100, 3)


def test_codec_for_follows_the_kind_table() -> None:
    """The registry builds each kind's codec from its settings alone: no key, no SDK client."""
    config = config_from_mapping(
        {
            "backends": {
                "gpu": {
                    "kind": "openai-compatible",
                    "model": "qwen",
                    "base_url": "http://127.0.0.1:9/v1",
                    "flavor": "llama-cpp-python",
                },
                "api": {"kind": "openai", "model": "gpt-4o"},
                "claude": {"kind": "anthropic", "model": "claude-x"},
            },
            "routes": {"1": "gpu", "2": "api", "3": "claude"},
        },
        origin="test",
    )
    gpu, api, claude = (codec_for(config.backends[n]) for n in ("gpu", "api", "claude"))
    assert gpu.encode(REQUEST)["response_format"]["type"] == "json_object"
    assert "max_completion_tokens" in api.encode(REQUEST)
    assert claude.encode(REQUEST)["system"] == "Be brief."


def test_batch_providers_send_what_the_codecs_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch APIs reuse the synchronous backends' codecs: same body either way."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    config = config_from_mapping(
        {
            "backends": {
                "api": {"kind": "openai", "model": "gpt-4o", "base_url": "http://127.0.0.1:9/v1"},
                "claude": {"kind": "anthropic", "model": "claude-x"},
            },
            "routes": {"1": "api", "2": "api", "3": "claude"},
        },
        origin="test",
    )
    for name in ("api", "claude"):
        settings = config.backends[name]
        provider = make_provider(name, settings)
        assert provider.encode(REQUEST) == codec_for(settings).encode(REQUEST)
    line = make_provider("api", config.backends["api"]).line("j1", {"model": "gpt-4o"})
    assert b'"url":"/v1/chat/completions"' in line


# Recorded from the OpenAI Responses API (`POST /v1/responses`, ids shortened): a reasoning
# item, then the message; usage with cached and reasoning tokens.
RESPONSE_BODY: dict[str, Any] = {
    "id": "resp_67ccd2bed1ec8190b14f964abc054267",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": "Be brief.",
    "max_output_tokens": 64,
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": []},
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "4", "annotations": []}],
        },
    ],
    "parallel_tool_calls": True,
    "store": False,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 20},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 80},
        "total_tokens": 123,
    },
}


def test_responses_codec_encodes_instructions_input_and_text_format() -> None:
    from tierline.dispatch.openai_responses import ResponsesCodec

    request = Request(
        messages=REQUEST.messages,
        max_tokens=64,
        system="Be brief.",
        temperature=0.2,
        response_format=REQUEST.response_format,
    )
    assert ResponsesCodec("gpt-4.1").encode(request) == {
        "model": "gpt-4.1",
        "input": [{"role": "user", "content": "What is 2+2?"}],
        "instructions": "Be brief.",
        "max_output_tokens": 64,
        "temperature": 0.2,
        "store": False,
        "text": {"format": {"type": "json_schema", "name": "output", "schema": SCHEMA}},
    }
    plain = Request(
        messages=REQUEST.messages, max_tokens=16, response_format={"type": "json_object"}
    )
    assert ResponsesCodec("m").encode(plain)["text"] == {"format": {"type": "json_object"}}


def test_responses_codec_refuses_what_the_api_cannot_take() -> None:
    """No `stop` in the Responses API, and max_output_tokens >= 16: refused before sending,
    not silently ignored or raised past the job's budget."""
    from tierline.dispatch.openai_responses import ResponsesCodec

    with pytest.raises(ValueError, match="no stop sequences"):
        ResponsesCodec("m").encode(REQUEST)
    with pytest.raises(ValueError, match="max_tokens >= 16"):
        ResponsesCodec("m").encode(Request(messages=REQUEST.messages, max_tokens=15))


def test_responses_codec_decodes_a_recorded_answer() -> None:
    from tierline.dispatch.openai_responses import ResponsesCodec

    completion = ResponsesCodec("fallback").decode(RESPONSE_BODY)
    assert (completion.text, completion.finish_reason) == ("4", "stop")
    assert completion.model == "gpt-4.1-2025-04-14"
    assert completion.request_id == "resp_67ccd2bed1ec8190b14f964abc054267"
    usage = completion.usage
    assert (usage.input_tokens, usage.cached_tokens) == (36, 20)
    assert (usage.output_tokens, usage.reasoning_tokens) == (87, 80)


def test_responses_codec_maps_incomplete_and_refusal() -> None:
    from tierline.dispatch.openai_responses import ResponsesCodec

    cut = {
        **RESPONSE_BODY,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    assert ResponsesCodec("m").decode(cut).finish_reason == "length"
    refusal = {
        **RESPONSE_BODY,
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": "I can't help with that."}],
            }
        ],
    }
    completion = ResponsesCodec("m").decode(refusal)
    assert (completion.text, completion.finish_reason) == ("I can't help with that.", "refusal")
    with pytest.raises(KeyError):
        ResponsesCodec("m").decode(CHAT_BODY)  # a chat completion is not a response
