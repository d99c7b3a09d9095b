"""`make run`'s clinic: `clinic dev` on the embedded defaults (SQLite under var/, the
in-process broker, console SMS and email) in a fresh directory, as a newcomer runs it. A booking
made over HTTP reaches the notifier and its confirmation is printed; SIGTERM (or Ctrl-C) stops
the whole clinic within seconds."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from shared.config import DEV_PORTS
from tests.e2e.stack import BookingApi, Clinic, Server, slots, wait_until


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def embedded(tmp_path):
    busy = [port for port in DEV_PORTS.values() if not _port_is_free(port)]
    assert not busy, f"`clinic dev` needs ports {sorted(DEV_PORTS.values())}; taken: {busy}"
    # Only what any process needs: no database or broker URL, so the defaults apply.
    clinic = Clinic({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
                     "LANG": "C.UTF-8"}, tmp_path)
    try:
        yield clinic
    finally:
        clinic.stop_all()


@pytest.mark.slow
def test_the_embedded_clinic_books_confirms_and_stops_promptly(embedded, tmp_path):
    embedded.run("db", "upgrade")
    embedded.run("seed-demo")
    token = embedded.run("create-token", "desk", "--role", "admin").split()[-1]
    dev = embedded.start("dev", "dev")
    for port in DEV_PORTS.values():
        Server(dev, f"http://127.0.0.1:{port}").wait_until_answering()
    assert (tmp_path / "var" / "booking.sqlite3").exists()

    api = BookingApi(f"http://127.0.0.1:{DEV_PORTS['booking']}", token)
    patient = api.register_patient(n=4242)["id"]  # phone 07400 204242
    clinician = api.add_clinician()["id"]
    api.book(patient, clinician, slots(1)[0])
    api.close()
    wait_until(lambda: "[console sms]" in dev.log() and "***242" in dev.log(), 20,
               "the confirmation SMS on the console")

    dev._signal(signal.SIGTERM)
    dev.popen.wait(timeout=15)  # it took over 30 s: each HTTP thread's join had to time out
    assert dev.popen.returncode == 0, dev.log()[-2000:]
