"""A real S3 protocol server on 127.0.0.1 (moto's `ThreadedMotoServer`) for the object-storage
paths of `--engine ray` (tests/ray/test_uri_output.py, benchmarks/bench_uri_io.py).

`s3_server()` starts it on a free port and yields the environment that points pyarrow's S3
client at it, as `aws` would be (`AWS_ENDPOINT_URL`, dummy keys: moto garbles unsigned
multipart uploads, so requests are signed); `client(env)` is a pyarrow S3FileSystem on it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    finally:
        server.stop()


def client(env: dict[str, str]) -> Any:
    """pyarrow's S3 client on the server `env` names, allowed to make and drop buckets."""
    pafs: Any = importlib.import_module("pyarrow.fs")  # no type information

    return pafs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )
