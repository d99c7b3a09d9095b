"""The statements around every send (`start_sms_send`, `record_sent`, and once a round
`recorded_early_reports`):
one statement each on PostgreSQL, a short transaction on SQLite, the same outcome on both.
A claim that is no longer ours records nothing, and a send is never begun before its slot."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from services.notify.db import (
    PENDING,
    SENDING,
    SENT,
    NotifyUnitOfWork,
    SentRecord,
    claim_due,
    early_reports,
    messages,
    record_sent,
    record_sent_and_start_sms_send,
    recorded_early_reports,
    shared_tables,
    start_sms_send,
)
from services.notify.model.policy import PlannedMessage
from shared.clock import FixedClock
from shared.db import make_engine, one_statement
from shared.events import new_event
from shared.migrations import upgrade

NOW = datetime.fromisoformat("2026-11-26T09:00:00+00:00")
LEASE = timedelta(seconds=60)
NO_CAP = timedelta(0)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path, make_postgres_url):
    url = (f"sqlite:///{tmp_path / 'notify.sqlite3'}" if request.param == "sqlite"
           else make_postgres_url())
    engine = make_engine(url)
    upgrade(engine, "notify")
    yield engine
    engine.dispose()


def claimed(engine, count: int = 1) -> tuple[uuid.UUID, list]:
    """`count` due SMS, claimed by a new token."""
    clock = FixedClock(NOW)
    with NotifyUnitOfWork(engine, clock) as uow:
        for n in range(count):
            uow.messages.schedule(PlannedMessage(
                kind="reminder", channel="sms", to=f"+4474001{n:05d}", due_at=NOW,
                appointment_id=f"a-{n}", patient_id=f"p-{n}", context={},
                dedupe_key=f"a-{n}:reminder:sms"))
        uow.commit()
    token = uuid.uuid4()
    with engine.begin() as connection:
        return token, claim_due(connection, NOW, count, LEASE, token)


def row(engine, message_id):
    with engine.connect() as connection:
        return connection.execute(sa.select(messages).where(messages.c.id == message_id)).one()


def outbox_types(engine) -> list[str]:
    with engine.connect() as connection:
        return connection.execute(sa.select(shared_tables.outbox.c.type)).scalars().all()


def sent_event(message_id):
    return new_event("/notify", "notify.message.sent", str(message_id),
                     {"message_id": str(message_id)}, FixedClock(NOW))


def test_a_send_whose_slot_is_now_begins_in_the_same_statement(engine):
    token, [message] = claimed(engine)
    with one_statement(engine) as connection:
        assert start_sms_send(connection, message.id, token, NOW, LEASE, NO_CAP) == (NOW, True)
    begun = row(engine, message.id)
    assert (begun.status, begun.sending_at, begun.attempts) == (SENDING, NOW, 1)
    assert begun.lease_until == NOW + LEASE


def test_a_send_whose_slot_is_later_is_not_begun(engine):
    """Under the cap the second sender waits for its slot before anything is committed, so
    a cancellation during the wait still finds the message not begun."""
    token, [first, second] = claimed(engine, 2)
    interval = timedelta(seconds=1)
    with one_statement(engine) as connection:
        assert start_sms_send(connection, first.id, token, NOW, LEASE, interval) == (NOW, True)
        assert start_sms_send(connection, second.id, token, NOW, LEASE, interval) == (
            NOW + interval, None)
    assert row(engine, second.id).sending_at is None


def test_a_message_locked_elsewhere_is_not_waited_for_under_the_caps_lock(make_postgres_url):
    """The statement holds the SMS cap's row: waiting there on a message row that another
    transaction holds (a cancellation in progress) would stall every worker's SMS. It skips
    the locked row and leaves the beginning to `begin_send`, which waits outside the cap."""
    engine = make_engine(make_postgres_url())
    upgrade(engine, "notify")
    token, [message] = claimed(engine)
    try:
        with ThreadPoolExecutor(1) as pool, engine.connect() as holder:
            holder.execute(sa.select(messages.c.id).where(messages.c.id == message.id)
                           .with_for_update())

            def start():
                with one_statement(engine) as connection:
                    return start_sms_send(connection, message.id, token, NOW, LEASE, NO_CAP)
            assert pool.submit(start).result(timeout=5) == (NOW, None)
            holder.rollback()
        assert row(engine, message.id).sending_at is None
        with NotifyUnitOfWork(engine, FixedClock(NOW)) as uow:
            assert uow.messages.begin_send(message.id, token, LEASE)
    finally:
        engine.dispose()


def test_a_claim_taken_over_begins_nothing_and_records_nothing(engine):
    token, [message] = claimed(engine)
    stranger = uuid.uuid4()
    with one_statement(engine) as connection:
        assert start_sms_send(connection, message.id, stranger, NOW, LEASE, NO_CAP) == (
            NOW, False)
    with one_statement(engine) as connection:
        assert not record_sent(connection, message.id, stranger, NOW, "SM1", "queued",
                               sent_event(message.id))
    assert row(engine, message.id).sending_at is None
    assert outbox_types(engine) == []


def test_recording_a_send_settles_it_with_its_event_once(engine):
    token, [message] = claimed(engine)
    with one_statement(engine) as connection:
        start_sms_send(connection, message.id, token, NOW, LEASE, NO_CAP)
    later = NOW + timedelta(seconds=1)
    with one_statement(engine) as connection:
        assert record_sent(connection, message.id, token, later, "SM" + "a" * 32, "queued",
                           sent_event(message.id))
    with one_statement(engine) as connection:   # a second record (a retry) finds it settled
        assert not record_sent(connection, message.id, token, later, "SM" + "a" * 32,
                               "queued", sent_event(message.id))
    sent = row(engine, message.id)
    assert (sent.status, sent.sent_at, sent.provider_id, sent.provider_status) == (
        SENT, later, "SM" + "a" * 32, "queued")
    assert (sent.claim_token, sent.lease_until) == (None, None)
    assert outbox_types(engine) == ["notify.message.sent"]


def _sent(message_id, sid: str = "SM" + "b" * 32) -> SentRecord:
    return SentRecord(message_id, sid, "queued", sent_event(message_id))


def test_a_send_is_recorded_by_the_statement_that_begins_the_next(engine):
    """A send lane's record of one SMS rides on the beginning of its next: one statement,
    with the same outcome as `record_sent` followed by `start_sms_send`."""
    token, [first, second] = claimed(engine, 2)
    with one_statement(engine) as connection:
        start_sms_send(connection, first.id, token, NOW, LEASE, NO_CAP)
    later = NOW + timedelta(seconds=1)
    with one_statement(engine) as connection:
        assert record_sent_and_start_sms_send(connection, _sent(first.id), second.id, token,
                                              later, LEASE, NO_CAP) == (later, True, True)
    recorded, begun = row(engine, first.id), row(engine, second.id)
    assert (recorded.status, recorded.sent_at, recorded.provider_id, recorded.claim_token) == (
        SENT, later, "SM" + "b" * 32, None)
    assert (begun.status, begun.sending_at) == (SENDING, later)
    assert outbox_types(engine) == ["notify.message.sent"]


def test_the_record_is_kept_when_the_next_must_wait_for_its_slot_or_is_not_ours(engine):
    """Whatever becomes of the next SMS (its slot later, its claim lost), the send before it
    is recorded now: it never waits out another message's slot unrecorded."""
    token, [first, second, third] = claimed(engine, 3)
    interval = timedelta(seconds=1)
    with one_statement(engine) as connection:
        start_sms_send(connection, first.id, token, NOW, LEASE, interval)
        assert record_sent_and_start_sms_send(connection, _sent(first.id), second.id, token,
                                              NOW, LEASE, interval) == (
            NOW + interval, None, True)
    assert row(engine, first.id).status == SENT
    assert row(engine, second.id).sending_at is None
    with one_statement(engine) as connection:
        start_sms_send(connection, second.id, token, NOW + interval, LEASE, interval)
        # A stranger's token records nothing of ours: the record needs the claim too.
        assert record_sent_and_start_sms_send(
            connection, _sent(second.id, "SM" + "c" * 32), third.id, uuid.uuid4(),
            NOW + 3 * interval, LEASE, interval)[1:] == (False, False)
    assert row(engine, second.id).status == SENDING
    with one_statement(engine) as connection:
        assert record_sent_and_start_sms_send(
            connection, _sent(second.id, "SM" + "c" * 32), third.id, token,
            NOW + 4 * interval, LEASE, interval) == (NOW + 4 * interval, True, True)
    assert [row(engine, m.id).status for m in (first, second, third)] == [SENT, SENT, SENDING]
    assert outbox_types(engine) == ["notify.message.sent"] * 2


