# -*- test-case-name: tests.test_report -*-
"""RFC 3887 seed examples 6 to 12 as corrected test fixtures (spec/rfc3887-seed.txt).

For each example: the ``TrackingStatus`` parts it reports (model values),
the body lines as a client holds them after dot-unstuffing, corrected, and
the seed's own text with what a literal extraction of it gives.

Corrections applied to ``lines`` (spec/seed-defects.md; each example's
``corrections`` names the ones it needed):

- CLOSE_DELIMITER: every example ends ``--%%%%-S: .``, an extraction
  artefact; it is the close delimiter ``--%%%%--`` and then the ``.`` line.
- TYPE_PARAMETER: ``type=tracking-status`` is written
  ``type="message/tracking-status"`` (RFC 2387 wants the root part's full
  media type); the boundary is quoted to match.  ``%%%%`` itself is kept
  for recognisability, although ``%`` is not a boundary character of RFC
  2046 (so ``build_report`` will not take it as a boundary).
- STATUS_SPACE: ``Status:2.4.0`` (examples 7 and 11) is written with the
  space.
- STATUS_COLON: example 9's ``Status 5.2.2 (Mailbox full)`` is written
  ``Status: 5.2.2 (Mailbox full)``; the model keeps that status.
- LOST_PREFIXES: example 10's second part lost its ``S:`` prefixes, and
  with them its empty lines (after the part's Content-Type, between the
  per-message and the per-recipient group, before the close delimiter);
  its delimiter gained a page-break space.  All restored.
- DOT_STUFFED: example 8's ``..Dot-Stuffed-Header: as an example`` is what
  the wire carries; the client removes one dot.  Not a defect, but it shows
  that ``lines`` are unstuffed: the line is ``.Dot-Stuffed-Header: ...``.

Not corrected, because they are not defects: field order (example 7 sends
Status last; parsers take any order) and the examples' own routing (example
10's first part reports user1 only).

``raw_lines`` is the seed text as extracted: ``S: `` prefixes removed, the
merged last line split at the lost ``S:`` (so it ends ``--%%%%-``, a
delimiter missing its last dash), dot-stuffing undone, nothing else
changed.  The envelope id is ``12345-20010101@example.com`` and the
mtrk-secret ``YWJjZGVmZ2gK`` (base64 of ``abcdefgh`` and a newline; the
seed's hash B is wrong, see seed-defects.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus

__all__ = [
    "ARRIVAL_DATE",
    "CLOSE_DELIMITER",
    "DOT_STUFFED",
    "ENVID",
    "EXAMPLES",
    "LAST_ATTEMPT_DATE",
    "LOST_PREFIXES",
    "SECRET_B64",
    "SECRET_OCTETS",
    "STATUS_COLON",
    "STATUS_SPACE",
    "TRACK_LINE",
    "TRACK_TEXT",
    "TYPE_PARAMETER",
    "WILL_RETRY_UNTIL",
    "SeedExample",
    "dot_stuff",
]

ENVID = "12345-20010101@example.com"
SECRET_B64 = "YWJjZGVmZ2gK"
SECRET_OCTETS = b"abcdefgh\n"
TRACK_LINE = b"TRACK <12345-20010101@example.com> YWJjZGVmZ2gK\r\n"
TRACK_TEXT = "Tracking information follows"
ARRIVAL_DATE = "Mon, 1 Jan 2001 15:15:15 -0500"
LAST_ATTEMPT_DATE = "Mon, 1 Jan 2001 19:15:03 -0500"
WILL_RETRY_UNTIL = "Thu, 4 Jan 2001 15:15:15 -0500"

CLOSE_DELIMITER = "close delimiter: '--%%%%-S: .' is '--%%%%--' and then the '.' line"
TYPE_PARAMETER = 'type=tracking-status is emitted as type="message/tracking-status"'
STATUS_SPACE = "'Status:2.4.0' without the space is emitted as 'Status: 2.4.0'"
STATUS_COLON = "'Status 5.2.2 (Mailbox full)' lacks its colon: 'Status: 5.2.2 (Mailbox full)'"
LOST_PREFIXES = "example 10's second part lost its 'S:' prefixes and empty lines: restored"
DOT_STUFFED = "'..Dot-Stuffed-Header' is dot-stuffed on the wire: one dot removed"

_HEADER = b'Content-Type: multipart/related; boundary="%%%%"; type="message/tracking-status"'


def dot_stuff(line: bytes) -> bytes:
    """A data line as RFC 3887 section 2.3 sends it."""
    return b"." + line if line.startswith(b".") else line


@dataclass(frozen=True)
class SeedExample:
    """One seed example: what it means, and the lines that carry it."""

    number: int
    title: str
    parts: tuple[TrackingStatus, ...]
    # Per part, its message/tracking-status body lines (corrected).
    part_lines: tuple[tuple[bytes, ...], ...]
    # The whole body as parse_report receives it: no CRLF, unstuffed, corrected.
    lines: tuple[bytes, ...]
    # The seed's server lines between the "+OK+" line and the end, verbatim.
    seed_text: str
    # What a literal extraction of seed_text gives (see the module docstring).
    raw_lines: tuple[bytes, ...]
    corrections: tuple[str, ...]

    @property
    def answer(self) -> Answer:
        return Answer.found(self.parts)

    def response_bytes(self) -> bytes:
        """The whole corrected TRACK response as the server sends it."""
        data = [b"+OK+ " + TRACK_TEXT.encode()]
        data += [dot_stuff(line) for line in self.lines]
        data.append(b".")
        return b"".join(line + b"\r\n" for line in data)


def _wrap(parts: list[list[str]], extra_headers: tuple[str, ...] = ()) -> tuple[bytes, ...]:
    lines = [_HEADER, *(h.encode() for h in extra_headers), b""]
    for part in parts:
        lines += [b"--%%%%", b"Content-Type: message/tracking-status", b""]
        lines += [line.encode() for line in part]
        lines.append(b"")
    lines.append(b"--%%%%--")
    return tuple(lines)


def _extract(seed_text: str) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for line in seed_text.split("\n"):
        if line.startswith("S: "):
            line = line[3:]
        elif line == "S:":
            line = ""
        # The last line is "--%%%%-S: ." (example 10: "--%%%%-."): the close
        # delimiter merged with the terminating "." line; the "." goes.
        if line.endswith("-S: ."):
            line = line[: -len("S: .")]
        elif line == "--%%%%-.":
            line = line[:-1]
        out.append(line.encode())
    # Dot-stuffing undone, as a client does (RFC 3887 section 2.3).
    return tuple(line[1:] if line.startswith(b".") else line for line in out)


def _example(
    number: int,
    title: str,
    parts: tuple[TrackingStatus, ...],
    bodies: list[list[str]],
    seed_text: str,
    corrections: tuple[str, ...],
    extra_headers: tuple[str, ...] = (),
) -> SeedExample:
    return SeedExample(
        number=number,
        title=title,
        parts=parts,
        part_lines=tuple(tuple(line.encode() for line in body) for body in bodies),
        lines=_wrap(bodies, extra_headers),
        seed_text=seed_text,
        raw_lines=_extract(seed_text),
        corrections=corrections,
    )


def _part(reporting_mta: str, *recipients: RecipientStatus) -> TrackingStatus:
    return TrackingStatus(
        original_envelope_id=ENVID,
        reporting_mta=reporting_mta,
        arrival_date=ARRIVAL_DATE,
        recipients=recipients,
    )


def _message_fields(reporting_mta: str = "dns; example2.com") -> list[str]:
    return [
        f"Original-Envelope-Id: {ENVID}",
        f"Reporting-MTA: {reporting_mta}",
        f"Arrival-Date: {ARRIVAL_DATE}",
        "",
    ]


_USER1 = "rfc822; user1@example1.com"
_USER2 = "rfc822; user2@example1.com"

_RELAYED_USER1 = RecipientStatus(
    original_recipient=_USER1,
    final_recipient=_USER1,
    action=Action.RELAYED,
    status="2.1.9",
    remote_mta="dns; smtp.example3.com",
    last_attempt_date=LAST_ATTEMPT_DATE,
)


def _relayed_user1_lines(remote_mta: str = "dns; smtp.example3.com") -> list[str]:
    """The body lines of ``_RELAYED_USER1`` (with *remote_mta*, as examples 9 and 12 have it)."""
    return [
        f"Original-Recipient: {_USER1}",
        f"Final-Recipient: {_USER1}",
        "Action: relayed",
        "Status: 2.1.9",
        f"Remote-MTA: {remote_mta}",
        f"Last-Attempt-Date: {LAST_ATTEMPT_DATE}",
    ]


_EXAMPLE_6 = _example(
    6,
    "Message Delivered",
    (
        _part(
            "dns; example2.com",
            RecipientStatus(
                original_recipient=_USER1,
                final_recipient=_USER1,
                action=Action.DELIVERED,
                status="2.5.0",
            ),
        ),
    ),
    [
        _message_fields()
        + [
            f"Original-Recipient: {_USER1}",
            f"Final-Recipient: {_USER1}",
            "Action: delivered",
            "Status: 2.5.0",
        ]
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: delivered
S: Status: 2.5.0
S:
S: --%%%%-S: .""",
    (CLOSE_DELIMITER, TYPE_PARAMETER),
)

