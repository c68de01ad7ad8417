"""`tierline backends check`: is every configured backend usable right now?"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.table import Table

from ..config import load_config
from ..dispatch.probe import CheckResult, check_backends
from ..errors import ExitCode
from .options import ConfigPath
from .output import err_console, print_table

app = typer.Typer(help="Inspect the configured backends.", no_args_is_help=True)


def _mark(value: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[value]


def _table(results: list[CheckResult]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in (
        "backend",
        "kind",
        "endpoint",
        "model",
        "reachable",
        "auth",
        "model ok",
        "latency",
        "detail",
    ):
        table.add_column(column, overflow="fold")
    for r in results:
        latency = f"{r.latency_s * 1000:.0f} ms" if r.latency_s is not None else "-"
        table.add_row(
            r.backend,
            r.kind,
            r.endpoint,
            r.model,
            _mark(r.reachable),
            _mark(r.auth),
            _mark(r.model_present),
            latency,
            r.detail,
            style=None if r.usable else "red",
        )
    return table


@app.command()
def check(
    config: ConfigPath = None,
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="Check only this backend (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per endpoint on stdout.")
    ] = False,
) -> None:
    """For each configured backend: reachable, key accepted, model served, latency.

    A table goes to stderr (with --json, JSON lines to stdout). Exit 0 when every backend is
    usable, 1 when one is not, 2 on a config error.
    """
    cfg = load_config(config)
    unknown = [name for name in backend or [] if name not in cfg.backends]
    if unknown:
        raise typer.BadParameter(
            f"unknown backend {unknown[0]!r} (configured: {', '.join(sorted(cfg.backends))})",
            param_hint="--backend",
        )
    results = asyncio.run(check_backends(cfg, backend))
    if as_json:
        for r in results:
            typer.echo(json.dumps(r.as_dict()))
    else:
        print_table(_table(results), err_console)
        # One unwrapped line per problem: the table wraps on narrow terminals, logs want grep.
        for r in results:
            if not r.usable:
                err_console.print(
                    f"tierline: backend {r.backend} ({r.endpoint}) is unusable: {r.detail}",
                    markup=False,
                )
    usable = all(r.usable for r in results)
    raise typer.Exit(int(ExitCode.OK if usable else ExitCode.JOBS_FAILED))
