# -*- test-case-name: tests.test_config -*-
"""The configuration file: TOML in, validated frozen values out (interface.md section 2).

``parse_config(data, base_dir)`` turns the dict that ``tomllib`` produced into
a ``Config`` or raises ``ConfigError``; it touches no file.  ``load_config(path)``
reads the one file, parses it, and then checks that the files it names can
be used (see ``check_files``).  ``default_config()`` is what the daemon runs on
without a file.  ``mtqp check-config`` and ``twistd mtqpgw`` both call
``load_config``, so they accept and refuse exactly the same files.

Decisions the contract leaves open, made here:

- Errors name the key as a TOML path: ``server.idle_timeout``,
  ``chain.inner[1].tls`` (array indexes count from 0, in file order),
  ``server.listen[0]``.  ``str(ConfigError)`` is always one line; the caller
  adds the file name.  The first problem found is reported, unknown keys in a
  table before its values.
- The default ``server.hostname`` is an argument (``default_hostname``,
  "localhost" when not given): finding this host's name is I/O, so
  ``tap.py`` passes ``socket.getfqdn()``.  ``server.hostname`` must be a host
  name, not an IP address: it goes into ``Reporting-MTA: dns; <hostname>``.
- ``server.listen`` entries are checked against Twisted's endpoint syntax
  without importing Twisted: the types ``tcp``, ``tcp6``, ``unix`` and
  ``systemd``, their parameter names, and port numbers (0 = any free port).
  ``ssl:`` is refused: implicit TLS is not MTQP, whose clients ask for
  STARTTLS.  A bare port number ``"1038"`` means ``"tcp:1038"`` and is
  stored in that form (Twisted itself no longer accepts the bare form).  A
  relative UNIX socket path is resolved against the file's directory and the
  string rewritten in keyword form (``unix:address=/etc/mtqpgw/mtqp.sock``).
- ``server.throttle_exempt`` entries become ``ipaddress`` networks; a plain
  address is a one-address network, and a network with host bits set
  (``10.0.0.5/24``) is refused as a likely typo.
- ``tls.required``: ``true``, ``false`` or a list of domains; an empty list
  is ``False``.  Requiring TLS with no certificate is refused (nobody could
  ever TRACK).  Domains are stored lower-cased; how they match an envelope
  id's domain is ``tls.py``'s policy.
- ``[chain]`` absent or an empty table means no chaining (``Config.chain`` is
  None); a non-empty ``[chain]`` needs at least one ``[[chain.inner]]``.
- ``chain.inner[].tls`` defaults to "opportunistic".  ``cafile`` is the trust
  for verifying the inner host's certificate against ``name`` whenever TLS
  is used: always with "required" (no cafile: the system's trust store),
  and with "opportunistic" when the host offers STARTTLS (interface.md's own
  example pairs the two).  With ``tls = "off"`` a cafile could do nothing, so
  it is refused rather than silently ignored.  Inner names and hosts may be
  host names or IP addresses; names are unique case-insensitively.
- ``[[rewrite]]`` ``match``: a glob on host names, case-insensitive, where
  ``*`` matches any run of characters including dots and the empty run, and
  ``?`` one character.  The rest is literal, so ``*.corp.example.com``
  matches ``a.b.corp.example.com`` but *not* ``corp.example.com`` (the dot
  before ``corp`` must be there): add a second rule for the bare name.
  Address literals may be globbed too (``10.0.0.*``, ``2001:db8::*``).
  ``re:<regex>`` is a Python regular expression, case-insensitive, that must
  match the whole name (``fullmatch``).  Names are matched without a
  trailing dot, brackets or ``IPv6:`` tag, as ``mtqpgw.rewrite`` does.
  ``replace`` must be a valid host name or address.
- Relative paths (store, certificates, keys, cafiles) are resolved against
  the directory of the config file (the current directory for
  ``default_config``); ``~`` is not expanded.  ``:memory:`` is kept as is.
- Types: seconds (``idle_timeout``, ``max_connection_time``,
  ``failed_track_window``, ``deadline``) may be integers or floats, stored as
  float, finite; counts and ports are integers; a TOML boolean is never a
  number (Python's ``bool`` is an ``int``; TOML's is not).
- File existence: ``parse_config`` does not look; ``load_config`` does, by
  default (``check=False`` turns it off), through ``check_files``: every
  certificate, key and cafile must be a readable file; the directories of the store and of a UNIX
  socket must exist.  A config that passes ``mtqp check-config`` therefore
  does not stop the daemon later for a missing file.  Whether the files
  hold usable PEM is for the TLS code to find out.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

from mtqpgw.uri import DEFAULT_PORT, URIError, check_host, is_ip_literal
from mtqpgw.wire import can_name_for_starttls

__all__ = [
    "ChainConfig",
    "Config",
    "ConfigError",
    "InnerHost",
    "RewriteRule",
    "ServerConfig",
    "StoreConfig",
    "TLSConfig",
    "check_files",
    "compile_match",
    "match_subject",
    "default_config",
    "load_config",
    "parse_config",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN_MESSAGE_CHOICES = ("noinfo", "opaque")
REPORT_CHOICES = ("hops", "combined")
TLS_CHOICES = ("off", "opportunistic", "required")
MIN_IDLE_TIMEOUT = 600  # RFC 3887 section 2.5: an autologout timer is at least 10 minutes
MAX_DEADLINE = 120  # RFC 3887 section 2.4: a chaining server answers within 2 minutes
MEMORY_STORE = ":memory:"


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is one line naming the key.

    ``key`` is the TOML path of the offending key (None for file-level
    problems), ``path`` the file when known, ``line`` the line of a TOML
    syntax error when known.
    """

    def __init__(
        self,
        message: str,
        key: str | None = None,
        *,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        text = f"{key}: {message}" if key else message
        # One line whatever a value or a library message contained.
        text = " ".join(text.splitlines())
        super().__init__(text)
        self.key, self.message, self.path, self.line = key, message, path, line


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: listening, naming and limits."""

    listen: tuple[str, ...] = ("tcp:1038",)
    hostname: str = "localhost"
    unknown_message: str = "noinfo"
    idle_timeout: float = 600.0
    max_connections: int = 1000
    max_connections_per_address: int = 20
    max_commands: int = 10000
    max_bad_commands: int = 20
    max_connection_time: float = 3600.0
    max_failed_tracks: int = 10
    failed_track_window: float = 600.0
    throttle_exempt: tuple[IPNetwork, ...] = ()
    # While this file exists the server is in administrative-down state
    # (greeting -TEMP/MTQP/admin, TRACK -TEMP/admin): ``touch`` it for
    # maintenance, remove it to come back.  None: never down.
    admin_down_file: str | None = None


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the SQLite tracking store; ``path`` absolute, or ":memory:"."""

    path: str = "mtqpgw.sqlite3"


@dataclass(frozen=True)
class TLSConfig:
    """``[tls]``: STARTTLS certificates as (cert_path, key_path), and who must use TLS.

    ``required`` is True (every TRACK), False, or a tuple of lower-cased
    envelope-id domains whose TRACK needs TLS first.
    """

    certificates: tuple[tuple[str, str], ...] = ()
    required: bool | tuple[str, ...] = False


@dataclass(frozen=True)
class InnerHost:
    """One ``[[chain.inner]]`` host: ``name`` as in Remote-MTA, reached at ``host:port``.

    ``tls`` is "off", "opportunistic" or "required"; ``cafile`` (absolute path
    or None) verifies the host's certificate against ``name`` whenever TLS is
    used.
    """

    name: str
    host: str
    port: int = DEFAULT_PORT
    tls: str = "opportunistic"
    cafile: str | None = None


@dataclass(frozen=True)
class ChainConfig:
    """``[chain]``: chaining to inner MTQP hosts."""

    deadline: float = 110.0
    report: str = "hops"
    fanout: bool = True
    max_depth: int = 4
    inner: tuple[InnerHost, ...] = ()

    def find(self, name: str) -> InnerHost | None:
        """The inner host called ``name`` (case-insensitive, trailing dot ignored), or None."""
        wanted = name.rstrip(".").lower()
        for inner in self.inner:
            if inner.name == wanted:
                return inner
        return None


# A glob is a host name or address literal with wildcards: nothing else
# could match a host.
_GLOB = re.compile(r"[A-Za-z0-9._:\[\]*?-]+")


def compile_match(match: str) -> re.Pattern[str]:
    """The compiled, case-insensitive form of a ``[[rewrite]]`` ``match``; ValueError if bad.

    Use the result with ``fullmatch``.  See the module docstring for the
    glob rules.
    """
    if not isinstance(match, str):
        raise ValueError(f"must be a string, got {_describe(match)}")
    if match[:3].lower() == "re:":
        body = match[3:]
        if not body:
            raise ValueError('the regular expression after "re:" is empty')
        try:
            return re.compile(body, re.IGNORECASE)
        except (re.error, OverflowError, RecursionError, ValueError) as e:
            raise ValueError(f"bad regular expression: {e}") from None
    if not _GLOB.fullmatch(match):
        raise ValueError(
            f'{_describe(match)} is not a host-name glob (letters, digits, "-", "_", ".", ":", '
            '"*" and "?"); write "re:..." for a regular expression'
        )
    subject = match_subject(match)
    if not subject:
        raise ValueError(f"{_describe(match)} matches no host name")
    translated = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in subject)
    return re.compile(translated, re.IGNORECASE)


