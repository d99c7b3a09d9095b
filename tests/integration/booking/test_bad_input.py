"""Bad requests are refused with the offending fields named, and refused whole: no patient,
no appointment, no outbox event, no used-up Idempotency-Key is left behind."""
from __future__ import annotations

import uuid

import pytest

from .conftest import PATIENT

SLOT = "2026-10-21T10:00:00+01:00"  # a Wednesday, inside Dr Shah's hours


def _with(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed: ...)."""
    copy = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    *parents, last = path.split(".")
    target = copy
    for name in parents:
        target = target[name]
    if value is ...:
        target.pop(last, None)
    else:
        target[last] = value
    return copy


def _field_names(fields: dict, prefix: str = "") -> set[str]:
    """Dotted names of the fields with messages; marshmallow files a nested object's own
    error (a string where an object belongs) under `_schema`, which names the object."""
    names = set()
    for name, messages in fields.items():
        if isinstance(messages, dict):
            names |= _field_names(messages, f"{prefix}{name}.")
        else:
            assert messages and all(isinstance(m, str) and m for m in messages), messages
            names.add(prefix.rstrip(".") if name == "_schema" and prefix else f"{prefix}{name}")
    return names


PATIENT_CASES = {
    "given name not a string": ("given_name", 42, {"given_name"}),
    "date of birth a number": ("date_of_birth", 19580314, {"date_of_birth"}),
    "date of birth not a date": ("date_of_birth", "14/03/1958", {"date_of_birth"}),
    "date of birth in the future": ("date_of_birth", "2030-01-01", {"date_of_birth"}),
    "date of birth today": ("date_of_birth", "2026-10-19", {"date_of_birth"}),
    "date of birth 1825": ("date_of_birth", "1825-03-14", {"date_of_birth"}),
    "phone with letters": ("phone", "07400 FLOWERS", {"phone"}),
    "phone unparseable": ("phone", "+999 123", {"phone"}),
    "phone a digit short": ("phone", "0740012345", {"phone"}),
    "phone a number": ("phone", 7400123456, {"phone"}),
    "postcode bad shape": ("address.postcode", "QQ1 1AA", {"address.postcode"}),
    "postcode empty": ("address.postcode", "", {"address.postcode"}),
    "address a string": ("address", "7 Cathedral Close, Wells", {"address"}),
    "address unknown field": ("address.county", "Somerset", {"address.county"}),
    "gp phone invalid": ("gp.phone", "01749 67", {"gp.phone"}),
    "consent as 1": ("consent.sms", 1, {"consent.sms"}),
    "consent as 'yes'": ("consent.email", "yes", {"consent.email"}),
    "consent missing": ("consent", ..., {"consent"}),
    "email malformed": ("email", "margaret@", {"email"}),
    "unknown field": ("nhs_number", "943 476 5919", {"nhs_number"}),
    "family name empty": ("family_name", "", {"family_name"}),
    "given name only spaces": ("given_name", "   ", {"given_name"}),
    "city only spaces": ("address.city", " \t ", {"address.city"}),
    "gp name only spaces": ("gp.name", "  ", {"gp.name"}),
    "email accented before the @": ("email", "jos\u00e9@example.org", {"email"}),
    "NUL in a name": ("given_name", "Marg\x00aret", {"given_name"}),
    "unpaired surrogate in an address": ("address.line1", "7 Cathedral \ud800Close",
                                         {"address.line1"}),
}


@pytest.mark.parametrize("case", PATIENT_CASES)
def test_a_bad_patient_is_refused_naming_the_field(unchanged_booking, case):
    site = unchanged_booking
    path, value, expected = PATIENT_CASES[case]
    before = site.counts()

    response = site.post("/patients", _with(PATIENT, path, value),
                         {"Idempotency-Key": f"bad-{case}"})

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid"
    assert _field_names(error["fields"]) == expected
    assert site.counts() == before


def _appointment(site, **changes) -> dict:
    body = {"patient_id": site.patient_id, "clinician_id": str(site.shah),
            "treatment_code": "TPI", "starts_at": SLOT}
    for name, value in changes.items():
        if value is ...:
            body.pop(name)
        else:
            body[name] = value
    return body


APPOINTMENT_CASES = {
    "before opening": ({"starts_at": "2026-10-21T08:45:00+01:00"}, {"starts_at"}),
    "running into lunch": ({"starts_at": "2026-10-21T12:45:00+01:00"}, {"starts_at"}),
    "after closing": ({"starts_at": "2026-10-21T17:00:00+01:00"}, {"starts_at"}),
    "into lunch, given in UTC (11:45Z is 12:45 BST)": (
        {"starts_at": "2026-10-21T11:45:00Z"}, {"starts_at"}),
    "in the past": ({"starts_at": "2026-10-16T10:00:00+01:00"}, {"starts_at"}),
    "already started": ({"starts_at": "2026-10-19T08:45:00+01:00"}, {"starts_at"}),
    "naive datetime": ({"starts_at": "2026-10-21T10:00:00"}, {"starts_at"}),
    "date only": ({"starts_at": "2026-10-21"}, {"starts_at"}),
    "starts_at a number": ({"starts_at": 1792573200}, {"starts_at"}),
    "unknown clinician": ({"clinician_id": "5d3b9c4e-0000-4000-8000-000000000000"},
                          {"clinician_id"}),
    "clinician not a uuid": ({"clinician_id": "dr-shah"}, {"clinician_id"}),
    "unknown treatment": ({"treatment_code": "BOTOX"}, {"treatment_code"}),
    "unknown patient": ({"patient_id": "5d3b9c4e-0000-4000-8000-000000000001"},
                        {"patient_id"}),
    "patient missing": ({"patient_id": ...}, {"patient_id"}),
    "unknown field": ({"notes": "bad knee"}, {"notes"}),
    "NUL in the treatment code": ({"treatment_code": "TPI\x00"}, {"treatment_code"}),
    # A treatment's end, or the UTC form, past the calendar's last or first day (were 500s).
    "at the calendar's end": ({"starts_at": "9999-12-31T23:50:00+00:00"}, {"starts_at"}),
    "before the calendar, in UTC": ({"starts_at": "0001-01-01T00:00:00+05:00"},
                                    {"starts_at"}),
}


@pytest.mark.parametrize("case", APPOINTMENT_CASES)
def test_a_bad_appointment_is_refused_naming_the_field(unchanged_booking, case):
    site = unchanged_booking
    changes, expected = APPOINTMENT_CASES[case]
    before = site.counts()

    response = site.post("/appointments", _appointment(site, **changes),
                         {"Idempotency-Key": f"bad-{case}"})

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "invalid"
    assert _field_names(error["fields"]) == expected
    assert site.counts() == before


def test_the_good_request_the_bad_ones_are_made_from_is_accepted(booking):
    """Guards the cases above: each is refused for its one change, not for the base body."""
    assert booking.post("/patients", PATIENT).status_code == 201
    assert booking.post("/appointments", _appointment(booking)).status_code == 201
    assert booking.post("/appointments", _appointment(
        booking, starts_at="2026-10-21T11:00:00Z")).status_code == 201  # 12:00 clinic time


@pytest.mark.parametrize("body", ["{bad json", '{"given_name": "Margaret",}', "\xff",
                                  "[" * 100_000], ids=["broken", "trailing comma", "not utf-8",
                                                       "nested too deeply"])
def test_malformed_json_is_a_bad_request(unchanged_booking, body):
    site = unchanged_booking
    before = site.counts()
    for path in ("/api/v1/patients", "/api/v1/appointments"):
        response = site.client.post(path, data=body, headers={
            **site.admin, "Content-Type": "application/json"})
        assert response.status_code == 400
        error = response.get_json()["error"]
        assert error["code"] == "bad_request"
        assert error["fields"]
    assert site.counts() == before


def test_an_email_domain_in_another_script_is_kept_in_its_ascii_form(booking):
    """What the clinic's mail can send to: IDNA for the domain (bücher.example)."""
    created = booking.post("/patients", {**PATIENT, "email": "margaret@b\u00fccher.example"})
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["email"] == "margaret@xn--bcher-kva.example"
    # By UTS #46, not IDNA 2003, which would make straße.de strasse.de: another domain.
    strasse = booking.post("/patients", {**PATIENT, "email": "margaret@stra\u00dfe.de"})
    assert strasse.get_json()["email"] == "margaret@xn--strae-oqa.de"


