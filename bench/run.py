"""`make bench`: run every measurement, write bench/results.json, print the table.

A measurement is a function `measure(settings) -> list[Row]`; each row carries its own baseline
measured in the same call, so a new figure (the notifier's, next) is one more module and one
more entry in MEASUREMENTS.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import booking, relay
from bench.infra import wait_for_broker
from bench.report import Row, table, write_json
from bench.settings import Settings

Measurement = Callable[[Settings], list[Row]]

MEASUREMENTS: dict[str, Measurement] = {
    "booking": booking.measure,
    "relay": relay.measure,
}

RESULTS = Path(__file__).resolve().parent / "results.json"


def run(names: list[str], settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        wait_for_broker()
        started = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        rows.extend(MEASUREMENTS[name](settings))
        print(f"bench: {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr,
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("only", nargs="*", metavar="MEASUREMENT",
                        help=f"some of {', '.join(MEASUREMENTS)} (default: all)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load test")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--events", type=int, default=20_000, help="outbox rows to drain")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="results JSON (default: bench/results.json)")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement {', '.join(sorted(unknown))}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clinic-bench-") as workdir:
        settings = Settings(Path(workdir), duration=args.duration, warmup=args.warmup,
                            outbox_events=args.events)
        rows = run(args.only or list(MEASUREMENTS), settings)
    write_json(rows, args.output)
    print(table(rows))
    print(f"\n{args.output.name} written; {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
