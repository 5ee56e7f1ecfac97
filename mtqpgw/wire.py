# -*- test-case-name: tests.test_wire -*-
"""The MTQP wire format (RFC 3887): command lines, status lines and dot-stuffed responses.

Sans-I/O, in the manner of h11: nothing here touches a socket, a clock or a
file.  The server's shell splits the stream on CRLF and hands single lines
(without the CRLF) to `parse_command`; the client's hands the octets it
receives to `ResponseParser.receive` and takes whole responses from
`ResponseParser.next_response`.  What goes back on the wire comes from
`Response.to_bytes` and the ``*_line`` builders.  Values are frozen dataclasses checked when they are
made, so an invalid command or response cannot exist and cannot be sent.

The grammar is RFC 3887 section 12; each regular expression below carries the
ABNF it implements, and every place where we knowingly differ from it (the
seed's defects, leniency peers need) says so.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mtqpgw.certifier import decode_secret

__all__ = [
    "MAX_LINE",
    "QUIT_LINE",
    "Command",
    "CommandError",
    "Comment",
    "Indicator",
    "Quit",
    "Response",
    "ResponseError",
    "ResponseParser",
    "StartTLS",
    "Track",
    "can_name_for_starttls",
    "comment_line",
    "greeting",
    "parse_command",
    "parse_options",
    "parse_status_line",
    "starttls_line",
    "starttls_offered",
    "starttls_required",
    "track_line",
]

# RFC 3887 2.2 and 2.3: every line is "limited to 998 characters before the CRLF".
MAX_LINE = 998

_WSP = " \t"

# ---------------------------------------------------------------------------
# Grammar

# WSP   = SP / HTAB                 (RFC 5234)
# VCHAR = %x21-7E
# RFC 3887 2.2: "Keywords and parameters consist of printable ASCII
# characters", so a whole command line is *(VCHAR / WSP).
_PRINTABLE = re.compile(rb"[\t\x20-\x7e]*")
_PRINTABLE_TEXT = re.compile(r"[\t\x20-\x7e]*")

# unique-envid (RFC 3885, the ENVID of RFC 3461): printable, no WSP.  We take
# it as 1*VCHAR rather than strict xtext, since the gateway only has to find
# it again, not decode it.
_ENVID = re.compile(r"[\x21-\x7e]+")

# Let-dig    = ALPHA / DIGIT                        (RFC 5321 4.1.2)
# Ldh-str    = *( ALPHA / DIGIT / "-" ) Let-dig
# sub-domain = Let-dig [Ldh-str]
# domain     = (sub-domain 1*("." sub-domain))      (RFC 3887 section 12)
# The {0,61} bound adds the DNS limit of 63 octets a label (RFC 1035 2.3.4).
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})+")
_MAX_DOMAIN = 253

# NAMECHAR = ALPHA / DIGIT / "-" / "_"
# response-info = *( "/" ( "admin" / ... / 1*NAMECHAR ) )
_REASON = re.compile(r"[A-Za-z0-9_-]+")

# single-line-success = "+OK"  response-info opt-text CRLF
# multi-line-success  = "+OK+" response-info opt-text CRLF *dataline dotcrlf
# temp-response       = "-TEMP" response-info opt-text CRLF
# error-response      = "-ERR"  response-info opt-text CRLF
# bad-response        = "-BAD"  response-info opt-text CRLF
# opt-text            = [WSP *(VCHAR / WSP)]
# ABNF quoted strings are case-insensitive (RFC 5234 2.3), hence re.I.
# "+OK+" is tried before "+OK"; nothing but "/", WSP or the end may follow
# the indicator, so the two never overlap.  Departure: opt-text may also
# hold 8-bit octets, provided they are UTF-8 (checked after the match):
# the text only goes to logs and servers do put UTF-8 there.
_STATUS_LINE = re.compile(
    rb"(\+OK\+|\+OK|-TEMP|-ERR|-BAD)((?:/[A-Za-z0-9_-]+)*)(?:[ \t]([\t\x20-\x7e\x80-\xff]*))?",
    re.IGNORECASE,
)

# What response text may not hold: C0 controls but HTAB (CR and LF above
# all: they would end the line), DEL, and the C1 controls that UTF-8 can
# carry.  Control characters in a log line forge lines or drive terminals.
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")

# RFC 3887 section 3 spells this one code "/MTQP" and interface.md section 5
# promises "+OK/MTQP" to other programs; every other code the RFC names is
# lower case, which is how reasons are stored.
_SPELLING = {"mtqp": "MTQP"}


# ---------------------------------------------------------------------------
# Responses


class Indicator(enum.Enum):
    """The status indicator that starts every response line (RFC 3887 2.3)."""

    OK = "+OK"
    OK_MULTI = "+OK+"
    TEMP = "-TEMP"
    ERR = "-ERR"
    BAD = "-BAD"


_INDICATORS = {member.value.encode("ascii"): member for member in Indicator}


class ResponseError(ValueError):
    """The peer sent something that is not an MTQP response (or too much of one)."""


def _status_bytes(indicator: Indicator, reasons: tuple[str, ...], text: str) -> bytes:
    parts = [indicator.value]
    for reason in reasons:
        parts.append("/")
        parts.append(_SPELLING.get(reason, reason))
    if text:
        parts.append(" ")
        parts.append(text)
    return "".join(parts).encode("utf-8")


def _check_data_lines(lines: tuple[bytes, ...]) -> None:
    """ValueError unless every line is bytes without CR/LF that fits 998 octets once stuffed.

    Done with C-level passes over all lines (a join, a count, a search, a max)
    instead of a Python test per line: a report can have thousands.
    """
    if not lines:
        return
    if set(map(type, lines)) != {bytes}:
        raise TypeError("data lines must be bytes")
    separators = len(lines) - 1
    joined = b"\n".join(lines)
    if joined.count(b"\n") != separators or b"\r" in joined:
        raise ValueError("a data line holds CR or LF")
    # Dot-stuffing adds an octet on the wire, and the 998-octet limit of
    # RFC 3887 2.3 is on the wire: a line starting with "." may hold 997.
    if max(map(len, lines)) >= MAX_LINE and any(
        len(line) + line.startswith(b".") > MAX_LINE for line in lines
    ):
        raise ValueError("a data line is longer than 998 octets once dot-stuffed")


@dataclass(frozen=True)
class Response:
    """One MTQP response: a status line and, for ``+OK+``, its data lines.

    ``reasons`` are stored lower-case (they compare case-insensitively);
    ``text`` is stored without surrounding white space; ``lines`` holds the
    data lines of a ``+OK+`` response (bytes, no CRLF, dot-stuffing undone)
    and is None for every other indicator.  Invalid values raise ValueError
    (or TypeError for the wrong types)::

        >>> Response(Indicator.ERR, ("noinfo",), "No such message").to_bytes()
        b'-ERR/noinfo No such message\\r\\n'
    """

    indicator: Indicator
    reasons: tuple[str, ...] = ()
    text: str = ""
    lines: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        indicator = Indicator(self.indicator)
        if isinstance(self.reasons, str | bytes):
            raise TypeError("reasons must be a sequence of names, not one string")
        reasons = tuple(self.reasons)
        for reason in reasons:
            if not isinstance(reason, str):
                raise TypeError("each reason must be a str")
            if not _REASON.fullmatch(reason):
                raise ValueError(f"reason {reason!r} is not 1*NAMECHAR")
        reasons = tuple(reason.lower() for reason in reasons)
        if not isinstance(self.text, str):
            raise TypeError("text must be a str")
        if _TEXT_FORBIDDEN.search(self.text):
            raise ValueError("response text must not hold CR, LF or other control characters")
        text = self.text.strip(_WSP)
        status = _status_bytes(indicator, reasons, text)
        if len(status) > MAX_LINE:
            raise ValueError("the status line is longer than 998 octets")
        lines = self.lines
        if indicator is Indicator.OK_MULTI:
            if isinstance(lines, bytes | str):
                raise TypeError("lines must be a sequence of lines, not one string")
            lines = () if lines is None else tuple(lines)
            _check_data_lines(lines)
        elif lines is not None:
            raise ValueError("only a +OK+ response has data lines")
        object.__setattr__(self, "indicator", indicator)
        object.__setattr__(self, "reasons", reasons)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "lines", lines)
        # Not a field: kept so to_bytes need not encode the status line again.
        object.__setattr__(self, "_status", status)

    @property
    def is_positive(self) -> bool:
        """True for ``+OK`` and ``+OK+``."""
        return self.indicator is Indicator.OK or self.indicator is Indicator.OK_MULTI

    def has_reason(self, name: str) -> bool:
        """Whether ``name`` (any case) is among the response-info codes."""
        return name.lower() in self.reasons

    def to_bytes(self) -> bytes:
        """Exactly the octets to send: status line, dot-stuffed data lines, ``.``, CRLFs."""
        status: bytes = self._status  # type: ignore[attr-defined]
        if self.lines is None:
            return status + b"\r\n"
        if not self.lines:
            return status + b"\r\n.\r\n"
        # No data line holds CR or LF, so "\r\n." occurs exactly where a line
        # starts with "."; one replace() stuffs them all at C speed.
        body = (b"\r\n" + b"\r\n".join(self.lines)).replace(b"\r\n.", b"\r\n..")
        return b"".join((status, body, b"\r\n.\r\n"))


def parse_status_line(line: bytes) -> tuple[Indicator, tuple[str, ...], str]:
    """Split a status line (without CRLF) into indicator, lower-case reasons and text.

    >>> parse_status_line(b"-TEMP/MTQP/admin Service down")
    (<Indicator.TEMP: '-TEMP'>, ('mtqp', 'admin'), 'Service down')

    Raises `ResponseError` for anything else.
    """
    if len(line) > MAX_LINE:
        raise ResponseError("a response line is longer than 998 octets")
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise ResponseError("not an MTQP status line")
    indicator = _INDICATORS[match.group(1).upper()]
    info = match.group(2)
    reasons = tuple(info[1:].decode("ascii").lower().split("/")) if info else ()
    raw_text = match.group(3) or b""
    try:
        text = raw_text.decode("utf-8")
    except UnicodeDecodeError:
        raise ResponseError("the status text is neither ASCII nor UTF-8") from None
    if _TEXT_FORBIDDEN.search(text):
        raise ResponseError("the status text holds a control character")
    return indicator, reasons, text.strip(_WSP)


class ResponseParser:
    """Turns a response stream back into `Response` values.

    Two ways in, one state: `receive` takes octets as they come off the
    connection and `next_response` hands out each response once it is
    complete (a shell loops on it until it returns None); `feed` takes one
    line without its CRLF and returns the `Response` it completes, or None
    while a ``+OK+`` response is still coming.  After a complete response
    the parser waits for the next status line, so a greeting and pipelined
    answers go through one parser.

    A ``+OK+`` response that is already whole in the buffer is cut out with
    one search for CRLF "." CRLF and one split, not a step per line: a
    gateway reads two answers per TRACK.  While one is incomplete, each
    newly completed line is checked as it arrives, so a bad or oversized
    line is refused when it comes, not when the response ends.

    ``max_lines`` caps the data lines of one response and ``max_octets``
    the octets it takes on the wire: status and data lines with their
    CRLFs (the ``.`` line, which is not kept, is not counted).  What is
    buffered never exceeds those caps by more than one line.  After a
    `ResponseError` the stream is out of step and the connection should be
    dropped; the parser itself forgets what it held and starts over at a
    status line.
    """

    def __init__(self, max_lines: int = 100_000, max_octets: int = 16 * 1024 * 1024) -> None:
        if max_lines < 0 or max_octets < 0:
            raise ValueError("the caps must not be negative")
        self.max_lines = max_lines
        self.max_octets = max_octets
        self._buffer = bytearray()
        # The status line of the +OK+ response whose data lines are coming.
        self._status: tuple[Indicator, tuple[str, ...], str] | None = None
        # For that response: octets of its status line, how far into the
        # buffer its data lines have been checked, and how many there were.
        self._status_octets = 0
        self._checked = 0
        self._lines_seen = 0

    @property
    def in_progress(self) -> bool:
        """True between the status line of a ``+OK+`` response and its ``.`` line."""
        return self._status is not None

    def _fail(self, message: str) -> ResponseError:
        self._buffer.clear()
        self._status = None
        return ResponseError(message)

    def receive(self, data: bytes) -> None:
        """Take octets from the stream; collect the responses with `next_response`."""
        self._buffer += data

    def next_response(self) -> Response | None:
        """The next complete response, or None until more octets arrive.

        Raises `ResponseError` for anything that is not a valid response or
        that exceeds a cap.
        """
        if self._status is None:
            return self._status_line()
        return self._data_lines()

    def feed(self, line: bytes) -> Response | None:
        """Take one line (no CRLF); the finished `Response`, or None while one is open."""
        if b"\r" in line or b"\n" in line:
            # A shell that splits on CRLF leaves a bare CR or LF inside a
            # line: a correct server never sends one, and it could smuggle a line.
            raise self._fail("a line holds a bare CR or LF")
        self._buffer += line
        self._buffer += b"\r\n"
        return self.next_response()

    def _status_line(self) -> Response | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            # Room for the CR of a CRLF still to come after 998 octets.
            if len(buffer) > MAX_LINE + (buffer[-1:] == b"\r"):
                raise self._fail("a response line is longer than 998 octets")
            return None
        try:
            indicator, reasons, text = parse_status_line(bytes(buffer[:end]))
        except ResponseError as e:
            raise self._fail(str(e)) from None
        del buffer[: end + 2]
        if indicator is not Indicator.OK_MULTI:
            return Response(indicator, reasons, text)
        if end + 2 > self.max_octets:
            raise self._fail("the response is larger than the octet cap")
        self._status = (indicator, reasons, text)
        self._status_octets = end + 2
        self._checked = 0
        self._lines_seen = 0
        return self._data_lines()

    def _data_lines(self) -> Response | None:
        buffer = self._buffer
        if buffer[:3] == b".\r\n":
            block, taken = b"", 3
        else:
            # The terminator may start up to four octets before what was
            # checked last time (the CRLF ending the last whole line).
            end = buffer.find(b"\r\n.\r\n", max(self._checked - 2, 0))
            if end < 0:
                self._check_incomplete()
                return None
            block, taken = bytes(buffer[:end]), end + 5
        lines = block.split(b"\r\n") if taken > 3 else []
        if self._status_octets + len(block) + 2 * (taken > 3) > self.max_octets:
            raise self._fail("the response is larger than the octet cap")
        if len(lines) > self.max_lines:
            raise self._fail("the response has more lines than the line cap")
        if max(map(len, lines), default=0) > MAX_LINE:
            raise self._fail("a response line is longer than 998 octets")
        # RFC 3887 2.3: a leading "." followed by other octets is stripped.
        if block[:1] == b"." or b"\r\n." in block:
            lines = [line[1:] if line[:1] == b"." else line for line in lines]
        indicator, reasons, text = self._status
        self._status = None
        del buffer[:taken]
        try:
            # Response refuses a bare CR or LF in a data line, among others.
            return Response(indicator, reasons, text, tuple(lines))
        except ValueError as e:
            raise self._fail(f"a data line is not valid: {e}") from None

    def _check_incomplete(self) -> None:
        """Check the lines completed since the last call, and the one still open."""
        buffer = self._buffer
        last = buffer.rfind(b"\r\n", self._checked)
        if last >= 0:
            new = bytes(buffer[self._checked : last])
            self._checked = last + 2
            lines = new.split(b"\r\n")
            self._lines_seen += len(lines)
            if max(map(len, lines)) > MAX_LINE:
                raise self._fail("a response line is longer than 998 octets")
            if self._lines_seen > self.max_lines:
                raise self._fail("the response has more lines than the line cap")
            bare = new.replace(b"\r\n", b"")
            if b"\r" in bare or b"\n" in bare:
                raise self._fail("a data line holds a bare CR or LF")
            if self._status_octets + self._checked > self.max_octets:
                raise self._fail("the response is larger than the octet cap")
        tail = len(buffer) - self._checked
        if tail > MAX_LINE + (buffer[-1:] == b"\r"):
            raise self._fail("a response line is longer than 998 octets")


# ---------------------------------------------------------------------------
# Greeting and options


def _option_line(option: str) -> bytes:
    if not isinstance(option, str):
        raise TypeError("an option line must be a str")
    if not option.strip(_WSP) or not _PRINTABLE_TEXT.fullmatch(option):
        raise ValueError("an option line must be non-blank printable ASCII")
    return option.encode("ascii")


def greeting(hostname: str, options: Sequence[str] = (), admin_down: bool = False) -> Response:
    """The initial status response (RFC 3887 section 3).

    >>> greeting("mtqp.example.com").to_bytes()
    b'+OK/MTQP mtqp.example.com MTQP server ready\\r\\n'

    With ``options`` (``["STARTTLS"]``, ``["STARTTLS required"]``) the
    greeting is ``+OK+`` with one line an option and the ``.`` line;
    ``admin_down`` gives ``-TEMP/MTQP/admin`` and ignores the options.
    """
    if not isinstance(hostname, str) or not _ENVID.fullmatch(hostname):
        raise ValueError("the hostname must be printable ASCII without white space")
    if isinstance(options, str):
        raise TypeError("options must be a sequence of option lines, not one string")
    if admin_down:
        return Response(
            Indicator.TEMP,
            ("MTQP", "admin"),
            f"{hostname} MTQP service down for administration, call back later",
        )
    text = f"{hostname} MTQP server ready"
    if not options:
        return Response(Indicator.OK, ("MTQP",), text)
    return Response(Indicator.OK_MULTI, ("MTQP",), text, tuple(map(_option_line, options)))


def parse_options(lines: Iterable[bytes | str]) -> dict[str, str]:
    """The greeting's option lines as ``{identifier: parameters}`` (RFC 3887 section 3).

    >>> parse_options([b"STARTTLS required", b"vnd.com.example.x a", b"  b"])
    {'starttls': 'required', 'vnd.com.example.x': 'a b'}

    Identifiers are lower-cased, parameters have their white space reduced
    to single spaces, and a line starting with WSP continues the option
    before it.  Liberal: blank lines and a continuation with nothing to
    continue are skipped, and an identifier listed twice gets both
    parameter lists, so that a "required" is never lost.
    """
    options: dict[str, str] = {}
    current: str | None = None
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        words = line.split()
        if not words:
            continue
        if line[0] in _WSP:
            if current is not None:
                options[current] = " ".join([options[current], *words]).strip()
            continue
        current = words[0].lower()
        options[current] = " ".join([options.get(current, ""), *words[1:]]).strip()
    return options


def starttls_offered(options: dict[str, str]) -> bool:
    """Whether the greeting's options list STARTTLS."""
    return "starttls" in options


