"""`tierline classify` behind the command: read, tier a chunk at a time, write each job back
with its decision, in input order. No event loop, dispatch or ledger: a shell loop pays for
this command on every call (tests/test_cli.py keeps its imports small).

A chunk is `BATCH` non-blank lines, the chunk `tiering.pipeline.classify` tiers, so the
classifier sees the same batches (its float sums depend on a batch's size in their last bits).
A big input is tiered by worker processes, forked once, a chunk each at a time, while this
process reads ahead and writes the results back in input order (`_Pool`). Duplicate ids need
every earlier line, so workers only report their ids; a chunk with a duplicate is tiered again
here, with the duplicate taken out, as the one-process path would have (rare, and exact).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from ..config import Config, TieringConfig
from ..errors import ExitCode, TierlineError
from ..jobs import (
    IdSet,
    InvalidLine,
    Result,
    ResultWriter,
    duplicate,
    plain_prompt,
    raw_lines,
    read_item,
)
from ..tiering.pipeline import BATCH, Tierer, UserRule
from ..tiering.vote import TierVote

if TYPE_CHECKING:
    from io import BufferedReader, BufferedWriter
    from threading import Lock

    import numpy as np
    import numpy.typing as npt

__all__ = ["Chunk", "Classified", "WorkerLost", "classify_files", "tier_chunk"]

Line = tuple[str, int, bytes | None]  # source, line number, bytes (None: over MAX_LINE_BYTES)

# Below this many chunks (or bytes) read ahead, the input is tiered here, in one process: a
# shell loop calling `tierline classify` on a few jobs must not pay for forks and pipes.
PARALLEL_CHUNKS = 16
PARALLEL_BYTES = 32 * 2**20
MAX_WORKERS = 4
# Chunks and raw bytes in flight per worker: one being tiered, one waiting; the bytes bound
# keeps memory flat when prompts are huge.
IN_FLIGHT = 2
IN_FLIGHT_BYTES = 64 * 2**20
PIPE_BYTES = 2**20  # each worker pipe's buffer (_pipe)


@dataclass(frozen=True, slots=True)
class Classified:
    lines: int  # result lines written: one per input line that is not blank
    invalid: int  # of which not a valid job (each with its error)
    workers: int = 0  # worker processes that tiered it (0: this process alone)


@dataclass(slots=True)
class Chunk:
    """Up to `BATCH` non-blank lines, as plain lists (a worker is sent them pickled: lists of
    bytes and ints cost a fraction of a tuple per line)."""

    raws: list[bytes | None]  # each line's bytes (None: over MAX_LINE_BYTES)
    numbers: list[int]  # each line's number in its source
    sources: list[tuple[str, int]]  # (source, how many of the lines are its), in order
    size: int  # bytes

    def lines(self) -> Iterator[Line]:
        """(source, line number, bytes) of each line."""
        return zip(self.each_source(), self.numbers, self.raws, strict=True)

    def each_source(self) -> Iterator[str]:
        return chain.from_iterable(repeat(source, n) for source, n in self.sources)


class WorkerLost(TierlineError):
    """A worker process died (killed from outside: the OOM killer, a kill -9)."""

    exit_code = ExitCode.INTERNAL


def classify_files(
    inputs: Sequence[str],
    output: str | None,
    config: Config | TieringConfig,
    *,
    workers: int | None = None,
) -> Classified:
    """Tier every job of `inputs` into `output` (None: stdout), committed atomically, as
    `config` (or just its ``[tiering]``) says.

    ``workers``: processes to tier with (None: one per core, when the input is big enough to
    pay for them and forking is safe; 0: none).
    """
    tiering = config.tiering if isinstance(config, Config) else config
    writer = ResultWriter(output, flush_each=False)
    try:
        chunks = _chunks(raw_lines(inputs))
        head = _read_ahead(chunks)
        n = _workers(workers, tiering, small=_ended(head))
        rest = chain([chunk for chunk in head if chunk is not None], chunks)
        if n:
            invalid = _parallel(rest, tiering, writer, n)
        else:
            invalid = _serial(rest, Tierer.from_config(tiering), writer)
        writer.commit()
    finally:
        writer.close()
    return Classified(writer.count, invalid, n)


def tier_chunk(
    chunk: Chunk, tierer: Tierer, duplicate_at: Callable[[int, str], bool] | None
) -> _Done:
    """The result lines of one chunk, in order, as one string of JSON lines.

    ``duplicate_at(position, id)`` says whether a job is a duplicate (and records its id);
    None: nobody here can tell, so each job's id is returned for the caller to check.
    A line that is only a prompt (and an id) is tiered from its text, without a `Job`.
    """
    rules = tierer.text_rules
    if duplicate_at is None and rules == []:
        done = _plain_chunk(chunk, tierer)
        if done is not None:
            return done
    records: list[dict[str, Any] | None] = []  # None: the classifier's, filled in below
    pending: list[tuple[int, Mapping[str, Any]]] = []  # (its place, its line) for those
    texts: list[str] = []
    done = _Done()
    ids = done.ids
    for k, (source, number, raw) in enumerate(chunk.lines()):
        obj: Any = None
        plain = None
        if raw is not None and rules is not None:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None  # read_item says why, as read_jobs does
            plain = plain_prompt(obj, number, source)
        raw_obj: Mapping[str, Any]
        job = None
        if plain is not None:
            job_id, text = plain
            raw_obj = obj
        else:
            item = read_item(raw, number, source, obj)
            if isinstance(item, InvalidLine):
                records.append(Result.invalid(item).to_dict())
                done.invalid += 1
                if duplicate_at is None:
                    ids.append(None)
                continue
            job, job_id, text, raw_obj = item, item.id, item.text, item.raw
        if duplicate_at is None:
            ids.append(job_id)
        elif duplicate_at(k, job_id):
            records.append(Result.invalid(duplicate(job_id, number, source)).to_dict())
            done.invalid += 1
            continue
        if job is not None:
            vote = tierer.first_rule(job)
        else:
            vote = _text_vote(rules, text) if rules else None
        if vote is None:
            pending.append((len(records), raw_obj))
            texts.append(text)
            records.append(None)
        else:
            conf = round(vote.confidence, 3)
            records.append({**raw_obj, "tier": vote.tier, "why": vote.why, "confidence": conf})
    if texts:
        decided = zip(pending, *tierer.decide_texts(texts), strict=True)
        for (at, raw_obj), tier, why, conf in decided:  # conf: rounded by decide_texts
            records[at] = {**raw_obj, "tier": tier, "why": why, "confidence": conf}
    done.lines = len(records)
    done.data = b"".join([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records])
    return done


def _plain_chunk(chunk: Chunk, tierer: Tierer) -> _Done | None:
    """`tier_chunk` of a chunk of plain prompt lines only (most chunks of a big file), a step
    at a time over the whole chunk; None if any line is another kind."""
    if None in chunk.raws:  # a line over the limit
        return None
    # map() rather than comprehensions: no Python step of their own per line.
    try:
        objs = list(map(orjson.loads, cast(list[bytes], chunk.raws)))
    except orjson.JSONDecodeError:
        return None
    plain = list(map(plain_prompt, objs, chunk.numbers, chunk.each_source()))
    if None in plain:
        return None
    ids, texts = zip(*cast(list[tuple[str, str]], plain), strict=True)
    tiers, whys, confidences = tierer.decide_texts(texts)
    # Each line's own dict takes the decision (its keys are only "id" and "prompt": the same
    # record, key for key, as `{**obj, "tier": ...}`, without building a second dict).
    for obj, tier, why, conf in zip(objs, tiers, whys, confidences, strict=True):
        obj["tier"], obj["why"], obj["confidence"] = tier, why, conf  # rounded by decide_texts
    data = b"\n".join([*map(orjson.dumps, objs), b""])  # each record and its newline
    return _Done(data, len(objs), 0, list(ids))


@dataclass(slots=True)
class _Done:
    """What one chunk became."""

    data: bytes = b""  # its result lines
    lines: int = 0
    invalid: int = 0
    ids: list[str | None] = field(default_factory=list)  # each line's job id (None: invalid)


def _text_vote(rules: Sequence[UserRule] | None, text: str) -> TierVote | None:
    assert rules is not None  # a line is taken as plain only when its text is all rules read
    for rule in rules:
        vote = rule.on_text(text)
        if vote is not None:
            return vote
    return None


def _chunks(blocks: Iterable[tuple[str, Sequence[int], list[bytes | None]]]) -> Iterator[Chunk]:
    """The lines of `jobs.raw_lines`' blocks again, `BATCH` at a time."""
    chunk = Chunk([], [], [], 0)
    for source, numbers, raws in blocks:
        start = 0
        while start < len(raws):
            end = start + min(BATCH - len(chunk.raws), len(raws) - start)
            _extend(chunk, source, numbers[start:end], raws[start:end])
            start = end
            if len(chunk.raws) == BATCH:
                yield chunk
                chunk = Chunk([], [], [], 0)
    if chunk.raws:
        yield chunk


