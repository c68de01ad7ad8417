"""`tierline tiering train|eval`: retrain the tier classifier and measure it on labelled jobs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..config import load_config
from ..errors import UsageError
from .options import ConfigPath
from .output import err_console

if TYPE_CHECKING:
    from ..tiering.train import LabelledPrompt

__all__ = ["app"]

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


def _read(paths: list[Path]) -> list[LabelledPrompt]:
    from ..tiering.train import read_labelled

    rows: list[LabelledPrompt] = []
    for path in paths:
        try:
            rows.extend(read_labelled(path))
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    if not rows:
        raise UsageError("no labelled prompts in " + ", ".join(map(str, paths)))
    return rows


@app.command()
def train(
    data: DataFiles,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the model (.npz).")
    ],
    max_iter: Annotated[int, typer.Option(help="L-BFGS iterations.", min=1)] = 100,
) -> None:
    """Train a classifier on labelled prompts (deterministic) and write it to OUTPUT."""
    from ..tiering.train import TrainConfig
    from ..tiering.train import train as fit

    rows = _read(data)
    try:
        model = fit(rows, TrainConfig(max_iter=max_iter))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    model.save(output)
    err_console.print(f"tierline: trained on {len(rows)} prompts; wrote {output}", markup=False)


@app.command(name="eval")
def evaluate(
    data: DataFiles,
    model: ModelOpt = None,
    config: ConfigPath = None,
    bias: Annotated[
        str | None,
        typer.Option(help="Override the config's tiering.bias: quality, balanced or cost."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Tier labelled prompts with the configured pipeline and compare with their labels."""
    import orjson

    from ..tiering.evaluate import evaluate_rows
    from ..tiering.pipeline import Tierer

    tiering = load_config(config).tiering
    if bias is not None:
        if bias not in ("quality", "balanced", "cost"):
            raise UsageError(f"--bias must be quality, balanced or cost, not {bias!r}")
        tiering = tiering.model_copy(update={"bias": bias})
    rows = _read(data)
    try:
        tierer = Tierer.from_config(tiering, str(model) if model else None)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the model: {exc}") from None
    result = evaluate_rows(rows, tierer).as_dict()
    if as_json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(_table(result))


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
