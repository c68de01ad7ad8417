"""FakeAnthropic Messages and Message Batches, driven by the official anthropic SDK."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import anthropic
import openai
import pytest
from anthropic.types.messages.batch_create_params import BatchCreateParams
from fakehelpers import KEY, http

from tests.anthropic_shapes import check_request, check_response
from tests.fakes import FakeAnthropic, FakeOpenAI, Reply

PROMPT = [{"role": "user", "content": "Write a haiku about the sea."}]


def client(srv: FakeAnthropic, **kwargs: object) -> anthropic.Anthropic:
    options: dict[str, object] = {"base_url": srv.base_url, "api_key": KEY, "max_retries": 0}
    options.update(kwargs)
    return anthropic.Anthropic(**options)  # type: ignore[arg-type]


@pytest.fixture
def c(ant: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with client(ant) as sdk:
        yield sdk


def create(c: anthropic.Anthropic, **kwargs: object) -> anthropic.types.Message:
    options: dict[str, object] = {"model": "claude-test", "max_tokens": 200, "messages": PROMPT}
    options.update(kwargs)
    return c.messages.create(**options)  # type: ignore[call-overload, no-any-return]


class TestMessages:
    def test_response_shape_and_headers(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """A message has the documented shape, a request-id and RFC 3339 rate-limit resets."""
        raw = c.messages.with_raw_response.create(
            model="claude-test", max_tokens=200, messages=PROMPT
        )  # type: ignore[arg-type]
        body = json.loads(raw.http_response.content)
        assert (
            body["type"] == "message"
            and body["role"] == "assistant"
            and body["id"].startswith("msg_")
        )
        assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
        assert set(body["usage"]) >= {
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cache_creation",
            "service_tier",
        }
        assert raw.headers["request-id"].startswith("req_")
        for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
            assert int(raw.headers[f"anthropic-ratelimit-{kind}-limit"]) > 0
            reset = dt.datetime.fromisoformat(
                raw.headers[f"anthropic-ratelimit-{kind}-reset"].replace("Z", "+00:00")
            )
            assert reset.tzinfo is not None
        sent = ant.requests[-1]
        assert (
            sent.headers["authorization"] == f"Bearer {KEY}" and sent.headers["anthropic-version"]
        )

    def test_cache_accounting_matches_openai(self) -> None:
        """input + cache reads + cache writes equals OpenAI's prompt_tokens for the same prompt."""
        with FakeAnthropic(cache_read_tokens=4, cache_creation_tokens=2) as srv, client(srv) as c:
            usage = create(c).usage
        with (
            FakeOpenAI() as srv,
            openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as oc,
        ):
            prompt_tokens = oc.chat.completions.create(
                model="m", messages=PROMPT
            ).usage.prompt_tokens  # type: ignore[arg-type, union-attr]
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (4, 2)
        assert usage.input_tokens + 4 + 2 == prompt_tokens
        assert usage.cache_creation and usage.cache_creation.ephemeral_5m_input_tokens == 2

    def test_stop_reasons(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """max_tokens truncates; scripted refusal and length map to Anthropic's words."""
        assert create(c, max_tokens=2).stop_reason == "max_tokens"
        ant.enqueue_reply(refusal="I can't help with that.")
        ant.enqueue_reply(content="cut", finish_reason="length")
        ant.enqueue_reply(content="")
        refused = create(c)
        assert refused.stop_reason == "refusal"
        assert create(c).stop_reason == "max_tokens"
        assert create(c).content == []

    def test_stop_sequence(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """A stop sequence in the text ends it there."""
        ant.enqueue_reply(content="alpha STOP beta")
        reply = create(c, stop_sequences=["STOP"])
        assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "STOP")
        assert reply.content[0].text == "alpha "  # type: ignore[union-attr]

    def test_x_api_key_and_any_version(self, ant: FakeAnthropic) -> None:
        """The old x-api-key form and any anthropic-version are accepted; no version is a 400."""
        body = {"model": "m", "max_tokens": 5, "messages": PROMPT}
        status, headers, _ = http(
            "POST",
            f"{ant.url}/v1/messages",
            body,
            {"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        )
        assert status == 200 and headers["request-id"]
        status, _, raw = http("POST", f"{ant.url}/v1/messages", body, {"x-api-key": KEY})
        assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"

    @pytest.mark.parametrize(
        ("status", "exc", "err_type"),
        [
            (400, anthropic.BadRequestError, "invalid_request_error"),
            (402, anthropic.PaymentRequiredError, "billing_error"),
            (403, anthropic.PermissionDeniedError, "permission_error"),
            (404, anthropic.NotFoundError, "not_found_error"),
            (429, anthropic.RateLimitError, "rate_limit_error"),
            (500, anthropic.InternalServerError, "api_error"),
            (504, anthropic.GatewayTimeoutError, "timeout_error"),
            (529, anthropic.OverloadedError, "overloaded_error"),
        ],
    )
    def test_errors(
        self, ant: FakeAnthropic, c: anthropic.Anthropic, status, exc, err_type
    ) -> None:
        """Each status raises the SDK class; the body is {type:error, error:{type,message}, request_id}."""
        ant.enqueue_fault(status)
        with pytest.raises(exc) as info:
            create(c)
        body = info.value.body
        assert info.value.status_code == status
        assert (
            body["type"] == "error"
            and body["error"]["type"] == err_type
            and body["error"]["message"]
        )
        assert (
            body["request_id"] == info.value.request_id == info.value.response.headers["request-id"]
        )

    def test_wrong_key(self, ant: FakeAnthropic) -> None:
        """A wrong key is a 401 authentication_error."""
        with client(ant, api_key="nope") as c, pytest.raises(anthropic.AuthenticationError) as info:
            create(c)
        assert info.value.body["error"]["type"] == "authentication_error"

    def test_invalid_params(self, c: anthropic.Anthropic) -> None:
        """max_tokens 0 is a 400."""
        with pytest.raises(anthropic.BadRequestError):
            create(c, max_tokens=0)

    def test_sdk_retries_529_then_429(self, ant: FakeAnthropic) -> None:
        """529 -> 429(retry-after 0.2) -> 200: the SDK retries both and honours the header."""
        ant.enqueue_fault(529)
        ant.enqueue_fault(429, headers={"retry-after": "0.2"})
        started = time.monotonic()
        with client(ant, max_retries=2) as c:
            assert create(c).stop_reason == "end_turn"
        assert time.monotonic() - started >= 0.2
        assert ant.request_count == 3

    def test_enforced_rate_limit(self) -> None:
        """With rpm set, the request over the limit is a 429 rate_limit_error with retry-after."""
        with FakeAnthropic(rpm=1) as srv, client(srv) as c:
            create(c)
            with pytest.raises(anthropic.RateLimitError) as info:
                create(c)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert info.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"

    async def test_async_client(self, ant: FakeAnthropic) -> None:
        """The async SDK works against the fake."""
        async with anthropic.AsyncAnthropic(
            base_url=ant.base_url, api_key=KEY, max_retries=0
        ) as ac:
            reply = await ac.messages.create(model="m", max_tokens=50, messages=PROMPT)  # type: ignore[arg-type]
        assert reply.content


def requests(n: int, prefix: str = "r") -> list[dict[str, object]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": "m",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": f"q{i}"}],
            },
        }
        for i in range(n)
    ]