def _extend(chunk: Chunk, source: str, numbers: Sequence[int], raws: list[bytes | None]) -> None:
    chunk.raws += raws
    chunk.numbers += numbers
    if chunk.sources and chunk.sources[-1][0] == source:
        chunk.sources[-1] = (source, chunk.sources[-1][1] + len(raws))
    else:
        chunk.sources.append((source, len(raws)))
    if None in raws:
        chunk.size += sum(len(raw) for raw in raws if raw is not None)
    else:
        chunk.size += sum(map(len, cast(list[bytes], raws)))


def _read_ahead(chunks: Iterator[Chunk]) -> list[Chunk | None]:
    """The first chunks, until there are enough (or enough bytes) to be worth the workers."""
    head: list[Chunk | None] = []
    size = 0
    while len(head) < PARALLEL_CHUNKS and size < PARALLEL_BYTES:
        chunk = next(chunks, None)
        head.append(chunk)  # None: the end, which marks that the whole input is here
        if chunk is None:
            break
        size += chunk.size
    return head


def _ended(head: list[Chunk | None]) -> bool:
    return bool(head) and head[-1] is None


def _workers(asked: int | None, config: TieringConfig, *, small: bool) -> int:
    """How many worker processes to tier with (0: tier here)."""
    if asked is not None:
        return asked
    if small or config.judge.enabled:  # the judge holds a llama.cpp model: one per process
        return 0
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return 0  # fork is the only start method that costs no re-import; elsewhere unsafe
    import threading

    if threading.active_count() > 1:  # a caller's threads: forking them is not safe
        return 0
    cores = len(os.sched_getaffinity(0))
    return min(cores, MAX_WORKERS) if cores > 1 else 0


