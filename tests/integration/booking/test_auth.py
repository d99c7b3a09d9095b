"""Staff authentication is fail-closed: every route under /api/ refuses a request without a
valid token, whatever its method, and only a short, explicit list of routes is public."""
from __future__ import annotations

import uuid

import pytest

from services.booking.db import shared_tables
from shared.web import create_token

# Public by design (contract, "HTTP"): probes, metrics, the API description, Flask's static
# files, and webhooks, which authenticate by signature instead of a staff token.
PUBLIC_RULES = {
    "/healthz", "/readyz", "/readyz/database", "/metrics", "/openapi.json",
    "/static/<path:filename>",
    "/webhooks/phone", "/webhooks/twilio/voice",
}
ANONYMOUS_HEADERS = {
    "no token": {},
    "wrong token": {"Authorization": "Bearer ct_not-a-token-we-issued"},
    "empty bearer": {"Authorization": "Bearer "},
    "other scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
}


def _concrete(rule) -> str:
    """The rule's path with a well-formed value in each variable, so routing reaches the view
    and it is the staff check, not a 404, that answers."""
    values = {name: uuid.uuid4() for name in rule.arguments}
    return rule.build(values, append_unknown=False)[1]


def test_only_the_listed_routes_are_outside_the_api(unchanged_booking):
    site = unchanged_booking
    outside = {r.rule for r in site.app.url_map.iter_rules()
               if not r.rule.startswith("/api/")}
    assert outside == PUBLIC_RULES, "a new public route must be added here deliberately"


@pytest.mark.parametrize("who", ANONYMOUS_HEADERS)
def test_every_api_route_and_method_refuses_anonymous_callers(unchanged_booking, who):
    site = unchanged_booking
    before = site.counts()
    checked = []
    for rule in site.app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = _concrete(rule)
        for method in sorted(rule.methods):
            response = site.client.open(path, method=method, headers=ANONYMOUS_HEADERS[who],
                                        json={"given_name": "x"})
            assert response.status_code == 401, (method, rule.rule, response.status_code)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if method != "HEAD":
                assert response.is_json, (method, rule.rule)
                assert response.get_json()["error"]["code"] == "unauthorized"
            checked.append((method, rule.rule))
    assert ("POST", "/api/v1/appointments") in checked
    assert ("POST", "/api/v1/appointments/<uuid:appointment_id>/cancel") in checked
    assert len(checked) >= 30
    assert site.counts() == before


def test_a_revoked_token_is_refused(booking):
    token = "ct_" + uuid.uuid4().hex
    create_token(booking.engine, shared_tables, "leaver", "admin", token, booking.clock.now())
    table = shared_tables.staff_tokens
    with booking.engine.begin() as connection:
        connection.execute(table.update().where(table.c.name == "leaver")
                           .values(revoked_at=booking.clock.now()))
    response = booking.client.get("/api/v1/treatments",
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_public_routes_answer_without_a_token(unchanged_booking):
    site = unchanged_booking
    assert site.client.get("/healthz").status_code == 200
    assert site.client.get("/readyz").status_code == 200
    assert site.client.get("/metrics").status_code == 200
    spec = site.client.get("/openapi.json")
    assert spec.status_code == 200 and "/api/v1/appointments" in spec.get_json()["paths"]
    # A webhook is public but not open: it wants its own signature.
    assert site.client.post("/webhooks/phone", json={}).status_code == 401


def test_a_valid_token_is_let_in(unchanged_booking):
    site = unchanged_booking
    response = site.client.get("/api/v1/treatments", headers=site.reception)
    assert response.status_code == 200
    assert {t["code"] for t in response.get_json()} == {"TPI", "POD-ASSESS"}


def test_reception_cannot_add_a_clinician_but_admin_can(booking):
    body = {"name": "Dr New", "working_hours": [{"weekday": 0, "start": "09:00", "end": "17:00"}]}
    refused = booking.client.post("/api/v1/clinicians", json=body, headers=booking.reception)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "forbidden"
    assert "admin" in refused.get_json()["error"]["message"]
    # Refused for the role before the body is judged: staff without it learn nothing of it.
    invalid = booking.client.post("/api/v1/clinicians", json={"name": ""},
                                  headers=booking.reception)
    assert invalid.status_code == 403
    listed = booking.client.get("/api/v1/clinicians", headers=booking.reception).get_json()
    assert "Dr New" not in {c["name"] for c in listed}

    added = booking.client.post("/api/v1/clinicians", json=body, headers=booking.admin)
    assert added.status_code == 201
    listed = booking.client.get("/api/v1/clinicians", headers=booking.reception).get_json()
    assert "Dr New" in {c["name"] for c in listed}
