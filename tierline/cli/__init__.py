"""The tierline command line: the only part of tierline that prints.

`main(argv) -> int` is the whole CLI; `cli_exit()` is the console script. Commands are thin:
parse options, call one library function, map the outcome to an exit code.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

import typer

from ..errors import ExitCode, TierlineError, redact
from . import backends, batch, classify, init, ledger, plan, run, tiering
from .output import err_console, silence_stdout

__all__ = ["RAISE_INTERNAL_ERRORS", "app", "cli_exit", "main"]

app = typer.Typer(
    name="tierline",
    help=(
        "Tier batch LLM jobs and dispatch them to the cheapest backend that can do them well.\n\n"
        "Reads JSONL jobs (files or '-' for stdin), writes one JSONL result per job to stdout "
        "or -o, and keeps a cost ledger. Messages and the summary go to stderr."
    ),
    no_args_is_help=True,
    add_completion=False,
    # API keys live in locals: never print them in a traceback.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(name="run")(run.run)
app.command(name="classify")(classify.classify)
app.command(name="init")(init.init)
app.command(name="plan")(plan.plan)
app.add_typer(backends.app, name="backends")
app.add_typer(tiering.app, name="tiering")
app.add_typer(batch.app, name="batch")
app.add_typer(ledger.app, name="ledger")


# Set by the test suite (tests/conftest.py): an internal error raises its exception out of main()
# instead of becoming exit 70, so a bug fails the test that hit it with its own traceback.
RAISE_INTERNAL_ERRORS = False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (README "Exit codes")."""
    try:
        app(args=argv, prog_name="tierline")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.USAGE)
    except TierlineError as exc:
        err_console.print(f"tierline: error: {redact(str(exc))}", markup=False, highlight=False)
        return int(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before a run installs its own handler (config, model load)
        err_console.print("tierline: interrupted", markup=False, highlight=False)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `tierline ledger summary | head -1`: the reader has what it wanted
        silence_stdout()
        return ExitCode.BROKEN_PIPE
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            return _internal(exc)
        # `> /dev/full`, a full disk or quota: the environment, not a bug; one line.
        err_console.print(
            f"tierline: error: cannot write: {exc.strerror}", markup=False, highlight=False
        )
        return ExitCode.OUTPUT_FAILED
    except Exception as exc:
        return _internal(exc)
    return 0


# Write failures that are the machine's state (a full disk, a quota, a failing device).
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


def _internal(exc: Exception) -> int:
    """A bug: one line (or the scrubbed traceback with TIERLINE_DEBUG), exit 70."""
    if RAISE_INTERNAL_ERRORS:
        raise exc
    if os.environ.get("TIERLINE_DEBUG"):
        # An exception message can quote a key: print the traceback scrubbed, not raw.
        err_console.print(redact(traceback.format_exc()), markup=False, highlight=False)
        return ExitCode.INTERNAL
    err_console.print(
        f"tierline: internal error: {type(exc).__name__}: {redact(str(exc))} "
        "(set TIERLINE_DEBUG=1 for a traceback, and please report it)",
        markup=False,
        highlight=False,
    )
    return ExitCode.INTERNAL


def cli_exit() -> None:
    sys.exit(main())
