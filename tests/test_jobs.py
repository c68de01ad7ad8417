"""The JSONL codec: both line formats, and every bad line becomes one error, never a crash."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tierline.jobs import InvalidLine, Job, jobs_from_lines, read_jobs

from .conftest import write_jsonl


def parse(*lines: str | bytes) -> list[Job | InvalidLine]:
    return list(jobs_from_lines(list(lines), source="t.jsonl"))


class TestNative:
    def test_prompt_job(self) -> None:
        """A native line with a prompt becomes a job with one user message."""
        [job] = parse(
            '{"id": "a", "prompt": "Summarize this.", "max_tokens": 50, "task": "summarize"}'
        )
        assert isinstance(job, Job)
        assert job.id == "a" and job.line == 1 and job.source == "t.jsonl"
        assert [(m.role, m.content) for m in job.messages] == [("user", "Summarize this.")]
        assert job.max_tokens == 50 and job.task == "summarize" and job.format == "native"

    def test_messages_with_system(self) -> None:
        """A system message inside `messages` becomes the job's system prompt."""
        [job] = parse(
            orjson.dumps(
                {
                    "id": 7,
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                    ],
                }
            )
        )
        assert isinstance(job, Job)
        assert job.id == "7" and job.system == "Be brief." and job.messages[0].content == "Hi"
        assert "Be brief." in job.text and "Hi" in job.text

    def test_missing_id_gets_position(self) -> None:
        """A line without an id is named by its file and line, so results stay joinable."""
        [job] = parse('{"prompt": "x"}')
        assert isinstance(job, Job) and job.id == "t.jsonl:1"

    def test_json_schema(self) -> None:
        """The schema of an OpenAI json_schema response_format is reachable from the job."""
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        line = orjson.dumps(
            {
                "id": "s",
                "prompt": "x",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": schema},
                },
            }
        )
        [job] = parse(line)
        assert isinstance(job, Job) and job.json_schema == schema


class TestBatchFormat:
    def test_openai_batch_line(self) -> None:
        """An OpenAI Batch API line is accepted unchanged."""
        line = orjson.dumps(
            {
                "custom_id": "request-1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "max_completion_tokens": 20,
                    "messages": [
                        {"role": "developer", "content": "Answer in one word."},
                        {"role": "user", "content": "What is 2+2?"},
                    ],
                },
            }
        )
        [job] = parse(line)
        assert isinstance(job, Job)
        assert job.id == "request-1" and job.format == "openai-batch"
        assert job.system == "Answer in one word." and job.max_tokens == 20
        assert job.requested_model == "gpt-4o-mini"

    def test_formats_mix_per_line(self) -> None:
        """The format is detected per line, so one file may mix them."""
        items = parse(
            '{"id": "n", "prompt": "x"}',
            '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "y"}]}}',
        )
        assert [type(i).__name__ for i in items] == ["Job", "Job"]
        assert [i.format for i in items if isinstance(i, Job)] == ["native", "openai-batch"]


BODY = b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}], '

