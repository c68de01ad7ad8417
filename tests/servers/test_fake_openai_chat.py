"""FakeOpenAI chat completions driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import re
import time

import jsonschema
import openai
import pytest
from fakehelpers import KEY, http

from tests.fakes import FakeOpenAI, Fault, Reply

GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$|^0s$")
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]


def client(srv: FakeOpenAI, **kwargs: object) -> openai.OpenAI:
    options: dict[str, object] = {"base_url": srv.base_url, "api_key": KEY, "max_retries": 0}
    options.update(kwargs)
    return openai.OpenAI(**options)  # type: ignore[arg-type]


class TestCompletions:
    def test_response_matches_spec_and_headers(self, oai: FakeOpenAI, spec) -> None:
        """A completion is spec-valid, carries request id, Go-style rate-limit resets and timing."""
        with client(oai) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
        body = json.loads(raw.content)
        spec.validate(body, "CreateChatCompletionResponse", strict_nulls=True)
        assert raw.headers["x-request-id"].startswith("req_")
        assert raw.parse()._request_id == raw.headers["x-request-id"]
        assert int(raw.headers["x-ratelimit-remaining-requests"]) < int(
            raw.headers["x-ratelimit-limit-requests"]
        )
        for kind in ("requests", "tokens"):
            assert GO_DURATION.match(raw.headers[f"x-ratelimit-reset-{kind}"])
        assert raw.headers["openai-processing-ms"].isdigit()
        assert raw.headers["openai-version"] == "2020-10-01"

    def test_sdk_request_matches_spec(self, oai: FakeOpenAI, spec) -> None:
        """The recorded SDK request validates as CreateChatCompletionRequest."""
        with client(oai) as c:
            c.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=50, temperature=0
            )
        recorded = oai.requests[-1]
        assert spec.check_request(recorded) == "CreateChatCompletionRequest"
        assert recorded.headers["authorization"] == f"Bearer {KEY}"
        assert recorded.body["max_completion_tokens"] == 50

    def test_content_is_deterministic(self, oai: FakeOpenAI) -> None:
        """The same prompt gets the same text; another prompt gets another."""
        with client(oai) as c:
            first = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            again = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            other = c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert first.choices[0].message.content == again.choices[0].message.content
        assert first.choices[0].message.content != other.choices[0].message.content
        assert "Summarise the plot" in (first.choices[0].message.content or "")

    def test_usage_details_are_subsets(self) -> None:
        """Configured cached and reasoning tokens are reported inside prompt and completion counts."""
        with FakeOpenAI(cached_tokens=5, reasoning_tokens=7) as srv, client(srv) as c:
            usage = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage
        assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
        assert usage.prompt_tokens_details.cached_tokens == 5 <= usage.prompt_tokens
        assert usage.completion_tokens_details.reasoning_tokens == 7 <= usage.completion_tokens
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.prompt_tokens == -(-len(MESSAGES[0]["content"]) // 4)

    def test_json_schema_is_honoured(self, oai: FakeOpenAI) -> None:
        """response_format json_schema yields JSON that validates against the schema."""
        schema = {
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["spam", "ham"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "meta": {
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}},
                    "required": ["ok"],
                },
            },
            "required": ["label", "score", "tags", "meta"],
            "additionalProperties": False,
        }
        fmt = {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": True},
        }
        with client(oai) as c:
            reply = c.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, response_format=fmt
            )  # type: ignore[arg-type]
            plain = c.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
            )
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)
        assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)

    def test_scripted_replies(self, oai: FakeOpenAI) -> None:
        """Scripted replies come back in order: truncated, empty, refusal, then derived again."""
        oai.enqueue_reply(content="partial", finish_reason="length")
        oai.enqueue_reply(content="")
        oai.enqueue_reply(Reply(refusal="I can't help with that."))
        with client(oai) as c:
            got = [
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices[0]
                for _ in range(4)
            ]
        assert (got[0].message.content, got[0].finish_reason) == ("partial", "length")
        assert got[1].message.content == ""
        assert (
            got[2].message.content is None and got[2].message.refusal == "I can't help with that."
        )
        assert got[3].finish_reason == "stop" and got[3].message.content

    def test_max_tokens_truncates(self, oai: FakeOpenAI) -> None:
        """A reply longer than max_tokens is cut and finishes with 'length'."""
        with client(oai) as c:
            reply = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=2)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 2

    def test_responder_sees_the_body(self, oai: FakeOpenAI) -> None:
        """A responder answers from the request body (e.g. per model)."""
        oai.set_responder(lambda body: Reply(content=f"model={body['model']}"))
        with client(oai) as c:
            reply = c.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        assert reply.choices[0].message.content == "model=gpt-4.1"

    def test_models(self, oai: FakeOpenAI) -> None:
        """GET /v1/models lists the configured models."""
        with client(oai) as c:
            assert [m.id for m in c.models.list()] == ["gpt-4o-mini", "gpt-4.1", "gpt-5.4"]

    async def test_async_aiohttp_client(self, oai: FakeOpenAI) -> None:
        """The SDK's aiohttp transport handles many concurrent requests."""
        async with openai.AsyncOpenAI(
            base_url=oai.base_url,
            api_key=KEY,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        ) as c:
            replies = await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": str(i)}]
                    )
                    for i in range(40)
                )
            )
        assert len({r.choices[0].message.content for r in replies}) == 40
        assert oai.request_count == 40


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "exc", "err_type", "code"),
        [
            (400, openai.BadRequestError, "invalid_request_error", None),
            (
                403,
                openai.PermissionDeniedError,
                "invalid_request_error",
                "unsupported_country_region_territory",
            ),
            (409, openai.ConflictError, "invalid_request_error", None),
            (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
            (500, openai.InternalServerError, "server_error", None),
            (503, openai.InternalServerError, "server_error", None),
        ],
    )
    def test_status_maps_to_sdk_exception(
        self, oai: FakeOpenAI, spec, status, exc, err_type, code
    ) -> None:
        """Each injected status raises the SDK's class with the error body's type and code."""
        oai.enqueue_fault(status)
        with client(oai) as c, pytest.raises(exc) as info:
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.status_code == status
        assert (info.value.type, info.value.code) == (err_type, code)
        spec.validate(
            info.value.body and {"error": info.value.body}, "ErrorResponse", strict_nulls=True
        )

    def test_auth(self, oai: FakeOpenAI) -> None:
        """A wrong key is 'invalid_api_key'; a missing key is 401 too."""
        with (
            client(oai, api_key="sk-wrong") as c,
            pytest.raises(openai.AuthenticationError) as info,
        ):
            c.models.list()
        assert info.value.code == "invalid_api_key"
        status, _, body = http("GET", f"{oai.base_url}/models")
        error = json.loads(body)["error"]
        assert status == 401 and "didn't provide an API key" in error["message"]

    def test_missing_messages_and_bad_format(self, oai: FakeOpenAI) -> None:
        """Invalid bodies get 400s with OpenAI's param and code."""
        with client(oai) as c:
            with pytest.raises(openai.BadRequestError) as info:
                c.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "xml"}
                )  # type: ignore[arg-type, typeddict-item]
            assert (info.value.param, info.value.code) == ("response_format.type", "invalid_value")
            with pytest.raises(openai.BadRequestError) as info:
                c.post("/chat/completions", body={"model": "gpt-4o-mini"}, cast_to=object)
            assert info.value.code == "missing_required_parameter"

    def test_unknown_model_when_strict(self) -> None:
        """strict_models=True answers 404 model_not_found."""
        with (
            FakeOpenAI(strict_models=True) as srv,
            client(srv) as c,
            pytest.raises(openai.NotFoundError) as info,
        ):
            c.chat.completions.create(model="gpt-9", messages=MESSAGES)
        assert info.value.code == "model_not_found"

    def test_enforced_rate_limit(self) -> None:
        """With rpm set, the request over the limit gets 429 with retry-after and retry-after-ms."""
        with FakeOpenAI(rpm=2) as srv, client(srv) as c:
            for _ in range(2):
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError) as info:
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        headers = info.value.response.headers
        assert info.value.code == "rate_limit_exceeded"
        assert 0 < int(headers["retry-after-ms"]) <= 60_000 and int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-remaining-requests"] == "0"


