"""Inputs named by a URI (`s3://bucket/jobs/`, `gs://...`, `file:///data/jobs.jsonl`), for
`tierline run --engine ray` only.

Each file a URI names (one, or every file under a prefix, in name order, skipping names that
start with `_` or `.` as Ray Data does) is *streamed* into the driver through pyarrow's
filesystems (`FileSystem.from_uri`: s3, gs, hdfs, file, ...; the same ones Ray Data reads with),
a block at a time, and parsed by the same reader as a local file (tierline/jobs.py): the same
per-line validation, line numbers and duplicate ids, with the file's URI as each job's
`source`. A file is never held whole; the driver still holds the jobs it sends (engine.py).

A scheme pyarrow does not know (Ray's `local://`, fsspec's `http://`, `abfs://` on an older
pyarrow, ...) is left to Ray Data, which reads such a file whole into the driver (`_read`).

This module imports neither Ray nor pyarrow by itself: the CLI asks `is_uri` before it knows
whether Ray is installed.
"""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

from ..errors import UsageError

__all__ = ["check_uris", "filesystem", "is_uri", "needs_ray_data", "read_uris", "reason"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
STREAM_BUFFER = 1 << 20  # what the reader asks for at once (tierline/jobs.py's block)


def is_uri(path: str) -> bool:
    """An input with a scheme (s3://, gs://, abfs://, file://, local://, ...)."""
    return _SCHEME.match(path) is not None


def filesystem(uri: str, verb: str = "read") -> tuple[Any, str] | None:
    """pyarrow's filesystem for `uri` and the path in it; None for a scheme pyarrow does not
    know. A URI pyarrow knows but cannot use (a bad query, no credentials) is a usage error
    ("cannot {verb} URI: why")."""
    pafs: Any = importlib.import_module("pyarrow.fs")  # no type information
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except ValueError as exc:  # pyarrow.ArrowInvalid is one
        if "unrecognized filesystem" in str(exc).lower():
            return None
        raise UsageError(f"cannot {verb} {uri}: {reason(exc)}") from None
    except Exception as exc:  # an S3 region lookup without a network, ...
        raise UsageError(f"cannot {verb} {uri}: {reason(exc)}") from None
    return fs, str(path)


def needs_ray_data(path: str) -> bool:
    """A URI only Ray Data (fsspec) reads: the driver joins the cluster to read it."""
    return is_uri(path) and filesystem(path) is None


def check_uris(uris: Sequence[str]) -> None:
    """Each URI names a file or directory that its filesystem shows: a usage error (exit 2)
    otherwise, before the output or the ledger is touched. A scheme pyarrow does not know is
    left to Ray Data (read_uris)."""
    if not uris:
        return
    pafs: Any = importlib.import_module("pyarrow.fs")
    for uri in uris:
        found = filesystem(uri)
        if found is None:
            continue
        fs, path = found
        try:
            info = fs.get_file_info(path)
        except Exception as exc:  # no credentials, no network, denied, ...
            raise UsageError(f"cannot read {uri}: {reason(exc)}") from None
        if info.type == pafs.FileType.NotFound:
            raise UsageError(f"cannot read {uri}: no such file or directory")


def read_uris(ray: Any, inputs: Sequence[str]) -> tuple[list[str], Callable[[str], IO[bytes]]]:
    """The sources to read, in order (each URI expanded to its files, sorted), and an opener
    for `read_jobs` that streams the URIs' files and opens local paths as is. A URI that cannot
    be listed or read is a usage error (exit 2): the jobs are all read before any is sent.
    `ray` (joined) is needed only for a URI that `needs_ray_data`."""
    sources: list[str] = []
    streams: dict[str, tuple[Any, str]] = {}  # source -> (filesystem, path)
    contents: dict[str, bytes] = {}  # read whole by Ray Data
    for path in inputs:
        if not is_uri(path):
            sources.append(path)
            continue
        found = filesystem(path)
        if found is None:
            files = sorted(_read(ray, path).items())
            contents.update(files)
            names = [source for source, _ in files]
        else:
            listed = _list(*found, path)
            streams.update(listed)
            names = list(listed)
        if not names:
            raise UsageError(f"cannot read {path}: no file there")
        sources += names

    def opener(source: str) -> IO[bytes]:
        data = contents.pop(source, None)  # read once: the driver keeps no second copy
        if data is not None:
            return io.BytesIO(data)
        if source in streams:
            return _open(source, *streams[source])
        from ..jobs import open_input

        return open_input(source)

    return sources, opener


def reason(exc: BaseException) -> str:
    """The first line of an error's message (Arrow's and Ray's run on for many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _list(fs: Any, path: str, uri: str) -> dict[str, tuple[Any, str]]:
    """The files `uri` names, by their own URI (`scheme://path`, without the query), in name
    order: the file itself, or every file under the directory or prefix, recursively, but for
    names starting with `_` or `.` (Ray Data's rule: `_SUCCESS`, `.crc` files, ...)."""
    pafs: Any = importlib.import_module("pyarrow.fs")
    scheme = uri.split("://", 1)[0]
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return {f"{scheme}://{path}": (fs, path)}
        listed = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except Exception as exc:
        raise UsageError(f"cannot read {uri}: {reason(exc)}") from None
    base = path.rstrip("/")
    files = {}
    for entry in sorted(listed, key=lambda e: str(e.path)):
        relative = str(entry.path)[len(base) :].strip("/").split("/")
        if entry.type != pafs.FileType.File or any(p.startswith(("_", ".")) for p in relative):
            continue
        files[f"{scheme}://{entry.path}"] = (fs, str(entry.path))
    return files


class _Stream(io.RawIOBase):
    """A pyarrow input stream as a Python one: what cannot be read is a usage error naming the
    file (the jobs are read before any is sent, so nothing is paid)."""

    def __init__(self, source: str, native: Any) -> None:
        self.source = source
        self.native = native

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self.native.readinto(buffer))
        except Exception as exc:
            raise UsageError(f"cannot read {self.source}: {reason(exc)}") from None

    def close(self) -> None:
        if not self.closed:
            self.native.close()
        super().close()


def _open(source: str, fs: Any, path: str) -> IO[bytes]:
    """`path` as a byte stream, read as it is parsed (no decompression: as a local file)."""
    try:
        native = fs.open_input_stream(path, compression=None)
    except Exception as exc:
        raise UsageError(f"cannot read {source}: {reason(exc)}") from None
    return cast(IO[bytes], io.BufferedReader(_Stream(source, native), STREAM_BUFFER))


def _read(ray: Any, uri: str) -> dict[str, bytes]:
    """Each file under `uri` read whole through Ray Data, by its own URI (the scheme Ray Data
    strips, put back): for schemes pyarrow does not know."""
    scheme = uri.split("://", 1)[0]
    try:
        rows = ray.data.read_binary_files(uri, include_paths=True).take_all()
    except Exception as exc:
        raise UsageError(f"cannot read {uri}: {reason(exc)}") from None
    out: dict[str, bytes] = {}
    for row in rows:
        path = str(row["path"])
        out[path if is_uri(path) else f"{scheme}://{path}"] = bytes(row["bytes"])
    return out
