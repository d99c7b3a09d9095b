"""Forms' staff API (intake and consent forms arrive with their own issue)."""
from __future__ import annotations

from flask_smorest import Blueprint

from shared.web import protect

api = Blueprint("forms", __name__, url_prefix="/api/v1", description="Intake and consent forms")
protect(api)