def starttls_required(options: dict[str, str]) -> bool:
    """Whether the options say ``STARTTLS required`` (the parameter is case-insensitive)."""
    return "required" in options.get("starttls", "").lower().split()


# ---------------------------------------------------------------------------
# Commands


def _bare_envid(envid: str) -> str:
    """The envelope id without one enclosing pair of angle brackets.

    The seed's TRACK lines carry ``<id>`` while reports say ``id``
    (seed-defects.md): both are accepted, the bare form is kept.  The bare
    form may neither start with "<" nor end with ">", so that stripping is
    idempotent and ``<>``, ``<abc`` and ``abc>`` are refused.
    """
    if not isinstance(envid, str):
        raise TypeError("the envelope id must be a str")
    if len(envid) >= 2 and envid[0] == "<" and envid[-1] == ">":
        envid = envid[1:-1]
    if not envid:
        raise ValueError("The envelope id is empty")
    if not _ENVID.fullmatch(envid):
        raise ValueError("The envelope id must be printable ASCII without white space")
    if envid[0] == "<" or envid[-1] == ">":
        raise ValueError("The envelope id has unbalanced angle brackets")
    return envid


def _canonical_domain(domain: str) -> str:
    """An FQDN lower-cased and without a root dot; ValueError for anything else.

    Departure: one trailing dot is accepted (and dropped).  ``host.example.``
    is the absolute spelling of the same FQDN (RFC 1034 3.1), SRV targets are
    written that way, and certificate names never carry the dot, so the
    server compares the bare form.  A name whose last label is all digits
    matches the ABNF but is an IPv4 address, not an FQDN: refused.
    """
    if not isinstance(domain, str):
        raise TypeError("the domain must be a str")
    if domain.endswith("."):
        domain = domain[:-1]
    if (
        len(domain) > _MAX_DOMAIN
        or not _DOMAIN.fullmatch(domain)
        or domain.rpartition(".")[2].isdigit()
    ):
        raise ValueError("STARTTLS needs a fully qualified domain name")
    return domain.lower()


