"""Resume: the key, the journal's recovery of a crashed attempt, and `tierline run` rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierline.cli import main
from tierline.config import config_from_toml, embedded_default
from tierline.dispatch import registry
from tierline.jobs import Result, jobs_from_lines
from tierline.resume import OPERATIONAL, Journal, job_key, route_fingerprint
from tierline.testing import FunctionBackend

from .conftest import Calls, jobs_file, read_results


def one_job(line: str, source: str = "a.jsonl"):  # type: ignore[no-untyped-def]
    [item] = jobs_from_lines([line], source=source)
    return item


class TestKey:
    ROUTE = route_fingerprint(embedded_default())

    def test_key_ignores_line_number_and_file(self) -> None:
        """The same job at another line or in another file has the same key."""
        first = one_job('{"id": "x", "prompt": "hi"}')
        moved = next(iter(jobs_from_lines(["", "", '{"id": "x", "prompt": "hi"}'], "b.jsonl")))
        assert first.line != moved.line
        assert job_key(first, self.ROUTE) == job_key(moved, self.ROUTE)

    @pytest.mark.parametrize(
        "other",
        [
            '{"id": "x", "prompt": "hi!"}',
            '{"id": "y", "prompt": "hi"}',
            '{"id": "x", "prompt": "hi", "max_tokens": 5}',
            '{"id": "x", "prompt": "hi", "metadata": {"k": 1}}',
        ],
    )
    def test_key_changes_with_content(self, other: str) -> None:
        """Any change to the job's content or id is a new key."""
        base = one_job('{"id": "x", "prompt": "hi"}')
        assert job_key(base, self.ROUTE) != job_key(one_job(other), self.ROUTE)

    def test_field_order_does_not_matter(self) -> None:
        """Keys hash canonical JSON: reordered fields are the same job."""
        a = one_job('{"id": "x", "prompt": "hi", "tier": 2}')
        b = one_job('{"tier": 2, "prompt": "hi", "id": "x"}')
        assert job_key(a, self.ROUTE) == job_key(b, self.ROUTE)


# One backend of each kind, so that every setting of every kind can be changed below.
MIXED = """
[backends.a]
kind = "openai-compatible"
model = "m"
base_url = "http://127.0.0.1:9/v1"
[backends.b]
kind = "llamacpp"
[backends.c]
kind = "openai"
model = "gpt-4o-mini"
[routes]
1 = ["b"]
2 = ["a"]
3 = ["a", "c"]
"""

# How a job is sent, not what answer it gets: one edit per OPERATIONAL setting (its backend, the
# TOML line). The first test checks that this covers every one of them.
SENDING = {
    "max_concurrency": ("a", "max_concurrency = 2"),
    "rpm": ("a", "rpm = 60"),
    "tpm": ("c", "tpm = 10000"),
    "timeout_s": ("b", "timeout_s = 5"),
    "max_attempts": ("c", "max_attempts = 2"),
    "base_url": ("c", 'base_url = "http://127.0.0.1:8/v1"'),
    "base_urls": ("a", 'base_urls = ["http://127.0.0.1:7/v1", "http://127.0.0.1:6/v1"]'),
    "api_key_env": ("a", 'api_key_env = "MY_KEY"'),
    "organization": ("c", 'organization = "org-1"'),
    "n_threads": ("b", "n_threads = 2"),
    "n_gpu_layers": ("b", "n_gpu_layers = 8"),
    "workers": ("b", "workers = 2"),
    "parallel": ("b", "parallel = 4"),
    "max_restarts": ("b", "max_restarts = 1"),
    "price": ("c", "price = {input_per_mtok = 1, output_per_mtok = 2}"),
    "gpu_hour_usd": ("a", "gpu_hour_usd = 2.5"),
    "circuit_failures": ("a", "circuit_failures = 9"),
    "circuit_reset_s": ("c", "circuit_reset_s = 1"),
    "http_client": ("c", 'http_client = "httpx"'),
    "max_in_flight_per_replica": ("a", "max_in_flight_per_replica = 3"),
    "health_check": ("a", "health_check = false"),
    "health_interval_s": ("a", "health_interval_s = 1"),
    "metrics": ("a", "metrics = true"),
    "metrics_interval_s": ("a", "metrics_interval_s = 1"),
    "max_waiting": ("a", "max_waiting = 4"),
    "max_kv_cache_usage": ("a", "max_kv_cache_usage = 0.9"),
}
# What decides the answer: each of these must redo the work.
ANSWERING = {
    "model": ("a", 'model = "m2"'),
    "flavor": ("a", 'flavor = "vllm"'),
    "extra_body": ("a", "extra_body = {top_k = 5}"),
    "max_tokens": ("c", "max_tokens = 64"),
    "model_path": ("b", 'model_path = "other.gguf"'),
    "seed": ("b", "seed = 1"),
    "n_ctx": ("b", "n_ctx = 4096"),
}


