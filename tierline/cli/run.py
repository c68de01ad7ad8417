"""`tierline run`: tier and dispatch every job, write one result per job and keep the ledger."""

from __future__ import annotations

import errno
import math
import os
from contextlib import AbstractContextManager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..config import Config, find_config_path, load_config
from ..dispatch.batch import BatchOptions
from ..errors import ExitCode, UsageError
from ..interrupts import DEFAULT_GRACE_S, Stop
from ..ledger.pricing import to_micros
from ..ledger.store import ledger_path_for
from ..resume import Journal
from ..run import RunSummary, Sink
from ..run.command import Engine as RunEngine
from ..run.command import RunRequest, Select, local_engine, run_command
from ..shard import Shard
from . import batch
from .options import ConfigPath, Inputs, LedgerPath, MaxCost, Output, Quiet, not_empty
from .output import count_lines, err_console, silence_stdout
from .preflight import (
    answer_cache,
    check_inputs,
    check_ledger,
    check_names,
    check_stdio,
    resolve_output,
)
from .progress import run_progress

if TYPE_CHECKING:
    from ..ray.outputs import UriOutput

ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Run only shard I of N (1-based; a stable hash of each job id), so N hosts or cron "
        "entries can split one file. Merge their ledgers with `tierline ledger merge`.",
    ),
]
MAX_GRACE_S = 86_400.0


def _finite_grace(value: float) -> float:
    """A grace of `nan` or `inf` is no number of seconds (`nan` read "must be >= 0")."""
    if not (math.isfinite(value) and 0 <= value <= MAX_GRACE_S):
        raise UsageError(
            f"--grace {value!r}: give a number of seconds from 0 to {MAX_GRACE_S:,.0f}"
        )
    return value


Grace = Annotated[
    float,
    typer.Option(
        "--grace",
        callback=_finite_grace,
        metavar="SECONDS",
        help="On SIGINT/SIGTERM, let in-flight calls finish for this long (0 to 86,400) before "
        "cancelling them.",
    ),
]
Fresh = Annotated[
    bool,
    typer.Option(
        "--fresh", help="Ignore the results of an interrupted attempt (-o PATH.partial); redo all."
    ),
]
RetryFailed = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="With -o PATH of a finished run: send again only the jobs whose result is not ok "
        "(and those missing), keep the rest, replace PATH atomically.",
    ),
]
Engine = Annotated[
    str,
    typer.Option(
        "--engine",
        metavar="local|ray",
        help="Where jobs are dispatched: this process (local), or an actor pool on a Ray "
        "cluster (ray; needs the `tierline[ray]` extra; inputs and -o may then also be URIs, "
        "e.g. s3://bucket/jobs/, -o s3://bucket/results/ for a directory of JSONL parts; "
        "docs/scale-out.md).",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="ADDR",
        help="With --engine ray: the cluster to join, from one of its nodes (auto or HEAD:6379; not ray://); default: "
        "$RAY_ADDRESS, else a Ray instance of this machine, started and stopped by the run.",
    ),
]
RayActors = Annotated[
    int | None,
    typer.Option(
        "--ray-actors",
        min=1,
        metavar="N",
        help="With --engine ray: tierline dispatchers in the actor pool (default: one per CPU "
        "of the cluster); backend limits are split evenly over them.",
    ),
]
CachePath = Annotated[
    str | None,
    typer.Option(
        "--cache",
        metavar="PATH",
        callback=not_empty("--cache"),
        help="Answer cache (SQLite): reuse ok answers of earlier runs at no cost, store new "
        "ones. Default: the config's [cache] section, else off (docs/cache.md).",
    ),
]


