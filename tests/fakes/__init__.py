"""Fakes of the outside world as real local servers: Twilio's HTTP API and an SMTP server."""
