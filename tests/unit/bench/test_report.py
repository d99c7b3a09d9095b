"""bench/report.py: the ratio, the goals and the two outputs (no timings here, ever)."""
from __future__ import annotations

import json
import math

import pytest

from bench.report import Goal, Row, as_json, ratio, table, write_json


def test_ratio_is_value_over_baseline():
    assert ratio(300.0, 1200.0) == pytest.approx(0.25)


@pytest.mark.parametrize("baseline", [None, 0, 0.0, math.nan])
def test_no_ratio_without_a_usable_baseline(baseline):
    assert ratio(10.0, baseline) is None


def test_a_ratio_goal_is_judged_on_the_ratio():
    goal = Goal("ratio", ">=", 0.25)
    assert Row("rps", 300.0, "req/s", 1200.0, goal).met is True
    assert Row("rps", 299.0, "req/s", 1200.0, goal).met is False
    assert Row("rps", 299.0, "req/s", None, goal).met is None


def test_a_value_goal_ignores_the_baseline():
    goal = Goal("value", "<", 100, "ms")
    assert Row("p99", 99.9, "ms", 5.0, goal).met is True
    assert Row("p99", 100.0, "ms", 500.0, goal).met is False
    assert str(goal) == "< 100 ms"
    assert str(Goal("ratio", ">=", 0.5)) == "ratio ≥ 0.5"


def test_an_unknown_goal_is_refused():
    with pytest.raises(ValueError):
        Goal("ratio", "<=", 1)


def test_json_has_value_unit_baseline_ratio_per_name(tmp_path):
    rows = [Row("relay", 9242.4567, "events/s", 952.0, Goal("ratio", ">=", 5), note="n"),
            Row("plain", 1.5, "s", None)]
    path = tmp_path / "results.json"
    write_json(rows, path)
    assert json.loads(path.read_text()) == as_json(rows) == {
        "relay": {"value": 9242.5, "unit": "events/s", "baseline": 952.0,
                  "ratio": pytest.approx(9.708, abs=1e-3), "goal": "ratio ≥ 5", "met": True,
                  "note": "n"},
        "plain": {"value": 1.5, "unit": "s", "baseline": None, "ratio": None},
    }


def test_two_rows_with_one_name_are_refused():
    with pytest.raises(ValueError):
        as_json([Row("a", 1, "s", 1), Row("a", 2, "s", 1)])


def test_table_lines_up_and_marks_missed_goals():
    rows = [Row("booking_create_rps", 190.2, "req/s", 2975.0, Goal("ratio", ">=", 0.25)),
            Row("booking_create_p99", 42.0, "ms", 69.7, Goal("value", "<", 100, "ms")),
            Row("no_goal", 0.5, "s", None)]
    lines = table(rows).splitlines()
    assert lines[0].split("|")[1:-1] == [
        " name               ", " value ", " unit  ", " baseline ", " ratio ",
        " goal                  "]
    assert len({len(line) for line in lines}) == 1  # every line the same width
    assert "|   190 | req/s |    2,975 |  0.06 | ratio ≥ 0.25 ✗ missed |" in lines[2]
    assert "|  42.0 | ms    |     69.7 |  0.60 | < 100 ms ✓" in lines[3]
    assert lines[4].split("|")[4:6] == ["        - ", "     - "]
