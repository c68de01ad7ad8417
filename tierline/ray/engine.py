"""`tierline run --engine ray`: the driver side of a run on a Ray cluster.

The driver reads and validates the inputs exactly as a local run does (same line numbers,
duplicate ids and invalid lines, same resume selection), so the results are the same lines.
Valid jobs go to a Ray Dataset and through `map_batches` over a pool of `Dispatcher` actors
(tierline/ray/worker.py); their results stream back here, where:

* each result is written once, by its resume key (the first one wins; a second one, from a
  block retried after an actor died, is dropped);
* each call and each answer is already on disk: every actor records its calls and its jobs'
  result lines in its own *ledger fragment* in this run's directory beside the ledger,
  committed before the result leaves the actor, so a killed actor loses none
  (tierline/ray/fragments.py);
* at the end the actors' calls are gathered into this run's fragment, which is merged into the
  ledger with `ledger merge` (both steps idempotent), and removed. A driver that dies leaves
  them; the next Ray run on that ledger merges them first, so no paid call is lost, and the
  rerun resumes from `-o PATH.partial` as a local run.

Exactly once, paid once: a job answered by an actor whose result never reached the driver
(the actor was killed with it in an unsent chunk, Ray dropped a retried block's output, the
driver was stopped or died) is taken from the fragments, never sent again: by the actor of a
retried block, by the driver after each pass and after a stop, and by the rerun from a dead
driver's fragments. Only jobs in flight when an actor died are sent again (another pass).
SIGINT/SIGTERM set the run's stop flag: the actors start no new call and finish (for the
grace period at most) those in flight, whose answers the driver then takes from the fragments.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ..config import Config
from ..dispatch.answers import Answers
from ..errors import UsageError
from ..interrupts import DEFAULT_GRACE_S, Stop
from ..jobs import InvalidLine, Job, Result, dumps, read_jobs
from ..ledger.accounting import Accountant
from ..ledger.store import Ledger
from ..resume import DONE_STATUSES, RETRY_KEEPS, job_key, route_fingerprint
from ..run.files import ResultSink as RecordWriter
from ..run.files import _answers, finish_run, start_run
from ..run.loop import _reuse_notes
from ..run.tally import DEFAULT_NOTE, RunSummary, Tally
from .fragments import ACTOR_STOP_MARGIN_S, NOT_SHARED, DriverFragment, Orphans, stored_results
from .inputs import is_uri, needs_ray_data, read_uris
from .limits import actors_for
from .state import STOP_POLL_S, RunState
from .worker import Dispatcher

__all__ = ["RayOptions", "require_ray", "run_files"]

Select = Callable[[Iterable[Job | InvalidLine]], Iterable[Job | InvalidLine]]
PASSES = 3  # passes over jobs left without a result (each after actors died mid-chunk)
LOCAL_OBJECT_STORE = 256 * 1024**2  # a cluster started here: jobs are small, keep Ray small
# Blocks each actor works on at once, on its one event loop: with one, the window empties at the
# end of every block (its last jobs finish alone, then the block is converted and shipped)
# before the next block starts; with two, the next block's jobs fill it. The limits and the
# window are per actor, not per block. (benchmarks/bench_ray.py, 500 ms fake: 172-189 of 256
# in flight with one, 201-213 with two.)
CALLS_PER_ACTOR = 2
CONNECT_S = 10.0  # a cluster address that does not accept a TCP connection in this long is wrong


def require_ray() -> Any:
    """Import Ray, or fail as a usage error (exit 2) before anything is sent."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not just Ray core
    except ImportError as exc:
        raise UsageError(
            f"--engine ray needs the optional extra: pip install 'tierline[ray]' ({exc})"
        ) from None
    return ray