def match_subject(name: str) -> str:
    """A host name or literal as rules see it: no trailing dot, brackets or IPv6: tag.

    ``mtqpgw.rewrite`` matches with this same function, so that a rule means
    one thing whichever module applies it.
    """
    subject = name.strip().rstrip(".")
    if subject.startswith("[") and subject.endswith("]"):
        subject = subject[1:-1].strip()
    if subject[:5].lower() == "ipv6:":
        subject = subject[5:]
    return subject


@dataclass(frozen=True)
class RewriteRule:
    """One ``[[rewrite]]``: host names matching ``match`` become ``replace``.

    ``match`` is kept as written; ``pattern`` is its compiled form, and
    ``matches(host)`` the test to use.  ``addresses`` also rewrites the
    domain of recipient addresses.
    """

    match: str
    replace: str
    addresses: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_match(self.match))

    def matches(self, host: str) -> bool:
        """Whether ``host`` matches: a DNS name (trailing dot ignored) or an address
        literal (``[10.0.0.5]``, ``[IPv6:2001:db8::1]``: brackets and tag ignored)."""
        return self.pattern.fullmatch(match_subject(host)) is not None


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from, None for defaults."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    chain: ChainConfig | None = None
    rewrite: tuple[RewriteRule, ...] = ()
    source: str | None = None


