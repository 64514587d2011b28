"""The notifier's pure core: the dedupe key, the retry policy, the communication lifecycle,
which events notify, and the email each status renders to."""

from __future__ import annotations

import email
import email.policy
import json
import random
import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from uuid import UUID, uuid4

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from contracts import Actor, Channel, Customer, OrderCreated, OrderStatus, OrderStatusChanged
from notifier.adapters.smtp import Email, SmtpEmailSender, SmtpSettings
from notifier.adapters.templates import EmailTemplates, TextTemplates
from notifier.config import Settings
from notifier.domain.communication import (
    TRANSITIONS,
    Communication,
    CommunicationStatus,
    LifecycleError,
    RetryPolicy,
)
from notifier.domain.dedupe import KEY_LENGTH, dedupe_key, normalise_recipient
from notifier.domain.delivery import Undeliverable
from notifier.domain.planning import NotificationRules, plan_communications, template_context

NOW = datetime(2026, 1, 1, tzinfo=UTC)

identities = st.tuples(
    st.uuids(),
    st.sampled_from(Channel),
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=60),
)


# --- dedupe key ---------------------------------------------------------------------------


@given(identities)
def test_the_same_identity_always_gives_the_same_key(
    identity: tuple[UUID, Channel, str, str],
) -> None:
    event_id, channel, template, recipient = identity
    assert dedupe_key(*identity) == dedupe_key(UUID(str(event_id)), channel, template, recipient)


@given(identities)
def test_the_key_is_64_lowercase_hex_characters(identity: tuple[UUID, Channel, str, str]) -> None:
    key = dedupe_key(*identity)
    assert len(key) == KEY_LENGTH == 64
    assert set(key) <= set(string.hexdigits.lower())


def normalised(identity: tuple[UUID, Channel, str, str]) -> tuple[UUID, Channel, str, str]:
    event_id, channel, template, recipient = identity
    return event_id, channel, template, normalise_recipient(channel, recipient)


@given(identities, st.data())
def test_changing_any_one_component_changes_the_key(
    first: tuple[UUID, Channel, str, str], data: st.DataObject
) -> None:
    event_id, channel, template, recipient = first
    component = data.draw(st.sampled_from(["event_id", "channel", "template", "recipient"]))
    if component == "event_id":
        event_id = data.draw(st.uuids())
    elif component == "channel":
        channel = data.draw(st.sampled_from(Channel))
    elif component == "template":
        template = data.draw(st.text(min_size=1, max_size=40))
    else:
        recipient = data.draw(st.text(min_size=1, max_size=60))
    second = (event_id, channel, template, recipient)
    assume(normalised(second) != normalised(first))
    assert dedupe_key(*first) != dedupe_key(*second)


@given(st.uuids(), st.text(alphabet='\x1f",[]\\ab', min_size=1, max_size=8), st.data())
def test_no_choice_of_template_and_recipient_imitates_another(
    event_id: UUID, template: str, data: st.DataObject
) -> None:
    """Separators, quotes and brackets inside the parts cannot shift where one part ends."""
    split = data.draw(st.integers(min_value=1, max_value=len(template)))
    joined = template + "ab@example.com"
    shifted = (joined[:split], joined[split:])
    assume(shifted != (template, "ab@example.com"))
    assert dedupe_key(event_id, Channel.EMAIL, template, "ab@example.com") != dedupe_key(
        event_id, Channel.EMAIL, *shifted
    )


@given(
    st.uuids(),
    st.from_regex(r"[a-z0-9.]{1,12}@[a-z0-9]{1,10}\.[a-z]{2,4}", fullmatch=True),
    st.randoms(use_true_random=False),
    st.sampled_from(["", " ", "  ", "\t"]),
)
def test_an_email_address_is_one_recipient_whatever_its_case_and_surrounding_space(
    event_id: UUID, address: str, rng: random.Random, padding: str
) -> None:
    variant = "".join(c.upper() if rng.random() < 0.5 else c for c in address)
    key = dedupe_key(event_id, Channel.EMAIL, "order_ready", address)
    assert dedupe_key(event_id, Channel.EMAIL, "order_ready", padding + variant + padding) == key


