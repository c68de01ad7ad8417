"""`tierline run --engine ray` with inputs and results on object storage: a real S3 server on
127.0.0.1 (moto's), read and written through pyarrow's S3 filesystem as a bucket on AWS would
be; results as a directory of JSONL parts and a `_SUCCESS` marker (tierline/ray/outputs.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.s3 import client, s3_server
from tierline.cli import main
from tierline.ray import outputs
from tierline.ray.outputs import SUCCESS, UriOutput, part_name

from .conftest import CountingVLLM, content, jobs, vllm_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # moto's and Ray's own
]


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """A real S3 protocol server (moto) on a free port of 127.0.0.1, and pyarrow's S3 client
    pointed at it by the environment, as `aws` would be (AWS_ENDPOINT_URL); dummy keys."""
    with s3_server() as env, pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        yield client(env)


PART = re.compile(r"^part-\d{5}\.jsonl$")


def put(s3: Any, key: str, data: bytes) -> None:
    with s3.open_output_stream(key) as out:
        out.write(data)


def get(s3: Any, key: str) -> bytes:
    with s3.open_input_stream(key) as stream:
        return bytes(stream.read())


def names(s3: Any, prefix: str) -> list[str]:
    from pyarrow import fs as pafs

    listed = s3.get_file_info(pafs.FileSelector(prefix, allow_not_found=True))
    return sorted(entry.base_name for entry in listed)


def parts(s3: Any, prefix: str) -> list[bytes]:
    return [get(s3, f"{prefix}/{n}") for n in names(s3, prefix) if PART.match(n)]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", *args])
    return code, capsys.readouterr().err


def by_name(records: list[dict[str, Any]], prefixes: list[str], scratch: Path) -> dict[str, Any]:
    """`content` of result records with the inputs' directory (`prefixes`: a URI there, a
    local path here) taken out of `source` and of the error messages that name it."""
    with scratch.open("w", encoding="utf-8") as fh:
        for record in records:
            line = json.dumps(record)
            for prefix in prefixes:
                line = line.replace(prefix, "")
            fh.write(line + "\n")
    return content(scratch)


def records(data: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for blob in data for line in blob.decode().splitlines()]


def test_jobs_from_s3_results_as_parts_on_s3_are_a_local_runs(
    ray_cluster: Any,
    s3: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs streamed from an S3 prefix (its `_SUCCESS` and dot files skipped, as Ray Data
    does) and results written there as parts of at most PART_LINES lines plus `_SUCCESS`:
    the parts hold a local run's results over the same files (the URI as `source`), one line
    per job, and the staging file is gone."""
    monkeypatch.setattr(outputs, "PART_LINES", 7)
    s3.create_dir("tl-jobs")
    a = jobs(tmp_path / "a.jsonl", 30)  # 30 jobs, duplicates, two bad lines
    b = tmp_path / "b.jsonl"
    b.write_text('{"id": "b1", "prompt": "Another one."}\n')
    put(s3, "tl-jobs/in/a.jsonl", a.read_bytes())
    put(s3, "tl-jobs/in/sub/b.jsonl", b.read_bytes())
    put(s3, "tl-jobs/in/_SUCCESS", b"")
    put(s3, "tl-jobs/in/.a.jsonl.crc", b"not jobs\n")
    with CountingVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        code, _ = run(capsys, str(a), str(b), "-c", config, "-o", "l.jsonl", "--ledger", "l.db")
        code_ray, err = run(
            capsys, "s3://tl-jobs/in/", "-c", config, "-o", "s3://tl-jobs/out/",
            "--ledger", str(tmp_path / "r.db"), "--engine", "ray",
        )  # fmt: skip
    assert code == code_ray == 1, err  # the two bad lines
    found = names(s3, "tl-jobs/out")
    lines = sum(len(p.splitlines()) for p in parts(s3, "tl-jobs/out"))
    assert lines == 31 + 6  # every job once: 31 numbered, 4 copies, 2 bad lines
    assert found == [SUCCESS, *(part_name(i) for i in range(6))]  # ceil(37 / 7) parts
    assert [len(p.splitlines()) for p in parts(s3, "tl-jobs/out")] == [7, 7, 7, 7, 7, 2]
    results = records(parts(s3, "tl-jobs/out"))
    assert {r["source"] for r in results} == {
        "s3://tl-jobs/in/a.jsonl",
        "s3://tl-jobs/in/sub/b.jsonl",
    }
    local = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    uris = ["s3://tl-jobs/in/sub/", "s3://tl-jobs/in/"]
    assert by_name(results, uris, tmp_path / "x") == by_name(
        local, [f"{tmp_path}/"], tmp_path / "y"
    )
    assert get(s3, f"tl-jobs/out/{SUCCESS}") == b""
    assert not list(tmp_path.glob(".r.db.out-*")), "the staging file is removed once published"


