"""The demo clinic `clinic seed-demo` loads: the real treatment menu and three clinicians.

Clinician ids are uuid5 of a fixed namespace, so seeding twice finds the same rows instead
of adding a second Dr Shah.
"""
from __future__ import annotations

import uuid
from datetime import time

from .clinicians import Clinician, WorkingHours
from .treatments import FollowUpPlan, Treatment

DEMO_NAMESPACE = uuid.UUID("3b0c6f5e-2a4d-5c8e-9f1a-7d2e4b6c8a10")

DEMO_TREATMENTS: list[Treatment] = [
    Treatment("TPI", "Ultrasound-guided trigger point injection", 30, requires_consent=True,
              followup=FollowUpPlan("checkin", days_after=14)),
    Treatment("ARTHROSAMID", "Arthrosamid knee injection", 45, requires_consent=True,
              followup=FollowUpPlan("checkin", days_after=28)),
    Treatment("POD-ASSESS", "Podiatry assessment", 45, requires_consent=False, followup=None),
    Treatment("PHYSIO", "Physiotherapy session", 45, requires_consent=False, followup=None),
    Treatment("SPORTS", "Sports injury assessment", 60, requires_consent=False, followup=None),
]


def _weekdays(*blocks: tuple[time, time]) -> list[WorkingHours]:
    return [WorkingHours(day, start, end) for day in range(5) for start, end in blocks]


_MORNING, _AFTERNOON = (time(9), time(13)), (time(14), time(17))

DEMO_CLINICIANS: list[Clinician] = [
    # The sports-medicine doctor who gives the injections; also runs a Saturday morning list.
    Clinician(uuid.uuid5(DEMO_NAMESPACE, "clinician/amira-shah"), "Dr Amira Shah",
              _weekdays(_MORNING, _AFTERNOON) + [WorkingHours(5, time(9), time(13))]),
    Clinician(uuid.uuid5(DEMO_NAMESPACE, "clinician/tom-whitfield"), "Tom Whitfield",
              _weekdays((time(9), time(12, 30)), (time(13, 30), time(17)))),
    Clinician(uuid.uuid5(DEMO_NAMESPACE, "clinician/grace-okafor"), "Grace Okafor",
              _weekdays(_MORNING, _AFTERNOON)),
]
