"""Staff logins for the reception dashboard: argon2 password hashes, never the password."""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.booking.db import staff_users
from shared.errors import Conflict
from shared.web import Staff

_hasher = PasswordHasher()


def create_user(context, email: str, password: str, role: str) -> uuid.UUID:
    user_id = uuid.uuid4()
    try:
        with context.engine.begin() as connection:
            connection.execute(staff_users.insert().values(
                id=user_id, email=email.strip().lower(), password_hash=_hasher.hash(password),
                role=role, created_at=context.clock.now()))
    except sa.exc.IntegrityError as error:
        raise Conflict(f"a staff user {email} exists already") from error
    return user_id


def authenticate(context, email: str, password: str) -> tuple[uuid.UUID, Staff] | None:
    with context.engine.connect() as connection:
        row = connection.execute(sa.select(staff_users).where(
            staff_users.c.email == email.strip().lower())).first()
    if row is None:
        _hasher.hash(password)  # same work either way: no timing hint that the email exists
        return None
    try:
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return row.id, Staff(row.email, row.role, "user")


def load_user(context, user_id: str) -> Staff | None:
    try:
        key = uuid.UUID(user_id)
    except ValueError:
        return None
    with context.engine.connect() as connection:
        row = connection.execute(sa.select(staff_users).where(staff_users.c.id == key)).first()
    return Staff(row.email, row.role, "user") if row else None
