"""`tierline tiering train|eval`: retrain the tier classifier and measure it on labelled jobs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..config import load_config
from ..errors import UsageError
from .options import ConfigPath, LedgerPath, MaxCost, Quiet
from .output import err_console
from .preflight import check_names

if TYPE_CHECKING:
    from ..jobs import Job
    from ..run.label import Labelled
    from ..tiering.outcomes import Outcome
    from ..tiering.pipeline import Tierer
    from ..tiering.train import LabelledPrompt

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="Train the tier classifier and measure tiering on labelled prompts.\n\n"
    'Labelled files are JSONL lines {"prompt", "tier": 1|2|3, "source"?, "category"?}.',
    no_args_is_help=True,
)

DataFiles = Annotated[list[Path], typer.Argument(help="Labelled JSONL files.", show_default=False)]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help="A model from 'tiering train' (default: config, else shipped)."
    ),
]


def _read_all(paths: list[Path], reader: Callable[[Path], list[T]], what: str) -> list[T]:
    """Every row of every file; a file that cannot be read, or no rows at all, is a usage error."""
    rows: list[T] = []
    for path in paths:
        try:
            rows.extend(reader(path))
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if not rows:
        raise UsageError(f"no {what} in " + ", ".join(map(str, paths)))
    return rows


def _valid_jobs(paths: list[str]) -> list[Job]:
    """Every job of the files; an invalid line or no job at all is a usage error (a sample for
    calibration or labelling must be what the user meant, not what survived)."""
    from ..jobs import Job, read_jobs

    valid: list[Job] = []
    for item in read_jobs(paths):
        if not isinstance(item, Job):
            raise UsageError(f"{item.source}:{item.line}: {item.error}")
        valid.append(item)
    if not valid:
        raise UsageError("no jobs in " + ", ".join(paths))
    return valid


def _read(paths: list[Path]) -> list[LabelledPrompt]:
    from ..tiering.train import read_labelled

    return _read_all(paths, read_labelled, "labelled prompts")


OutcomesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--outcomes",
        help='Outcomes JSONL {"prompt", "weak_score", "strong_score"} (repeatable).',
        show_default=False,
    ),
]


def _read_outcomes(paths: list[Path]) -> list[Outcome]:
    from ..tiering.outcomes import read_outcomes

    return _read_all(paths, read_outcomes, "outcomes")


@app.command()
def train(
    data: Annotated[
        list[Path] | None,
        typer.Argument(help="Labelled JSONL files (e.g. the training corpus).", show_default=False),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the model (.npz).")
    ] = Path("tier-model.npz"),
    outcomes: OutcomesOpt = None,
    outcome_share: Annotated[
        float,
        typer.Option(
            help="Share of the training weight the outcomes carry next to DATA.", min=0.01, max=0.99
        ),
    ] = 0.5,
    max_iter: Annotated[int, typer.Option(help="L-BFGS iterations.", min=1)] = 100,
) -> None:
    """Train a classifier on labelled prompts and/or outcomes (deterministic); write OUTPUT.

    Outcomes become labels by what the weak route lost: under 12% of the score range is
    tier 1, 40% or more tier 3, in between tier 2. With DATA too, the outcomes carry
    --outcome-share of the weight. Point [tiering] model at OUTPUT to use it.
    """
    from ..tiering.train import TrainConfig
    from ..tiering.train import train as fit
    from ..tiering.tune import outcome_labels

    if not data and not outcomes:
        raise UsageError("give labelled files, --outcomes FILE, or both")
    rows = _read(data) if data else []
    for path in outcomes or []:
        rows.extend(outcome_labels(_read_outcomes([path]), path.name))
    try:
        model = fit(rows, TrainConfig(max_iter=max_iter, outcome_share=outcome_share))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model.save(output)
    err_console.print(f"tierline: trained on {len(rows)} prompts; wrote {output}", markup=False)


@app.command()
def calibrate(
    jobs: Annotated[
        list[str],
        typer.Argument(help="Job JSONL files: a sample of your traffic.", show_default=False),
    ],
    share: Annotated[
        str, typer.Option(help="Wanted shares of tiers 1,2,3 (sum 1).")
    ] = "0.70,0.25,0.05",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the calibrated model (.npz).")
    ] = Path("tier-model.npz"),
    model: ModelOpt = None,
    config: ConfigPath = None,
) -> None:
    """Set the escalation thresholds so that JOBS split at --share; write the model with them.

    Rules and heuristics keep their decisions; the thresholds are fitted on the classifier's
    probabilities for the other jobs. Point [tiering] model at OUTPUT to use them (explicit
    escalate_2 / escalate_3 in config still override).
    """
    from ..tiering.tune import calibrate as fit_calibration

    shares = _shares(share)
    tierer = _tierer(config, None, model)
    valid = _valid_jobs(jobs)
    try:
        weights, cal, got = fit_calibration(valid, tierer, shares)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    weights.with_calibration(cal).save(output)
    mix = " / ".join(f"{x:.1%}" for x in got)
    err_console.print(
        f"tierline: {len(valid)} jobs split {mix} with escalate_2 = {cal.escalate_2:.4f}, "
        f"escalate_3 = {cal.escalate_3:.4f}; wrote {output} (set [tiering] model to use it)",
        markup=False,
    )


def _shares(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise UsageError(f"--share must be three shares of tiers 1,2,3 summing to 1, not {text!r}")
    return parts[0], parts[1], parts[2]


@app.command()
def label(
    jobs: Annotated[
        list[str],
        typer.Argument(help="Job JSONL files: a sample of your traffic.", show_default=False),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The outcomes file to write (JSONL).")
    ],
    config: ConfigPath = None,
    ledger: LedgerPath = None,
    max_cost: MaxCost = None,
    weak_tier: Annotated[int, typer.Option(help="The weak route: this tier's.", min=1, max=3)] = 1,
    strong_tier: Annotated[
        int, typer.Option(help="The strong route: this tier's.", min=1, max=3)
    ] = 3,
    judge_tier: Annotated[
        int, typer.Option(help="The judge: this tier's route.", min=1, max=3)
    ] = 3,
    quiet: Quiet = False,
) -> None:
    """Answer each job on a weak and a strong route, score both, write the outcomes.

    Jobs with their own checks (expect, a JSON response_format, checks) are scored by them;
    the others by the judge route with a fixed pairwise rubric, asked in both orders. The cost
    is estimated first (as `tierline plan` does) and --max-cost stops before anything is sent
    when the estimate passes it. Every call goes in the ledger; rerunning the same command
    resumes. Exit 0, 1 when some jobs could not be scored, 2 on usage errors, 3 on budget.
    """
    from decimal import Decimal

    from ..interrupts import Stop
    from ..ledger.pricing import to_micros
    from ..ledger.store import ledger_path_for
    from ..run.label import label as run_label

    if weak_tier == strong_tier:
        raise UsageError("--weak-tier and --strong-tier must differ")
    # the outcomes file and the ledger are UTF-8: a name that is not would crash as a bug
    check_names(jobs, "input")
    check_names([str(config) if config else os.environ.get("TIERLINE_CONFIG")], "config")
    cfg = load_config(config)
    valid = _valid_jobs(jobs)
    done = run_label(
        valid,
        output,
        config=cfg,
        ledger_path=ledger_path_for(ledger, cfg),
        max_cost_micros=None if max_cost is None else to_micros(Decimal(repr(max_cost))),
        tiers=(weak_tier, strong_tier, judge_tier),
        stop=Stop(),
        on_estimate=lambda name, calls, micros: _say(
            quiet, f"{name}: {calls} call(s), estimated {_usd(micros)}"
        ),
    )
    _render_label(done, output, len(valid), quiet=quiet)
    raise typer.Exit(done.exit_code)


def _render_label(done: Labelled, output: Path, jobs: int, *, quiet: bool) -> None:
    """`tiering label`'s last lines on stderr: why it stopped, or what it wrote."""
    if done.over_budget:
        err_console.print(
            f"tierline: the {done.stopped} would cost {_usd(done.estimate_micros)}, over "
            f"--max-cost {_usd(done.budget_micros)}; nothing more was sent",
            markup=False,
        )
        return
    if done.stopped is not None:
        err_console.print(
            f"tierline: the {done.stopped} stopped (exit {done.exit_code}); rerun the same "
            "command to resume",
            markup=False,
        )
        return
    by_checks = sum(s.by == "checks" for s in done.scored)
    _say(
        quiet,
        f"labelled {len(done.scored)} of {jobs} job(s) ({by_checks} by their checks, "
        f"{len(done.scored) - by_checks} by the judge); wrote {output}",
    )
    if done.missing:
        err_console.print(
            f"tierline: {done.missing} job(s) could not be scored (an answer or both verdicts "
            f"failed); see {output}.answers.jsonl and {output}.verdicts.jsonl",
            markup=False,
        )


