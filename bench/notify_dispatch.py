"""SMS dispatch: `clinic worker notify` sending reminders that are all due to FakeTwilio,
against raw HTTP POSTs of the same form bodies to the same FakeTwilio; and the same worker
under SMS_MAX_PER_SECOND=100.

The worker and the baseline take turns (ROUNDS of 200 SMS each), so that a slow spell of
the machine weighs on both. Rates are taken where the messages arrive: (n - 1) / (last
arrival - first arrival) at FakeTwilio, so start-up is not counted for either side.
FakeTwilio runs in this process; the worker and the baseline's client each in a process of
their own, as a notifier and Twilio never share an interpreter (an earlier version ran the
scheduler in a thread here, where its send lanes fought FakeTwilio's threads for one GIL).
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import requests

from bench import notify_stack as stack
from bench.infra import postgres_databases
from bench.notify_stats import steady_rate
from bench.report import Goal, Row
from bench.settings import Settings

REPOSITORY = Path(__file__).resolve().parent.parent
UNCAPPED = 600
ROUNDS = 3          # the uncapped worker and the raw baseline take turns, 200 SMS each
CAP = 100
CAPPED = 300


def scheduler_rate(env: dict, twilio: stack.TimedTwilio, url: str, count: int, tag: str,
                   workdir: Path) -> tuple[list[float], list[dict]]:
    """`count` SMS due a second ago, sent by `clinic worker notify` in its own process (as
    in production: never in one interpreter with the provider it calls); the instants they
    reached FakeTwilio, and the form bodies it received (the baseline replays them)."""
    twilio.reset()
    with stack.notify_worker(env, workdir / f"worker-{tag}.log"):
        stack.add_due_sms(url, [stack.now() - timedelta(seconds=1)] * count, tag)
        stack.wait_until(lambda: twilio.arrived() >= count, 120, f"{count} SMS at FakeTwilio")
    if twilio.arrived() != count:
        raise RuntimeError(f"{twilio.arrived()} SMS arrived for {count} due")
    forms = [request["form"] for request in twilio.requests if request["method"] == "POST"]
    return [at for _, at in twilio.arrivals], forms


def raw_rate(twilio: stack.TimedTwilio, forms: list[dict], workdir: Path) -> list[float]:
    """The same form bodies POSTed one after another on one keep-alive `requests` session
    (the HTTP library the twilio SDK uses), from a process of their own like the worker's, so
    the gap is our work and the SDK's."""
    twilio.reset()
    bodies = workdir / "forms.json"
    bodies.write_text(json.dumps(forms))
    subprocess.run([sys.executable, "-m", "bench.notify_dispatch", "--raw",
                    twilio.base_url + twilio.messages_path, str(bodies)],
                   check=True, timeout=120, cwd=REPOSITORY)
    return [at for _, at in twilio.arrivals]


def post_all(url: str, bodies: Path) -> None:
    with requests.Session() as session:
        session.auth = (stack.ACCOUNT_SID, stack.AUTH_TOKEN)
        for form in json.loads(bodies.read_text()):
            response = session.post(url, data=form, timeout=10)
            if response.status_code != 201:
                raise RuntimeError(f"FakeTwilio answered {response.status_code}: "
                                   f"{response.text[:200]}")


def pooled_rate(rounds: list[list[float]]) -> float:
    """Arrivals per second over several rounds: their intervals over their spans, so the
    pauses between rounds do not count."""
    intervals = sum(len(instants) - 1 for instants in rounds)
    seconds = sum(max(instants) - min(instants) for instants in rounds)
    return intervals / seconds


def measure(settings: Settings) -> list[Row]:
    workdir = settings.workdir / "notify_dispatch"
    workdir.mkdir(parents=True, exist_ok=True)
    with postgres_databases("notify") as urls, stack.TimedTwilio() as twilio:
        url = urls["notify"]
        stack.migrate(url)
        env = stack.environment(urls, "memory://", workdir, twilio)
        # In turns, so that a slow spell of the machine weighs on both sides alike.
        scheduled, raw_rounds = [], []
        for n in range(ROUNDS):
            arrivals, forms = scheduler_rate(env, twilio, url, UNCAPPED // ROUNDS,
                                             f"uncapped-{n}", workdir)
            scheduled.append(arrivals)
            raw_rounds.append(raw_rate(twilio, forms, workdir))
        uncapped, raw = pooled_rate(scheduled), pooled_rate(raw_rounds)
        arrivals, _ = scheduler_rate({**env, "SMS_MAX_PER_SECOND": str(CAP)}, twilio, url,
                                     CAPPED, "capped", workdir)
        capped = steady_rate(arrivals)

    return [
        Row("notify_dispatch_vs_raw_http", uncapped, "SMS/s", raw, Goal("ratio", ">=", 0.5),
            note=f"{UNCAPPED} due SMS sent by `clinic worker notify` (SMS_MAX_PER_SECOND "
                 f"100000) to FakeTwilio in {ROUNDS} rounds, each followed by the baseline: "
                 "the same form bodies POSTed from one thread of another process on a "
                 "keep-alive requests session"),
        Row("notify_dispatch_capped_100", capped, "SMS/s", float(CAP), Goal("ratio", ">=", 0.95),
            note=f"{CAPPED} due SMS under SMS_MAX_PER_SECOND={CAP}; baseline: the cap"),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--raw":
        sys.exit("usage: python -m bench.notify_dispatch --raw MESSAGES_URL FORMS_JSON")
    post_all(sys.argv[2], Path(sys.argv[3]))
