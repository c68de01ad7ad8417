"""``python -m tests.fakes KIND [options]``: serve one fake until SIGINT/SIGTERM.

The first line on stdout is the base URL to give the SDK (for a benchmark spawning the fake on
another core); nothing is recorded unless ``--record`` is given.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from tests.fakes import FAKES

# Options that only some fakes take: option name -> kinds that accept it.
_ONLY = {
    "model": ("vllm", "llama-server", "llama-cpp-python"),
    "max_num_seqs": ("vllm",),
    "max_queued": ("vllm",),
    "n_parallel": ("llama-server",),
    "loading_seconds": ("llama-server",),
    "auto_advance": ("openai", "anthropic"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__)
    parser.add_argument("kind", choices=sorted(FAKES))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="fixed latency of each completion"
    )
    parser.add_argument(
        "--latency-per-token-ms",
        type=float,
        default=0.0,
        help="more latency per output token (a decoding server)",
    )
    parser.add_argument("--api-key", default=None, help="require this key")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of completions that fail"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault and batch RNGs")
    parser.add_argument(
        "--record", action="store_true", help="record requests (off: bounded memory)"
    )
    parser.add_argument("--model", default=None, help="served model name (vllm, llama)")
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, help="vllm: requests running at once"
    )
    parser.add_argument(
        "--max-queued", type=int, default=None, help="vllm: waiting requests before 503"
    )
    parser.add_argument("--n-parallel", type=int, default=None, help="llama-server: slots")
    parser.add_argument("--loading-seconds", type=float, default=None, help="llama-server: warm-up")
    parser.add_argument(
        "--auto-advance", action="store_true", default=None, help="batches step on retrieve"
    )
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Any:
    kwargs: dict[str, Any] = {
        "port": args.port,
        "latency_ms": args.latency_ms,
        "latency_per_token_ms": args.latency_per_token_ms,
        "api_key": args.api_key,
        "fault_rate": args.fault_rate,
        "seed": args.seed,
        "record": args.record,
    }
    for option, kinds in _ONLY.items():
        value = getattr(args, option)
        if value is not None and args.kind in kinds:
            kwargs[option] = value
    return FAKES[args.kind](**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = build(args).start()
    try:
        sys.stdout.write(server.base_url + "\n")
        sys.stdout.flush()
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
