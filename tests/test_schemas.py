"""Job schemas are untrusted input: references stay inside the schema, nothing is fetched, and
a schema that would recurse forever is a per-job error, never a crash of the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from tierline.cli import main
from tierline.dispatch import registry
from tierline.dispatch.checks import check_json
from tierline.jobs import InvalidLine, Job, Message, jobs_from_lines
from tierline.schemas import MAX_SCHEMA_DEPTH, SchemaProblem, check_schema
from tierline.testing import FunctionBackend, completion

from .reliability.conftest import THREE_TIERS, Calls, read_results


class Hits:
    """A real HTTP server on 127.0.0.1 that counts every request it gets."""

    def __init__(self) -> None:
        self.count = 0
        hits = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.count += 1
                body = b'{"type": "string"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/schema+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/schema.json"


@pytest.fixture
def hits() -> Iterator[Hits]:
    h = Hits()
    thread = threading.Thread(target=h.server.serve_forever, daemon=True)
    thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


SELF = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}
THROUGH_ALLOF = {
    "$ref": "#/$defs/a",
    "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
}
TREE = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "kids": {"type": "array", "items": {"$ref": "#"}}},
    "required": ["name"],
}


def rf(schema: object) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def parse(schema: object) -> Job | InvalidLine:
    [item] = jobs_from_lines(
        [orjson.dumps({"id": "j", "prompt": "x", "response_format": rf(schema)})]
    )
    return item


def deep(levels: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (SELF, "cycle of references"),
        (THROUGH_ALLOF, "cycle of references"),
        ({"$ref": "#"}, "cycle of references"),
        ({"$ref": "http://127.0.0.1:9/s.json"}, "points outside the job's schema"),
        ({"properties": {"a": {"$ref": "file:///etc/passwd"}}}, "/properties/a/$ref"),
        ({"$ref": "other.json#/x"}, "points outside"),
        ({"$dynamicRef": "https://example.com/s"}, "points outside"),
        ({"$ref": "#/$defs/missing"}, "does not resolve inside the schema"),
        ({"type": 5}, "the schema is invalid"),
        (deep(MAX_SCHEMA_DEPTH), "nested deeper than"),
        ({"enum": list(range(30_000))}, "more than"),
    ],
)
def test_bad_schemas_are_invalid_jobs_when_read(schema: object, words: str) -> None:
    """Each one is refused with the reason when the line is read, so it is never dispatched."""
    item = parse(schema)
    assert isinstance(item, InvalidLine) and item.kind == "invalid_job"
    assert words in item.error and "'response_format' schema" in item.error


def test_recursion_through_the_answer_is_fine() -> None:
    """A schema may refer to itself through properties: that recursion ends with the answer."""
    item = parse(TREE)
    assert isinstance(item, Job)
    good = {"name": "a", "kids": [{"name": "b", "kids": [{"name": "c"}]}]}
    assert check_json(item, completion(json.dumps(good))) is None
    failure = check_json(item, completion(json.dumps({"name": "a", "kids": [{"kids": []}]})))
    assert failure is not None and "'name' is a required property" in failure.detail


@pytest.mark.parametrize("levels", [300, 3000])
def test_a_deeply_nested_answer_is_a_check_failure_not_a_crash(levels: int) -> None:
    """The answer comes from a model: nesting it deeper than the stack is a failed check."""
    item = parse(TREE)
    assert isinstance(item, Job)
    answer = (
        "".join('{"name": "a", "kids": [' for _ in range(levels)) + '{"name": "z"}' + "]}" * levels
    )
    failure = check_json(item, completion(answer))
    assert failure is not None and failure.check == "json"


def job_with(schema: object) -> Job:
    """A Job built directly (as library callers can), without the reader's checks."""
    return Job(
        id="j", line=1, source="-", messages=(Message("user", "x"),), response_format=rf(schema)
    )


def test_validation_never_fetches_a_remote_ref(hits: Hits) -> None:
    """Even a schema that bypassed the reader is validated without any request."""
    for schema in (
        {"$ref": hits.url},
        {"properties": {"a": {"$ref": hits.url}}},
        {"$id": hits.url, "properties": {"a": {"$ref": "other.json"}}},
    ):
        failure = check_json(job_with(schema), completion('{"a": 1}'))
        assert failure is not None and failure.check == "json"
    failure = check_json(job_with(SELF), completion('{"a": 1}'))
    assert failure is not None and "cycle" in failure.detail
    assert hits.count == 0


def test_check_schema_accepts_local_refs_and_anchors() -> None:
    check_schema(
        {
            "$defs": {"n": {"$anchor": "num", "type": "integer"}},
            "properties": {"a": {"$ref": "#num"}, "b": {"$ref": "#/$defs/n"}},
        }
    )
    with pytest.raises(SchemaProblem):
        check_schema({"$ref": "#nowhere"})


def test_a_run_with_hostile_schemas_completes_and_fetches_nothing(
    tmp_path: Path, hits: Hits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's run: 11 jobs, a self-referencing schema and a remote $ref among them; every
    job gets its result, the two bad ones as invalid_job, and the server sees no request."""
    lines = [orjson.dumps({"id": f"ok{i}", "prompt": f"q{i}", "tier": 1}) for i in range(9)]
    lines.insert(3, orjson.dumps({"id": "self", "prompt": "x", "response_format": rf(SELF)}))
    lines.insert(
        7, orjson.dumps({"id": "remote", "prompt": "x", "response_format": rf({"$ref": hits.url})})
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"\n".join(lines) + b"\n")
    calls = Calls()
    monkeypatch.setitem(
        registry.FACTORIES,
        "llamacpp",
        lambda name, _c: FunctionBackend(calls, name=name, model="m"),
    )
    three_tiers = tmp_path / "tierline.toml"
    three_tiers.write_text(THREE_TIERS, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 1
    results = {r["id"]: r for r in read_results(out)}
    assert len(results) == 11
    assert results["self"]["error"]["type"] == "invalid_job"
    assert results["remote"]["error"]["type"] == "invalid_job"
    assert sum(r["status"] == "ok" for r in results.values()) == 9
    assert "self" not in calls.job_ids and "remote" not in calls.job_ids
    assert hits.count == 0


class Connections:
    """A raw TCP listener on 127.0.0.1 counting connections: sees any attempt, TLS or not."""

    def __init__(self) -> None:
        import socket

        self.count = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.llama
def test_llama_grammar_never_fetches_or_recurses(smollm2: Path) -> None:
    """llama-cpp-python's schema converter can fetch https:// $refs (requests.get, when allowed)
    and recurses on cycles; json_grammar gives such schemas plain JSON, connecting nowhere.
    (The installed converter refuses to fetch by default: this guards the next version.)"""
    from tierline.dispatch.llama_worker import json_grammar

    del smollm2
    listener = Connections()
    try:
        generic = json_grammar({"type": "json_object"})
        remote = {"properties": {"a": {"$ref": f"https://127.0.0.1:{listener.port}/s.json"}}}
        for schema in (remote, SELF, THROUGH_ALLOF):
            assert json_grammar(rf(schema)) == generic
        good = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        assert json_grammar(rf(good)) != generic  # a good schema still gets its grammar
    finally:
        listener.close()
    assert listener.count == 0
