"""Prometheus metrics. Under gunicorn (several worker processes) prometheus-client runs in
multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` is set by `clinic serve` before this module is
imported, values go to per-process files, and `/metrics` aggregates them.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import sqlalchemy as sa
from flask import Flask, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from shared.db import SharedTables


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _DatabaseGauges:
    """Read at scrape time from the database, so every process reports the same truth."""

    def __init__(self, service: str, engine: sa.Engine, tables: SharedTables,
                 extra: Callable | None):
        self._service, self._engine, self._tables, self._extra = service, engine, tables, extra

    def collect(self):
        outbox = self._tables.outbox
        try:
            with self._engine.connect() as connection:
                pending = connection.execute(
                    sa.select(sa.func.count()).where(outbox.c.published_at.is_(None))
                ).scalar()
                extra = list(self._extra(connection)) if self._extra else []
        except sa.exc.SQLAlchemyError:
            return
        gauge = GaugeMetricFamily("clinic_outbox_pending", "Events committed, not yet published",
                                  labels=["service"])
        gauge.add_metric([self._service], pending)
        yield gauge
        yield from extra


class ServiceMetrics:
    def __init__(self, service: str, engine: sa.Engine, tables: SharedTables,
                 extra: Callable | None = None):
        self.service = service
        self._own_registry = None if multiprocess_mode() else CollectorRegistry()
        registry = self._own_registry
        self.requests = Counter(
            "clinic_http_requests_total", "HTTP requests", ["service", "endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "clinic_http_request_seconds", "HTTP request latency", ["service", "endpoint"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self._database = _DatabaseGauges(service, engine, tables, extra)

    def instrument(self, app: Flask) -> None:
        @app.before_request
        def _start_timer():
            g._clinic_started = time.perf_counter()

        @app.after_request
        def _observe(response):
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            started = g.get("_clinic_started")
            if started is not None:
                self.latency.labels(self.service, endpoint).observe(
                    time.perf_counter() - started)
            self.requests.labels(self.service, endpoint, str(response.status_code)).inc()
            return response

    def exposition(self) -> tuple[bytes, str]:
        if self._own_registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            body = generate_latest(registry)
        else:
            body = generate_latest(self._own_registry)
        return body + generate_latest(_only(self._database)), CONTENT_TYPE_LATEST


def _only(collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
