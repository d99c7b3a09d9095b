"""The demo clinic that `clinic seed-demo` loads."""
import uuid
from datetime import time

from services.booking.model import DEMO_CLINICIANS, DEMO_NAMESPACE, DEMO_TREATMENTS


def test_the_menu_is_the_clinics():
    menu = {t.code: (t.name, t.duration_minutes, t.requires_consent,
                     t.followup and (t.followup.kind, t.followup.days_after, t.followup.local_time))
            for t in DEMO_TREATMENTS}
    assert menu == {
        "TPI": ("Ultrasound-guided trigger point injection", 30, True, ("checkin", 14, time(10))),
        "ARTHROSAMID": ("Arthrosamid knee injection", 45, True, ("checkin", 28, time(10))),
        "POD-ASSESS": ("Podiatry assessment", 45, False, None),
        "PHYSIO": ("Physiotherapy session", 45, False, None),
        "SPORTS": ("Sports injury assessment", 60, False, None),
    }


def test_clinician_ids_are_the_same_on_every_seed():
    assert [c.id for c in DEMO_CLINICIANS] == [
        uuid.uuid5(DEMO_NAMESPACE, slug)
        for slug in ("clinician/amira-shah", "clinician/tom-whitfield", "clinician/grace-okafor")]
    assert all(c.id.version == 5 for c in DEMO_CLINICIANS)
    assert len({c.name for c in DEMO_CLINICIANS}) == 3


def test_clinicians_work_weekdays_with_a_lunch_gap_and_one_works_saturday():
    for clinician in DEMO_CLINICIANS:
        for weekday in range(5):
            blocks = clinician.working_blocks(weekday)
            assert len(blocks) == 2 and blocks[0][0] == time(9) and blocks[1][1] == time(17)
        assert clinician.working_blocks(6) == []
    saturday = [c.name for c in DEMO_CLINICIANS if c.working_blocks(5)]
    assert saturday == ["Dr Amira Shah"]
    assert DEMO_CLINICIANS[0].working_blocks(5) == [(time(9), time(13))]