def test_a_carried_send_locked_elsewhere_is_not_waited_for_under_the_caps_lock(
        make_postgres_url):
    """The send a lane carries may be locked by a cancellation or a STOP withdrawing it.
    Waited for under the cap's row, that would stall every worker's SMS (and deadlock with a
    reschedule, which withdraws one message and then moves another): it is skipped, said to
    be unrecorded, and the next SMS begins at once; `record_sent` records it later."""
    engine = make_engine(make_postgres_url())
    upgrade(engine, "notify")
    token, [first, second] = claimed(engine, 2)
    try:
        with one_statement(engine) as connection:
            start_sms_send(connection, first.id, token, NOW, LEASE, NO_CAP)
        with ThreadPoolExecutor(1) as pool, engine.connect() as holder:
            holder.execute(sa.select(messages.c.id).where(messages.c.id == first.id)
                           .with_for_update())

            def record_and_start():
                with one_statement(engine) as connection:
                    return record_sent_and_start_sms_send(connection, _sent(first.id),
                                                          second.id, token, NOW, LEASE, NO_CAP)
            assert pool.submit(record_and_start).result(timeout=5) == (NOW, True, False)
            assert row(engine, second.id).sending_at == NOW      # begun and committed
            holder.rollback()
        with one_statement(engine) as connection:
            assert record_sent(connection, first.id, token, NOW, "SM" + "b" * 32, "queued",
                               sent_event(first.id))
        assert row(engine, first.id).status == SENT
        assert outbox_types(engine) == ["notify.message.sent"]
    finally:
        engine.dispose()


