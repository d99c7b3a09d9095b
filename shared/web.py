"""What every service's HTTP side shares: the app skeleton, JSON errors, operations endpoints,
fail-closed staff authentication and request metrics.
"""
from __future__ import annotations

import functools
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import flask_smorest
import marshmallow as ma
import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.sessions import SecureCookieSessionInterface
from kombu import Connection
from marshmallow import ValidationError
from twilio.request_validator import RequestValidator
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from shared.config import Config
from shared.db import SharedTables
from shared.errors import ClinicError
from shared.logging import get_logger
from shared.metrics import ServiceMetrics
from shared.migrations import SchemaCheck

log = get_logger("web")

ROLES = ("reception", "clinician", "admin")
BEARER_CHALLENGE = 'Bearer realm="clinic"'  # a 401 must say how to authenticate (RFC 9110)


def json_error(status: int, code: str, message: str, fields: dict | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "fields": fields or {}}})
    response.status_code = status
    return response


def _flatten_webargs(messages: dict) -> dict:
    """webargs nests errors by location ({"json": {"phone": [...]}}); clients want fields."""
    fields: dict = {}
    for location, errors in messages.items():
        if isinstance(errors, dict):
            fields.update(errors)
        else:
            fields[location] = errors
    return fields


class ErrorDetail(ma.Schema):
    code = ma.fields.String(required=True)
    message = ma.fields.String(required=True)
    fields = ma.fields.Dict(keys=ma.fields.String(), required=True,
                            metadata={"description": "per field (nested for objects): why"})


class ErrorResponse(ma.Schema):
    """The contract's error body, `{"error": {"code", "message", "fields"}}`, as documented in
    /openapi.json: clients generated from the document must be able to read our errors."""

    error = ma.fields.Nested(ErrorDetail, required=True)


class ClinicApi(flask_smorest.Api):
    """flask-smorest, answering every HTTP error in the contract's JSON shape."""

    ERROR_SCHEMA = ErrorResponse

    def handle_http_exception(self, error: HTTPException):
        data = getattr(error, "data", None) or {}
        fields = _flatten_webargs(data.get("messages", {}))
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 415: "unsupported_media_type",
                422: "invalid"}.get(error.code, "error")
        message = "Some fields are invalid" if fields else (
            data.get("message") or error.description or error.name)
        response = json_error(error.code or 500, code, message, fields)
        if error.code == 401:
            response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
        return response


class _JsonBodies(FlaskParser):
    """webargs' parser, except that a body nested deeper than the interpreter can parse
    (`[[[[...`) is an unreadable body like any other, a 400, not a RecursionError and a 500."""

    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except RecursionError as error:
            raise json.JSONDecodeError("nested too deeply", "(body)", 0) from error


class ApiBlueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint with `_JsonBodies` reading its request bodies."""

    ARGUMENTS_PARSER = _JsonBodies()


def load_json_body(body: bytes):
    """A webhook's raw body as JSON; ValueError when it is not JSON or is nested too deeply."""
    try:
        return json.loads(body)
    except RecursionError as error:
        raise ValueError("nested too deeply") from error


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, but a request without the cookie (every API call with
    a Bearer token) gets its empty session without the signing serializer being built first,
    a cost Flask pays on every request otherwise. With the cookie, Flask's own code runs."""

    def open_session(self, app: Flask, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


@dataclass(frozen=True)
class Staff:
    name: str
    role: str
    kind: str  # "token" or "user"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "ct_" + secrets.token_urlsafe(32)


def create_token(engine: sa.Engine, tables: SharedTables, name: str, role: str, token: str,
                 now) -> None:
    with engine.begin() as connection:
        connection.execute(tables.staff_tokens.insert().values(
            id=uuid.uuid4(), name=name, token_hash=hash_token(token), role=role, created_at=now,
        ))


class TokenAuthenticator:
    """Bearer tokens checked against their stored SHA-256; a few seconds' cache keeps the
    check off the database on a busy API without delaying a revocation for long."""

    ttl = 10.0

    def __init__(self, engine: sa.Engine, tables: SharedTables):
        self._engine, self._table = engine, tables.staff_tokens
        self._cache: dict[str, tuple[float, Staff | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, token: str) -> Staff | None:
        digest = hash_token(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        with self._engine.connect() as connection:
            row = connection.execute(
                sa.select(self._table.c.name, self._table.c.role).where(
                    self._table.c.token_hash == digest, self._table.c.revoked_at.is_(None))
            ).first()
        staff = Staff(row.name, row.role, "token") if row else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl, staff)
        return staff


def protect(blueprint: Blueprint) -> None:
    """Every view of the blueprint needs staff: checked once for the whole blueprint, so a new
    route cannot be added unprotected by forgetting a decorator."""

    @blueprint.before_request
    def _require_staff():
        staff = current_staff()
        if staff is None:
            response = json_error(401, "unauthorized", "Staff authentication required")
            response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
            return response
        g.staff = staff
        return None


def current_staff() -> Staff | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return current_app.extensions["clinic_auth"](token.strip())
    session_staff = current_app.extensions.get("clinic_session_staff")
    return session_staff() if session_staff else None


def signed_by_twilio(public_base_url: str, auth_token: str | None) -> bool:
    """This request carries Twilio's signature: of the public URL it called (the service's
    PUBLIC_BASE_URL_* + path and query; behind a proxy our own request.url would differ, so it
    is rebuilt) with the form fields. False without an auth token to check it with."""
    if not auth_token:
        return False
    query = request.query_string.decode()
    url = public_base_url.rstrip("/") + request.path + (f"?{query}" if query else "")
    return RequestValidator(auth_token).validate(
        url, request.form, request.headers.get("X-Twilio-Signature", ""))


def only_for(*roles: str):
    """A view for these roles (and admin): placed above `@api.arguments`, so a request
    from staff without the role is refused with 403 before its body is read or judged (it
    learns nothing of the validation rules)."""
    def decorate(view):
        @functools.wraps(view)
        def checked(*args, **kwargs):
            require_role(*roles)
            return view(*args, **kwargs)
        return checked
    return decorate


def require_role(*roles: str) -> None:
    """Called at the top of a view: 403 unless the authenticated staff has one of the roles."""
    staff = g.get("staff")
    if staff is None or (staff.role not in roles and staff.role != "admin"):
        flask_smorest.abort(403, message=f"needs role {' or '.join(roles)}")


class BrokerProbe:
    """Readiness asks the broker at most every few seconds, not on every probe."""

    def __init__(self, url: str, every: float = 5.0):
        self._url, self._every = url, every
        self._checked_at, self._ok = float("-inf"), False  # never checked (not "at boot")

    def __call__(self) -> bool:
        if self._url.startswith("memory"):
            return True
        if time.monotonic() - self._checked_at < self._every:
            return self._ok
        try:
            with Connection(self._url, connect_timeout=2) as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            self._ok = True
        except Exception:
            self._ok = False
        self._checked_at = time.monotonic()
        return self._ok


def create_service_app(service: str, config: Config, engine: sa.Engine, tables: SharedTables,
                       extra_metrics: Callable | None = None) -> tuple[Flask, ClinicApi]:
    app = Flask(f"clinic.{service}")
    app.session_interface = CookieSessions()
    app.config.update(
        SECRET_KEY=config.secret_key,
        API_TITLE=f"clinic {service}",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"}}},
        },
        MAX_CONTENT_LENGTH=1 * 1024 * 1024,
        TESTING=config.testing,
    )
    api = ClinicApi(app)
    app.extensions["clinic_auth"] = TokenAuthenticator(engine, tables)
    metrics = ServiceMetrics(service, engine, tables, extra_metrics)
    app.extensions["clinic_metrics"] = metrics
    metrics.instrument(app)
    _register_errors(app)
    app.register_blueprint(_operations(engine, BrokerProbe(config.amqp_url), metrics,
                                       SchemaCheck(service)))
    return app, api


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ClinicError)
    def _clinic_error(error: ClinicError):
        return json_error(error.status, error.code, error.message, error.fields)

    @app.errorhandler(ValidationError)
    def _invalid(error: ValidationError):
        fields = error.messages if isinstance(error.messages, dict) else {"_": error.messages}
        return json_error(422, "invalid", "Some fields are invalid", fields)

    @app.errorhandler(sa.exc.OperationalError)
    @app.errorhandler(sa.exc.InterfaceError)
    def _database_away(error):
        log.error("database.unavailable", error=type(error).__name__)
        return json_error(503, "unavailable", "The database is unavailable; nothing was saved")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        if isinstance(error, HTTPException):
            return app.extensions["flask-smorest"]["apis"][""]["ext_obj"].handle_http_exception(
                error)
        log.exception("request.failed", path=request.path)
        return json_error(500, "internal", "Internal error")


def _operations(engine: sa.Engine, broker_ok: BrokerProbe, metrics: ServiceMetrics,
                schema_ok: SchemaCheck) -> Blueprint:
    blueprint = Blueprint("operations", __name__)

    @blueprint.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    def _ready(checks: dict):
        status = 200 if all(checks.values()) else 503
        return jsonify({"status": "ready" if status == 200 else "unavailable",
                        "checks": checks}), status

    @blueprint.get("/readyz")
    def readyz():
        return _ready({**_database_checks(engine, schema_ok), "broker": broker_ok()})

    @blueprint.get("/readyz/database")
    def ready_to_serve():
        """The web process's readiness probe: requests need the database only (a change's
        event waits in the outbox while the broker is away), so a broker restart must not
        take the API and the patients' webhooks out of service. `/readyz` (the contract's)
        also asks for the broker, which the workers need."""
        return _ready(_database_checks(engine, schema_ok))

    @blueprint.get("/metrics")
    def metrics_view():
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    return blueprint


def _database_checks(engine: sa.Engine, schema_ok: SchemaCheck) -> dict[str, bool]:
    try:
        with engine.connect() as connection:
            return {"database": True, "schema": schema_ok(connection)}
    except sa.exc.SQLAlchemyError:
        return {"database": False, "schema": False}
