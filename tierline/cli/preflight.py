"""Checks `run` makes before anything is dispatched (and so before anything is paid).

Every mistake a user can make with paths and streams is found here and reported as a one-line
usage error (exit 2): a closed stdin or stdout, an output that is a directory, a device, the
input, the ledger or the config, an output directory tierline cannot write, a ledger that is
not a SQLite file, a data directory (`TIERLINE_HOME`) that cannot be created. Found later, the
same mistakes cost a whole run of paid calls (an `-o` directory failed only at the final
rename) or destroyed data (`-o` the input replaced the jobs with results).

The output is resolved through symlinks once, here: the lock, the partial file and the final
rename all act on the real file, so a symlink can neither bypass another run's lock nor be
replaced by a regular file.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import CacheConfig, Config
from ..errors import UsageError

__all__ = [
    "answer_cache",
    "check_inputs",
    "check_ledger",
    "check_names",
    "check_sqlite",
    "check_stdio",
    "resolve_output",
]

SQLITE_MAGIC = b"SQLite format 3\x00"
# What tierline writes beside an output PATH (resume.py, dispatch/batch): none of them may be
# a file the run reads or keeps either.
OUTPUT_SIDE_FILES = ("", ".partial", ".partial.resume", ".lock", ".collect")
# Paths that name devices and open descriptors rather than files.
STREAM_DIRS = ("/dev/", "/proc/")
# What SQLite keeps beside a ledger.
LEDGER_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def check_stdio(inputs: Sequence[str], output: str | None) -> None:
    """A closed stdin (`<&-`) with `-` among the inputs, or a closed stdout (`>&-`) without -o."""
    if "-" in inputs and not _usable(sys.stdin, 0):
        raise UsageError(
            "standard input is closed, but '-' asks to read jobs from it; "
            "pipe jobs in or give a job file"
        )
    if output in (None, "-") and not _usable(sys.stdout, 1):
        raise UsageError("standard output is closed; give -o PATH to write the results to a file")


def check_names(names: Sequence[str | None], what: str) -> None:
    """A file name is bytes; results (`source`) and the ledger (`inputs`, `config_origin`)
    are UTF-8, so a name that is not (`j\\xff.jsonl`) would crash the run as a bug."""
    for name in names:
        if name is None:
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            raise UsageError(
                f"{what} {shown}: its name is not valid UTF-8; rename the file"
            ) from None


def check_inputs(inputs: Sequence[str]) -> None:
    """Every input file can be opened: a missing second file must not wait until the first
    file's jobs were all sent."""
    check_names(inputs, "input")
    for path in inputs:
        if path == "-":
            continue
        if os.path.isdir(path):
            raise UsageError(f"input {path} is a directory; give JSONL job files")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _usable(stream: object, fd: int) -> bool:
    # Python sets sys.stdin/sys.stdout to None when the descriptor was closed at start.
    if stream is None or getattr(stream, "closed", False):
        return False
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _protected(
    inputs: Sequence[str], ledger: Path | None, config: Path | None, cache: Path | None = None
) -> list[tuple[str, str]]:
    """(real path, what it is) of every file the run reads or keeps."""
    files = [(p, f"the input {p}") for p in inputs if p != "-"]
    if ledger is not None:
        files += [(f"{ledger}{side}", f"the ledger {ledger}") for side in LEDGER_SIDE_FILES]
    if cache is not None:
        files += [(f"{cache}{side}", f"the answer cache {cache}") for side in LEDGER_SIDE_FILES]
    if config is not None:
        files.append((str(config), f"the config {config}"))
    return [(os.path.realpath(p), what) for p, what in files]