def test_parts_concatenated_are_the_file_and_stale_parts_go(s3: Any, tmp_path: Path) -> None:
    """Publishing cuts the journal's file into parts by lines or by bytes, whichever comes
    first (a line never split): concatenated in name order they are the file, byte for byte.
    An earlier, longer output's parts and `_SUCCESS` are replaced; nothing else is touched."""
    s3.create_dir("tl-parts")
    put(s3, "tl-parts/out/part-00007.jsonl", b"old\n")  # an earlier run's, beyond the new count
    put(s3, "tl-parts/out/part-00001.jsonl", b"old\n")
    put(s3, f"tl-parts/out/{SUCCESS}", b"")
    put(s3, "tl-parts/out/README", b"mine\n")  # not tierline's: stays
    put(s3, "tl-parts/out/part-7.txt", b"mine\n")
    lines = [f'{{"n": "{i:03d}"}}\n'.encode() for i in range(23)]  # 13 bytes each
    target = UriOutput("s3://tl-parts/out/", tmp_path / "l.db")
    target.check()
    for part_lines, part_bytes, sizes in [
        (5, 10**6, [5, 5, 5, 5, 3]),  # by lines
        (100, 10, [1] * 23),  # a line longer than a part is a part of its own, whole
        (100, 40, [3, 3, 3, 3, 3, 3, 3, 2]),  # by bytes: three lines fit 40; 15 parts fewer
    ]:
        staging = tmp_path / "staging.jsonl"
        staging.write_bytes(b"".join(lines))
        target.part_lines, target.part_bytes = part_lines, part_bytes
        assert target.publish(str(staging)) == len(sizes)
        got = parts(s3, "tl-parts/out")
        assert [len(p.splitlines()) for p in got] == sizes
        assert b"".join(got) == b"".join(lines)
        assert all(len(p) <= part_bytes or len(p.splitlines()) == 1 for p in got)
        assert not staging.exists()
    assert names(s3, "tl-parts/out") == [
        "README",
        SUCCESS,
        *(part_name(i) for i in range(8)),
        "part-7.txt",
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert target.publish(str(empty)) == 1  # no results: one empty part, as an empty file
    assert names(s3, "tl-parts/out") == ["README", SUCCESS, part_name(0), "part-7.txt"]


class BucketGoesAway:
    """Deletes the output bucket when the first job reaches the backend: the run pays, then
    cannot write its parts (what a crash between the run and its upload also leaves)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket, self.done = s3, bucket, False

    def __call__(self, _body: Any) -> None:
        if not self.done:
            self.done = True
            self.s3.delete_dir(self.bucket)


def test_failed_upload_then_rerun_publishes_without_paying_again(
    ray_cluster: Any,
    s3: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bucket is gone when the run ends: exit 74 naming the URI and the local file that
    keeps every result. The same command again sends nothing, writes the parts, removes an
    earlier run's parts beyond its count and its `_SUCCESS` (one `_SUCCESS` at the end) and
    touches nothing else."""
    monkeypatch.setattr(outputs, "PART_LINES", 4)
    s3.create_dir("tl-rerun")
    inputs = str(jobs(tmp_path / "jobs.jsonl", 20))
    args = ["-o", "s3://tl-rerun/out", "--ledger", str(tmp_path / "l.db"), "--engine", "ray"]
    with CountingVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        srv.set_responder(BucketGoesAway(s3, "tl-rerun"))
        code, err = run(capsys, inputs, "-c", config, *args)
        assert code == 74, err
        assert "cannot write the results to s3://tl-rerun/out" in err and "rerun" in err
        paid = srv.completed
        assert paid == 20 + 1  # the numbered jobs and one of the identical ones
        staging = list(tmp_path.glob(".l.db.out-*.jsonl"))
        assert len(staging) == 1 and len(staging[0].read_text().splitlines()) == 26
        # the bucket is back, with an earlier run's longer output and a file of someone else's
        s3.create_dir("tl-rerun")
        for i in range(12):
            put(s3, f"tl-rerun/out/{part_name(i)}", b"stale\n")
        put(s3, f"tl-rerun/out/{SUCCESS}", b"")
        put(s3, "tl-rerun/out/notes.txt", b"mine\n")
        code, err = run(capsys, inputs, "-c", config, *args)
        assert srv.completed == paid  # every result was kept: nothing sent again
    assert code == 1, err  # the kept results hold the two bad lines, as the first run's
    assert "resumed: kept 26 result(s)" in err
    assert names(s3, "tl-rerun/out") == [SUCCESS, "notes.txt", *(part_name(i) for i in range(7))]
    assert get(s3, "tl-rerun/out/notes.txt") == b"mine\n"
    results = records(parts(s3, "tl-rerun/out"))
    assert len(results) == 26 and len({r["key"] for r in results}) == 26
    assert not list(tmp_path.glob(".l.db.out-*"))
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == paid


class TermAfter:
    """Sends this process SIGTERM when the `n`th job reaches the backend: the driver (this
    process: the CLI runs in-process) stops as it would under `kill -TERM`."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def __call__(self, _body: Any) -> None:
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGTERM)


def test_interrupted_run_then_rerun_resumes_into_parts(
    ray_cluster: Any,
    s3: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM mid-run: exit 143, the results so far in the local staging file (the hint names
    it), and an earlier complete output at the URI left as it was (its `_SUCCESS` included).
    The same command again sends only the rest (no job paid twice), replaces the earlier
    output's parts and leaves one `_SUCCESS` and no stale part."""
    monkeypatch.setattr(outputs, "PART_LINES", 5)
    s3.create_dir("tl-term")
    for i in range(12):  # yesterday's output, longer
        put(s3, f"tl-term/out/{part_name(i)}", b"yesterday\n")
    put(s3, f"tl-term/out/{SUCCESS}", b"")
    inputs = str(jobs(tmp_path / "jobs.jsonl", 40))
    args = ["-o", "s3://tl-term/out/", "--ledger", str(tmp_path / "l.db"), "--engine", "ray"]
    args += ["--ray-actors", "1", "--grace", "30"]
    with CountingVLLM(latency_ms=50) as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv], max_concurrency=2))
        srv.set_responder(TermAfter(10))
        code, err = run(capsys, inputs, "-c", config, *args)
        assert code == 143, err
        assert ".l.db.out-" in err and ".partial" in err and "rerun the same command" in err
        assert names(s3, "tl-term/out") == [SUCCESS, *(part_name(i) for i in range(12))]
        assert parts(s3, "tl-term/out") == [b"yesterday\n"] * 12
        first = srv.completed
        assert 0 < first < 40 + 1
        srv.set_responder(None)
        code, err = run(capsys, inputs, "-c", config, *args)
        assert code == 1, err  # the two bad lines
    twice = {prompt: n for prompt, n in srv.by_prompt.items() if n > 1}
    assert len(srv.by_prompt) == 40 + 1 and not twice, twice
    assert names(s3, "tl-term/out") == [SUCCESS, *(part_name(i) for i in range(10))]  # 46 / 5
    results = records(parts(s3, "tl-term/out"))
    assert len(results) == 46 and len({r["key"] for r in results}) == 46
    assert not list(tmp_path.glob(".l.db.out-*"))


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("s3://tl-no-such-bucket/out/", "cannot write there"),
        ("s3://tl-bad/a-file", "is a file"),
        ("s3://tl-bad/out/?endpoint_override=127.0.0.1:1&scheme=http", "cannot write there"),
        ("nosuchscheme://x/out/", "do not know this scheme"),
    ],
)
def test_unwritable_output_uri_is_a_usage_error_before_anything_is_paid(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str, why: str
) -> None:
    """A missing bucket, an object where the directory should be, an endpoint that does not
    answer, a scheme pyarrow cannot write: exit 2 naming the URI, nothing sent, the ledger
    empty, no staging file."""
    from pyarrow import fs as pafs

    if s3.get_file_info("tl-bad").type == pafs.FileType.NotFound:
        s3.create_dir("tl-bad")
        put(s3, "tl-bad/a-file", b"x\n")
    with CountingVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 5))
        ledger = tmp_path / "l.db"
        code, err = run(
            capsys, inputs, "-c", config, "-o", output, "--ledger", str(ledger), "--engine", "ray"
        )
        assert srv.request_count == 0
    assert code == 2, err
    assert output.split("?")[0].rstrip("/") in err and why in err
    if ledger.exists():
        with sqlite3.connect(ledger) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            assert "calls" not in tables or not db.execute("SELECT * FROM calls").fetchall()
    assert not list(tmp_path.glob(".l.db.out-*"))


