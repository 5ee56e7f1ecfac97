# -*- test-case-name: tests.test_tofu -*-
"""The client's memory of servers: did they offer STARTTLS, which certificate did they show.

RFC 3887 section 11: an active attacker can delete "STARTTLS" from the
greeting, or answer with a certificate of his own.  A client that remembers
what each server offered and presented can raise an alarm when a later
session differs (trust on first use).  ``mtqp track`` uses it like this::

    cache = TofuCache()                       # $XDG_CACHE_HOME/mtqpgw/servers.json
    seen = observation_from_info(proto.info)  # after the session is ready
    for line in cache.observe(host, port, seen, verified=verified):
        print(line, file=sys.stderr)

The logic (L{compare}, L{combine}) is pure; L{TofuCache} adds a small JSON
file.  Only whether STARTTLS was offered and a SHA-256 of the server's
certificate are stored: nothing secret, no envelope ids.  On an alarm the old
record is kept (so the alarm repeats until someone looks); a user who
accepts a change calls L{forget_server} (L{TofuCache.forget}) or removes the
entry the alarm names.

A certificate change is an alarm only when nothing vouched for the new
certificate.  When the session verified it (against a CA file or the
platform's trust store), a changed fingerprint is a renewal: it replaces
the old one, with a note instead of the alarm.  Otherwise an ordinary
renewal would raise the alarm for ever, and users learn to ignore alarms.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from mtqpgw.uri import split_host_port

__all__ = [
    "FILE_NAME",
    "Observation",
    "TofuCache",
    "certificate_sha256",
    "combine",
    "compare",
    "default_cache_path",
    "forget_server",
    "notes",
    "observation_from_info",
    "server_key",
]

FILE_NAME = "servers.json"
_FORMAT_VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Observation:
    """What one session showed: STARTTLS offered in the clear, and the certificate seen."""

    starttls: bool
    cert_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.cert_sha256 is not None:
            normal = self.cert_sha256.replace(":", "").lower()
            if not _HEX64.match(normal):
                raise ValueError("cert_sha256 must be 64 hex digits")
            object.__setattr__(self, "cert_sha256", normal)

    def to_json(self) -> dict[str, Any]:
        return {"starttls": self.starttls, "cert_sha256": self.cert_sha256}

    @classmethod
    def from_json(cls, value: Any) -> Observation:
        """Raises ValueError for anything but the shape L{to_json} writes."""
        if not isinstance(value, Mapping) or not isinstance(value.get("starttls"), bool):
            raise ValueError("not a remembered server")
        cert = value.get("cert_sha256")
        if cert is not None and not isinstance(cert, str):
            raise ValueError("not a remembered server")
        return cls(value["starttls"], cert)


def server_key(host: str, port: int) -> str:
    """The record's key: ``host:port`` with the host lower-cased, IPv6 in brackets."""
    return f"{_key_host(host)}:{int(port)}"


def _key_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return f"[{host}]" if ":" in host else host


def _short(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, 16, 2)).upper() + "..."


def _cert_changed(before: Observation | None, now: Observation) -> bool:
    return (
        before is not None
        and before.cert_sha256 is not None
        and now.cert_sha256 is not None
        and before.cert_sha256 != now.cert_sha256
    )


def compare(
    server: str, before: Observation | None, now: Observation, *, verified: bool = False
) -> list[str]:
    """The alarms raised by ``now`` against what was remembered (none on first use).

    *verified*: the session checked the certificate against trusted CAs, so
    a new one is a renewal, not an alarm (see L{notes}).  A vanished
    STARTTLS is an alarm either way: no certificate was there to verify.
    """
    if before is None:
        return []
    warnings = []
    if before.starttls and not now.starttls:
        warnings.append(
            f"WARNING: {server} offered STARTTLS in an earlier session but not in this one. "
            "Someone may be removing it to read your queries (RFC 3887 section 11)."
        )
    if _cert_changed(before, now) and not verified:
        assert before.cert_sha256 is not None and now.cert_sha256 is not None
        warnings.append(
            f"WARNING: {server} presented a different TLS certificate than in an earlier "
            f"session (SHA-256 {_short(now.cert_sha256)}, remembered "
            f"{_short(before.cert_sha256)}). It may have been renewed, or someone may be "
            "intercepting the connection (RFC 3887 section 11)."
        )
    return warnings


def notes(
    server: str, before: Observation | None, now: Observation, *, verified: bool = False
) -> list[str]:
    """Informational lines (no alarm): a verified session's new certificate replacing the old."""
    if not (verified and _cert_changed(before, now)):
        return []
    assert before is not None and before.cert_sha256 is not None
    assert now.cert_sha256 is not None
    return [
        f"note: {server} presented a new TLS certificate (SHA-256 {_short(now.cert_sha256)}, "
        f"remembered {_short(before.cert_sha256)}); it was verified, so it is remembered "
        "from now on."
    ]


def combine(before: Observation | None, now: Observation) -> Observation:
    """What to remember after a session that raised no alarm.

    STARTTLS once seen stays remembered; the certificate is the latest seen
    (a session without TLS shows none and changes nothing).
    """
    if before is None:
        return now
    return Observation(
        starttls=before.starttls or now.starttls,
        cert_sha256=now.cert_sha256 or before.cert_sha256,
    )


