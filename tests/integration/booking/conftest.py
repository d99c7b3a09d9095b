"""Booking's HTTP app on a real, migrated database with staff tokens and a small clinic.

The clock stands at Monday 19 October 2026, 09:00 in London (BST), so every date in these
tests is a known weekday on a known side of the clock change; tests move it when a rule
depends on "now" (marking attended, a no-show).
"""
from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import time

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from werkzeug.serving import make_server

from services.booking.app import bootstrap, create_app
from services.booking.db import appointments, followups, patients, shared_tables
from services.booking.model import Clinician, FollowUpPlan, Treatment, WorkingHours
from shared.clock import FixedClock
from shared.config import Config
from shared.db import make_engine
from shared.migrations import upgrade
from shared.web import create_token, new_token
from tests.conftest import scratch_postgres

NOW = "2026-10-19T08:00:00+00:00"  # Monday, 09:00 BST

INJECTION = Treatment("TPI", "Ultrasound-guided trigger point injection", 30,
                      requires_consent=True, followup=FollowUpPlan("checkin", days_after=14))
ASSESSMENT = Treatment("POD-ASSESS", "Podiatry assessment", 45, requires_consent=False,
                       followup=None)

PATIENT = {
    "given_name": "Margaret", "family_name": "Hollingsworth", "date_of_birth": "1958-03-14",
    "phone": "07400 123456", "email": "margaret@example.org",
    "address": {"line1": "7 Cathedral Close", "line2": None, "city": "Wells",
                "postcode": "ba5 2pa"},
    "gp": {"name": "Dr Okonjo", "practice": "Wells Health Centre",
           "address": "Priory Road, Wells", "phone": "01749 672137"},
    "consent": {"sms": True, "email": True},
}


def every_day(*blocks: tuple[time, time]) -> list[WorkingHours]:
    """Seven days a week, so a test may pick any date (the clock changes fall on Sundays)."""
    return [WorkingHours(day, start, end) for day in range(7) for start, end in blocks]


@dataclass
class BookingSite:
    """One booking app on its own database, with what a test needs to drive and inspect it."""

    app: object
    engine: sa.Engine
    clock: FixedClock
    admin: dict[str, str]
    reception: dict[str, str]
    shah: uuid.UUID  # Dr Shah: 09:00-13:00 and 14:00-17:00 every day
    whitfield: uuid.UUID  # Tom Whitfield: 09:00-17:00 every day
    patient_id: str = ""
    client: object = field(init=False)

    def __post_init__(self):
        self.client = self.app.test_client()

    def post(self, path: str, body=None, headers: dict | None = None, **kwargs):
        return self.client.post(f"/api/v1{path}", json=body,
                                headers={**self.admin, **(headers or {})}, **kwargs)

    def get(self, path: str, **kwargs):
        return self.client.get(f"/api/v1{path}", headers=self.admin, **kwargs)

    def book(self, starts_at: str, clinician: uuid.UUID | None = None, treatment: str = "TPI",
             headers: dict | None = None):
        return self.post("/appointments", {
            "patient_id": self.patient_id, "clinician_id": str(clinician or self.shah),
            "treatment_code": treatment, "starts_at": starts_at}, headers)

    def counts(self) -> dict[str, int]:
        """Rows in every table a request could write to."""
        tables = {"patients": patients, "appointments": appointments, "followups": followups,
                  "outbox": shared_tables.outbox,
                  "idempotency_keys": shared_tables.idempotency_keys}
        with self.engine.connect() as connection:
            return {name: connection.execute(
                sa.select(sa.func.count()).select_from(table)).scalar_one()
                for name, table in tables.items()}

    def events(self) -> list[dict]:
        """The outbox, oldest first, each row's body parsed as the broker will carry it."""
        outbox = shared_tables.outbox
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(outbox).order_by(outbox.c.id)).all()
        events = []
        for row in rows:
            envelope = json.loads(row.body)
            assert (row.type, row.subject, row.event_id) == (
                envelope["type"], envelope["subject"], envelope["id"])
            events.append(envelope)
        return events


def build_site(url: str) -> BookingSite:
    engine = make_engine(url)
    upgrade(engine, "booking")
    clock = FixedClock(NOW)
    context = bootstrap(Config(database_urls={"booking": url}, testing=True), engine=engine,
                        clock=clock)
    tokens = {}
    for role in ("admin", "reception"):
        tokens[role] = new_token()
        create_token(engine, shared_tables, f"test-{role}", role, tokens[role], clock.now())
    shah = Clinician(uuid.uuid4(), "Dr Amira Shah",
                     every_day((time(9), time(13)), (time(14), time(17))))
    whitfield = Clinician(uuid.uuid4(), "Tom Whitfield", every_day((time(9), time(17))))
    uow = context.uow()
    with uow:
        for treatment in (INJECTION, ASSESSMENT):
            uow.treatments.save(treatment)
        for clinician in (shah, whitfield):
            uow.clinicians.add(clinician)
        uow.commit()
    site = BookingSite(
        app=create_app(context.config, context), engine=engine, clock=clock,
        admin={"Authorization": f"Bearer {tokens['admin']}"},
        reception={"Authorization": f"Bearer {tokens['reception']}"},
        shah=shah.id, whitfield=whitfield.id,
    )
    response = site.post("/patients", PATIENT)
    assert response.status_code == 201, response.get_json()
    site.patient_id = response.get_json()["id"]
    return site


@pytest.fixture
def booking(database_url):
    """The booking app on SQLite and on PostgreSQL: one contract, every backend."""
    site = build_site(database_url)
    yield site
    site.engine.dispose()


@pytest.fixture
def pg_booking(postgres_url):
    """The booking app on PostgreSQL, the production database."""
    site = build_site(postgres_url)
    yield site
    site.engine.dispose()


@contextmanager
def _scratch_database(backend: str, directory):
    """As the suite's `database_url` fixture, for a wider scope than one test."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'booking.sqlite3'}"
        return
    with scratch_postgres() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def unchanged_booking(request, tmp_path_factory):
    """One booking app per module and backend, for tests that each assert they wrote
    nothing: sharing it is sound because any write fails the test that made it."""
    with _scratch_database(request.param, tmp_path_factory.mktemp("booking")) as url:
        site = build_site(url)
        yield site
        site.engine.dispose()


@pytest.fixture
def live_server():
    """Serves an app over real HTTP on a free port, one thread per request, as gunicorn's
    threaded workers do; yields a function from app to its base URL."""
    servers = []

    def serve(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)


def generic_plan(engine, statement: sa.Executable, values: dict) -> str:
    """The plan PostgreSQL runs `statement` with once it is a prepared statement on its
    generic plan (psycopg prepares a statement run five times; the server then plans for
    any parameters, not for these), in text."""
    compiled = statement.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    bound = compiled.construct_params(values)
    arguments = [bound[name] for name in compiled.positiontup]
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        driver.execute("SET plan_cache_mode = force_generic_plan")
        driver.execute(f"PREPARE probe AS {compiled}")
        try:
            cursor = psycopg.ClientCursor(driver)
            cursor.execute("EXPLAIN EXECUTE probe (" + ", ".join(["%s"] * len(arguments))
                           + ")", arguments)
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            driver.execute("DEALLOCATE probe")
            driver.execute("RESET plan_cache_mode")