def _serial(chunks: Iterable[Chunk], tierer: Tierer, writer: ResultWriter) -> int:
    done = ((chunk, tier_chunk(chunk, tierer, None)) for chunk in chunks)
    return _write(done, tierer, writer, IdSet())


def _parallel(chunks: Iterator[Chunk], config: TieringConfig, writer: ResultWriter, n: int) -> int:
    # Loaded once, before the fork: the workers share its pages instead of each loading it.
    tierer = Tierer.from_config(config)
    with _Pool(n, tierer) as pool:
        return _write(pool.map(chunks), tierer, writer, _SeenIds())


def _write(
    chunks: Iterable[tuple[Chunk, _Done]], tierer: Tierer, writer: ResultWriter, seen: _Seen
) -> int:
    """Write the tiered chunks in order, after the duplicate-id check only this process can
    make (it sees every line); the invalid lines written."""
    invalid = 0
    for chunk, done in chunks:
        dups = set(seen.seen_before(done.ids))
        if dups:  # tier it again as one process would: the duplicates are not jobs
            done = tier_chunk(chunk, tierer, _positions(dups))
        writer.write_lines(done.data, done.lines)
        invalid += done.invalid
    return invalid


class _Seen(Protocol):
    def seen_before(self, ids: Sequence[str | None]) -> list[int]: ...


