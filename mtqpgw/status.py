# -*- test-case-name: tests.test_status -*-
"""The message/tracking-status model (RFC 3886), its parser and serialiser, and TRACK answers.

Sans-I/O: nothing here touches a socket, clock or file.  Field values are
kept as the text that travels on the wire (``"dns; example2.com"``,
``"rfc822; user1@example1.com"``, ``"2.5.0 (delivered)"``), so a value read
from one server is passed on unchanged to the next client.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "MESSAGE_FIELDS",
    "RECIPIENT_FIELDS",
    "Action",
    "Answer",
    "Outcome",
    "RecipientStatus",
    "StatusParseError",
    "TrackingStatus",
    "address_of",
    "generic_status",
    "mta_name",
    "parse_tracking_status",
    "parse_tracking_status_counted",
    "serialise_tracking_status",
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

    # Pseudo-members are built afresh on every call and are not cached (a
    # peer could otherwise grow the cache without bound), so identity cannot
    # be equality: two reports saying "Action: queued" must compare equal.
    # Known members are singletons, so for them this is plain identity.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Action):
            return self._value_ == other._value_
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value_)

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


# -- Field tables ------------------------------------------------------------

# RFC 3886 field order, which is also the order the serialiser emits.
_MESSAGE_FIELDS: tuple[tuple[str, str], ...] = (
    ("Original-Envelope-Id", "original_envelope_id"),
    ("Reporting-MTA", "reporting_mta"),
    ("DSN-Gateway", "dsn_gateway"),
    ("Received-From-MTA", "received_from_mta"),
    ("Arrival-Date", "arrival_date"),
)
_RECIPIENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("Original-Recipient", "original_recipient"),
    ("Final-Recipient", "final_recipient"),
    ("Action", "action"),
    ("Status", "status"),
    ("Remote-MTA", "remote_mta"),
    ("Diagnostic-Code", "diagnostic_code"),
    ("Last-Attempt-Date", "last_attempt_date"),
    ("Will-Retry-Until", "will_retry_until"),
)
# (wire name, attribute) of each field of the model, in RFC 3886 order.
MESSAGE_FIELDS = _MESSAGE_FIELDS
RECIPIENT_FIELDS = _RECIPIENT_FIELDS
_MESSAGE_ATTRS = {name.lower(): attr for name, attr in _MESSAGE_FIELDS}
_RECIPIENT_ATTRS = {name.lower(): attr for name, attr in _RECIPIENT_FIELDS}

# RFC 5322 section 3.6.8:
#   field-name = 1*ftext
#   ftext      = %d33-57 / %d59-126   ; printable US-ASCII except ":"
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_NOT_FTEXT = re.compile(r"[^!-9;-~]")
# RFC 5234 WSP; the only characters that start a folded continuation line.
_WSP = " \t"


def generic_status(action: Action) -> str:
    """The RFC 3463 "other or undefined" code of the class that *action* implies.

    Used when a per-recipient block arrives without a usable Status field:
    ``failed`` -> ``5.0.0``, ``delayed`` -> ``4.0.0``, anything else
    (delivered, relayed, expanded, transferred, opaque, unknown) -> ``2.0.0``.
    X.0.0 claims nothing beyond the class the Action already states, so
    filling it in adds no information the reporting MTA did not give, and
    code downstream can always rely on a non-empty ``status``.
    """
    if action is Action.FAILED:
        return "5.0.0"
    if action is Action.DELAYED:
        return "4.0.0"
    return "2.0.0"


# -- Parsing (liberal) -----------------------------------------------------


class StatusParseError(ValueError):
    """A ``message/tracking-status`` body that cannot be read at all.

    Raised only when the per-message group is missing or lacks
    Original-Envelope-Id or Reporting-MTA; every lesser fault is skipped and
    counted instead.
    """


def _decode(data: bytes | bytearray | memoryview | str) -> str:
    if isinstance(data, str):
        return data
    # UTF-8 with U+FFFD for bad octets, rather than latin-1 or surrogateescape:
    # values from internationalised peers (RFC 6533) stay readable, a stray
    # 8-bit octet cannot crash anything, and every resulting str can be
    # encoded again by the serialiser (surrogates could not).
    return bytes(data).decode("utf-8", "replace")


def _logical_groups(text: str) -> tuple[list[list[str]], int]:
    """Split *text* into groups of unfolded logical lines; count orphan continuations."""
    if "\r" not in text and "\n " not in text and "\n\t" not in text and text[:1] not in _WSP:
        # The usual body (what serialise_tracking_status writes): LF line
        # ends, no folded or white-space-only line.  Then a group is a run of
        # lines between empty ones, and str.split finds them at C speed.
        # (text[:1] of "" is "", which is in every str: the loop below.)
        groups = (group.strip("\n") for group in text.split("\n\n"))
        return [group.split("\n") for group in groups if group], 0
    return _logical_groups_by_line(text)


def _logical_groups_by_line(text: str) -> tuple[list[list[str]], int]:
    """`_logical_groups` a line at a time: any line ends, folding, blank lines of white space."""
    groups: list[list[str]] = []
    current: list[str] = []
    orphans = 0
    # Split on LF alone (a CR before it is dropped) so that CRLF and bare-LF
    # input read alike; str.splitlines would also split on VT, FF, U+2028 and
    # friends, which are data, not line ends, on the wire.
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip(_WSP):
            # One or more empty (or white-space only) lines end a group.
            if current:
                groups.append(current)
                current = []
            continue
        if line[0] in _WSP:
            if current:
                # RFC 5322 section 2.2.3 unfolding: remove the line break only,
                # keep the white space that starts the continuation.
                current[-1] += line
            else:
                orphans += 1
            continue
        current.append(line)
    if current:
        groups.append(current)
    return groups, orphans


def _split_field(logical: str) -> tuple[str, str] | None:
    name, colon, value = logical.partition(":")
    if not colon:
        # The seed's example 9 "Status 5.2.2 (Mailbox full)": not a field.
        return None
    # RFC 5322 section 4.5.3 (obsolete syntax) allows WSP before the colon.
    name = name.rstrip(_WSP)
    if not _FIELD_NAME.fullmatch(name):
        return None
    # The serialiser's own cleaning (leading and trailing WSP dropped, a bare
    # CR made a space): a model read from the wire is one it can write back.
    return name, _clean_value(value)


def _read_group(
    lines: list[str], known: dict[str, str]
) -> tuple[dict[str, str], list[tuple[str, str]], int]:
    """Known fields by attribute name, extensions in arrival order, and the count of bad lines."""
    values: dict[str, str] = {}
    extensions: list[tuple[str, str]] = []
    bad = 0
    for logical in lines:
        name, colon, value = logical.partition(":")
        attr = known.get(name.lower())
        if attr is None or not colon:
            # Not one of this group's fields as written: the general path
            # (WSP before the colon, extensions, lines that are no field).
            field = _split_field(logical)
            if field is None:
                bad += 1
                continue
            name, value = field
            attr = known.get(name.lower())
            if attr is None:
                extensions.append((name, value))
                continue
        else:
            # A known name is a valid field name: only the value needs cleaning.
            value = _clean_value(value)
        if attr in values:
            # RFC 3464/3886 allow each field once per group.  The first copy
            # wins, as with email.message.Message.get(): a reader going top to
            # bottom has already acted on it, and a later copy is more likely
            # a splice or an injection than a correction.
            bad += 1
        else:
            values[attr] = value
    return values, extensions, bad


def parse_tracking_status_counted(
    data: bytes | bytearray | memoryview | str,
) -> tuple[TrackingStatus, int]:
    """Parse one ``message/tracking-status`` body liberally.

    Returns the model and the number of logical lines that did not make it
    into it: lines that are not fields (no colon, bad name), continuation
    lines with nothing to continue, repeated known fields, and every line of
    a per-recipient group that had to be skipped.

    Liberal in what it takes: CRLF or LF line ends, fields in any order,
    names in any case, ``Status:2.4.0`` without the space, folded lines,
    several empty lines between groups, unknown fields (kept in
    ``extensions``).  A per-message group that runs straight into
    per-recipient fields without the empty line (seed example 10, as
    extracted) is split at the first per-recipient field, since the two
    field sets of RFC 3886 are disjoint.  Values are cleaned as the
    serialiser cleans them (white space at either end dropped, a bare CR
    made a space, a run of white space longer than a line shortened), so
    whatever is read can be written back and reads the same.

    Per-recipient groups: a missing Final-Recipient falls back to
    Original-Recipient (the same recipient, as the sender named it, and the
    key hops are joined by anyway); a missing Status becomes
    ``generic_status(action)``; a group with no Action, or with no
    recipient address at all, is skipped and its lines counted, because a
    block that does not say what happened, or to whom, cannot be reported
    or merged without inventing it.

    Raises StatusParseError when there is no per-message group or it lacks
    Original-Envelope-Id or Reporting-MTA: without them the part cannot be
    attributed to a message or to a hop.
    """
    groups, bad = _logical_groups(_decode(data))
    if groups:
        first = groups[0]
        for index, logical in enumerate(first):
            # The name as _split_field would give it, without cleaning the value.
            name, colon, _ = logical.partition(":")
            if colon and name.rstrip(_WSP).lower() in _RECIPIENT_ATTRS:
                groups[0:1] = [first[:index], first[index:]]
                break
    if not groups or not groups[0]:
        raise StatusParseError("the tracking-status has no per-message fields")

    values, extensions, count = _read_group(groups[0], _MESSAGE_ATTRS)
    bad += count
    for required in ("Original-Envelope-Id", "Reporting-MTA"):
        if not values.get(_MESSAGE_ATTRS[required.lower()]):
            raise StatusParseError(f"the tracking-status has no {required} field")

    recipients: list[RecipientStatus] = []
    for group in groups[1:]:
        fields, rcpt_extensions, count = _read_group(group, _RECIPIENT_ATTRS)
        bad += count
        action_text = fields.pop("action", "")
        final = fields.pop("final_recipient", "") or fields.get("original_recipient", "")
        if not action_text or not final:
            bad += len(group) - count
            continue
        action = Action(action_text)
        status = fields.pop("status", "") or generic_status(action)
        recipients.append(
            RecipientStatus(
                final_recipient=final,
                action=action,
                status=status,
                extensions=tuple(rcpt_extensions),
                **fields,
            )
        )

    return (
        TrackingStatus(
            extensions=tuple(extensions),
            recipients=tuple(recipients),
            **values,
        ),
        bad,
    )


def parse_tracking_status(data: bytes | bytearray | memoryview | str) -> TrackingStatus:
    """Parse one ``message/tracking-status`` body; see parse_tracking_status_counted."""
    return parse_tracking_status_counted(data)[0]


# -- Serialising (strict) --------------------------------------------------

# RFC 5322 section 2.1.1: a line MUST NOT pass 998 octets and SHOULD NOT
# pass 78 (both without the CRLF).
_SOFT_LIMIT = 78
_HARD_LIMIT = 998
# A name so long that no break could follow it on its first line is cut;
# only a hostile or broken peer sends one.
_MAX_NAME = 900
_WSP_OCTETS = (0x20, 0x09)
# A run of white space long enough to fill a line would, folded, leave a line
# of white space alone, which reads as a group separator: such runs shrink.
_LONG_WSP = re.compile(r"[ \t]{256,}")


def _clean_name(name: str) -> str:
    if len(name) <= _MAX_NAME and _FIELD_NAME.fullmatch(name):
        return name
    # Extension names from JSON or the store may hold anything; a field name
    # must be printable US-ASCII without a colon or it would re-parse as
    # something else (or as nothing).
    return _NOT_FTEXT.sub("-", name[:_MAX_NAME]) or "X-Unnamed"


# Characters that become a space in a field value: controls (C0 but HTAB,
# DEL, C1: a CR or LF would end the line on the wire and let the value forge
# fields or a MIME delimiter of its own; the others reach terminals and logs
# as escape sequences), format characters (bidi overrides and zero-width
# characters disguise what a value says), line and paragraph separators, and
# lone surrogates (they cannot be encoded).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _visible(value: str) -> str:
    return "".join(
        " " if c != "\t" and unicodedata.category(c) in _HIDDEN_CATEGORIES else c
        for c in value.replace("\r\n", " ")
    )


def _clean_value(value: str) -> str:
    if not value.isprintable():  # the common case skips the character walk
        value = _visible(value)
    value = value.strip(_WSP)
    if len(value) >= 256 and _LONG_WSP.search(value):
        value = _LONG_WSP.sub(" " * 255, value)
    return value


def _break_between(line: bytes, low: int, high: int, last: bool) -> int | None:
    """An index *i* in [low, high] with line[i] WSP and line[i-1] not WSP.

    Folding before such a WSP leaves no line ending in white space and makes
    every continuation line hold something besides white space (a line of
    white space only would read as a group separator).
    """
    high = min(high, len(line) - 1)
    indexes = range(high, low - 1, -1) if last else range(low, high + 1)
    for i in indexes:
        if line[i] in _WSP_OCTETS and line[i - 1] not in _WSP_OCTETS:
            return i
    return None


def _fold(line: bytes, value_start: int) -> list[bytes]:
    out: list[bytes] = []
    low = value_start + 1
    # MTQP dot-stuffs a data line that starts with "." and its 998-octet
    # limit holds on the wire, so such a line (a field name may start with
    # ".") gets one octet less.  Continuation lines start with WSP.
    hard = _HARD_LIMIT - line.startswith(b".")
    while len(line) > _SOFT_LIMIT:
        cut = _break_between(line, low, _SOFT_LIMIT, last=True)
        if cut is None:
            cut = _break_between(line, max(low, _SOFT_LIMIT + 1), hard, last=False)
        if cut is not None:
            out.append(line[:cut])
            line = line[cut:]
        elif len(line) <= hard:
            break
        else:
            # No white space within 998 octets: fold inside the run, which
            # is the only way to stay under the limit.  Re-parsing joins the
            # pieces with the one SP inserted here, so the value changes by
            # exactly that space per forced fold and nothing else.  Never
            # cut inside a UTF-8 sequence (continuation octets are 10xxxxxx).
            cut = hard
            while line[cut] & 0xC0 == 0x80:
                cut -= 1
            out.append(line[:cut])
            line = b" " + line[cut:]
        # A continuation line starts with WSP; a break needs content before it.
        low = 2
        hard = _HARD_LIMIT
    out.append(line)
    return out


def serialise_tracking_status(ts: TrackingStatus) -> list[bytes]:
    """The lines (bytes, UTF-8, no CRLF) of one ``message/tracking-status`` body.

    Strict: RFC 3886 field order, ``Name: value`` with one space, one empty
    line between groups and none at the end, CR and LF inside values turned
    into spaces, leading and trailing white space of values dropped, and
    values folded at white space so that no line passes 998 octets (78 where
    the value allows).  An empty Status is written as
    ``generic_status(action)``; a missing Final-Recipient as the
    Original-Recipient.

    Raises ValueError for a model that no reader could use: no
    Original-Envelope-Id, no Reporting-MTA, or a recipient without any
    address.
    """
    # (name, value) pairs, both clean, in order; None for the empty line
    # before each recipient's group.  Rendered in one loop at the end.
    fields: list[tuple[str, str] | None] = []
    for name, attr in _MESSAGE_FIELDS:
        value = getattr(ts, attr)
        if value is not None:
            value = _clean_value(value)
        if not value and attr in ("original_envelope_id", "reporting_mta"):
            raise ValueError(f"a tracking-status needs {name}")
        if value is not None:
            fields.append((name, value))
    fields += [(_clean_name(name), _clean_value(value)) for name, value in ts.extensions]
    for rcpt in ts.recipients:
        fields.append(None)
        action = rcpt.action if isinstance(rcpt.action, Action) else Action(rcpt.action)
        final = rcpt.final_recipient or rcpt.original_recipient
        final = _clean_value(final) if final else final
        if not final:
            raise ValueError("a per-recipient block needs Final-Recipient")
        for name, attr in _RECIPIENT_FIELDS:
            if attr == "final_recipient":
                value: str | None = final
            elif attr == "action":
                value = _clean_value(action.value)
            elif attr == "status":
                value = (rcpt.status and _clean_value(rcpt.status)) or generic_status(action)
            else:
                value = getattr(rcpt, attr)
                if value is None:
                    continue
                value = _clean_value(value)
            fields.append((name, value))
        fields += [(_clean_name(name), _clean_value(value)) for name, value in rcpt.extensions]
    out: list[bytes] = []
    for field in fields:
        if field is None:
            out.append(b"")
            continue
        # One line, folded past 78 octets; inline, as a report is built for
        # every TRACK.  errors="replace": a str from elsewhere may hold lone
        # surrogates.
        name, value = field
        text = f"{name}: {value}" if value else f"{name}:"
        line = text.encode("utf-8", "replace")
        if len(line) <= _SOFT_LIMIT:
            out.append(line)
        else:
            out += _fold(line, len(name) + 1)
    return out
