"""The tierline command line: the only part of tierline that prints.

`main(argv) -> int` is the whole CLI; `cli_exit()` is the console script. Commands are thin:
parse options, call one library function, map the outcome to an exit code.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import typer
import typer.core
from typer._click import Command, Context, HelpFormatter  # Typer vendors Click

from ..errors import ExitCode, TierlineError, UsageError, redact

__all__ = ["RAISE_INTERNAL_ERRORS", "app", "cli_exit", "main"]

# Each command's module, its command (a function) or sub-app (a Typer), and the first paragraph
# of its help, in --help order. A command's module, and the SDKs, numpy and pydantic models it
# imports, is loaded only when that command runs: `tierline --help` and `tierline classify`
# are what a shell loop pays per call (docs/cli.md; click's "lazily loading subcommands").
# tests/test_cli.py checks that these summaries are the commands' own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": (
        "run",
        "run",
        "Tier each job, dispatch it along its tier's route, write one result line per job.",
    ),
    "classify": (
        "classify",
        "classify",
        "Print each job back with its `tier`, a readable `why` and a `confidence`.",
    ),
    "init": (
        "init",
        "init",
        "Write a commented starter tierline.toml that routes each tier to the backends you name.",
    ),
    "plan": (
        "plan",
        "plan",
        "Estimate what the jobs would cost per tier and backend, synchronously and through\n"
        "provider batch APIs, against the baseline model. Nothing is sent (but see --calibrate).",
    ),
    "backends": ("backends", "app", "Inspect the configured backends."),
    "tiering": (
        "tiering",
        "app",
        "Train the tier classifier and measure tiering on labelled prompts.",
    ),
    "batch": (
        "batch",
        "app",
        "Provider batches (half price, done within 24 h): status, collect, cancel.",
    ),
    "ledger": ("ledger", "app", "Read the cost ledger: totals and savings, runs, exports."),
}


# Help and usage errors are rich panels for a person at a terminal, plain text in a pipe or a
# log; Typer's rich formatting costs more to import than the rest of `--help`.
def _tty(stream: Any) -> bool:
    # A stream closed by the shell (`>&-`) is None: no terminal, and no crash before main()
    # can report it.
    return stream is not None and stream.isatty()


MARKUP: Any = "rich" if _tty(sys.stdout) or _tty(sys.stderr) else None


@contextlib.contextmanager
def _no_pydantic_plugins() -> Iterator[None]:
    """Build the config models without pydantic's plugin lookup, which reads the entry points of
    every installed distribution (Typer does the same for its own adapters); a user's own
    PYDANTIC_DISABLE_PLUGINS is kept."""
    previous = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = previous or "__all__"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PYDANTIC_DISABLE_PLUGINS"]


def load_command(name: str) -> Command:
    """Import one command's module and build its click command, as Typer would."""
    module_name, attribute, _summary = COMMANDS[name]
    with _no_pydantic_plugins():
        target: Any = getattr(importlib.import_module(f"{__name__}.{module_name}"), attribute)
    command: Command
    if isinstance(target, typer.Typer):
        target.rich_markup_mode = MARKUP
        target.info.cls = Group
        command = typer.main.get_group(target)  # a sub-app is a group even with one command
    else:
        single = typer.Typer(
            add_completion=False, pretty_exceptions_show_locals=False, rich_markup_mode=MARKUP
        )
        single.command(name=name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class Group(typer.core.TyperGroup):
    """A group whose bare invocation (`tierline`, `tierline ledger`) prints its help on stdout
    and exits 2 (a usage error: nothing ran), in plain and in rich mode alike."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help())
            ctx.exit(int(ExitCode.USAGE))
        return super().parse_args(ctx, args)


class StdoutGone(Exception):
    """The reader of stdout went away while a command wrote to it (not an OSError, which
    Click would catch)."""


@contextlib.contextmanager
def _reader_gone() -> Iterator[None]:
    """Click turns a broken pipe into exit 1, with no word; carry it past Click instead, so
    main() answers 141 for every command as for `run` (README "Exit codes")."""
    try:
        yield
    except BrokenPipeError as exc:
        raise StdoutGone from exc


class LazyGroup(Group):
    """The root group: lists commands from COMMANDS and imports one only when it is run (or
    its own --help is asked for)."""

    _listing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Placeholders carry the name and summary: `--help`, typo suggestions and completion
        # need no import.
        for name, (_module, _attribute, summary) in COMMANDS.items():
            self.commands[name] = typer.core.TyperCommand(name, help=summary)
        self._loaded: set[str] = set()

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in COMMANDS and cmd_name not in self._loaded and not self._listing:
            self.commands[cmd_name] = load_command(cmd_name)
            self._loaded.add(cmd_name)
        return super().get_command(ctx, cmd_name)

    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        with _reader_gone():  # `tierline --help | head -1`
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Context) -> Any:
        with _reader_gone():  # every command, its --help included
            return super().invoke(ctx)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self._listing = True  # the command list needs only the summaries
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=LazyGroup,
    rich_markup_mode=MARKUP,
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


@app.callback()
def _root() -> None:
    """(A callback makes the root a group; its commands come from COMMANDS.)"""


# Set by the test suite (tests/conftest.py): an internal error raises its exception out of main()
# instead of becoming exit 70, so a bug fails the test that hit it with its own traceback.
RAISE_INTERNAL_ERRORS = False


class _Closed(io.TextIOBase):
    """Stands for stdin or stdout when the shell closed it (`<&-`, `>&-`), where Python leaves
    None: reading or writing it is a usage error that says so, not an AttributeError (exit 70)
    or data printed nowhere (exit 0). `closed` is true, so cli/preflight.py refuses it first."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__()
        self.message = f"standard {what} is closed; {fix}"

    @property
    def closed(self) -> bool:
        return True

    @property
    def buffer(self) -> Any:
        raise UsageError(self.message)

    def read(self, *_: Any) -> str:
        raise UsageError(self.message)

    def write(self, *_: Any) -> int:
        raise UsageError(self.message)

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        """Nothing was written (Python flushes stdout at exit)."""


def _stand_in_for_closed_streams() -> None:
    if sys.stdin is None:
        sys.stdin = _Closed("input", "pipe jobs in or give a job file")
    if sys.stdout is None:
        sys.stdout = _Closed("output", "redirect it (> FILE) or give -o PATH where there is one")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (README "Exit codes")."""
    _stand_in_for_closed_streams()
    try:
        app(args=argv, prog_name="tierline")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.USAGE)
    except TierlineError as exc:
        _say(f"tierline: error: {redact(str(exc))}")
        return int(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before a run installs its own handler (config, model load)
        _say("tierline: interrupted")
        return ExitCode.INTERRUPTED
    except (BrokenPipeError, StdoutGone):  # `tierline ledger summary | head -1`: the reader left
        from .output import silence_stdout

        silence_stdout()
        return ExitCode.BROKEN_PIPE
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            return _internal(exc)
        # `> /dev/full`, a full disk or quota: the environment, not a bug; one line.
        _say(f"tierline: error: cannot write: {exc.strerror}")
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
        _say(redact(traceback.format_exc()))
        return ExitCode.INTERNAL
    _say(
        f"tierline: internal error: {type(exc).__name__}: {redact(str(exc))} "
        "(set TIERLINE_DEBUG=1 for a traceback, and please report it)"
    )
    return ExitCode.INTERNAL


def _say(text: str) -> None:
    """One plain line on stderr; the console (and rich) is imported only when there is one."""
    from .output import err_console

    err_console.print(text, markup=False, highlight=False)


def cli_exit() -> None:
    sys.exit(main())