def run(
    inputs: Inputs,
    output: Output = None,
    config: ConfigPath = None,
    ledger: LedgerPath = None,
    quiet: Quiet = False,
    shard: ShardOption = None,
    grace: Grace = DEFAULT_GRACE_S,
    fresh: Fresh = False,
    provider_batch: batch.ProviderBatch = False,
    wait: batch.Wait = False,
    max_cost: MaxCost = None,
    retry_failed: RetryFailed = False,
    cache: CachePath = None,
    engine: Engine = "local",
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
) -> None:
    """Tier each job, dispatch it along its tier's route, write one result line per job.

    With -o, rerunning the same command after a crash or Ctrl-C resumes: jobs already done are
    skipped. Exit 0 when every job succeeded, 1 when some failed (each failure is in the
    results), 2 on a usage or config error, 3 when the budget stopped the run, 5 when another
    run holds the output, 130/143 when interrupted by SIGINT/SIGTERM, 4 when jobs wait in
    provider batches (the same command again, or `tierline batch collect`, fetches them),
    141 when the reader of stdout went away, 74 when the results could not be written.
    """
    on_ray = _check_engine(engine, ray_address, ray_actors, provider_batch or wait)
    cfg = load_config(config)
    ledger_path = ledger_path_for(ledger, cfg)
    part = Shard.parse(shard) if shard else None
    # Every path and stream is checked before anything is sent (cli/preflight.py); from here
    # on `output` is the real file (symlinks resolved) or None for stdout.
    check_stdio(inputs, output)
    _check_retry(retry_failed, output, fresh)
    check_inputs(_local_inputs(inputs, on_ray))
    check_names([config or os.environ.get("TIERLINE_CONFIG")], "config")
    cache_file = answer_cache(cfg, cache, ledger_path)
    to_uri = _is_uri_output(output, on_ray, retry_failed)
    if not to_uri:
        output = resolve_output(output, inputs, ledger_path, _config_file(config, cfg), cache_file)
    check_ledger(ledger_path, _ledger_origin(ledger, cfg))
    uri_output = _uri_output(output, inputs, ledger_path) if to_uri else None
    if uri_output is not None:  # the run journals to a local staging file, then publishes it
        output = str(uri_output.staging)
    request = RunRequest(
        inputs,
        output,
        cfg,
        ledger_path,
        shard=part,
        fresh=fresh,
        retry_failed=retry_failed,
        batches=BatchOptions(provider_batch, wait, output),
        max_cost_micros=None if max_cost is None else to_micros(Decimal(repr(max_cost))),
        cache_path=cache,
        publish=None if uri_output is None else uri_output.publish,
    )

    def progress(journal: Journal) -> AbstractContextManager[Sink]:
        # a resume does not send the jobs it keeps (counted as the input is read): they leave
        # the bar's total; a shard runs an unknown share
        return run_progress(
            None if part else count_lines(inputs),
            console=err_console,
            quiet=quiet,
            max_cost_usd=max_cost,
            kept=lambda: journal.kept,
        )

    where = _ray_engine(ray_address, ray_actors, quiet) if on_ray else local_engine
    outcome = run_command(request, Stop(grace_s=grace), progress, batch.RunView(quiet), where)
    done = outcome.run
    if done is not None and done.journal.error is not None:
        raise typer.Exit(_output_failed(done.journal, quiet=quiet))
    if done is not None and not done.committed:
        err_console.print(_resume_hint(done.stop, done.journal), markup=False)
    raise typer.Exit(outcome.exit_code)


def _check_engine(engine: str, address: str | None, actors: int | None, batches: bool) -> bool:
    """True for --engine ray, once Ray is known to be installed (exit 2 before anything is
    sent otherwise). Ray is imported only here, and only for --engine ray."""
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r}: expected local or ray")
    if engine == "local":
        if address is not None or actors is not None:
            raise UsageError("--ray-address and --ray-actors need --engine ray")
        return False
    if batches:
        raise UsageError("--engine ray does not send provider batches (--provider-batch, --wait)")
    from ..ray.engine import check_address, require_ray

    require_ray()
    check_address(address or os.environ.get("RAY_ADDRESS"))
    return True


def _is_uri_output(output: str | None, on_ray: bool, retry_failed: bool) -> bool:
    """-o URI: a directory of result parts, written by --engine ray only (exit 2 otherwise)."""
    from ..ray.inputs import is_uri  # no Ray import

    if output is None or not is_uri(output):
        return False
    if not on_ray:
        raise UsageError(
            f"-o {output}: results go to a URI with --engine ray only; a local run writes a "
            "file (-o PATH) or stdout"
        )
    if retry_failed:
        raise UsageError(
            f"--retry-failed with -o {output}: the results to filter are in the URI's parts, "
            "not on this machine; rerun without it, or write to -o PATH"
        )
    return True