# ---------------------------------------------------------------------------
# Messages


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_text(key: object) -> str:
    if isinstance(key, str) and _BARE_KEY.fullmatch(key) and len(key) <= 60:
        return key
    return _describe(key)


def _join(path: str, key: object) -> str:
    return f"{path}.{_key_text(key)}" if path else _key_text(key)


def _describe(value: object) -> str:
    """A value as a TOML user would recognise it, one short line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # str() of a huge int is slow, and refused past 4300 digits.
        return str(value) if abs(value) < 10**18 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(shown)
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    return f"a {type(value).__name__}"


def _one_of(choices: Sequence[str]) -> str:
    return "must be one of " + ", ".join(f'"{c}"' for c in choices)


# ---------------------------------------------------------------------------
# Reading values


_MISSING: Any = object()


class _Table:
    """A TOML table being read: unknown keys are refused up front."""

    def __init__(self, data: object, path: str, keys: Sequence[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"must be a table, got {_describe(data)}", path or None)
        for key in data:
            if key not in keys:
                hint = ""
                if isinstance(key, str):
                    close = difflib.get_close_matches(key, keys, n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise ConfigError(f"unknown key{hint}", _join(path, key))
        self.data, self.path = data, path

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def get(self, name: str) -> Any:
        return self.data.get(name, _MISSING)

    def has(self, name: str) -> bool:
        return name in self.data

    def integer(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.get(name)
        if value is _MISSING:
            return default
        # bool is an int subclass in Python; in TOML it is not a number.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"must be an integer, got {_describe(value)}", self.key(name))
        if value < minimum:
            raise ConfigError(
                f"must be at least {minimum}, got {_describe(value)}", self.key(name)
            )
        return value

    def number(self, name: str, default: float) -> float:
        """A number of seconds, integer or float; the range is the caller's to check."""
        value = self.get(name)
        if value is _MISSING:
            return float(default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(
                f"must be a number of seconds, got {_describe(value)}", self.key(name)
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"must be a finite number of seconds, got {_describe(value)}", self.key(name)
            )
        return float(value)

    def seconds(self, name: str, default: float) -> float:
        value = self.number(name, default)
        if value <= 0:
            raise ConfigError(
                f"must be more than 0 seconds, got {_describe(self.get(name))}", self.key(name)
            )
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {_describe(value)}", self.key(name))
        return value

    def string(self, name: str, default: str | None = None) -> str:
        value = self.get(name)
        if value is _MISSING:
            if default is None:
                raise ConfigError("missing", self.key(name))
            return default
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {_describe(value)}", self.key(name))
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(f"{_one_of(choices)}, got {_describe(value)}", self.key(name))
        return value

    def array(self, name: str) -> list[Any]:
        value = self.get(name)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"must be an array, got {_describe(value)}", self.key(name))
        return value


