"""FakeVLLM, FakeLlamaServer and FakeLlamaCppPython: the OpenAI SDK plus their own endpoints."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest
from fakehelpers import KEY, http, parse_metrics

from tests.fakes import FakeLlamaCppPython, FakeLlamaServer, FakeVLLM

MESSAGES = [{"role": "user", "content": "Classify: the parcel arrived broken."}]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["ok", "broken"]}},
    "required": ["label"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}
QUEUE_FULL = {
    "message": "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance.",
    "type": "Service Unavailable",
    "param": None,
    "code": 503,
}


def sdk(srv: object, **kwargs: object) -> openai.OpenAI:
    options: dict[str, object] = {"base_url": srv.base_url, "api_key": KEY, "max_retries": 0}  # type: ignore[attr-defined]
    options.update(kwargs)
    return openai.OpenAI(**options)  # type: ignore[arg-type]


def async_sdk(srv: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0)  # type: ignore[attr-defined]


class TestVLLM:
    def test_operational_endpoints(self, vllm: FakeVLLM) -> None:
        """/health is 200 with an empty body (503 once dead); /version and /v1/models as vLLM."""
        status, _, body = http("GET", f"{vllm.url}/health")
        assert (status, body) == (200, b"")
        assert json.loads(http("GET", f"{vllm.url}/version")[2]) == {"version": "0.33.0"}
        with sdk(vllm) as c:
            model = c.models.list().data[0]
        assert (model.id, model.owned_by) == ("m", "vllm")
        assert model.model_extra and model.model_extra["max_model_len"] == 32_768
        vllm.set_engine_dead()
        assert http("GET", f"{vllm.url}/health")[0] == 503

    def test_chat_and_vllm_fields(self, vllm: FakeVLLM, spec) -> None:
        """A vLLM completion is OpenAI-shaped plus stop_reason, and honours json_schema."""
        with sdk(vllm) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, response_format=FORMAT
            )  # type: ignore[arg-type]
        body = json.loads(raw.content)
        spec.validate(body, "CreateChatCompletionResponse")
        assert (
            "stop_reason" in body["choices"][0] and body["usage"]["prompt_tokens_details"] is None
        )
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMA)

    def test_removed_guided_fields_are_ignored(self, vllm: FakeVLLM) -> None:
        """guided_json is ignored (plain text back); structured_outputs.json is honoured."""
        with sdk(vllm) as c:
            plain = c.chat.completions.create(
                model="m", messages=MESSAGES, extra_body={"guided_json": SCHEMA}
            )
            shaped = c.chat.completions.create(
                model="m", messages=MESSAGES, extra_body={"structured_outputs": {"json": SCHEMA}}
            )
        with pytest.raises(json.JSONDecodeError):
            json.loads(plain.choices[0].message.content or "")
        jsonschema.validate(json.loads(shaped.choices[0].message.content or ""), SCHEMA)

    def test_errors_have_int_codes(self, vllm: FakeVLLM) -> None:
        """A wrong model is 404 NotFoundError with an int code; too long a prompt is 400."""
        with sdk(vllm) as c:
            with pytest.raises(openai.NotFoundError) as info:
                c.chat.completions.create(model="other", messages=MESSAGES)
            assert info.value.body["code"] == 404 and info.value.type == "NotFoundError"  # type: ignore[index]
            with pytest.raises(openai.BadRequestError) as info:
                c.chat.completions.create(model="m", messages=MESSAGES, max_tokens=40_000)
            assert info.value.body["code"] == 400  # type: ignore[index]
            assert "maximum context length is 32768" in info.value.message

    def test_api_key_guards_v1_only(self) -> None:
        """With --api-key, /v1 needs the Bearer key (401 {"error":"Unauthorized"}); /health, /metrics stay open."""
        with FakeVLLM(model="m", api_key=KEY) as srv:
            status, _, body = http("GET", f"{srv.base_url}/models")
            assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})
            with sdk(srv, api_key="wrong") as c, pytest.raises(openai.AuthenticationError):
                c.models.list()
            assert http("GET", f"{srv.url}/health")[0] == 200
            assert http("GET", f"{srv.url}/metrics")[0] == 200
            with sdk(srv) as c:
                assert c.chat.completions.create(model="m", messages=MESSAGES).choices

    async def test_admission_control_and_metrics(self) -> None:
        """max_num_seqs run, max_queued wait, the rest get vLLM's exact 503; /metrics shows it live."""
        with FakeVLLM(model="m", max_num_seqs=2, max_queued=1, latency_ms=300) as srv:
            async with async_sdk(srv) as c:

                async def one() -> object:
                    try:
                        return await c.chat.completions.create(model="m", messages=MESSAGES)
                    except openai.InternalServerError as exc:
                        return exc

                tasks = [asyncio.ensure_future(one()) for _ in range(5)]
                await asyncio.sleep(0.15)
                live = parse_metrics(http("GET", f"{srv.url}/metrics")[2].decode())
                results = await asyncio.gather(*tasks)
        errors = [r for r in results if isinstance(r, openai.InternalServerError)]
        assert len(errors) == 2 and all(
            e.status_code == 503 and e.body == QUEUE_FULL for e in errors
        )
        assert live["vllm:num_requests_running"] == 2 and live["vllm:num_requests_waiting"] == 1
        assert live["vllm:kv_cache_usage_perc"] == 1.0
        assert (
            live[
                'vllm:admission_rejections_total{engine="0",model_name="m",reason="max_num_queued_reqs"}'
            ]
            == 2
        )

    def test_metric_override(self, vllm: FakeVLLM) -> None:
        """override_metric pins a gauge for backpressure tests."""
        vllm.override_metric("vllm:kv_cache_usage_perc", 0.97)
        text = http("GET", f"{vllm.url}/metrics")[2].decode()
        assert 'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.97' in text
        assert "# TYPE vllm:num_requests_waiting gauge" in text