BAD_LINES = [
    (b'{"id": "a", "prompt": ', "invalid JSON"),
    (b'\xff\xfe{"id": 1}', "invalid"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"id": "a"}', "missing 'prompt'"),
    (b'{"id": "a", "prompt": 5}', "'prompt' must be a non-empty string, got int"),
    (b'{"id": "a", "prompt": ""}', "'prompt' must be a non-empty string"),
    (
        b'{"id": "a", "prompt": "x", "max_tokens": "10"}',
        "'max_tokens' must be a positive integer, got string",
    ),
    (b'{"id": "a", "prompt": "x", "max_tokens": true}', "got boolean"),
    (b'{"id": "a", "prompt": "x", "temperature": 9}', "'temperature' must be between 0 and 2"),
    (b'{"id": "a", "prompt": "x", "tier": 4}', "'tier' must be 1, 2 or 3"),
    (b'{"id": "a", "prompt": "x", "max_token": 3}', "unknown field 'max_token'"),
    (b'{"id": "a", "messages": [{"role": "robot", "content": "x"}]}', "role must be one of"),
    (
        b'{"id": "a", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "must end with a user message",
    ),
    (b'{"id": "a", "prompt": "x", "response_format": {"type": "xml"}}', "'response_format.type'"),
    (
        b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
        "'method' must be POST",
    ),
    (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}',
        "'url' must be /v1/chat/completions",
    ),
    (b'{"id": "a", "prompt": "x", "expect": "(["}', "'expect' is not a valid regex"),
    (b'{"id": "a", "prompt": "x", "expect": "*x"}', "'expect' is not a valid regex"),
    (b'%s"max_token": 5}}' % BODY, "'body.max_token' is not supported"),
    (b'%s"tools": [{"type": "function"}]}}' % BODY, "'body.tools' is not supported"),
    (b'%s"seed": 7}}' % BODY, "'body.seed' is not supported"),
    (b'%s"n": 50}}' % BODY, "'body.n' is not supported other than 1"),
    (b'%s"n": true}}' % BODY, "'body.n' is not supported other than 1"),
    (b'%s"stream": true}}' % BODY, "'body.stream' is not supported other than false"),
    (b'{"id": 1.5, "prompt": "x"}', "'id' must be a string or an integer, got float"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_line_is_an_error_naming_line_and_reason(line: bytes, reason: str) -> None:
    """Each bad line yields one InvalidLine with its number and the reason."""
    items = parse(b'{"id": "ok", "prompt": "fine"}', line)
    assert isinstance(items[0], Job)
    bad = items[1]
    assert isinstance(bad, InvalidLine), bad
    assert bad.line == 2 and reason in bad.error


def test_duplicate_ids_after_the_first_are_errors() -> None:
    """The first of two lines with one id runs; the second is an error naming the id."""
    items = parse('{"id": "x", "prompt": "a"}', '{"id": "x", "prompt": "b"}')
    assert isinstance(items[0], Job)
    assert isinstance(items[1], InvalidLine) and "duplicate id 'x'" in items[1].error
    assert items[1].kind == "duplicate_id"


def test_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    """A BOM, CRLF endings and blank lines are handled; line numbers stay true to the file."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\r\n\r\n{"id": "b", "prompt": "y"}\r\n'
    )
    items = list(read_jobs([str(path)]))
    assert [(i.id, i.line) for i in items] == [("a", 1), ("b", 3)]


def test_several_files_keep_their_names(tmp_path: Path) -> None:
    """Jobs from several files carry their own source; ids must be unique across files."""
    a = write_jsonl(tmp_path / "a.jsonl", ['{"id": "1", "prompt": "x"}'])
    b = write_jsonl(
        tmp_path / "b.jsonl", ['{"id": "1", "prompt": "y"}', '{"id": "2", "prompt": "z"}']
    )
    items = list(read_jobs([str(a), str(b)]))
    assert [(type(i).__name__, i.source) for i in items] == [
        ("Job", str(a)),
        ("InvalidLine", str(b)),
        ("Job", str(b)),
    ]


def test_id_set_finds_every_duplicate_across_growth() -> None:
    """The compact id set grows past its first table and still knows every id it has seen."""
    from tierline.jobs import IdSet

    ids = IdSet()
    assert all(ids.add(f"job-{n}") for n in range(5000))  # several doublings of the table
    assert len(ids) == 5000
    assert not any(ids.add(f"job-{n}") for n in range(0, 5000, 7))
    assert ids.add("job-5000") and len(ids) == 5001


def test_batch_body_keys_at_their_defaults_are_fine() -> None:
    """`n: 1` and `stream: false` ask for what tierline does anyway."""
    [job] = parse(BODY + b'"n": 1, "stream": false, "max_completion_tokens": 9}}')
    assert isinstance(job, Job) and job.max_tokens == 9


def test_a_big_integer_id_keeps_every_digit() -> None:
    """A 23-digit integer id is that id, not a float and not an error."""
    items = parse(
        b'{"id": 12345678901234567890123, "prompt": "x"}',
        b'{"custom_id": 98765432109876543210987, "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}}',
    )
    assert [i.id for i in items if isinstance(i, Job)] == [
        "12345678901234567890123",
        "98765432109876543210987",
    ]
    [bad] = parse(b'{"id": 12345678901234567890123, "prompt": 5}')
    assert isinstance(bad, InvalidLine) and bad.id == "12345678901234567890123"


def test_raw_lines_number_and_skip_as_the_file_reads(tmp_path: Path) -> None:
    """`raw_lines` (what `tierline classify` reads with) keeps every non-blank line with its
    true number and source: blocks of object lines (taken whole, without a step per line)
    and blocks with blank, whitespace-only, indented, non-object and CRLF lines alike."""
    from tierline.jobs import raw_lines

    many = b"".join(b'{"id": "%d", "prompt": "%s"}\n' % (i, b"w" * (i % 700)) for i in range(9000))
    odd = b'{"a": 1}\n\n   \n {"indented": 1}\n[1, 2]\r\n\t\n{"b": 2}\r\n"text"\n{"last": 1}'
    files = [tmp_path / "many.jsonl", tmp_path / "odd.jsonl", tmp_path / "many2.jsonl"]
    for path, data in zip(files, (many, odd, odd + b"\n" + many), strict=True):
        path.write_bytes(data)
    got = [
        (source, n, raw)
        for source, numbers, raws in raw_lines([str(p) for p in files])
        for n, raw in zip(numbers, raws, strict=True)
    ]
    expected = [
        (str(path), n, line.rstrip(b"\r"))
        for path in files
        for n, line in enumerate(path.read_bytes().split(b"\n"), start=1)
        if line.strip()
    ]
    assert len(many) > 2 * 2**20  # several read blocks
    assert got == expected