def _host(value: str, key: str, *, names_only: bool = False) -> str:
    try:
        host = check_host(value)
    except URIError as e:
        raise ConfigError(str(e), key) from None
    if names_only and is_ip_literal(host):
        raise ConfigError(f"must be a host name, not an IP address, got {_describe(value)}", key)
    return host


def _path(value: str, key: str, base_dir: str) -> str:
    if not value:
        raise ConfigError("must not be empty", key)
    if "\0" in value:
        raise ConfigError("must not contain a NUL character", key)
    return os.path.normpath(os.path.join(base_dir, value))


# ---------------------------------------------------------------------------
# Twisted server endpoint strings, checked without importing Twisted.

# Per endpoint type: (parameter names in positional order, the parameters that must be given)
_ENDPOINTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tcp": (("port", "interface", "backlog"), ("port",)),
    "tcp6": (("port", "backlog", "interface"), ("port",)),
    "unix": (("address", "mode", "backlog", "lockfile"), ("address",)),
    "systemd": (("domain", "index", "name"), ("domain",)),
}
_NUMBER = re.compile(r"[0-9]+")
# Parameters that name files ("@" starts a Linux abstract socket name).
_ENDPOINT_PATHS = {
    "unix": ("address",),
}


def _endpoint_params(description: str) -> list[tuple[str | None, str]]:
    """(key or None, value) pairs, as Twisted's endpoint parser splits them.

    ":" separates parameters, the first "=" in one separates its name from its
    value, and a backslash makes the next character literal.
    """
    params: list[tuple[str | None, str]] = []
    buffer: list[str] = []
    key: str | None = None
    chars = iter(description)
    for c in chars:
        if c == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("it ends with a lone backslash")
            buffer.append(escaped)
        elif c == ":":
            params.append((key, "".join(buffer)))
            buffer, key = [], None
        elif c == "=" and key is None:
            key, buffer = "".join(buffer), []
        else:
            buffer.append(c)
    params.append((key, "".join(buffer)))
    return params


def _endpoint_arguments(description: str) -> tuple[str, dict[str, str]]:
    """The endpoint type and its parameters by name; ValueError for an unknown type or name."""
    params = _endpoint_params(description)
    kind_key, kind = params[0]
    if kind_key is not None or kind not in _ENDPOINTS:
        known = ", ".join(_ENDPOINTS)
        raise ValueError(f"it must start with an endpoint type ({known}) or be a port number")
    names = _ENDPOINTS[kind][0]
    positional = [value for key, value in params[1:] if key is None]
    if len(positional) > len(names):
        raise ValueError(f"too many parameters for a {kind} endpoint")
    given = dict(zip(names, positional, strict=False))
    for key, value in params[1:]:
        if key is None:
            continue
        if key not in names:
            raise ValueError(f"{kind} endpoints have no parameter {_describe(key)}")
        if key in given:
            raise ValueError(f"the {key} parameter is given twice")
        given[key] = value
    return kind, given


