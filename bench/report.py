"""Rows of results: a figure, its in-run baseline, their ratio, and the goal it is held to.

Kept free of I/O and timing so the formatting and the goal arithmetic can be unit-tested.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Goal:
    """What a row must reach: on its ratio to the baseline (`ratio`) or on its own value
    (`value`), at least (`>=`) or below (`<`) a threshold."""

    on: str          # "ratio" or "value"
    comparison: str  # ">=" or "<"
    threshold: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.on not in ("ratio", "value") or self.comparison not in (">=", "<"):
            raise ValueError(f"unsupported goal {self.on} {self.comparison}")

    def met(self, value: float, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None or math.isnan(subject):
            return None
        return subject >= self.threshold if self.comparison == ">=" else subject < self.threshold

    def __str__(self) -> str:
        symbol = "≥" if self.comparison == ">=" else "<"
        unit = f" {self.unit}" if self.unit else ""
        prefix = "ratio " if self.on == "ratio" else ""
        return f"{prefix}{symbol} {self.threshold:g}{unit}"


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    unit: str
    baseline: float | None
    goal: Goal | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline)

    @property
    def met(self) -> bool | None:
        return self.goal.met(self.value, self.ratio) if self.goal else None


def ratio(value: float, baseline: float | None) -> float | None:
    """value / baseline, or None when there is no usable baseline (absent, zero, NaN)."""
    if baseline is None or baseline == 0 or math.isnan(baseline) or math.isnan(value):
        return None
    return value / baseline


def _number(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _rounded(x: float | None) -> float | None:
    if x is None:
        return None
    return round(x, 3) if abs(x) < 100 else round(x, 1)


def as_json(rows: list[Row]) -> dict:
    result = {}
    for row in rows:
        if row.name in result:
            raise ValueError(f"two rows named {row.name}")
        entry = {"value": _rounded(row.value), "unit": row.unit,
                 "baseline": _rounded(row.baseline), "ratio": _rounded(row.ratio)}
        if row.goal is not None:
            entry["goal"] = str(row.goal)
            entry["met"] = row.met
        if row.note:
            entry["note"] = row.note
        result[row.name] = entry
    return result


def write_json(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps(as_json(rows), indent=2, ensure_ascii=False) + "\n")


HEADERS = ("name", "value", "unit", "baseline", "ratio", "goal")


def table(rows: list[Row]) -> str:
    """A fixed-width text table, also valid Markdown, for the terminal and the README."""
    cells = [HEADERS]
    for row in rows:
        verdict = "" if row.met is None else (" ✓" if row.met else " ✗ missed")
        goal = f"{row.goal}{verdict}" if row.goal else "-"
        cells.append((row.name, _number(row.value), row.unit, _number(row.baseline),
                      _number(row.ratio), goal))
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    numeric = {1, 3, 4}

    def line(values) -> str:
        padded = [v.rjust(w) if i in numeric else v.ljust(w)
                  for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])