class TestSdkRetries:
    def test_retry_after_ms_is_honoured(self, oai: FakeOpenAI) -> None:
        """429 retry-after-ms:150 then 500 then 200: the SDK retries twice and succeeds."""
        oai.enqueue_fault(429, headers={"retry-after-ms": "150"})
        oai.enqueue_fault(500)
        started = time.monotonic()
        with client(oai, max_retries=2) as c:
            reply = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content
        assert time.monotonic() - started >= 0.15
        assert [r.headers["x-stainless-retry-count"] for r in oai.requests] == ["0", "1", "2"]

    def test_retry_after_over_two_minutes_is_not_retried(self, oai: FakeOpenAI) -> None:
        """openai 3.x gives up at once when retry-after exceeds 120 s."""
        oai.enqueue_fault(429, headers={"retry-after": "300"})
        with client(oai, max_retries=2) as c, pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert oai.request_count == 1

    def test_should_retry_false_beats_status(self, oai: FakeOpenAI) -> None:
        """x-should-retry: false stops the SDK retrying a 500."""
        oai.enqueue_fault(500, headers={"x-should-retry": "false"})
        with client(oai, max_retries=2) as c, pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert oai.request_count == 1


class TestFaults:
    def test_reset_is_a_connection_error(self, oai: FakeOpenAI) -> None:
        """A reset connection surfaces as APIConnectionError."""
        oai.enqueue_fault(kind="reset")
        with client(oai) as c, pytest.raises(openai.APIConnectionError):
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def test_malformed_body(self, oai: FakeOpenAI) -> None:
        """A 200 with truncated JSON fails to decode in the SDK."""
        oai.enqueue_fault(kind="malformed")
        with (
            client(oai) as c,
            pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)),
        ):
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def test_slow_reply_times_out(self, oai: FakeOpenAI) -> None:
        """A slow reply beyond the client timeout is an APITimeoutError; the next one is fine."""
        oai.enqueue_fault(kind="slow", delay=1.0)
        with client(oai, timeout=0.2) as c:
            with pytest.raises(openai.APITimeoutError):
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices

    def test_faults_only_hit_inference_unless_pathed(self, oai: FakeOpenAI) -> None:
        """A fault without a path spares /v1/models; a pathed one hits only its path."""
        oai.enqueue_fault(500)
        oai.enqueue_fault(404, path="/v1/models")
        with client(oai) as c:
            with pytest.raises(openai.NotFoundError):
                c.models.list()
            with pytest.raises(openai.InternalServerError):
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def test_kill_and_revive(self, oai: FakeOpenAI) -> None:
        """A killed fake refuses connections; revived, it serves on the same port."""
        port = oai.port
        with client(oai) as c:
            oai.kill()
            with pytest.raises(openai.APIConnectionError):
                c.models.list()
            oai.revive()
            assert oai.port == port and len(c.models.list().data) == 3

    def test_fault_rate_is_seeded(self) -> None:
        """The same seed injects the same faults in the same places."""

        def outcomes(seed: int) -> list[str]:
            mix = [Fault(status=429), Fault(status=500), Fault(kind="malformed")]
            with (
                FakeOpenAI(fault_rate=0.4, fault_mix=mix, seed=seed, record=False) as srv,
                client(srv) as c,
            ):
                got = []
                for _ in range(30):
                    try:
                        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                        got.append("ok")
                    except openai.APIStatusError as exc:
                        got.append(str(exc.status_code))
                    except json.JSONDecodeError:
                        got.append("malformed")
                assert srv.faults.injected == 30 - got.count("ok")
                return got

        first = outcomes(7)
        assert first == outcomes(7)
        assert {"ok", "429", "500", "malformed"} <= set(first)

    def test_recording_is_bounded(self) -> None:
        """record_limit caps memory; record=False keeps nothing but still counts."""
        with FakeOpenAI(record_limit=3) as srv, client(srv) as c:
            for _ in range(5):
                c.models.list()
            assert len(srv.requests) == 3 and srv.request_count == 5
        with FakeOpenAI(record=False) as srv, client(srv) as c:
            c.models.list()
            assert not srv.requests and srv.request_count == 1