class _SeenIds:
    """`jobs.IdSet` for the chunks of a big input: the same 64-bit hash of each id (8 bytes
    an id here, 16 there), looked up and recorded a chunk at a time with numpy instead of a
    Python step per id, in the process that also reads and writes for the workers.

    The hashes are kept in sorted runs, each more than twice the size of the next newer one,
    merged as they fill up: a chunk looks in about log2(ids / BATCH) runs, and a hash is
    merged about as many times over the whole input.
    """

    def __init__(self) -> None:
        self._runs: list[npt.NDArray[np.uint64]] = []

    def seen_before(self, ids: Sequence[str | None]) -> list[int]:
        """Record every id (None: no id, skipped); the positions of those already there."""
        import numpy as np

        positions = np.arange(len(ids))
        if None in ids:
            positions = positions[[job_id is not None for job_id in ids]]
            ids = [job_id for job_id in ids if job_id is not None]
        hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)).view(np.uint64)
        order = np.argsort(hashes, kind="stable")  # equal hashes stay in input order
        hashes, positions = hashes[order], positions[order]
        again = np.zeros(len(hashes), dtype=bool)
        np.equal(hashes[1:], hashes[:-1], out=again[1:])  # seen earlier in this chunk
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            again |= np.take(run, at) == hashes
        self._add(hashes[~again])
        found: list[int] = np.sort(positions[again]).tolist()
        return found

    def _add(self, new: npt.NDArray[np.uint64]) -> None:
        """Record sorted hashes none of the runs has."""
        import numpy as np

        if not len(new):
            return
        runs = self._runs
        runs.append(new)
        while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
            newer = runs.pop()
            runs[-1] = np.concatenate([runs[-1], newer])
            runs[-1].sort(kind="stable")  # two sorted runs: a merge


def _positions(dups: set[int]) -> Callable[[int, str], bool]:
    def duplicate_at(position: int, _: str) -> bool:
        return position in dups

    return duplicate_at


def _lock() -> Lock:
    import threading

    return threading.Lock()


