# -*- test-case-name: tests.test_dns -*-
"""Finding an MTQP server: SRV records (RFC 2782), else the host's address on port 1038.

RFC 3887 section 2: the client looks up ``_mtqp._tcp.<host>`` SRV records and
tries their targets in RFC 2782 order; when there are none, it connects to
the host's own address on the IANA port.  Everything goes through a
``twisted.names`` resolver, so ``--dns-server`` (and the tests) can point all
look-ups, addresses included, at one name server::

    resolver = make_resolver("127.0.0.1:5353")
    d = discover(resolver, "example.com")          # [("mtqp.example.com", 1038), ...]
    d.addCallback(lambda targets: resolve_addresses(resolver, targets[0][0]))

Every error a user can meet is a L{DiscoveryError} whose ``str()`` is one
sentence naming the host.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from twisted.internet import defer
from twisted.names import client
from twisted.names import dns as names_dns
from twisted.names import error as names_error
from twisted.python.failure import Failure

from mtqpgw.uri import is_ip_literal, split_host_port

__all__ = [
    "MTQP_PORT",
    "SRV_PREFIX",
    "DNSFailure",
    "DiscoveryError",
    "NoAddress",
    "NoService",
    "NoSuchHost",
    "SRVRecord",
    "Target",
    "discover",
    "is_ip_literal",
    "make_resolver",
    "parse_dns_server",
    "resolve_addresses",
    "srv_order",
]

#: The IANA port of MTQP (RFC 3887 section 10).
MTQP_PORT = 1038
#: The SRV owner-name prefix of MTQP (RFC 3887 section 2, RFC 8553).
SRV_PREFIX = "_mtqp._tcp."


class DiscoveryError(Exception):
    """The server could not be found; ``str()`` is one readable sentence."""


class NoSuchHost(DiscoveryError):
    """The name does not exist in the DNS (NXDOMAIN)."""


class NoAddress(DiscoveryError):
    """The name exists but has no address record (and, for discovery, no SRV either)."""


class NoService(DiscoveryError):
    """The domain's SRV records say ``.``: it decidedly offers no MTQP service."""


class DNSFailure(DiscoveryError):
    """The name server did not give a usable answer (timeout, SERVFAIL, refused)."""


class SRVRecord(NamedTuple):
    """The four values of an SRV record that matter for ordering."""

    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "." (kept as ".") means no service


class Target(NamedTuple):
    """A server to try: a host name or IP literal and a port."""

    host: str
    port: int


class RandomSource(Protocol):
    """What ``srv_order`` needs of a random number generator (``random.Random`` fits)."""

    def randint(self, a: int, b: int) -> int: ...


def _running_sum_index(records: Sequence[SRVRecord], draw: int) -> int:
    """The first record whose running sum of weights reaches *draw*."""
    running = 0
    for index, record in enumerate(records):
        running += record.weight
        if running >= draw:
            return index
    return len(records) - 1  # not reached while draw <= the total weight


def srv_order(records: Iterable[SRVRecord], rng: RandomSource | None = None) -> list[Target]:
    """The targets of *records* in the order RFC 2782 says to try them.

    Lowest priority first; within one priority, a weighted random draw
    without replacement.  Records whose target is ``.`` are dropped (what a
    lone ``.`` means is for the caller to say).  *rng* is any object with
    ``randint(a, b)``; pass a seeded ``random.Random`` for repeatable runs.
    """
    if rng is None:
        rng = random.SystemRandom()
    by_priority: dict[int, list[SRVRecord]] = {}
    for record in records:
        if record.target == ".":
            continue
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[Target] = []
    for priority in sorted(by_priority):
        # RFC 2782: zero-weight records go first in the list, so that they
        # are only picked when the draw is 0 (1 chance in total+1) and never
        # take the place of a weighted record on another draw.
        remaining = sorted(by_priority[priority], key=lambda r: r.weight != 0)
        while remaining:
            total = sum(r.weight for r in remaining)
            chosen = remaining.pop(_running_sum_index(remaining, rng.randint(0, total)))
            ordered.append(Target(chosen.target, chosen.port))
    return ordered


def _target_text(name: Any) -> str:
    text = name.name.decode("ascii", "replace") if hasattr(name, "name") else str(name)
    if text in ("", "."):
        return "."
    return text.rstrip(".").lower()


def _srv_records(answers: Sequence[names_dns.RRHeader]) -> list[SRVRecord]:
    # A CNAME chain may come along in the answer section; only SRV counts.
    return [
        SRVRecord(
            rr.payload.priority,
            rr.payload.weight,
            rr.payload.port,
            _target_text(rr.payload.target),
        )
        for rr in answers
        if rr.type == names_dns.SRV
    ]


def _describe(failure: Failure) -> str:
    if failure.check(names_error.DNSQueryTimeoutError, defer.TimeoutError):
        return "the name server did not answer"
    if failure.check(names_error.DNSServerError):
        return "the name server failed (SERVFAIL)"
    if failure.check(names_error.DNSQueryRefusedError):
        return "the name server refused the query"
    if failure.check(names_error.DNSFormatError):
        return "the name server could not read the query"
    if failure.check(names_error.DNSNotImplementedError):
        return "the name server does not implement the query"
    message = failure.getErrorMessage()
    return message.splitlines()[0] if message else failure.type.__name__


