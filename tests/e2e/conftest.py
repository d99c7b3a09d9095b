"""The `clinic` commands started as processes, as in production, driven over HTTP and AMQP.

Each process runs in its own session (process group) with its output in a file under the
test's tmp_path. Teardown ends every group; a failing test shows the tail of each log. The
broker side is watched by pika, an independent client: a durable queue bound to every routing
key of `clinic.events`, declared before anything is published, so it keeps every event even
across a broker restart.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.stack import Booking, BookingApi, Clinic, EventWatcher


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing e2e test carries the tail of every process log it started."""
    outcome = yield
    report = outcome.get_result()
    clinic = item.funcargs.get("clinic") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(clinic, Clinic) and clinic.processes:
        report.sections.append(("clinic process logs", clinic.log_report()))


@pytest.fixture
def clinic_env(postgres_url, amqp_url, tmp_path) -> dict[str, str]:
    """Only the contract's variables (plus what any process needs to run)."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # gunicorn keeps its control socket under $HOME: one per test, not one per machine.
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "AMQP_URL": amqp_url,
        "BOOKING_DATABASE_URL": postgres_url,
        # create-token writes to every service's database: the others on SQLite, here.
        "FORMS_DATABASE_URL": f"sqlite:///{tmp_path / 'forms.sqlite3'}",
        "NOTIFY_DATABASE_URL": f"sqlite:///{tmp_path / 'notify.sqlite3'}",
        "SECRET_KEY": "e2e-secret-key-not-for-production",
        "PHONE_WEBHOOK_SECRET": "e2e-phone-secret",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "WEB_CONCURRENCY": "2",
    }


@pytest.fixture
def clinic(clinic_env, tmp_path) -> Iterator[Clinic]:
    runner = Clinic(clinic_env, tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


@pytest.fixture
def booking(clinic, postgres_url) -> Iterator[Booking]:
    clinic.run("db", "upgrade")
    clinic.run("seed-demo")
    token = clinic.run("create-token", "e2e-reception").strip().splitlines()[-1]
    assert token.startswith("ct_")
    server = clinic.serve("booking")
    server.wait_until_ready()
    api = BookingApi(server.base_url, token)
    try:
        clinician = api.add_clinician()
        yield Booking(clinic, server, api, token, clinician["id"],
                      postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    finally:
        api.close()


@pytest.fixture
def watcher(amqp_url) -> Iterator[EventWatcher]:
    watching = EventWatcher(amqp_url)
    try:
        yield watching
    finally:
        watching.close()