class TestLlamaServer:
    def test_warm_up(self) -> None:
        """503 'Loading model' (health and inference) until loaded, then {"status":"ok"}."""
        with FakeLlamaServer(loading_seconds=60) as srv:
            status, _, body = http("GET", f"{srv.url}/health")
            assert status == 503
            assert json.loads(body) == {
                "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            }
            with sdk(srv) as c, pytest.raises(openai.InternalServerError):
                c.chat.completions.create(model="any", messages=MESSAGES)
            srv.finish_loading()
            assert json.loads(http("GET", f"{srv.url}/health")[2]) == {"status": "ok"}

    async def test_slots_defer_fifo(self) -> None:
        """n_parallel run, the rest are deferred (never refused); /slots and /metrics show it."""
        with FakeLlamaServer(n_parallel=2, latency_ms=200) as srv:
            async with async_sdk(srv) as c:
                tasks = [
                    asyncio.ensure_future(c.chat.completions.create(model="x", messages=MESSAGES))
                    for _ in range(4)
                ]
                # Wait for all four to reach the server (an event, not a time: a loaded machine
                # may take longer than any fixed sleep); fail if they never do.
                for _ in range(400):
                    await asyncio.sleep(0.005)
                    live = parse_metrics(http("GET", f"{srv.url}/metrics")[2].decode())
                    if (
                        live["llamacpp:requests_processing"] + live["llamacpp:requests_deferred"]
                        == 4
                    ):
                        break
                slots = json.loads(http("GET", f"{srv.url}/slots")[2])
                busy = http("GET", f"{srv.url}/slots?fail_on_no_slot=1")[0]
                replies = await asyncio.gather(*tasks)
        assert len(replies) == 4 and srv.pool.peak == 2
        assert (live["llamacpp:requests_processing"], live["llamacpp:requests_deferred"]) == (2, 2)
        assert [s["is_processing"] for s in slots] == [True, True] and busy == 503
        assert replies[0].usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]

    def test_response_formats(self, llama: FakeLlamaServer) -> None:
        """json_schema (OpenAI form), json_object+schema and top-level json_schema all constrain output."""
        with sdk(llama) as c:
            forms = [
                {"response_format": FORMAT},
                {"response_format": {"type": "json_object", "schema": SCHEMA}},
                {"extra_body": {"json_schema": SCHEMA}},
            ]
            for form in forms:
                reply = c.chat.completions.create(model="x", messages=MESSAGES, **form)  # type: ignore[call-overload]
                jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
            with pytest.raises(openai.BadRequestError) as info:
                c.chat.completions.create(
                    model="x", messages=MESSAGES, response_format={"type": "xml"}
                )  # type: ignore[arg-type, typeddict-item]
        assert info.value.body["code"] == 400 and info.value.body["type"] == "invalid_request_error"  # type: ignore[index]

    def test_llama_fields_and_auth(self) -> None:
        """Responses carry timings; auth takes Bearer or X-Api-Key; errors have int codes."""
        with FakeLlamaServer(api_key=KEY) as srv:
            with sdk(srv) as c:
                raw = json.loads(
                    c.chat.completions.with_raw_response.create(
                        model="x", messages=MESSAGES
                    ).content
                )
            assert raw["timings"]["predicted_n"] == raw["usage"]["completion_tokens"]
            body = {"model": "x", "messages": MESSAGES}
            assert (
                http("POST", f"{srv.base_url}/chat/completions", body, {"X-Api-Key": KEY})[0] == 200
            )
            status, _, err = http("POST", f"{srv.base_url}/chat/completions", body)
            assert status == 401 and json.loads(err)["error"] == {
                "code": 401,
                "message": "Invalid API Key",
                "type": "authentication_error",
            }
            assert http("GET", f"{srv.url}/health")[0] == 200


