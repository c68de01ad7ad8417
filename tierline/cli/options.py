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
        "--ledger", help="SQLite ledger file. Default: [ledger] path, else the user data dir."
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print nothing on stderr unless something failed."),
]
