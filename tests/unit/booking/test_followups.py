"""followup_due: check-ins counted in clinic days, at clinic wall-clock time."""
from datetime import UTC, datetime, time, timedelta

import pytest

from services.booking.model import DEMO_TREATMENTS, FollowUpPlan, Treatment, followup_due

MENU = {treatment.code: treatment for treatment in DEMO_TREATMENTS}


def test_no_plan_no_followup(london):
    assert followup_due(MENU["PHYSIO"], datetime(2026, 6, 1, 9, tzinfo=UTC), london) is None


def test_checkin_at_ten_clinic_time_fourteen_days_later(london):
    due = followup_due(MENU["TPI"], datetime(2026, 6, 1, 9, tzinfo=UTC), london)
    assert due == datetime(2026, 6, 15, 9, tzinfo=UTC)  # 10:00 BST


def test_after_the_clocks_go_back_ten_is_still_ten(london):
    due = followup_due(MENU["TPI"], datetime(2026, 10, 20, 9, tzinfo=UTC), london)
    assert due == datetime(2026, 11, 3, 10, tzinfo=UTC)  # 10:00 GMT
    assert due.astimezone(london).time() == time(10)


def test_after_the_clocks_go_forward_ten_is_still_ten(london):
    due = followup_due(MENU["ARTHROSAMID"], datetime(2027, 3, 15, 14, tzinfo=UTC), london)
    assert due == datetime(2027, 4, 12, 9, tzinfo=UTC)  # 10:00 BST
    assert due.tzinfo is UTC


def test_days_count_from_the_clinic_date_not_the_utc_date(london):
    """00:30 BST on 1 July is still 30 June in UTC; the check-in belongs to 15 July."""
    due = followup_due(MENU["TPI"], datetime(2026, 6, 30, 23, 30, tzinfo=UTC), london)
    assert due == datetime(2026, 7, 15, 9, tzinfo=UTC)


def test_a_plan_time_the_clock_skips_becomes_the_jump(london):
    treatment = Treatment("X", "Night check", 30, False, FollowUpPlan("checkin", 1, time(1, 30)))
    due = followup_due(treatment, datetime(2027, 3, 27, 12, tzinfo=UTC), london)
    assert due == datetime(2027, 3, 28, 1, tzinfo=UTC)  # 02:00 BST


def test_a_naive_appointment_time_is_refused(london):
    with pytest.raises(ValueError):
        followup_due(MENU["TPI"], datetime(2026, 6, 1, 9), london)


@pytest.mark.parametrize(("kind", "days"), [("checkin", 0), ("checkin", -3), ("survey", 14)])
def test_impossible_plans_are_refused(kind, days):
    with pytest.raises(ValueError):
        FollowUpPlan(kind, days)


def test_a_treatment_takes_time():
    with pytest.raises(ValueError):
        Treatment("X", "Nothing", 0, False, None)


def test_followup_is_after_the_appointment_for_any_time_of_day(london):
    start = datetime(2026, 10, 24, 0, 0, tzinfo=UTC)
    for minutes in range(0, 3 * 24 * 60, 37):
        starts_at = start + timedelta(minutes=minutes)
        assert followup_due(MENU["TPI"], starts_at, london) > starts_at + timedelta(days=13)
