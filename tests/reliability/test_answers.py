"""Never pay twice: in-run dedup and the answer cache, against a real fake vLLM server and a
real SQLite cache file (docs/cache.md)."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeVLLM
from tierline.cli import main
from tierline.config import embedded_default
from tierline.dispatch.answers import AnswerCache, Answers
from tierline.jobs import Result, jobs_from_lines

from .conftest import read_results
from .procs import vllm_config

T0 = "[defaults]\ntemperature = 0\n"


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM(model="m") as server:
        yield server


def chat_requests(server: FakeVLLM) -> list[str]:
    """The prompt of every chat request the fake received."""
    return [
        r.body["messages"][-1]["content"]
        for r in list(server.requests)
        if r.path.endswith("/chat/completions") and isinstance(r.body, dict)
    ]


def dup_jobs(path: Path, count: int, unique: int, **extra: Any) -> Path:
    """`count` jobs over `unique` prompts, each with its own id and metadata."""
    lines = [
        json.dumps({"id": f"j{i}", "prompt": f"Q{i % unique}?", "metadata": {"n": i}, **extra})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ledger_calls(ledger: Path) -> int:
    with sqlite3.connect(ledger) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def run_row(ledger: Path) -> tuple[int, int, int]:
    with sqlite3.connect(ledger) as conn:
        row = conn.execute(
            "SELECT jobs, deduped, cached FROM runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def tierline(tmp_path: Path, jobs: Path, out: str, config: Path, *extra: str) -> int:
    ledger = str(tmp_path / "ledger.db")
    return main(["run", str(jobs), "-o", str(tmp_path / out), "-c", str(config), "-q",
                 "--ledger", ledger, *extra])  # fmt: skip


class TestDedup:
    def test_identical_jobs_are_sent_once(self, tmp_path: Path, vllm: FakeVLLM) -> None:
        """20 jobs over 5 prompts: 5 requests, 5 ledger calls, 20 result lines, each with its
        own id, line and metadata; a copy names a sent job of the same prompt and costs 0."""
        config = vllm_config(tmp_path / "t.toml", vllm, extra=T0)
        jobs = dup_jobs(tmp_path / "j.jsonl", 20, 5)
        assert tierline(tmp_path, jobs, "out.jsonl", config) == 0
        assert sorted(chat_requests(vllm)) == [f"Q{i}?" for i in range(5)]
        assert ledger_calls(tmp_path / "ledger.db") == 5
        assert run_row(tmp_path / "ledger.db") == (20, 15, 0)
        results = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
        assert len(results) == 20
        sent = {i for i, r in results.items() if "dedup_of" not in r}
        assert len(sent) == 5
        for i, r in results.items():
            n = int(i[1:])
            assert r["metadata"] == {"n": n} and r["line"] == n + 1
            if i in sent:
                continue
            first = results[r["dedup_of"]]
            assert first["id"] in sent and int(first["id"][1:]) % 5 == n % 5
            assert r["output"] == first["output"] and r["status"] == "ok"
            assert r["cost_usd"] == 0 and r["attempts"] == 0 and r["route"] == []

    def test_anything_sent_that_differs_is_sent_again(self, tmp_path: Path, vllm: FakeVLLM) -> None:
        """Same prompt, but another system prompt, max_tokens, response_format or tier: each is
        its own request. Only id and metadata may differ for two jobs to share an answer."""
        config = vllm_config(tmp_path / "t.toml", vllm, extra=T0)
        variants = [
            {},
            {"system": "Be terse."},
            {"max_tokens": 7},
            {"response_format": {"type": "json_object"}},
            {"tier": 3},
        ]
        lines = [
            json.dumps({"id": f"v{i}", "prompt": "Same?", **v}) for i, v in enumerate(variants)
        ]
        lines.append(json.dumps({"id": "copy", "prompt": "Same?", "metadata": {"x": 1}}))
        jobs = tmp_path / "j.jsonl"
        jobs.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert tierline(tmp_path, jobs, "out.jsonl", config) == 0
        assert len(chat_requests(vllm)) == len(variants)
        copies = {r["id"]: r.get("dedup_of") for r in read_results(tmp_path / "out.jsonl")}
        assert copies == {**{f"v{i}": None for i in range(5)}, "copy": "v0"}

    def test_sampled_jobs_are_sent_each_unless_the_config_says(
        self, tmp_path: Path, vllm: FakeVLLM
    ) -> None:
        """Temperature unset (the backend's default) or > 0: every job is sent; with
        `[dedup] sampled = true`, once per prompt."""
        jobs = dup_jobs(tmp_path / "j.jsonl", 8, 2, temperature=0.7)
        config = vllm_config(tmp_path / "t.toml", vllm)
        assert tierline(tmp_path, jobs, "a.jsonl", config) == 0
        assert len(chat_requests(vllm)) == 8
        config = vllm_config(tmp_path / "t.toml", vllm, extra="[dedup]\nsampled = true\n")
        assert tierline(tmp_path, jobs, "b.jsonl", config) == 0
        assert len(chat_requests(vllm)) == 8 + 2

    def test_finished_answers_are_bounded(self, tmp_path: Path, vllm: FakeVLLM) -> None:
        """With `keep = 0` and one job in flight at a time, a duplicate further down is sent
        again: nothing finished is kept in memory."""
        config = vllm_config(
            tmp_path / "t.toml", vllm, max_concurrency=1, extra=T0 + "[dedup]\nkeep = 0\n"
        )
        jobs = dup_jobs(tmp_path / "j.jsonl", 6, 2)
        assert tierline(tmp_path, jobs, "out.jsonl", config) == 0
        assert len(chat_requests(vllm)) > 2  # window of 2: some copies wait, later ones resend


class TestCache:
    def test_second_run_sends_nothing(
        self, tmp_path: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Run 1 fills the cache; run 2 of the same jobs makes 0 requests and 0 ledger calls,
        its results are `cached: true` at cost 0, and the ledger counts them."""
        config = vllm_config(tmp_path / "t.toml", vllm, extra=T0)
        jobs = dup_jobs(tmp_path / "j.jsonl", 12, 12)
        cache = str(tmp_path / "cache.sqlite")
        assert tierline(tmp_path, jobs, "a.jsonl", config, "--cache", cache) == 0
        assert len(chat_requests(vllm)) == 12
        calls = ledger_calls(tmp_path / "ledger.db")
        assert tierline(tmp_path, jobs, "b.jsonl", config, "--cache", cache) == 0
        assert len(chat_requests(vllm)) == 12 and ledger_calls(tmp_path / "ledger.db") == calls
        assert run_row(tmp_path / "ledger.db") == (12, 0, 12)
        first = {r["id"]: r for r in read_results(tmp_path / "a.jsonl")}
        for r in read_results(tmp_path / "b.jsonl"):
            assert r["cached"] is True and r["cost_usd"] == 0 and r["status"] == "ok"
            assert (
                r["output"] == first[r["id"]]["output"]
                and r["metadata"] == first[r["id"]]["metadata"]
            )
        capsys.readouterr()
        assert main(["ledger", "summary", "--ledger", str(tmp_path / "ledger.db")]) == 0
        assert "12 from the answer cache" in capsys.readouterr().err

    def test_config_section_ttl_expires(self, tmp_path: Path, vllm: FakeVLLM) -> None:
        """`[cache]` in the config turns it on; an entry older than `ttl_s` is sent again."""
        cache = tmp_path / "c.sqlite"
        config = vllm_config(
            tmp_path / "t.toml", vllm, extra=T0 + f'[cache]\npath = "{cache}"\nttl_s = 60\n'
        )
        jobs = dup_jobs(tmp_path / "j.jsonl", 3, 3)
        assert tierline(tmp_path, jobs, "a.jsonl", config) == 0
        with sqlite3.connect(cache) as conn:  # age one entry past the TTL
            conn.execute(
                "UPDATE answers SET created = created - 120 WHERE key = "
                "(SELECT key FROM answers ORDER BY key LIMIT 1)"
            )
        assert tierline(tmp_path, jobs, "b.jsonl", config) == 0
        assert len(chat_requests(vllm)) == 3 + 1
        assert sum("cached" in r for r in read_results(tmp_path / "b.jsonl")) == 2

    def test_size_bound_evicts_the_oldest(self, tmp_path: Path) -> None:
        cache = AnswerCache(tmp_path / "c.sqlite", ttl_s=3600, max_bytes=2000)
        for i in range(100):
            cache.put(f"{i:032x}", {"output": "x" * 100})
        cache.close()
        cache = AnswerCache(tmp_path / "c.sqlite", ttl_s=3600, max_bytes=2000)
        stored = cache.conn.execute("SELECT SUM(size), COUNT(*) FROM answers").fetchone()
        assert stored[0] <= 2000 and stored[1] > 0
        assert cache.get(f"{99:032x}") is not None and cache.get(f"{0:032x}") is None
        cache.close()

    def test_only_ok_answers_are_stored(self, tmp_path: Path) -> None:
        cache = AnswerCache(tmp_path / "c.sqlite", ttl_s=3600, max_bytes=10**6)
        answers = Answers(embedded_default(), cache)
        [job] = jobs_from_lines(['{"id": "a", "prompt": "p", "temperature": 0}'])
        key = answers.key(job)  # type: ignore[arg-type]
        assert key is not None
        answers.finish(key, Result(id="a", line=1, source="x", status="error", output="bad"))
        assert cache.get(key) is None
        answers.finish(key, Result(id="a", line=1, source="x", status="ok", output="good"))
        assert cache.get(key) == {**dict.fromkeys(("tier", "why", "confidence", "backend",
                                   "model", "finish_reason")), "output": "good",
                                  "escalations": 0}  # fmt: skip
        cache.close()


WRITER = """
import sys
import time
from pathlib import Path
from tierline.dispatch.answers import AnswerCache
cache = AnswerCache(Path(sys.argv[1]), ttl_s=3600, max_bytes=1 << 30)
tag = sys.argv[2]
i = 0
while True:
    cache.put(f"{tag}{i:031x}", {"output": f"{tag}-{i}-" + "y" * 2000})
    i += 1
    time.sleep(0.001)  # a run writes between calls; a tight loop would starve the other
"""


def test_kill_9_mid_write_leaves_no_torn_entry(tmp_path: Path) -> None:
    """Two processes insert into one cache at once (overlapping runs); both are killed with
    SIGKILL mid-write. The file is intact and every entry is whole and matches its key."""
    path = tmp_path / "c.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag]) for tag in "ab"]
    deadline = time.monotonic() + 120  # guards against a hang only
    written: dict[str, int] = {}
    while min(written.get("a", 0), written.get("b", 0)) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        with (
            contextlib.suppress(sqlite3.OperationalError),  # not created yet
            sqlite3.connect(path, timeout=10) as conn,
        ):
            written = dict(
                conn.execute("SELECT substr(key, 1, 1), COUNT(*) FROM answers GROUP BY 1")
            )
    for proc in procs:
        assert proc.poll() is None  # still writing: killed mid-stream
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = conn.execute("SELECT key, answer FROM answers").fetchall()
    conn.close()
    assert min(written.values()) >= 200 and len(rows) >= 400
    assert {key[0] for key, _ in rows} == {"a", "b"}
    for key, blob in rows:
        tag, i = key[0], int(key[1:], 16)
        assert json.loads(blob) == {"output": f"{tag}-{i}-" + "y" * 2000}