def _check_endpoint(description: str, base_dir: str) -> str:
    """The endpoint string to use; ValueError saying why it cannot work.

    A relative file name in it (a UNIX socket) is
    resolved against ``base_dir`` like every other path in the file; the
    string is then rewritten in keyword form.
    """
    if _NUMBER.fullmatch(description):
        description = "tcp:" + description
    kind, given = _endpoint_arguments(description)
    for name in _ENDPOINTS[kind][1]:
        if not given.get(name):
            raise ValueError(f"{kind} endpoints need a {name} parameter")
    if "port" in given:
        port = given["port"]
        if not _NUMBER.fullmatch(port) or len(port) > 5 or int(port) > 65535:
            raise ValueError(f"the port must be a number from 0 to 65535, got {_describe(port)}")
    if "backlog" in given and not _NUMBER.fullmatch(given["backlog"]):
        raise ValueError(f"the backlog must be a number, got {_describe(given['backlog'])}")
    if kind == "systemd":
        if not (given.get("index") or given.get("name")):
            raise ValueError("a systemd endpoint needs an index or a name")
        if given.get("index") and not _NUMBER.fullmatch(given["index"]):
            raise ValueError(f"the index must be a number, got {_describe(given['index'])}")
    relative = [
        name
        for name in _ENDPOINT_PATHS.get(kind, ())
        if given.get(name) and not os.path.isabs(given[name]) and not given[name].startswith("@")
    ]
    if not relative:
        return description
    for name in relative:
        if "\0" in given[name]:
            raise ValueError(f"the {name} contains a NUL character")
        given[name] = os.path.normpath(os.path.join(base_dir, given[name]))
    return ":".join([kind, *(f"{name}={_endpoint_escape(given[name])}" for name in given)])


def _endpoint_escape(value: str) -> str:
    return re.sub(r"([\\:=])", r"\\\1", value)


# ---------------------------------------------------------------------------
# Sections

_SERVER_KEYS = (
    "listen",
    "hostname",
    "unknown_message",
    "idle_timeout",
    "max_connections",
    "max_connections_per_address",
    "max_commands",
    "max_bad_commands",
    "max_connection_time",
    "max_failed_tracks",
    "failed_track_window",
    "throttle_exempt",
    "admin_down_file",
)


