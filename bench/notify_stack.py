"""What the notifier's measurements share: a migrated notify database with scheduled rows
loaded in bulk, a FakeTwilio that notes when each SMS arrived, `clinic worker notify` as a
process, and an in-process notifier wired the way `bootstrap` wires it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench import processes
from bench.notify_stats import rss_mb
from shared.config import Config
from shared.db import make_engine
from shared.logging import configure_logging
from shared.migrations import upgrade
from tests.fakes.twilio_api import FakeTwilio, _Handler

CLINIC_NUMBER = "+441632960001"
ACCOUNT_SID, AUTH_TOKEN = "AC" + "be7c" * 8, "bench-twilio-auth-token"


def reminder_context() -> str:
    """What a stored reminder carries (services/notify/model/policy.py), as the handlers store
    it, for an appointment well after every bench reminder is due: a fixed date would, once
    past, have every reminder dropped as too late to be of use."""
    starts_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=60)
    return json.dumps({"treatment_name": "Ultrasound-guided trigger point injection",
                       "clinician_name": "Dr Amira Shah", "starts_at": starts_at.isoformat()})


def libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://) as psycopg takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine, "notify")
    finally:
        engine.dispose()


def load_scheduled(url: str, count: int, first_due: datetime, tag: str) -> float:
    """Setup, not measured: `count` pending reminders due from `first_due` on, one every
    2 seconds (1 M rows span about 23 days), half SMS, half email, each for its own
    appointment and patient, written by one INSERT ... SELECT generate_series and then
    analysed (as autovacuum would soon do in production). The seconds it took.

    The table's indexes and keys are dropped for the load and built again afterwards (a
    sorted build is several times faster than a million random inserts into five b-trees);
    the schema is the same afterwards."""
    started = time.monotonic()
    with psycopg.connect(libpq(url)) as connection:
        connection.execute("SET synchronous_commit = off")
        connection.execute("SET maintenance_work_mem = '256MB'")
        keys = connection.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'messages'::regclass AND contype IN ('p', 'u')").fetchall()
        for name, _ in keys:
            connection.execute(f'ALTER TABLE messages DROP CONSTRAINT "{name}"')
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messages'").fetchall()
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        connection.execute("""
            INSERT INTO messages (id, dedupe_key, kind, channel, to_address, appointment_id,
                                  patient_id, context, due_at, status, attempts, created_at,
                                  updated_at)
            SELECT gen_random_uuid(), %(tag)s || n || ':reminder:' ||
                       CASE WHEN n %% 2 = 0 THEN 'sms' ELSE 'email' END,
                   'reminder', CASE WHEN n %% 2 = 0 THEN 'sms' ELSE 'email' END,
                   CASE WHEN n %% 2 = 0 THEN '+4474' || lpad((n %% 100000000)::text, 8, '0')
                        ELSE 'bench' || n || '@example.org' END,
                   md5(%(tag)s || 'a' || n)::uuid::text, md5(%(tag)s || 'p' || n)::uuid::text,
                   %(context)s, %(first)s + n * interval '2 seconds', 'pending', 0, now(), now()
            FROM generate_series(1, %(count)s) AS n
        """, {"tag": f"bench-{tag}:", "context": reminder_context(), "first": first_due,
              "count": count})
        for name, definition in keys:
            connection.execute(f'ALTER TABLE messages ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            connection.execute(definition)
        connection.commit()
    with psycopg.connect(libpq(url), autocommit=True) as connection:
        connection.execute("ANALYZE messages")
    return time.monotonic() - started


def add_due_sms(url: str, dues: list[datetime], tag: str) -> None:
    """SMS reminders due at the given instants, committed with the handlers' wake-up."""
    context = reminder_context()
    with psycopg.connect(libpq(url)) as connection:
        with connection.cursor() as cursor:
            cursor.executemany("""
                INSERT INTO messages (id, dedupe_key, kind, channel, to_address, appointment_id,
                                      patient_id, context, due_at, status, attempts,
                                      created_at, updated_at)
                VALUES (gen_random_uuid(), %(key)s, 'reminder', 'sms', %(to)s, %(key)s,
                        %(key)s, %(context)s, %(due)s, 'pending', 0, now(), now())
            """, [{"key": f"bench-{tag}-{n}", "to": f"+44750{n % 10_000_000:07d}",
                   "context": context, "due": due} for n, due in enumerate(dues)])
        connection.execute("SELECT pg_notify('clinic_notify_due', '')")


def query(url: str, sql: str, *params) -> list[tuple]:
    with psycopg.connect(libpq(url), autocommit=True) as connection:
        return [tuple(row) for row in connection.execute(sql, params)]