def _usd(micros: int | None) -> str:
    return "an unknown amount (no price)" if micros is None else f"${micros / 1e6:,.4f}"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        err_console.print(f"tierline: {text}", markup=False)


@app.command(name="eval")
def evaluate(
    data: Annotated[
        list[Path] | None,
        typer.Argument(help="Labelled JSONL files.", show_default=False),
    ] = None,
    outcomes: OutcomesOpt = None,
    model: ModelOpt = None,
    config: ConfigPath = None,
    bias: Annotated[
        str | None,
        typer.Option(help="Override the config's tiering.bias: quality, balanced or cost."),
    ] = None,
    num_results: Annotated[
        int, typer.Option(help="Router sweep: quantile thresholds (RouteLLM uses 10).", min=2)
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Tier prompts with the configured pipeline; compare with labels and/or outcomes.

    Labelled files give accuracy, macro-F1 and the confusion matrix. --outcomes gives
    RouteLLM's router metrics (APGR, CPT(50%), CPT(80%)) for the decisions tier 1 vs >= 2
    and tier <= 2 vs 3. Labels and scores are never shown to the pipeline.
    """
    import orjson

    from ..tiering.evaluate import evaluate_outcomes, evaluate_rows

    if not data and not outcomes:
        raise UsageError("give labelled files, --outcomes FILE, or both")
    rows = _read(data) if data else []
    outcome_rows = _read_outcomes(outcomes) if outcomes else []
    tierer = _tierer(config, bias, model)
    result: dict[str, Any] = evaluate_rows(rows, tierer).as_dict() if rows else {}
    if outcome_rows:
        routed = evaluate_outcomes(outcome_rows, tierer, num_results)
        result["router"] = {name: m.as_dict() for name, m in routed.items()}
    if as_json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    parts = [_table(result)] if rows else []
    if outcome_rows:
        parts.append(_router_table(result["router"]))
    typer.echo("\n\n".join(parts))


def _tierer(config: str | None, bias: str | None, model: Path | None) -> Tierer:
    """The configured pipeline, with --bias and --model laid over the config."""
    from ..tiering.pipeline import Tierer

    tiering = load_config(config).tiering
    if bias is not None:
        if bias not in ("quality", "balanced", "cost"):
            raise UsageError(f"--bias must be quality, balanced or cost, not {bias!r}")
        tiering = tiering.model_copy(update={"bias": bias})
    try:
        return Tierer.from_config(tiering, str(model) if model else None)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the model: {exc}") from None


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:6.1%}"


def _num(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.3f}"


def _router_table(router: dict[str, Any]) -> str:
    """APGR / CPT per decision, beside the random router and the oracle."""
    first = next(iter(router.values()))
    lines = [
        f"router metrics on {first['n']} outcomes (weak mean {first['weak_quality']:.3f}, "
        f"strong mean {first['strong_quality']:.3f}); random router: APGR 0.500, "
        "CPT(50%) 50.0%, CPT(80%) 80.0%",
        "",
        "decision          APGR  CPT(50%)  CPT(80%)  oracle APGR  configured: strong share  PGR",
    ]
    for name, m in router.items():
        op = m["operating_point"]
        lines.append(
            f"{name:<15}  {_num(m['apgr'])}    {_pct(m['cpt50'])}    {_pct(m['cpt80'])}"
            f"        {_num(m['oracle_apgr'])}                 {_pct(op['strong_share'])}"
            f"  {_num(op['pgr'])}"
        )
    return "\n".join(lines)


def _table(m: dict[str, Any]) -> str:
    """The metrics as plain aligned text."""
    lines = [
        f"jobs {m['n']}   accuracy {m['accuracy']:.3f}   macro-F1 {m['macro_f1']:.3f}   "
        f"tier 3 sent to tier 1 {m['tier3_to_tier1']:.1%}",
        "",
        "tier  precision  recall     f1  support",
    ]
    for tier, s in m["per_tier"].items():
        lines.append(
            f"{tier:>4}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7d}"
        )
    lines += ["", "confusion (rows: true tier, columns: predicted 1 2 3)"]
    for tier, row in zip((1, 2, 3), m["confusion"]["matrix"], strict=True):
        lines.append(f"{tier:>4}  " + " ".join(f"{x:6d}" for x in row))
    mix = " / ".join(f"{x:.0%}" for x in m["predicted_mix"])
    lines.append(f"\npredicted mix (tier 1 / 2 / 3): {mix}")
    return "\n".join(lines)