def test_output_uri_holding_an_input_is_a_usage_error(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o naming the directory an input is in (an s3:// prefix, or file:// over a local
    path): exit 2 before anything is sent; the input is untouched."""
    s3.create_dir("tl-same")
    (tmp_path / "in").mkdir()
    local = jobs(tmp_path / "in" / "jobs.jsonl", 3)
    put(s3, "tl-same/data/jobs.jsonl", local.read_bytes())
    cases = [
        ("s3://tl-same/data/jobs.jsonl", "s3://tl-same/data/"),
        ("s3://tl-same/data/", "s3://tl-same/data"),
        (str(local), (tmp_path / "in").as_uri()),
        (str(local), tmp_path.as_uri() + "/"),
    ]
    with CountingVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        for source, output in cases:
            code, err = run(
                capsys, source, "-c", config, "-o", output, "--ledger", "l.db", "--engine", "ray"
            )
            assert code == 2 and f"holds the input {source}" in err, (source, output, err)
        assert srv.request_count == 0
    assert names(s3, "tl-same/data") == ["jobs.jsonl"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["jobs.jsonl"]


def test_output_uri_needs_engine_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-o URI with the local engine: exit 2 saying to use --engine ray, before anything is
    sent (a local run writes a file or stdout)."""
    with CountingVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 5))
        code, err = run(capsys, inputs, "-c", config, "-o", "s3://bucket/out/", "--ledger", "l.db")
        assert srv.request_count == 0
    assert code == 2 and "s3://bucket/out/" in err and "--engine ray" in err


def test_file_uri_output_is_a_directory_of_parts(
    ray_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o file:///dir/: the directory is made, one part (under PART_LINES) and `_SUCCESS`;
    the part is the results a local run writes to -o PATH."""
    out = tmp_path / "results" / "today"
    with CountingVLLM() as srv:
        config = str(vllm_config(tmp_path / "t.toml", [srv]))
        inputs = str(jobs(tmp_path / "jobs.jsonl", 12))
        code, _ = run(capsys, inputs, "-c", config, "-o", "l.jsonl", "--ledger", "l.db")
        code_ray, err = run(
            capsys, inputs, "-c", config, "-o", out.as_uri() + "/", "--ledger", "r.db",
            "--engine", "ray",
        )  # fmt: skip
    assert code == code_ray == 1, err
    assert sorted(p.name for p in out.iterdir()) == [SUCCESS, part_name(0)]
    assert content(out / part_name(0)) == content(tmp_path / "l.jsonl")
