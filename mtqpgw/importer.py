# -*- test-case-name: tests.test_importer -*-
"""``mtqp import``: load tracking records from JSON Lines into the store (interface.md section 3).

One JSON object per line::

    {"envid": "12345-20010101@example.com",
     "certifier": "<base64 of SHA1(A)>",          (or "secret": "<A>", hashed here)
     "arrival_date": "Mon, 30 Nov 2026 15:15:15 -0500",
     "received_from_mta": "dns; client.example.net",
     "expires": "2026-12-30T00:00:00Z",
     "extensions": {"X-Queue-Id": "4Ab1"},
     "recipients": [{"original_recipient": "rfc822; user1@example1.com",
                     "final_recipient": "rfc822; user1@example1.com",
                     "action": "relayed", "status": "2.1.9",
                     "remote_mta": "dns; smtp.corp.example.com",
                     "diagnostic_code": null, "last_attempt_date": null,
                     "will_retry_until": null, "extensions": {}}]}

Decisions where the contract leaves room:

- Unknown keys, at the top or in a recipient, are refused (a typo such as
  ``"arival_date"`` would otherwise silently lose the field), and so are
  duplicate keys.  ``null`` is the same as an absent optional key.
- ``envid``: printable US-ASCII without spaces, at most 100 characters (the
  ENVID limit of RFC 3461), one pair of angle brackets stripped.  It is the
  decoded envelope id (no xtext).
- ``certifier`` must be strict base64 of 20 octets and is stored in canonical
  form; ``secret`` is hashed as its UTF-8 octets and then dropped.  Exactly
  one of the two.  Neither value ever appears in an error message.
- A recipient needs ``final_recipient``, or else ``original_recipient``,
  which then stands for both (RFC 3464 requires a Final-Recipient).  An
  address without a type gets ``rfc822; ``, an MTA name without one gets
  ``dns; ``.  ``action`` must be one of the seven RFC 3464/3886 values;
  ``status`` is an RFC 3463 code, optionally followed by a comment.
- Dates: ISO 8601 (``datetime.fromisoformat``, no zone means UTC) is
  converted to RFC 5322; an RFC 5322 date is kept as given when it already
  has the canonical shape, else rewritten canonically, so the report always
  carries an RFC 5322 date-time.  ``expires`` may also be epoch seconds; by
  default it is 30 days after ``arrival_date``, or after the import.  A
  record already expired is stored and never reported (the purge drops it).
- ``extensions``: an object of extra field names (``X-...``) to values.
- Text values may not hold control characters: a CR or LF would let a record
  inject fields into the report.
- Blank lines are skipped.  A bad line on standard input is reported as
  ``<stdin>:LINE: reason``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import IO, Any

from mtqpgw.certifier import certifier_for, decode_secret
from mtqpgw.config import ConfigError, StoreConfig, load_config
from mtqpgw.status import Action, RecipientStatus
from mtqpgw.store import ImportRecord, SQLiteWriter, StoreError

__all__ = [
    "BATCH_SIZE",
    "DEFAULT_EXPIRY",
    "DEFAULT_STORE",
    "ImportLineError",
    "main",
    "parse_line",
]

DEFAULT_STORE = StoreConfig.path  # the daemon's default, relative to the current directory
DEFAULT_EXPIRY = 30 * 86400
BATCH_SIZE = 1000
MAX_ENVID = 100
MAX_LINE = 1_000_000

EXIT_OK = 0
EXIT_BAD_LINES = 1
EXIT_FAILURE = 2

_TOP_KEYS = frozenset(
    {
        "envid",
        "certifier",
        "secret",
        "arrival_date",
        "received_from_mta",
        "expires",
        "extensions",
        "recipients",
    }
)
_RECIPIENT_KEYS = frozenset(
    {
        "original_recipient",
        "final_recipient",
        "action",
        "status",
        "remote_mta",
        "diagnostic_code",
        "last_attempt_date",
        "will_retry_until",
        "extensions",
    }
)
# Field names the report writes itself; an extension may not pose as one.
_STANDARD_FIELDS = frozenset(
    {
        "original-envelope-id",
        "reporting-mta",
        "dsn-gateway",
        "received-from-mta",
        "arrival-date",
        "original-recipient",
        "final-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
        "will-retry-until",
    }
)
_IMPORTABLE_ACTIONS = frozenset(a.value for a in Action)

# status-code = class "." subject "." detail   (RFC 3463)
# class = "2" / "4" / "5"; subject = 1*3digit; detail = 1*3digit
# then, as reports write it, an optional comment after white space.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?:[ \t]+\S.*)?\Z")

# field-name = 1*ftext; ftext = %d33-57 / %d59-126   (RFC 5322 section 3.6.8)
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")

# date-time = [day-of-week ","] date time   (RFC 5322 section 3.3), in the
# single-space shape email.utils.format_datetime emits (seconds optional).
# Comments, folding and obsolete zones such as "EST" go through the lenient
# parser instead and are rewritten in this shape.
_RFC5322_DATE = re.compile(
    r"(?:(?P<dow>Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(?P<day>\d{1,2}) "
    r"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<year>\d{4}) "
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))? (?P<zone>[+-]\d{4})\Z"
)
_MONTHS = {
    m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)
}
_DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()

# What is left of an ENVID once its xtext is decoded: printable US-ASCII
# without spaces (RFC 3461 section 4.4 xchar, plus "+" and "=").
_ENVID = re.compile(r"[!-~]+\Z")

# Control characters, C1 included, and the Unicode line and paragraph
# separators: anything a report reader might take for the end of a line.
# Tab is allowed (it is white space in a field body).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class ImportLineError(ValueError):
    """A line of an import file is not a valid record; ``str()`` is the short reason."""


def _short(key: str) -> str:
    """A key for an error message: quoted, and cut so a garbage line stays one short line."""
    return repr(key if len(key) <= 40 else key[:40] + "...")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ImportLineError(f"duplicate key {_short(key)}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ImportLineError(f"{name} is not a number")


def _text(value: Any, field: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ImportLineError(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise ImportLineError(f"{field} must be a string")
    value = value.strip()
    if not value:
        if required:
            raise ImportLineError(f"{field} is empty")
        return None
    if _CONTROL.search(value):
        raise ImportLineError(f"{field} contains a control character")
    return value


def _typed(value: Any, field: str, default_type: str, required: bool = False) -> str | None:
    """A ``type; value`` field (address or MTA name), the type added when missing."""
    text = _text(value, field, required)
    if text is None:
        return None
    kind, sep, rest = text.partition(";")
    if not sep:
        return f"{default_type}; {text}"
    if not kind.strip() or not rest.strip():
        raise ImportLineError(f"{field} must be 'type; value'")
    return text


def _parse_date(value: Any, field: str) -> tuple[str, datetime]:
    """(RFC 5322 text for the report, the moment it names)."""
    text = _text(value, field, required=True)
    assert text is not None
    shaped = _RFC5322_DATE.match(text)
    if shaped is not None:
        # The common case in bulk imports, parsed here directly: several
        # times faster than the general parser below.
        when = _from_rfc5322(shaped)
        if when is None:
            raise ImportLineError(f"{field} is not a valid date")
        dow = shaped["dow"]
        if dow is None or dow == _DAYS[when.weekday()]:
            return _checked(text, when, field)
        # A wrong day of the week: the date wins, the text is rewritten.
        return _checked(format_datetime(when), when, field)
    iso: datetime | None
    try:
        iso = datetime.fromisoformat(text)
    except ValueError:
        iso = None
    if iso is not None:
        if iso.tzinfo is None:
            iso = iso.replace(tzinfo=UTC)
        return _checked(format_datetime(iso), iso, field)
    try:
        loose: datetime | None = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        loose = None
    if loose is None:
        raise ImportLineError(f"{field} is not an RFC 5322 or ISO 8601 date")
    if loose.tzinfo is None:
        # "-0000": the zone is unknown (RFC 5322 section 3.3); read as UTC.
        loose = loose.replace(tzinfo=UTC)
    return _checked(format_datetime(loose), loose, field)


def _from_rfc5322(match: re.Match[str]) -> datetime | None:
    zone = match["zone"]
    offset = int(zone[1:3]) * 60 + int(zone[3:])
    try:
        # "-0000" means "zone unknown" (RFC 5322 section 3.3): read as UTC.
        tz = timezone(timedelta(minutes=-offset if zone[0] == "-" else offset))
        return datetime(
            int(match["year"]),
            _MONTHS[match["month"]],
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"] or 0),
            tzinfo=tz,
        )
    except ValueError:
        return None


def _checked(text: str, when: datetime, field: str) -> tuple[str, datetime]:
    try:
        when.timestamp()
    except (OverflowError, OSError, ValueError) as e:
        raise ImportLineError(f"{field} is out of range") from e
    return text, when


def _optional_date(value: Any, field: str) -> str | None:
    return None if value is None else _parse_date(value, field)[0]


def _expiry(value: Any, arrival: datetime | None, now: float) -> int:
    if value is None:
        start = arrival.timestamp() if arrival is not None else now
        return int(start + DEFAULT_EXPIRY)
    if isinstance(value, bool):
        raise ImportLineError("expires must be a date or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value < 2**53:
            raise ImportLineError("expires is out of range")
        return int(value)
    return int(_parse_date(value, "expires")[1].timestamp())


def _extensions(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ImportLineError("extensions must be an object")
    pairs = []
    for name, field_value in value.items():
        if not _FIELD_NAME.match(name):
            raise ImportLineError(f"extensions: {_short(name)} is not a field name")
        if name.lower() in _STANDARD_FIELDS:
            raise ImportLineError(f"extensions: {name} is a standard field")
        text = _text(field_value, f"extensions: {name}", required=True)
        assert text is not None
        pairs.append((name, text))
    return tuple(pairs)


def _envid(value: Any) -> str:
    if value is None:
        raise ImportLineError("envid is required")
    if not isinstance(value, str):
        raise ImportLineError("envid must be a string")
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if not value:
        raise ImportLineError("envid is empty")
    if len(value) > MAX_ENVID:
        raise ImportLineError(f"envid is longer than {MAX_ENVID} characters")
    if not _ENVID.match(value):
        raise ImportLineError("envid must be printable US-ASCII without spaces")
    if value.startswith("<") or value.endswith(">"):
        raise ImportLineError("envid has unbalanced angle brackets")
    return value


def _certifier(obj: dict[str, Any]) -> str:
    certifier, secret = obj.get("certifier"), obj.get("secret")
    if (certifier is None) == (secret is None):
        raise ImportLineError("give exactly one of certifier and secret")
    if secret is not None:
        if not isinstance(secret, str) or not secret:
            raise ImportLineError("secret must be a non-empty string")
        return certifier_for(secret.encode("utf-8"))
    octets = decode_secret(certifier) if isinstance(certifier, str) else None
    if octets is None or len(octets) != 20:
        raise ImportLineError("certifier must be base64 of 20 octets (a SHA-1 digest)")
    # Canonical form: check_secret compares base64 text, and strict base64
    # still lets the unused low bits of the last character vary.
    return base64.b64encode(octets).decode("ascii")


def _recipient(value: Any) -> RecipientStatus:
    """One recipient object; errors name the field, the caller adds which recipient."""
    if not isinstance(value, dict):
        raise ImportLineError("must be an object")
    if not value.keys() <= _RECIPIENT_KEYS:
        unknown = sorted(set(value) - _RECIPIENT_KEYS)
        raise ImportLineError(f"unknown key {_short(unknown[0])}")
    get = value.get
    original = _typed(get("original_recipient"), "original_recipient", "rfc822")
    final = _typed(get("final_recipient"), "final_recipient", "rfc822")
    if final is None:
        if original is None:
            raise ImportLineError("final_recipient is required")
        final = original
    action_text = _text(get("action"), "action", required=True)
    assert action_text is not None
    if action_text.lower() not in _IMPORTABLE_ACTIONS:
        raise ImportLineError(f"action must be one of {', '.join(sorted(_IMPORTABLE_ACTIONS))}")
    status = _text(get("status"), "status", required=True)
    assert status is not None
    if not _STATUS.match(status):
        raise ImportLineError("status must be an RFC 3463 code such as 2.0.0")
    return RecipientStatus(
        final_recipient=final,
        original_recipient=original,
        action=Action(action_text),
        status=status,
        remote_mta=_typed(get("remote_mta"), "remote_mta", "dns"),
        diagnostic_code=_text(get("diagnostic_code"), "diagnostic_code"),
        last_attempt_date=_optional_date(get("last_attempt_date"), "last_attempt_date"),
        will_retry_until=_optional_date(get("will_retry_until"), "will_retry_until"),
        extensions=_extensions(get("extensions")),
    )


def _recipients(value: Any) -> tuple[RecipientStatus, ...]:
    if not isinstance(value, list) or not value:
        raise ImportLineError("recipients must be a non-empty list")
    parsed = []
    for index, item in enumerate(value):
        try:
            parsed.append(_recipient(item))
        except ImportLineError as e:
            raise ImportLineError(f"recipients[{index}]: {e}") from None
    return tuple(parsed)


def parse_line(text: str, now: float) -> ImportRecord:
    """The record on one import line; ``now`` (epoch seconds) anchors the default expiry.

    Raises L{ImportLineError} with a short reason that never quotes a secret.

        >>> parse_line('{"envid": "a@b", "secret": "s", "recipients": '
        ...            '[{"final_recipient": "x@y", "action": "delivered", '
        ...            '"status": "2.0.0"}]}', 0).expires
        2592000
    """
    if len(text) > MAX_LINE:
        raise ImportLineError(f"line longer than {MAX_LINE} characters")
    try:
        obj = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as e:
        raise ImportLineError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ImportLineError("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ImportLineError("not a JSON object")
    if not obj.keys() <= _TOP_KEYS:
        unknown = sorted(set(obj) - _TOP_KEYS)
        raise ImportLineError(f"unknown key {_short(unknown[0])}")
    envid = _envid(obj.get("envid"))
    certifier = _certifier(obj)
    recipients = _recipients(obj.get("recipients"))
    arrival_text: str | None = None
    arrival: datetime | None = None
    if obj.get("arrival_date") is not None:
        arrival_text, arrival = _parse_date(obj["arrival_date"], "arrival_date")
    return ImportRecord(
        envid=envid,
        certifier=certifier,
        arrival_date=arrival_text,
        received_from_mta=_typed(obj.get("received_from_mta"), "received_from_mta", "dns"),
        expires=_expiry(obj.get("expires"), arrival, now),
        extensions=_extensions(obj.get("extensions")),
        recipients=recipients,
    )


# --- The command -------------------------------------------------------------


def _store_path(args: argparse.Namespace) -> str:
    if getattr(args, "store", None):
        return str(args.store)
    if getattr(args, "config", None):
        try:
            return str(load_config(args.config).store.path)
        except (ConfigError, OSError) as e:
            raise StoreError(f"{args.config}: {e}") from e
    return DEFAULT_STORE


def _lines(stream: IO[Any]) -> Iterator[str | None]:
    """Lines without their end, decoded as UTF-8; None for a line that is not UTF-8."""
    first = True
    for raw in stream:
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                first = False
                yield None
                continue
        line = raw.rstrip("\r\n")
        if first:
            line = line.removeprefix("\ufeff")
            first = False
        yield line


class _Import:
    """The state of one run: the writer, the pending batch and the tallies."""

    def __init__(self, writer: SQLiteWriter, stderr: IO[str]) -> None:
        self.writer = writer
        self.stderr = stderr
        self.pending: list[ImportRecord] = []
        self.imported = 0
        self.bad = 0

    def feed(self, name: str, stream: IO[Any]) -> None:
        now = time.time()
        for number, line in enumerate(_lines(stream), start=1):
            try:
                if line is None:
                    raise ImportLineError("not UTF-8")
                if not line.strip():
                    continue
                record = parse_line(line, now)
            except ImportLineError as e:
                self.bad += 1
                print(f"{name}:{number}: {e}", file=self.stderr)
                continue
            if record.expires <= now:
                # Stored as asked (a later import may extend it), but a
                # record past its expiry is never reported: say so.
                print(
                    f"{name}:{number}: warning: already expired; it will never be reported",
                    file=self.stderr,
                )
            self.pending.append(record)
            if len(self.pending) >= BATCH_SIZE:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            self.imported += self.writer.upsert(self.pending)
            self.pending = []


def _open_all(names: list[str]) -> list[tuple[str, IO[Any]]]:
    """Open every FILE before importing any, so a mistyped name imports nothing."""
    opened: list[tuple[str, IO[Any]]] = []
    try:
        for name in names:
            if name == "-":
                opened.append(("<stdin>", getattr(sys.stdin, "buffer", sys.stdin)))
            else:
                opened.append((name, open(name, "rb")))  # closed by _close_all
    except OSError as e:
        _close_all(opened)
        raise _ReadError(f"cannot read {name}: {e.strerror or e}") from e
    return opened


def _close_all(opened: list[tuple[str, IO[Any]]]) -> None:
    for name, stream in opened:
        if name != "<stdin>":
            stream.close()


class _ReadError(Exception):
    pass


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def main(args: argparse.Namespace) -> int:
    """Run ``mtqp import``: 0 when every line was stored, 1 with bad lines, 2 on failure."""
    stdout, stderr = sys.stdout, sys.stderr
    try:
        path = _store_path(args)
        opened = _open_all(list(args.files))
    except (StoreError, _ReadError) as e:
        print(f"mtqp import: {e}", file=stderr)
        return EXIT_FAILURE
    try:
        writer = SQLiteWriter(path)
    except StoreError as e:
        _close_all(opened)
        print(f"mtqp import: {e}", file=stderr)
        return EXIT_FAILURE
    run = _Import(writer, stderr)
    failure: str | None = None
    current = ""
    try:
        for current, stream in opened:
            run.feed(current, stream)
        run.flush()
    except OSError as e:
        failure = f"cannot read {current}: {e.strerror or e}"
    except (StoreError, sqlite3.Error) as e:
        failure = f"cannot write to the tracking store {path}: {e}"
    finally:
        writer.close()
        _close_all(opened)
    if failure is not None:
        print(f"mtqp import: {failure}", file=stderr)
    print(
        f"imported {_count(run.imported, 'record')} into {path}, {_count(run.bad, 'bad line')}",
        file=stdout,
    )
    if failure is not None:
        return EXIT_FAILURE
    return EXIT_BAD_LINES if run.bad else EXIT_OK