def check_address(address: str | None) -> None:
    """A cluster address that cannot work is a usage error (exit 2) before anything is read or
    sent. Ray itself fails on one with an internal-looking error or, on a HOST:PORT where no
    cluster listens, retries forever; `auto` with no cluster is caught at `ray.init`."""
    if address is None or address == "auto":
        return
    where = f"Ray address {address!r} (--ray-address or $RAY_ADDRESS)"
    if address.startswith("ray://"):
        # Ray Data does not run over Ray Client (ray-project/ray#42739: Ray's internal
        # "'Worker' object has no attribute 'core_worker'", exit 70), and the actors write their
        # ledger fragments where the driver reads them: the driver belongs on the cluster
        raise UsageError(
            f"{where}: Ray Client (ray://) cannot run Ray Data; run tierline on the cluster: "
            "`ray job submit --address http://HEAD:8265 -- tierline run ...`, or "
            "--ray-address auto (or HEAD:6379) on one of its nodes (docs/scale-out.md)"
        )
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise UsageError(f"{where}: expected HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except OSError as exc:
        raise UsageError(f"{where}: no Ray cluster answers there ({exc.strerror or exc})") from None


class RayOptions:
    """Where and how wide: `address` (None: a cluster of this machine, started and stopped
    here, unless Ray is already initialised), `actors` (None: one per CPU of the cluster)."""

    def __init__(
        self,
        address: str | None = None,
        actors: int | None = None,
        batch_size: int | None = None,
        on_started: Callable[[Any], None] | None = None,
        quiet: bool = False,
    ) -> None:
        self.address = address
        self.actors = actors
        self.batch_size = batch_size
        self.on_started = on_started  # called with the RunState actor (tests kill actors)
        self.quiet = quiet  # -q: what Ray writes to stderr is shown only if the run breaks


def check_config(config: Config) -> None:
    """What a Ray run cannot do, refused before anything is sent."""
    batched = [n for n, b in config.backends.items() if getattr(b, "mode", None) == "batch"]
    if batched:
        raise UsageError(
            f"--engine ray does not send provider batches (backend(s) {', '.join(batched)} have "
            'mode = "batch"); run those without --engine ray'
        )


@contextlib.contextmanager
def _held_stderr(quiet: bool) -> Iterator[None]:
    """With -q, what Ray writes to stderr itself (its start-up warnings, its C++ core worker's
    lines about actor restarts) is held in a temporary file, and written out only if the run
    breaks with an error here: a successful quiet run prints nothing, a broken one shows all.
    At the file descriptor: Ray's C++ side writes to fd 2, not to sys.stderr."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except Exception:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.buffer.write(held.read())
                sys.stderr.flush()


@contextlib.contextmanager
def _cluster(ray: Any, address: str | None) -> Iterator[None]:
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kwargs["object_store_memory"] = LOCAL_OBJECT_STORE
        try:
            ray.init(address=address, logging_level=logging.WARNING, **kwargs)
        except ConnectionError as exc:  # `auto` (or $RAY_ADDRESS) with no cluster to join
            raise UsageError(f"Ray address {address!r}: {exc}") from None
        started = True
    # quiet on success: no progress bars, no execution plans (and no warning about either)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray's driver prints cluster events ("(raylet) Task ... failed, will be retried") to
    # sys.stdout, which carries the results: send them to stderr. The results journal keeps
    # the real stdout it took when it was opened.
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout = stdout
        if started:
            ray.shutdown()


class _Driver:
    """Writes what the actors send back: results once per key, calls into the fragment."""

    def __init__(
        self,
        config: Config,
        writer: RecordWriter,
        ledger: Ledger,
        run_id: str,
        on_result: Callable[[Result], None] | None,
        answers: Answers | None,
    ) -> None:
        self.answers = answers  # dedup and the answer cache, here on the driver as in a local run
        self.followers: dict[str, list[Job]] = {}  # answer key -> identical jobs waiting for it
        self.answer_keys: dict[str, str] = {}  # resume key of a sent job -> its answer key
        self.writer = writer
        self.ledger = ledger
        self.run_id = run_id
        self.on_result = on_result
        self.tally = Tally()
        self.written: set[str] = set()
        self.duplicates = 0
        self.money = Accountant(config)  # only for the summary's price and savings notes

    def result(self, result: Result, key: str | None = None) -> None:
        if key is not None:
            self.written.add(key)
        self.tally.add(result)
        self.writer.write(result)
        if self.on_result is not None:
            self.on_result(result)

    def account(self) -> None:
        """The summary's money, from the run's calls as gathered from every actor's fragment
        (those of a killed actor included: they were paid)."""
        rows = self.ledger.conn.execute(
            "SELECT backend, model, cost_nanos, baseline_nanos FROM calls WHERE run_id = ?",
            (self.run_id,),
        )
        for backend, model, cost, baseline in rows:
            if cost is None:
                unknown = self.money.pricer.unknown
                unknown[(backend, model)] = unknown.get((backend, model), 0) + 1
            else:
                self.money.cost_nanos += cost
                self.money.baseline_nanos += baseline or 0

    def batch(self, table: Any) -> None:
        columns = table.to_pydict()
        fresh: list[tuple[str, str]] = []
        keys: set[str] = set()
        for key, line in zip(columns["key"], columns["result"], strict=True):
            # A key seen twice is the same answer delivered twice (Ray replaying a retried
            # block's output), not a second call: a job is marked answered before its result
            # leaves the actor, so a retried block never sends it again (worker.py).
            if key in self.written or key in keys:
                self.duplicates += 1
                continue
            fresh.append((key, line))
            keys.add(key)
        # Write-ahead holds without a write here: the actor committed each call to its own
        # fragment before the result left it (fragments.py); the `calls` column is not used.
        for key, line in fresh:
            self.deliver(key, _loads(line))

    def deliver(self, key: str, record: dict[str, Any]) -> None:
        result = Result.from_record(record)
        self.result(result, key)
        self.copies(key, result)

    def recover(
        self,
        rows: dict[str, dict[str, Any]],
        directories: list[Path],
        keep: frozenset[str] = DONE_STATUSES,
    ) -> None:
        """Write the answers stored in the actors' fragments (`directories`) for the jobs of
        `rows` that have no result yet: answered and paid, lost on the way here. A dead run's
        answer keeps the job's current place in the input (it may have been edited since)."""
        missing = [key for key in rows if key not in self.written]
        for key, line in stored_results(directories, missing):
            record = _loads(line)
            if record.get("status") in keep:
                record["line"], record["source"] = rows[key]["line"], rows[key]["source"]
                self.deliver(key, record)

    def copies(self, key: str, result: Result) -> None:
        """The identical jobs that waited for this one get a copy of its answer (dedup)."""
        answer = self.answer_keys.pop(key, None)
        if answer is None or self.answers is None:
            return
        self.answers.finish(answer, result)
        for job in self.followers.pop(answer, []):
            copy = self.answers.known(job, answer)
            assert copy is not None  # just finished: it is the newest in the LRU
            self.result(copy)


def _loads(text: str) -> dict[str, Any]:
    from ..jobs import loads

    record = loads(text)  # its resume key included: the journal writes it with the line
    assert isinstance(record, dict)
    return record


def run_files(
    inputs: list[str],
    *,
    config: Config,
    writer: RecordWriter,
    ledger_path: Path,
    options: RayOptions | None = None,
    on_result: Callable[[Result], None] | None = None,
    select: Select | None = None,
    stop: Stop | None = None,
    max_cost_micros: int | None = None,
    cache_path: str | None = None,
    command: str = "run",
) -> RunSummary:
    """A whole run on Ray: the same results, ledger and summary as `tierline.run.run_files`."""
    options = options or RayOptions()
    ray = require_ray()
    check_config(config)
    started = time.perf_counter()
    cluster = contextlib.ExitStack()  # joined for URIs only Ray Data reads, else to send jobs
    sources, opener = inputs, None
    joined = any(needs_ray_data(path) for path in inputs)
    if any(is_uri(path) for path in inputs):
        try:
            if joined:
                _join(cluster, ray, options, stop)
            sources, opener = read_uris(ray, inputs)  # unreadable: exit 2, nothing written yet
        except BaseException:
            cluster.close()
            raise
    grace = stop.grace_s if stop is not None else DEFAULT_GRACE_S
    # dead drivers' runs: once their actors stopped paying, merged, their answers reused
    orphans = Orphans(ledger_path, grace + ACTOR_STOP_MARGIN_S, _notify(options.quiet))
    fragment = DriverFragment(ledger_path)
    run_id = start_run(
        fragment.ledger,
        config,
        writer,
        command=command,
        inputs=inputs,
        max_cost_micros=max_cost_micros,
    )
    answers = _answers(config, cache_path, batches=False)
    driver = _Driver(config, writer, fragment.ledger, run_id, on_result, answers)
    interrupted = False
    rows: dict[str, dict[str, Any]] = {}
    keep = RETRY_KEEPS if getattr(writer, "retry_failed", False) else DONE_STATUSES
    try:
        with cluster, _interrupts(stop):
            rows = _rows(sources, config, select, driver, opener)
            driver.recover(rows, orphans.directories, keep)  # paid by a dead run, never written
            if len(driver.written) < len(rows):
                if not joined:
                    _join(cluster, ray, options, stop)
                _dispatch(
                    ray, rows, config, run_id, driver, options, max_cost_micros, fragment, stop
                )
    except KeyboardInterrupt:
        interrupted = True
        if stop is not None and stop.signum is None:
            stop.request(signal.SIGINT)
    # after a stop: the answers the actors stored and the driver had not received yet
    driver.recover(rows, [fragment.actors])
    fragment.gather(run_id)  # every actor's calls, a killed one's included
    driver.account()
    t = driver.tally
    status = "interrupted" if interrupted else ("ok" if t.failed == 0 else "failed")
    finish_run(fragment.ledger, run_id, t, status)
    if hasattr(writer, "before_sync"):
        setattr(writer, "before_sync", None)  # noqa: B010
    fragment.merge_into(ledger_path)
    orphans.close()
    if answers is not None and answers.cache is not None:
        answers.cache.close()
    notes = ([DEFAULT_NOTE] if config.is_default else []) + driver.money.notes()
    notes += _reuse_notes(t, answers)
    if driver.duplicates:
        notes.append(
            f"ray: {driver.duplicates} result(s) delivered twice after an actor was lost "
            "(kept once)"
        )
    return RunSummary(run_id, config.origin, t, time.perf_counter() - started, notes)


def _notify(quiet: bool) -> Callable[[str], None] | None:
    """Where a wait for a dead run's actors is told (stderr, unless -q)."""
    if quiet:
        return None

    def notify(line: str) -> None:
        sys.stderr.write(f"tierline: {line}\n")
        sys.stderr.flush()

    return notify


def _join(stack: contextlib.ExitStack, ray: Any, options: RayOptions, stop: Stop | None) -> None:
    """Start or join the cluster until `stack` closes."""
    stack.enter_context(_held_stderr(options.quiet))
    stack.enter_context(_cluster(ray, options.address))
    # again inside: ray.init installs its own SIGTERM handler (sys.exit(15)), which would skip
    # the merge of the fragment and the resume hint
    stack.enter_context(_interrupts(stop))


@contextlib.contextmanager
def _interrupts(stop: Stop | None) -> Iterator[None]:
    """SIGTERM stops the driver as Ctrl-C does (KeyboardInterrupt), so the run ends cleanly:
    the fragment is merged and the partial output kept for the resume."""

    def terminate(signum: int, _frame: Any) -> None:
        if stop is not None:
            stop.request(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rows(
    inputs: list[str],
    config: Config,
    select: Select | None,
    driver: _Driver,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The jobs to send, by resume key; invalid lines get their result here at once."""
    route = route_fingerprint(config)
    items: Iterable[Job | InvalidLine] = read_jobs(inputs, opener)
    rows: dict[str, dict[str, Any]] = {}
    reuse = Answers.or_off(driver.answers, config)
    for item in select(items) if select is not None else items:
        answer, known = reuse.lookup(item)  # an invalid line, a cache hit
        if known is not None:
            driver.result(known)
            continue
        assert isinstance(item, Job)
        if answer is not None and reuse.dedup:
            if answer in driver.followers:  # an identical job is sent already: wait for it
                driver.followers[answer].append(item)
                continue
            driver.followers[answer] = []
        key = job_key(item, route)
        if answer is not None:
            driver.answer_keys[key] = answer
        rows[key] = {
            "key": key,
            "line": item.line,
            "source": item.source,
            "job": dumps(dict(item.raw)).decode(),
        }
    return rows


def _dispatch(
    ray: Any,
    rows: dict[str, dict[str, Any]],
    config: Config,
    run_id: str,
    driver: _Driver,
    options: RayOptions,
    max_cost_micros: int | None,
    fragment: DriverFragment,
    stop: Stop | None,
) -> None:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors_for(config, options.actors or max(1, cpus))
    state = ray.remote(RunState).options(num_cpus=0).remote(max_cost_micros)
    if options.on_started is not None:
        options.on_started(state)
    todo = [row for key, row in rows.items() if key not in driver.written]
    for _ in range(PASSES):
        batch = options.batch_size or max(16, min(512, math.ceil(len(todo) / (4 * actors))))
        blocks = max(1, math.ceil(len(todo) / batch))
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
        out = ds.map_batches(
            Dispatcher,
            fn_constructor_kwargs={
                "config": config,
                "run_id": run_id,
                "state": state,
                "actors": actors,
                "cap_micros": max_cost_micros,
                "fragments": str(fragment.actors.resolve()),  # actors run elsewhere
                "watch_driver": True,  # this driver locks the run directory's marker
                "grace_s": stop.grace_s if stop is not None else DEFAULT_GRACE_S,
            },
            # limits are split by `actors` even when a last pass needs fewer of them
            compute=ray.data.ActorPoolStrategy(
                size=min(actors, blocks), max_concurrent_calls_per_actor=CALLS_PER_ACTOR
            ),
            batch_size=batch,
            batch_format="pyarrow",
            num_cpus=min(1.0, cpus / actors),
        )
        try:
            _drain(out, driver, state, stop)
        except Exception as exc:
            if NOT_SHARED in str(exc):  # an actor refused: the run directory is not on its node
                raise UsageError(str(exc).split(NOT_SHARED, 1)[1].split("\n", 1)[0]) from None
            raise
        # answered, but lost on the way here (Ray dropped a killed actor's output): stored
        driver.recover(rows, [fragment.actors])
        todo = [row for key, row in rows.items() if key not in driver.written]
        if not todo:
            return
    raise RuntimeError(f"{len(todo)} job(s) got no result after {PASSES} passes on Ray")


def _drain(out: Any, driver: _Driver, state: Any, stop: Stop | None) -> None:
    """Write the results of a pass as they come. On SIGINT/SIGTERM set the run's stop flag and
    keep writing for the grace period, as a local run lets its calls in flight finish: the
    actors start no new call, so their blocks end with what they answered (Ray Data hands a
    block's rows over only when it ends, and an actor whose output is not taken stalls). Then
    raise KeyboardInterrupt, which ends the run as interrupted; a second signal raises at once.

    The rows are read on a thread and the signals only noted here: a signal raised inside Ray's
    iterator would break it, or inside a result's write would lose it."""
    tables: queue.Queue[Any] = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for table in out.iter_batches(batch_format="pyarrow", batch_size=None):
                tables.put(table)
            tables.put(_END)
        except BaseException as exc:
            tables.put(exc)

    threading.Thread(target=pump, name="tierline-ray-results", daemon=True).start()
    signals: list[int] = []
    deadline: float | None = None
    with _noted(signals, stop):
        while deadline is None or time.monotonic() < deadline:
            if signals and deadline is None:
                state.stop.remote()
                grace = stop.grace_s if stop is not None else DEFAULT_GRACE_S
                deadline = time.monotonic() + grace
            try:
                item = tables.get(timeout=STOP_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            driver.batch(item)
    if signals:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _noted(signals: list[int], stop: Stop | None) -> Iterator[None]:
    """SIGINT and SIGTERM appended to `signals` (and requested of `stop`), not raised; a second
    one raises KeyboardInterrupt. Only the main thread can handle signals: elsewhere, as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, _frame: Any) -> None:
        if signals:
            raise KeyboardInterrupt
        signals.append(signum)
        if stop is not None:
            stop.request(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_END = object()  # the end of a pass's rows
