"""Escalation: an answer that fails its checks moves up a tier; every attempt is kept and paid."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from tests.fakes import FakeAnthropic, FakeVLLM
from tierline.cli import main
from tierline.cli.output import escalation_line
from tierline.config import Config, config_from_mapping
from tierline.errors import ConfigError
from tierline.jobs import Result, jobs_from_lines
from tierline.ledger.budget import Budget
from tierline.ledger.store import Ledger
from tierline.run import RunSummary, run_jobs
from tierline.testing import FakeBackend, completion
from tierline.tiering.pipeline import Tierer

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}


def config(
    escalation: Mapping[str, Any] | None = MappingProxyType({"max_hops": 2}),
    routes: dict[str, list[str]] | None = None,
) -> Config:
    data: dict[str, Any] = {
        "backends": {
            name: {"kind": "llamacpp", "max_attempts": 1, "price": PRICE}
            for name in ("small", "mid", "big")
        },
        "routes": routes or {"1": ["small"], "2": ["mid"], "3": ["big"]},
    }
    if escalation is not None:
        data["escalation"] = dict(escalation)
    return config_from_mapping(data, origin="test")


def line(**fields: Any) -> bytes:
    return orjson.dumps({"id": "j", "tier": 1, "prompt": "Extract n from: n is 7.", **fields})


async def run(
    cfg: Config, lines: list[bytes], fakes: dict[str, FakeBackend], ledger: Ledger | None = None
) -> tuple[list[Result], RunSummary]:
    results: list[Result] = []
    run_id = ledger.start_run(command="t", config_origin="t", inputs=["t"]) if ledger else None
    summary = await run_jobs(
        jobs_from_lines(lines),
        config=cfg,
        tierer=Tierer.from_config(cfg.tiering),
        sink=results.append,
        backends=fakes,
        ledger=ledger,
        run_id=run_id,
    )
    return results, summary


def fakes(small: list[Any], mid: list[Any] = (), big: list[Any] = ()) -> dict[str, FakeBackend]:  # type: ignore[assignment]
    return {
        "small": FakeBackend("small").enqueue(*small),
        "mid": FakeBackend("mid").enqueue(*mid),
        "big": FakeBackend("big").enqueue(*big),
    }


JSON_JOB = {"response_format": {"type": "json_object", "schema": SCHEMA}}


@pytest.mark.parametrize(
    ("fields", "bad", "check"),
    [
        (JSON_JOB, completion('{"n": "seven"}'), "json"),
        (JSON_JOB, completion('{"n": 7'), "json"),
        ({}, completion("   "), "empty"),
        ({}, completion("I'm sorry, but I can't help with that."), "refusal"),
        ({}, completion("The answer is", finish_reason="length"), "truncated"),
        ({"expect": ["positive", "negative"]}, completion("It depends."), "expect"),
    ],
)
async def test_failed_answer_moves_up_a_tier(fields: dict[str, Any], bad: Any, check: str) -> None:
    """Invalid JSON, empty, refused, truncated and unexpected answers are re-sent one tier up."""
    good = completion('{"n": 7}' if fields is JSON_JOB else "negative")
    [result], summary = await run(config(), [line(**fields)], fakes([bad], [good]))
    assert result.status == "ok" and result.backend == "mid" and result.escalations == 1
    assert result.tier == 1  # the tier tiering decided; the route shows where it ended up
    assert [(h.backend, h.tier) for h in result.route] == [("small", 1), ("mid", 2)]
    assert (
        result.route[0].to_dict()["check"]["failed"] == check
        and "check" not in result.route[1].to_dict()
    )
    assert summary.tally.escalated[1] == 1 and summary.tally.failed_checks["small"] == 1


async def test_every_attempt_is_paid_and_in_the_ledger(tmp_path: Path) -> None:
    """The cost of a failed attempt counts: the result and the ledger attribute both calls."""
    bad, good = (
        completion('{"n": "x"}', input_tokens=1000),
        completion('{"n": 7}', input_tokens=1000),
    )
    with Ledger(tmp_path / "l.db") as ledger:
        [result], _ = await run(config(), [line(**JSON_JOB)], fakes([bad], [good]), ledger)
    expected = sum(1000 * 1.0 + c.usage.output_tokens * 2.0 for c in (bad, good)) / 1e6
    assert result.cost_usd == pytest.approx(expected)
    rows = (
        sqlite3.connect(tmp_path / "l.db")
        .execute("SELECT backend, tier, hop, check_failed, cost_nanos FROM calls ORDER BY hop")
        .fetchall()
    )
    assert [r[:4] for r in rows] == [("small", 1, 1, "json"), ("mid", 2, 2, None)]
    assert sum(r[4] for r in rows) / 1e9 == pytest.approx(result.cost_usd)


async def test_gives_up_after_max_hops_and_keeps_the_answer() -> None:
    """When every tier fails the check, the job is an error that still carries the last answer."""
    cfg = config({"max_hops": 1})
    [result], summary = await run(
        cfg, [line(**JSON_JOB)], fakes(["nope"], ["still not json"], ['{"n": 1}'])
    )
    assert result.status == "error" and result.escalations == 1 and result.backend == "mid"
    assert result.error is not None and result.error["type"] == "check_failed"
    assert "'json'" in result.error["message"] and result.output == "still not json"
    assert int(summary.exit_code) == 1


async def test_no_escalation_section_means_no_checks() -> None:
    """Without [escalation] answers are not checked: the first answer is the result."""
    [result], _ = await run(config(None), [line(**JSON_JOB)], fakes(["not json"]))
    assert result.status == "ok" and result.escalations == 0 and result.output == "not json"


async def test_job_can_choose_its_checks() -> None:
    """A job's own `checks` replace the tier's: an empty list turns checking off for it."""
    [off], _ = await run(config(), [line(checks=[], **JSON_JOB)], fakes(["not json"]))
    assert off.status == "ok" and off.escalations == 0
    [only_empty], _ = await run(config(), [line(checks=["empty"], **JSON_JOB)], fakes(["not json"]))
    assert only_empty.status == "ok"


async def test_per_tier_checks() -> None:
    """[escalation.tiers.N] sets the checks for answers from that tier's route."""
    cfg = config({"max_hops": 1, "tiers": {"1": {"checks": ["truncated"]}}})
    [result], _ = await run(cfg, [line(**JSON_JOB)], fakes(["not json"]))
    assert result.status == "ok"  # json is not checked on tier 1 here
    [cut], _ = await run(
        cfg, [line(**JSON_JOB)], fakes([completion("x", finish_reason="length")], ['{"n": 2}'])
    )
    assert cut.escalations == 1 and cut.status == "ok"