def test_a_phone_number_is_one_recipient_whatever_its_punctuation() -> None:
    event_id = uuid4()
    keys = {
        dedupe_key(event_id, Channel.SMS, "order_ready", phone)
        for phone in ("+44 20 7946 0018", "+44 (20) 7946-0018", "+442079460018")
    }
    assert len(keys) == 1


def test_the_key_recipe_is_stable() -> None:
    """Changing the recipe would re-send every communication of events being redelivered: a
    change must come with a new KEY_VERSION, never silently."""
    event_id = UUID("00000000-0000-0000-0000-000000000001")
    assert dedupe_key(event_id, Channel.EMAIL, "order_ready", " Ann@Example.COM") == (
        "71a292c198dc46736b63b90bf1274c3249da8718b7365dc739550de08d62dcfd"
    )


# --- retry policy -------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=20),
    base_seconds=st.floats(min_value=0.01, max_value=60),
    max_seconds=st.floats(min_value=60, max_value=86_400),
)


@given(policies, st.integers(min_value=1, max_value=200), st.randoms(use_true_random=False))
def test_a_retry_waits_between_half_and_all_of_a_capped_exponential(
    policy: RetryPolicy, attempts: int, rng: random.Random
) -> None:
    ceiling = min(policy.max_seconds, policy.base_seconds * 2 ** min(attempts - 1, 62))
    delay = policy.delay(attempts, rng).total_seconds()
    assert ceiling / 2 - 1e-6 <= delay <= ceiling + 1e-6
    assert delay <= policy.max_seconds + 1e-6


@given(policies, st.integers(min_value=1, max_value=200))
def test_the_backoff_never_shrinks(policy: RetryPolicy, attempts: int) -> None:
    assert policy.ceiling(attempts + 1) >= policy.ceiling(attempts)


@given(policies, st.integers(min_value=0, max_value=50))
def test_attempts_are_bounded(policy: RetryPolicy, attempts: int) -> None:
    assert policy.exhausted(attempts) == (attempts >= policy.max_attempts)


# --- lifecycle ----------------------------------------------------------------------------


def communication(status: CommunicationStatus, attempts: int = 1) -> Communication:
    queued = Communication.queue(
        event_id=uuid4(),
        order_id=uuid4(),
        channel=Channel.EMAIL,
        template="order_ready",
        recipient="ann@example.com",
        context={},
        now=NOW,
    )
    return replace(queued, status=status, attempts=attempts)


POLICY = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
OUTCOMES = {
    CommunicationStatus.SENT: lambda c, now: c.mark_sent("<id@x>", now),
    CommunicationStatus.FAILED: lambda c, now: c.mark_failed("down", POLICY, now),
    CommunicationStatus.DEAD: lambda c, now: c.mark_dead("broken", now),
}


def test_the_lifecycle_matches_the_design() -> None:
    s = CommunicationStatus
    edges = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == {
        (s.QUEUED, s.SENDING),
        (s.SENDING, s.SENDING),
        (s.SENDING, s.SENT),
        (s.SENDING, s.FAILED),
        (s.SENDING, s.DEAD),
        (s.FAILED, s.SENDING),
        (s.QUEUED, s.SKIPPED),
        (s.DEAD, s.QUEUED),
    }
    assert TRANSITIONS[s.SENT] == TRANSITIONS[s.SKIPPED] == frozenset()


def test_a_new_communication_is_queued_and_due_at_once() -> None:
    queued = communication(CommunicationStatus.QUEUED, attempts=0)
    fresh = Communication.queue(
        event_id=queued.event_id,
        order_id=queued.order_id,
        channel=Channel.EMAIL,
        template="order_ready",
        recipient="  Ann@Example.com ",
        context={},
        now=NOW,
    )
    assert (fresh.status, fresh.attempts, fresh.next_attempt_at) == ("queued", 0, NOW)
    assert fresh.dedupe_key == queued.dedupe_key
    assert fresh.recipient == "Ann@Example.com"


@pytest.mark.parametrize("status", [CommunicationStatus.QUEUED, CommunicationStatus.FAILED])
def test_a_claim_starts_an_attempt_of_a_queued_or_failed_communication(
    status: CommunicationStatus,
) -> None:
    subject = communication(status, attempts=1)
    later = NOW + timedelta(seconds=5)
    subject.claim(later)
    assert (subject.status, subject.attempts, subject.updated_at) == ("sending", 2, later)


