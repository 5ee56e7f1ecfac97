"""Protocol tests for mtqpgw.client: a scripted server on a StringTransport, and task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw import wire
from mtqpgw.client import (
    ClientError,
    MTQPClientProtocol,
    TLSRequiredError,
    UnexpectedGreeting,
    track,
)
from mtqpgw.status import Outcome
from tests import seed

GREETING = b"+OK/MTQP mtqp.example.com MTQP server ready\r\n"
GREETING_TLS = b"+OK+/MTQP mtqp.example.com MTQP server ready\r\nSTARTTLS\r\n.\r\n"


class TLSTransport(StringTransport):
    """Records startTLS; the test plays the handshake by calling handshakeCompleted."""

    tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context


def connected(**kw: Any) -> tuple[MTQPClientProtocol, TLSTransport]:
    proto = MTQPClientProtocol(**kw)
    transport = TLSTransport()
    proto.makeConnection(transport)
    return proto, transport


def failure_of(d: defer.Deferred[Any], test: SynchronousTestCase) -> Failure:
    return test.failureResultOf(d)


class GreetingTests(SynchronousTestCase):
    def test_ready_after_greeting(self) -> None:
        proto, transport = connected()
        proto.dataReceived(GREETING)
        info = self.successResultOf(proto.ready)
        self.assertFalse(info.tls)
        self.assertEqual(info.options, {})
        self.assertTrue(proto.idle)
        self.assertEqual(transport.value(), b"", "nothing sent before a command")

    def test_negative_greeting(self) -> None:
        proto, transport = connected()
        proto.dataReceived(b"-TEMP/MTQP/admin Service down for admin\r\n")
        f = failure_of(proto.ready, self)
        self.assertIsInstance(f.value, UnexpectedGreeting)
        self.assertIn("admin", str(f.value))
        self.assertTrue(transport.disconnecting)

    def test_not_mtqp(self) -> None:
        proto, _ = connected()
        proto.dataReceived(b"+OK POP3 server ready\r\n")
        self.assertIsInstance(failure_of(proto.ready, self).value, UnexpectedGreeting)

    def test_garbage_greeting(self) -> None:
        proto, transport = connected()
        proto.dataReceived(b"220 smtp.example.com ESMTP\r\n")
        f = failure_of(proto.ready, self)
        self.assertIsInstance(f.value, ClientError)
        self.assertIn("malformed", str(f.value))

    def test_over_long_line(self) -> None:
        proto, transport = connected()
        proto.dataReceived(b"+OK/MTQP " + b"x" * 1000 + b"\r\n")
        self.assertIn("998", str(failure_of(proto.ready, self).value))

    def test_closed_before_greeting(self) -> None:
        proto, _ = connected()
        proto.connectionLost(None)
        self.assertIsInstance(failure_of(proto.ready, self).value, ClientError)


class StartTLSTests(SynchronousTestCase):
    def test_opportunistic_negotiates(self) -> None:
        proto, transport = connected(
            tls_mode="opportunistic", tls_name="mtqp.example.com", tls_context="ctx"
        )
        proto.dataReceived(GREETING_TLS)
        self.assertEqual(transport.value(), b"STARTTLS mtqp.example.com\r\n")
        self.assertNoResult(proto.ready)
        # Response injection: whatever follows +OK in the clear is dropped.
        proto.dataReceived(b"+OK Begin TLS\r\n-ERR/noinfo forged answer\r\n")
        self.assertEqual(transport.tls_context, "ctx")
        proto.handshakeCompleted()
        proto.dataReceived(GREETING)
        info = self.successResultOf(proto.ready)
        self.assertTrue(info.starttls_offered_before_tls)
        transport.clear()
        answer = proto.track(seed.ENVID, seed.SECRET_B64)
        proto.dataReceived(seed.EXAMPLES[6].response_bytes())
        self.assertEqual(self.successResultOf(answer).outcome, Outcome.OK)

    def test_opportunistic_without_offer_stays_clear(self) -> None:
        proto, transport = connected(
            tls_mode="opportunistic", tls_name="mtqp.example.com", tls_context="ctx"
        )
        proto.dataReceived(GREETING)
        self.successResultOf(proto.ready)
        self.assertEqual(transport.value(), b"")

    def test_refused_starttls_opportunistic_continues(self) -> None:
        proto, _ = connected(
            tls_mode="opportunistic", tls_name="mtqp.example.com", tls_context="ctx"
        )
        proto.dataReceived(GREETING_TLS + b"-BAD/bad-fqdn No certificate for that name\r\n")
        self.assertFalse(self.successResultOf(proto.ready).tls)

    def test_required_not_offered(self) -> None:
        proto, transport = connected(
            tls_mode="required", tls_name="mtqp.example.com", tls_context="ctx"
        )
        proto.dataReceived(GREETING)
        self.assertIsInstance(failure_of(proto.ready, self).value, TLSRequiredError)
        self.assertTrue(transport.disconnecting)

    def test_required_refused(self) -> None:
        proto, _ = connected(tls_mode="required", tls_name="mtqp.example.com", tls_context="ctx")
        proto.dataReceived(GREETING_TLS + b"-ERR/unavailable not now\r\n")
        self.assertIsInstance(failure_of(proto.ready, self).value, TLSRequiredError)

    def test_name_that_cannot_be_asked_for(self) -> None:
        # STARTTLS takes an FQDN (RFC 3887 section 6): an inner host named by
        # one label or an IP literal must not crash the protocol (review M3).
        for name in ("hub", "10.0.0.5"):
            proto, transport = connected(
                tls_mode="opportunistic", tls_name=name, tls_context="ctx"
            )
            proto.dataReceived(GREETING_TLS)
            self.assertFalse(self.successResultOf(proto.ready).tls, name)
            self.assertEqual(transport.value(), b"", "no STARTTLS sent")
            proto, transport = connected(tls_mode="required", tls_name=name, tls_context="ctx")
            proto.dataReceived(GREETING_TLS)
            f = failure_of(proto.ready, self)
            self.assertIsInstance(f.value, TLSRequiredError)
            self.assertIn("fully qualified", str(f.value))

    def test_tls_needs_name_and_context(self) -> None:
        self.assertRaises(ValueError, MTQPClientProtocol, tls_mode="required")


class CommandTests(SynchronousTestCase):
    def ready(self) -> tuple[MTQPClientProtocol, TLSTransport]:
        proto, transport = connected(max_lines=50, max_octets=4000)
        proto.dataReceived(GREETING)
        self.successResultOf(proto.ready)
        return proto, transport

    def test_track_sends_line_and_parses_answer(self) -> None:
        proto, transport = self.ready()
        d = proto.track(seed.ENVID, seed.SECRET_B64)
        self.assertEqual(transport.value(), seed.TRACK_LINE)
        self.assertFalse(proto.idle)
        proto.dataReceived(seed.EXAMPLES[8].response_bytes())
        answer = self.successResultOf(d)
        self.assertEqual(answer.parts, seed.EXAMPLES[8].parts)
        self.assertTrue(proto.idle)

    def test_pipelined_answers_in_order(self) -> None:
        proto, _ = self.ready()
        first = proto.track(seed.ENVID, seed.SECRET_B64)
        second = proto.track("other@example.com", seed.SECRET_B64)
        proto.dataReceived(b"-ERR/noinfo nothing\r\n" + seed.EXAMPLES[6].response_bytes())
        self.assertEqual(self.successResultOf(first).outcome, Outcome.NOINFO)
        self.assertEqual(self.successResultOf(second).outcome, Outcome.OK)

    def test_unsolicited_response_aborts(self) -> None:
        proto, transport = self.ready()
        proto.dataReceived(b"+OK surprise\r\n")
        self.assertTrue(transport.disconnecting)

    def test_answer_over_the_caps_aborts(self) -> None:
        proto, transport = self.ready()
        d = proto.track(seed.ENVID, seed.SECRET_B64)
        proto.dataReceived(b"+OK+ Tracking information follows\r\n" + b"Line: x\r\n" * 60)
        self.assertIsInstance(failure_of(d, self).value, ClientError)
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_fails_waiters(self) -> None:
        proto, _ = self.ready()
        d = proto.track(seed.ENVID, seed.SECRET_B64)
        proto.connectionLost(None)
        self.assertIn("closed", str(failure_of(d, self).value))

    def test_cancel_aborts_the_connection(self) -> None:
        proto, transport = self.ready()
        d = proto.track(seed.ENVID, seed.SECRET_B64)
        d.cancel()
        self.assertIsInstance(failure_of(d, self).value, defer.CancelledError)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)  # must not fire the cancelled Deferred again

    def test_command_before_ready_fails(self) -> None:
        proto, _ = connected()
        d = proto.track(seed.ENVID, seed.SECRET_B64)
        self.assertIsInstance(failure_of(d, self).value, ClientError)

    def test_quit_from_an_answer_reads_no_further(self) -> None:
        # Review: once quit() is called from an answer's callback, the rest
        # of the same read is not taken for an unsolicited response (which
        # would abort the connection and drop the QUIT).
        proto, transport = self.ready()
        aborted: list[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        d = proto.track_response(seed.ENVID, seed.SECRET_B64)
        d.addCallback(lambda _: proto.quit())
        proto.dataReceived(b"+OK done\r\n-ERR/x forged\r\n")
        self.assertEqual(aborted, [])
        self.assertTrue(transport.value().endswith(wire.QUIT_LINE))
        self.assertTrue(transport.disconnecting)

    def test_quit(self) -> None:
        proto, transport = self.ready()
        closed = proto.quit()
        self.assertEqual(transport.value(), wire.QUIT_LINE)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.successResultOf(closed)


class _Endpoint:
    """An IStreamClientEndpoint that connects a protocol to a StringTransport."""

    def __init__(self) -> None:
        self.transport = TLSTransport()
        self.proto: Any = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        return defer.succeed(self.proto)


class OneShotTests(SynchronousTestCase):
    def test_track_then_quit(self) -> None:
        clock = task.Clock()
        endpoint = _Endpoint()
        d = track(clock, endpoint, seed.ENVID, seed.SECRET_B64)
        endpoint.proto.dataReceived(GREETING + seed.EXAMPLES[7].response_bytes())
        self.assertEqual(self.successResultOf(d).parts, seed.EXAMPLES[7].parts)
        self.assertTrue(endpoint.transport.value().endswith(wire.QUIT_LINE))
        self.assertEqual(clock.getDelayedCalls(), [], "the timeout is cancelled")
        # A gateway connects all day: no "Starting factory" lines per query.
        self.assertFalse(endpoint.factory.noisy)

    def test_timeout(self) -> None:
        # RFC 3887 section 2.5: the default wait is at least two minutes.
        clock = task.Clock()
        endpoint = _Endpoint()
        d = track(clock, endpoint, seed.ENVID, seed.SECRET_B64)
        endpoint.proto.dataReceived(GREETING)
        clock.advance(149.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        f = failure_of(d, self)
        self.assertIsInstance(f.value, ClientError)
        self.assertIn("150", str(f.value))
        self.assertTrue(endpoint.transport.disconnecting)
