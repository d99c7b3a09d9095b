"""Notify's HTTP side: the staff message log, and Twilio's webhooks (inbound SMS, delivery
reports), which are public URLs authenticated by Twilio's signature instead of a token."""
from __future__ import annotations

from flask import Blueprint, current_app, request
from flask.views import MethodView
from marshmallow import RAISE

from services.notify import service
from services.notify.schemas import MessageOut, MessagesQuery
from shared.web import ApiBlueprint, json_error, protect, signed_by_twilio

api = ApiBlueprint("notify", __name__, url_prefix="/api/v1", description="Patient messages")
protect(api)
SECURED = {"security": [{"bearerAuth": []}]}


def _context():
    return current_app.extensions["clinic"]


@api.route("/messages")
class Messages(MethodView):
    @api.doc(**SECURED)
    @api.arguments(MessagesQuery(), location="query", unknown=RAISE)
    @api.response(200, MessageOut(many=True))
    def get(self, query):
        """The messages planned and sent for an appointment, with their delivery status."""
        return service.message_log(_context().uow(), str(query["appointment_id"]))


webhooks = Blueprint("notify_webhooks", __name__)
EMPTY_TWIML = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>", 200,
               {"Content-Type": "text/xml"})


def _signed_by_twilio() -> bool:
    config = _context().config
    return signed_by_twilio(config.public_base_url_notify, config.twilio_auth_token)


# The longest value each form field may have: what its column holds. Twilio's own are far
# shorter (a sid is 34 characters, an E.164 number at most 16); a longer one is refused field
# by field rather than failing at the INSERT as a 500.
_LONGEST = {"From": 20, "MessageSid": 64, "MessageStatus": 20, "ErrorCode": 20}


def _required(*names: str) -> dict | None:
    errors = {name: ["Missing data for required field."] for name in names
              if not request.form.get(name)}
    errors.update({name: [f"Longer than {longest} characters."]
                   for name, longest in _LONGEST.items()
                   if len(request.form.get(name) or "") > longest})
    return errors or None


@webhooks.post("/webhooks/twilio/sms")
def inbound_sms():
    if not _signed_by_twilio():
        return json_error(403, "forbidden", "invalid Twilio signature")
    missing = _required("From", "MessageSid")
    if missing:
        return json_error(400, "bad_request", "Some fields are invalid", missing)
    service.receive_sms(_context().uow(), request.form["From"], request.form.get("Body", ""),
                        request.form["MessageSid"])
    return EMPTY_TWIML


@webhooks.post("/webhooks/twilio/status")
def delivery_report():
    if not _signed_by_twilio():
        return json_error(403, "forbidden", "invalid Twilio signature")
    missing = _required("MessageSid", "MessageStatus")
    if missing:
        return json_error(400, "bad_request", "Some fields are invalid", missing)
    ctx = _context()
    service.record_delivery_report(ctx.uow(), ctx.texts, request.form["MessageSid"],
                                   request.form["MessageStatus"],
                                   request.form.get("ErrorCode") or None)
    return "", 204