def edited(backend: str, line: str) -> bytes:
    """MIXED's route fingerprint with `line` set in `[backends.<backend>]`."""
    head, _, rest = MIXED.partition(f"[backends.{backend}]\n")
    section, bracket, tail = rest.partition("[")
    key = line.split(" ")[0]
    kept = [x for x in section.splitlines() if x.split(" ")[0] not in (key, key.rstrip("s"))]
    text = head + f"[backends.{backend}]\n" + "\n".join([line, *kept]) + "\n" + bracket + tail
    config = config_from_toml(text, origin="t")
    assert config.model_dump() != config_from_toml(MIXED, origin="t").model_dump(), line
    return route_fingerprint(config)


class TestRouteFingerprint:
    BASE = route_fingerprint(config_from_toml(MIXED, origin="t"))

    def test_every_operational_setting_is_covered(self) -> None:
        """SENDING names every setting resume.OPERATIONAL leaves out of the key, and only those."""
        assert set(SENDING) == OPERATIONAL and not set(ANSWERING) & OPERATIONAL

    @pytest.mark.parametrize("name", sorted(SENDING))
    def test_sending_settings_keep_the_work(self, name: str) -> None:
        """New limits, timeouts, URLs, keys, prices or replicas after a crash keep the results."""
        assert edited(*SENDING[name]) == self.BASE

    @pytest.mark.parametrize("name", sorted(ANSWERING))
    def test_answer_settings_redo_the_work(self, name: str) -> None:
        """Another model, flavor, request extras, token limit, seed or context redoes the jobs."""
        assert edited(*ANSWERING[name]) != self.BASE

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            ('2 = ["a"]', '2 = ["b"]'),  # another route
            ('3 = ["a", "c"]', '3 = ["c", "a"]'),  # the same backends in another order
            ("[routes]", "[defaults]\ntemperature = 0.7\n[routes]"),
            ("[routes]", '[tiering]\nbias = "cost"\n[routes]'),
        ],
    )
    def test_routes_defaults_and_tiering_redo_the_work(self, old: str, new: str) -> None:
        """The chain a tier takes, default sampling and the tiering settings redo the jobs."""
        assert route_fingerprint(config_from_toml(MIXED.replace(old, new), origin="t")) != self.BASE


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def crash_after(out: Path, keep: int, tail: bytes = b"") -> None:
    """Turn a finished output back into what a crash after `keep` results leaves behind."""
    lines = out.read_bytes().splitlines(keepends=True)
    partial_of(out).write_bytes(b"".join(lines[:keep]) + tail)
    out.unlink()


