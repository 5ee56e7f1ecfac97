# -*- test-case-name: tests.test_report -*-
"""The TRACK answer: a multipart/related of message/tracking-status parts (RFC 2387, RFC 3887 section 4).

Sans-I/O.  Builds and parses the MIME body of a ``+OK+`` answer as lines
(bytes, without CRLF and without dot-stuffing: ``wire`` does those), maps
between an ``Answer`` and a ``wire.Response``, and between an ``Answer`` and
the JSON of interface.md section 4.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mtqpgw import wire
from mtqpgw.status import (
    Action,
    Answer,
    Outcome,
    RecipientStatus,
    StatusParseError,
    TrackingStatus,
    parse_tracking_status_counted,
    serialise_tracking_status,
)

__all__ = [
    "GARBLED",
    "PART_TYPE",
    "ReportError",
    "TRACK_TEXT",
    "answer_from_json",
    "answer_from_response",
    "answer_to_json",
    "build_report",
    "parse_report",
    "parse_report_counted",
    "response_for_answer",
]

PART_TYPE = "message/tracking-status"
# interface.md section 5: the status line text of a TRACK success.
TRACK_TEXT = "Tracking information follows"

# The reason code answer_from_response gives a +OK+ whose body cannot be
# read (or a single-line +OK to TRACK).  It is local: RFC 3887 defines no such
# code, so a client can tell "the server said no" from "the server said
# something we could not understand".
GARBLED = "garbled"


class ReportError(ValueError):
    """A TRACK answer body that holds no readable message/tracking-status part."""


# -- Building --------------------------------------------------------------

# RFC 2046 section 5.1.1:
#   boundary := 0*69<bchars> bcharsnospace
#   bchars := bcharsnospace / " "
#   bcharsnospace := DIGIT / ALPHA / "'" / "(" / ")" / "+" / "_" / "," / "-" / "." /
#                    "/" / ":" / "=" / "?"
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_PART_HEADER = b"Content-Type: " + PART_TYPE.encode()


def _content_boundary(blob: bytes, attempt: int) -> str:
    # Derived from the content, not random: the same parts always give the
    # same octets, so an answer for an unknown envelope id and for a wrong
    # secret are byte-identical (nothing leaks through the boundary), and
    # answers are reproducible in captures.  128 bits of SHA-256 in
    # base64url (only ALPHA, DIGIT, "-" and "_", all bchars); the prefix
    # makes it recognisable.
    digest = hashlib.sha256(b"%d\n" % attempt + blob).digest()[:16]
    return "mtqp-" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def build_report(parts: Sequence[TrackingStatus], boundary: str | None = None) -> list[bytes]:
    """The MIME lines of a TRACK answer holding *parts*, in order.

    Lines are bytes without CRLF and not dot-stuffed.  With no *boundary*
    one is derived from the parts' content, and derived again in the
    (astronomically unlikely) case that it occurs anywhere in them.  Raises ValueError for no
    parts (RFC 2046 wants at least one body part), for a given *boundary*
    that RFC 2046 does not allow or that occurs in a part, and for a part
    that ``serialise_tracking_status`` refuses.
    """
    if not parts:
        raise ValueError("a TRACK answer needs at least one tracking-status part")
    bodies = [serialise_tracking_status(part) for part in parts]
    # One substring search over everything is the cheap check; it is also
    # stricter than RFC 2046 needs (a delimiter must start a line).
    blob = b"\n".join(b"\n".join(body) for body in bodies)
    if boundary is None:
        attempt = 0
        boundary = _content_boundary(blob, attempt)
        while boundary.encode() in blob:
            attempt += 1
            boundary = _content_boundary(blob, attempt)
    elif not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"{boundary!r} is not a MIME boundary (RFC 2046 section 5.1.1)")
    elif boundary.encode() in blob:
        raise ValueError(f"the boundary {boundary!r} occurs inside a part")
    delimiter = b"--" + boundary.encode()
    lines = [
        b'Content-Type: multipart/related; boundary="%s"; type="%s"'
        % (boundary.encode(), PART_TYPE.encode()),
        b"",
    ]
    for body in bodies:
        lines.append(delimiter)
        lines.append(_PART_HEADER)
        lines.append(b"")
        lines += body
        lines.append(b"")
    lines.append(delimiter + b"--")
    return lines


# -- Parsing ---------------------------------------------------------------

# RFC 2045 section 5.1 parameters, with RFC 822 quoted-strings:
#   parameter := attribute "=" value
#   value := token / quoted-string
# Liberal: white space around "=", and an unquoted value runs to the next ";"
# (the seed's boundary=%%%% is not a token: "%" is no bchar).
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_WSP = b" \t"
# Field names that start a tracking-status body: seen where the empty line
# after a part's headers was lost (seed example 10, as extracted).  None of
# them can be a MIME header of the part.
_BODY_START = frozenset(
    {
        b"original-envelope-id",
        b"reporting-mta",
        b"dsn-gateway",
        b"received-from-mta",
        b"arrival-date",
    }
)


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """The lower-cased media type and the parameters (names lower-cased)."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"'):
            raw = raw[1:-1] if raw.endswith('"') else raw[1:]
            if "\\" in raw:
                raw = _QUOTED_PAIR.sub(r"\1", raw)
        # The first of a repeated parameter wins, as with fields.
        params.setdefault(name, raw)
    return "".join(media.split()).lower(), params


