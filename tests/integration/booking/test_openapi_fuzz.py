"""Schemathesis reads booking's own /openapi.json and throws generated requests at every
operation with a valid token: no 5xx, and every answer is one the document promises (status,
content type, body schema), so a client generated from the document can rely on it."""
from __future__ import annotations

from collections import Counter

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
FUZZ = hypothesis.settings(
    max_examples=25, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _schema(site):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", site.app)
    # .ok() raises for an operation the loader cannot read: a broken document is a failure.
    operations = [result.ok() for result in schema.get_all_operations()]
    assert "POST /api/v1/appointments" in {operation.label for operation in operations}
    assert len(operations) == 14
    return operations


def _fuzz(operation, headers: dict, mode=GenerationMode.POSITIVE, path_parameters=None,
          body_ids: dict | None = None, checks=CHECKS) -> Counter:
    """Runs the operation's generated cases through every check; returns the statuses seen."""
    statuses: Counter = Counter()
    strategy = operation.as_strategy(mode, path_parameters=path_parameters)
    if body_ids:
        strategy = strategy.map(lambda case: _with_ids(case, body_ids))

    @FUZZ
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(headers=headers, checks=checks)
        statuses[response.status_code] += 1

    run()
    return statuses


def _with_ids(case, ids: dict):
    """Real ids in place of random ones, so that generated bodies reach the clinic's rules
    rather than stopping at "no such patient"."""
    if isinstance(case.body, dict):
        case.body.update({name: value for name, value in ids.items() if name in case.body})
    return case


def test_every_operation_answers_as_documented(pg_booking):
    for operation in _schema(pg_booking):
        statuses = _fuzz(operation, pg_booking.admin)
        assert sum(statuses.values()) > 0, operation.label
        assert not any(status >= 500 for status in statuses)


def test_invalid_requests_are_refused_as_documented_never_with_a_5xx(pg_booking):
    """Requests the document forbids (wrong types, missing fields, over-long values) must
    each be refused with a 4xx, never accepted and never a 5xx."""
    refused = Counter()
    for operation in _schema(pg_booking):
        statuses = _fuzz(operation, pg_booking.admin, GenerationMode.NEGATIVE,
                         checks=[*CHECKS, negative_data_rejection])
        refused.update(status for status in statuses if 400 <= status < 500)
    assert refused[422] and refused[400]  # the generator did reach the validation


def test_real_ids_reach_the_rules_and_answer_as_documented(pg_booking):
    site = pg_booking
    appointment = site.book("2026-10-21T10:00:00+01:00").get_json()
    path_ids = {"appointment_id": appointment["id"], "patient_id": site.patient_id}
    body_ids = {"patient_id": site.patient_id, "clinician_id": str(site.whitfield),
                "treatment_code": "POD-ASSESS"}
    seen = Counter()
    for operation in _schema(site):
        wanted = {name: value for name, value in path_ids.items()
                  if f"{{{name}}}" in operation.path}
        statuses = _fuzz(operation, site.admin, path_parameters=wanted, body_ids=body_ids)
        seen.update(f"{operation.method.upper()} {operation.path} {status}"
                    for status in statuses)
    assert seen["GET /api/v1/appointments/{appointment_id} 200"]
    assert seen["GET /api/v1/patients/{patient_id} 200"]
    # Cancelled by the first generated reason, refused as already cancelled afterwards.
    assert seen["POST /api/v1/appointments/{appointment_id}/cancel 200"] == 1
    assert seen["POST /api/v1/appointments/{appointment_id}/cancel 409"]


def test_error_answers_match_the_document(pg_booking):
    """The refusals a fuzzer seldom reaches (a taken slot, a wrong role, no token) are read
    against the document too."""
    site = pg_booking
    schema = schemathesis.openapi.from_wsgi("/openapi.json", site.app)
    book = schema["/api/v1/appointments"]["POST"]
    body = {"patient_id": site.patient_id, "clinician_id": str(site.shah),
            "treatment_code": "TPI", "starts_at": "2026-10-21T10:00:00+01:00"}
    assert book.Case(body=body).call_and_validate(headers=site.admin,
                                                  checks=CHECKS).status_code == 201
    taken = book.Case(body=body).call_and_validate(headers=site.admin, checks=CHECKS)
    assert taken.status_code == 409
    assert book.responses.find_by_status_code(409).definition["content"]

    add = schema["/api/v1/clinicians"]["POST"]
    clinician = {"name": "Dr New", "working_hours": [
        {"weekday": 0, "start": "09:00", "end": "17:00"}]}
    forbidden = add.Case(body=clinician).call_and_validate(headers=site.reception,
                                                           checks=CHECKS)
    assert forbidden.status_code == 403
    anonymous = add.Case(body=clinician).call_and_validate(checks=CHECKS)
    assert anonymous.status_code == 401
    missing = schema["/api/v1/appointments/{appointment_id}"]["GET"].Case(
        path_parameters={"appointment_id": "5d3b9c4e-0000-4000-8000-000000000000"})
    assert missing.call_and_validate(headers=site.admin, checks=CHECKS).status_code == 404


def test_the_document_describes_what_clients_read(booking):
    """What a generated client reads from a patient or an appointment has its type and its
    values in the document, and a body the API does not need is not marked required."""
    from services.booking.model import APPOINTMENT_STATUSES, INTAKE_FORM_STATUSES
    spec = booking.client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    consent = schemas["PatientOut"]["properties"]["consent"]["$ref"].rsplit("/", 1)[-1]
    assert schemas[consent]["properties"] == {"sms": {"type": "boolean"},
                                              "email": {"type": "boolean"}}
    appointment = schemas["AppointmentOut"]["properties"]
    assert appointment["status"]["enum"] == list(APPOINTMENT_STATUSES)
    assert appointment["intake_form_status"]["enum"] == list(INTAKE_FORM_STATUSES)

    cancel = spec["paths"]["/api/v1/appointments/{appointment_id}/cancel"]["post"]
    assert cancel["requestBody"].get("required") is not True
    appointment_id = booking.book("2026-10-21T10:00:00+01:00").get_json()["id"]
    cancelled = booking.client.post(f"/api/v1/appointments/{appointment_id}/cancel",
                                    headers=booking.admin)
    assert cancelled.status_code == 200
    assert cancelled.get_json()["cancel_reason"] == "Cancelled by reception"
