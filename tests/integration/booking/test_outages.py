"""When PostgreSQL cannot be reached the service says so (503, JSON, "nothing was saved") and
stays alive: /healthz answers, /readyz takes it out of the load balancer. /readyz also
reports the broker, which the API itself never needs (events wait in the outbox)."""
from __future__ import annotations

import socket
import time

import pytest
import sqlalchemy as sa

from services.booking.app import bootstrap, create_app
from shared.config import Config
from shared.db import make_engine
from tests.fakes.tcp_proxy import TcpProxy

from .conftest import PATIENT


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.fixture
def app_on():
    """Builds booking apps on a given database URL; disposes of their engines afterwards."""
    engines = []

    def build(url: str, clock, amqp_url: str = "memory://"):
        config = Config(database_urls={"booking": url}, amqp_url=amqp_url, testing=True)
        engines.append(make_engine(url))
        return create_app(config, bootstrap(config, engine=engines[-1], clock=clock))

    yield build
    for engine in engines:
        engine.dispose()


@pytest.fixture
def relay():
    """A cuttable relay to the local PostgreSQL, cut at the end whatever happened."""
    proxy = TcpProxy("127.0.0.1", 5432)
    yield proxy
    proxy.cut()


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "unavailable"
    assert "nothing was saved" in error["message"]


def test_an_unreachable_database_gives_503_not_a_crash_or_a_401(pg_booking, app_on):
    app = app_on(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/booking",
                  pg_booking.clock)
    client = app.test_client()

    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["database"] is False
    # The token cannot be checked either: that is an outage, not a wrong token.
    _assert_unavailable(client.post("/api/v1/patients", json=PATIENT, headers=pg_booking.admin))
    _assert_unavailable(client.get("/api/v1/treatments", headers=pg_booking.admin))
    assert client.get("/metrics").status_code == 200


def test_a_database_lost_mid_life_refuses_writes_and_saves_nothing(pg_booking, app_on,
                                                                  relay):
    """The app reaches PostgreSQL through a relay that the test then cuts, as a network
    partition would; its token is still in the authenticator's cache, so the requests get
    as far as their transactions."""
    database = sa.make_url(str(pg_booking.engine.url)).database
    app = app_on(f"postgresql+psycopg://postgres@127.0.0.1:{relay.port}/{database}",
                  pg_booking.clock)
    client = app.test_client()
    assert client.post("/api/v1/patients", json=PATIENT,
                       headers=pg_booking.admin).status_code == 201
    assert client.get("/readyz").status_code == 200
    before = pg_booking.counts()

    relay.cut()

    _assert_unavailable(client.post("/api/v1/patients", json=PATIENT,
                                    headers=pg_booking.admin))
    _assert_unavailable(client.post("/api/v1/appointments", headers=pg_booking.admin, json={
        "patient_id": pg_booking.patient_id, "clinician_id": str(pg_booking.shah),
        "treatment_code": "TPI", "starts_at": "2026-10-21T10:00:00+01:00"}))
    _assert_unavailable(client.post("/api/v1/clinicians", headers=pg_booking.admin, json={
        "name": "Dr Lost", "working_hours": [{"weekday": 0, "start": "09:00", "end": "17:00"}]}))
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert pg_booking.counts() == before


# The writes of a booking with an Idempotency-Key, in the order its transaction makes them
# (services/booking/service.py book_appointment): the key's claim first, its answer last.
BOOKING_WRITES = ("INSERT INTO idempotency_keys", "INSERT INTO appointments",
                  "INSERT INTO outbox", "UPDATE idempotency_keys")


@pytest.mark.parametrize("cut_after", BOOKING_WRITES)
def test_a_database_lost_partway_through_a_booking_leaves_no_part_of_it(pg_booking, app_on,
                                                                        relay, cut_after):
    """The connection is cut after one of the booking transaction's writes has been made on
    the server, before its commit: whatever it had written goes with it, and the client is
    told nothing was saved. A retry with the same key, once the database is back, books."""
    database = sa.make_url(str(pg_booking.engine.url)).database
    app = app_on(f"postgresql+psycopg://postgres@127.0.0.1:{relay.port}/{database}",
                  pg_booking.clock)
    cut: dict[str, object] = {}

    def cut_the_relay(connection, _cursor, statement, *_):
        if cut or not statement.startswith(cut_after):
            return
        backend = connection.connection.driver_connection.info.backend_pid
        with pg_booking.engine.connect() as observer:   # straight to PostgreSQL, not relayed
            cut["backend"] = backend
            cut["state"] = tuple(observer.execute(sa.text(
                "SELECT state, backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": backend}).one())
        relay.cut()

    sa.event.listen(app.extensions["clinic"].engine, "after_cursor_execute", cut_the_relay)
    client = app.test_client()
    before = pg_booking.counts()
    request = {"patient_id": pg_booking.patient_id, "clinician_id": str(pg_booking.shah),
               "treatment_code": "TPI", "starts_at": "2026-10-21T10:00:00+01:00"}
    key = {"Idempotency-Key": f"lost-{cut_after.split()[-1]}"}

    _assert_unavailable(client.post("/api/v1/appointments", json=request,
                                    headers={**pg_booking.admin, **key}))

    # The cut came mid-transaction: the write was made on the server and not committed.
    assert cut.get("state") == ("idle in transaction", True), cut
    # The server has ended that session (rolling its transaction back): nothing it wrote can
    # still be waiting to commit when the rows are counted.
    deadline = time.monotonic() + 30
    while _backend_alive(pg_booking.engine, cut["backend"]):
        assert time.monotonic() < deadline, "the cut session is still open on the server"
        time.sleep(0.05)
    assert pg_booking.counts() == before

    retried = pg_booking.book(request["starts_at"], headers=key)
    assert retried.status_code == 201, retried.get_json()
    after = pg_booking.counts()
    for table in ("appointments", "outbox", "idempotency_keys"):
        assert after[table] == before[table] + 1, (table, before, after)


def _backend_alive(engine: sa.Engine, pid: int) -> bool:
    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                  {"pid": pid}).scalar_one() > 0


def test_readiness_reports_the_broker_and_the_api_does_not_need_it(pg_booking, app_on,
                                                                     amqp_url):
    database = str(pg_booking.engine.url.render_as_string(hide_password=False))
    up = app_on(database, pg_booking.clock, amqp_url).test_client()
    ready = up.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"] == {"database": True, "schema": True, "broker": True}

    down = app_on(database, pg_booking.clock,
                  f"amqp://guest:guest@127.0.0.1:{_closed_port()}/").test_client()
    ready = down.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"] == {"database": True, "schema": True, "broker": False}
    # Booking still works: the event waits in the outbox for the relay.
    booked = down.post("/api/v1/appointments", headers=pg_booking.admin, json={
        "patient_id": pg_booking.patient_id, "clinician_id": str(pg_booking.shah),
        "treatment_code": "TPI", "starts_at": "2026-10-21T10:00:00+01:00"})
    assert booked.status_code == 201
    assert [e["type"] for e in pg_booking.events()] == ["booking.appointment.booked"]
