"""Pricing gpu_hour_usd backends in `plan`: throughput learned from the ledger (a real SQLite
file written by `Ledger`), from a config hint, or by `plan --calibrate` against a fake server;
and the daily projection."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import pytest

from tests.fakes import FakeVLLM
from tierline.cli import main
from tierline.jobs import Usage, jobs_from_lines
from tierline.ledger.store import CallRecord, Ledger
from tierline.ledger.throughput import MIN_CALLS, learn, open_readonly
from tierline.run.plan import make_plan
from tierline.run.projection import parse_tokens, project
from tierline.tiering.pipeline import Tierer

from ..conftest import write_jsonl
from .conftest import make_config

GPU = {"kind": "openai-compatible", "base_url": "http://gpu:8000/v1", "model": "q"}
API = {"kind": "openai", "model": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 10}}
PRICED_BASELINE = {
    "baseline": {"model": "base", "provider": None},
    "pricing": {"models": {"base": {"input_per_mtok": 2, "output_per_mtok": 20}}},
}


def config(gpu: dict[str, object] | None = None) -> object:
    return make_config(
        {"gpu": {**GPU, "gpu_hour_usd": 3.6, **(gpu or {})}, "api": API},
        routes={"1": ["gpu"], "2": ["gpu"], "3": ["api"]},
        **PRICED_BASELINE,
    )


def record(
    path: Path, calls: list[tuple[float, int]], *, backend: str = "gpu", model: str = "q"
) -> None:
    """Calls of (busy seconds, output tokens), as a run against the backend writes them."""
    with Ledger(path) as ledger:
        run = ledger.start_run(command="run", config_origin="t", inputs=[])
        for busy, out in calls:
            ledger.record_call(
                run,
                CallRecord(
                    "j",
                    1,
                    backend,
                    model,
                    "ok",
                    Usage(input_tokens=10, output_tokens=out),
                    None,
                    "gpu-hour",
                    1.0,
                    busy_s=busy,
                ),
            )


# 0.5 busy-s per call + 0.01 per output token, exactly
EXACT = [(0.5 + 0.01 * n, n) for n in (10, 50, 100, 200, 400, 800)]


def test_fit_recovers_per_call_and_per_token_time(tmp_path: Path) -> None:
    """busy = 0.5 s per call + 0.01 s per token is recovered from six calls, with no scatter."""
    record(tmp_path / "l.db", EXACT)
    conn = open_readonly(tmp_path / "l.db")
    assert conn is not None
    found = learn(conn, "gpu", "q")
    assert not isinstance(found, str)
    assert (round(found.per_call_s, 9), round(found.per_token_s, 9), found.calls) == (0.5, 0.01, 6)
    assert found.busy_seconds(10, 1000) == pytest.approx(15.0)
    assert found.relative_error(10, 1000) == pytest.approx(0.0, abs=1e-6)


def test_too_few_calls_and_no_ledger_say_why(tmp_path: Path) -> None:
    """Fewer than MIN_CALLS measured calls: no figure, a reason naming the ways to get one."""
    record(tmp_path / "l.db", EXACT[: MIN_CALLS - 1])
    conn = open_readonly(tmp_path / "l.db")
    assert conn is not None
    reason = learn(conn, "gpu", "q")
    assert isinstance(reason, str) and "4 measured call(s)" in reason
    assert open_readonly(tmp_path / "missing.db") is None
    assert not (tmp_path / "missing.db").exists()  # plan never creates a ledger


def test_other_model_name_is_used_and_named(tmp_path: Path) -> None:
    """A server reporting another model name (llama-server: the file) still counts, named."""
    record(tmp_path / "l.db", EXACT, model="qwen.gguf")
    conn = open_readonly(tmp_path / "l.db")
    assert conn is not None
    found = learn(conn, "gpu", "q")
    assert not isinstance(found, str) and "'qwen.gguf'" in found.describe()


JOBS = [
    '{"id": "a", "prompt": "one two three", "tier": 1, "max_tokens": 100}',
    '{"id": "b", "prompt": "one two three", "tier": 1, "max_tokens": 100}',
    '{"id": "c", "prompt": "one two three", "tier": 3, "max_tokens": 100}',
]


def test_plan_prices_gpu_hours_from_the_ledger(tmp_path: Path) -> None:
    """Two tier-1 jobs of 80 estimated output tokens on the fitted backend: 2*0.5 + 160*0.01 =
    2.6 busy-s at $3.60/h = 2,600 micro-$; the basis names the ledger and the call count."""
    record(tmp_path / "l.db", EXACT)
    cfg = config()
    before = make_plan(jobs_from_lines(JOBS), config=cfg, tierer=Tierer.from_config(cfg.tiering))
    assert before.rows[0].cost is None and "no ledger" in before.rows[0].basis
    assert (
        "--calibrate N" in before.rows[0].basis
        and "backends.gpu.throughput" in before.rows[0].basis
    )
    assert before.cost_micros is None
    conn = open_readonly(tmp_path / "l.db")
    with closing(conn):  # type: ignore[type-var]
        plan = make_plan(
            jobs_from_lines(JOBS), config=cfg, tierer=Tierer.from_config(cfg.tiering), ledger=conn
        )
    gpu = plan.rows[0].as_dict()
    assert (gpu["busy_s"], gpu["cost_micros"], gpu["cost_error_micros"]) == (
        pytest.approx(2.6),
        2_600,
        0,
    )
    assert "ledger: 6 call(s)" in gpu["basis"]
    assert plan.cost_micros == 2_600 + 810  # the API row: 10 in * $1 + 80 out * $10 per Mtok
    assert plan.as_dict()["totals"]["savings_micros"] is not None


def test_config_hint_prices_without_a_ledger() -> None:
    """throughput = 100 output tok/busy-s: 160 tokens are 1.6 busy-s = 1,600 micro-$; no error."""
    cfg = config({"throughput": 100})
    plan = make_plan(jobs_from_lines(JOBS), config=cfg, tierer=Tierer.from_config(cfg.tiering))
    gpu = plan.rows[0].as_dict()
    assert (gpu["cost_micros"], gpu["cost_error_micros"]) == (1_600, None)
    assert "config throughput hint" in gpu["basis"]


def test_projection_to_daily_tokens() -> None:
    """Scaled to 10x the plan's tokens: costs and baseline x10, savings per scenario, and the
    GPU-hours a day: 10 * 1.6 busy-s = 16 s = 0.00444 h."""
    cfg = config({"throughput": 100})
    plan = make_plan(jobs_from_lines(JOBS), config=cfg, tierer=Tierer.from_config(cfg.tiering))
    tokens = sum(r.input_tokens + r.output_tokens for r in plan.rows)
    p = project(plan, daily_tokens=tokens * 10).as_dict()
    assert p["scale"] == pytest.approx(10)
    assert p["tiered_micros_per_day"] == 10 * plan.cost_micros  # type: ignore[operator]
    base = p["baseline_micros_per_day"]
    assert p["tiered_savings_micros_per_day"] == base - p["tiered_micros_per_day"]
    assert p["tiered_batch_micros_per_day"] < p["tiered_micros_per_day"]  # the API row halves
    assert p["gpu_hours_per_day"] == {"gpu": pytest.approx(16 / 3600)}
    assert [m["job_share"] for m in p["mix"]] == pytest.approx([2 / 3, 1 / 3])
    # the baseline through its batch API: half (the priced baseline has no batch price)
    assert p["baseline_batch_micros_per_day"] == base // 2
    # one whole server paid 24 h at $3.60 instead of 16 busy seconds: + $86.40 - $0.016
    assert p["dedicated_servers"] == {"gpu": 1}
    assert p["tiered_dedicated_micros_per_day"] == p["tiered_micros_per_day"] - 16_000 + 86_400_000


def test_projection_of_an_unknown_price_stays_unknown() -> None:
    """No throughput: the tiered figures and GPU-hours are None, and the reason is given."""
    cfg = config()
    plan = make_plan(jobs_from_lines(JOBS), config=cfg, tierer=Tierer.from_config(cfg.tiering))
    p = project(plan, scale=2).as_dict()
    assert p["tiered_micros_per_day"] is None and p["tiered_savings_share"] is None
    assert p["gpu_hours_per_day"] == {"gpu": None}
    assert p["baseline_micros_per_day"] > 0 and "no ledger" in p["unknown"][0]


@pytest.mark.parametrize(
    ("text", "n"),
    [("100M", 100_000_000), ("2.5G", 2_500_000_000), ("750k", 750_000), ("1_000", 1000)],
)
def test_parse_tokens(text: str, n: int) -> None:
    assert parse_tokens(text) == n


def test_bad_daily_tokens_exit_2(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", JOBS)
    assert main(["plan", str(jobs), "--daily-tokens", "lots"]) == 2


def test_calibrate_measures_a_fake_vllm(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """`plan --calibrate 6` sends 6 jobs to the gpu_hour_usd backend (and nothing to the API
    backend), records them in the ledger, and the plan is then priced from them."""
    with FakeVLLM(model="q", latency_ms=20) as vllm:
        (tmp_path / "tierline.toml").write_text(
            f"""
