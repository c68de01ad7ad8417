"""`tierline run`: tier and dispatch every job, write one result per job and keep the ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from ..config import load_config
from ..dispatch.scheduler import run_files
from ..jobs import ResultWriter
from ..ledger.store import default_ledger_path
from .options import ConfigPath, Inputs, LedgerPath, Output, Quiet
from .output import print_summary, progress_bar


def run(
    inputs: Inputs,
    output: Output = None,
    config: ConfigPath = None,
    ledger: LedgerPath = None,
    quiet: Quiet = False,
) -> None:
    """Tier each job, dispatch it along its tier's route, write one result line per job.

    Exit 0 when every job succeeded, 1 when some failed (each failure is in the results),
    2 on a usage or config error, 3 when the budget stopped the run.
    """
    cfg = load_config(config)
    ledger_path = Path(ledger or cfg.ledger.path or default_ledger_path())
    writer = ResultWriter(output)
    try:
        with progress_bar(inputs, quiet=quiet) as advance:
            summary = asyncio.run(
                run_files(
                    inputs, config=cfg, writer=writer, ledger_path=ledger_path, on_result=advance
                )
            )
        writer.commit()
    finally:
        writer.close()
    print_summary(summary, quiet=quiet)
    raise typer.Exit(int(summary.exit_code))
