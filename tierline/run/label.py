"""`tierline tiering label`: outcomes from the user's own backends.

Every job is answered twice, once on a weak route and once on a strong route of the config
(defaults: tier 1's and tier 3's), and both answers are scored:

* **by the job's own checks** when it has them (an ``expect`` regex or label list, a JSON
  ``response_format``, or an explicit ``checks`` list): 1 if the answer passes, 0 if not;
* **else by a judge** (another route of the config, default tier 3's) with the fixed pairwise
  rubric `JUDGE_RUBRIC`, asked twice with the answers in both orders so that a judge's
  preference for the first (or second) position cancels out. Each verdict gives the winner 1
  and the loser 0, a tie 0.5 each; a job's score is the mean over the verdicts that parsed.

The answers and the verdicts go through the same dispatch path as `tierline run` (one ledger
run per phase, command ``tiering label``, ``--max-cost`` reserved before each call), each
phase into its own resumable results file beside the outcomes file (``OUT.answers.jsonl``,
``OUT.verdicts.jsonl``). Rerunning the same command resumes: a finished phase is read back and
only what is missing is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..dispatch.base import Completion
from ..dispatch.checks import DEFAULT_CHECKS, run_checks
from ..errors import ExitCode
from ..jobs import Job, Usage, dumps

if TYPE_CHECKING:
    from ..config import Config
    from ..interrupts import Stop
    from .plan import Plan

__all__ = [
    "JUDGE_RUBRIC",
    "Labelled",
    "Labeller",
    "Phase",
    "answer_lines",
    "estimate",
    "label",
    "native_line",
    "parse_verdict",
    "run_phase",
]

# The judge's fixed rubric. Pairwise, because comparing two answers is more reliable than
# grading one on an absolute scale (MT-Bench, Zheng et al. 2023), and asked in both orders.
JUDGE_RUBRIC = """You are judging two answers to the same request. Decide which answer serves \
the person who made the request better.

Judge, in this order of importance:
1. Correctness: facts, calculations, code and reasoning are right; nothing is made up.
2. Completeness: the answer does everything the request asked, within its constraints \
(format, length, language, fields).
3. Usefulness: clear, direct, no padding; a shorter answer that is right beats a longer one \
that is not.
Ignore which answer comes first and how long each is.

[Request]
{request}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with exactly one verdict and nothing else: [[A]] if answer A is better, [[B]] if answer \
B is better, [[TIE]] if they are equally good or equally bad."""

_VERDICT = re.compile(r"\[\[\s*(A|B|TIE)\s*\]\]", re.IGNORECASE)
# Verdicts are short: a few tokens, with room for a judge that writes one line first.
JUDGE_MAX_TOKENS = 16
# Long answers are cut for the judge's prompt: the start carries most of the verdict.
ANSWER_CHARS = 6000


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"`` or ``"TIE"`` from a judge's reply; None if it gave none or several."""
    found = {m.upper() for m in _VERDICT.findall(text)}
    return found.pop() if len(found) == 1 else None


def _has_own_checks(job: Job) -> bool:
    return job.expect is not None or job.response_format is not None or job.checks is not None


def answer_lines(jobs: Sequence[Job], weak_tier: int, strong_tier: int) -> list[dict[str, Any]]:
    """Two jobs per job: its request pinned to the weak tier and to the strong tier.

    ``checks: []`` keeps the dispatcher from escalating a failed answer to another tier: the
    weak route's answer is the thing being measured, failures included.
    """
    out = []
    for job in jobs:
        for side, tier in (("weak", weak_tier), ("strong", strong_tier)):
            out.append({**native_line(job), "id": f"{job.id}#{side}", "tier": tier, "checks": []})
    return out


@dataclass(frozen=True, slots=True)
class Scored:
    """One outcome line, and how it was scored."""

    job: Job
    weak: float
    strong: float
    by: str  # "checks" or "judge"
    weak_model: str
    strong_model: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.job.id,
            "prompt": self.job.text,
            "weak_score": round(self.weak, 4),
            "strong_score": round(self.strong, 4),
            "scored_by": self.by,
            "weak_model": self.weak_model,
            "strong_model": self.strong_model,
        }


