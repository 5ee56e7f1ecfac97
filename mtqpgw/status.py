# -*- test-case-name: tests.test_status -*-
"""The message/tracking-status model (RFC 3886), its parser and serialiser, and TRACK answers.

Sans-I/O: nothing here touches a socket, clock or file.  Field values are
kept as the text that travels on the wire (``"dns; example2.com"``,
``"rfc822; user1@example1.com"``, ``"2.5.0 (delivered)"``), so a value read
from one server is passed on unchanged to the next client.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "Action",
    "Answer",
    "Outcome",
    "RecipientStatus",
    "TrackingStatus",
    "address_of",
    "mta_name",
]


class Action(enum.Enum):
    """The Action field of a per-recipient block (RFC 3464 and RFC 3886).

    An unknown value is kept, not refused: ``Action("queued")`` returns a
    pseudo-member whose ``value`` is ``"queued"``, so an inner host that
    speaks a newer dialect passes through the gateway unharmed.
    """

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"
    TRANSFERRED = "transferred"
    OPAQUE = "opaque"

    @classmethod
    def _missing_(cls, value: object) -> Action | None:
        if not isinstance(value, str):
            return None
        lowered = value.strip().lower()
        for member in cls:
            if member.value == lowered:
                return member
        if not lowered:
            return None
        pseudo = object.__new__(cls)
        pseudo._name_ = "UNKNOWN"
        pseudo._value_ = lowered
        return pseudo

    @property
    def is_referral(self) -> bool:
        """True when the message went on to another MTA that may know more."""
        return self in (Action.RELAYED, Action.TRANSFERRED)


def mta_name(value: str | None) -> str | None:
    """The host name in an MTA-name field such as ``"dns; smtp.example.com"``.

    Lower-cased, without a trailing dot.  Returns None for an empty value or a
    type other than ``dns``.
    """
    if not value:
        return None
    kind, sep, name = value.partition(";")
    if not sep:
        kind, name = "dns", value
    if kind.strip().lower() != "dns":
        return None
    name = name.strip().rstrip(".").lower()
    return name or None


def address_of(value: str | None) -> str | None:
    """The address in a recipient field such as ``"rfc822; User@Example.COM"``.

    The domain is lower-cased (local parts are case-sensitive by RFC 5321).
    """
    if not value:
        return None
    _, sep, addr = value.partition(";")
    addr = (addr if sep else value).strip()
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr or None
    return f"{local}@{domain.lower()}"


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a ``message/tracking-status`` part."""

    final_recipient: str
    action: Action
    status: str
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic_code: str | None = None
    last_attempt_date: str | None = None
    will_retry_until: str | None = None
    # Fields this implementation does not know, in arrival order, as
    # (name as received, value) pairs.
    extensions: tuple[tuple[str, str], ...] = ()

    @property
    def join_key(self) -> str | None:
        """What joins this recipient across hops: Original-Recipient, else Final-Recipient."""
        return address_of(self.original_recipient) or address_of(self.final_recipient)

    def evolve(self, **changes: object) -> RecipientStatus:
        return replace(self, **changes)


@dataclass(frozen=True)
class TrackingStatus:
    """One ``message/tracking-status`` part: what one reporting MTA knows."""

    original_envelope_id: str
    reporting_mta: str
    arrival_date: str | None = None
    received_from_mta: str | None = None
    dsn_gateway: str | None = None
    extensions: tuple[tuple[str, str], ...] = ()
    recipients: tuple[RecipientStatus, ...] = ()

    def evolve(self, **changes: object) -> TrackingStatus:
        return replace(self, **changes)


class Outcome(enum.Enum):
    """How a TRACK ended, as the JSON ``status`` key names it."""

    OK = "ok"
    NOINFO = "noinfo"
    TEMP = "temp"
    ERROR = "error"
    BAD = "bad"


@dataclass(frozen=True)
class Answer:
    """The result of one TRACK: tracking-status parts, or a negative result.

    A positive answer has ``outcome`` OK and one part per reporting MTA, in
    path order.  A negative one carries the reason codes (``("noinfo",)``)
    and the human-readable text of the response line.
    """

    outcome: Outcome
    parts: tuple[TrackingStatus, ...] = ()
    reasons: tuple[str, ...] = ()
    text: str = ""

    @classmethod
    def found(cls, parts: Iterable[TrackingStatus]) -> Answer:
        return cls(Outcome.OK, parts=tuple(parts))

    @classmethod
    def noinfo(cls, text: str = "No information about that message") -> Answer:
        return cls(Outcome.NOINFO, reasons=("noinfo",), text=text)

    @classmethod
    def temp(cls, reasons: Iterable[str] = ("unavailable",), text: str = "") -> Answer:
        return cls(Outcome.TEMP, reasons=tuple(reasons), text=text)

    @classmethod
    def error(cls, reasons: Iterable[str] = (), text: str = "") -> Answer:
        return cls(Outcome.ERROR, reasons=tuple(reasons), text=text)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

