"""The pieces the e2e fixtures and tests share: processes, HTTP client, AMQP watcher."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pika
import psycopg
import requests

CLINIC = Path(sys.executable).with_name("clinic")
EXCHANGE = "clinic.events"
LONDON = ZoneInfo("Europe/London")
LOG_TAIL = 6000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll until `predicate` is truthy; its value, or an AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ClinicProcess:
    """One `clinic ...` process in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path):
        self.name, self.args = name, args
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([str(CLINIC), *args], env=env, cwd=cwd,
                                      stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group: no clean-up, as when the host loses the process."""
        self._signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, grace: float = 8.0) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.popen.wait(timeout=10)
        # A gunicorn worker may outlive its master by a moment: end the rest of the group.
        self._signal(signal.SIGKILL)
        self._log.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str) -> list[dict]:
        """The structured log lines (JSON) whose `event` is `event`."""
        found = []
        for line in self.log().splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                found.append(record)
        return found


@dataclass
class Server:
    process: ClinicProcess
    base_url: str

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base_url + path, timeout=10, **kwargs)

    def wait_until_answering(self, timeout: float = 30.0) -> None:
        def answering():
            if not self.process.alive():
                raise AssertionError(f"{self.process.name} exited: {self.process.popen.returncode}")
            try:
                return self.get("/healthz").status_code == 200
            except requests.ConnectionError:
                return False
        wait_until(answering, timeout, f"{self.process.name} to answer /healthz", interval=0.1)

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        self.wait_until_answering(timeout)
        wait_until(lambda: self.get("/readyz").status_code == 200, timeout,
                   f"{self.process.name} /readyz 200", interval=0.2)


class Clinic:
    """The `clinic` command for one test: its environment, its processes and their logs."""

    def __init__(self, env: dict[str, str], workdir: Path):
        self.env, self.workdir = env, workdir
        self.processes: list[ClinicProcess] = []

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run([str(CLINIC), *args], env=env or self.env, cwd=self.workdir,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"clinic {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ClinicProcess:
        process = ClinicProcess(name, list(args), env or self.env, self.workdir)
        self.processes.append(process)
        return process

    def serve(self, service: str = "booking", env: dict[str, str] | None = None) -> Server:
        port = free_port()
        process = self.start(f"serve-{service}-{port}", "serve", service, "--port", str(port),
                             env=env)
        return Server(process, f"http://127.0.0.1:{port}")

    def worker(self, service: str = "booking", name: str | None = None) -> ClinicProcess:
        count = sum(p.args[:1] == ["worker"] for p in self.processes)
        return self.start(name or f"worker-{service}-{count + 1}", "worker", service)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.alive() or not process._log.closed:
                process.stop()

    def logs_containing(self, secrets: Iterable[str]) -> list[str]:
        """`process: secret` for each secret found in a process's log, whatever its case, as
        written or as a JSON string carries it (escaped quotes, newlines, non-ASCII letters)."""
        found = []
        for process in self.processes:
            text = process.log().casefold()
            for secret in secrets:
                forms = {secret, json.dumps(secret)[1:-1],
                         json.dumps(secret, ensure_ascii=False)[1:-1]}
                if any(form.casefold() in text for form in forms):
                    found.append(f"{process.name}: {secret!r}")
        return found

    def log_report(self) -> str:
        parts = []
        for process in self.processes:
            text = process.log()
            parts.append(f"----- {process.name} (clinic {' '.join(process.args)}), "
                         f"exit {process.popen.returncode} -----\n{text[-LOG_TAIL:]}")
        return "\n".join(parts)


class BookingApi:
    """Reception's side of booking over HTTP, asserting the contract's status codes."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, expect: int, **kwargs) -> dict:
        response = self.session.request(method, self.base_url + path, timeout=15, **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def register_patient(self, n: int = 0) -> dict:
        return self._call("POST", "/patients", 201, json={
            "given_name": f"Eleanor{n}", "family_name": "Whitcombe",
            "date_of_birth": "1961-03-14", "phone": f"07400 2{n:05d}",
            "email": f"eleanor{n}@example.org",
            "address": {"line1": "7 Lamplighters Lane", "line2": None, "city": "Bristol",
                        "postcode": "BS8 1QU"},
            "gp": None, "consent": {"sms": True, "email": True},
        })

    def add_clinician(self) -> dict:
        """Works 07:00-21:00 every day, so any test finds as many slots as it needs."""
        hours = [{"weekday": day, "start": "07:00", "end": "21:00"} for day in range(7)]
        return self._call("POST", "/clinicians", 201,
                          json={"name": "Dr Rowan Hale", "working_hours": hours})

    def book(self, patient_id: str, clinician_id: str, starts_at: datetime) -> dict:
        return self._call("POST", "/appointments", 201, json={
            "patient_id": patient_id, "clinician_id": clinician_id, "treatment_code": "TPI",
            "starts_at": starts_at.isoformat()})

    def reschedule(self, appointment_id: str, starts_at: datetime) -> dict:
        return self._call("POST", f"/appointments/{appointment_id}/reschedule", 200,
                          json={"starts_at": starts_at.isoformat()})

    def cancel(self, appointment_id: str, reason: str = "Patient unwell") -> dict:
        return self._call("POST", f"/appointments/{appointment_id}/cancel", 200,
                          json={"reason": reason})

    def appointment(self, appointment_id: str) -> dict:
        return self._call("GET", f"/appointments/{appointment_id}", 200)


def personal_details(patient: dict) -> list[str]:
    """What issue 3 keeps out of every log, for a patient as booking answers
    `register_patient`: names, date of birth, address, and the phone in each way it is
    written (as reception typed it, E.164, and its bare digits)."""
    phone = patient["phone"]
    assert phone.startswith("+44"), phone
    national = "0" + phone[3:]
    address = patient["address"]
    return [patient["given_name"], patient["family_name"], patient["date_of_birth"],
            address["line1"], address["postcode"], address["postcode"].replace(" ", ""),
            phone, national, f"{national[:5]} {national[5:]}", phone[3:]]


def slots(count: int, first_day: date | None = None) -> list[datetime]:
    """`count` distinct half-hour starts inside the e2e clinician's hours, from the day after
    tomorrow (clinic time) on, so none is in the past whatever the hour."""
    day = first_day or datetime.now(LONDON).date() + timedelta(days=2)
    starts: list[datetime] = []
    while len(starts) < count:
        for minutes in range(7 * 60, 21 * 60, 30):
            starts.append(datetime.combine(day, clock_time(minutes // 60, minutes % 60), LONDON))
        day += timedelta(days=1)
    return starts[:count]


@dataclass
class Booking:
    """booking migrated, seeded and serving over gunicorn; the worker is each test's to start."""

    clinic: Clinic
    server: Server
    api: BookingApi
    token: str
    clinician_id: str
    database_url: str

    def outbox(self) -> list[tuple[str, str, str]]:
        """Every committed event as (event_id, type, subject), in outbox (commit) order."""
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            return [tuple(row) for row in connection.execute(
                "SELECT event_id, type, subject FROM outbox ORDER BY id")]

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            return [tuple(row) for row in connection.execute(sql, params)]


@dataclass(frozen=True)
class Received:
    routing_key: str
    content_type: str | None
    message_id: str | None
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.json()["id"]


class EventWatcher:
    """What an independent AMQP client sees on `clinic.events`."""

    def __init__(self, amqp_url: str, queue: str = "e2e.watch"):
        self.url, self.queue = amqp_url, queue
        self.received: list[Received] = []
        self._connection: pika.BlockingConnection | None = None
        self.connect()

    def connect(self) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = self._connection.channel()
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.queue_declare(self.queue, durable=True)
        channel.queue_bind(self.queue, EXCHANGE, "#")
        channel.basic_consume(self.queue, self._on_message, auto_ack=True)

    def _on_message(self, _channel, method, properties, body: bytes) -> None:
        self.received.append(Received(method.routing_key, properties.content_type,
                                      properties.message_id, body))

    def consumer_count(self, queue: str) -> int:
        channel = self._connection.channel()
        try:
            return channel.queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0  # not declared yet
        finally:
            if channel.is_open:
                channel.close()

    def publish(self, routing_key: str, body: bytes) -> None:
        self._connection.channel().basic_publish(
            EXCHANGE, routing_key, body, pika.BasicProperties(delivery_mode=2))

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            connection.close()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float,
                 what: str, interval: float = 0.05) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"{len(self.received)} messages received")
            self._connection.process_data_events(time_limit=interval)
        return self.received

    def wait_for_ids(self, event_ids: set[str], timeout: float) -> list[Received]:
        return self.wait_for(lambda got: event_ids <= {r.event_id for r in got}, timeout,
                             f"{len(event_ids)} events")

    def settle(self, seconds: float) -> list[Received]:
        """Keep listening a little longer: anything that was going to arrive twice has."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=0.05)
        return self.received


def utc_rfc3339(value: str) -> datetime:
    assert value.endswith("Z") or value.endswith("+00:00"), f"time not in UTC: {value}"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    return parsed.astimezone(UTC)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=90,
                   check=True)


@contextmanager
def broker_stopped() -> Iterator[None]:
    """RabbitMQ's application stopped (the node stays up, durable state kept) and always
    started again, even when the test fails: other suites share this broker."""
    try:
        rabbitmqctl("stop_app")  # inside: a stop that times out half-way is still undone
        yield
    finally:
        try:
            rabbitmqctl("start_app")
        finally:
            rabbitmqctl("await_startup")


def first_arrivals(received: list[Received]) -> list[Received]:
    seen: set[str] = set()
    firsts = []
    for message in received:
        if message.event_id not in seen:
            seen.add(message.event_id)
            firsts.append(message)
    return firsts


def assert_commit_order_per_subject(received: list[Received],
                                    committed: list[tuple[str, str, str]]) -> None:
    """For each appointment, its events arrived (first copies) in the order they committed."""
    arrived: dict[str, list[str]] = {}
    for message in first_arrivals(received):
        arrived.setdefault(message.json()["subject"], []).append(message.event_id)
    expected: dict[str, list[str]] = {}
    for event_id, _type, subject in committed:
        expected.setdefault(subject, []).append(event_id)
    for subject, event_ids in expected.items():
        assert arrived.get(subject) == event_ids, f"events of {subject} out of commit order"


def reply_event(phone: str, intent: str, patient_id: str | None = None) -> dict:
    """`notify.reply.received` as notify would publish it, written out by hand."""
    return {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": "/notify",
        "type": "notify.reply.received", "subject": patient_id or phone,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {"patient_id": patient_id, "phone": phone, "intent": intent, "score": None,
                 "message_sid": f"SM{uuid.uuid4().hex}"},
    }