class Labeller:
    """Turns the two phases' results into outcomes; knows which jobs still need a judge."""

    def __init__(self, jobs: Sequence[Job], judge_tier: int) -> None:
        self.jobs = list(jobs)
        self.judge_tier = judge_tier
        self.answers: dict[str, Mapping[str, Any]] = {}
        self.verdicts: dict[str, Mapping[str, Any]] = {}

    def _pair(self, job: Job) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        weak, strong = self.answers.get(f"{job.id}#weak"), self.answers.get(f"{job.id}#strong")
        if weak is None or strong is None:
            return None
        if weak.get("status") != "ok" or strong.get("status") != "ok":
            return None
        return weak, strong

    def judge_lines(self) -> list[dict[str, Any]]:
        """Two judge jobs (both orders) per job whose answers came back and has no checks."""
        out = []
        for job in self.jobs:
            pair = self._pair(job)
            if pair is None or _has_own_checks(job):
                continue
            weak, strong = (str(r.get("output") or "")[:ANSWER_CHARS] for r in pair)
            for order, (a, b) in (("ws", (weak, strong)), ("sw", (strong, weak))):
                prompt = JUDGE_RUBRIC.format(request=job.text, answer_a=a, answer_b=b)
                out.append(
                    {
                        "id": f"{job.id}#judge-{order}",
                        "prompt": prompt,
                        "tier": self.judge_tier,
                        "max_tokens": JUDGE_MAX_TOKENS,
                        "temperature": 0,
                        "checks": [],
                    }
                )
        return out

    def outcomes(self) -> tuple[list[Scored], int]:
        """The scored jobs, and how many could not be scored (a failed answer or verdict)."""
        scored, missing = [], 0
        for job in self.jobs:
            pair = self._pair(job)
            result = None if pair is None else self._score(job, *pair)
            if result is None:
                missing += 1
            else:
                scored.append(result)
        return scored, missing

    def _score(self, job: Job, weak: Mapping[str, Any], strong: Mapping[str, Any]) -> Scored | None:
        models = str(weak.get("model") or ""), str(strong.get("model") or "")
        if _has_own_checks(job):
            names = job.checks if job.checks is not None else DEFAULT_CHECKS
            w, s = (0.0 if run_checks(job, _completion(r), names) else 1.0 for r in (weak, strong))
            return Scored(job, w, s, "checks", *models)
        points: list[tuple[float, float]] = []
        for order in ("ws", "sw"):
            verdict = self.verdicts.get(f"{job.id}#judge-{order}")
            if verdict is None or verdict.get("status") != "ok":
                continue
            said = parse_verdict(str(verdict.get("output") or ""))
            if said is None:
                continue
            first, second = {"A": (1.0, 0.0), "B": (0.0, 1.0), "TIE": (0.5, 0.5)}[said]
            points.append((first, second) if order == "ws" else (second, first))
        if not points:
            return None
        w = sum(p[0] for p in points) / len(points)
        s = sum(p[1] for p in points) / len(points)
        return Scored(job, w, s, "judge", *models)


def _completion(result: Mapping[str, Any]) -> Completion:
    """A result line back as the completion the checks look at."""
    return Completion(
        text=str(result.get("output") or ""),
        finish_reason=str(result.get("finish_reason") or "stop"),
        usage=Usage(),
        model=str(result.get("model") or ""),
    )


def native_line(job: Job) -> dict[str, Any]:
    """A job as a native input line (whatever format it was read in)."""
    line: dict[str, Any] = {
        "id": job.id,
        "messages": [{"role": m.role, "content": m.content} for m in job.messages],
    }
    optional = {
        "system": job.system,
        "max_tokens": job.max_tokens,
        "temperature": job.temperature,
        "stop": list(job.stop) or None,
        "response_format": job.response_format,
    }
    line.update({k: v for k, v in optional.items() if v is not None})
    return line


@dataclass(slots=True)
class Phase:
    """What one dispatch phase did: its results by id, and what it spent in this invocation."""

    results: dict[str, Mapping[str, Any]]
    spent_micros: int = 0
    sent: int = 0
    kept: int = 0
    exit_code: int = 0  # the run's own exit code (3: budget, 130/143: interrupted)