def _media_type(value: bytes) -> str:
    """The lower-cased media type of a Content-Type value (parts repeat the same few)."""
    # Only short values are cached: a header from an inner host can unfold
    # to hundreds of KiB, and the cache would keep 256 of those.
    if len(value) <= 200:
        return _cached_media_type(value)
    return _content_type(_text(value))[0]


@functools.lru_cache(maxsize=256)
def _cached_media_type(value: bytes) -> str:
    return _content_type(_text(value))[0]


def _headers(lines: Sequence[bytes]) -> dict[bytes, bytes]:
    """Header fields by lower-cased name (first wins); unfolded; lines that are not fields are ignored."""
    fields: dict[bytes, bytes] = {}
    name: bytes | None = None
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                fields[name] += line
            continue
        raw_name, colon, value = line.partition(b":")
        key = raw_name.strip(_WSP).lower()
        if not colon or not key or key in fields:
            # Not a field, or a repeat: ignored, and so are its continuations.
            name = None
            continue
        name = key
        fields[name] = value
    return fields


def _is_body_start(line: bytes) -> bool:
    name, colon, _ = line.partition(b":")
    return bool(colon) and name.strip(_WSP).lower() in _BODY_START


def _text(octets: bytes) -> str:
    return octets.decode("utf-8", "replace").strip()


def parse_report_counted(lines: Sequence[bytes]) -> tuple[tuple[TrackingStatus, ...], int]:
    """Parse a TRACK answer body; return the parts and a count of what was skipped.

    The count adds up the malformed lines of every part read (see
    ``parse_tracking_status_counted``) and each tracking-status part that
    could not be read at all.  Parts of other types are skipped without
    being counted: RFC 2387 allows them.
    """
    # Lines are expected without CRLF; a CR left by a LF-only splitter goes.
    body = list(lines)
    joined = b"\n".join(body)
    if b"\r\n" in joined or joined.endswith(b"\r"):
        body = [line[:-1] if line.endswith(b"\r") else line for line in body]

    # The answer's own header block: from the first non-empty line to the
    # first empty line (or to a delimiter, should the empty line be lost).
    start = 0
    while start < len(body) and not body[start].strip(_WSP):
        start += 1
    end = start
    while end < len(body) and body[end].strip(_WSP) and not body[end].startswith(b"--"):
        end += 1
    # Unknown header lines, such as seed example 8's ".Dot-Stuffed-Header",
    # are ignored here.
    content_type = _headers(body[start:end]).get(b"content-type")
    if content_type is None:
        raise ReportError("the TRACK answer has no Content-Type header")
    media, params = _content_type(_text(content_type))
    if not media.startswith("multipart/"):
        raise ReportError(f"the TRACK answer is {media or 'untyped'}, not multipart/related")
    boundary = params.get("boundary", "")
    if not boundary:
        raise ReportError("the TRACK answer's Content-Type has no boundary")
    # The type parameter (RFC 2387) is not checked: the seed writes
    # type=tracking-status, RFC 2387 wants type="message/tracking-status", and
    # each part's own Content-Type says what it is anyway.
    delimiter = b"--" + boundary.encode("utf-8", "replace")

    raw_parts: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in body[end:]:
        if line.startswith(delimiter):
            # RFC 2046: transport padding (white space) may follow a delimiter.
            rest = line[len(delimiter) :]
            if not rest.strip(_WSP):
                current = []
                raw_parts.append(current)
                continue
            if rest.startswith(b"--") and not rest[2:].strip(_WSP):
                current = None
                break
        if current is not None:
            current.append(line)
        # Lines before the first delimiter are the preamble: ignored.
    # No close delimiter (the seed's examples lost theirs, and a truncated
    # answer loses it too): the parts seen so far are taken as they are;
    # the last one may be cut short, which its own parser copes with.

    parts: list[TrackingStatus] = []
    skipped = 0
    failure = "it has no body parts"
    for raw in raw_parts:
        split = 0
        while split < len(raw) and raw[split].strip(_WSP) and not _is_body_start(raw[split]):
            split += 1
        part_type = _headers(raw[:split]).get(b"content-type")
        # A part without Content-Type is taken for a tracking-status part: an
        # MTQP answer holds nothing else, and its parser decides.
        if part_type is not None and _media_type(part_type) != PART_TYPE:
            continue
        try:
            status, bad = parse_tracking_status_counted(b"\n".join(raw[split:]))
        except StatusParseError as e:
            # One unreadable part costs that part only: the others are still
            # what their MTAs reported.
            skipped += 1
            failure = f"no part could be read ({e})"
            continue
        parts.append(status)
        skipped += bad
    if not parts:
        raise ReportError(f"the TRACK answer holds no tracking-status: {failure}")
    return tuple(parts), skipped


