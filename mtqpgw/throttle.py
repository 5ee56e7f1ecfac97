# -*- test-case-name: tests.test_throttle -*-
"""Per-address limits on failed TRACKs: the brake on guessing secrets.

Sans-I/O: the caller passes the time.  Memory is bounded: at most
``max_addresses`` addresses are remembered (the least recently failed are
forgotten first), each with at most ``limit`` timestamps.  IPv6 clients are
counted per /64, since one host commonly holds a whole /64.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Client", "FailureThrottle", "client_key", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[object]) -> tuple[Network, ...]:
    """Networks from addresses or CIDR strings (or ready network objects)."""
    return tuple(ipaddress.ip_network(str(entry), strict=False) for entry in entries)


def _ip(address: str) -> IPAddress | None:
    """The address, an IPv4-mapped IPv6 one as IPv4; None when it is no IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _key(address: str, ip: IPAddress | None) -> str:
    if ip is None:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_key(address: str) -> str:
    """The unit a client is counted in: the address, or its /64 for IPv6."""
    return _key(address, _ip(address))


@dataclass(frozen=True)
class Client:
    """A client as the throttle counts it: its key (address, or /64) and exemption.

    The server makes one per connection (L{FailureThrottle.client}), so the
    address is parsed once, not at every call for every TRACK.
    """

    key: str
    exempt: bool


class FailureThrottle:
    """Counts failed TRACKs per client; blocks a client past ``limit`` per ``window`` seconds."""

    def __init__(
        self,
        limit: int,
        window: float,
        exempt: Iterable[object] = (),
        max_addresses: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.exempt = parse_networks(exempt)
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # TRACKs in flight per client: bounded by the connections open.
        self._running: dict[str, int] = {}

    def client(self, address: str | Client) -> Client:
        """The L{Client} for ``address`` (a L{Client} is returned as it is)."""
        if isinstance(address, Client):
            return address
        ip = _ip(address)  # parsed once for both
        return Client(_key(address, ip), self._exempt(ip))

    def _exempt(self, ip: IPAddress | None) -> bool:
        if ip is None:
            return False
        return any(ip in net for net in self.exempt if net.version == ip.version)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        stamps = self._failures.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return None
        return stamps

    def blocked(self, address: str | Client, now: float) -> bool:
        """Whether TRACKs from ``address`` are refused at ``now``.

        Refused once ``limit`` TRACKs failed in the window; and, once one has
        failed, also when the failures and the TRACKs still running together
        reach ``limit``, so guesses run in parallel over several connections
        count before their answers arrive.  A client with no failure is never
        refused for TRACKs in flight: a slow chained answer is not a guess.
        """
        client = self.client(address)
        if client.exempt:
            return False
        failed = self._count(client.key, now)
        if failed >= self.limit:
            return True
        return failed > 0 and failed + self._running.get(client.key, 0) >= self.limit

    def failures(self, address: str | Client, now: float) -> int:
        """Failed TRACKs from ``address`` in the window ending at ``now``."""
        return self._count(self.client(address).key, now)

    def _count(self, key: str, now: float) -> int:
        stamps = self._recent(key, now)
        return 0 if stamps is None else len(stamps)

    def started(self, address: str | Client) -> None:
        """A TRACK from ``address`` is in flight; L{finished} must follow."""
        client = self.client(address)
        if not client.exempt:
            self._running[client.key] = self._running.get(client.key, 0) + 1

    def finished(self, address: str | Client, now: float, failed: bool) -> None:
        """The TRACK L{started} for ``address`` ended; ``failed``: it found nothing."""
        client = self.client(address)
        if client.exempt:
            return
        left = self._running.get(client.key, 1) - 1
        if left > 0:
            self._running[client.key] = left
        else:
            self._running.pop(client.key, None)
        if failed:
            self.record_failure(client, now)

    def record_failure(self, address: str | Client, now: float) -> None:
        """Count one failed TRACK (unknown envelope id or wrong secret)."""
        client = self.client(address)
        if client.exempt:
            return
        stamps = self._recent(client.key, now)
        if stamps is None:
            stamps = self._failures[client.key] = deque(maxlen=self.limit)
        stamps.append(now)
        self._failures.move_to_end(client.key)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)
