"""Events forms consumes, one function each (filled in by its own issue)."""
from __future__ import annotations

HANDLERS: dict = {}
