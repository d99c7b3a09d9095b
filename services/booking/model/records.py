"""The patient as reception records them. Validation of each field happens at the edge
(phone, postcode) and in `check_date_of_birth`; this is the checked record."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Address:
    line1: str
    line2: str | None
    city: str
    postcode: str


@dataclass(frozen=True)
class GeneralPractitioner:
    name: str
    practice: str
    address: str
    phone: str


@dataclass(frozen=True)
class PatientContact:
    """How to reach a patient and what they agreed to: all a booking's event needs of them."""
    id: uuid.UUID
    phone: str
    email: str | None
    consent_sms: bool
    consent_email: bool


@dataclass(frozen=True)
class Patient:
    id: uuid.UUID
    given_name: str
    family_name: str
    date_of_birth: date
    phone: str
    email: str | None
    address: Address
    gp: GeneralPractitioner | None
    consent_sms: bool
    consent_email: bool

    @classmethod
    def from_fields(cls, patient_id: uuid.UUID, fields: dict) -> Patient:
        gp = fields.get("gp")
        return cls(
            id=patient_id, given_name=fields["given_name"].strip(),
            family_name=fields["family_name"].strip(), date_of_birth=fields["date_of_birth"],
            phone=fields["phone"], email=fields.get("email"),
            address=Address(**{"line2": None, **fields["address"]}),
            gp=GeneralPractitioner(**gp) if gp else None,
            consent_sms=fields["consent"]["sms"], consent_email=fields["consent"]["email"],
        )