@pytest.mark.parametrize(
    "status",
    [CommunicationStatus.SENT, CommunicationStatus.DEAD, CommunicationStatus.SKIPPED],
)
def test_a_finished_communication_cannot_be_claimed(status: CommunicationStatus) -> None:
    subject = communication(status)
    with pytest.raises(LifecycleError):
        subject.claim(NOW)
    assert (subject.status, subject.attempts) == (status, 1)


@given(st.sampled_from(CommunicationStatus), st.sampled_from(list(OUTCOMES)))
def test_an_outcome_is_recorded_only_for_a_communication_being_sent(
    status: CommunicationStatus, outcome: CommunicationStatus
) -> None:
    subject = communication(status)
    later = NOW + timedelta(seconds=5)
    if status is CommunicationStatus.SENDING:
        OUTCOMES[outcome](subject, later)
        assert subject.status is outcome
        assert subject.updated_at == later
    else:
        with pytest.raises(LifecycleError):
            OUTCOMES[outcome](subject, later)
        assert subject.status is status


def test_sent_records_the_provider_id_and_when() -> None:
    subject = communication(CommunicationStatus.SENDING)
    subject.last_error = "earlier failure"
    subject.mark_sent("<key@backbone.local>", NOW)
    assert subject.status is CommunicationStatus.SENT
    assert (subject.provider_message_id, subject.sent_at) == ("<key@backbone.local>", NOW)
    assert subject.last_error is None
    assert subject.next_attempt_at is None


@given(st.integers(min_value=1, max_value=10), st.randoms(use_true_random=False))
def test_a_failure_retries_later_until_attempts_run_out_then_dies(
    attempts: int, rng: random.Random
) -> None:
    subject = communication(CommunicationStatus.SENDING, attempts=attempts)
    subject.mark_failed("connection refused", POLICY, NOW, rng)
    if attempts < POLICY.max_attempts:
        assert subject.status is CommunicationStatus.FAILED
        assert subject.next_attempt_at is not None
        assert NOW < subject.next_attempt_at <= NOW + timedelta(seconds=POLICY.max_seconds)
        assert subject.last_error == "connection refused"
    else:
        assert subject.status is CommunicationStatus.DEAD
        assert subject.next_attempt_at is None
        assert subject.last_error == f"gave up after {attempts} attempts: connection refused"


def test_a_replay_requeues_a_dead_communication_with_fresh_attempts_and_the_same_key() -> None:
    subject = communication(CommunicationStatus.SENDING, attempts=3)
    key = subject.dedupe_key
    subject.mark_failed("connection refused", POLICY, NOW)
    assert subject.status is CommunicationStatus.DEAD
    later = NOW + timedelta(hours=1)
    subject.replay(later)
    assert (subject.status, subject.attempts, subject.next_attempt_at) == ("queued", 0, later)
    assert (subject.replays, subject.dedupe_key) == (1, key)


@pytest.mark.parametrize(
    "status", [s for s in CommunicationStatus if s is not CommunicationStatus.DEAD]
)
def test_only_a_dead_communication_can_be_replayed(status: CommunicationStatus) -> None:
    subject = communication(status)
    with pytest.raises(LifecycleError):
        subject.replay(NOW)
    assert (subject.status, subject.replays) == (status, 0)


def test_a_skipped_communication_is_never_due_and_says_why() -> None:
    subject = communication(CommunicationStatus.QUEUED, attempts=0)
    subject.skip("recipient opted out", NOW)
    assert subject.status is CommunicationStatus.SKIPPED
    assert (subject.next_attempt_at, subject.last_error) == (None, "recipient opted out")
    with pytest.raises(LifecycleError):
        communication(CommunicationStatus.SENDING).skip("recipient opted out", NOW)


def test_a_dead_communication_serialises_to_json_for_its_dead_letter() -> None:
    subject = communication(CommunicationStatus.SENDING, attempts=3)
    subject.mark_dead("broken template", NOW)
    payload = json.loads(json.dumps(subject.to_json()))
    assert payload["id"] == str(subject.id)
    assert payload["dedupe_key"] == subject.dedupe_key
    assert (payload["status"], payload["last_error"]) == ("dead", "broken template")
    assert payload["updated_at"] == NOW.isoformat()


# --- which events notify ------------------------------------------------------------------

