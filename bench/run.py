"""`make bench`: run every measurement, write bench/results.json, print the table.

A measurement is a function `measure(settings) -> list[Row]`; each row carries its own baseline
measured in the same call, so a new figure (the notifier's, next) is one more module and one
more entry in MEASUREMENTS.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    booking,
    notify_dispatch,
    notify_e2e,
    notify_ingest,
    notify_schedule,
    relay,
)
from bench.infra import broker_went_away, wait_for_broker
from bench.report import Row, table, write_json
from bench.settings import Settings

Measurement = Callable[[Settings], list[Row]]

MEASUREMENTS: dict[str, Measurement] = {
    "booking": booking.measure,
    "relay": relay.measure,
    "notify_schedule": notify_schedule.measure,
    "notify_e2e": notify_e2e.measure,
    "notify_ingest": notify_ingest.measure,
    "notify_dispatch": notify_dispatch.measure,
}

RESULTS = Path(__file__).resolve().parent / "results.json"


def _load() -> str:
    """Other work on the machine moves the figures; the ratios are what to compare."""
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _with_retries(name: str, settings: Settings, attempts: int = 3) -> list[Row]:
    """RabbitMQ is sometimes stopped on purpose by other suites on a shared machine: a
    measurement cut short by a lost broker is run again once the broker is back."""
    for attempt in range(1, attempts + 1):
        try:
            return MEASUREMENTS[name](settings)
        except Exception as error:
            if attempt == attempts or not broker_went_away(error):
                raise
            print(f"bench: {name}: broker connection lost ({type(error).__name__}); waiting "
                  "for RabbitMQ, then measuring again", file=sys.stderr, flush=True)
            wait_for_broker()
    raise AssertionError("unreachable")


def run(names: list[str], settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        wait_for_broker()
        started = time.monotonic()
        print(f"bench: {name} ... (load average {_load()})", file=sys.stderr, flush=True)
        rows.extend(_with_retries(name, settings))
        print(f"bench: {name} done in {time.monotonic() - started:.0f} s "
              f"(load average {_load()})", file=sys.stderr, flush=True)
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
