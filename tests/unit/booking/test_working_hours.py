import uuid
from datetime import time

import pytest

from services.booking.model import Clinician, WorkingHours, parse_working_hours
from shared.errors import Invalid


def test_working_hours_are_read_and_ordered():
    hours = parse_working_hours([
        {"weekday": 5, "start": "09:00", "end": "13:00"},
        {"weekday": 0, "start": "14:00", "end": "17:00"},
        {"weekday": 0, "start": "09:00", "end": "13:00"},
    ])
    assert hours == [
        WorkingHours(0, time(9), time(13)),
        WorkingHours(0, time(14), time(17)),
        WorkingHours(5, time(9), time(13)),
    ]


def test_no_working_hours_is_allowed():
    assert parse_working_hours([]) == []


def test_touching_blocks_are_not_an_overlap():
    assert len(parse_working_hours([
        {"weekday": 1, "start": "09:00", "end": "12:00"},
        {"weekday": 1, "start": "12:00", "end": "17:00"},
    ])) == 2


def test_the_same_hours_on_different_days_do_not_overlap():
    assert len(parse_working_hours([
        {"weekday": 1, "start": "09:00", "end": "12:00"},
        {"weekday": 2, "start": "09:00", "end": "12:00"},
    ])) == 2


def test_overlapping_blocks_on_one_day_are_refused():
    with pytest.raises(Invalid) as refused:
        parse_working_hours([
            {"weekday": 2, "start": "09:00", "end": "13:00"},
            {"weekday": 2, "start": "12:00", "end": "17:00"},
        ])
    assert refused.value.fields == {
        "working_hours": ["Wednesday 09:00-13:00 overlaps Wednesday 12:00-17:00"]}


@pytest.mark.parametrize(("item", "problem"), [
    ({"weekday": 7, "start": "09:00", "end": "17:00"}, "weekday"),
    ({"weekday": -1, "start": "09:00", "end": "17:00"}, "weekday"),
    ({"weekday": "0", "start": "09:00", "end": "17:00"}, "weekday"),
    ({"weekday": True, "start": "09:00", "end": "17:00"}, "weekday"),
    ({"weekday": 0, "start": "17:00", "end": "09:00"}, "not before"),
    ({"weekday": 0, "start": "09:00", "end": "09:00"}, "not before"),
    ({"weekday": 0, "start": "9am", "end": "17:00"}, "like 09:00"),
    ({"weekday": 0, "start": "24:00", "end": "17:00"}, "like 09:00"),
    ({"weekday": 0, "start": "09:00", "end": 1700}, "like 09:00"),
    ({"weekday": 0, "start": "09:00"}, "missing end"),
    ("Monday 9-5", "object"),
])
def test_bad_entries_are_refused_under_working_hours(item, problem):
    with pytest.raises(Invalid) as refused:
        parse_working_hours([item])
    [message] = refused.value.fields["working_hours"]
    assert message.startswith("entry 1: ")
    assert problem in message


def test_every_bad_entry_is_reported_at_once():
    with pytest.raises(Invalid) as refused:
        parse_working_hours([
            {"weekday": 0, "start": "09:00", "end": "17:00"},
            {"weekday": 9, "start": "09:00", "end": "17:00"},
            {"weekday": 0, "start": "18:00", "end": "08:00"},
        ])
    problems = refused.value.fields["working_hours"]
    assert [p.split(":")[0] for p in problems] == ["entry 2", "entry 3"]


def test_working_hours_must_be_a_list():
    with pytest.raises(Invalid) as refused:
        parse_working_hours({"weekday": 0})
    assert "working_hours" in refused.value.fields


@pytest.mark.parametrize(("weekday", "start", "end"), [
    (7, time(9), time(17)), (0, time(17), time(9)), (0, time(9), time(9)),
])
def test_working_hours_refuse_impossible_blocks(weekday, start, end):
    with pytest.raises(ValueError):
        WorkingHours(weekday, start, end)


def test_touching_blocks_are_one_stretch_of_work():
    clinician = Clinician(uuid.uuid4(), "Tom Whitfield", [
        WorkingHours(0, time(12), time(17)),
        WorkingHours(0, time(9), time(12)),
        WorkingHours(0, time(18), time(19)),
        WorkingHours(1, time(9), time(10)),
    ])
    assert clinician.working_blocks(0) == [(time(9), time(17)), (time(18), time(19))]
    assert clinician.working_blocks(6) == []
