# -*- test-case-name: tests.test_dns -*-
"""An in-process authoritative DNS server on loopback, for tests that need real look-ups.

Twisted's own server (``twisted.names.server.DNSServerFactory``) in front of
an in-memory zone, listening on UDP and TCP on the same random port of
127.0.0.1.  Records are added and removed while it runs, and every query it
receives is recorded, so a test can say what was asked::

    zone = MemoryZone("test")
    zone.add_srv("_mtqp._tcp.hop1.test", "hop1.test", port=40123)
    zone.add_a("hop1.test", "127.0.0.1")
    dns_server = serve_dns(self, zone)          # "127.0.0.1:PORT"
    resolver = make_resolver(dns_server)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import authority, common, dns, server
from twisted.python.failure import Failure

__all__ = ["MemoryZone", "ServFail", "serve_dns"]


class ServFail(Exception):
    """Raised for a name the zone is told to fail: the server answers SERVFAIL."""


class MemoryZone(authority.FileAuthority):
    """An authoritative zone held in memory.

    Twisted's FileAuthority does the authoritative answering (NXDOMAIN for
    unknown names inside the zone, NOERROR with the SOA for a known name
    without the asked type, A/AAAA of SRV targets in the additional
    section); this class only replaces its file loading.
    """

    def __init__(self, origin: str = "test") -> None:
        common.ResolverBase.__init__(self)
        self._cache: dict[Any, Any] = {}
        self.origin = origin.rstrip(".").lower()
        origin_b = self.origin.encode("ascii")
        self.soa = (
            origin_b,
            dns.Record_SOA(
                mname=b"ns." + origin_b,
                rname=b"hostmaster." + origin_b,
                serial=1,
                refresh=3600,
                retry=600,
                expire=86400,
                minimum=60,
                ttl=60,
            ),
        )
        self.records: dict[bytes, list[Any]] = {origin_b: [self.soa[1]]}
        self.servfail: set[str] = set()
        #: Every query received, as (lower-case name, type name) pairs.
        self.queries: list[tuple[str, str]] = []

    @staticmethod
    def _key(name: str) -> bytes:
        return name.rstrip(".").lower().encode("ascii")

    def add(self, name: str, record: Any) -> None:
        self.records.setdefault(self._key(name), []).append(record)

    def add_a(self, name: str, address: str = "127.0.0.1") -> None:
        self.add(name, dns.Record_A(address, ttl=60))

    def add_aaaa(self, name: str, address: str = "::1") -> None:
        self.add(name, dns.Record_AAAA(address, ttl=60))

    def add_srv(
        self, name: str, target: str, port: int, priority: int = 0, weight: int = 0
    ) -> None:
        # The root name (a "." target, RFC 2782's "no service") is the empty
        # name on the wire; Twisted wants it as bytes to skip IDNA encoding.
        name_b = b"" if target == "." else target.encode("ascii")
        self.add(name, dns.Record_SRV(priority, weight, port, name_b, ttl=60))

    def remove(self, name: str) -> None:
        self.records.pop(self._key(name), None)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        text = name.decode("ascii", "replace").rstrip(".").lower()
        self.queries.append((text, dns.QUERY_TYPES.get(type, str(type))))
        if text in self.servfail:
            return defer.fail(Failure(ServFail(text)))
        return super()._lookup(name, cls, type, timeout)

    def asked(self, name: str, type_name: str | None = None) -> int:
        """How many queries for *name* (and *type_name*, e.g. "SRV") arrived."""
        name = name.rstrip(".").lower()
        return sum(1 for n, t in self.queries if n == name and type_name in (None, t))


def serve_dns(testcase: Any, zone: MemoryZone, reactor: Any = None) -> str:
    """Serve *zone* on UDP and TCP of one random 127.0.0.1 port until the test ends.

    Returns ``"127.0.0.1:PORT"``, the form ``--dns-server`` takes.
    """
    if reactor is None:
        from twisted.internet import reactor
    factory = server.DNSServerFactory(authorities=[zone])
    factory.noisy = False
    # A truncated UDP answer makes the client retry over TCP on the same
    # port, so both must listen there; retry if TCP finds it taken.
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        testcase.addCleanup(udp.stopListening)
        testcase.addCleanup(tcp.stopListening)
        return f"127.0.0.1:{port}"
    raise RuntimeError("no port free for UDP and TCP on 127.0.0.1")