_EXAMPLE_7 = _example(
    7,
    "Message Transferred",
    (
        _part(
            "dns; example2.com",
            RecipientStatus(
                original_recipient=_USER1,
                final_recipient=_USER1,
                action=Action.TRANSFERRED,
                status="2.4.0",
                remote_mta="dns; example3.com",
                last_attempt_date=LAST_ATTEMPT_DATE,
            ),
        ),
    ),
    [
        _message_fields()
        + [
            f"Original-Recipient: {_USER1}",
            f"Final-Recipient: {_USER1}",
            "Action: transferred",
            "Remote-MTA: dns; example3.com",
            f"Last-Attempt-Date: {LAST_ATTEMPT_DATE}",
            "Status: 2.4.0",
        ]
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: transferred
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S: Status:2.4.0
S:
S: --%%%%-S: .""",
    (CLOSE_DELIMITER, TYPE_PARAMETER, STATUS_SPACE),
)

_EXAMPLE_8 = _example(
    8,
    "Message Delayed and a Dot-Stuffed Header",
    (
        _part(
            "dns; example2.com",
            RecipientStatus(
                original_recipient=_USER1,
                final_recipient=_USER1,
                action=Action.DELAYED,
                status="4.4.1 (No answer from host)",
                remote_mta="dns; example3.com",
                last_attempt_date=LAST_ATTEMPT_DATE,
                will_retry_until=WILL_RETRY_UNTIL,
            ),
        ),
    ),
    [
        _message_fields()
        + [
            f"Original-Recipient: {_USER1}",
            f"Final-Recipient: {_USER1}",
            "Action: delayed",
            "Status: 4.4.1 (No answer from host)",
            "Remote-MTA: dns; example3.com",
            f"Last-Attempt-Date: {LAST_ATTEMPT_DATE}",
            f"Will-Retry-Until: {WILL_RETRY_UNTIL}",
        ]
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S: ..Dot-Stuffed-Header: as an example
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: delayed
S: Status: 4.4.1 (No answer from host)
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S: Will-Retry-Until: Thu, 4 Jan 2001 15:15:15 -0500
S:
S: --%%%%-S: .""",
    (CLOSE_DELIMITER, TYPE_PARAMETER, DOT_STUFFED),
    extra_headers=(".Dot-Stuffed-Header: as an example",),
)

_EXAMPLE_9 = _example(
    9,
    "Two Users, One Relayed, One Failed",
    (
        _part(
            "dns; example2.com",
            _RELAYED_USER1.evolve(remote_mta="dns; example3.com"),
            RecipientStatus(
                original_recipient=_USER2,
                final_recipient=_USER2,
                action=Action.FAILED,
                status="5.2.2 (Mailbox full)",
                remote_mta="dns; example3.com",
                last_attempt_date=LAST_ATTEMPT_DATE,
            ),
        ),
    ),
    [
        _message_fields()
        + _relayed_user1_lines("dns; example3.com")
        + [
            "",
            f"Original-Recipient: {_USER2}",
            f"Final-Recipient: {_USER2}",
            "Action: failed",
            "Status: 5.2.2 (Mailbox full)",
            "Remote-MTA: dns; example3.com",
            f"Last-Attempt-Date: {LAST_ATTEMPT_DATE}",
        ]
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user2@example1.com
S: Action: failed
S: Status 5.2.2 (Mailbox full)
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: --%%%%-S: .""",
    (CLOSE_DELIMITER, TYPE_PARAMETER, STATUS_COLON),
)

_EXAMPLE_10 = _example(
    10,
    "Firewall",
    (
        _part("dns; example2.com", _RELAYED_USER1),
        _part(
            "dns; smtp.example3.com",
            RecipientStatus(
                original_recipient=_USER2,
                final_recipient="rfc822; user4@example3.com",
                action=Action.DELIVERED,
                status="2.5.0",
            ),
        ),
    ),
    [
        _message_fields() + _relayed_user1_lines(),
        _message_fields("dns; smtp.example3.com")
        + [
            f"Original-Recipient: {_USER2}",
            "Final-Recipient: rfc822; user4@example3.com",
            "Action: delivered",
            "Status: 2.5.0",
        ],
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; smtp.example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
 --%%%%
Content-Type: message/tracking-status
Original-Envelope-Id: 12345-20010101@example.com
Reporting-MTA: dns; smtp.example3.com
Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
Original-Recipient: rfc822; user2@example1.com
Final-Recipient: rfc822; user4@example3.com
Action: delivered
Status: 2.5.0
--%%%%-.""",
    (CLOSE_DELIMITER, TYPE_PARAMETER, LOST_PREFIXES),
)

_EXAMPLE_11 = _example(
    11,
    "Firewall, Combining Per-Recipient Blocks",
    (
        _part(
            "dns; example2.com",
            _RELAYED_USER1,
            RecipientStatus(
                original_recipient=_USER2,
                final_recipient="rfc822; user4@example3.com",
                action=Action.DELIVERED,
                status="2.5.0",
            ),
        ),
    ),
    [
        _message_fields()
        + _relayed_user1_lines()
        + [
            "",
            f"Original-Recipient: {_USER2}",
            "Final-Recipient: rfc822; user4@example3.com",
            "Action: delivered",
            "Status: 2.5.0",
        ]
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; smtp.example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user4@example3.com
S: Action: delivered
S: Status:2.5.0
S:
S: --%%%%-S: .""",
    (CLOSE_DELIMITER, TYPE_PARAMETER, STATUS_SPACE),
)

_EXAMPLE_12 = _example(
    12,
    "Firewall, Hiding System Names Behind the Firewall",
    (
        _part("dns; example2.com", _RELAYED_USER1.evolve(remote_mta="dns; example2.com")),
        _part(
            "dns; example2.com",
            RecipientStatus(
                original_recipient=_USER2,
                final_recipient="rfc822; user4@example1.com",
                action=Action.DELIVERED,
                status="2.5.0",
            ),
        ),
    ),
    [
        _message_fields() + _relayed_user1_lines("dns; example2.com"),
        _message_fields()
        + [
            f"Original-Recipient: {_USER2}",
            "Final-Recipient: rfc822; user4@example1.com",
            "Action: delivered",
            "Status: 2.5.0",
        ],
    ],
    """\
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; example2.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user4@example1.com
S: Action: delivered
S: Status: 2.5.0
S:
S: --%%%%-S: .""",
    (CLOSE_DELIMITER, TYPE_PARAMETER),
)

#: The examples by number, 6 to 12.
EXAMPLES: dict[int, SeedExample] = {
    example.number: example
    for example in (
        _EXAMPLE_6,
        _EXAMPLE_7,
        _EXAMPLE_8,
        _EXAMPLE_9,
        _EXAMPLE_10,
        _EXAMPLE_11,
        _EXAMPLE_12,
    )
}
