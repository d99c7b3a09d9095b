"""Working hours are clinic wall-clock time: 09:00 is 09:00 in London on both sides of the
clocks changing (25 October 2026 back to GMT, 28 March 2027 forward to BST), over the API."""
from __future__ import annotations

from datetime import datetime

import pytest

# (the Saturday before, the Sunday of the change, offset before, offset after)
CHANGES = {
    "autumn 2026": ("2026-10-24", "2026-10-25", "+01:00", "+00:00"),
    "spring 2027": ("2027-03-27", "2027-03-28", "+00:00", "+01:00"),
}


def _slots(site, day: str, clinician=None, treatment="TPI") -> list[str]:
    response = site.get("/availability", query_string={
        "clinician_id": str(clinician or site.shah), "treatment_code": treatment, "date": day})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["timezone"] == "Europe/London"
    assert body["date"] == day
    return [slot["starts_at"] for slot in body["slots"]]


def _wall(stamp: str) -> str:
    return stamp[11:16]


@pytest.mark.parametrize("change", CHANGES)
def test_nine_oclock_stays_nine_oclock_across_the_change(booking, change):
    before_day, change_day, before_offset, after_offset = CHANGES[change]

    before, after = _slots(booking, before_day), _slots(booking, change_day)

    assert before[0] == f"{before_day}T09:00:00{before_offset}"
    assert after[0] == f"{change_day}T09:00:00{after_offset}"
    # The same wall-clock menu on both days: 09:00-12:30 and 14:00-16:30 every 15 minutes.
    assert [_wall(s) for s in before] == [_wall(s) for s in after]
    assert len(after) == 26
    assert all(s.endswith(after_offset) for s in after)
    utc_hours = {datetime.fromisoformat(s).utcoffset() for s in before + after}
    assert len(utc_hours) == 2  # so the UTC instants did move by an hour, as they must


@pytest.mark.parametrize("change", CHANGES)
def test_booking_nine_oclock_on_the_day_of_the_change(booking, change):
    _, change_day, before_offset, after_offset = CHANGES[change]
    nine = f"{change_day}T09:00:00{after_offset}"

    response = booking.book(nine)

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["starts_at"] == nine
    [event] = booking.events()
    utc_hour = 9 - int(after_offset[1:3])
    assert event["data"]["starts_at"] == f"{change_day}T{utc_hour:02d}:00:00Z"
    assert nine not in _slots(booking, change_day)
    day = booking.get("/appointments", query_string={"date": change_day}).get_json()
    assert [a["starts_at"] for a in day] == [nine]


def test_yesterdays_offset_on_the_autumn_sunday_is_eight_oclock_and_refused(booking):
    """A client that kept the summer offset asks for 09:00+01:00 on 25 October 2026: that is
    08:00 in London that day, before the clinic opens."""
    response = booking.book("2026-10-25T09:00:00+01:00")
    assert response.status_code == 422
    assert "starts_at" in response.get_json()["error"]["fields"]
    assert booking.counts()["appointments"] == 0


def test_the_night_hours_skip_the_missing_hour_and_take_the_repeated_one_once(booking):
    created = booking.post("/clinicians", {"name": "Dr Night", "working_hours": [
        {"weekday": 6, "start": "00:00", "end": "04:00"}]})
    assert created.status_code == 201
    night = created.get_json()["id"]

    spring = _slots(booking, "2027-03-28", night)
    assert not [s for s in spring if _wall(s).startswith("01:")]  # 01:00-01:59 never happens
    # 00:45 is a real half hour too: it ends at 02:15 on the clock, 01:15 UTC.
    assert spring[:5] == ["2027-03-28T00:00:00+00:00", "2027-03-28T00:15:00+00:00",
                          "2027-03-28T00:30:00+00:00", "2027-03-28T00:45:00+00:00",
                          "2027-03-28T02:00:00+01:00"]
    assert spring[-1] == "2027-03-28T03:30:00+01:00"

    autumn = _slots(booking, "2026-10-25", night)
    assert len(autumn) == len(set(autumn))
    ones = [s for s in autumn if _wall(s).startswith("01:")]
    assert ones == [f"2026-10-25T01:{m}:00+01:00" for m in ("00", "15", "30", "45")]
    assert autumn[-1] == "2026-10-25T03:30:00+00:00"