[backends.gpu]
kind = "openai-compatible"
base_url = "{vllm.base_url}"
model = "q"
gpu_hour_usd = 3.6
[backends.api]
kind = "openai"
model = "m"
base_url = "http://127.0.0.1:9/v1"
price = {{ input_per_mtok = 1, output_per_mtok = 10 }}
[routes]
1 = ["gpu"]
2 = ["gpu"]
3 = ["api"]
[ledger]
path = "l.db"
"""
        )
        lines = [
            json.dumps({"id": f"j{i}", "prompt": f"job number {i}", "tier": 1 + (i % 3 == 0)})
            for i in range(10)
        ]
        jobs = write_jsonl(tmp_path / "jobs.jsonl", [*lines, JOBS[2]])
        assert main(["plan", str(jobs), "--json", "--calibrate", "6"]) == 0
        chats = [r for r in vllm.requests if r.path.endswith("/chat/completions")]
        assert len(chats) == 6
    report = json.loads(capsysbinary.readouterr().out)
    gpu = [r for r in report["rows"] if r["backend"] == "gpu"]
    assert all(r["cost_micros"] is not None and "ledger: " in r["basis"] for r in gpu)
    # all six measured (a slow first call, with the connection set up, may be left out)
    assert {r["throughput"]["calls"] + r["throughput"]["outliers"] for r in gpu} == {6}
    assert report["totals"]["cost_micros"] is not None
    with Ledger(tmp_path / "l.db") as ledger:
        [(command, jobs_run)] = ledger.conn.execute("SELECT command, jobs FROM runs").fetchall()
    assert (command, jobs_run) == ("plan --calibrate", 6)


def test_an_outlier_is_left_out_and_counted(tmp_path: Path) -> None:
    """One call charged 30 s (a stall at a run's start) among exact ones: the fit is the exact
    line, and the basis says one call was left out."""
    record(tmp_path / "l.db", [*EXACT, *EXACT, (30.0, 10)])
    conn = open_readonly(tmp_path / "l.db")
    assert conn is not None
    found = learn(conn, "gpu", "q")
    assert not isinstance(found, str)
    assert (round(found.per_call_s, 9), round(found.per_token_s, 9)) == (0.5, 0.01)
    assert (found.calls, found.outliers) == (12, 1) and "1 more left out" in found.describe()


def test_when_it_finishes(tmp_path: Path) -> None:
    """Backends work in parallel: the plan's time is the longest backend's predicted busy time.
    gpu: 2.6 busy-s (above); api: nothing measured, so the time is unknown but at least 2.6 s;
    once the api has calls (1 s per call + 0.1 s per token, 80 tokens = 9 s) the time is 9 s; a
    tpm of 60 (1 token/s, the limiter's bucket starting with 10 s' worth) makes its 90 tokens
    take at least 80 s."""
    record(tmp_path / "l.db", EXACT)
    cfg = config()

    def plan_with(c: object) -> dict[str, object]:
        conn = open_readonly(tmp_path / "l.db")
        with closing(conn):  # type: ignore[type-var]
            plan = make_plan(
                jobs_from_lines(JOBS), config=c, tierer=Tierer.from_config(cfg.tiering), ledger=conn
            )
        return plan.duration()

    d = plan_with(cfg)
    assert (d["seconds"], d["unknown_backends"]) == (None, ["api"])
    assert d["at_least_s"] == pytest.approx(2.6)
    record(
        tmp_path / "l.db",
        [(1 + 0.1 * n, n) for n in (10, 20, 40, 80, 160)],
        backend="api",
        model="m",
    )
    d = plan_with(cfg)
    assert (d["seconds"], d["longest_backend"]) == (pytest.approx(9.0), "api")
    limited = make_config(
        {"gpu": {**GPU, "gpu_hour_usd": 3.6}, "api": {**API, "tpm": 60}},
        routes={"1": ["gpu"], "2": ["gpu"], "3": ["api"]},
        **PRICED_BASELINE,
    )
    assert plan_with(limited)["seconds"] == pytest.approx(80.0)


def test_calibrate_with_nothing_to_measure_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No gpu_hour_usd backend heads a route: --calibrate sends nothing and says so."""
    (tmp_path / "tierline.toml").write_text(
        '[backends.api]\nkind = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:9/v1"\n'
        "price = { input_per_mtok = 1, output_per_mtok = 10 }\n"
        '[routes]\n1 = ["api"]\n2 = ["api"]\n3 = ["api"]\n'
    )
    jobs = write_jsonl(tmp_path / "jobs.jsonl", JOBS)
    assert main(["plan", str(jobs), "--calibrate", "3", "--json"]) == 0
    assert "nothing was sent" in capsys.readouterr().err


def test_calibrate_pays_within_max_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan --calibrate 5 --max-cost 1.2` on two gpu_hour_usd backends at $0.50 a busy second:
    each call's worst case ($1: a 2 s timeout, one attempt) is reserved before it is sent, as
    under `run --max-cost`, from one budget for the whole command. Each call costs its 0.25 s
    or more ($0.125), so at most two fit: the rest of the first backend's jobs and all of the second's
    are skipped unsent, what was sent is in the ledger with its cost, and the plan (whose own
    estimate fits) exits 3."""
    with FakeVLLM(model="q", latency_ms=250) as first, FakeVLLM(model="q", latency_ms=250) as then:
        # throughput: the plan itself is priced (and within the cap) whatever was measured
        gpu = 'kind = "openai-compatible"\nmodel = "q"\ngpu_hour_usd = 1800\ntimeout_s = 2\n'
        gpu += "max_attempts = 1\nthroughput = 1e6\n"
        (tmp_path / "tierline.toml").write_text(
            f'[backends.gpu]\n{gpu}base_url = "{first.base_url}"\n'
            f'[backends.gpu2]\n{gpu}base_url = "{then.base_url}"\n'
            '[routes]\n1 = ["gpu"]\n2 = ["gpu"]\n3 = ["gpu2"]\n[ledger]\npath = "l.db"\n'
        )
        lines = [
            json.dumps({"id": f"j{i}", "prompt": f"job {i}", "tier": 1 if i < 5 else 3})
            for i in range(10)
        ]
        jobs = write_jsonl(tmp_path / "jobs.jsonl", lines)
        assert main(["plan", str(jobs), "--calibrate", "5", "--max-cost", "1.2"]) == 3
        sent = [
            len([r for r in srv.requests if r.path.endswith("/chat/completions")])
            for srv in (first, then)
        ]
    assert 1 <= sent[0] <= 2 and sent[1] == 0, sent
    with Ledger(tmp_path / "l.db") as ledger:
        runs = ledger.conn.execute(
            "SELECT command, jobs, ok, skipped_budget, max_cost_micros FROM runs ORDER BY started_at, rowid"
        ).fetchall()
        costs = [c for (c,) in ledger.conn.execute("SELECT cost_nanos FROM calls").fetchall()]
    assert runs == [
        ("plan --calibrate", 5, sent[0], 5 - sent[0], 1_200_000),
        ("plan --calibrate", 5, 0, 5, 1_200_000),
    ]
    assert len(costs) == sent[0] and all(c is not None and c >= 125_000_000 for c in costs)
    assert sum(costs) <= 1_200_000_000
    err = capsys.readouterr().err
    assert "OVER --max-cost" not in err  # the 3 is the calibration's
    assert f"--max-cost: {5 - sent[0]} calibration job(s) on gpu not sent" in err
    assert "--max-cost: 5 calibration job(s) on gpu2 not sent" in err
