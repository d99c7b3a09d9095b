"""Errors the clinic's rules raise; the HTTP layer maps each to a status and JSON body.

Kept free of Flask so `model.py` modules can raise them without importing a web framework.
"""
from __future__ import annotations


class ClinicError(Exception):
    status = 422
    code = "invalid"

    def __init__(self, message: str, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "fields": self.fields}}


class Invalid(ClinicError):
    """The request is well-formed but breaks a clinic rule (a start outside working hours...)."""


class NotFound(ClinicError):
    status = 404
    code = "not_found"


class Conflict(ClinicError):
    """The change collides with the current state: a taken slot, a cancelled appointment."""

    status = 409
    code = "conflict"


class Unavailable(ClinicError):
    """A dependency (the database) cannot be reached; nothing was written."""

    status = 503
    code = "unavailable"
