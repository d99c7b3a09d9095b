"""Forms' staff API (intake and consent forms arrive with their own issue)."""
from __future__ import annotations

from shared.web import ApiBlueprint, protect

api = ApiBlueprint("forms", __name__, url_prefix="/api/v1", description="Intake and consent forms")
protect(api)