class TestJournal:
    def test_torn_and_garbage_lines_are_redone(self, tmp_path: Path) -> None:
        """Only complete, final, keyed lines are kept; the rest of the file is rewritten away."""
        cfg = embedded_default()
        out = tmp_path / "o.jsonl"
        items = list(jobs_from_lines([f'{{"id": "{i}", "prompt": "p"}}' for i in range(4)]))
        with Journal(str(out), cfg) as journal:
            for item in journal.select(items):
                journal.write(
                    Result(
                        id=item.id, line=item.line, source=item.source, status="ok", key=item.key
                    )
                )
            journal.sync()
        good = partial_of(out).read_bytes().splitlines(keepends=True)
        cancelled = json.dumps({"status": "cancelled", "key": "0" * 32}).encode() + b"\n"
        partial_of(out).write_bytes(
            good[0] + b"\x00\x00garbage\n" + good[1] + cancelled + good[2][:9]
        )
        with Journal(str(out), cfg) as journal:
            todo = [item.id for item in journal.select(items)]  # type: ignore[union-attr]
            assert todo == ["2", "3"] and journal.kept == 2
        assert partial_of(out).read_bytes() == good[0] + good[1]

    def test_stdout_never_resumes(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """On stdout there is no partial file and every job is selected."""
        with Journal(None, embedded_default()) as journal:
            items = list(jobs_from_lines(['{"id": 1, "prompt": "p"}']))
            assert list(journal.select(items)) == items and journal.partial is None


class TestRerun:
    def test_rerun_after_crash_does_only_the_rest(
        self, tmp_path: Path, calls: Calls, three_tiers: Path
    ) -> None:
        """A crash after 40 of 100 results, torn line included: the rerun calls 60, output has 100."""
        jobs, out = jobs_file(tmp_path / "j.jsonl", 100), tmp_path / "out.jsonl"
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 0
        crash_after(out, 40, tail=b'{"id": "j99", "status": "o')
        calls.job_ids.clear()
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 0
        results = read_results(out)
        assert sorted(r["id"] for r in results) == sorted(f"j{i}" for i in range(100))
        assert len(calls.job_ids) == 60 and not partial_of(out).exists()
        assert {r["id"] for r in results[:40]}.isdisjoint(calls.job_ids)

    def test_kept_failures_still_fail_the_exit_code(
        self, tmp_path: Path, calls: Calls, three_tiers: Path
    ) -> None:
        """An invalid line kept from the first attempt still makes the resumed run exit 1."""
        jobs = tmp_path / "j.jsonl"
        jobs.write_text(
            '{"id": "bad"}\n{"id": "good", "prompt": "p", "tier": 1}\n', encoding="utf-8"
        )
        out = tmp_path / "out.jsonl"
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 1
        lines = out.read_bytes().splitlines(keepends=True)
        crash_after(out, 1)  # the invalid line happens to be written first
        assert b'"invalid"' in lines[0]
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 1
        assert [r["status"] for r in read_results(out)] == ["invalid", "ok"]

    def test_edited_input_drops_stale_results(
        self, tmp_path: Path, calls: Calls, three_tiers: Path
    ) -> None:
        """Results of jobs no longer in the input are dropped: one line per current job."""
        jobs, out = jobs_file(tmp_path / "j.jsonl", 10), tmp_path / "out.jsonl"
        main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"])
        crash_after(out, 10)
        jobs_file(jobs, 10, start=5)  # j0..j4 are gone, j10..j14 are new
        calls.job_ids.clear()
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 0
        assert sorted(r["id"] for r in read_results(out)) == sorted(f"j{i}" for i in range(5, 15))
        assert sorted(calls.job_ids) == sorted(f"j{i}" for i in range(10, 15))  # type: ignore[type-var]

    def test_duplicated_line_in_partial_is_kept_once(
        self, tmp_path: Path, calls: Calls, three_tiers: Path
    ) -> None:
        """A complete result copied twice into PATH.partial (by hand, by a tool): one line per
        job in the output, and the job is not redone."""
        jobs, out = jobs_file(tmp_path / "j.jsonl", 10), tmp_path / "out.jsonl"
        main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"])
        lines = out.read_bytes().splitlines(keepends=True)
        partial_of(out).write_bytes(b"".join(lines[:4]) + lines[2] + lines[3])
        out.unlink()
        calls.job_ids.clear()
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 0
        ids = [r["id"] for r in read_results(out)]
        assert sorted(ids) == sorted(f"j{i}" for i in range(10))  # 10 lines, not 12
        assert len(calls.job_ids) == 6

    def test_kept_results_get_the_current_line_numbers(
        self, tmp_path: Path, calls: Calls, three_tiers: Path
    ) -> None:
        """The input was edited between the crash and the resume (lines inserted above): a kept
        result names the line its job is on now, so no two results share a line."""
        jobs, out = jobs_file(tmp_path / "j.jsonl", 10), tmp_path / "out.jsonl"
        main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"])
        crash_after(out, 10)
        text = jobs.read_text(encoding="utf-8")
        new = [json.dumps({"id": f"new{i}", "prompt": f"New {i}?", "tier": 1}) for i in range(3)]
        jobs.write_text("\n".join(new) + "\n" + text, encoding="utf-8")
        calls.job_ids.clear()
        assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 0
        assert sorted(calls.job_ids) == ["new0", "new1", "new2"]  # type: ignore[type-var]
        where = {r["id"]: r["line"] for r in read_results(out)}
        current = {json.loads(x)["id"]: n for n, x in enumerate(jobs.read_text().splitlines(), 1)}
        assert where == current

    def test_fresh_redoes_everything(self, tmp_path: Path, calls: Calls, three_tiers: Path) -> None:
        """--fresh ignores an old partial file."""
        jobs, out = jobs_file(tmp_path / "j.jsonl", 6), tmp_path / "out.jsonl"
        main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"])
        crash_after(out, 3)
        calls.job_ids.clear()
        assert (
            main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q", "--fresh"]) == 0
        )
        assert len(calls.job_ids) == 6 and len(read_results(out)) == 6

    def test_resume_note_on_stderr(
        self, tmp_path: Path, calls: Calls, three_tiers: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --quiet the summary says how many results were kept."""
        jobs, out = jobs_file(tmp_path / "j.jsonl", 6), tmp_path / "out.jsonl"
        main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"])
        crash_after(out, 4)
        capsys.readouterr()
        main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers)])
        assert "resumed: kept 4 result(s)" in capsys.readouterr().err


def test_output_appears_only_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, three_tiers: Path
) -> None:
    """While results are written, PATH does not exist; the rename makes it appear whole."""
    jobs, out = jobs_file(tmp_path / "j.jsonl", 5), tmp_path / "out.jsonl"
    seen: list[bool] = []

    def answer(_request: object) -> str:
        seen.append(out.exists())
        return "ok"

    monkeypatch.setitem(
        registry.FACTORIES, "llamacpp", lambda name, _c: FunctionBackend(answer, name=name)
    )
    assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 0
    assert len(seen) == 5 and not any(seen) and len(read_results(out)) == 5
