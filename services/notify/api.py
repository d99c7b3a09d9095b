"""Notify's staff API."""
from __future__ import annotations

from flask_smorest import Blueprint

from shared.web import protect

api = Blueprint("notify", __name__, url_prefix="/api/v1", description="Patient messages")
protect(api)
