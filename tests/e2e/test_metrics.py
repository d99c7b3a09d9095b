"""/metrics under gunicorn: several worker processes, one truth (prometheus multiprocess mode)."""
from __future__ import annotations

import re

import pytest
import requests

pytestmark = pytest.mark.slow


def test_request_counts_add_up_across_gunicorn_workers(booking):
    """Each request on a new connection, so gunicorn spreads them over its two workers; a
    per-process registry would report only the share of whichever worker answers /metrics."""
    headers = {"Authorization": f"Bearer {booking.token}"}
    for _ in range(50):
        response = requests.get(f"{booking.server.base_url}/api/v1/treatments", headers=headers,
                                timeout=10)
        assert response.status_code == 200
    text = booking.server.get("/metrics").text
    counts = [float(value) for value in re.findall(
        r'clinic_http_requests_total\{endpoint="/api/v1/treatments",service="booking",'
        r'status="200"\} ([0-9.]+)', text)]
    assert sum(counts) == 50.0
    assert "clinic_outbox_pending" in text
