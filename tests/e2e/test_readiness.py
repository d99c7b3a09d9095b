"""`clinic serve booking` up while its database or broker is not: alive, but not ready."""
from __future__ import annotations

import pytest

from tests.e2e.stack import free_port


@pytest.mark.slow
@pytest.mark.parametrize("away", ["database", "broker"])
def test_serve_answers_healthz_but_not_readyz_while_a_dependency_is_unreachable(
        clinic, clinic_env, away):
    clinic.run("db", "upgrade")
    nobody = free_port()  # nothing listens there
    env = dict(clinic_env)
    if away == "database":
        env["BOOKING_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:{nobody}/booking"
    else:
        env["AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{nobody}/"
    server = clinic.serve("booking", env=env)
    server.wait_until_answering()

    assert server.get("/healthz").status_code == 200
    ready = server.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks == {"database": away != "database", "schema": away != "database",
                      "broker": away != "broker"}
    # The web probe's readiness asks for the database alone: a broker away leaves it serving.
    serving = server.get("/readyz/database")
    assert serving.status_code == (503 if away == "database" else 200)
    if away == "database":
        # The staff check itself needs the database: a clear 503, not a 500 or a hang.
        refused = server.get("/api/v1/clinicians", headers={"Authorization": "Bearer ct_any"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "unavailable"
    assert server.process.alive()
