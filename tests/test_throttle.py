"""Tests for mtqpgw.throttle: the per-address brake on failed TRACKs."""

from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.throttle import FailureThrottle, client_key, parse_networks


class ThrottleTests(SynchronousTestCase):
    def test_blocks_after_limit_within_window(self) -> None:
        t = FailureThrottle(limit=3, window=600)
        for now in (0, 1, 2):
            self.assertFalse(t.blocked("192.0.2.1", now))
            t.record_failure("192.0.2.1", now)
        self.assertTrue(t.blocked("192.0.2.1", 3))
        self.assertFalse(t.blocked("192.0.2.2", 3), "other addresses are not affected")

    def test_window_passes(self) -> None:
        t = FailureThrottle(limit=2, window=10)
        t.record_failure("192.0.2.1", 0)
        t.record_failure("192.0.2.1", 5)
        self.assertTrue(t.blocked("192.0.2.1", 9.9))
        self.assertFalse(t.blocked("192.0.2.1", 10.0), "the first failure aged out")
        self.assertFalse(t.blocked("192.0.2.1", 15.1))
        self.assertEqual(len(t), 0, "an address with no recent failures is forgotten")

    def test_exempt(self) -> None:
        t = FailureThrottle(limit=1, window=600, exempt=["10.0.0.0/8", "2001:db8::1"])
        for _ in range(5):
            t.record_failure("10.1.2.3", 0)
            t.record_failure("2001:db8::1", 0)
        self.assertFalse(t.blocked("10.1.2.3", 1))
        self.assertFalse(t.blocked("::ffff:10.1.2.3", 1))
        self.assertFalse(t.blocked("2001:db8::1", 1))
        self.assertEqual(len(t), 0)

    def test_ipv6_counted_per_64(self) -> None:
        t = FailureThrottle(limit=2, window=600)
        t.record_failure("2001:db8:1:2::1", 0)
        t.record_failure("2001:db8:1:2::ffff", 0)
        self.assertTrue(t.blocked("2001:db8:1:2:abcd::9", 1))
        self.assertFalse(t.blocked("2001:db8:1:3::1", 1))
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_memory_bounded(self) -> None:
        t = FailureThrottle(limit=5, window=600, max_addresses=100)
        for i in range(1000):
            t.record_failure(f"198.51.{i // 256}.{i % 256}", 0)
        self.assertEqual(len(t), 100)

    def test_running_counts_only_after_a_failure(self) -> None:
        t = FailureThrottle(limit=3, window=600)
        for _ in range(10):
            t.started("192.0.2.1")
        self.assertFalse(t.blocked("192.0.2.1", 0), "in flight, nothing failed yet")
        t.finished("192.0.2.1", 1, failed=True)  # 1 failed, 9 running
        self.assertTrue(t.blocked("192.0.2.1", 1))
        for _ in range(9):
            t.finished("192.0.2.1", 2, failed=False)
        self.assertFalse(t.blocked("192.0.2.1", 2), "1 failed, none running")
        self.assertEqual(t._running, {}, "no entry kept for idle clients")

    def test_exempt_never_counted(self) -> None:
        t = FailureThrottle(limit=1, window=600, exempt=["192.0.2.0/24"])
        t.started("192.0.2.1")
        t.finished("192.0.2.1", 0, failed=True)
        self.assertFalse(t.blocked("192.0.2.1", 0))
        self.assertEqual((len(t), t._running), (0, {}))

    def test_parse_networks(self) -> None:
        nets = parse_networks(["192.0.2.1", "10.0.0.0/8", "2001:db8::/32"])
        self.assertEqual([str(n) for n in nets], ["192.0.2.1/32", "10.0.0.0/8", "2001:db8::/32"])
        self.assertRaises(ValueError, parse_networks, ["not an address"])
