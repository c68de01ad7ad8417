"""Results to a URI (`-o s3://bucket/results/`, `gs://...`, `file:///data/results/`), for
`tierline run --engine ray`: a directory of JSONL parts and a `_SUCCESS` marker.

The run's resumable state stays on the driver's disk, beside the ledger, as the Ray fragments
do (fragments.py): the results are journalled to a local *staging* file,
`.LEDGER.out-HASH.jsonl` (HASH: of the URI), by the ordinary journal (resume.py), so Ctrl-C, a
crash or a dead driver and the same command again resume exactly as with `-o PATH`. When the
run ends and the staging file is committed, `publish` streams it to the URI:

1. an old `_SUCCESS` is removed (downstream jobs no longer see a complete set);
2. `part-00000.jsonl`, `part-00001.jsonl`, ... are written, each at most `PART_LINES` lines
   and about `PART_BYTES` bytes (whichever comes first; a line is never split), concatenated
   in name order they are the one-file output's lines in its order;
3. the `part-*.jsonl` of an earlier run beyond the new count are removed;
4. `_SUCCESS` (empty) is written, last: the Spark/Hadoop convention for "the set is complete";
5. the staging file is removed.

Nothing else in the directory is touched. A crash or a failed upload between 1 and 5 leaves
the committed staging file: the same command again takes it back as its partial file (every
job kept, nothing sent again) and publishes it again (`reopen_unpublished`).

Memory stays flat: the staging file is read a block at a time and each part is streamed
(pyarrow's S3 output stream uploads a multipart object as it goes).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ExitCode, TierlineError, UsageError
from ..resume import RunLock
from .inputs import filesystem, is_uri, reason

__all__ = [
    "PART_BYTES",
    "PART_LINES",
    "SUCCESS",
    "PublishError",
    "UriOutput",
    "is_uri",
    "part_name",
]

PART_LINES = 100_000
PART_BYTES = 128 * 1024**2
SUCCESS = "_SUCCESS"
_PART = re.compile(r"^part-(\d{5,})\.jsonl$")
# Object stores have no directories to create: a key's prefix is its "directory"
_NO_DIRECTORIES = frozenset({"s3", "gcs"})


def part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


class PublishError(TierlineError):
    """The results could not be written to the URI (exit 74, as for -o PATH); they are kept
    in the staging file."""

    exit_code = ExitCode.OUTPUT_FAILED


class UriOutput:
    """`-o URI`: where the parts go, and the local staging file the run journals to."""

    def __init__(self, uri: str, ledger_path: Path) -> None:
        self.uri = uri
        found = filesystem(uri, "write")
        if found is None:
            raise UsageError(
                f"-o {uri}: tierline writes results through pyarrow's filesystems (s3://, "
                "gs://, hdfs://, file://, ...), which do not know this scheme"
            )
        self.fs, path = found
        self.path = path.rstrip("/") or path
        self.root = uri.split("?", 1)[0].rstrip("/")  # for messages: the URI without its query
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.staging = ledger_path.with_name(f".{ledger_path.name}.out-{digest}.jsonl")
        self.part_lines = PART_LINES
        self.part_bytes = PART_BYTES

    def refuse_inputs(self, inputs: Sequence[str]) -> None:
        """An input inside the output directory is a usage error (exit 2): publishing would
        replace or remove it (a part of an earlier output read as jobs), and the next run would
        read this run's parts as jobs."""
        local = self.fs.type_name == "local"
        base = os.path.realpath(self.path) if local else self.path
        for source in inputs:
            found = filesystem(source) if is_uri(source) else None
            if found is not None and found[0].type_name == self.fs.type_name:
                path = found[1]
            elif local and source != "-" and not is_uri(source):
                path = source
            else:
                continue
            path = os.path.realpath(path) if local else path.rstrip("/")
            if path == base or path.startswith(base.rstrip("/") + "/"):
                raise UsageError(
                    f"-o {self.root}: holds the input {source}; write the results elsewhere"
                )

    def check(self) -> None:
        """The URI can take the parts: a usage error (exit 2) before anything is paid
        otherwise. Creates the directory (on a filesystem that has them) and writes and
        removes a probe object (`_tierline-probe-HEX`, a name readers skip): a missing bucket,
        missing credentials, a denied write or an unreachable endpoint fail here."""
        pafs: Any = importlib.import_module("pyarrow.fs")
        where = f"-o {self.root}"
        try:
            info = self.fs.get_file_info(self.path)
        except Exception as exc:
            raise UsageError(f"{where}: cannot write there: {reason(exc)}") from None
        if info.type == pafs.FileType.File:
            raise UsageError(
                f"{where}: is a file; -o URI names a directory (prefix) for the result parts"
            )
        probe = f"{self.path}/_tierline-probe-{uuid.uuid4().hex[:12]}"
        try:
            self._make_directory()
            with self.fs.open_output_stream(probe):
                pass
            self.fs.delete_file(probe)
        except Exception as exc:
            raise UsageError(f"{where}: cannot write there: {reason(exc)}") from None

    def _make_directory(self) -> None:
        if self.fs.type_name not in _NO_DIRECTORIES:
            self.fs.create_dir(self.path, recursive=True)

    def reopen_unpublished(self) -> None:
        """A committed staging file is one whose parts were not all written (a crash, a failed
        upload): it becomes the partial file again, so the run keeps every result, sends
        nothing again, and publishes it. A partial file already there is newer: it stays."""
        partial = Path(f"{self.staging}.partial")
        with RunLock(str(self.staging)):  # not while another run publishes it (exit 5)
            if self.staging.exists() and not partial.exists():
                os.replace(self.staging, partial)

    def publish(self, staging: str) -> int:
        """Stream the committed staging file to the URI as parts, then `_SUCCESS`, then remove
        the staging file; return how many parts. PublishError when the URI fails: the staging
        file stays, and the same command again publishes it."""
        try:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f"{self.path}/{SUCCESS}")
            self._make_directory()
            count = self._write_parts(staging)
            self._remove_stale(count)
            with self.fs.open_output_stream(f"{self.path}/{SUCCESS}"):
                pass
        except Exception as exc:  # OSError from pyarrow, and whatever a filesystem raises
            raise PublishError(
                f"cannot write the results to {self.root}: {reason(exc)}; they are all saved in "
                f"{staging}: rerun the same command to write them (no job is sent again)"
            ) from None
        os.unlink(staging)
        return count

    def _write_parts(self, staging: str) -> int:
        """The staging file's lines as parts of at most `part_lines` lines and about
        `part_bytes` bytes; at least one part (empty for no results), as the one-file output
        is a file even when empty."""
        index, lines, size = 0, 0, 0
        out = self.fs.open_output_stream(f"{self.path}/{part_name(index)}")
        try:
            with open(staging, "rb") as fh:
                for line in fh:  # a line at a time: memory bounded by the longest line
                    if lines and (lines >= self.part_lines or size + len(line) > self.part_bytes):
                        out.close()
                        index, lines, size = index + 1, 0, 0
                        out = self.fs.open_output_stream(f"{self.path}/{part_name(index)}")
                    out.write(line)
                    lines, size = lines + 1, size + len(line)
        finally:
            out.close()
        return index + 1

    def _remove_stale(self, count: int) -> None:
        """The parts of an earlier, longer output beyond this one's `count`; nothing else."""
        pafs: Any = importlib.import_module("pyarrow.fs")
        listed = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        for entry in listed:
            match = _PART.match(entry.base_name)
            if match and entry.type == pafs.FileType.File and int(match.group(1)) >= count:
                self.fs.delete_file(entry.path)