DEFAULT_RULES = NotificationRules(
    statuses=frozenset(Settings.model_fields["notify_statuses"].default),
    on_order_created=Settings.model_fields["notify_on_order_created"].default,
    channels=tuple(Settings.model_fields["notify_channels"].default),
)
ANN = Customer(name="Ann", email="ann@example.com", phone="+44 20 7946 0018")
ACTOR = Actor(id="alice", role="admin")


def changed_to(status: OrderStatus, customer: Customer = ANN) -> OrderStatusChanged:
    return OrderStatusChanged(
        order_id=uuid4(),
        from_status=OrderStatus.PENDING,
        to_status=status,
        version=2,
        actor=ACTOR,
        customer=customer,
        reason="out of stock" if status is OrderStatus.CANCELLED else None,
    )


@pytest.mark.parametrize("status", list(OrderStatus))
def test_by_default_every_status_but_pending_emails_the_customer(status: OrderStatus) -> None:
    planned = plan_communications(changed_to(status), DEFAULT_RULES)
    if status is OrderStatus.PENDING:
        assert planned == []
    else:
        assert [(p.channel, p.template, p.recipient) for p in planned] == [
            (Channel.EMAIL, f"order_{status.value}", "ann@example.com")
        ]


def test_order_created_does_not_notify_by_default_and_can_be_configured_to() -> None:
    created = OrderCreated(
        order_id=uuid4(), status=OrderStatus.PENDING, version=1, customer=ANN, actor=ACTOR
    )
    assert plan_communications(created, DEFAULT_RULES) == []
    rules = replace(DEFAULT_RULES, on_order_created=True)
    assert [p.template for p in plan_communications(created, rules)] == ["order_created"]


def test_a_customer_without_an_address_on_a_channel_gets_nothing_there() -> None:
    no_email = Customer(name="Bo", email=None, phone="+44 20 7946 0018")
    both = replace(DEFAULT_RULES, channels=(Channel.EMAIL, Channel.SMS))
    planned = plan_communications(changed_to(OrderStatus.READY, no_email), both)
    assert [(p.channel, p.recipient) for p in planned] == [(Channel.SMS, "+44 20 7946 0018")]


# --- the email --------------------------------------------------------------------------


def on_the_wire(outgoing: Email) -> EmailMessage:
    """The email as sent, read back as a mail client would."""
    received = email.message_from_bytes(outgoing.content, policy=email.policy.default)
    assert isinstance(received, EmailMessage)
    return received


def email_sender() -> SmtpEmailSender:
    settings = SmtpSettings(
        host="127.0.0.1",
        port=1025,
        username=None,
        password=None,
        starttls=False,
        use_tls=False,
        timeout=1,
        mail_from="Orders <orders@backbone.local>",
        message_id_domain="backbone.local",
    )
    return SmtpEmailSender(settings, EmailTemplates())


@pytest.mark.parametrize(
    "status", [s for s in OrderStatus if s is not OrderStatus.PENDING], ids=str
)
def test_each_notifying_status_renders_a_text_and_an_html_email(status: OrderStatus) -> None:
    event = changed_to(status, Customer(name="Ann <O'Neil>", email="ann@example.com"))
    subject = communication(CommunicationStatus.SENDING)
    subject.template = f"order_{status.value}"
    subject.context = template_context(event)

    outgoing = email_sender().build(subject)
    message = on_the_wire(outgoing)

    assert message["Message-ID"] == f"<{subject.dedupe_key}@backbone.local>"
    # On one line, for whoever matches it as a plain string; every header as it was given.
    assert f"\r\nMessage-ID: {message['Message-ID']}\r\n".encode() in outgoing.content
    for name in ("From", "To", "Subject"):
        assert f"\r\n{name}: {message[name]}\r\n".encode() in outgoing.content
    assert message["To"] == "ann@example.com"
    assert str(event.order_id) in message["Subject"]
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    plain, markup = text.get_content(), html.get_content()
    for body in (plain, markup):
        assert str(event.order_id) in body
        assert status.value.replace("_", " ") in body
    assert "Ann <O'Neil>" in plain
    assert "Ann &lt;O&#39;Neil&gt;" in markup  # HTML-escaped
    if status is OrderStatus.CANCELLED:
        assert "out of stock" in plain