def _command_bytes(text: str) -> bytes:
    line = text.encode("ascii")
    if len(line) > MAX_LINE:
        raise ValueError("the command line would be longer than 998 octets")
    return line + b"\r\n"


@dataclass(frozen=True)
class Track:
    """TRACK: ``envid`` without angle brackets, ``secret`` the base64 text as sent.

    The secret is kept out of the repr, so logging a Track never logs it.
    """

    envid: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "envid", _bare_envid(self.envid))
        if not isinstance(self.secret, str):
            raise TypeError("the secret must be a str")
        if decode_secret(self.secret) is None:
            raise ValueError("The secret is not base64")

    def to_bytes(self) -> bytes:
        """``TRACK <envid> secret`` and CRLF; ValueError past 998 octets."""
        return _command_bytes(f"TRACK <{self.envid}> {self.secret}")


@dataclass(frozen=True)
class Comment:
    """COMMENT, whose text the server ignores (stored without surrounding white space)."""

    text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError("the comment must be a str")
        if not _PRINTABLE_TEXT.fullmatch(self.text):
            raise ValueError("The comment must be printable ASCII")
        object.__setattr__(self, "text", self.text.strip(_WSP))

    def to_bytes(self) -> bytes:
        """``COMMENT text`` (or ``COMMENT``) and CRLF; ValueError past 998 octets."""
        return _command_bytes(f"COMMENT {self.text}" if self.text else "COMMENT")