def parse_report(lines: Sequence[bytes]) -> tuple[TrackingStatus, ...]:
    """The tracking-status parts of a TRACK answer body (lines without CRLF, dot-stuffing undone).

    Liberal: the boundary parameter quoted or not, any case; transport
    padding after delimiters; a missing close delimiter; unknown header
    lines; parts of other types skipped; unreadable tracking-status parts
    skipped.  Raises ReportError when no Content-Type with a multipart
    boundary is found or no tracking-status part can be read.
    """
    return parse_report_counted(lines)[0]


# -- Answer <-> wire.Response ----------------------------------------------

# What wire.Response refuses in a status text: the very pattern, not a copy
# that could drift from it, so that an Answer carrying text from anywhere
# can still be sent.
_TEXT_CONTROLS = wire._TEXT_FORBIDDEN
# RFC 3887 section 12: 1*NAMECHAR.  Bounded here (64 each, 10 in all) so
# that reasons can never crowd the text off a 998-octet status line.
_REASON = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_REASONS = 10


def _reasons(reasons: Iterable[str], must: str | None = None) -> tuple[str, ...]:
    # Only 1*NAMECHAR codes can be sent; an Answer built from JSON or a store
    # could hold anything, and the answer must still go out.
    if isinstance(reasons, str):
        reasons = (reasons,)
    kept = tuple(r for r in reasons if isinstance(r, str) and _REASON.fullmatch(r))
    if must is not None and must not in (reason.lower() for reason in kept):
        kept = (must, *kept)
    return kept[:_MAX_REASONS]


def _status_text(text: str, reasons: tuple[str, ...]) -> str:
    text = _TEXT_CONTROLS.sub(" ", text)
    # The status line is the indicator (5 octets at most), "/reason" each, a
    # space and the text: the text gets what is left of 998 octets.
    room = wire.MAX_LINE - 6 - sum(len(reason) + 1 for reason in reasons)
    octets = text.encode("utf-8", "replace")
    if len(octets) > room:
        text = octets[:room].decode("utf-8", "ignore")
    return text


def response_for_answer(answer: Answer) -> wire.Response:
    """The response a server sends for *answer* to TRACK.

    OK -> ``+OK+ Tracking information follows`` and the report; NOINFO ->
    ``-ERR/noinfo``; TEMP -> ``-TEMP``; ERROR -> ``-ERR``; BAD -> ``-BAD``,
    each with the answer's reasons and text.  An OK answer without parts has
    nothing to report and is sent as ``-ERR/noinfo`` (RFC 3887 section 4's
    other way of saying so).  Reasons that are not 1*NAMECHAR are dropped,
    control characters in the text become spaces, and an over-long text is
    cut, so that any Answer can be sent.  Raises ValueError only when a part
    cannot be serialised (see ``serialise_tracking_status``).
    """
    outcome = answer.outcome
    if outcome is Outcome.OK and answer.parts:
        return wire.Response(
            wire.Indicator.OK_MULTI, text=TRACK_TEXT, lines=tuple(build_report(answer.parts))
        )
    if outcome is Outcome.OK or outcome is Outcome.NOINFO:
        reasons = _reasons(answer.reasons if outcome is Outcome.NOINFO else (), "noinfo")
        text = _status_text(answer.text, reasons) or Answer.noinfo().text
        return wire.Response(wire.Indicator.ERR, reasons, text)
    indicator = {
        Outcome.TEMP: wire.Indicator.TEMP,
        Outcome.ERROR: wire.Indicator.ERR,
        Outcome.BAD: wire.Indicator.BAD,
    }[outcome]
    reasons = _reasons(answer.reasons)
    return wire.Response(indicator, reasons, _status_text(answer.text, reasons))


