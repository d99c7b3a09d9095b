"""Request and response shapes of notify's API (marshmallow 4; unknown fields refused)."""
from __future__ import annotations

from marshmallow import Schema, fields, validate


class MessagesQuery(Schema):
    appointment_id = fields.String(required=True, validate=validate.Length(1, 64))


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
