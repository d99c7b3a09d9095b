"""What every measurement is handed: how long to run and where to put its scratch files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    workdir: Path               # scratch space for this run, removed afterwards
    duration: float = 10.0      # seconds measured, per load test
    warmup: float = 3.0         # seconds driven before measuring
    concurrency: int = 50       # HTTP connections
    outbox_events: int = 20_000
    confirm_each_seconds: float = 15.0  # cap for the slow one-confirm-per-message baseline