def _uri_output(output: str | None, inputs: list[str], ledger_path: Path) -> UriOutput:
    """The URI's parts and the local staging file beside the ledger, checked writable and
    holding no input (exit 2 before anything is paid); a staging file left by an unfinished
    upload is resumed."""
    from ..ray.outputs import UriOutput

    assert output is not None
    target = UriOutput(output, ledger_path)
    target.refuse_inputs(inputs)
    target.check()
    target.reopen_unpublished()
    return target


def _local_inputs(inputs: list[str], on_ray: bool) -> list[str]:
    """The inputs that are local files or stdin; a URI (s3://, file://, ...) is read by Ray Data,
    so only with --engine ray (a usage error otherwise, before anything is sent)."""
    from ..ray.inputs import check_uris, is_uri  # no Ray import

    uris = [path for path in inputs if is_uri(path)]
    if uris and not on_ray:
        raise UsageError(
            f"input {uris[0]}: a URI is read through Ray Data, with --engine ray only; "
            "a local run reads files and stdin"
        )
    check_uris(uris)
    return [path for path in inputs if not is_uri(path)]


def _ray_engine(address: str | None, actors: int | None, quiet: bool) -> RunEngine:
    """The same run on a Ray cluster (tierline/ray/engine.py)."""
    from ..ray.engine import RayOptions
    from ..ray.engine import run_files as run_on_ray

    address = address or os.environ.get("RAY_ADDRESS")
    options = RayOptions(address=address, actors=actors, quiet=quiet)

    def on_ray(
        request: RunRequest,
        *,
        writer: Journal,
        on_result: Sink,
        select: Select,
        stop: Stop,
    ) -> RunSummary:
        return run_on_ray(
            request.inputs,
            config=request.config,
            writer=writer,
            ledger_path=request.ledger_path,
            options=options,
            on_result=on_result,
            select=select,
            stop=stop,
            max_cost_micros=request.max_cost_micros,
            cache_path=request.cache_path,
        )

    return on_ray


def _check_retry(retry_failed: bool, output: str | None, fresh: bool) -> None:
    if retry_failed and output in (None, "-"):
        raise UsageError("--retry-failed needs -o PATH: the output whose failed jobs to redo")
    if retry_failed and fresh:
        raise UsageError("--retry-failed keeps the results that are ok; --fresh redoes all")


def _config_file(explicit: str | None, cfg: Config) -> Path | None:
    return None if cfg.is_default else find_config_path(explicit)


def _ledger_origin(explicit: str | None, cfg: Config) -> str:
    """Where the ledger path came from, for messages about it."""
    if explicit:
        return "--ledger"
    if cfg.ledger.path:
        return f"ledger.path in {cfg.origin}"
    return "the default, under $TIERLINE_HOME" if os.environ.get("TIERLINE_HOME") else "default"


def _output_failed(journal: Journal, *, quiet: bool) -> int:
    """One line for results that could not be written; the exit code."""
    exc = journal.error
    assert exc is not None
    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
        # `tierline run ... | head -1`: the reader has what it wanted. Like `yes | head`, exit
        # 141 (128 + SIGPIPE); stdout is pointed at /dev/null so that Python's own flush at
        # exit does not print a BrokenPipeError.
        silence_stdout()
        if not quiet:
            err_console.print(
                f"tierline: stdout was closed by its reader after {journal.count} result(s); "
                "stopped sending jobs",
                markup=False,
            )
        return int(ExitCode.BROKEN_PIPE)
    where = "stdout" if journal.partial is None else journal.partial
    saved = (
        ""
        if journal.partial is None
        else f"; {journal.count + journal.kept} result(s) saved, rerun the same command to resume"
    )
    err_console.print(
        f"tierline: error: cannot write the results to {where}: {exc.strerror or exc}; "
        f"stopped sending jobs{saved}",
        markup=False,
    )
    return int(ExitCode.OUTPUT_FAILED)


def _resume_hint(stop: Stop, journal: Journal) -> str:
    name = "SIGINT" if stop.exit_code == ExitCode.INTERRUPTED else "SIGTERM"
    if journal.partial is None:
        return (
            f"tierline: interrupted by {name} after {journal.count} result(s) on stdout; "
            "runs on stdout do not resume (use -o PATH for that)"
        )
    done = journal.count + journal.kept
    return (
        f"tierline: interrupted by {name}; {done} result(s) saved in {journal.partial}; "
        "rerun the same command to resume"
    )