def run_phase(
    lines: Sequence[Mapping[str, Any]],
    results_path: Path,
    *,
    config: Config,
    ledger_path: Path,
    max_cost_micros: int | None,
    stop: Stop,
) -> Phase:
    """Dispatch ``lines`` like `tierline run -o results_path`, resuming what is already there.

    The phase's input is written beside its results (``.in.jsonl``) so that the ledger and a
    rerun see a real file. A results file from a finished earlier attempt is reopened as the
    partial file of this one: the journal keeps its lines and only the rest is sent.
    """
    import asyncio

    from ..resume import Journal, RunLock
    from .files import run_files

    inputs = results_path.with_name(results_path.name.removesuffix(".jsonl") + ".in.jsonl")
    inputs.write_bytes(b"".join(dumps(line) + b"\n" for line in lines))
    partial = Path(f"{results_path}.partial")
    if results_path.exists() and not partial.exists():
        os.replace(results_path, partial)
    with RunLock(str(results_path)), Journal(str(results_path), config) as journal:
        work = run_files(
            [str(inputs)],
            config=config,
            writer=journal,
            ledger_path=ledger_path,
            command="tiering label",
            select=journal.select,
            stop=stop,
            max_cost_micros=max_cost_micros,
        )
        summary = asyncio.run(stop.guard(work))
        if stop.exit_code is not None:
            return Phase({}, exit_code=int(stop.exit_code))
        journal.commit()
    results = {}
    with results_path.open("rb") as fh:
        for raw in fh:
            record = orjson.loads(raw)
            results[str(record["id"])] = record
    return Phase(
        results,
        spent_micros=round(summary.tally.cost_usd * 1_000_000),
        sent=summary.tally.jobs,
        kept=journal.kept,
        exit_code=int(summary.exit_code),
    )


def estimate(
    lines: Sequence[Mapping[str, Any]], config: Config, max_cost_micros: int | None
) -> Plan:
    """What `tierline plan` says these lines would cost (nothing is sent)."""
    from ..jobs import parse_line
    from ..tiering.pipeline import Tierer
    from .plan import make_plan

    jobs = [parse_line(dumps(line), n, "label") for n, line in enumerate(lines, 1)]
    return make_plan(
        jobs,
        config=config,
        tierer=Tierer.from_config(config.tiering),
        max_cost_micros=max_cost_micros,
    )


@dataclass(slots=True)
class Labelled:
    """What `label` did: the outcomes it wrote, or the phase that stopped it and why."""

    scored: list[Scored] = field(default_factory=list)
    missing: int = 0  # jobs that could not be scored (an answer or both verdicts failed)
    exit_code: int = 0
    stopped: str | None = None  # the phase ("answers" or "verdicts") that stopped the command
    # the phase's estimate passed what was left of --max-cost (both here): it sent nothing
    over_budget: bool = False
    estimate_micros: int | None = None
    budget_micros: int | None = None


def label(
    jobs: Sequence[Job],
    output: Path,
    *,
    config: Config,
    ledger_path: Path,
    max_cost_micros: int | None,
    tiers: tuple[int, int, int],
    stop: Stop,
    on_estimate: Callable[[str, int, int | None], None],
) -> Labelled:
    """`tierline tiering label`: answer ``jobs`` on the weak and strong routes, score both, write
    the outcomes to ``output``. ``tiers`` is (weak, strong, judge); ``on_estimate(phase, calls,
    cost_micros)`` hears each phase's estimate before it is sent. A phase whose estimate passes
    what is left of ``max_cost_micros`` sends nothing (exit 3); a phase stopped by the budget or
    a signal ends the command (the same command again resumes)."""
    weak_tier, strong_tier, judge_tier = tiers
    cap = max_cost_micros
    labeller = Labeller(jobs, judge_tier)
    for name in ("answers", "verdicts"):
        # The verdicts' prompts hold the answers: built only once the answers are in.
        lines = (
            answer_lines(jobs, weak_tier, strong_tier)
            if name == "answers"
            else labeller.judge_lines()
        )
        if not lines:
            continue
        plan = estimate(lines, config, cap)
        on_estimate(name, len(lines), plan.cost_micros)
        if plan.over_budget:
            return Labelled(
                exit_code=int(ExitCode.BUDGET),
                stopped=name,
                over_budget=True,
                estimate_micros=plan.cost_micros,
                budget_micros=cap,
            )
        phase = run_phase(
            lines,
            output.with_name(f"{output.name}.{name}.jsonl"),
            config=config,
            ledger_path=ledger_path,
            max_cost_micros=cap,
            stop=stop,
        )
        if phase.exit_code in (ExitCode.BUDGET, ExitCode.INTERRUPTED, ExitCode.TERMINATED):
            return Labelled(exit_code=phase.exit_code, stopped=name)
        if cap is not None:
            cap = max(0, cap - phase.spent_micros)
        target = labeller.answers if name == "answers" else labeller.verdicts
        target.update(phase.results)
    scored, missing = labeller.outcomes()
    output.write_bytes(b"".join(dumps(s.as_dict()) + b"\n" for s in scored))
    return Labelled(scored, missing, int(ExitCode.JOBS_FAILED) if missing else 0)
