"""Protocol tests for mtqpgw.server: StringTransport and task.Clock, no sockets, no sleeping."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw import server as server_module
from mtqpgw.server import MTQPServerFactory, ServerLimits, is_failed_lookup
from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus

HOST = "mtqp.example.com"
GREETING = b"+OK/MTQP mtqp.example.com MTQP server ready\r\n"
ENVID = "12345-20010101@example.com"
SECRET = "YWJjZGVmZ2gK"
TRACK = b"TRACK <12345-20010101@example.com> YWJjZGVmZ2gK\r\n"

FOUND = Answer.found(
    [
        TrackingStatus(
            original_envelope_id=ENVID,
            reporting_mta="dns; mtqp.example.com",
            arrival_date="Mon, 30 Nov 2026 15:15:15 -0500",
            recipients=(
                RecipientStatus(
                    original_recipient="rfc822; user1@example1.com",
                    final_recipient="rfc822; user1@example1.com",
                    action=Action.DELIVERED,
                    status="2.5.0",
                ),
            ),
        )
    ]
)


class FakeTracker:
    """An ITracker whose answers the test hands out, one Deferred per TRACK."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.pending: list[defer.Deferred[Answer]] = []
        self.cancelled = 0
        self.auto: Answer | None = None

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        self.calls.append((envid, secret, secure))
        if self.auto is not None:
            return defer.succeed(self.auto)

        def cancel(_: Any) -> None:
            self.cancelled += 1

        d: defer.Deferred[Answer] = defer.Deferred(cancel)
        self.pending.append(d)
        return d

    def answer(self, answer: Answer = FOUND) -> None:
        self.pending.pop(0).callback(answer)


class TLSTransport(StringTransport):
    """A StringTransport that records startTLS."""

    tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context


class FakeTLS:
    """An IServerTLS with one certificate for mtqp.example.com."""

    offered = True

    def __init__(self, required: bool = False, acceptable: bool = True) -> None:
        self.required = required
        self.acceptable = acceptable

    def options(self) -> list[str]:
        return ["STARTTLS required" if self.required else "STARTTLS"]

    def context_for(self, domain: str) -> Any:
        return "context" if domain.lower() == HOST else None

    def required_for(self, envid: str) -> bool:
        return self.required

    def session_acceptable(self, transport: Any) -> bool:
        return self.acceptable


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.tracker = FakeTracker()
        self.tls: FakeTLS | None = None
        self.limits = ServerLimits(hostname=HOST)

    def factory(self) -> MTQPServerFactory:
        if not hasattr(self, "_factory"):
            self._factory = MTQPServerFactory(self.tracker, self.limits, self.tls, self.clock)
        return self._factory

    def connect(self, host: str = "192.0.2.1") -> tuple[Any, StringTransport]:
        proto = self.factory().buildProtocol(IPv4Address("TCP", host, 40000))
        transport = TLSTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def session(self, host: str = "192.0.2.1") -> tuple[Any, StringTransport]:
        proto, transport = self.connect(host)
        self.assertEqual(transport.value(), GREETING)
        transport.clear()
        return proto, transport


class GreetingTests(ServerTestCase):
    def test_greeting(self) -> None:
        _, transport = self.connect()
        self.assertEqual(transport.value(), GREETING)
        self.assertFalse(transport.disconnecting)

    def test_greeting_lists_starttls(self) -> None:
        self.tls = FakeTLS()
        _, transport = self.connect()
        self.assertEqual(
            transport.value(),
            b"+OK+/MTQP mtqp.example.com MTQP server ready\r\nSTARTTLS\r\n.\r\n",
        )

    def test_greeting_starttls_required(self) -> None:
        self.tls = FakeTLS(required=True)
        _, transport = self.connect()
        self.assertIn(b"\r\nSTARTTLS required\r\n.\r\n", transport.value())

    def test_admin_down(self) -> None:
        self.factory().admin_down = True
        _, transport = self.connect()
        self.assertTrue(transport.value().startswith(b"-TEMP/MTQP/admin "))
        self.assertTrue(transport.disconnecting)

    def test_admin_down_after_connect(self) -> None:
        proto, transport = self.session()
        self.factory().admin_down = True
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"-TEMP/admin "))
        self.assertEqual(self.tracker.calls, [])


