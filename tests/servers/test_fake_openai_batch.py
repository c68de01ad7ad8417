"""FakeOpenAI's stateful Files + Batch API, driven through the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from fakehelpers import KEY

from tests.fakes import FakeOpenAI, Reply

URL = "/v1/chat/completions"


def line(custom_id: str, *, url: str = URL, content: str | None = None) -> dict[str, object]:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content or f"question {custom_id}"}],
    }
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def c(oai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=oai.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def submit(c: openai.OpenAI, data: bytes) -> str:
    upload = c.files.create(file=("in.jsonl", data), purpose="batch")
    return c.batches.create(input_file_id=upload.id, endpoint=URL, completion_window="24h").id


def read_lines(c: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, object]]:
    if file_id is None:
        return {}
    rows = [json.loads(r) for r in c.files.content(file_id).text.splitlines()]
    return {row["custom_id"]: row for row in rows}


class TestLifecycle:
    def test_happy_path_step_by_step(self, oai: FakeOpenAI, c: openai.OpenAI, spec) -> None:
        """validating -> in_progress -> finalizing -> completed, spec-valid at every step."""
        ids = [f"req-{i}" for i in range(20)]
        upload = c.files.create(file=("in.jsonl", jsonl([line(i) for i in ids])), purpose="batch")
        spec.validate(upload.model_dump(mode="json"), "OpenAIFile")
        batch = c.batches.create(
            input_file_id=upload.id,
            endpoint=URL,
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        spec.check_request(oai.requests[-1])
        seen = []
        for _ in range(4):
            got = c.batches.retrieve(batch.id)
            spec.validate(got.model_dump(mode="json"), "Batch")
            seen.append(got.status)
            oai.advance_batches()
        assert seen == ["validating", "in_progress", "finalizing", "completed"]
        done = c.batches.retrieve(batch.id)
        assert done.request_counts and done.request_counts.model_dump() == {
            "total": 20,
            "completed": 20,
            "failed": 0,
        }
        assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]
        assert done.expires_at == done.created_at + 86_400
        assert done.metadata == {"job": "nightly"} and done.model == "gpt-4o-mini"
        assert done.error_file_id is None
        output = c.files.content(done.output_file_id or "").text.splitlines()
        order = [json.loads(r)["custom_id"] for r in output]
        assert sorted(order) == sorted(ids) and order != ids  # shuffled: join by custom_id
        row = json.loads(output[0])
        assert row["error"] is None and row["response"]["status_code"] == 200
        spec.validate(row["response"]["body"], "CreateChatCompletionResponse")
        out_file = c.files.retrieve(done.output_file_id or "")
        assert out_file.purpose == "batch_output"
        usage = done.usage
        assert (
            usage is not None and usage.total_tokens == usage.input_tokens + usage.output_tokens > 0
        )

    def test_scripted_line_failures_go_to_the_error_file(
        self, oai: FakeOpenAI, c: openai.OpenAI
    ) -> None:
        """A non-2xx line lands in the error file with its error body inside response."""
        oai.script_batch_line(
            "b", status=400, message="Invalid value: 'object'.", code="invalid_value"
        )
        oai.script_batch_line("c", Reply(content="scripted", finish_reason="length"))
        batch_id = submit(c, jsonl([line("a"), line("b"), line("c")]))
        done = oai.complete_batch(batch_id)
        assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        errors = read_lines(c, done["error_file_id"])
        assert errors["b"]["error"] is None
        assert errors["b"]["response"]["status_code"] == 400
        assert errors["b"]["response"]["body"]["error"]["code"] == "invalid_value"
        output = read_lines(c, done["output_file_id"])
        choice = output["c"]["response"]["body"]["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == ("scripted", "length")

    def test_expired_keeps_the_finished_part(self, oai: FakeOpenAI, c: openai.OpenAI) -> None:
        """expire_batch(done_fraction=0.5): half in the output file, half batch_expired errors."""
        batch_id = submit(c, jsonl([line(f"r{i}") for i in range(10)]))
        oai.expire_batch(batch_id, done_fraction=0.5)
        got = c.batches.retrieve(batch_id)
        assert got.status == "expired" and got.expired_at is not None
        output, errors = read_lines(c, got.output_file_id), read_lines(c, got.error_file_id)
        assert len(output) == len(errors) == 5 and not set(output) & set(errors)
        assert all(
            r["response"] is None and r["error"]["code"] == "batch_expired" for r in errors.values()
        )

    def test_clock_past_expiry_expires(self, oai: FakeOpenAI, c: openai.OpenAI) -> None:
        """advance_time past expires_at makes the next advance expire the batch."""
        batch_id = submit(c, jsonl([line("a")]))
        oai.advance_batches()
        oai.advance_time(86_401)
        oai.advance_batches()
        assert c.batches.retrieve(batch_id).status == "expired"

    def test_cancel_with_partial_results(self, oai: FakeOpenAI, c: openai.OpenAI) -> None:
        """cancel -> cancelling -> cancelled; processed lines kept, the rest batch_cancelled."""
        batch_id = submit(c, jsonl([line(f"r{i}") for i in range(4)]))
        oai.progress_batch(batch_id, 0.5)
        assert c.batches.retrieve(batch_id).request_counts.completed == 2  # type: ignore[union-attr]
        assert c.batches.cancel(batch_id).status == "cancelling"
        oai.advance_batches()
        got = c.batches.retrieve(batch_id)
        assert got.status == "cancelled" and got.cancelling_at and got.cancelled_at
        errors = read_lines(c, got.error_file_id)
        assert len(read_lines(c, got.output_file_id)) == 2
        assert {r["error"]["code"] for r in errors.values()} == {"batch_cancelled"}
        with pytest.raises(openai.ConflictError):
            c.batches.cancel(batch_id)

    def test_auto_advance_on_retrieve(self) -> None:
        """auto_advance=True lets a poll loop reach 'completed' without test intervention."""
        with (
            FakeOpenAI(auto_advance=True) as srv,
            openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as c,
        ):
            batch_id = submit(c, jsonl([line("a")]))
            statuses = [c.batches.retrieve(batch_id).status for _ in range(4)]
        assert statuses == ["in_progress", "finalizing", "completed", "completed"]

    async def test_async_client(self, oai: FakeOpenAI) -> None:
        """The async SDK runs the same lifecycle."""
        async with openai.AsyncOpenAI(base_url=oai.base_url, api_key=KEY, max_retries=0) as ac:
            upload = await ac.files.create(file=("in.jsonl", jsonl([line("x")])), purpose="batch")
            batch = await ac.batches.create(
                input_file_id=upload.id, endpoint=URL, completion_window="24h"
            )
            oai.complete_batch(batch.id)
            done = await ac.batches.retrieve(batch.id)
            content = await ac.files.content(done.output_file_id or "")
        assert json.loads(content.text)["custom_id"] == "x"


class TestValidation:
    @pytest.mark.parametrize(
        ("rows", "code", "line_no"),
        [
            ([line("a"), line("a")], "duplicate_custom_id", 2),
            ([line("a"), line("b", url="/v1/embeddings")], "invalid_url", 2),
            (
                [line("a"), {"custom_id": "b", "method": "GET", "url": URL, "body": {}}],
                "invalid_method",
                2,
            ),
        ],
    )
    def test_invalid_lines_fail_the_batch(
        self, oai: FakeOpenAI, c: openai.OpenAI, spec, rows, code, line_no
    ) -> None:
        """Invalid input makes the batch 'failed' with errors naming code and line."""
        batch_id = submit(c, jsonl(rows))
        oai.advance_batches()
        got = c.batches.retrieve(batch_id)
        spec.validate(got.model_dump(mode="json"), "Batch")
        assert got.status == "failed" and got.failed_at is not None
        assert got.errors and got.errors.data
        assert (got.errors.data[0].code, got.errors.data[0].line) == (code, line_no)

    def test_bad_json_line(self, oai: FakeOpenAI, c: openai.OpenAI) -> None:
        """A line that is not JSON is reported as invalid_json_line."""
        batch_id = submit(c, jsonl([line("a")]) + b"{not json\n")
        assert oai.complete_batch(batch_id)["errors"]["data"][0] == {
            "code": "invalid_json_line",
            "message": "This line is not parseable as valid JSON.",
            "param": None,
            "line": 2,
        }

    def test_too_many_lines_and_bytes(self) -> None:
        """More lines (or bytes) than the limits fail validation."""
        with (
            FakeOpenAI(max_batch_requests=2, max_batch_file_bytes=10_000) as srv,
            openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as c,
        ):
            many = srv.complete_batch(submit(c, jsonl([line(str(i)) for i in range(3)])))
            big = srv.complete_batch(submit(c, jsonl([line("a", content="x" * 20_000)])))
        assert many["status"] == big["status"] == "failed"
        assert many["errors"]["data"][0]["code"] == "too_many_requests"
        assert big["errors"]["data"][0]["code"] == "exceeded_max_size"

    def test_create_rejects_bad_requests(self, oai: FakeOpenAI, c: openai.OpenAI) -> None:
        """Unknown endpoint, window or file are 400s at create time."""
        upload = c.files.create(file=("in.jsonl", jsonl([line("a")])), purpose="batch")
        with pytest.raises(openai.BadRequestError) as info:
            c.batches.create(input_file_id=upload.id, endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]
        assert info.value.param == "endpoint"
        with pytest.raises(openai.BadRequestError) as info:
            c.batches.create(input_file_id=upload.id, endpoint=URL, completion_window="48h")  # type: ignore[arg-type]
        assert info.value.param == "completion_window"
        with pytest.raises(openai.BadRequestError):
            c.batches.create(input_file_id="file-missing", endpoint=URL, completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_missing")


class TestFilesAndListing:
    def test_file_roundtrip_and_delete(self, c: openai.OpenAI, spec) -> None:
        """Uploaded bytes come back unchanged; a deleted file is gone."""
        data = jsonl([line("a")])
        upload = c.files.create(file=("in.jsonl", data), purpose="batch")
        assert c.files.content(upload.id).content == data
        assert upload.bytes == len(data) and upload.filename == "in.jsonl"
        raw = json.loads(c.files.with_raw_response.retrieve(upload.id).content)
        spec.validate(raw, "OpenAIFile")  # expires_at is null on the wire, as from the real API
        assert c.files.delete(upload.id).deleted
        with pytest.raises(openai.NotFoundError):
            c.files.retrieve(upload.id)

    def test_bad_purpose(self, c: openai.OpenAI) -> None:
        """An unknown purpose is a 400 invalid_value."""
        with pytest.raises(openai.BadRequestError) as info:
            c.files.create(file=("in.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
        assert info.value.param == "purpose"

    def test_list_paginates_newest_first(self, c: openai.OpenAI) -> None:
        """batches.list pages with after/has_more; auto-pagination returns all, newest first."""
        created = [submit(c, jsonl([line("a")])) for _ in range(5)]
        page = c.batches.list(limit=2)
        assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
        assert [b.id for b in c.batches.list(limit=2)] == created[::-1]
