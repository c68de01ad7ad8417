"""`tierline tiering label` against the fake OpenAI server on 127.0.0.1, through the CLI."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeOpenAI
from tests.fakes._content import Reply
from tierline.cli import main
from tierline.run.label import JUDGE_RUBRIC, parse_verdict

KEY = "sk-test-0123456789abcdef"
WEAK, STRONG = "gpt-4o-mini", "gpt-4.1"


def _last_user(body: Mapping[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def honest_judge(body: Mapping[str, Any]) -> Reply:
    """Weak model: a poor answer; strong model: a good one; as judge (the strong model shown
    the rubric), prefers whichever side holds the good answer."""
    text = _last_user(body)
    if "[Answer A]" in text:
        a = text.split("[Answer A]", 1)[1].split("[Answer B]", 1)[0]
        return Reply(content="[[A]]" if "good answer" in a else "[[B]]")
    if body["model"] == WEAK:
        return Reply(content="maybe")
    return Reply(content="positive" if "Classify" in text else "a good answer")


@pytest.fixture
def oai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("LABEL_OPENAI_API_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


def _config(tmp_path: Path, srv: FakeOpenAI) -> str:
    path = tmp_path / "label.toml"
    backends = "".join(
        f'[backends.{name}]\nkind = "openai"\nmodel = "{model}"\nbase_url = "{srv.base_url}"\n'
        'api_key_env = "LABEL_OPENAI_API_KEY"\n'
        for name, model in (("weak", WEAK), ("strong", STRONG))
    )
    ledger = (tmp_path / "ledger.db").as_posix()
    path.write_text(
        f'{backends}[routes]\n1 = ["weak"]\n2 = ["weak"]\n3 = ["strong"]\n'
        f'[ledger]\npath = "{ledger}"\n'
    )
    return str(path)


def _jobs(tmp_path: Path) -> Path:
    lines = [
        {"id": "a", "prompt": "Write a haiku about autumn."},
        {"id": "b", "prompt": "Explain what a mutex is."},
        {"id": "c", "prompt": "Classify: 'I love it'", "expect": ["positive", "negative"]},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _chat_requests(srv: FakeOpenAI) -> list[Any]:
    return [r for r in srv.requests if r.path == "/v1/chat/completions"]


def _read(path: Path) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in map(json.loads, path.read_text().splitlines())}


def test_label_scores_by_checks_and_by_judge_in_both_orders(
    tmp_path: Path, oai: FakeOpenAI
) -> None:
    """Two plain jobs go to the judge twice each (both orders), the `expect` job is scored by
    its own labels; the outcomes say the strong route won each; the ledger has the calls."""
    oai.set_responder(honest_judge)
    out = tmp_path / "outcomes.jsonl"
    config = _config(tmp_path, oai)
    assert main(["tiering", "label", str(_jobs(tmp_path)), "-o", str(out), "-c", config]) == 0
    rows = _read(out)
    assert set(rows) == {"a", "b", "c"}
    assert rows["c"]["scored_by"] == "checks" and rows["a"]["scored_by"] == "judge"
    assert all((r["weak_score"], r["strong_score"]) == (0.0, 1.0) for r in rows.values())
    assert rows["a"]["prompt"] == "Write a haiku about autumn."
    assert (rows["a"]["weak_model"], rows["a"]["strong_model"]) == (WEAK, STRONG)
    sent = _chat_requests(oai)
    judged = [r for r in sent if "[Answer A]" in _last_user(r.body)]
    assert len(sent) == 6 + 4 and len(judged) == 4
    assert all(r.body["model"] == STRONG for r in judged)
    orders = {re.search(r"\[Answer A\]\s*(\S+)", _last_user(r.body)).group(1) for r in judged}  # type: ignore[union-attr]
    assert orders == {"maybe", "a"}  # the weak answer shown first once, the strong one once
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        runs = db.execute("SELECT command, jobs FROM runs ORDER BY started_at").fetchall()
        calls = db.execute("SELECT count(*) FROM calls").fetchone()[0]
    assert runs == [("tiering label", 6), ("tiering label", 4)] and calls == 10


def test_a_judge_that_always_picks_a_cancels_out(tmp_path: Path, oai: FakeOpenAI) -> None:
    """Position bias: a judge that always says [[A]] gives each side one win: 0.5 / 0.5."""
    oai.set_responder(
        lambda body: Reply(content="[[A]]") if "[Answer A]" in _last_user(body) else None
    )
    jobs = tmp_path / "one.jsonl"
    jobs.write_text('{"id": "x", "prompt": "Name a colour."}\n')
    out = tmp_path / "o.jsonl"
    assert main(["tiering", "label", str(jobs), "-o", str(out), "-c", _config(tmp_path, oai)]) == 0
    row = _read(out)["x"]
    assert (row["weak_score"], row["strong_score"]) == (0.5, 0.5)


def test_rerun_resumes_without_sending_again(tmp_path: Path, oai: FakeOpenAI) -> None:
    """The same command again sends nothing and writes the same outcomes."""
    oai.set_responder(honest_judge)
    out = tmp_path / "outcomes.jsonl"
    args = ["tiering", "label", str(_jobs(tmp_path)), "-o", str(out), "-c", _config(tmp_path, oai)]
    assert main(args) == 0
    first, sent = out.read_text(), len(_chat_requests(oai))
    assert main(args) == 0
    assert out.read_text() == first and len(_chat_requests(oai)) == sent


def test_max_cost_below_the_plan_sends_nothing(
    tmp_path: Path, oai: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """An estimate over --max-cost exits 3 before the first call."""
    out = tmp_path / "outcomes.jsonl"
    args = ["tiering", "label", str(_jobs(tmp_path)), "-o", str(out), "-c", _config(tmp_path, oai)]
    assert main([*args, "--max-cost", "0.0000001"]) == 3
    assert _chat_requests(oai) == [] and not out.exists()
    assert "over --max-cost" in capsys.readouterr().err


def test_bad_job_line_is_a_usage_error(tmp_path: Path, oai: FakeOpenAI) -> None:
    """A bad line exits 2 and nothing is sent."""
    jobs = tmp_path / "bad.jsonl"
    jobs.write_text('{"id": "a", "prompt": "hi"}\n{"id": 5}\n')
    out = tmp_path / "o.jsonl"
    assert main(["tiering", "label", str(jobs), "-o", str(out), "-c", _config(tmp_path, oai)]) == 2
    assert _chat_requests(oai) == []


def test_parse_verdict_and_rubric() -> None:
    """One verdict in the reply, or none; the rubric names all three verdicts."""
    assert parse_verdict("[[B]]") == "B" and parse_verdict("Verdict: [[ tie ]]") == "TIE"
    assert parse_verdict("A is better") is None and parse_verdict("[[A]] or [[B]]") is None
    assert all(v in JUDGE_RUBRIC for v in ("[[A]]", "[[B]]", "[[TIE]]"))


def test_a_stopped_phase_ends_the_labelling_without_outcomes(
    tmp_path: Path, oai: FakeOpenAI
) -> None:
    """`tierline.run.label.label` with the run stopped (as by SIGTERM) before the answers are
    sent: the answers phase reports it, the verdicts are never built, no outcomes file."""
    from tierline.config import load_config
    from tierline.errors import ExitCode
    from tierline.interrupts import Stop
    from tierline.jobs import Job, read_jobs
    from tierline.run.label import label

    oai.set_responder(honest_judge)
    config = load_config(_config(tmp_path, oai))
    jobs = [j for j in read_jobs([str(_jobs(tmp_path))]) if isinstance(j, Job)]
    stop = Stop()
    stop.halt(ExitCode.TERMINATED)
    heard: list[tuple[str, int]] = []
    out = tmp_path / "outcomes.jsonl"
    done = label(
        jobs,
        out,
        config=config,
        ledger_path=tmp_path / "ledger.db",
        max_cost_micros=None,
        tiers=(1, 3, 3),
        stop=stop,
        on_estimate=lambda name, calls, _micros: heard.append((name, calls)),
    )
    assert (done.stopped, done.exit_code, done.over_budget) == ("answers", 143, False)
    assert heard == [("answers", 6)] and done.scored == [] and not out.exists()
    assert _chat_requests(oai) == []