class TestBatches:
    def test_lifecycle_and_results(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """Counts stay in 'processing' until the end; results are unordered and joined by custom_id."""
        ant.script_batch_line("r1", status=400, message="bad params")
        ant.script_batch_line("r2", Reply(content="scripted"))
        batch = c.messages.batches.create(requests=requests(10))  # type: ignore[arg-type]
        assert batch.processing_status == "in_progress" and batch.results_url is None
        assert batch.expires_at - batch.created_at == dt.timedelta(hours=24)
        assert ant.requests[-1].body == {"requests": requests(10)}
        ant.progress_batch(batch.id, 0.5)
        mid = c.messages.batches.retrieve(batch.id)
        assert mid.request_counts.processing == 10 and mid.request_counts.succeeded == 0
        ant.advance_batches()
        done = c.messages.batches.retrieve(batch.id)
        assert done.processing_status == "ended" and done.ended_at is not None
        assert done.results_url == f"{ant.url}/v1/messages/batches/{batch.id}/results"
        assert done.request_counts.model_dump() == {
            "processing": 0,
            "succeeded": 9,
            "errored": 1,
            "canceled": 0,
            "expired": 0,
        }
        results = list(c.messages.batches.results(batch.id))
        by_id = {r.custom_id: r.result for r in results}
        assert [r.custom_id for r in results] != [f"r{i}" for i in range(10)]
        assert by_id["r1"].type == "errored" and by_id["r1"].error.error.message == "bad params"  # type: ignore[union-attr]
        assert by_id["r2"].message.content[0].text == "scripted"  # type: ignore[union-attr]
        assert by_id["r0"].message.usage.service_tier == "batch"  # type: ignore[union-attr]
        assert ant.requests[-1].headers["accept"] == "application/binary"
        assert c.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            c.messages.batches.retrieve(batch.id)

    def test_cancel_and_expire(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """Cancel: processed lines kept, rest 'canceled'; expire: rest 'expired'."""
        first = c.messages.batches.create(requests=requests(4))  # type: ignore[arg-type]
        ant.progress_batch(first.id, 0.5)
        canceling = c.messages.batches.cancel(first.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
        with pytest.raises(anthropic.BadRequestError):
            c.messages.batches.delete(first.id)
        ant.advance_batches()
        counts = c.messages.batches.retrieve(first.id).request_counts
        assert (counts.succeeded, counts.canceled) == (2, 2)
        second = c.messages.batches.create(requests=requests(4))  # type: ignore[arg-type]
        ant.expire_batch(second.id, done_fraction=0.25)
        kinds = sorted(r.result.type for r in c.messages.batches.results(second.id))
        assert kinds == ["expired", "expired", "expired", "succeeded"]

    def test_results_before_end(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """Results of a batch still processing are unavailable (SDK refuses; raw GET is a 400)."""
        batch = c.messages.batches.create(requests=requests(1))  # type: ignore[arg-type]
        with pytest.raises(anthropic.AnthropicError):
            list(c.messages.batches.results(batch.id))
        status, _, _ = http(
            "GET",
            f"{ant.url}/v1/messages/batches/{batch.id}/results",
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        )
        assert status == 400

    @pytest.mark.parametrize(
        "bad",
        [
            [],
            requests(1, prefix="bad id!"),
            requests(1) + requests(1),
            [{"custom_id": "x" * 65, "params": {}}],
        ],
    )
    def test_create_validation(self, c: anthropic.Anthropic, bad) -> None:
        """Empty, badly named or duplicate custom_ids are 400 invalid_request_error."""
        with pytest.raises(anthropic.BadRequestError) as info:
            c.messages.batches.create(requests=bad)
        assert info.value.body["error"]["type"] == "invalid_request_error"

    def test_limits(self) -> None:
        """More requests than allowed is a 400; a body over the byte limit is a 413."""
        with FakeAnthropic(max_batch_requests=3, max_batch_bytes=2_000) as srv, client(srv) as c:
            with pytest.raises(anthropic.BadRequestError):
                c.messages.batches.create(requests=requests(4))  # type: ignore[arg-type]
            big = requests(1)
            big[0]["params"]["messages"][0]["content"] = "x" * 3_000  # type: ignore[index]
            with pytest.raises(anthropic.ContentTooLargeError) as info:
                c.messages.batches.create(requests=big)  # type: ignore[arg-type]
        assert info.value.body["error"]["type"] == "request_too_large"

    def test_list_pages(self, c: anthropic.Anthropic) -> None:
        """list pages newest first with has_more/last_id; auto-pagination returns all."""
        ids = [c.messages.batches.create(requests=requests(1)).id for _ in range(5)]  # type: ignore[arg-type]
        page = c.messages.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
        assert [b.id for b in c.messages.batches.list(limit=2)] == ids[::-1]

    def test_auto_advance(self) -> None:
        """auto_advance=True ends a batch on the first retrieve."""
        with FakeAnthropic(auto_advance=True) as srv, client(srv) as c:
            batch = c.messages.batches.create(requests=requests(2))  # type: ignore[arg-type]
            assert c.messages.batches.retrieve(batch.id).processing_status == "ended"


class TestPublishedShapes:
    """Every kind of body the fake answers, parsed strictly by the anthropic SDK's own models
    with no field the SDK does not define (tests/anthropic_shapes.py)."""

    def test_messages(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """Plain, truncated, refused, stopped by a sequence, empty, cached and JSON replies."""
        from anthropic.types import Message

        ant.enqueue_reply(refusal="I can't help with that.")
        ant.enqueue_reply(content="alpha STOP beta")
        ant.enqueue_reply(content="")
        kinds = [
            {},  # the refusal
            {"stop_sequences": ["STOP"]},  # alpha STOP beta
            {},  # empty
            {},
            {"max_tokens": 2},
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        ]
        stops = set()
        for extra in kinds:
            options = {"model": "claude-test", "max_tokens": 200, "messages": PROMPT, **extra}
            raw = c.messages.with_raw_response.create(**options)  # type: ignore[call-overload]
            stops.add(check_response(raw.http_response.content, Message).stop_reason)
        assert stops == {"refusal", "stop_sequence", "end_turn", "max_tokens"}
        with FakeAnthropic(cache_read_tokens=4, cache_creation_tokens=2) as srv, client(srv) as cc:
            raw = cc.messages.with_raw_response.create(
                model="claude-test", max_tokens=20, messages=PROMPT
            )  # type: ignore[arg-type]
            usage = check_response(raw.http_response.content, Message).usage
        assert usage.cache_creation is not None and usage.cache_read_input_tokens == 4

    @pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 429, 500, 504, 529])
    def test_errors(self, ant: FakeAnthropic, c: anthropic.Anthropic, status: int) -> None:
        """Every error status's body is the SDK's ErrorResponse. The one exception is 413's
        `request_too_large`: Anthropic's errors page documents it, the SDK's union of error
        types lacks it (the SDK raises ContentTooLargeError by status); the rest of that body
        must still fit."""
        from anthropic.types import ErrorResponse

        ant.enqueue_fault(status)
        with pytest.raises(anthropic.APIStatusError) as info:
            create(c)
        body = json.loads(info.value.response.content)
        if status == 413:
            assert body["error"]["type"] == "request_too_large"
            body["error"]["type"] = "invalid_request_error"
        check_response(json.dumps(body), ErrorResponse)

    def test_batches(self, ant: FakeAnthropic, c: anthropic.Anthropic) -> None:
        """A batch at every stage, its result lines of every type, a list page, a deletion."""
        from anthropic.types.messages import (
            DeletedMessageBatch,
            MessageBatch,
            MessageBatchIndividualResponse,
        )

        ant.script_batch_line("x0", status=400, message="bad params")
        failing = c.messages.batches.create(requests=requests(1, prefix="x"))  # type: ignore[arg-type]
        body = {"requests": requests(6)}
        check_request(body, BatchCreateParams)
        made = c.messages.batches.with_raw_response.create(**body)  # type: ignore[arg-type]
        batch = check_response(made.http_response.content, MessageBatch)
        ant.progress_batch(batch.id, 0.5)
        raw = c.messages.batches.with_raw_response.cancel(batch.id).http_response.content
        assert check_response(raw, MessageBatch).processing_status == "canceling"
        ant.advance_batches()
        raw = c.messages.batches.with_raw_response.retrieve(batch.id).http_response.content
        assert check_response(raw, MessageBatch).processing_status == "ended"
        expiring = c.messages.batches.create(requests=requests(2, prefix="e"))  # type: ignore[arg-type]
        ant.expire_batch(expiring.id, done_fraction=0.0)
        types = set()
        for batch_id in (batch.id, expiring.id, failing.id):
            headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
            url = f"{ant.url}/v1/messages/batches/{batch_id}/results"
            status, _, lines = http("GET", url, headers=headers)
            assert status == 200
            for line in lines.splitlines():
                types.add(check_response(line, MessageBatchIndividualResponse).result.type)
        assert types == {"succeeded", "errored", "canceled", "expired"}
        page = c.messages.batches.with_raw_response.list(limit=1).http_response.content
        [listed] = json.loads(page)["data"]
        check_response(json.dumps(listed), MessageBatch)
        raw = c.messages.batches.with_raw_response.delete(batch.id).http_response.content
        check_response(raw, DeletedMessageBatch)