@pytest.mark.parametrize(
    ("name", "recipient"),
    [("Zoë Ærø", "zoe@example.com"), ("Jörg", "jörg@exämple.de"), ("Ann", "ann@example.com")],
)
def test_names_and_addresses_beyond_ascii_reach_the_wire_intact(name: str, recipient: str) -> None:
    event = changed_to(OrderStatus.READY, Customer(name=name, email=recipient))
    subject = communication(CommunicationStatus.SENDING)
    subject.template, subject.context = "order_ready", template_context(event)
    subject.recipient = recipient

    outgoing = email_sender().build(subject)
    message = on_the_wire(outgoing)

    assert outgoing.smtputf8 is not recipient.isascii()
    assert (outgoing.sender, outgoing.recipient) == ("orders@backbone.local", recipient)

    assert message["To"] == recipient
    assert str(event.order_id) in message["Subject"]
    text = message.get_body(("plain",))
    assert text is not None
    assert name in text.get_content()


def test_a_header_that_would_span_lines_makes_the_communication_undeliverable() -> None:
    subject = communication(CommunicationStatus.SENDING)
    subject.template = "order_ready"
    subject.context = template_context(changed_to(OrderStatus.READY))
    subject.recipient = "ann@example.com\r\nBcc: eve@example.com"
    with pytest.raises(Undeliverable, match="spans lines"):
        email_sender().build(subject)


def test_a_template_that_cannot_render_makes_the_communication_undeliverable() -> None:
    subject = communication(CommunicationStatus.SENDING)
    subject.template = "order_no_such_template"
    with pytest.raises(Undeliverable, match="order_no_such_template"):
        email_sender().build(subject)
    subject.template = "order_ready"
    subject.context = {"order_id": "x"}  # customer_name and others missing
    with pytest.raises(Undeliverable, match="undefined"):
        email_sender().build(subject)


# --- the SMS ----------------------------------------------------------------------------

SMS_RULES = NotificationRules(
    statuses=DEFAULT_RULES.statuses,
    on_order_created=False,
    channels=(Channel.EMAIL, Channel.SMS),
    channel_statuses={Channel.SMS: frozenset(Settings.model_fields["sms_notify_statuses"].default)},
)


@pytest.mark.parametrize("status", list(OrderStatus))
def test_by_default_only_out_for_delivery_texts_a_customer_with_a_phone(
    status: OrderStatus,
) -> None:
    texted = [p for p in plan_communications(changed_to(status), SMS_RULES) if p.channel == "sms"]
    if status is OrderStatus.OUT_FOR_DELIVERY:
        assert [(p.template, p.recipient) for p in texted] == [
            ("order_out_for_delivery", "+44 20 7946 0018")
        ]
    else:
        assert texted == []
    no_phone = Customer(name="Bo", email="bo@example.com")
    planned = plan_communications(changed_to(status, no_phone), SMS_RULES)
    assert all(p.channel is Channel.EMAIL for p in planned)


def test_the_sms_channel_needs_a_provider_url() -> None:
    with pytest.raises(ValueError, match="sms_url"):
        Settings(notify_channels=[Channel.EMAIL, Channel.SMS])
    Settings(notify_channels=[Channel.SMS], sms_url="http://127.0.0.1:9/messages")


@pytest.mark.parametrize(
    "status", [s for s in OrderStatus if s is not OrderStatus.PENDING], ids=str
)
def test_each_notifying_status_renders_a_short_plain_text_sms(status: OrderStatus) -> None:
    event = changed_to(status, Customer(name="Ann <O'Neil>", phone="+44 20 7946 0018"))
    body = TextTemplates().render(f"order_{status.value}", template_context(event))
    assert body.startswith(f"Order {str(event.order_id)[:8]}: ")
    assert "\n" not in body
    assert len(body) <= 160
    if status is OrderStatus.CANCELLED:
        assert "out of stock" in body


def test_an_sms_is_not_html_escaped() -> None:
    created = OrderCreated(
        order_id=uuid4(),
        status=OrderStatus.PENDING,
        version=1,
        customer=Customer(name="Ann <O'Neil>", phone="+44 20 7946 0018"),
        actor=ACTOR,
    )
    body = TextTemplates().render("order_created", template_context(created))
    assert "Ann <O'Neil>" in body
