"""Options shared by several commands, declared once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import typer

from ..errors import UsageError


def not_empty(flag: str) -> Callable[[str | None], str | None]:
    """An empty path is a mistake (`-c "$CONFIG"` with the variable unset), not "use the
    default": the run would go on with the embedded default config, the default ledger."""

    def check(value: str | None) -> str | None:
        if value == "":
            raise UsageError(f"{flag} is empty; give a path (is a shell variable unset?)")
        return value

    return check


Inputs = Annotated[
    list[str],
    typer.Argument(help="JSONL job files; '-' reads standard input.", show_default=False),
]
Output = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        callback=not_empty("--output"),
        help="Write results here (atomically) instead of stdout.",
    ),
]
ConfigPath = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        callback=not_empty("--config"),
        help="TOML config. Default: $TIERLINE_CONFIG, then ./tierline.toml, then the embedded "
        "default (every tier on the local SmolLM2 model).",
    ),
]
LedgerPath = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        callback=not_empty("--ledger"),
        help="SQLite ledger file. Default: the config's ledger.path, else the user data dir.",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print nothing on stderr unless something failed."),
]
# A cap above this is a typo, not a budget (and would overflow the ledger's integer money).
MAX_COST_USD = 1_000_000_000


def _finite_cost(value: float | None) -> float | None:
    """--max-cost must be a finite amount: `inf`, `nan` or `1e15` would silently mean no cap
    (or crash the ledger), so they are usage errors, reported on one line before any work."""
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_COST_USD):
        raise UsageError(
            f"--max-cost {value!r}: give a number of US dollars from 0 to {MAX_COST_USD:,}"
        )
    return value


MaxCost = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        callback=_finite_cost,
        metavar="USD",
        help="Spending cap in US dollars. run: each job's worst case is reserved before it is "
        "sent, so spend never passes the cap; jobs that do not fit are skipped (exit 3). "
        "plan: exit 3 when the estimate passes it.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