@dataclass(frozen=True)
class StartTLS:
    """STARTTLS: ``domain`` is the FQDN lower-cased, without a trailing dot."""

    domain: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", _canonical_domain(self.domain))

    def to_bytes(self) -> bytes:
        """``STARTTLS domain`` and CRLF."""
        return _command_bytes(f"STARTTLS {self.domain}")


@dataclass(frozen=True)
class Quit:
    """QUIT."""

    def to_bytes(self) -> bytes:
        """``QUIT`` and CRLF."""
        return QUIT_LINE


Command = Track | Comment | StartTLS | Quit

# quit-command = "QUIT" CRLF
QUIT_LINE = b"QUIT\r\n"


class CommandError(Exception):
    """A command line the server must refuse; ``response`` is the -BAD to send.

    The response text never repeats the line's parameters: a secret must
    not be echoed to the peer or reach a log.
    """

    def __init__(self, response: Response) -> None:
        super().__init__(response.text)
        self.response = response


def _bad(reason: str, text: str) -> CommandError:
    return CommandError(Response(Indicator.BAD, (reason,), text))


def parse_command(line: bytes) -> Command:
    """The command on one line (without its CRLF); `CommandError` if it is not one.

    >>> parse_command(b"track <12345-20010101@example.com> YWJjZGVmZ2gK")
    Track(envid='12345-20010101@example.com')
    """
    # RFC 3887 2.2: "A command line is limited to 998 characters before the CRLF."
    if len(line) > MAX_LINE:
        raise _bad("line-too-long", "Command line longer than 998 octets")
    if not _PRINTABLE.fullmatch(line):
        raise _bad("syntax", "Command line holds an octet that is not printable ASCII")
    if not line.strip(b" \t"):
        raise _bad("syntax", "Empty command line")
    # command = keyword *(1*WSP parameter) *WSP
    # The ABNF has no leading WSP; trailing WSP is in starttls-command only,
    # and accepting it everywhere is a departure (seed-defects.md: QUIT).
    if line[:1] in (b" ", b"\t"):
        raise _bad("syntax", "Command line starts with white space")
    # Only VCHAR and WSP are left, so split() splits on 1*WSP exactly.
    words = line.decode("ascii").split()
    keyword = words[0].upper()
    params = words[1:]

    # track-command = "TRACK" 1*WSP unique-envid 1*WSP mtrk-secret CRLF
    # mtrk-secret   = base64
    if keyword == "TRACK":
        if len(params) != 2:
            raise _bad("syntax", "TRACK takes an envelope id and a secret")
        try:
            return Track(params[0], params[1])
        except ValueError as e:
            # The messages are fixed sentences that never quote the value.
            raise _bad("syntax", str(e)) from None
    # comment-command = "COMMENT" opt-text CRLF
    # opt-text        = [WSP *(VCHAR / WSP)]
    if keyword == "COMMENT":
        return Comment(line[len(words[0]) :].decode("ascii"))
    # starttls-command = "STARTTLS" 1*WSP domain *WSP CRLF
    if keyword == "STARTTLS":
        if len(params) != 1:
            raise _bad("syntax", "STARTTLS takes one domain name")
        try:
            return StartTLS(params[0])
        except ValueError as e:
            raise _bad("syntax", str(e)) from None
    # quit-command = "QUIT" CRLF
    if keyword == "QUIT":
        if params:
            raise _bad("syntax", "QUIT takes no parameters")
        return Quit()
    raise _bad("unknown-command", "Unknown command")


def track_line(envid: str, secret: str) -> bytes:
    """``TRACK <envid> secret`` and CRLF, the envid with or without its brackets.

    Validated like the server parses it (ValueError), so nothing a caller
    passes can add a line to the stream.
    """
    return Track(envid, secret).to_bytes()


def can_name_for_starttls(domain: str) -> bool:
    """Whether STARTTLS can name ``domain``: an FQDN (RFC 3887 section 6), not an IP literal."""
    try:
        _canonical_domain(domain)
    except ValueError:
        return False
    return True


def starttls_line(domain: str) -> bytes:
    """``STARTTLS domain`` and CRLF; ValueError unless ``domain`` is an FQDN."""
    return StartTLS(domain).to_bytes()


def comment_line(text: str = "") -> bytes:
    """``COMMENT text`` and CRLF; ValueError unless ``text`` is printable ASCII."""
    return Comment(text).to_bytes()
