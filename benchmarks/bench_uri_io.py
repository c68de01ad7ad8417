"""Driver memory for inputs and results on object storage (`--engine ray`, s3://): the peak
resident memory a step adds, against the size of the file it moves.

    python benchmarks/bench_uri_io.py              # a 100 MB jobs file and a 100 MB results file
    python benchmarks/bench_uri_io.py --mb 300

A real S3 server (moto) runs in this process on 127.0.0.1; each step runs in a fresh child
process, which resets its peak RSS (`/proc/self/clear_refs`, Linux) after its imports and
set-up and reports how far above the resident memory of then the step took it (VmHWM - VmRSS):

* `read, streamed`: every job of an s3:// object parsed through `tierline.ray.inputs.read_uris`
  and `read_jobs` (the jobs are counted, not kept: the driver's own `rows` are not measured);
* `read, whole`: the same object read whole (`read()`), a lower bound of what the reader
  before streaming held (it read each file whole through Ray Data, plus Ray's copies);
* `publish`: a local staging file of results written to s3:// as parts
  (`tierline.ray.outputs.UriOutput.publish`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench-uri-io"

CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
step, path = sys.argv[2], sys.argv[3]
from tierline.jobs import read_jobs
from tierline.ray.inputs import filesystem, read_uris
from tierline.ray.outputs import UriOutput
uri = f"s3://{path}"
fs, key = filesystem(uri)
fs.get_file_info(key)  # the client is made and has talked to the server
def rss(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise LookupError(field)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak (VmHWM) starts again from what is resident now
before = rss("VmRSS")
def peak() -> float:
    return rss("VmHWM")
if step == "streamed":
    sources, opener = read_uris(None, [uri])
    count = sum(1 for _ in read_jobs(sources, opener))
elif step == "whole":
    with fs.open_input_stream(key, compression=None) as stream:
        data = stream.read()
    count = data.count(b"\n")
else:
    target = UriOutput(uri, Path(sys.argv[4]) / "l.db")
    count = target.publish(sys.argv[5])
print(json.dumps({"before": before, "after": peak(), "count": count}))
"""


def write_lines(path: Path, megabytes: int, results: bool) -> int:
    """A JSONL file of about `megabytes` MB: jobs, or result-like lines."""
    pad = "x" * 300
    lines = 0
    with path.open("w", encoding="utf-8") as fh:
        while fh.tell() < megabytes * 1_000_000:
            record = {"id": f"j{lines}", "prompt": f"Summarize ticket {lines}: {pad}"}
            if results:
                record = {"key": f"{lines:032x}", "status": "ok", "output": pad, **record}
            fh.write(json.dumps(record) + "\n")
            lines += 1
    return lines


def child(step: str, key: str, env: dict[str, str], *extra: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), step, key, *extra],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of each file (MB)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # tests/fakes
    from tests.fakes.s3 import client, s3_server

    with s3_server() as env:
        os.environ.update(env)  # signed requests here too (moto garbles unsigned multipart uploads)
        env = {**os.environ}
        s3 = client(env)
        s3.create_dir(BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            jobs = Path(tmp) / "jobs.jsonl"
            n = write_lines(jobs, args.mb, results=False)
            jobs_mib = jobs.stat().st_size / 2**20
            with s3.open_output_stream(f"{BUCKET}/in/jobs.jsonl") as out:
                out.write(jobs.read_bytes())
            staging = Path(tmp) / "staging.jsonl"
            write_lines(staging, args.mb, results=True)
            size = staging.stat().st_size / 2**20
            rows = [
                ("read, streamed", child("streamed", f"{BUCKET}/in/jobs.jsonl", env)),
                ("read, whole", child("whole", f"{BUCKET}/in/jobs.jsonl", env)),
                ("publish", child("publish", f"{BUCKET}/out", env, tmp, str(staging))),
            ]
    print(f"files: {jobs_mib:.0f} MiB of jobs ({n:,} lines), {size:.0f} MiB of results")
    for name, row in rows:
        added = row["after"] - row["before"]
        what = "parts" if name == "publish" else "lines"
        print(f"{name:15s} peak RSS +{added:7.1f} MiB  ({what} {int(row['count']):,})")


if __name__ == "__main__":
    main()
