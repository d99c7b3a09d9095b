"""Booking to confirmation SMS at light load, as in production: `clinic serve booking`,
`clinic worker booking` and `clinic worker notify` as processes on PostgreSQL and RabbitMQ,
the notifier sending through the twilio SDK to FakeTwilio and by SMTP to aiosmtpd.

Fifty appointments are booked one every 100 ms, each for a different patient; a booking's
latency runs from its 201 (the client has the answer) to FakeTwilio receiving the SMS to that
patient. Between the two: booking's outbox relay, RabbitMQ, notify's consumer and handler
transaction, the scheduler's wake-up, claim and send.

Baseline, the transport floor of the same path with no database: a pika publish with a
confirm to a quorum queue bound to `clinic.events`, a pika consumer in another thread, and a
POST of the SMS form to FakeTwilio from that consumer; timed from the publish to FakeTwilio.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pika
import requests

from bench import notify_stack as stack
from bench import processes
from bench.booking import seed_clinic
from bench.infra import postgres_databases, rabbitmq_vhost
from bench.notify_stats import percentile
from bench.report import Goal, Row
from bench.settings import Settings
from shared.messaging import EXCHANGE
from tests.fakes.smtp import FakeSmtp

BOOKINGS = 50
SPACING = 0.1
FLOOR_QUEUE = "clinic.bench-floor"


def _seed(env: dict) -> tuple[str, list[tuple[str, str]]]:
    """The demo treatments, one clinician working 07:00-21:00 every day, BOOKINGS + 1
    patients who agreed to SMS and email: (clinician id, [(patient id, phone)])."""
    phones = [f"+4474008{n:05d}" for n in range(BOOKINGS + 1)]
    [clinician], patients, _ = seed_clinic(env, 1, [{
        "given_name": "Bench", "family_name": f"Patient {n}",
        "date_of_birth": date(1970, 1 + n % 12, 1 + n % 28), "phone": phone,
        "email": f"bench-e2e{n}@example.org",
        "address": {"line1": f"{n} Bench Street", "line2": None, "city": "Bristol",
                    "postcode": "BS1 5TR"},
        "gp": None, "consent": {"sms": True, "email": True}} for n, phone in enumerate(phones)])
    return clinician, list(zip(patients, phones, strict=True))


def _slots(count: int, tz: ZoneInfo) -> list[datetime]:
    """Half-hour starts inside the clinician's hours from the day after tomorrow on."""
    day = datetime.now(tz).date() + timedelta(days=2)
    starts = []
    while len(starts) < count:
        starts += [datetime(day.year, day.month, day.day, 7 + m // 60, m % 60, tzinfo=tz)
                   for m in range(0, 14 * 60, 30)]
        day += timedelta(days=1)
    return starts[:count]


def _latencies(sent: dict[str, float], twilio: stack.TimedTwilio, what: str) -> list[float]:
    """For each phone, ms from its start instant to its first SMS at FakeTwilio."""
    def arrived() -> dict[str, float]:
        first: dict[str, float] = {}
        for phone, at in list(twilio.arrivals):
            first.setdefault(phone, at)
        return first if set(sent) <= set(first) else {}
    first = stack.wait_until(arrived, 60, f"{len(sent)} {what} SMS at FakeTwilio")
    return [(first[phone] - started) * 1000 for phone, started in sent.items()]


def booking_to_sms(base_url: str, token: str, clinician: str,
                   patients: list[tuple[str, str]], twilio: stack.TimedTwilio, tz: ZoneInfo
                   ) -> tuple[list[float], list[float]]:
    """(201-to-SMS ms, POST round trip ms) of BOOKINGS bookings, one every SPACING s, after
    one warm-up booking that is not counted."""
    starts = _slots(len(patients), tz)
    sent: dict[str, float] = {}
    round_trips = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"

        def book(index: int) -> float:
            patient, _ = patients[index]
            began = time.monotonic()
            response = session.post(f"{base_url}/api/v1/appointments", timeout=15, json={
                "patient_id": patient, "clinician_id": clinician, "treatment_code": "TPI",
                "starts_at": starts[index].isoformat()})
            answered = time.monotonic()
            if response.status_code != 201:
                raise RuntimeError(f"booking answered {response.status_code}: "
                                   f"{response.text[:300]}")
            round_trips.append((answered - began) * 1000)
            return answered

        warm = {patients[-1][1]: book(len(patients) - 1)}
        _latencies(warm, twilio, "warm-up")
        round_trips.clear()
        first = time.monotonic()
        for index in range(BOOKINGS):
            time.sleep(max(0.0, first + index * SPACING - time.monotonic()))
            sent[patients[index][1]] = book(index)
    return _latencies(sent, twilio, "confirmation"), round_trips


def transport_floor(amqp_url: str, twilio: stack.TimedTwilio, forms: list[dict]) -> list[float]:
    """Publish (confirmed) -> quorum queue -> consumer thread -> POST to FakeTwilio, one
    message every SPACING s; ms from each publish to its arrival at FakeTwilio."""
    publisher = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = publisher.channel()
    channel.exchange_declare(EXCHANGE, "topic", durable=True)
    channel.queue_declare(FLOOR_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(FLOOR_QUEUE, EXCHANGE, "bench.floor")
    channel.confirm_delivery()
    stop = threading.Event()
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
            session = requests.Session()
            session.auth = (stack.ACCOUNT_SID, stack.AUTH_TOKEN)
            url = twilio.base_url + twilio.messages_path

            def on_message(ch, method, _properties, body) -> None:
                session.post(url, data=json.loads(body), timeout=10).raise_for_status()
                ch.basic_ack(method.delivery_tag)

            consuming = connection.channel()
            consuming.basic_qos(prefetch_count=50)
            consuming.basic_consume(FLOOR_QUEUE, on_message)
            while not stop.is_set():
                connection.process_data_events(time_limit=0.05)
            session.close()
            connection.close()
        except BaseException as error:          # reported by the main thread
            failures.append(error)

    consumer = threading.Thread(target=consume, name="bench-floor-consumer")
    consumer.start()
    sent: dict[str, float] = {}
    try:
        first = time.monotonic()
        for index, form in enumerate(forms):
            time.sleep(max(0.0, first + index * SPACING - time.monotonic()))
            sent[form["To"]] = time.monotonic()
            channel.basic_publish(EXCHANGE, "bench.floor", json.dumps(form).encode(),
                                  pika.BasicProperties(delivery_mode=2))
        if failures:
            raise RuntimeError(f"floor consumer failed: {failures[0]!r}")
        return _latencies(sent, twilio, "transport floor")
    finally:
        stop.set()
        consumer.join(timeout=30)
        publisher.close()


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "notify_e2e"
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_databases("booking", "forms", "notify") as urls, \
            rabbitmq_vhost() as amqp_url, stack.TimedTwilio() as twilio, FakeSmtp() as smtp:
        env = stack.environment(urls, amqp_url, workdir, twilio, EMAIL_BACKEND="smtp",
                                SMTP_HOST=smtp.host, SMTP_PORT=str(smtp.port),
                                WEB_CONCURRENCY="2", HOME=str(workdir))
        tz = ZoneInfo(env.get("CLINIC_TIMEZONE", "Europe/London"))
        processes.run(processes.clinic_command("db", "upgrade"), env)
        token = processes.run(processes.clinic_command("create-token", "bench"),
                              env).strip().splitlines()[-1]
        clinician, patients = _seed(env)

        forms = [{"To": f"+4474007{n:05d}", "From": stack.CLINIC_NUMBER,
                  "Body": "Riverside Clinic: your appointment is booked.",
                  "StatusCallback": env["PUBLIC_BASE_URL_NOTIFY"] + "/webhooks/twilio/status"}
                 for n in range(BOOKINGS)]
        floor = transport_floor(amqp_url, twilio, forms)

        port = processes.free_port()
        with processes.server(processes.clinic_command("serve", "booking", "--port", str(port)),
                              port, env, workdir / "booking.log"), \
                stack.clinic_process(["worker", "booking"], env, workdir / "worker-booking.log"), \
                stack.notify_worker(env, workdir / "worker-notify.log"):
            latencies, round_trips = booking_to_sms(f"http://127.0.0.1:{port}", token,
                                                    clinician, patients, twilio, tz)
    p95 = percentile(latencies, 0.95)
    print(f"bench: notify_e2e: 201 -> SMS p50 {percentile(latencies, 0.5):.0f} ms, "
          f"p95 {p95:.0f} ms; floor p95 {percentile(floor, 0.95):.1f} ms", file=sys.stderr)
    return [
        Row("notify_booking_to_sms_p95", p95, "ms", percentile(floor, 0.95),
            Goal("value", "<", 1000, "ms"),
            note=f"{BOOKINGS} bookings one every {SPACING * 1000:.0f} ms through clinic serve "
                 f"booking, clinic worker booking and clinic worker notify; from the 201 to "
                 f"FakeTwilio; p50 {percentile(latencies, 0.5):.0f} ms, max "
                 f"{max(latencies):.0f} ms; POST p95 {percentile(round_trips, 0.95):.0f} ms; "
                 f"baseline: pika publish (confirmed) -> quorum queue -> consumer -> POST to "
                 f"FakeTwilio, p95 (p50 {percentile(floor, 0.5):.1f} ms)"),
    ]
