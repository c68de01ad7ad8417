"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

Inputs = Annotated[
    list[str],
    typer.Argument(help="JSONL job files; '-' reads standard input.", show_default=False),
]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Write results here (atomically) instead of stdout."),
]
ConfigPath = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config. Default: $TIERLINE_CONFIG, then ./tierline.toml, then the embedded "
        "default (every tier on the local SmolLM2 model).",
    ),
]
LedgerPath = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        help="SQLite ledger file. Default: the config's ledger.path, else the user data dir.",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print nothing on stderr unless something failed."),
]
MaxCost = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0,
        metavar="USD",
        help="Spending cap in US dollars. run: each job's worst case is reserved before it is "
        "sent, so spend never passes the cap; jobs that do not fit are skipped (exit 3). "
        "plan: exit 3 when the estimate passes it.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