def answer_from_response(response: wire.Response) -> Answer:
    """The Answer a TRACK *response* gives (the client side of response_for_answer).

    ``+OK+`` -> OK with the report's parts; ``-ERR`` with ``/noinfo`` ->
    NOINFO; other ``-ERR`` -> ERROR; ``-TEMP`` -> TEMP; ``-BAD`` -> BAD.

    Never raises for what a server sent: a ``+OK+`` whose body holds no
    readable tracking-status, and a single-line ``+OK`` (RFC 3887 section 4:
    a TRACK success MUST be multi-line), become ERROR with the local reason
    ``garbled`` (``GARBLED``) and a text saying why.  A client (and the
    chaining gateway, which must keep going when one inner host talks
    nonsense) then handles every outcome in one place.
    """
    indicator = response.indicator
    if indicator is wire.Indicator.OK_MULTI:
        try:
            parts = parse_report(response.lines or ())
        except ReportError as e:
            return Answer.error((GARBLED,), f"unreadable TRACK answer: {e}")
        return Answer.found(parts)
    if indicator is wire.Indicator.OK:
        return Answer.error((GARBLED,), "a single-line +OK is not a TRACK answer")
    if indicator is wire.Indicator.TEMP:
        return Answer.temp(response.reasons, response.text)
    if indicator is wire.Indicator.BAD:
        return Answer(Outcome.BAD, reasons=response.reasons, text=response.text)
    if response.has_reason("noinfo"):
        return Answer(Outcome.NOINFO, reasons=response.reasons, text=response.text)
    return Answer.error(response.reasons, response.text)


# -- JSON (interface.md section 4) ----------------------------------------


def _extensions_json(extensions: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in extensions:
        # A JSON object holds a name once; the first wins, as for fields.
        out.setdefault(name, value)
    return out


def _recipient_json(rcpt: RecipientStatus) -> dict[str, Any]:
    return {
        "original_recipient": rcpt.original_recipient,
        "final_recipient": rcpt.final_recipient,
        "action": rcpt.action.value,
        "status": rcpt.status,
        "remote_mta": rcpt.remote_mta,
        "diagnostic_code": rcpt.diagnostic_code,
        "last_attempt_date": rcpt.last_attempt_date,
        "will_retry_until": rcpt.will_retry_until,
        "extensions": _extensions_json(rcpt.extensions),
    }


def _hop_json(part: TrackingStatus) -> dict[str, Any]:
    return {
        "reporting_mta": part.reporting_mta,
        "original_envelope_id": part.original_envelope_id,
        "arrival_date": part.arrival_date,
        "received_from_mta": part.received_from_mta,
        # Not in interface.md's example; added so that no field of the
        # model is lost (growth, not breakage).
        "dsn_gateway": part.dsn_gateway,
        "extensions": _extensions_json(part.extensions),
        "recipients": [_recipient_json(rcpt) for rcpt in part.recipients],
    }


def answer_to_json(answer: Answer, server: str) -> dict[str, Any]:
    """The JSON object of interface.md section 4 for *answer* from *server* ("host:port")."""
    if answer.outcome is Outcome.OK:
        return {
            "status": "ok",
            "server": server,
            "hops": [_hop_json(part) for part in answer.parts],
        }
    return {
        "status": answer.outcome.value,
        "server": server,
        "reason": list(answer.reasons),
        "text": answer.text,
    }


def _opt(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return None if value is None else str(value)


def _extensions_from_json(d: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in (d.get("extensions") or {}).items())


def answer_from_json(d: Mapping[str, Any]) -> Answer:
    """The Answer that ``answer_to_json`` made *d* from (the ``server`` key is not kept).

    Raises ValueError (KeyError, a subclass of LookupError, for a missing
    required key) when *d* is not of that shape.
    """
    outcome = Outcome(d["status"])
    if outcome is not Outcome.OK:
        return Answer(outcome, reasons=tuple(d.get("reason") or ()), text=str(d.get("text", "")))
    parts = []
    for hop in d["hops"]:
        recipients = tuple(
            RecipientStatus(
                final_recipient=str(r["final_recipient"]),
                action=Action(r["action"]),
                status=str(r["status"]),
                original_recipient=_opt(r, "original_recipient"),
                remote_mta=_opt(r, "remote_mta"),
                diagnostic_code=_opt(r, "diagnostic_code"),
                last_attempt_date=_opt(r, "last_attempt_date"),
                will_retry_until=_opt(r, "will_retry_until"),
                extensions=_extensions_from_json(r),
            )
            for r in hop.get("recipients") or ()
        )
        parts.append(
            TrackingStatus(
                original_envelope_id=str(hop["original_envelope_id"]),
                reporting_mta=str(hop["reporting_mta"]),
                arrival_date=_opt(hop, "arrival_date"),
                received_from_mta=_opt(hop, "received_from_mta"),
                dsn_gateway=_opt(hop, "dsn_gateway"),
                extensions=_extensions_from_json(hop),
                recipients=recipients,
            )
        )
    return Answer.found(parts)
