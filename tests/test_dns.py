"""Tests for mtqpgw.dns: RFC 2782 ordering, and discovery against a real name server on loopback."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from mtqpgw.dns import (
    DNSFailure,
    NoAddress,
    NoService,
    NoSuchHost,
    SRVRecord,
    Target,
    discover,
    make_resolver,
    parse_dns_server,
    resolve_addresses,
    srv_order,
)
from tests.dnsserver import MemoryZone, ServFail, serve_dns


class ScriptedRandom:
    """A random source that returns the given draws, and records the ranges asked for."""

    def __init__(self, *draws: int) -> None:
        self.draws = list(draws)
        self.ranges: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.ranges.append((a, b))
        value = self.draws.pop(0)
        assert a <= value <= b, (value, a, b)
        return value


class SRVOrderTests(SynchronousTestCase):
    def test_priority_first(self) -> None:
        """Lower priority always comes first, whatever the weights and the draws."""
        records = [
            SRVRecord(20, 100, 1, "c.test"),
            SRVRecord(10, 0, 2, "a.test"),
            SRVRecord(30, 5, 3, "d.test"),
            SRVRecord(10, 0, 4, "b.test"),
        ]
        for seed in range(50):
            order = srv_order(records, random.Random(seed))
            self.assertEqual([t.host for t in order[2:]], ["c.test", "d.test"])
            self.assertEqual({t.host for t in order[:2]}, {"a.test", "b.test"})

    def test_weighted_draw(self) -> None:
        """The draw picks the first record whose running weight sum reaches it (RFC 2782)."""
        records = [
            SRVRecord(0, 10, 1, "ten.test"),
            SRVRecord(0, 30, 2, "thirty.test"),
            SRVRecord(0, 60, 3, "sixty.test"),
        ]
        # Running sums 10, 40, 100: a draw of 41 lands on sixty; then of the
        # remaining (10, 40 running) a draw of 10 lands on ten.
        rng = ScriptedRandom(41, 10, 0)
        order = srv_order(records, rng)
        self.assertEqual(order, [("sixty.test", 3), ("ten.test", 1), ("thirty.test", 2)])
        self.assertEqual(rng.ranges, [(0, 100), (0, 40), (0, 30)])

    def test_zero_weight_first_in_list(self) -> None:
        """Zero-weight records sit at the front, so only a draw of 0 selects them."""
        records = [SRVRecord(0, 5, 1, "heavy.test"), SRVRecord(0, 0, 2, "zero.test")]
        self.assertEqual(srv_order(records, ScriptedRandom(0, 0))[0].host, "zero.test")
        self.assertEqual(srv_order(records, ScriptedRandom(1, 0))[0].host, "heavy.test")

    def test_weights_proportional(self) -> None:
        """Over many seeded runs, first picks follow the weights.

        Weights 0, 1, 3 give a draw from 0..4 against running sums 0, 1, 4:
        the zero-weight record wins a draw of 0 (1 in 5), as RFC 2782's
        algorithm has it, "one" 1 in 5, "three" 3 in 5.
        """
        records = [
            SRVRecord(0, 1, 1, "one.test"),
            SRVRecord(0, 3, 2, "three.test"),
            SRVRecord(0, 0, 3, "zero.test"),
        ]
        rng = random.Random(2782)
        firsts = Counter(srv_order(records, rng)[0].host for _ in range(4000))
        self.assertApproximates(firsts["three.test"] / 4000, 0.6, 0.05)
        self.assertApproximates(firsts["one.test"] / 4000, 0.2, 0.05)
        self.assertApproximates(firsts["zero.test"] / 4000, 0.2, 0.05)

    def test_dot_target_dropped(self) -> None:
        self.assertEqual(srv_order([SRVRecord(0, 0, 0, ".")]), [])
        self.assertEqual(
            srv_order([SRVRecord(0, 0, 0, "."), SRVRecord(1, 0, 9, "x.test")]),
            [Target("x.test", 9)],
        )

    def test_every_record_once(self) -> None:
        records = [
            SRVRecord(p % 3, w, p, f"h{p}.test") for p, w in enumerate([0, 1, 5, 0, 9, 2, 2])
        ]
        for seed in range(20):
            order = srv_order(records, random.Random(seed))
            self.assertEqual(sorted(t.port for t in order), list(range(7)))


class ParseDNSServerTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_dns_server("127.0.0.1"), ("127.0.0.1", 53))
        self.assertEqual(parse_dns_server("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_dns_server("::1"), ("::1", 53))
        self.assertEqual(parse_dns_server("[::1]:5353"), ("::1", 5353))

    def test_bad(self) -> None:
        for text in ("dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "1.2.3.4:70000", ""):
            with self.assertRaises(ValueError, msg=text):
                parse_dns_server(text)


class DiscoveryTests(TestCase):
    """discover() and resolve_addresses() against Twisted's authoritative server on loopback."""

    def setUp(self) -> None:
        self.zone = MemoryZone("test")
        self.resolver = make_resolver(serve_dns(self, self.zone))

    async def discover(self, host: str, **kw: Any) -> list[Target]:
        return await discover(self.resolver, host, **kw)

    async def test_priority_order(self) -> None:
        self.zone.add_srv("_mtqp._tcp.mail.test", "backup.test", 2000, priority=20)
        self.zone.add_srv("_mtqp._tcp.mail.test", "primary.test", 1000, priority=10)
        self.zone.add_srv("_mtqp._tcp.mail.test", "last.test", 3000, priority=30)
        targets = await self.discover("mail.test")
        self.assertEqual(
            targets,
            [("primary.test", 1000), ("backup.test", 2000), ("last.test", 3000)],
        )

    async def test_weights_with_injected_random(self) -> None:
        """Same priority: the injected draws decide, against the weights the server sent.

        The in-test server answers in the order records were added (light,
        heavy), so the running sums are 10 then 100.
        """
        self.zone.add_srv("_mtqp._tcp.mail.test", "light.test", 1, priority=5, weight=10)
        self.zone.add_srv("_mtqp._tcp.mail.test", "heavy.test", 2, priority=5, weight=90)
        rng = ScriptedRandom(11, 0)
        self.assertEqual(
            await self.discover("mail.test", rng=rng), [("heavy.test", 2), ("light.test", 1)]
        )
        self.assertEqual(rng.ranges, [(0, 100), (0, 10)], "total 10 + 90, then light alone")
        rng = ScriptedRandom(10, 0)
        self.assertEqual(
            await self.discover("mail.test", rng=rng), [("light.test", 1), ("heavy.test", 2)]
        )
        self.assertEqual(rng.ranges, [(0, 100), (0, 90)])

    async def test_dot_target_means_no_service(self) -> None:
        self.zone.add_srv("_mtqp._tcp.mail.test", ".", 0)
        self.zone.add_a("mail.test")
        with self.assertRaises(NoService) as caught:
            await self.discover("mail.test")
        self.assertEqual(
            str(caught.exception),
            "mail.test offers no MTQP service (its SRV record's target is '.')",
        )
        self.assertEqual(self.zone.asked("mail.test"), 0, "no fallback to the address")

    async def test_fallback_to_address(self) -> None:
        """No SRV record: the host itself, on the default port (a parameter, 1038 by default)."""
        self.zone.add_a("mail.test")
        self.assertEqual(await self.discover("mail.test"), [("mail.test", 1038)])
        self.assertEqual(
            await self.discover("Mail.Test.", default_port=40000), [("mail.test", 40000)]
        )
        self.assertEqual(self.zone.asked("_mtqp._tcp.mail.test", "SRV"), 2)

    async def test_fallback_ipv6_only(self) -> None:
        self.zone.add_aaaa("six.test", "::1")
        self.assertEqual(await self.discover("six.test"), [("six.test", 1038)])
        self.assertEqual(await resolve_addresses(self.resolver, "six.test"), ["::1"])

    async def test_no_srv_no_address(self) -> None:
        self.zone.add("bare.test", self._txt())
        with self.assertRaises(NoAddress) as caught:
            await self.discover("bare.test")
        self.assertEqual(str(caught.exception), "bare.test has no MTQP SRV record and no address")

    async def test_no_such_host(self) -> None:
        with self.assertRaises(NoSuchHost) as caught:
            await self.discover("nowhere.test")
        self.assertEqual(str(caught.exception), "no such host: nowhere.test")

    async def test_servfail(self) -> None:
        self.zone.servfail.add("_mtqp._tcp.broken.test")
        with self.assertRaises(DNSFailure) as caught:
            await self.discover("broken.test")
        self.assertIn("_mtqp._tcp.broken.test", str(caught.exception))
        self.assertIn("SERVFAIL", str(caught.exception))
        self.assertEqual(len(self.flushLoggedErrors(ServFail)), 1)

    async def test_port_given_or_ip_literal_asks_nothing(self) -> None:
        self.assertEqual(await self.discover("mail.test", port=4000), [("mail.test", 4000)])
        self.assertEqual(await self.discover("127.0.0.1"), [("127.0.0.1", 1038)])
        self.assertEqual(await self.discover("::1", default_port=9), [("::1", 9)])
        self.assertEqual(self.zone.queries, [])

    async def test_addresses_ipv4_first(self) -> None:
        self.zone.add_aaaa("dual.test", "2001:db8::1")
        self.zone.add_a("dual.test", "192.0.2.1")
        self.zone.add_a("dual.test", "192.0.2.2")
        addresses = await resolve_addresses(self.resolver, "dual.test")
        self.assertEqual(sorted(addresses[:2]), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(addresses[2:], ["2001:db8::1"])

    @staticmethod
    def _txt() -> Any:
        from twisted.names import dns

        return dns.Record_TXT(b"no address here", ttl=60)
