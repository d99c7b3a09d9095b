"""Sending what is due, once: the notifier's scheduler loop.

A message's life is recorded around the provider call: `pending` -> claimed (`sending`, with a
lease and a claim token) -> `begin_send` commits `sending_at` -> the provider call -> `sent`
or `failed`, or back to `pending` when the provider certainly never took it. A worker that
dies in the middle leaves the message `sending`; once its lease runs out another worker claims
it and, for SMS, asks Twilio's message list whether it went before sending anything again.
Nothing is held in memory between rounds: the schedule is the table.
"""
from __future__ import annotations

import hashlib
import select
import threading
import time
import uuid
from collections import deque
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import psycopg
import sqlalchemy as sa

from services.notify.db import (
    CANCELLED,
    DELIVERED,
    DUE_CHANNEL,
    FAILED,
    HANDED_OVER,
    PENDING,
    SENDING,
    SENT,
    ClaimedMessage,
    MessageRepository,
    SentRecord,
    cancel_unwanted,
    claim_due,
    early_reports,
    expired_leases,
    messages,
    record_sent,
    record_sent_and_start_sms_send,
    recorded_early_reports,
    start_sms_send,
    webhook_receipts,
)
from services.notify.model import backoff_delay
from services.notify.model.delivery import send_slot_interval, sms_batch_size
from services.notify.model.schedule import when_to_send
from services.notify.outcomes import (
    apply_early_reports,
    message_event_data,
    schedule_email_fallback,
)
from services.notify.senders import PermanentSendError, TransientSendError
from services.notify.senders.email import message_id_header
from shared.db import describe_error, one_statement
from shared.events import new_event
from shared.logging import get_logger

log = get_logger("notify.scheduler")

MAX_ATTEMPTS = 8
EMAIL_BATCH = 50
IDLE_WAIT = 30.0
# However idle, a scheduler reads the table again this often: the bound on how late a message
# stored without a wake-up (due later than this) can be noticed.
RECHECK_SECONDS = 1.0
KEEP_HISTORY = timedelta(days=90)
KEEP_RECEIPTS = timedelta(days=30)
MAYBE_SENT_HOLD = 30.0
# Sends recorded this long before an unfinished one are passed over as its own (find_sent).
RECOVERY_LOOKBACK = timedelta(hours=1)
# How long a report that overtook its send may wait, while a round goes on, to be applied.
EARLY_REPORT_SWEEP_SECONDS = 1.0


class DueSignal:
    """Wakes the scheduler when a handler commits a message that is due now.

    PostgreSQL: LISTEN on the channel the handlers `pg_notify`, so a confirmation goes out
    within milliseconds of its event and an idle worker costs nothing. SQLite (the embedded
    default, one process): a short poll.
    """

    def __init__(self, engine: sa.Engine, recheck_seconds: float = RECHECK_SECONDS):
        self._recheck_seconds = recheck_seconds
        self._conninfo = None
        if engine.dialect.name == "postgresql":
            url = engine.url.set(drivername="postgresql")
            self._conninfo = url.render_as_string(hide_password=False)
        self._connection: psycopg.Connection | None = None

    def wait(self, timeout: float, stop: threading.Event) -> None:
        if self._conninfo is None:
            stop.wait(min(timeout, 0.2))
            return
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(self._conninfo, autocommit=True,
                                                   connect_timeout=5)
                self._connection.execute(f'LISTEN "{DUE_CHANNEL}"')
                return              # look once more: a commit may have come before LISTEN
            ready, _, _ = select.select([self._connection.fileno()], [], [],
                                        min(timeout, self._recheck_seconds))
            if ready:
                for _ in self._connection.notifies(timeout=0):
                    pass
        except (psycopg.Error, OSError, ValueError):
            self.close()
            stop.wait(min(timeout, 1.0))

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