async def test_same_backend_on_the_next_tier_is_skipped() -> None:
    """Re-sending to the backend that just failed would only pay twice: go to the next one."""
    cfg = config({"max_hops": 2}, routes={"1": ["small"], "2": ["small"], "3": ["big"]})
    [result], _ = await run(cfg, [line(**JSON_JOB)], fakes(["bad"], [], ['{"n": 3}']))
    assert [h.backend for h in result.route] == ["small", "big"] and result.status == "ok"
    cfg_all_same = config({"max_hops": 2}, routes={"1": ["small"], "2": ["small"], "3": ["small"]})
    [stuck], _ = await run(cfg_all_same, [line(**JSON_JOB)], fakes(["bad"]))
    assert stuck.status == "error" and stuck.escalations == 0 and len(stuck.route) == 1


async def test_over_http_truncated_vllm_answer_goes_to_anthropic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the real adapters: a truncated vLLM answer escalates to Anthropic, which answers."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-escalation")
    with FakeVLLM(model="qwen") as vllm, FakeAnthropic(api_key="sk-ant-test-escalation") as claude:
        vllm.enqueue_reply(content="The three causes are", finish_reason="length")
        claude.enqueue_reply(content="Inflation, supply shocks and demand.")
        cfg = config_from_mapping(
            {
                "backends": {
                    "gpu": {
                        "kind": "openai-compatible",
                        "flavor": "vllm",
                        "base_url": vllm.base_url,
                        "model": "qwen",
                        "health_check": False,
                        "max_attempts": 1,
                    },
                    "claude": {
                        "kind": "anthropic",
                        "model": "claude-sonnet-4-5",
                        "base_url": claude.base_url,
                        "max_attempts": 1,
                    },
                },
                "routes": {"1": ["gpu"], "2": ["claude"], "3": ["claude"]},
                "escalation": {"max_hops": 1},
            },
            origin="test",
        )
        results: list[Result] = []
        await run_jobs(
            jobs_from_lines([line()]),
            config=cfg,
            tierer=Tierer.from_config(cfg.tiering),
            sink=results.append,
        )
    [result] = results
    assert result.status == "ok" and result.backend == "claude" and result.escalations == 1
    assert result.route[0].to_dict()["check"]["failed"] == "truncated"
    assert result.output == "Inflation, supply shocks and demand."
    assert vllm.request_count == 1 and claude.request_count == 1