def _server(data: object, base_dir: str, default_hostname: str) -> ServerConfig:
    t = _Table(data, "server", _SERVER_KEYS)
    defaults = ServerConfig()
    listen = t.get("listen")
    if listen is _MISSING:
        entries = [(t.key("listen"), defaults.listen[0])]
    elif isinstance(listen, str):
        entries = [(t.key("listen"), listen)]
    elif isinstance(listen, list):
        if not listen:
            raise ConfigError("must name at least one endpoint", t.key("listen"))
        entries = [(f"{t.key('listen')}[{i}]", value) for i, value in enumerate(listen)]
    else:
        raise ConfigError(
            f"must be an endpoint string or an array of them, got {_describe(listen)}",
            t.key("listen"),
        )
    endpoints = []
    for key, value in entries:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {_describe(value)}", key)
        if value.strip().lower().startswith("ssl:"):
            # Implicit TLS is not MTQP: clients speak plain MTQP and ask for
            # STARTTLS (RFC 3887 section 6), which [tls] certificates enable.
            raise ConfigError(
                "ssl: endpoints are not MTQP; listen on tcp: and configure [tls] "
                "certificates for STARTTLS",
                key,
            )
        try:
            endpoints.append(_check_endpoint(value, base_dir))
        except ValueError as e:
            raise ConfigError(
                f"{_describe(value)} is not a Twisted server endpoint: {e}", key
            ) from None

    if t.has("hostname"):
        hostname = _host(t.string("hostname"), t.key("hostname"), names_only=True)
    else:
        try:
            hostname = _host(default_hostname, t.key("hostname"), names_only=True)
        except ConfigError as e:
            raise ConfigError(
                f"the default host name is not usable ({e.message}); set server.hostname",
                e.key,
            ) from None

    idle_timeout = t.number("idle_timeout", defaults.idle_timeout)
    if idle_timeout < MIN_IDLE_TIMEOUT:
        raise ConfigError(
            f"must be at least {MIN_IDLE_TIMEOUT} seconds (RFC 3887 section 2.5), "
            f"got {_describe(t.get('idle_timeout'))}",
            t.key("idle_timeout"),
        )

    exempt = []
    for i, entry in enumerate(t.array("throttle_exempt")):
        key = f"{t.key('throttle_exempt')}[{i}]"
        if not isinstance(entry, str):
            raise ConfigError(
                f"must be an IP address or network string, got {_describe(entry)}", key
            )
        try:
            exempt.append(ipaddress.ip_network(entry, strict=True))
        except ValueError:
            try:
                loose = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{_describe(entry)} is not an IP address or network", key
                ) from None
            raise ConfigError(
                f"{_describe(entry)} has host bits set (did you mean {_describe(str(loose))}?)",
                key,
            ) from None

    return ServerConfig(
        listen=tuple(endpoints),
        hostname=hostname,
        unknown_message=t.choice(
            "unknown_message", defaults.unknown_message, UNKNOWN_MESSAGE_CHOICES
        ),
        idle_timeout=idle_timeout,
        max_connections=t.integer("max_connections", defaults.max_connections),
        max_connections_per_address=t.integer(
            "max_connections_per_address", defaults.max_connections_per_address
        ),
        max_commands=t.integer("max_commands", defaults.max_commands),
        max_bad_commands=t.integer("max_bad_commands", defaults.max_bad_commands),
        max_connection_time=t.seconds("max_connection_time", defaults.max_connection_time),
        max_failed_tracks=t.integer("max_failed_tracks", defaults.max_failed_tracks),
        failed_track_window=t.seconds("failed_track_window", defaults.failed_track_window),
        throttle_exempt=tuple(exempt),
        admin_down_file=(
            _path(t.string("admin_down_file"), t.key("admin_down_file"), base_dir)
            if t.has("admin_down_file")
            else None
        ),
    )


def _store(data: object, base_dir: str) -> StoreConfig:
    t = _Table(data, "store", ("path",))
    path = t.string("path", StoreConfig().path)
    if path != MEMORY_STORE:
        path = _path(path, t.key("path"), base_dir)
    return StoreConfig(path=path)


def _tls(data: object, base_dir: str) -> TLSConfig:
    t = _Table(data, "tls", ("certificates", "required"))
    certificates = []
    for i, entry in enumerate(t.array("certificates")):
        c = _Table(entry, f"{t.key('certificates')}[{i}]", ("cert", "key"))
        for name in ("cert", "key"):
            if not c.has(name):
                raise ConfigError(
                    "missing (each certificate needs both cert and key)", c.key(name)
                )
        cert = _path(c.string("cert"), c.key("cert"), base_dir)
        key = _path(c.string("key"), c.key("key"), base_dir)
        certificates.append((cert, key))

    value = t.get("required")
    required: bool | tuple[str, ...]
    if value is _MISSING:
        required = False
    elif isinstance(value, bool):
        required = value
    elif isinstance(value, list):
        domains = []
        for i, domain in enumerate(value):
            key = f"{t.key('required')}[{i}]"
            if not isinstance(domain, str):
                raise ConfigError(f"must be a domain string, got {_describe(domain)}", key)
            domains.append(_host(domain, key, names_only=True))
        required = tuple(dict.fromkeys(domains)) or False
    else:
        raise ConfigError(
            f"must be true, false or an array of domains, got {_describe(value)}",
            t.key("required"),
        )
    if required and not certificates:
        raise ConfigError(
            "TLS cannot be required without a certificate in tls.certificates", t.key("required")
        )
    return TLSConfig(certificates=tuple(certificates), required=required)