def _digest(text: str) -> str:
    """How a sent SMS is recognised in Twilio's list after a crash (never the text itself)."""
    return hashlib.sha256(text.encode()).hexdigest()


class _Sent(NamedTuple):
    """A send the provider accepted, not yet recorded."""
    message: ClaimedMessage
    provider_id: str | None
    status: str


class ClaimLost(Exception):
    """The message was taken over by another worker while this one was sending it."""


@dataclass
class Scheduler:
    """One worker's dispatch loop; any number may run against one database."""

    context: object            # NotifyContext: uow(), clock, texts, sms, email, config
    lease: timedelta | None = None
    # Handlers wake it only for a message due within RECHECK_SECONDS (handlers._store), so
    # anything else is for tests: a longer one proves that a NOTIFY, not the re-check, woke it.
    recheck_seconds: float = RECHECK_SECONDS

    def __post_init__(self) -> None:
        self.lease = self.lease or timedelta(seconds=self.context.config.notify_lease_seconds)
        self.token = uuid.uuid4()
        self.interval = send_slot_interval(self.context.config.sms_max_per_second)
        self.sms_batch = sms_batch_size(self.interval, self.lease,
                                        self.context.config.notify_send_concurrency)
        self.status_callback = (self.context.config.public_base_url_notify.rstrip("/")
                                + "/webhooks/twilio/status")
        self._last_prune: float | None = None  # never: a new worker prunes at once
        self._senders: ThreadPoolExecutor | None = None     # made by run()
        self._sweep_lock = threading.Lock()
        self._swept_at = time.monotonic()

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        signal = DueSignal(self.context.engine, self.recheck_seconds)
        failures = 0
        concurrency = self.context.config.notify_send_concurrency
        if concurrency > 1:
            self._senders = ThreadPoolExecutor(concurrency, thread_name_prefix="notify-send")
        try:
            while not stop.is_set():
                try:
                    worked = self.dispatch_due(stop)
                    failures = 0
                    if not worked:
                        signal.wait(self._idle_seconds(), stop)
                except Exception as error:       # database away: back off, lose nothing
                    failures += 1
                    delay = min(10.0, 0.2 * 2 ** min(failures, 6))
                    log.warning("scheduler.retrying", error=type(error).__name__,
                                detail=describe_error(error)[:300], retry_in=delay)
                    stop.wait(delay)
        finally:
            signal.close()
            if self._senders is not None:
                self._senders.shutdown(wait=True)
                self._senders = None

    def dispatch_due(self, stop: threading.Event | None = None) -> int:
        """One round: recover abandoned sends, drop what must not go, then send what is due.
        The count handled."""
        stop = stop or threading.Event()
        with self.context.uow() as uow:
            handled = cancel_unwanted(uow.connection, uow.clock.now())
            uow.commit()
        for message in self._claim(expired_leases, limit=EMAIL_BATCH):
            try:
                self._recover(message)
            except Exception as error:  # one message's trouble must not stop the round
                log.warning("message.unrecovered", message_id=str(message.id),
                            error=type(error).__name__)
            handled += 1
        for channel, limit in (("email", EMAIL_BATCH), ("sms", self.sms_batch)):
            claimed = self._claim(claim_due, limit=limit, channel=channel)
            self._deliver_all(claimed, stop)
            handled += len(claimed)
        self._apply_early_reports()
        self._prune_now_and_then()
        return handled

    def _apply_early_reports(self, at_most_every: float = 0.0) -> None:
        """Reports a webhook kept because their sid was not recorded yet, applied now that it
        is. Read after the sids were committed: a webhook that kept a report looks for the sid
        again after its own commit, so whichever of the two comes second finds the other's (and
        a report for a sid a crashed worker recorded is found by the next sweep of any worker).
        At the end of every round, and during a long round (the SMS cap paces it) at most
        every `at_most_every` seconds, so a fast "undelivered" is not held for the round. A
        failure is logged and left to the next sweep: it must not stop the sending."""
        with self._sweep_lock:
            if at_most_every and time.monotonic() - self._swept_at < at_most_every:
                return
            self._swept_at = time.monotonic()
        try:
            with one_statement(self.context.engine) as connection:
                recorded = recorded_early_reports(connection)
        except Exception as error:
            log.warning("early_reports.unread", error=type(error).__name__)
            return
        for message_id, provider_id in recorded:
            try:
                with self.context.uow() as uow:
                    apply_early_reports(uow, self.context.texts, message_id, provider_id)
                    uow.commit()
            except Exception as error:
                log.warning("early_reports.unapplied", message_id=str(message_id),
                            error=type(error).__name__)

    def _deliver_all(self, claimed: list[ClaimedMessage], stop: threading.Event) -> None:
        """Up to NOTIFY_SEND_CONCURRENCY sends in flight at once: a provider answering in
        200 ms would otherwise hold a worker to five texts a second. Each lane takes the next
        message when it is free, and records each SMS it sent with the beginning of its next
        (`_deliver`). Each message keeps its own claim, slot and
        record, so running them side by side changes nothing of the send-once protocol."""
        def one(message: ClaimedMessage, unrecorded: _Sent | None) -> _Sent | None:
            try:
                if stop.is_set():
                    self._record_or_leave(unrecorded)
                    self._release(message)
                    return None
                return self._deliver(message, unrecorded)
            except Exception as error:  # the database away mid-send: its lease brings it back
                log.warning("message.unfinished", message_id=str(message.id),
                            error=type(error).__name__)
                # Recorded already, or not: a record finds nothing to do the second time.
                self._record_or_leave(unrecorded)
                return None
            finally:
                self._apply_early_reports(at_most_every=EARLY_REPORT_SWEEP_SECONDS)

        waiting = deque(claimed)

        def lane() -> None:
            unrecorded = None
            try:
                while True:
                    try:
                        message = waiting.popleft()     # atomic: each message to one lane
                    except IndexError:
                        return
                    unrecorded = one(message, unrecorded)
            finally:
                self._record_or_leave(unrecorded)

        lanes = min(self.context.config.notify_send_concurrency, len(claimed))
        if self._senders is None or lanes < 2:
            lane()
            return
        running = [self._senders.submit(lane) for _ in range(lanes)]
        futures.wait(running)               # every lane done before the round goes on
        for finished in running:
            finished.result()

    def _idle_seconds(self) -> float:
        with self.context.uow() as uow:
            due = uow.messages.next_due_at()
            lease = uow.connection.execute(sa.select(sa.func.min(messages.c.lease_until)).where(
                messages.c.status == SENDING)).scalar()
        soonest = min((t for t in (due, lease) if t is not None), default=None)
        if soonest is None:
            return IDLE_WAIT
        return max(0.0, min(IDLE_WAIT, (soonest - self.context.clock.now()).total_seconds()))

    def _claim(self, take, **kwargs) -> list[ClaimedMessage]:
        with self.context.uow() as uow:
            claimed = take(uow.connection, uow.clock.now(), lease=self.lease, token=self.token,
                           **kwargs)
            uow.commit()
        return claimed

    def _release(self, message: ClaimedMessage) -> None:
        """Stopping: hand an unsent claim back at once rather than after its lease."""
        with self.context.uow() as uow:
            uow.messages.settle(message.id, self.token, status=PENDING)
            uow.commit()

    # --- one message -----------------------------------------------------------------------

    def deliver(self, message: ClaimedMessage) -> None:
        self._record(self._deliver(message))

    def _deliver(self, message: ClaimedMessage, unrecorded: _Sent | None = None
                 ) -> _Sent | None:
        """Send one message. A send the provider accepted is returned, for the caller to
        record (`_record`); `unrecorded`, the caller's previous one, is recorded here: by the
        statement that begins this SMS, or first. A lane thus costs one statement per SMS,
        not two. A record whose row another transaction holds is made after this send instead
        (`_begin`)."""
        if message.attempts >= MAX_ATTEMPTS:
            self._record(unrecorded)
            self._failed(message, None, f"gave up after {message.attempts} attempts")
            return None
        try:
            rendered = self._render(message)
        except Exception as error:          # a template or context that cannot work: no retry
            self._record(unrecorded)
            self._failed(message, None, f"cannot render: {type(error).__name__}")
            return None
        if not self._still_timely(message, unrecorded):
            return None
        began, unrecorded = self._begin(
            message, _digest(rendered) if message.channel == "sms" else None, unrecorded)
        if not began:
            self._record(unrecorded)
            # cancelled, opted out or taken over meanwhile,
            self._cancel_if_withdrawn(message)   # or withdrawn while an earlier try was begun
            return None
        sent = None
        try:
            result = self._send(message, rendered)
        except ClaimLost:
            pass                            # another worker holds it now; nothing went out
        except PermanentSendError as error:
            self._failed(message, error.code, error.message)
        except TransientSendError as error:
            self._retry_later(message, error)
        else:
            sent = _Sent(message, result.provider_id, result.status)
        self._record(unrecorded)            # held elsewhere as this one began: recorded now
        return sent

    def _still_timely(self, message: ClaimedMessage, unrecorded: _Sent | None = None) -> bool:
        """A scheduled message sent late must still keep quiet hours and still be of use
        (`model.schedule.when_to_send`): otherwise it is moved on, or dropped (after
        `unrecorded` is recorded)."""
        now = self.context.clock.now()
        at = when_to_send(message.kind, message.context, message.due_at, now,
                          self.context.quiet, self.context.tz)
        if at == now:
            return True
        self._record(unrecorded)
        with self.context.uow() as uow:
            if at is None:
                uow.messages.settle(message.id, self.token, status=CANCELLED,
                                    error="too late to be of use")
            else:
                uow.messages.settle(message.id, self.token, status=PENDING, due_at=at)
            uow.commit()
        return False

    def _render(self, message: ClaimedMessage):
        texts = self.context.texts
        if message.channel == "sms":
            return texts.sms(message.kind, message.context)
        return texts.email(message.kind, message.context)

    def _begin(self, message: ClaimedMessage, text_sha256: str | None = None,
               unrecorded: _Sent | None = None) -> tuple[bool, _Sent | None]:
        """Commit `sending_at`, after any wait for the SMS cap's slot, so a cancellation or STOP
        during the wait still finds the message not begun and stops it. When the slot is now
        (no wait), slot and beginning are one statement, which also records `unrecorded`
        (first, for an email). Whether it began, and `unrecorded` if it is still unrecorded
        (its row was held by another transaction): the caller records it after this send,
        so that this begun message's lease never waits on that transaction."""
        if message.channel != "sms":
            self._record(unrecorded)
            unrecorded = None
        else:
            now = self.context.clock.now()
            with one_statement(self.context.engine) as connection:
                if unrecorded is None:
                    slot, begun = start_sms_send(connection, message.id, self.token, now,
                                                 self.lease, self.interval, text_sha256)
                else:
                    slot, begun, settled = record_sent_and_start_sms_send(
                        connection, self._sent_record(unrecorded), message.id, self.token, now,
                        self.lease, self.interval, text_sha256)
                    if settled:
                        self._log_sent(unrecorded)
                        unrecorded = None
            if begun is not None:
                return begun, unrecorded
            wait = (slot - self.context.clock.now()).total_seconds()
            if wait > 0:
                time.sleep(wait)
        # One statement: with several lanes this is common, as another lane's statement can
        # take the cap's row with a `now` a little later than this lane's.
        with one_statement(self.context.engine) as connection:
            return MessageRepository(connection, self.context.clock).begin_send(
                message.id, self.token, self.lease, text_sha256), unrecorded

    def _send(self, message: ClaimedMessage, rendered=None):
        rendered = rendered or self._render(message)
        if message.channel == "sms":
            return self.context.sms.send_sms(message.to, rendered, self.status_callback,
                                             str(message.id))
        subject, text, html = rendered
        return self.context.email.send_email(message.to, subject, text, html,
                                             message_id=str(message.id),
                                             before_final_dot=lambda: self._hand_over(message))

    def _hand_over(self, message: ClaimedMessage) -> None:
        """The email's point of no return. If the claim is no longer ours (a slow SMTP
        conversation outlived the lease and another worker took the message over), raise so
        the end-of-data line is never sent and the server discards this copy."""
        with self.context.uow() as uow:
            if not uow.messages.hand_over(message.id, self.token):
                raise ClaimLost(str(message.id))
            uow.commit()

    def _recover(self, message: ClaimedMessage) -> None:
        """A send left unfinished: find out whether it went before trying again."""
        if message.sending_at is None:          # claimed, never handed to the provider
            self._release(message)
            return
        if message.channel == "sms":
            try:
                # What was sent, by its digest; rendered again only for a send begun before
                # digests were kept (a template changed since would not give it back).
                sent = message.sent_text_sha256 or _digest(
                    self.context.texts.sms(message.kind, message.context))
                with self.context.uow() as uow:
                    others = uow.messages.sids_of_others_sent_to(
                        message.to, message.id, message.sending_at - RECOVERY_LOOKBACK)
                sid = self.context.sms.find_sent(message.to, message.sending_at,
                                                 text_sha256=sent, passing_over=others)
            except TransientSendError as error:
                self._hold(message, backoff_delay(min(message.attempts, 8), base=2.0, cap=300))
                log.warning("message.unresolved", message_id=str(message.id),
                            error=type(error).__name__)
                return
            except Exception as error:
                # Twilio refuses to say (credentials?) or the text cannot be rebuilt: whether
                # it went is unknowable, and sending again could duplicate. Failed, for staff.
                self._failed(message, None, f"could not check whether it went: "
                                            f"{type(error).__name__}")
                return
            if sid:
                self._sent(message, sid, "sent")
                log.info("message.recovered", message_id=str(message.id), provider_id=sid)
                return
        elif message.provider_status == HANDED_OVER:
            # SMTP has no list to ask. The end-of-data line may have reached the server, so
            # sending again could duplicate: it counts as sent (docs/notifier.md).
            self._sent(message, message_id_header(str(message.id),
                                                  self.context.config.email_from), "unconfirmed")
            return
        # It did not go. A cancellation, a new time or a STOP that came while it was in doubt
        # could not stop it then; it does now.
        if not self._cancel_if_withdrawn(message):
            self.deliver(message)

    def _cancel_if_withdrawn(self, message: ClaimedMessage) -> bool:
        with self.context.uow() as uow:
            withdrawn = uow.messages.cancel_if_withdrawn(message.id, self.token)
            uow.commit()
        if withdrawn:
            log.info("message.withdrawn", message_id=str(message.id))
        return withdrawn

    # --- outcomes ----------------------------------------------------------------------------

    def _sent(self, message: ClaimedMessage, provider_id: str | None, status: str) -> None:
        self._record(_Sent(message, provider_id, status))

    def _record(self, sent: _Sent | None) -> None:
        """The send `sent`, and its `notify.message.sent` event, recorded if the claim is still
        ours. A report that came before this commit is applied at the end of the round
        (_apply_early_reports)."""
        if sent is None:
            return
        record = self._sent_record(sent)
        with one_statement(self.context.engine) as connection:
            record_sent(connection, record.message_id, self.token, self.context.clock.now(),
                        record.provider_id, record.provider_status, record.event)
        self._log_sent(sent)

    def _record_or_leave(self, sent: _Sent | None) -> None:
        """`_record`, or left `sending` to crash recovery (which asks Twilio) if the database
        is away."""
        try:
            self._record(sent)
        except Exception as error:
            log.warning("message.unfinished", message_id=str(sent.message.id),
                        error=type(error).__name__)

    def _sent_record(self, sent: _Sent) -> SentRecord:
        event = self._event("notify.message.sent", sent.message, self.context.clock,
                            provider_id=sent.provider_id, status=SENT)
        return SentRecord(sent.message.id, sent.provider_id, sent.status, event)

    @staticmethod
    def _log_sent(sent: _Sent | None) -> None:
        if sent is not None:
            log.info("message.sent", message_id=str(sent.message.id), kind=sent.message.kind,
                     channel=sent.message.channel, provider_id=sent.provider_id)

    def _failed(self, message: ClaimedMessage, code: int | None, reason: str) -> None:
        with self.context.uow() as uow:
            if uow.messages.settle(message.id, self.token, status=FAILED,
                                   error_code=str(code) if code else None, error=reason[:300]):
                uow.outbox.add(self._event("notify.message.failed", message, uow.clock,
                                           status=FAILED, error_code=code))
                schedule_email_fallback(uow, message.id, self.context.texts)
            uow.commit()
        log.warning("message.failed", message_id=str(message.id), kind=message.kind,
                    channel=message.channel, error_code=code)

    def _retry_later(self, message: ClaimedMessage, error: TransientSendError) -> None:
        delay = error.retry_after or backoff_delay(message.attempts, base=2.0, cap=300)
        delay = max(delay, 1.0)
        if error.maybe_sent:
            # Recovery asks the provider's list first; give a message the provider is still
            # processing time to appear there, or it would look unsent and go twice.
            delay = max(delay, MAYBE_SENT_HOLD)
            self._hold(message, delay)
        else:
            with self.context.uow() as uow:
                # It certainly never went (429, connection refused): not begun any more, so a
                # cancellation before the next try stops it as it stops any pending message.
                uow.messages.settle(message.id, self.token, status=PENDING,
                                    due_at=uow.clock.now() + timedelta(seconds=delay),
                                    error=error.message[:300], provider_status=None,
                                    sending_at=None)
                uow.commit()
        log.warning("message.retrying", message_id=str(message.id), channel=message.channel,
                    http_status=error.http_status, retry_in=round(delay, 1),
                    maybe_sent=error.maybe_sent)

    def _hold(self, message: ClaimedMessage, delay: float) -> None:
        with self.context.uow() as uow:
            uow.messages.hold(message.id, self.token, timedelta(seconds=max(delay, 1.0)))
            uow.commit()

    @staticmethod
    def _event(event_type: str, message: ClaimedMessage, clock, **extra):
        return new_event("/notify", event_type, message.appointment_id or message.patient_id
                         or message.id, message_event_data(message.id, message.kind,
                                                           message.channel, message.appointment_id,
                                                           message.patient_id, **extra), clock)

    def _prune_now_and_then(self) -> None:
        """Old finished messages are history: keep the table (and claims) small. Webhook
        receipts only need to outlive Twilio's retries, and a report for a sid never recorded
        (a message of another system on the same account) is dropped after a day."""
        # Not "0.0 = long ago": the monotonic clock starts near zero when the machine boots, so
        # a worker started within an hour of boot would never have pruned at start.
        if self._last_prune is not None and time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        with self.context.uow() as uow:
            now = uow.clock.now()
            uow.connection.execute(messages.delete().where(
                messages.c.status.in_((SENT, DELIVERED, FAILED, CANCELLED)),
                messages.c.updated_at < now - KEEP_HISTORY))
            uow.connection.execute(webhook_receipts.delete().where(
                webhook_receipts.c.received_at < now - KEEP_RECEIPTS))
            uow.connection.execute(early_reports.delete().where(
                early_reports.c.received_at < now - timedelta(days=1)))
            uow.commit()