class _Pool:
    """Worker processes, forked once, each tiering the chunks it is sent, in order.

    A feeder thread sends chunks round-robin while the caller receives the results in the
    same order; at most `IN_FLIGHT` chunks per worker (and `IN_FLIGHT_BYTES`) are out at once.
    Workers ignore SIGINT (Ctrl-C reaches the whole process group; this process decides) and
    leave when their pipe closes, so an exiting parent never leaves one behind. A worker that
    dies is noticed as the end of its pipe and raises `WorkerLost`.
    """

    def __init__(self, n: int, tierer: Tierer) -> None:
        import threading

        self._workers: list[_Worker] = []
        self._window = threading.Condition()
        self._count = 0
        self._bytes = 0
        self._stop = False
        sys.stdout.flush()  # a child must not inherit unwritten output (it never flushes it)
        sys.stderr.flush()
        for _ in range(n):
            self._workers.append(_Worker.fork(tierer, self._workers))

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self.close(kill=kind is not None)

    def map(self, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, _Done]]:
        """(chunk, what it became) for every chunk, in order."""
        import pickle
        import queue
        import threading

        order: queue.SimpleQueue[tuple[_Worker, Chunk] | BaseException | None]
        order = queue.SimpleQueue()
        feeder = threading.Thread(target=self._feed, args=(chunks, order), daemon=True)
        feeder.start()
        while (got := order.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            worker, chunk = got
            status, value = pickle.loads(worker.receive())
            if status != "ok":
                raise value
            with self._window:
                self._count -= 1
                self._bytes -= chunk.size
                self._window.notify()
            yield chunk, value

    def _feed(self, chunks: Iterator[Chunk], order: Any) -> None:
        import pickle

        try:
            for i, chunk in enumerate(chunks):
                size = chunk.size
                with self._window:
                    while not self._stop and not self._room(size):
                        self._window.wait()
                    if self._stop:
                        return
                    self._count += 1
                    self._bytes += size
                worker = self._workers[i % len(self._workers)]
                worker.send(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
                order.put((worker, chunk))
        except BaseException as exc:  # the input's error (or a lost worker), raised in order
            order.put(exc)
            return
        order.put(None)

    def _room(self, size: int) -> bool:
        if self._count == 0:
            return True
        full = self._count >= IN_FLIGHT * len(self._workers)
        return not full and self._bytes + size <= IN_FLIGHT_BYTES

    def close(self, *, kill: bool) -> None:
        """Stop the workers (at once when `kill`: an error or an interrupt) and reap them."""
        with self._window:
            self._stop = True
            self._window.notify_all()
        for worker in self._workers:
            worker.stop(kill=kill)


@dataclass(slots=True)
class _Worker:
    pid: int  # 0 once reaped
    to: BufferedWriter
    back: BufferedReader
    how: str = "it closed its pipe"  # how it ended, once reaped
    # Both the feeder (a failed send) and the reader (an end of pipe) may find it dead.
    reaping: Lock = field(default_factory=_lock)

    @classmethod
    def fork(cls, tierer: Tierer, others: Sequence[_Worker]) -> _Worker:
        import warnings

        down_r, down_w = _pipe()
        up_r, up_w = _pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns when a process with threads forks; the only ones here are
            # numpy's BLAS threads, which OpenBLAS stops and restarts around a fork itself.
            warnings.filterwarnings("ignore", ".*fork.*", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                os.close(down_w)
                os.close(up_r)
                for other in others:  # their ends stay only in the parent: EOF stays EOF
                    os.close(other.to.fileno())
                    os.close(other.back.fileno())
                code = _serve(down_r, up_w, tierer)
            finally:
                os._exit(code)  # no atexit, no flush of the parent's buffers
        os.close(down_r)
        os.close(up_w)
        return cls(pid, open(down_w, "wb"), open(up_r, "rb"))

    def send(self, data: bytes) -> None:
        try:
            _write_frame(self.to, data)
        except OSError:
            raise self.lost() from None

    def receive(self) -> bytes:
        data = _read_frame(self.back)
        if data is None:
            raise self.lost()
        return data

    def lost(self) -> WorkerLost:
        self._reap(timeout=5)  # its pipe is closed: it is exiting, if not yet gone
        return WorkerLost(
            f"a classify worker process died ({self.how}); the output was not committed"
        )

    def _reap(self, timeout: float | None) -> None:
        """Wait for it to end (None: however long) and say how it did."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        with self.reaping:
            while self.pid:
                try:
                    pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
                except ChildProcessError:  # not ours to wait for any more
                    self.pid = 0
                    return
                if pid:
                    self.pid = 0
                    if os.WIFSIGNALED(status):
                        self.how = f"killed by signal {os.WTERMSIG(status)}"
                    else:
                        self.how = f"it exited with status {os.WEXITSTATUS(status)}"
                    return
                if deadline is not None and time.monotonic() > deadline:
                    return
                time.sleep(0.01)

    def stop(self, *, kill: bool) -> None:
        import signal

        if kill and self.pid:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for stream in (self.to, self.back):
            with suppress(OSError):  # a dead worker's pipe: nothing left to flush to
                stream.close()
        self._reap(timeout=None)  # bounded: killed, or without its pipe, a worker ends at once


def _serve(down: int, up: int, tierer: Tierer) -> int:
    """A worker's loop: tier each chunk it receives and send back what it became."""
    import pickle
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(down, "rb") as inbox, open(up, "wb") as outbox:
        while (data := _read_frame(inbox)) is not None:
            reply: tuple[str, Any]
            try:
                reply = ("ok", tier_chunk(pickle.loads(data), tierer, None))
            except Exception as exc:  # sent back and raised there, as one process raises it
                reply = ("error", exc)
            try:
                message = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # an exception that does not pickle: its text does
                message = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
            try:
                _write_frame(outbox, message)
            except OSError:  # the parent is gone
                return 0
    return 0


def _pipe() -> tuple[int, int]:
    """A pipe that holds a whole chunk (or a chunk's results): with the default 64 KiB, a
    writer waits for its reader at every frame, so a worker would wait for this process to
    take its results before starting its next chunk, and the feeder for one worker to finish
    before it can feed the other. Bounded: at most 1 MiB each (the default cap for a user)."""
    import fcntl

    read, write = os.pipe()
    with suppress(OSError):  # over the system's cap: the default size still works
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return read, write


def _write_frame(stream: BufferedWriter, data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def _read_frame(stream: BufferedReader) -> bytes | None:
    """One message, or None at the end of the pipe (the other side closed it or died)."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    size = int.from_bytes(head, "little")
    data = stream.read(size)
    return data if len(data) == size else None
