"""The notifier with a million messages scheduled: how late due reminders go out, how long a
claim of 100 due messages takes, and how much memory the worker needs.

One notify database serves all three (loading a million rows is the slow part), and a second
holds the 10 k of the claim's baseline:
1. empty table: `clinic worker notify` sends 500 SMS reminders due over 10 s (the baseline
   lateness and memory);
2. 1 M future reminders loaded, and 10 k in the second database: `claim_due` of 100 due SMS
   timed in both, call by call in turns, each claim rolled back;
3. 500 more reminders due over 10 s sent by a fresh worker (lateness and memory with 1 M
   scheduled).
Lateness is `sent_at - due_at` as the scheduler records it (after Twilio answered).
"""
from __future__ import annotations

import time
import uuid
from datetime import timedelta

import sqlalchemy as sa

from bench import notify_stack as stack
from bench.infra import postgres_databases, rabbitmq_vhost
from bench.notify_stats import median, percentile
from bench.report import Goal, Row
from bench.settings import Settings
from services.notify.db import claim_due

DUE_MESSAGES = 500
DUE_WINDOW = timedelta(seconds=10)
SMALL, LARGE = 10_000, 1_000_000
CLAIM = 100
CLAIM_ROUNDS = 30


def lateness_round(env: dict, url: str, twilio, workdir, tag: str) -> dict:
    """A fresh worker sends DUE_MESSAGES reminders due over DUE_WINDOW; their lateness (ms)
    and the worker's memory once they are all sent."""
    with stack.notify_worker(env, workdir / f"worker-{tag}.log") as worker:
        first = stack.now() + timedelta(seconds=1.5)
        stack.add_due_sms(url, stack.spread(first, DUE_MESSAGES, DUE_WINDOW), tag)

        # Polled where it costs the database nothing: FakeTwilio's count, then the partial
        # index of `sending` rows (the last ones are settled just after Twilio answers).
        stack.wait_until(lambda: twilio.arrived() >= DUE_MESSAGES,
                         DUE_WINDOW.total_seconds() + 60, f"{DUE_MESSAGES} reminders sent",
                         interval=0.1)
        stack.wait_until(lambda: not stack.query(
            url, "SELECT 1 FROM messages WHERE status = 'sending' LIMIT 1"), 30,
            "the last sends settled")
        current, peak = stack.rss(worker.pid)
    late = [row[0] * 1000 for row in stack.query(
        url, "SELECT extract(epoch FROM sent_at - due_at)::float8 FROM messages "
             "WHERE dedupe_key LIKE %s AND status = 'sent'", f"bench-{tag}-%")]
    if len(late) != DUE_MESSAGES:
        raise RuntimeError(f"{len(late)} of {DUE_MESSAGES} reminders recorded as sent")
    return {"p50": percentile(late, 0.5), "p99": percentile(late, 0.99), "max": max(late),
            "rss": current, "peak": peak}


def claim_timings(urls: dict[str, str]) -> dict[str, dict]:
    """`claim_due` of CLAIM due SMS in each database, CLAIM_ROUNDS times, the databases taking
    turns call by call so that a slow spell of the machine weighs on all alike; each claim in
    a transaction rolled back so every round finds the same rows; milliseconds. The due rows
    sit a day ahead, before any loaded reminder, and the claim's `now` is moved there, so no
    running worker sees them."""
    at = stack.now() + timedelta(days=1)
    for name, url in urls.items():
        stack.add_due_sms(url, [at] * CLAIM, f"claim-{name}")
    engines = {name: sa.create_engine(url) for name, url in urls.items()}
    timings: dict[str, list[float]] = {name: [] for name in urls}
    try:
        connections = {name: engine.connect() for name, engine in engines.items()}
        for _ in range(CLAIM_ROUNDS + 1):
            for name, connection in connections.items():
                transaction = connection.begin()
                started = time.perf_counter()
                claimed = claim_due(connection, at + timedelta(minutes=1), CLAIM,
                                    timedelta(seconds=60), uuid.uuid4(), channel="sms")
                timings[name].append((time.perf_counter() - started) * 1000)
                transaction.rollback()
                if len(claimed) != CLAIM:
                    raise RuntimeError(f"claimed {len(claimed)} of {CLAIM} due messages")
        for name, connection in connections.items():
            # The claim rows leave again so the next stage starts from the same due set.
            connection.execute(sa.text("DELETE FROM messages WHERE dedupe_key LIKE :key"),
                               {"key": f"bench-claim-{name}-%"})
            connection.commit()
            connection.close()
    finally:
        for engine in engines.values():
            engine.dispose()
    return {name: {"median": median(values[1:]),        # the first warms the caches
                   "p95": percentile(values[1:], 0.95)} for name, values in timings.items()}


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "notify_schedule"
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_databases("notify", "small") as urls, rabbitmq_vhost() as amqp_url, \
            stack.TimedTwilio() as twilio:
        url, small_url = urls["notify"], urls.pop("small")
        stack.migrate(url)
        stack.migrate(small_url)
        env = stack.environment(urls, amqp_url, workdir, twilio)

        empty = lateness_round(env, url, twilio, workdir, "empty")
        stack.load_scheduled(small_url, SMALL, stack.now() + timedelta(days=2), "small")
        load_seconds = stack.load_scheduled(url, LARGE, stack.now() + timedelta(days=2),
                                            "large")
        pending = stack.query(url, "SELECT count(*) FROM messages WHERE status = 'pending'")[0][0]
        claims = claim_timings({"small": small_url, "large": url})
        claim_small, claim_large = claims["small"], claims["large"]
        twilio.reset()
        full = lateness_round(env, url, twilio, workdir, "full")

    return [
        Row("notify_reminder_lateness_p99", full["p99"], "ms", empty["p99"],
            Goal("value", "<", 1000, "ms"),
            note=f"{DUE_MESSAGES} SMS due over {DUE_WINDOW.total_seconds():.0f} s, sent by "
                 f"`clinic worker notify` to FakeTwilio with {pending:,} pending rows; p50 "
                 f"{full['p50']:.0f} ms, max {full['max']:.0f} ms; baseline: the same with "
                 f"no other rows (p50 {empty['p50']:.0f} ms); 1 M rows loaded in "
                 f"{load_seconds:.0f} s (setup)"),
        Row("notify_claim_100_1m_vs_10k", claim_large["median"], "ms", claim_small["median"],
            Goal("ratio", "<", 1.5),
            note=f"median of {CLAIM_ROUNDS} `claim_due` of {CLAIM} due SMS, rolled back; p95 "
                 f"{claim_large['p95']:.1f} ms with 1 M, {claim_small['p95']:.1f} ms with "
                 f"10 k (baseline); goal ratio ≤ 1.5"),
        Row("notify_worker_rss_1m", full["peak"], "MB", empty["peak"],
            Goal("value", "<", 200, "MB"),
            note=f"peak RSS (VmHWM) of `clinic worker notify` after sending the reminders with "
                 f"1 M scheduled (now {full['rss']:.0f} MB); baseline: the same worker with "
                 "an empty table"),
    ]
