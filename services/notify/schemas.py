"""Request and response shapes of notify's API (marshmallow 4; unknown fields refused)."""
from __future__ import annotations

from marshmallow import Schema, fields


class MessagesQuery(Schema):
    # Booking's appointment ids are UUIDs: anything else names no appointment, and refusing
    # it here keeps text PostgreSQL cannot hold (a NUL) away from the query.
    appointment_id = fields.UUID(required=True)


class MessageOut(Schema):
    """A line of the message log: what went, how and when. No text and no address: the text
    can name a treatment, and reception has the patient's record for the address."""

    id = fields.UUID(required=True)
    kind = fields.String(required=True)
    channel = fields.String(required=True)
    status = fields.String(required=True)
    provider_status = fields.String(allow_none=True)
    provider_id = fields.String(allow_none=True)
    error_code = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    attempts = fields.Integer(required=True)
    due_at = fields.AwareDateTime(required=True)
    sent_at = fields.AwareDateTime(allow_none=True)
    delivered_at = fields.AwareDateTime(allow_none=True)
    fallback_of = fields.UUID(allow_none=True)
    appointment_id = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