def test_a_message_is_not_begun_by_its_own_record(engine):
    token, [message] = claimed(engine)
    with one_statement(engine) as connection, pytest.raises(ValueError):
        record_sent_and_start_sms_send(connection, _sent(message.id), message.id, token, NOW,
                                       LEASE, NO_CAP)


def test_early_reports_are_found_once_their_sid_is_recorded(engine):
    """A kept report is only a match once a message carries its sid; reports for sids never
    recorded (another system's messages on the account) are not."""
    token, [message] = claimed(engine)
    with engine.begin() as connection:
        for sid, status in (("SM1", "sent"), ("SM1", "delivered"), ("SM2", "delivered")):
            connection.execute(early_reports.insert().values(
                provider_id=sid, status=status, received_at=NOW))
    with one_statement(engine) as connection:
        assert recorded_early_reports(connection) == []
    with one_statement(engine) as connection:
        record_sent(connection, message.id, token, NOW, "SM1", "queued",
                    sent_event(message.id))
    with one_statement(engine) as connection:
        assert recorded_early_reports(connection) == [(message.id, "SM1")]


def test_one_statement_commits_a_single_write_on_its_own(engine):
    """PostgreSQL runs it in autocommit; SQLite in a transaction committed at the end. Either
    way the write is there for another connection once the block ends, and the pooled
    connection goes back to transactions for the next user."""
    token, [message] = claimed(engine)
    single = make_engine(engine.url.render_as_string(hide_password=False), pool_size=1)
    try:                                    # one pooled connection: the same one each time
        with one_statement(single) as connection:
            start_sms_send(connection, message.id, token, NOW, LEASE, NO_CAP)
        assert row(engine, message.id).status == SENDING
        with single.connect() as connection:
            connection.execute(messages.update().values(status=PENDING))
            connection.rollback()
    finally:
        single.dispose()
    assert row(engine, message.id).status == SENDING