def _inner(data: object, path: str, base_dir: str) -> InnerHost:
    t = _Table(data, path, ("name", "host", "port", "tls", "cafile"))
    if not t.has("name"):
        raise ConfigError("missing (every [[chain.inner]] needs a name)", t.key("name"))
    name = _host(t.string("name"), t.key("name"))
    host = _host(t.string("host"), t.key("host")) if t.has("host") else name
    port = t.integer("port", DEFAULT_PORT)
    if port > 65535:
        raise ConfigError(f"must be at most 65535, got {_describe(port)}", t.key("port"))
    tls = t.choice("tls", "opportunistic", TLS_CHOICES)
    if tls == "required" and not can_name_for_starttls(name):
        # STARTTLS names an FQDN (RFC 3887 section 6) and the certificate
        # is checked against it: an IP literal or one label cannot be.
        raise ConfigError(
            f'tls = "required" needs a fully qualified domain name, got {_describe(name)}',
            t.key("name"),
        )
    cafile = None
    if t.has("cafile"):
        cafile = _path(t.string("cafile"), t.key("cafile"), base_dir)
        if tls == "off":
            raise ConfigError(
                'cannot be used with tls = "off": set tls to "opportunistic" or "required"',
                t.key("cafile"),
            )
    return InnerHost(name=name, host=host, port=port, tls=tls, cafile=cafile)


def _chain(data: object, base_dir: str) -> ChainConfig | None:
    t = _Table(data, "chain", ("deadline", "report", "fanout", "max_depth", "inner"))
    if not t.data:
        return None
    defaults = ChainConfig()
    deadline = t.number("deadline", defaults.deadline)
    if not 0 < deadline < MAX_DEADLINE:
        raise ConfigError(
            f"must be more than 0 and less than {MAX_DEADLINE} seconds (RFC 3887 section 2.4), "
            f"got {_describe(t.get('deadline'))}",
            t.key("deadline"),
        )
    report = t.choice("report", defaults.report, REPORT_CHOICES)
    fanout = t.boolean("fanout", defaults.fanout)
    max_depth = t.integer("max_depth", defaults.max_depth)
    inner: list[InnerHost] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(t.array("inner")):
        path = f"{t.key('inner')}[{i}]"
        host = _inner(entry, path, base_dir)
        if host.name in seen:
            raise ConfigError(
                f"{_describe(host.name)} is already the name of {seen[host.name]}",
                f"{path}.name",
            )
        seen[host.name] = path
        inner.append(host)
    if not inner:
        raise ConfigError(
            "[chain] is set but names no inner host: add a [[chain.inner]] or remove [chain]",
            t.key("inner"),
        )
    return ChainConfig(
        deadline=deadline, report=report, fanout=fanout, max_depth=max_depth, inner=tuple(inner)
    )


def _rewrite(data: object) -> tuple[RewriteRule, ...]:
    if not isinstance(data, list):
        raise ConfigError(
            f"must be an array of tables ([[rewrite]]), got {_describe(data)}", "rewrite"
        )
    rules = []
    for i, entry in enumerate(data):
        t = _Table(entry, f"rewrite[{i}]", ("match", "replace", "addresses"))
        for name in ("match", "replace"):
            if not t.has(name):
                raise ConfigError(
                    "missing (each [[rewrite]] needs match and replace)", t.key(name)
                )
        match = t.string("match")
        try:
            compile_match(match)
        except ValueError as e:
            raise ConfigError(str(e), t.key("match")) from None
        replace = _host(t.string("replace"), t.key("replace"))
        rules.append(RewriteRule(match, replace, t.boolean("addresses", False)))
    return tuple(rules)


# ---------------------------------------------------------------------------
# Entry points

_SECTIONS = ("server", "store", "tls", "chain", "rewrite")


