# -*- test-case-name: tests.test_uri -*-
"""The mtqp URI (RFC 3887 section 9) as an immutable value: parse, validate, render.

A sans-I/O module in the manner of hyperlink's ``URL``::

    >>> uri = MTQPURI.from_text("mtqp://mtqp.example.com/track/a%2Fb@example.com/YWJj")
    >>> uri.envid, uri.effective_port
    ('a/b@example.com', 1038)
    >>> uri.to_text()
    'mtqp://mtqp.example.com/track/a%2Fb@example.com/YWJj'

Grammar, and where this code departs from the letter of it::

    mtqp-uri = "mtqp://" authority "/track/" unique-envid "/" mtrk-secret

- The scheme and "/track/" are case-insensitive; the envid and secret are not.
- authority = host [":" port].  The host is a DNS name, an IPv4 literal or a
  bracketed IPv6 literal; it is kept lower-cased, IPv6 without brackets and in
  compressed form, and without a trailing dot.  User information ("user@"),
  IPv6 zone identifiers, percent-escapes in the host and an empty port are
  refused: none of them can name an MTQP server usefully.
- %XX escapes are decoded in the envid and the secret (section 9.4 requires
  "/", "?" and "%" to be escaped; any octet may be).  An unescaped "/" inside
  either is an error, because it cannot be told from the separator.
- The secret must be strict base64 once decoded; the envid must be printable
  US-ASCII without spaces, since it travels on a TRACK line.  The envid may be
  written inside angle brackets; they are dropped (spec/seed-defects.md).  As
  on a TRACK line (``wire.Track``), what is left may neither start with "<"
  nor end with ">".
- No query and no fragment: a literal "?" or "#" is refused with a hint to
  escape it.
- One trailing "/" after the secret is tolerated and ignored.  This is never
  ambiguous: a strict base64 text has a length divisible by four, so of
  "S" and "S/" at most one can be a valid secret, and a "/" meant as part of
  the secret has to be written %2F anyway.
- Surrounding white space is stripped (RFC 3986 appendix C: URIs copied from
  running text often carry some).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

from mtqpgw.certifier import decode_secret

__all__ = ["DEFAULT_PORT", "MTQPURI", "URIError", "check_host", "is_ip_literal", "split_host_port"]

#: The IANA port of MTQP (RFC 3887 section 10).
DEFAULT_PORT = 1038


class URIError(ValueError):
    """A text that is not a usable mtqp URI, or a value that cannot make one."""


# label = alphanumeric, then letters, digits, "-" or "_", not ending with "-"
# (RFC 1123 host names, plus "_" which DNS allows and SRV owner names use).
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DIGITS = re.compile(r"[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")
# pct-encoded = "%" HEXDIG HEXDIG
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# pchar = unreserved / pct-encoded / sub-delims / ":" / "@"  (RFC 3986 3.3).
# to_text leaves these alone and escapes every other octet, which covers the
# "/", "?" and "%" of RFC 3887 9.4 and also "#", spaces and non-ASCII.
_PCHAR_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)
_TRACK = "/track/"


def _quote(text: str) -> str:
    """Text for an error message: double-quoted, escaped to one ASCII line, kept short."""
    return json.dumps(text if len(text) <= 60 else text[:57] + "...")


def check_host(host: str) -> str:
    """The normalised form of a host name or IP literal (no brackets); URIError if invalid.

    ``check_host("Mail.Example.COM.") == "mail.example.com"``,
    ``check_host("0:0::1") == "::1"``.  Shared with the configuration checks so
    that a host is valid in the same way everywhere.
    """
    if not isinstance(host, str):
        raise URIError(f"a host must be text, got {type(host).__name__}")
    if not host:
        raise URIError("the host is empty")
    if ":" in host:
        if "%" in host:
            raise URIError(f"IPv6 zone identifiers are not supported: {_quote(host)}")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise URIError(f"{_quote(host)} is not a valid IPv6 address") from None
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if _DIGITS.fullmatch(labels[-1]):
        # A name whose last label is numeric would be read as an address by
        # resolvers and browsers alike; no top-level domain is numeric.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise URIError(f"{_quote(host)} is not a valid IPv4 address") from None
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise URIError(
            f"{_quote(host)} is not a valid host name (dot-separated labels of ASCII "
            'letters, digits, "-" and "_", at most 63 characters each)'
        )
    return name.lower()


def is_ip_literal(host: str) -> bool:
    """Whether *host* is an IPv4 or IPv6 address (no brackets) rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` (IPv6 as ``[::1]:1038`` or bare ``::1``) -> ``(host, port or None)``.

    Only the shape is checked here (the port is 1-65535); what the host must
    be is the caller's business.  Raises ValueError with a short reason.
    """
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not HOST[:PORT]: {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError(f"the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def _check_port(port: object) -> int | None:
    if port is None:
        return None
    # bool is an int subclass; True is not port 1.
    if not isinstance(port, int) or isinstance(port, bool):
        raise URIError(f"the port must be an integer, got {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise URIError(f"the port must be between 1 and 65535, got {port}")
    return port


def _bracketed(text: str) -> bool:
    return len(text) >= 2 and text[0] == "<" and text[-1] == ">"


def _check_envid(envid: object) -> str:
    if not isinstance(envid, str):
        raise URIError(f"the envelope id must be text, got {type(envid).__name__}")
    if _bracketed(envid):
        # Stripping one pair must leave the normal form, or a stored envid
        # would lose another pair on its next trip through text.
        if _bracketed(envid[1:-1]):
            raise URIError(
                f"the envelope id is in more than one pair of angle brackets: {_quote(envid)}"
            )
        envid = envid[1:-1]
    if not envid:
        raise URIError("the envelope id is empty")
    # wire.Track refuses these too: a URI must not hold an envid that no
    # TRACK line can carry.
    if envid[0] == "<" or envid[-1] == ">":
        raise URIError(f"the envelope id has unbalanced angle brackets: {_quote(envid)}")
    # The envid is the second word of a TRACK line, and an ENVID is xtext of
    # printable ASCII (RFC 3461): no spaces, controls or other characters.
    if not all("!" <= c <= "~" for c in envid):
        raise URIError(
            f"the envelope id must be printable US-ASCII without spaces, got {_quote(envid)}"
        )
    return envid


def _check_secret(secret: object) -> str:
    if not isinstance(secret, str):
        raise URIError(f"the secret must be text, got {type(secret).__name__}")
    if not secret:
        raise URIError("the secret is empty")
    # Never echo the secret: error messages end up in logs and terminals.
    if decode_secret(secret) is None:
        raise URIError(
            "the secret is not strict base64 (RFC 3887 section 9.4: a '/' in it "
            "must be written %2F)"
        )
    return secret


def _unescape(text: str, what: str) -> str:
    bad = _BAD_ESCAPE.search(text)
    if bad:
        raise URIError(
            f"the {what} has a '%' at position {bad.start()} that does not start "
            "a %XX escape (write a literal '%' as %25)"
        )
    try:
        octets = text.encode("utf-8")
    except UnicodeEncodeError:
        raise URIError(f"the {what} contains characters that are not valid text") from None
    octets = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), octets)
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise URIError(f"the {what} is not valid UTF-8 once %XX escapes are decoded") from None


def _escape(value: str) -> str:
    return "".join(
        chr(octet) if octet in _PCHAR_SAFE else f"%{octet:02X}" for octet in value.encode("utf-8")
    )


def _split_authority(authority: str) -> tuple[str, int | None]:
    if "@" in authority:
        raise URIError("user information (user@) is not allowed in an mtqp URI")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise URIError("an IPv6 literal in the authority lacks its closing ']'")
        literal, rest = authority[1:end], authority[end + 1 :]
        if literal[:1] in ("v", "V"):
            raise URIError("IPvFuture literals are not supported")
        if ":" not in literal:
            raise URIError(f"only IPv6 addresses go in brackets, got [{literal}]")
        if rest and not rest.startswith(":"):
            raise URIError(f"unexpected {_quote(rest)} after the IPv6 literal")
        host, port_text = literal, rest[1:] if rest else None
    else:
        host, colon, port_text = authority.partition(":")
        if ":" in port_text:
            raise URIError("an IPv6 address in an mtqp URI must be written in brackets, [::1]")
        if not colon:
            port_text = None
    if not host:
        raise URIError("the URI names no host")
    host = check_host(host)
    if port_text is None:
        return host, None
    if not port_text:
        raise URIError("the port after ':' is empty")
    # _PORT, not str.isdigit or int(): those accept non-ASCII digits and "_".
    if not _PORT.fullmatch(port_text):
        raise URIError(f"the port must be a number between 1 and 65535, got {_quote(port_text)}")
    return host, _check_port(int(port_text))


@dataclass(frozen=True)
class MTQPURI:
    """``mtqp://host[:port]/track/<envid>/<secret>`` as a value.

    Fields hold decoded values: ``envid`` without angle brackets or escapes,
    ``secret`` the base64 mtrk-secret as sent on a TRACK line, ``host``
    lower-cased (IPv6 without brackets), ``port`` None for the default.
    Construction validates and normalises, so every instance renders to a
    URI that parses back to an equal instance.  The secret is left out of
    ``repr`` so that logging a URI value does not log the secret.
    """

    host: str
    port: int | None
    envid: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", check_host(self.host))
        object.__setattr__(self, "port", _check_port(self.port))
        object.__setattr__(self, "envid", _check_envid(self.envid))
        object.__setattr__(self, "secret", _check_secret(self.secret))

    @property
    def effective_port(self) -> int:
        """The port to connect to: ``port``, or 1038 when the URI names none."""
        return DEFAULT_PORT if self.port is None else self.port

    @property
    def authority(self) -> str:
        """``host[:port]`` as written in the URI (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @classmethod
    def from_text(cls, text: str) -> MTQPURI:
        """Parse an mtqp URI; raise URIError, with a readable reason, if it is not one."""
        if not isinstance(text, str):
            raise URIError(f"an mtqp URI must be text, got {type(text).__name__}")
        text = text.strip(" \t\r\n")
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() != "mtqp":
            raise URIError("not an mtqp URI: it must start with mtqp://")
        if "#" in rest:
            raise URIError("an mtqp URI has no fragment: write a '#' in the envid as %23")
        if "?" in rest:
            raise URIError("an mtqp URI has no query: write a '?' in the envid or secret as %3F")
        authority, slash, path = rest.partition("/")
        host, port = _split_authority(authority)
        path = slash + path
        if path[: len(_TRACK)].lower() != _TRACK:
            raise URIError("the path must be /track/<envid>/<secret>")
        segments = path[len(_TRACK) :].split("/")
        if len(segments) == 3 and segments[2] == "":
            del segments[2]
        if len(segments) != 2:
            raise URIError(
                "the path must be /track/<envid>/<secret>, with any '/' inside "
                "the envid or secret written %2F"
            )
        envid = _unescape(segments[0], "envelope id")
        secret = _unescape(segments[1], "secret")
        return cls(host, port, envid, secret)

    def to_text(self) -> str:
        """The URI as text: lower-case scheme and host, "/", "?", "%", "#" etc. escaped."""
        return f"mtqp://{self.authority}/track/{_escape(self.envid)}/{_escape(self.secret)}"