def _same(a: str, b: str) -> bool:
    """One file: by name once symlinks are resolved, or by inode (a hard link)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def resolve_output(
    output: str | None,
    inputs: Sequence[str],
    ledger: Path | None,
    config: Path | None,
    cache: Path | None = None,
) -> str | None:
    """The real path results will be written to (None for stdout), or a UsageError.

    Devices (`/dev/null`, `/dev/stdout`), pipes and sockets are refused: `-o` writes a new
    file and renames it over PATH, which would replace the device node. Writing to one is what
    stdout is for: leave out -o and redirect (`> /dev/null`).
    """
    protected = _protected(inputs, ledger, config, cache)
    if output in (None, "-"):
        _check_stdout(protected)
        return None
    for side in OUTPUT_SIDE_FILES[1:]:
        if output.endswith(side) and len(output) > len(side):
            # a run on the shorter name keeps this file (its lock or its results so far):
            # the rename would replace it under that run
            base = output[: -len(side)]
            raise UsageError(
                f"-o {output}: tierline keeps this name for its own file beside -o {base}; "
                "write the results to another file"
            )
    if os.path.abspath(output).startswith(STREAM_DIRS):
        # /dev/stdout, /dev/fd/N, /proc/self/fd/N name whatever a descriptor is open on (a
        # pipe, a terminal, or a file the shell opened with `>>`): never a file to replace.
        raise UsageError(_not_a_file(output))
    real = os.path.realpath(output)
    try:
        st: os.stat_result | None = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UsageError(f"-o {output}: cannot use it: {exc.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(
            f"-o {output}: is a directory; give a file path, e.g. -o {output.rstrip('/')}/results.jsonl"
        )
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageError(_not_a_file(output))
    for side in OUTPUT_SIDE_FILES:
        for path, what in protected:
            if _same(real + side, path):
                name = f"{output}{side}" if side else output
                raise UsageError(f"-o {name} is {what}; write the results to another file")
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        raise UsageError(f"-o {output}: directory {os.path.dirname(output) or '.'} does not exist")
    return real


def _not_a_file(output: str) -> str:
    return (
        f"-o {output}: not a regular file (a device, pipe or stream); -o writes a new file and "
        "renames it over its target, so leave out -o: results then go to stdout, which you can "
        "redirect anywhere"
    )


def _check_stdout(protected: list[tuple[str, str]]) -> None:
    """`tierline run jobs.jsonl >> jobs.jsonl` would append results to the jobs it reads."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # captured by a test harness
        return
    if not stat.S_ISREG(st.st_mode):
        return
    for path, what in protected:
        try:
            if os.path.samestat(st, os.stat(path)):
                raise UsageError(f"standard output is {what}; redirect it to another file")
        except OSError:
            continue


def check_ledger(path: Path, origin: str) -> None:
    """The ledger can be opened and written: a directory, a device, another kind of file, or a
    directory tierline cannot create are usage errors naming `origin` (where the path came
    from), before anything is sent."""
    where = f"ledger {path} ({origin})"
    if path.is_dir():
        raise UsageError(f"{where} is a directory; give a file path, e.g. {path / 'ledger.db'}")
    if path.exists() and not path.is_file():
        raise UsageError(f"{where} is not a regular file; give a SQLite file path")
    fix = (
        "give --ledger a path in a writable directory"
        if origin == "--ledger"
        else "set TIERLINE_HOME to a writable directory or give --ledger PATH"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror
        raise UsageError(
            f"{where}: cannot create its directory {path.parent} ({why}); {fix}"
        ) from None
    check_sqlite(path, where)
    _check_writable(path, where, fix)


def check_sqlite(path: Path, where: str) -> Path:
    """An existing ledger is a SQLite file: `--ledger jobs.jsonl` is a typo, to be said so
    before SQLite fails on it ("file is not a database", an internal error)."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head != SQLITE_MAGIC:
            raise UsageError(
                f"{where} is not a SQLite database; give the ledger file tierline made, "
                "or a new path"
            )
    return path


def _check_writable(path: Path, where: str, fix: str) -> None:
    """Open the ledger the way a run does and take its write lock for a moment (a read-only
    file or directory fails here, not after the first paid call)."""
    try:
        conn = sqlite3.connect(str(path), timeout=30)
    except sqlite3.Error as exc:
        raise UsageError(f"{where}: cannot open it ({exc}); {fix}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise UsageError(f"{where}: cannot write it ({exc}); {fix}") from None
    finally:
        conn.close()


def answer_cache(config: Config, path: str | None, ledger: Path) -> Path | None:
    """The answer cache the run will use (None: off), opened once as the run opens it: a
    directory, a device or a file that is not SQLite is found here, before the output is
    locked and the run entered in the ledger. The ledger itself is refused before it is
    opened: the cache's table would land among the run's money records (and in what `ledger
    merge` copies), and clearing the cache would mean editing the ledger."""
    if path is None and config.cache is None:
        return None
    from ..dispatch.answers import AnswerCache, cache_path

    settings = config.cache or CacheConfig()
    where = cache_path(settings, path)
    if _same(os.path.realpath(where), os.path.realpath(ledger)):
        raise UsageError(f"--cache {where}: that is the ledger; give the answer cache its own file")
    AnswerCache.from_config(settings, path).close()
    return where
