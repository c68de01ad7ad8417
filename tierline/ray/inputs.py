"""Inputs named by a URI (`s3://bucket/jobs/`, `gs://...`, `file:///data/jobs.jsonl`): read
through Ray Data, which knows the object stores, for `tierline run --engine ray` only.

Each file a URI names (one, or every file under a prefix) is read whole into the driver and
parsed by the same reader as a local file (tierline/jobs.py): the same per-line validation,
line numbers and duplicate ids, with the file's URI as each job's `source`. The driver holds
the jobs it sends in memory anyway (engine.py). This module imports no Ray by itself: the CLI
asks `is_uri` before it knows whether Ray is installed.
"""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Callable, Sequence
from typing import IO, Any

from ..errors import UsageError

__all__ = ["check_uris", "is_uri", "read_uris"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """An input with a scheme (s3://, gs://, abfs://, file://, local://, ...)."""
    return _SCHEME.match(path) is not None


def check_uris(uris: Sequence[str]) -> None:
    """Each URI names a file or directory that its filesystem shows: a usage error (exit 2)
    otherwise, before the output or the ledger is touched. Through pyarrow (which Ray Data
    reads with); a scheme pyarrow does not know (Ray's local://) is left to Ray Data."""
    if not uris:
        return
    pafs: Any = importlib.import_module("pyarrow.fs")  # no type information
    for uri in uris:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            info = fs.get_file_info(path)
        except ValueError as exc:  # pyarrow.ArrowInvalid is one
            if "unrecognized filesystem" in str(exc).lower():  # Ray Data's to judge (fsspec)
                continue
            raise UsageError(f"cannot read {uri}: {_reason(exc)}") from None
        except Exception as exc:  # no credentials, no network, denied, ...
            raise UsageError(f"cannot read {uri}: {_reason(exc)}") from None
        if info.type == pafs.FileType.NotFound:
            raise UsageError(f"cannot read {uri}: no such file or directory")


def read_uris(ray: Any, inputs: Sequence[str]) -> tuple[list[str], Callable[[str], IO[bytes]]]:
    """The sources to read, in order (each URI expanded to its files, sorted), and an opener
    for `read_jobs` that serves the URIs' files from what Ray Data read and local paths as is.
    A URI that Ray Data cannot read is a usage error (exit 2), before anything is sent."""
    sources: list[str] = []
    contents: dict[str, bytes] = {}
    for path in inputs:
        if not is_uri(path):
            sources.append(path)
            continue
        files = sorted(_read(ray, path).items())
        if not files:
            raise UsageError(f"cannot read {path}: no file there")
        for source, data in files:
            sources.append(source)
            contents[source] = data

    def opener(source: str) -> IO[bytes]:
        data = contents.pop(source, None)  # read once: the driver keeps no second copy
        if data is not None:
            return io.BytesIO(data)
        from ..jobs import open_input

        return open_input(source)

    return sources, opener


def _reason(exc: BaseException) -> str:
    """The first line of an error's message (Arrow's and Ray's run on for many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(ray: Any, uri: str) -> dict[str, bytes]:
    """Each file under `uri`, by its own URI (the scheme Ray Data strips, put back)."""
    scheme = uri.split("://", 1)[0]
    try:
        rows = ray.data.read_binary_files(uri, include_paths=True).take_all()
    except Exception as exc:
        raise UsageError(f"cannot read {uri}: {_reason(exc)}") from None
    out: dict[str, bytes] = {}
    for row in rows:
        path = str(row["path"])
        out[path if is_uri(path) else f"{scheme}://{path}"] = bytes(row["bytes"])
    return out