def observation_from_info(info: Any) -> Observation:
    """An L{Observation} from an L{mtqpgw.client.ServerInfo}.

    STARTTLS counts as offered when it was seen before TLS was negotiated or
    is listed in a greeting read in the clear.  The certificate is the one the
    session's TLS peer presented (``info.peer_certificate``), if any.
    """
    options = getattr(info, "options", None) or {}
    offered = bool(getattr(info, "starttls_offered_before_tls", False)) or (
        not getattr(info, "tls", False) and "starttls" in {k.lower() for k in options}
    )
    return Observation(offered, certificate_sha256(getattr(info, "peer_certificate", None)))


def certificate_sha256(cert: Any) -> str | None:
    """Lower-case hex SHA-256 of a certificate's DER encoding, or None for None.

    Takes what the layers hand around: a ``cryptography`` certificate, a
    pyOpenSSL ``X509`` (``getPeerCertificate()``), a Twisted ``Certificate``,
    or DER bytes.
    """
    if cert is None:
        return None
    if isinstance(cert, bytes | bytearray):
        der = bytes(cert)
    else:
        cert = getattr(cert, "original", cert)  # twisted.internet.ssl.Certificate
        if hasattr(cert, "to_cryptography"):  # OpenSSL.crypto.X509
            cert = cert.to_cryptography()
        der = cert.public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def default_cache_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/mtqpgw/servers.json``, else ``~/.cache/mtqpgw/servers.json``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "mtqpgw" / FILE_NAME


class TofuCache:
    """The remembered servers, kept in a JSON file (``path``; default L{default_cache_path}).

    The file is read on construction and written atomically after each
    change.  A missing file is an empty memory; an unreadable one too, with
    ``problems`` saying why (it is replaced on the next write).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.problems: list[str] = []
        self._servers: dict[str, Observation] = {}
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as e:
            self.problems.append(f"cannot read {self.path}: {e.strerror}")
            return
        try:
            data = json.loads(text)
            servers = data["servers"]
            if data.get("version") != _FORMAT_VERSION or not isinstance(servers, dict):
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.problems.append(f"{self.path} is not a remembered-servers file; starting afresh")
            return
        for key, value in servers.items():
            try:
                self._servers[str(key)] = Observation.from_json(value)
            except ValueError:
                self.problems.append(f"{self.path}: ignoring a bad entry for {key}")

    def _save(self) -> None:
        data = {
            "version": _FORMAT_VERSION,
            "servers": {k: v.to_json() for k, v in sorted(self._servers.items())},
        }
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".servers-", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1)
                    f.write("\n")
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            # Remembering is a help, not a condition for tracking: say so and go on.
            self.problems.append(f"cannot write {self.path}: {e.strerror}")

    def get(self, host: str, port: int) -> Observation | None:
        return self._servers.get(server_key(host, port))

    def check(
        self, host: str, port: int, now: Observation, *, verified: bool = False
    ) -> list[str]:
        """Alarms for ``now`` against the remembered record; changes nothing."""
        key = server_key(host, port)
        return compare(key, self._servers.get(key), now, verified=verified)

    def remember(self, host: str, port: int, now: Observation) -> None:
        """Record ``now`` (combined with the old record) and write the file."""
        key = server_key(host, port)
        self._servers[key] = combine(self._servers.get(key), now)
        self._save()

    def observe(
        self, host: str, port: int, now: Observation, *, verified: bool = False
    ) -> list[str]:
        """Check, then remember unless there was an alarm: returns the lines to show.

        Alarms start with ``WARNING:``; an alarm leaves the old record in
        place, followed by a line saying exactly how to accept the change.
        *verified* (the session checked the certificate against trusted CAs)
        turns a changed certificate into a ``note:`` and records it.
        """
        key = server_key(host, port)
        before = self._servers.get(key)
        warnings = compare(key, before, now, verified=verified)
        if warnings:
            warnings.append(
                f'If this change is expected, remove the entry "{key}" (under "servers") '
                f"from {self.path}, or delete that file to forget every server."
            )
            return warnings
        after = combine(before, now)
        if after != before:
            self._servers[key] = after
            self._save()
        return notes(key, before, now, verified=verified)

    def forget(self, host: str, port: int) -> bool:
        """Drop the record for a server (accepting whatever it shows next)."""
        return self.forget_key(server_key(host, port))

    def forget_key(self, key: str) -> bool:
        """L{forget} by the key the alarms print (``host:port``)."""
        removed = self._servers.pop(key, None) is not None
        if removed:
            self._save()
        return removed

    def keys(self) -> list[str]:
        """The remembered servers' keys (``host:port``), sorted."""
        return sorted(self._servers)

    def __len__(self) -> int:
        return len(self._servers)


def forget_server(server: str, path: str | os.PathLike[str] | None = None) -> list[str]:
    """Forget *server* in the cache at *path* (default L{default_cache_path}); the keys removed.

    *server* is ``host:port`` as the alarms print it (``[::1]:1038`` for
    IPv6), or a bare host, which forgets it on every port (SRV may have
    led to any).  Raises ValueError for text that is not ``HOST[:PORT]``.
    For a command such as ``mtqp forget-server HOST[:PORT]``.
    """
    host, port = split_host_port(server)
    if not host:
        raise ValueError(f"not HOST[:PORT]: {server!r}")
    cache = TofuCache(path)
    if port is not None:
        return [server_key(host, port)] if cache.forget(host, port) else []
    prefix = _key_host(host) + ":"
    removed = []
    for key in cache.keys():
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            cache.forget_key(key)
            removed.append(key)
    return removed