def now() -> datetime:
    return datetime.now(UTC)


class _PromptHandler(_Handler):
    # FakeTwilio's handler writes its headers and its body in two sends; with Nagle's algorithm
    # on, the body waits for the client's delayed ACK: about 40 ms per request on loopback,
    # which real Twilio does not add and which would swamp every figure here.
    disable_nagle_algorithm = True


class TimedTwilio(FakeTwilio):
    """FakeTwilio that notes, per created message, its `To` and the monotonic instant the
    request reached it (before its answer went back), and answers without Nagle's delay."""

    def __init__(self, **kwargs):
        super().__init__(ACCOUNT_SID, AUTH_TOKEN, **kwargs)
        self.arrivals: list[tuple[str, float]] = []
        self._arrivals_lock = threading.Lock()

    def start(self) -> TimedTwilio:
        super().start()
        self._server.RequestHandlerClass = _PromptHandler
        return self

    def _create(self, form: dict):
        arrived = time.monotonic()
        answer = super()._create(form)
        if answer[0] == 201:
            with self._arrivals_lock:
                self.arrivals.append((form.get("To", ""), arrived))
        return answer

    def arrived(self) -> int:
        with self._arrivals_lock:
            return len(self.arrivals)

    def reset(self) -> None:
        """Forget what arrived (memory stays flat across rounds of a measurement)."""
        with self._lock, self._arrivals_lock:
            self._messages.clear()
            self._requests.clear()
            self.arrivals.clear()


def environment(urls: dict[str, str], amqp_url: str, workdir: Path, twilio: FakeTwilio,
                **overrides: str) -> dict[str, str]:
    """The contract's variables for a notifier sending through FakeTwilio."""
    return {
        **os.environ,
        "AMQP_URL": amqp_url,
        "BOOKING_DATABASE_URL": urls.get("booking", f"sqlite:///{workdir / 'booking.db'}"),
        "FORMS_DATABASE_URL": urls.get("forms", f"sqlite:///{workdir / 'forms.db'}"),
        "NOTIFY_DATABASE_URL": urls["notify"],
        "SECRET_KEY": "bench-only-secret",
        "PHONE_WEBHOOK_SECRET": "bench-only-phone-secret",
        "CLINIC_VAR_DIR": str(workdir / "var"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "PUBLIC_BASE_URL_NOTIFY": "http://127.0.0.1:9",
        "SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": CLINIC_NUMBER,
        "TWILIO_API_BASE_URL": twilio.base_url,
        "SMS_MAX_PER_SECOND": "100000",
        # Quiet hours off: these figures measure sending, and a bench run after 21:00 clinic
        # time would otherwise see every due reminder held until the morning (a timeout).
        "QUIET_HOURS": "",
        "EMAIL_BACKEND": "console", "EMAIL_FROM": "appointments@clinic.example",
        **overrides,
    }


def config(env: dict[str, str]) -> Config:
    return Config.from_env(env)


def _scheduler_listening(url: str) -> bool:
    """The scheduler has done its first rounds and waits on its LISTEN connection."""
    database = libpq(url).rsplit("/", 1)[1]
    return bool(query(url, "SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                           "AND query LIKE 'LISTEN%%'", database))


@contextlib.contextmanager
def clinic_process(args: list[str], env: dict[str, str], log: Path
                   ) -> Iterator[subprocess.Popen]:
    """`clinic <args>` in its own process group, output to `log`, always stopped."""
    with log.open("wb") as out:
        process = subprocess.Popen(processes.clinic_command(*args), env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def notify_worker(env: dict[str, str], log: Path, timeout: float = 60.0
                  ) -> Iterator[subprocess.Popen]:
    """`clinic worker notify` (consumer, relay and scheduler), yielded once its scheduler
    idles on LISTEN."""
    with clinic_process(["worker", "notify"], env, log) as process:
        deadline = time.monotonic() + timeout
        while not _scheduler_listening(env["NOTIFY_DATABASE_URL"]):
            if process.poll() is not None:
                raise RuntimeError(f"clinic worker notify exited with {process.returncode}:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("clinic worker notify: scheduler not listening after "
                                   f"{timeout:.0f} s")
            time.sleep(0.1)
        yield process


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """This process's structured logs at INFO (production's level) into a file while a
    notifier runs in it; back to warnings on stderr afterwards."""
    with path.open("w") as out:
        configure_logging("INFO", stream=out)
        try:
            yield
        finally:
            configure_logging("WARNING")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL if it has not gone in 30 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def rss(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return rss_mb(status, "VmRSS"), rss_mb(status, "VmHWM")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def spread(start: datetime, count: int, over: timedelta) -> list[datetime]:
    return [start + over * (n / count) for n in range(count)]