class CommandTests(ServerTestCase):
    def test_comment(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"COMMENT anything at all\r\ncomment\r\n")
        self.assertEqual(transport.value().count(b"+OK "), 2)

    def test_quit(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"quit  \r\n")
        self.assertTrue(transport.value().startswith(b"+OK"))
        self.assertTrue(transport.disconnecting)

    def test_unknown_command_keeps_session(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"HELO there\r\n")
        self.assertTrue(transport.value().startswith(b"-BAD/unknown-command"))
        transport.clear()
        proto.dataReceived(b"COMMENT\r\n")
        self.assertTrue(transport.value().startswith(b"+OK"))
        self.assertFalse(transport.disconnecting)

    def test_syntax_error_is_bad(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"TRACK onlyone\r\n")
        self.assertTrue(transport.value().startswith(b"-BAD/syntax"))
        self.assertEqual(self.tracker.calls, [])

    def test_starttls_without_certificates(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"STARTTLS mtqp.example.com\r\nCOMMENT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-ERR/unsupported"))
        self.assertTrue(lines[1].startswith(b"+OK"), "the session goes on after a refusal")

    def test_track_found(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(TRACK)
        self.assertEqual(self.tracker.calls, [(ENVID, SECRET, False)])
        self.tracker.answer(FOUND)
        out = transport.value()
        self.assertTrue(out.startswith(b"+OK+ Tracking information follows\r\n"))
        self.assertTrue(out.endswith(b"\r\n.\r\n"))
        self.assertIn(b"Action: delivered", out)

    def test_track_noinfo(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"TRACK 12345-20010101@example.com YWJjZGVmZ2gK\r\n")
        self.assertEqual(self.tracker.calls[0][0], ENVID, "angle brackets are optional")
        self.tracker.answer(Answer.noinfo())
        self.assertTrue(transport.value().startswith(b"-ERR/noinfo"))

    def test_tracker_failure_is_temp(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(TRACK)
        self.tracker.pending.pop(0).errback(RuntimeError("database on fire"))
        self.assertTrue(transport.value().startswith(b"-TEMP/unavailable"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        transport.clear()
        proto.dataReceived(b"COMMENT\r\n")
        self.assertTrue(transport.value().startswith(b"+OK"))

    def test_tracker_raising_is_temp(self) -> None:
        class Raising:
            def track(self, envid: str, secret: str, secure: bool = False) -> Any:
                raise ValueError("boom")

        self.tracker = Raising()  # type: ignore[assignment]
        proto, transport = self.session()
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"-TEMP/unavailable"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_connection_lost_cancels_track(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(TRACK)
        proto.connectionLost(None)
        self.assertEqual(self.tracker.cancelled, 1)
        self.assertEqual(self.factory().connections, 0)

    def test_secret_never_logged(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.tracker.auto = Answer.noinfo()
        proto, transport = self.session()
        proto.dataReceived(TRACK)
        proto.dataReceived(b"TRACK <x@y> bad*secret\r\n")
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn(ENVID, text, "one log line per TRACK names the envelope id")
        self.assertNotIn(SECRET, text)
        self.assertNotIn("bad*secret", text)
        self.assertNotIn(b"bad*secret", transport.value(), "a bad command is not echoed")

    def test_track_log_line(self) -> None:
        # The line is formatted once in our code (mtqpgw.logtext): braces in
        # an envelope id are text, and the fields still travel as keys.
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.tracker.auto = Answer.noinfo()
        proto, transport = self.session()
        proto.dataReceived(f"TRACK <{{x}}{{0}}{{y!r}}@y> {SECRET}\r\n".encode())
        [event] = [e for e in events if e.get("envid") == "{x}{0}{y!r}@y"]
        self.assertRegex(
            formatEvent(event), r"^TRACK \{x\}\{0\}\{y!r\}@y from \S+: noinfo in \d+\.\d{3}s$"
        )
        self.assertEqual(event["outcome"], "noinfo")
        self.assertIsInstance(event["duration"], float)


class LineLengthTests(ServerTestCase):
    def test_998_octets_accepted(self) -> None:
        proto, transport = self.session()
        line = b"COMMENT " + b"x" * (998 - 8)
        self.assertEqual(len(line), 998)
        proto.dataReceived(line + b"\r\n")
        self.assertTrue(transport.value().startswith(b"+OK"))

    def test_999_octets_bad_and_usable(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"COMMENT " + b"x" * (999 - 8) + b"\r\nCOMMENT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-BAD/line-too-long"), lines[0])
        self.assertTrue(lines[1].startswith(b"+OK"), lines[1])
        self.assertFalse(transport.disconnecting)

    def test_long_line_across_chunks(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(b"A" * 5000)
        proto.dataReceived(b"B" * 5000 + b"\r")
        proto.dataReceived(b"\nCOMMENT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertEqual(len([x for x in lines if x.startswith(b"-BAD")]), 1)
        self.assertTrue(lines[1].startswith(b"+OK"), lines)

    def test_long_line_in_pipeline_keeps_order(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(TRACK + b"X" * 1200 + b"\r\nCOMMENT\r\n")
        self.assertEqual(transport.value(), b"", "nothing is answered before the TRACK")
        self.tracker.answer(Answer.noinfo())
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-ERR/noinfo"))
        self.assertTrue(lines[1].startswith(b"-BAD/line-too-long"))
        self.assertTrue(lines[2].startswith(b"+OK"))


class PipeliningTests(ServerTestCase):
    def test_answers_in_order_one_in_flight(self) -> None:
        proto, transport = self.session()
        proto.dataReceived(
            TRACK + b"TRACK <second@example.com> QUJDREVGR0gK\r\nCOMMENT\r\nQUIT\r\n"
        )
        self.assertEqual(len(self.tracker.calls), 1, "one command in flight at a time")
        self.assertEqual(transport.value(), b"")
        self.tracker.answer(Answer.noinfo())
        self.assertEqual(len(self.tracker.calls), 2)
        self.assertEqual(self.tracker.calls[1][0], "second@example.com")
        self.assertTrue(transport.value().startswith(b"-ERR/noinfo"))
        self.assertNotIn(b"+OK", transport.value(), "COMMENT waits behind the second TRACK")
        self.tracker.answer(FOUND)
        out = transport.value()
        first_ok = out.index(b"+OK+ Tracking")
        self.assertLess(out.index(b"-ERR/noinfo"), first_ok)
        self.assertIn(b"+OK Comment", out[first_ok:])
        self.assertTrue(transport.disconnecting)

    def feed(self, proto: Any, transport: StringTransport, data: bytes) -> bytes:
        """Deliver ``data`` in 64 KiB reads, as a TCP transport would, until paused."""
        while data and transport.producerState == "producing":
            proto.dataReceived(data[:65536])
            data = data[65536:]
        return data

    def test_flood_pauses_reading(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_commands=200_000, max_failed_tracks=10**9)
        proto, transport = self.session()
        rest = self.feed(proto, transport, TRACK * 100_000)
        self.assertEqual(transport.producerState, "paused")
        self.assertGreater(len(rest), 0, "reading stopped well before the flood ended")
        self.assertLessEqual(proto.queued, server_module.QUEUE_HIGH)
        self.assertLess(len(proto._buffer), 65536 + len(TRACK), "at most one read is held")
        self.assertEqual(len(self.tracker.calls), 1)
        # The answers come; reading resumes and the whole flood is served.
        self.tracker.auto = Answer.noinfo()
        self.tracker.answer(Answer.noinfo())
        self.assertEqual(transport.producerState, "producing")
        while rest:
            rest = self.feed(proto, transport, rest)
            self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(self.tracker.calls), 100_000)
        self.assertEqual(transport.value().count(b"-ERR/noinfo"), 100_000)

    def test_write_backpressure_stops_processing(self) -> None:
        proto, transport = self.session()
        self.tracker.auto = Answer.noinfo()
        transport.producer.pauseProducing()  # the client stopped reading
        proto.dataReceived(TRACK * 3)
        self.assertEqual(self.tracker.calls, [])
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(len(self.tracker.calls), 3)


class LimitTests(ServerTestCase):
    def test_idle_timeout(self) -> None:
        proto, transport = self.session()
        self.clock.advance(599)
        proto.dataReceived(b"COMMENT\r\n")
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting, "a command resets the autologout timer")
        transport.clear()
        self.clock.advance(1)
        self.assertTrue(transport.value().startswith(b"-TEMP/timeout"))
        self.assertTrue(transport.disconnecting)

    def test_connection_time(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_connection_time=3600)
        proto, transport = self.session()
        for _ in range(12):
            self.clock.advance(299)
            proto.dataReceived(b"COMMENT\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(3600 - 12 * 299)
        self.assertIn(b"-TEMP/timeout Connection time limit", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_max_commands(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_commands=3)
        proto, transport = self.session()
        proto.dataReceived(b"COMMENT\r\n" * 5)
        lines = transport.value().split(b"\r\n")
        self.assertEqual([x[:3] for x in lines[:3]], [b"+OK"] * 3)
        self.assertTrue(lines[3].startswith(b"-ERR/limit"))
        self.assertEqual(lines[4:], [b""])
        self.assertTrue(transport.disconnecting)

    def test_quit_succeeds_past_the_command_limit(self) -> None:
        # RFC 3887 section 7: the server MUST answer QUIT successfully.
        self.limits = ServerLimits(hostname=HOST, max_commands=2)
        proto, transport = self.session()
        proto.dataReceived(b"COMMENT\r\nCOMMENT\r\nQUIT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertEqual([x[:3] for x in lines[:3]], [b"+OK"] * 3, lines)
        self.assertTrue(lines[2].startswith(b"+OK Goodbye"))

    def test_per_address_limit_counts_ipv6_per_64(self) -> None:
        # One host commonly holds a whole /64: counting per address would let
        # it take every slot of the server.
        from twisted.internet.address import IPv6Address

        self.limits = ServerLimits(hostname=HOST, max_connections_per_address=2)
        transports = []
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
            proto = self.factory().buildProtocol(IPv6Address("TCP", host, 40000))
            transport = StringTransport(peerAddress=IPv6Address("TCP", host, 40000))
            proto.makeConnection(transport)
            transports.append(transport)
        self.assertEqual(transports[0].value(), GREETING)
        self.assertEqual(transports[1].value(), GREETING)
        self.assertTrue(transports[2].value().startswith(b"-TEMP/MTQP/unavailable "))

    def test_refusals_do_not_flood_the_log(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.limits = ServerLimits(hostname=HOST, max_connections_per_address=1)
        self.session("192.0.2.1")
        for _ in range(100):
            self.connect("192.0.2.1")
        refusals = [e for e in events if "Refused" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        self.clock.advance(61)
        self.connect("192.0.2.1")
        refusals = [e for e in events if "Refused" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 2)
        self.assertEqual(refusals[1]["count"], 100, "99 kept quiet, then the new one")

    def test_max_bad_commands(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_bad_commands=2)
        proto, transport = self.session()
        proto.dataReceived(b"NOPE\r\nCOMMENT\r\nNOPE\r\nNOPE\r\nCOMMENT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertEqual(len(lines), 5)
        self.assertTrue(lines[3].startswith(b"-ERR/limit"))
        self.assertTrue(transport.disconnecting)

    def test_max_connections(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_connections=2)
        first, _ = self.session("192.0.2.1")
        self.session("192.0.2.2")
        third, transport = self.connect("192.0.2.3")
        self.assertTrue(transport.value().startswith(b"-TEMP/MTQP/unavailable "))
        self.assertTrue(transport.disconnecting)
        third.connectionLost(None)
        self.assertEqual(self.factory().connections, 2, "a refused connection is not counted")
        first.connectionLost(None)
        _, transport = self.connect("192.0.2.3")
        self.assertEqual(transport.value(), GREETING)

    def test_max_connections_per_address(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_connections_per_address=1)
        self.session("192.0.2.1")
        _, refused = self.connect("192.0.2.1")
        self.assertTrue(refused.value().startswith(b"-TEMP/MTQP/unavailable "))
        _, other = self.connect("192.0.2.2")
        self.assertEqual(other.value(), GREETING, "other addresses are unaffected")


class ThrottleTests(ServerTestCase):
    def test_failed_tracks_throttled_per_address(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_failed_tracks=2, failed_track_window=300)
        self.tracker.auto = Answer.noinfo()
        proto, transport = self.session("192.0.2.1")
        proto.dataReceived(TRACK * 3)
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-ERR/noinfo"))
        self.assertTrue(lines[1].startswith(b"-ERR/noinfo"))
        self.assertTrue(lines[2].startswith(b"-TEMP/unavailable"))
        self.assertEqual(len(self.tracker.calls), 2, "a throttled TRACK is not looked up")
        # The refusal does not depend on the envelope id: the same for a real one.
        self.tracker.auto = FOUND
        transport.clear()
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"-TEMP/unavailable"))
        other, other_transport = self.session("192.0.2.9")
        other.dataReceived(TRACK)
        self.assertTrue(other_transport.value().startswith(b"+OK+"))
        self.clock.advance(300)
        transport.clear()
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"+OK+"), "the window passed")

    def test_parallel_guesses_are_counted(self) -> None:
        # Once a guess has failed, guesses still in flight count too.
        self.limits = ServerLimits(hostname=HOST, max_failed_tracks=3)
        sessions = [self.session("192.0.2.1") for _ in range(4)]
        sessions[0][0].dataReceived(TRACK)
        sessions[1][0].dataReceived(TRACK)
        self.tracker.answer(Answer.noinfo())  # one failure, one in flight
        sessions[2][0].dataReceived(TRACK)  # 1 failed + 2 running: the limit
        sessions[3][0].dataReceived(TRACK)
        self.assertEqual(len(self.tracker.calls), 3)
        self.assertTrue(sessions[3][1].value().startswith(b"-TEMP/unavailable"))

    def test_slow_valid_tracks_are_not_failures(self) -> None:
        # Ten honest TRACKs waiting on a slow chain from one address (a NAT,
        # a portal) are not guesses: nothing has failed (re-review finding 7).
        self.limits = ServerLimits(hostname=HOST, max_failed_tracks=3)
        sessions = [self.session("192.0.2.1") for _ in range(10)]
        for proto, _ in sessions:
            proto.dataReceived(TRACK)
        self.assertEqual(len(self.tracker.calls), 10)
        for _ in range(10):
            self.tracker.answer(FOUND)
        self.assertTrue(all(t.value().startswith(b"+OK+") for _, t in sessions))

    def test_hanging_up_mid_track_counts(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_failed_tracks=2)
        for _ in range(2):
            proto, _ = self.session("192.0.2.1")
            proto.dataReceived(TRACK)
            proto.connectionLost(None)
        proto, transport = self.session("192.0.2.1")
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"-TEMP/unavailable"))

    def test_success_is_forgiven(self) -> None:
        self.limits = ServerLimits(hostname=HOST, max_failed_tracks=2)
        self.tracker.auto = FOUND
        proto, transport = self.session("192.0.2.1")
        proto.dataReceived(TRACK * 5)
        self.assertEqual(transport.value().count(b"+OK+ Tracking"), 5)
        self.assertEqual(len(self.factory().throttle), 0)

    def test_throttling_logged_once(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.limits = ServerLimits(hostname=HOST, max_failed_tracks=2)
        self.tracker.auto = Answer.noinfo()
        proto, _ = self.session("192.0.2.1")
        proto.dataReceived(TRACK * 50)
        warned = [e for e in events if "Throttling" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)

    def test_exempt_address(self) -> None:
        self.limits = ServerLimits(
            hostname=HOST, max_failed_tracks=1, throttle_exempt=("192.0.2.0/24",)
        )
        self.tracker.auto = Answer.noinfo()
        proto, transport = self.session("192.0.2.1")
        proto.dataReceived(TRACK * 5)
        self.assertEqual(transport.value().count(b"-ERR/noinfo"), 5)

    def test_opaque_answer_counts_as_failure(self) -> None:
        opaque = Answer.found(
            [
                TrackingStatus(
                    original_envelope_id=ENVID,
                    reporting_mta="dns; x",
                    recipients=(
                        RecipientStatus(
                            final_recipient="rfc822; unknown", action=Action.OPAQUE, status="5.0.0"
                        ),
                    ),
                )
            ]
        )
        self.assertTrue(is_failed_lookup(opaque))
        self.assertTrue(is_failed_lookup(Answer.noinfo()))
        self.assertFalse(is_failed_lookup(FOUND))
        self.assertFalse(is_failed_lookup(Answer.temp()))


class StartTLSTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.tls = FakeTLS()

    def tls_session(self) -> tuple[Any, StringTransport]:
        proto, transport = self.connect()
        transport.clear()
        return proto, transport

    def test_injection_after_starttls_discarded(self) -> None:
        proto, transport = self.tls_session()
        proto.dataReceived(b"STARTTLS mtqp.example.com\r\n" + TRACK + b"COMMENT\r\n")
        self.assertEqual(transport.value(), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(transport.tls_context, "context")
        proto.dataReceived(TRACK)  # still in the clear, before the handshake
        proto.handshakeCompleted()
        self.assertEqual(self.tracker.calls, [], "nothing sent in the clear after STARTTLS runs")
        self.assertTrue(
            transport.value().endswith(GREETING), "a fresh greeting without the STARTTLS option"
        )
        transport.clear()
        self.tracker.auto = FOUND
        proto.dataReceived(TRACK)
        self.assertEqual(self.tracker.calls, [(ENVID, SECRET, True)])

    def test_starttls_behind_inflight_track(self) -> None:
        proto, transport = self.tls_session()
        proto.dataReceived(TRACK + b"STARTTLS mtqp.example.com\r\n" + TRACK)
        self.tracker.answer(Answer.noinfo())
        self.assertIn(b"+OK Begin TLS negotiation", transport.value())
        proto.handshakeCompleted()
        self.assertEqual(len(self.tracker.calls), 1, "the TRACK after STARTTLS was dropped")

    def test_bad_fqdn(self) -> None:
        proto, transport = self.tls_session()
        proto.dataReceived(b"STARTTLS other.example.net\r\nCOMMENT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-BAD/bad-fqdn"))
        self.assertTrue(
            lines[1].startswith(b"+OK"), "a refused STARTTLS leaves the session usable"
        )
        self.assertIsNone(transport.tls_context)

    def test_tls_in_progress(self) -> None:
        proto, transport = self.tls_session()
        proto.dataReceived(b"STARTTLS mtqp.example.com\r\n")
        proto.handshakeCompleted()
        transport.clear()
        proto.dataReceived(b"STARTTLS mtqp.example.com\r\n")
        self.assertTrue(transport.value().startswith(b"-BAD/tls-in-progress"))

    def test_tls_required(self) -> None:
        self.tls = FakeTLS(required=True)
        self.tracker.auto = FOUND
        proto, transport = self.tls_session()
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"-ERR/tls-required"))
        self.assertEqual(self.tracker.calls, [])
        proto.dataReceived(b"STARTTLS mtqp.example.com\r\n")
        proto.handshakeCompleted()
        transport.clear()
        proto.dataReceived(TRACK)
        self.assertTrue(transport.value().startswith(b"+OK+"))

    def test_insecure_session(self) -> None:
        self.tls = FakeTLS(acceptable=False)
        self.tracker.auto = FOUND
        proto, transport = self.tls_session()
        proto.dataReceived(b"STARTTLS mtqp.example.com\r\n")
        proto.handshakeCompleted()
        transport.clear()
        proto.dataReceived(TRACK + b"COMMENT\r\nQUIT\r\n")
        lines = transport.value().split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-ERR/insecure"))
        self.assertTrue(lines[1].startswith(b"-ERR/insecure"))
        self.assertTrue(lines[2].startswith(b"+OK"))
        self.assertEqual(self.tracker.calls, [])
        self.assertTrue(transport.disconnecting)
