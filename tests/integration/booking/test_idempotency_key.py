"""Idempotency-Key on creating POSTs: a retried request (a timeout, a double click, a client
library's retry) gets the first answer back and creates nothing a second time."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import PATIENT

SLOT = "2026-10-21T10:00:00+01:00"


def _appointment(site, starts_at=SLOT) -> dict:
    return {"patient_id": site.patient_id, "clinician_id": str(site.shah),
            "treatment_code": "TPI", "starts_at": starts_at}


CREATES = {
    "patients": (lambda site: PATIENT, {"patients": 1}),
    "appointments": (_appointment, {"appointments": 1, "outbox": 1}),
}


def _grew(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in before if after[name] != before[name]}


@pytest.mark.parametrize("resource", CREATES)
def test_the_same_key_and_body_twice_gives_the_same_answer_and_one_row(booking, resource):
    body_for, created = CREATES[resource]
    key = {"Idempotency-Key": f"retry-{resource}-1"}
    before = booking.counts()

    first = booking.post(f"/{resource}", body_for(booking), key)
    second = booking.post(f"/{resource}", body_for(booking), key)

    assert first.status_code == second.status_code == 201
    assert second.get_json() == first.get_json()
    assert _grew(before, booking.counts()) == {**created, "idempotency_keys": 1}


@pytest.mark.parametrize("resource", CREATES)
def test_ten_concurrent_retries_with_one_key_create_once(booking, live_server, resource):
    body_for, created = CREATES[resource]
    base_url = live_server(booking.app)
    headers = {**booking.admin, "Idempotency-Key": f"burst-{resource}"}
    body = body_for(booking)
    before = booking.counts()
    start = threading.Barrier(10)

    def send(_):
        start.wait(timeout=30)
        return requests.post(f"{base_url}/api/v1/{resource}", json=body, headers=headers,
                             timeout=60)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(send, range(10)))

    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert _grew(before, booking.counts()) == {**created, "idempotency_keys": 1}


@pytest.mark.parametrize("resource", CREATES)
def test_the_same_key_with_another_body_is_refused(booking, resource):
    body_for, _ = CREATES[resource]
    key = {"Idempotency-Key": f"reused-{resource}"}
    first = booking.post(f"/{resource}", body_for(booking), key)
    assert first.status_code == 201
    before = booking.counts()

    changed = {**body_for(booking)}
    if resource == "patients":
        changed["family_name"] = "Someone-Else"
    else:
        changed["starts_at"] = "2026-10-21T11:00:00+01:00"
    response = booking.post(f"/{resource}", changed, key)

    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["error"]["fields"]
    assert booking.counts() == before


def test_without_a_key_each_request_creates(booking):
    before = booking.counts()
    assert booking.post("/patients", PATIENT).status_code == 201
    assert booking.post("/patients", PATIENT).status_code == 201
    assert _grew(before, booking.counts()) == {"patients": 2}


def test_a_key_is_scoped_to_its_resource(booking):
    key = {"Idempotency-Key": "shared-key"}
    patient = booking.post("/patients", PATIENT, key)
    appointment = booking.post("/appointments", _appointment(booking), key)
    assert patient.status_code == appointment.status_code == 201
    assert appointment.get_json()["status"] == "booked"
    assert patient.get_json()["id"] != appointment.get_json()["id"]


def test_a_refused_request_does_not_use_up_its_key(booking):
    """A booking refused (clinic closed at that hour) leaves the key free for the corrected
    request; otherwise the receptionist's fix would be answered with the old refusal."""
    key = {"Idempotency-Key": "fix-and-retry"}
    refused = booking.post("/appointments", _appointment(booking, "2026-10-21T07:00:00+01:00"),
                           key)
    assert refused.status_code == 422
    assert booking.counts()["idempotency_keys"] == 0
    retried = booking.post("/appointments", _appointment(booking, "2026-10-21T07:00:00+01:00"),
                           key)
    assert retried.status_code == 422
    corrected = booking.post("/appointments", _appointment(booking), key)
    assert corrected.status_code == 201


def test_an_overlong_key_is_refused_not_cut_short(booking):
    """Two different keys must never be taken for one: a key longer than the 200 characters
    the document allows is refused, rather than cut to a prefix another key may share."""
    stem = "k" * 200
    before = booking.counts()
    response = booking.post("/patients", PATIENT, {"Idempotency-Key": stem + "-first"})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["error"]["fields"]
    assert booking.counts() == before
    exact = booking.post("/patients", PATIENT, {"Idempotency-Key": stem})
    assert exact.status_code == 201


def test_a_retry_writing_the_same_start_in_another_offset_gets_the_first_answer(booking):
    """10:00 BST the first time, 09:00Z on the retry (a client that re-serialises the time):
    the same instant, so the same booking back, not a 422 for a "different" request."""
    key = {"Idempotency-Key": "retry-offset-1"}
    before = booking.counts()
    first = booking.post("/appointments", _appointment(booking, SLOT), key)
    second = booking.post("/appointments",
                          _appointment(booking, "2026-10-21T09:00:00Z"), key)
    assert first.status_code == second.status_code == 201, second.get_json()
    assert second.get_json() == first.get_json()
    assert _grew(before, booking.counts()) == {"appointments": 1, "outbox": 1,
                                               "idempotency_keys": 1}


def test_a_key_is_the_callers_own(booking):
    """Reception's desk app and the phone system both number their requests from 1: the
    same key from another caller creates its own patient, never gets the first caller's."""
    key = {"Idempotency-Key": "1"}
    desk = booking.client.post("/api/v1/patients", json=PATIENT,
                               headers={**booking.reception, **key})
    phone_system = booking.client.post("/api/v1/patients",
                                       json={**PATIENT, "given_name": "Arthur"},
                                       headers={**booking.admin, **key})
    assert desk.status_code == phone_system.status_code == 201
    assert desk.get_json()["id"] != phone_system.get_json()["id"]
    assert phone_system.get_json()["given_name"] == "Arthur"
    again = booking.client.post("/api/v1/patients", json=PATIENT,
                                headers={**booking.reception, **key})
    assert again.get_json()["id"] == desk.get_json()["id"]
