"""Booking: patients, clinicians' hours, appointments and the follow-ups they lead to."""