def parse_config(
    data: object,
    base_dir: str,
    *,
    default_hostname: str = "localhost",
    source: str | None = None,
) -> Config:
    """Validate a dict as ``tomllib`` returns it; relative paths are resolved against ``base_dir``.

    Raises ConfigError, and nothing else, for any input.
    """
    top = _Table(data, "", _SECTIONS)
    base_dir = os.path.abspath(base_dir)
    return Config(
        server=_server(top.data.get("server", {}), base_dir, default_hostname),
        store=_store(top.data.get("store", {}), base_dir),
        tls=_tls(top.data.get("tls", {}), base_dir),
        chain=_chain(top.data.get("chain", {}), base_dir),
        rewrite=_rewrite(top.data.get("rewrite", [])),
        source=source,
    )


def default_config(default_hostname: str = "localhost", base_dir: str | None = None) -> Config:
    """The embedded defaults: as if the file were empty, in ``base_dir`` (default: the cwd)."""
    return parse_config(
        {}, os.getcwd() if base_dir is None else base_dir, default_hostname=default_hostname
    )


_TOML_WHERE = re.compile(
    r"(?P<what>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)"
)


def load_config(
    path: str | os.PathLike[str],
    *,
    default_hostname: str = "localhost",
    check: bool = True,
) -> Config:
    """Read, parse and validate the TOML file at ``path``; ConfigError for every problem.

    With ``check`` (the default, and what the daemon and ``mtqp check-config``
    use), also ``check_files`` on the result.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(f"cannot read the file: {reason}", path=path) from None
    except tomllib.TOMLDecodeError as e:
        found = _TOML_WHERE.fullmatch(str(e))
        if found is None:
            raise ConfigError(f"TOML syntax error: {e}", path=path) from None
        what = found["what"][:1].lower() + found["what"][1:]
        if found["line"] is None:
            raise ConfigError(
                f"TOML syntax error at the end of the file: {what}", path=path
            ) from None
        line = int(found["line"])
        raise ConfigError(
            f"line {line}, column {found['column']}: TOML syntax error: {what}",
            path=path,
            line=line,
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"the file is not UTF-8 text (byte {e.start})", path=path) from None
    except ValueError as e:
        # tomllib lets a few value errors through, such as an integer of
        # thousands of digits.
        raise ConfigError(f"cannot parse the file: {e}", path=path) from None
    try:
        config = parse_config(
            data, os.path.dirname(path), default_hostname=default_hostname, source=path
        )
        if check:
            check_files(config)
    except ConfigError as e:
        e.path = path
        raise
    return config


def check_files(config: Config) -> None:
    """ConfigError unless every file the config names is there to be read.

    Certificates, keys and cafiles must be
    readable regular files; the store file and UNIX sockets need not exist
    yet, but their directories must.  Whether the files hold usable PEM is
    for the TLS code to find.  This is the only I/O besides reading the
    config file itself.
    """
    # (key, what the file is, path)
    named: list[tuple[str, str, str]] = []
    for i, (cert, key) in enumerate(config.tls.certificates):
        named.append((f"tls.certificates[{i}].cert", "file", cert))
        named.append((f"tls.certificates[{i}].key", "file", key))
    if config.chain is not None:
        for i, inner in enumerate(config.chain.inner):
            if inner.cafile is not None:
                named.append((f"chain.inner[{i}].cafile", "file", inner.cafile))
    listen = config.server.listen
    for i, description in enumerate(listen):
        key = "server.listen" if len(listen) == 1 else f"server.listen[{i}]"
        try:
            kind, given = _endpoint_arguments(description)
        except ValueError:
            continue  # not from parse_config, so not ours to judge here
        if kind == "unix" and not given.get("address", "@").startswith("@"):
            directory = os.path.dirname(given["address"]) or "."
            if not os.path.isdir(directory):
                raise ConfigError(f"the socket's directory does not exist: {directory}", key)
    for key, what, path in named:
        if not os.path.exists(path):
            raise ConfigError(f"no such {what}: {path}", key)
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"not a readable {what}: {path}", key)
    store = config.store.path
    if store != MEMORY_STORE:
        if os.path.isdir(store):
            raise ConfigError(f"is a directory, not a file: {store}", "store.path")
        directory = os.path.dirname(store)
        if not os.path.isdir(directory):
            raise ConfigError(f"the directory does not exist: {directory}", "store.path")
