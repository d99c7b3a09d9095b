"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections on one asyncio loop,
each sending its next request as soon as the previous answer is read.

Run as its own process (`python -m bench.loadgen ...`) so the server under test never shares an
interpreter, a GIL or a core's time slice accounting with it. Pure Python, so CI needs nothing
installed; on two cores it is cheap next to the servers it drives (a few tens of microseconds
of CPU per request).

Each request body is one line of the bodies file, used once in file order (`--cycle` starts
again at the top when they run out, for endpoints where repeats do not matter). Prints one JSON
object: requests and statuses seen in the measured window (after the warm-up), req/s,
latency percentiles in ms.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class Run:
    def __init__(self, args, bodies: list[bytes]):
        self.host, self.port = args.host, args.port
        head = (f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                "Content-Type: application/json\r\n")
        if args.token:
            head += f"Authorization: Bearer {args.token}\r\n"
        self._head = head.encode()
        self._bodies = itertools.cycle(bodies) if args.cycle else iter(bodies)
        self.expect = args.expect
        self.exhausted = False
        self.measure_from = self.measure_until = 0.0
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.unexpected: Counter[int] = Counter()
        self.samples: list[str] = []
        self.reconnects = 0

    def next_request(self) -> bytes | None:
        body = next(self._bodies, None)
        if body is None:
            self.exhausted = True
            return None
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def connection(self, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                request = self.next_request()
                if request is None:
                    return
                writer.write(request)
                try:
                    status, body, keep_alive = await _response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server closed an idle keep-alive connection: reopen and resend.
                    self.reconnects += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(request)
                    status, body, keep_alive = await _response(reader)
                finished = time.perf_counter()
                if status != self.expect:
                    self.unexpected[status] += 1
                    if len(self.samples) < 5:
                        self.samples.append(f"{status} {body[:300]!r}")
                if self.measure_from <= finished < self.measure_until:
                    self.latencies.append(finished - started)
                    self.statuses[status] += 1
                if not keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
        finally:
            writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep_alive = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by this load generator")
    body = await reader.readexactly(length) if length else b""
    return status, body, keep_alive


async def drive(run: Run, concurrency: int, warmup: float, duration: float) -> float:
    began = time.perf_counter()
    run.measure_from = began + warmup
    run.measure_until = run.measure_from + duration
    await asyncio.gather(*(run.connection(run.measure_until) for _ in range(concurrency)))
    # When the bodies ran out early, the window really ended when the last answer came.
    return min(time.perf_counter(), run.measure_until) - run.measure_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token", default=os.environ.get("BENCH_LOAD_TOKEN", ""),
                        help="Bearer token (default: $BENCH_LOAD_TOKEN, kept out of argv)")
    parser.add_argument("--bodies", type=Path, required=True, help="one request body per line")
    parser.add_argument("--cycle", action="store_true", help="reuse bodies when they run out")
    parser.add_argument("--expect", type=int, default=201)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--latencies", type=Path,
                        help="also write each measured latency (seconds), one per line, here")
    args = parser.parse_args(argv)
    bodies = [line for line in args.bodies.read_bytes().splitlines() if line.strip()]
    run = Run(args, bodies)
    seconds = asyncio.run(drive(run, args.concurrency, args.warmup, args.duration))
    latencies = sorted(run.latencies)
    count = len(latencies)
    if args.latencies:
        args.latencies.write_text("".join(f"{value!r}\n" for value in latencies))
    json.dump({
        "requests": count,
        "seconds": seconds,
        "rps": count / seconds if seconds > 0 else float("nan"),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "unexpected": {str(k): v for k, v in sorted(run.unexpected.items())},
        "samples": run.samples,
        "exhausted": run.exhausted,
        "reconnects": run.reconnects,
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