class TestLlamaCppPython:
    def test_json_schema_is_a_500_the_sdk_retries(self) -> None:
        """response_format json_schema escapes as 500 internal_server_error: retried twice by the SDK."""
        with FakeLlamaCppPython() as srv, sdk(srv, max_retries=2) as c:
            with pytest.raises(openai.InternalServerError) as info:
                c.chat.completions.create(model="x", messages=MESSAGES, response_format=FORMAT)  # type: ignore[arg-type]
            assert info.value.type == "internal_server_error" and srv.request_count == 3
            ok = c.chat.completions.create(
                model="x", messages=MESSAGES, response_format={"type": "json_object"}
            )
            assert isinstance(json.loads(ok.choices[0].message.content or ""), dict)
            assert ok.model == srv.models[0] and ok.usage and ok.usage.prompt_tokens_details is None

    async def test_strictly_serial_and_no_health(self) -> None:
        """One request at a time; there is no /health; bad key is {"detail": ...}."""
        with FakeLlamaCppPython(latency_ms=100, api_key=KEY) as srv:
            assert http("GET", f"{srv.url}/health")[0] == 404
            status, _, body = http("GET", f"{srv.base_url}/models")
            assert (status, json.loads(body)) == (401, {"detail": "Invalid API key"})
            async with async_sdk(srv) as c:
                await asyncio.gather(
                    *(c.chat.completions.create(model="x", messages=MESSAGES) for _ in range(3))
                )
            assert srv.pool.peak == 1 and srv.request_count >= 3

    def test_context_length(self) -> None:
        """prompt + max_tokens over n_ctx is 400 context_length_exceeded."""
        with (
            FakeLlamaCppPython(n_ctx=64) as srv,
            sdk(srv) as c,
            pytest.raises(openai.BadRequestError) as info,
        ):
            c.chat.completions.create(model="x", messages=MESSAGES, max_tokens=100)
        assert (info.value.code, info.value.param) == ("context_length_exceeded", "messages")