@pytest.mark.parametrize("body", ["[]", "null", '"Margaret"', "42"])
def test_json_that_is_not_an_object_is_refused(unchanged_booking, body):
    site = unchanged_booking
    before = site.counts()
    response = site.client.post("/api/v1/patients", data=body, headers={
        **site.admin, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.get_json()["error"]["fields"]
    assert site.counts() == before


def test_a_bad_reschedule_is_refused_and_changes_nothing(booking):
    booked = booking.book(SLOT).get_json()
    before = booking.counts()
    for body, expected in [({"starts_at": "2026-10-22T10:00:00"}, {"starts_at"}),
                           ({"starts_at": "2026-10-22T07:00:00+01:00"}, {"starts_at"}),
                           ({"starts_at": "2026-10-22T10:00:00+01:00",
                             "clinician_id": str(uuid.uuid4())}, {"clinician_id"}),
                           ({"starts_at": "2026-10-22T10:00:00+01:00", "room": 2}, {"room"})]:
        response = booking.post(f"/appointments/{booked['id']}/reschedule", body)
        assert response.status_code == 422, (body, response.get_json())
        assert _field_names(response.get_json()["error"]["fields"]) == expected
    assert booking.counts() == before
    assert booking.get(f"/appointments/{booked['id']}").get_json()["starts_at"] == SLOT


def test_a_query_with_bad_parameters_names_them(unchanged_booking):
    site = unchanged_booking
    response = site.get("/availability", query_string={
        "clinician_id": "dr-shah", "treatment_code": "TPI", "date": "21/10/2026"})
    assert response.status_code == 422
    assert _field_names(response.get_json()["error"]["fields"]) == {"clinician_id", "date"}
    response = site.get("/patients", query_string={"phone": "not a phone"})
    assert response.status_code == 422
    assert _field_names(response.get_json()["error"]["fields"]) == {"phone"}


def test_a_clinician_with_bad_working_hours_is_refused(unchanged_booking):
    site = unchanged_booking
    before = site.counts()
    response = site.post("/clinicians", {"name": "Dr Typo", "working_hours": [
        {"weekday": 0, "start": "09:00", "end": "13:00"},
        {"weekday": 0, "start": "12:00", "end": "17:00"}]})
    assert response.status_code == 422
    assert _field_names(response.get_json()["error"]["fields"]) == {"working_hours"}
    response = site.post("/clinicians", {"name": "Dr Typo", "working_hours": [
        {"weekday": 7, "start": "9am", "end": "17:00"}]})
    assert response.status_code == 422
    assert site.counts() == before
    names = {c["name"] for c in site.get("/clinicians").get_json()}
    assert "Dr Typo" not in names


def test_a_blank_cancellation_reason_is_refused_and_changes_nothing(booking):
    booked = booking.book(SLOT).get_json()
    before = booking.counts()
    response = booking.post(f"/appointments/{booked['id']}/cancel", {"reason": "   "})
    assert response.status_code == 422
    assert _field_names(response.get_json()["error"]["fields"]) == {"reason"}
    assert booking.counts() == before
    assert booking.get(f"/appointments/{booked['id']}").get_json()["status"] == "booked"


def test_a_misspelt_query_parameter_is_refused_not_ignored(unchanged_booking):
    """Ignored, `clinican_id` would answer with every clinician's day as if filtered."""
    site = unchanged_booking
    response = site.get("/appointments", query_string={
        "date": "2026-10-21", "clinican_id": str(site.shah)})
    assert response.status_code == 422
    assert _field_names(response.get_json()["error"]["fields"]) == {"clinican_id"}


@pytest.mark.parametrize("when", ["9999-12-31", "0001-01-01"])
def test_dates_at_the_calendars_ends_are_refused_not_a_server_error(booking, when):
    """Reschedules, availability and the day list, each given a date or time the diary
    cannot hold: a 422 naming the field (each was a 500)."""
    booked = booking.book(SLOT).get_json()
    response = booking.post(f"/appointments/{booked['id']}/reschedule",
                            {"starts_at": f"{when}T10:00:00+05:00"})
    assert response.status_code == 422, response.get_json()
    assert _field_names(response.get_json()["error"]["fields"]) == {"starts_at"}
    for path, query in [("/availability", {"clinician_id": str(booking.shah),
                                           "treatment_code": "TPI", "date": when}),
                        ("/appointments", {"date": when})]:
        response = booking.get(path, query_string=query)
        assert response.status_code == 422, (path, response.get_json())
        assert _field_names(response.get_json()["error"]["fields"]) == {"date"}
