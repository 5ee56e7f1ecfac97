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

__all__ = ["FailureThrottle", "client_key", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[object]) -> tuple[Network, ...]:
    """Networks from addresses or CIDR strings (or ready network objects)."""
    return tuple(ipaddress.ip_network(str(entry), strict=False) for entry in entries)


def client_key(address: str) -> str:
    """The unit a client is counted in: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


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

    def is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
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

    def blocked(self, address: str, now: float) -> bool:
        """Whether TRACKs from ``address`` are refused at ``now``."""
        if self.is_exempt(address):
            return False
        stamps = self._recent(client_key(address), now)
        return stamps is not None and len(stamps) >= self.limit

    def record_failure(self, address: str, now: float) -> tuple[str, float] | None:
        """Count one failed TRACK (unknown envelope id or wrong secret).

        The server counts a TRACK when it starts, before the answer is known,
        so that guesses run in parallel over several connections are counted
        too; it hands the returned token to L{forgive} when the TRACK turns
        out to have succeeded.  None for an exempt address.
        """
        if self.is_exempt(address):
            return None
        key = client_key(address)
        stamps = self._recent(key, now)
        if stamps is None:
            stamps = self._failures[key] = deque(maxlen=self.limit)
        stamps.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        return key, now

    def forgive(self, token: tuple[str, float] | None) -> None:
        """Take back a count made by L{record_failure}: that TRACK found its message."""
        if token is None:
            return
        key, stamp = token
        stamps = self._failures.get(key)
        if stamps is None:
            return
        try:
            stamps.remove(stamp)
        except ValueError:
            return  # aged out, or pushed out by newer failures
        if not stamps:
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)