def test_section_defaults_and_bounds() -> None:
    """An empty [escalation] means one hop and every check; more than two hops is refused."""
    cfg = config({})
    assert cfg.escalation is not None and cfg.escalation.max_hops == 1
    assert cfg.escalation.checks_for(1) == ("empty", "refusal", "truncated", "json", "expect")
    with pytest.raises(ConfigError, match="max_hops"):
        config({"max_hops": 3})


async def test_budget_stops_the_escalation_and_the_last_answer_stands() -> None:
    """Under --max-cost each escalation is reserved like any call: refused, it is not sent."""
    bad = "I'm sorry, but " + "x" * 1600  # about 400 output tokens: 800 micro-$ spent
    results: list[Result] = []
    backends = fakes([completion(bad)], [completion("fine")])
    cfg = config({"max_hops": 1})
    await run_jobs(
        jobs_from_lines([line(max_tokens=500)]),  # worst case of one call: about 1,000 micro-$
        config=cfg,
        tierer=Tierer.from_config(cfg.tiering),
        sink=results.append,
        backends=backends,
        budget=Budget(1_600),
    )
    [result] = results
    assert result.status == "error" and result.error is not None
    assert result.error["type"] == "check_failed" and result.output == bad
    assert [h.backend for h in result.route] == ["small"] and backends["mid"].calls == []


async def test_summary_line_gives_the_rates() -> None:
    """The run summary's escalation line: per tier decided, and per backend that answered."""
    lines = [line(id="a"), line(id="b"), line(id="c", tier=2)]
    backends = fakes(["   ", "fine"], ["fine", "fine"])
    _, summary = await run(config({"max_hops": 1}), lines, backends)
    assert escalation_line(summary.tally) == (
        "escalations: tier 1 1/2 (50%); answers failing checks: small 1/2 (50%)"
    )


async def test_ledger_summary_has_the_failed_checks_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ledger summary --by tier,backend`: failed checks as a count and a share of answers."""
    bad, good = completion('{"n": "x"}'), completion('{"n": 7}')
    with Ledger(tmp_path / "l.db") as ledger:
        await run(config(), [line(**JSON_JOB)], fakes([bad], [good]), ledger)
    capsys.readouterr()
    code = main(["ledger", "summary", "--ledger", str(tmp_path / "l.db"), "--by", "tier,backend"])
    header, *rows = [r.split("\t") for r in capsys.readouterr().out.splitlines()]
    failed = {(r[0], r[1]): r[header.index("failed checks")] for r in rows}
    assert code == 0 and failed[("1", "small")] == "1 (100%)" and failed[("2", "mid")] == ""