def _is_nxdomain(failure: Failure) -> bool:
    # DNSNameError is an NXDOMAIN from a name server.  A bare DomainError (or
    # AuthoritativeDomainError) is how a resolver chain (hosts file, local
    # authority) says it found nothing; its subclasses other than
    # DNSNameError are server failures (SERVFAIL, REFUSED...), not absence.
    if failure.check(names_error.DNSNameError):
        return True
    return failure.type in (names_error.DomainError, names_error.AuthoritativeDomainError)


@defer.inlineCallbacks
def resolve_addresses(resolver: Any, host: str) -> Any:
    """Fire with the IP addresses of *host* (IPv4 first, then IPv6).

    An IP literal is its own address.  Errbacks with L{NoSuchHost},
    L{NoAddress} or L{DNSFailure}.
    """
    if is_ip_literal(host):
        return [host]
    results = yield defer.DeferredList(
        [resolver.lookupAddress(host), resolver.lookupIPV6Address(host)],
        consumeErrors=True,
    )
    addresses: list[str] = []
    failures: list[Failure] = []
    for ok, value in results:
        if not ok:
            failures.append(value)
            continue
        for rr in value[0]:
            # A CNAME chain may precede the addresses; only addresses count.
            if rr.type == names_dns.A:
                addresses.append(rr.payload.dottedQuad())
            elif rr.type == names_dns.AAAA:
                addresses.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
    if addresses:
        # IPv4 first: this client does not race connections (no Happy
        # Eyeballs), and a broken IPv6 route is a commoner failure than an
        # IPv6-only server; IPv6 addresses are still tried after IPv4 ones.
        return sorted(dict.fromkeys(addresses), key=lambda a: ":" in a)
    hard = [f for f in failures if not _is_nxdomain(f)]
    if hard:
        # Absence is only known when the name server said so for both types.
        raise DNSFailure(f"could not look up the address of {host}: {_describe(hard[0])}")
    if failures:
        raise NoSuchHost(f"no such host: {host}")
    raise NoAddress(f"{host} has no address record")


@defer.inlineCallbacks
def discover(
    resolver: Any,
    host: str,
    port: int | None = None,
    default_port: int = MTQP_PORT,
    rng: RandomSource | None = None,
    addresses: dict[str, list[str]] | None = None,
) -> Any:
    """Fire with the list of L{Target}s to try for *host*, best first.

    With *port* given, or an IP literal for *host*, there is nothing to look
    up: ``[(host, port or default_port)]``.  Otherwise the ``_mtqp._tcp``
    SRV records of *host* in RFC 2782 order; with none, ``[(host,
    default_port)]`` once *host* is known to have an address.  Errbacks with
    L{NoService} (a ``.`` target), L{NoSuchHost}, L{NoAddress} or
    L{DNSFailure}.  *addresses*, if given, receives ``host -> addresses``
    for the addresses that fallback looked up, so that the caller need not
    ask the name server again before connecting.
    """
    host = host.rstrip(".").lower() if not is_ip_literal(host) else host
    if port is not None:
        return [Target(host, port)]
    if is_ip_literal(host):
        return [Target(host, default_port)]
    owner = SRV_PREFIX + host
    try:
        answers, _authority, _additional = yield resolver.lookupService(owner)
    except Exception:
        failure = Failure()
        if not _is_nxdomain(failure):
            raise DNSFailure(f"could not look up {owner}: {_describe(failure)}") from None
        answers = []
    records = _srv_records(answers)
    if records:
        targets = srv_order(records, rng)
        if not targets:
            raise NoService(f"{host} offers no MTQP service (its SRV record's target is '.')")
        return targets
    try:
        found = yield resolve_addresses(resolver, host)
    except NoSuchHost:
        raise NoSuchHost(f"no such host: {host}") from None
    except NoAddress:
        raise NoAddress(f"{host} has no MTQP SRV record and no address") from None
    if addresses is not None:
        addresses[host] = found
    return [Target(host, default_port)]


def parse_dns_server(text: str) -> tuple[str, int]:
    """``"IP[:PORT]"`` (IPv6 as ``[::1]:53`` or bare ``::1``) -> ``(ip, port)``; ValueError if not."""
    try:
        host, port = split_host_port(text)
    except ValueError as e:
        raise ValueError(f"--dns-server: {e}") from None
    if not is_ip_literal(host):
        raise ValueError(f"--dns-server wants an IP address, got {host!r}")
    return str(ipaddress.ip_address(host)), 53 if port is None else port


def make_resolver(dns_server: str | None, reactor: Any = None) -> Any:
    """An C{IResolver}: one that asks only *dns_server* ("IP[:PORT]"), or the system's.

    The system resolver is Twisted's: ``/etc/hosts``, then the name servers
    of ``/etc/resolv.conf``.  With *dns_server*, nothing else is consulted
    (no hosts file, no cache), so a test name server sees every query.
    Raises ValueError for a malformed *dns_server*.
    """
    if dns_server is None:
        return client.createResolver()
    return client.Resolver(servers=[parse_dns_server(dns_server)], reactor=reactor)
