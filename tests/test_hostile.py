"""Hostile clients and inner hosts: protocol fuzzing, slow and greedy clients, guessed secrets.

What a perimeter host meets on the Internet, and what its inner hosts may do
to the gateway (issue 7):

- ``FuzzTests``: arbitrary byte streams, cut at arbitrary points, against one
  session (StringTransport, task.Clock, a tracker that answers at once).
  One property is exact (every complete line gets exactly one answer); one
  allows everything (STARTTLS, QUIT, tiny limits, timers, a client that stops
  reading) and checks what must hold whatever happens.
- ``SlowClientTests`` / ``GreedyClientTests``: one byte a minute; 100,000
  pipelined commands from a client that never reads, against a transport
  that pushes back like TCP's send buffer.
- ``SocketLimitTests``: connection limits and clients that stop reading, over
  real loopback sockets (distinct client addresses come from 127.0.0.0/8).
- ``GuessingTests``: the failed-TRACK brake on a plain server and through
  the gateway, and why an inner host must exempt its gateway.
- ``InnerFaultTests``: every kind of broken inner host at once behind one
  gateway, which stays responsive to other clients meanwhile.

Real-socket tests use the real reactor for I/O and wait on Deferreds; the
servers' own timers run on a task.Clock where the test needs to move time.
The store under faults (bad files at start-up, an import killed half-way) is
in tests/test_store_faults.py.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mtqpgw import client, wire
from mtqpgw import server as server_module
from mtqpgw.chain import ChainingTracker
from mtqpgw.config import ChainConfig, InnerHost
from mtqpgw.report import answer_from_response
from mtqpgw.rewrite import Rewriter
from mtqpgw.server import MTQPServer, MTQPServerFactory, ServerLimits
from mtqpgw.status import Action, Answer, TrackingStatus
from mtqpgw.store import LocalTracker
from tests import certs, fakes
from tests.seed import SECRET_B64
from tests.test_chain_integration import (
    GATEWAY,
    Harness,
    RecordingPool,
    TrackedServerFactory,
    block,
    chain_part,
)
from tests.test_server import FOUND, HOST, FakeTLS, TLSTransport

WRONG = ("d3Jvbmcx", "d3Jvbmcy", "d3Jvbmcz", "d3Jvbmc0")
COMMENT_OK = b"+OK Comment noted\r\n"
HIGH_LIMITS = ServerLimits(
    hostname=HOST, max_commands=10**9, max_bad_commands=10**9, max_failed_tracks=10**9
)


# --- shared helpers ----------------------------------------------------------


def _answer_for(envid: str) -> Answer:
    return FOUND if envid.startswith("found") else Answer.noinfo()


class QuickTracker:
    """An ITracker that answers at once: found for envids starting "found", else noinfo."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        self.calls.append(envid)
        return defer.succeed(_answer_for(envid))


class HeldTracker:
    """An ITracker whose answers wait until the test releases them (or, with ``quick``, do not)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.pending: list[tuple[str, defer.Deferred[Answer]]] = []

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        if self.quick:
            return defer.succeed(Answer.noinfo())
        d: defer.Deferred[Answer] = defer.Deferred()
        self.pending.append((envid, d))
        return d

    def release(self) -> None:
        """Answer what waits now (answering may start the next TRACK, which then waits)."""
        pending, self.pending = self.pending, []
        for envid, d in pending:
            d.callback(_answer_for(envid))


class CountingTracker:
    """Wraps a tracker and counts the TRACKs that reach it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def track(self, envid: str, secret: str, secure: bool = False) -> Any:
        self.calls += 1
        return self.inner.track(envid, secret, secure=secure)


def open_session(
    tracker: Any,
    limits: ServerLimits,
    tls: Any = None,
    transport: StringTransport | None = None,
    clock: task.Clock | None = None,
) -> tuple[MTQPServer, Any, task.Clock]:
    """One server session on a StringTransport (a TLSTransport unless given)."""
    clock = clock or task.Clock()
    factory = MTQPServerFactory(tracker, limits, tls, clock)
    address = IPv4Address("TCP", "192.0.2.1", 40000)
    proto = factory.buildProtocol(address)
    if transport is None:
        transport = TLSTransport(peerAddress=address)
    proto.makeConnection(transport)
    return proto, transport, clock


def take(transport: StringTransport) -> bytes:
    data = transport.value()
    transport.clear()
    return data


class ResponseReader:
    """Cuts server output into responses with the client's parser, which refuses anything malformed."""

    def __init__(self) -> None:
        self.parser = wire.ResponseParser()
        self.partial = b""
        self.responses: list[wire.Response] = []

    def feed(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\r\n")
        for line in lines:
            response = self.parser.feed(line)
            if response is not None:
                self.responses.append(response)

    @property
    def whole(self) -> bool:
        """Nothing half-written: the output ends at the end of a response."""
        return not self.partial and not self.parser.in_progress


def answerable_lines(sent: bytes) -> int:
    """How many answers the server owes for ``sent``: one per CRLF-terminated line,
    plus one for an unterminated line already too long (it is refused before its end)."""
    tail = sent.rsplit(b"\r\n", 1)[-1]
    return sent.count(b"\r\n") + (len(tail) >= wire.MAX_LINE + 2)


def is_noinfo(response: wire.Response) -> bool:
    return response.indicator is wire.Indicator.ERR and response.reasons == ("noinfo",)


def is_greeting(response: wire.Response) -> bool:
    return response.is_positive and response.has_reason("mtqp")


def closing_reason(response: wire.Response) -> str | None:
    """Which documented reason a session's last response gives for closing, if any."""
    if response.indicator is wire.Indicator.OK and response.text == "Goodbye":
        return "quit"
    for reason in ("limit", "timeout"):
        if response.indicator is not wire.Indicator.OK and response.has_reason(reason):
            return reason
    return None


# --- fuzzing ---------------------------------------------------------------

# Pieces a hostile stream is made of: command words, whole and broken
# commands, line ends and their halves, octets no command may hold.
_PIECES = (
    b"TRACK ",
    b"TRACK <found-1@example.com> YWJjZGVmZ2gK",
    b"track found-2@example.com QUJDREVG",
    b"TRACK <m3@example.com> YWJjZGVmZ2gK",
    b"TRACK <nobody@example.com> d3Jvbmc=",
    b"TRACK <a@b> not*base64",
    b"COMMENT",
    b"comment hello there",
    b"STARTTLS mtqp.example.com",
    b"STARTTLS other.example.net",
    b"starttls ",
    b"QUIT",
    b"quit ",
    b" ",
    b"\t",
    b"<",
    b">",
    b".",
    b"\r\n",
    b"\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b"\xff\xfe",
    b"\x1b[2J",
)


def _run(length: int, unit: bytes) -> bytes:
    return (unit * length)[:length]


_fragment = st.one_of(
    st.sampled_from(_PIECES),
    st.binary(max_size=12),
    # Lines around the 998-octet limit, and much longer ones.
    st.builds(
        _run,
        st.one_of(st.integers(990, 1010), st.integers(0, 2500)),
        st.sampled_from([b"A", b" ", b"\r", b"COMMENT x", b"x\r\n"]),
    ),
)


def _without_quit(data: bytes) -> bytes:
    # No Q, no QUIT: the exact property needs a session that stays open.
    return data.replace(b"q", b"x").replace(b"Q", b"X")


@st.composite
def _cut_stream(draw: Callable[..., Any], keep_quit: bool = True) -> list[bytes]:
    """A stream of fragments, cut into reads at arbitrary points."""
    data = b"".join(draw(st.lists(_fragment, max_size=30)))
    if not keep_quit:
        data = _without_quit(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=15)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


_EVENTS = ("tick", "handshake", "release", "stop-reading", "read")


@st.composite
def _hostile_session(draw: Callable[..., Any]) -> tuple[ServerLimits, bool, bool, list[Any]]:
    limits = ServerLimits(
        hostname=HOST,
        max_bad_commands=draw(st.sampled_from([0, 1, 3, 10**6])),
        max_commands=draw(st.sampled_from([1, 4, 10**6])),
        max_failed_tracks=draw(st.sampled_from([1, 10**6])),
    )
    quick = draw(st.booleans())
    acceptable = draw(st.booleans())  # whether a TLS session meets the policy
    chunk = st.lists(_fragment, max_size=6).map(b"".join)
    events = draw(st.lists(st.one_of(chunk, chunk, st.sampled_from(_EVENTS)), max_size=25))
    return limits, quick, acceptable, events


# What an inner host may send a client: pieces of answers, whole and broken.
_ANSWER_PIECES = (
    b"+OK+ Tracking information follows\r\n",
    b"+OK Tracking\r\n",
    b"-ERR/noinfo No such message\r\n",
    b"-TEMP/unavailable Later\r\n",
    b"-BAD/syntax What?\r\n",
    b"+OK/MTQP again\r\n",
    b'Content-Type: multipart/related; boundary="b"; type="message/tracking-status"\r\n',
    b"Content-Type: message/tracking-status\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"Reporting-MTA: dns; inner.example\r\n",
    b"Original-Envelope-Id: a@b\r\n",
    b"Final-Recipient: rfc822; x@y\r\n",
    b"Action: delivered\r\nStatus: 2.5.0\r\n",
    b"Action: relayed\r\nRemote-MTA: dns; evil.example.net\r\n",
    b"\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r",
    b"\n",
    b"\x00\x1b[31m",
    fakes.canned_answer(),
    fakes.canned_answer()[:-5],
)
_answer_stream = st.lists(
    st.one_of(
        st.sampled_from(_ANSWER_PIECES),
        st.binary(max_size=10),
        st.builds(_run, st.integers(990, 1005), st.sampled_from([b"Y", b"X: y"])),
    ),
    max_size=40,
).map(b"".join)


class FuzzTests(SynchronousTestCase):
    """Arbitrary input never breaks a session; each line is answered once, in a well-formed line."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(chunks=_cut_stream(keep_quit=False), tls=st.sampled_from(["none", "tls", "insecure"]))
    def test_every_complete_line_is_answered(self, chunks: list[bytes], tls: str) -> None:
        # High limits, no QUIT, answers at once, and a session that is in the
        # clear without TLS on offer (STARTTLS is refused at once), or inside
        # TLS, or inside TLS below policy (everything refused but QUIT): then
        # the count is exact after every read, not just at the end.
        server_tls = None if tls == "none" else FakeTLS(acceptable=tls == "tls")
        proto, transport, _ = open_session(QuickTracker(), HIGH_LIMITS, server_tls)
        if server_tls is not None:
            proto.dataReceived(b"STARTTLS mtqp.example.com\r\n")
            proto.handshakeCompleted()
        take(transport)  # the greeting(s)
        reader = ResponseReader()
        sent = b""
        # Then end whatever line is open, and the session must still work.
        for chunk in [*chunks, b"\r\nCOMMENT\r\n"]:
            proto.dataReceived(chunk)
            sent += chunk
            reader.feed(take(transport))
            self.assertTrue(reader.whole, "a response was left half-written")
            self.assertEqual(len(reader.responses), answerable_lines(sent), sent[-200:])
        self.assertFalse(transport.disconnecting)
        last = reader.responses[-1]
        if tls == "insecure":
            self.assertEqual((last.indicator, last.reasons), (wire.Indicator.ERR, ("insecure",)))
        else:
            self.assertEqual(last.to_bytes(), COMMENT_OK)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(session=_hostile_session())
    def test_anything_goes(self, session: tuple[ServerLimits, bool, bool, list[Any]]) -> None:
        limits, quick, acceptable, events = session
        tracker = HeldTracker(quick)
        proto, transport, clock = open_session(tracker, limits, FakeTLS(acceptable=acceptable))
        reader = ResponseReader()
        sent = b""
        closed_at: int | None = None

        def check(output: bytes) -> None:
            if closed_at is not None:
                self.assertEqual(output, b"", "nothing is written after the closing line")
            reader.feed(output)
            self.assertTrue(reader.whole)
            answers = [r for r in reader.responses if not is_greeting(r)]
            timers = sum(1 for r in answers if closing_reason(r) == "timeout")
            self.assertLessEqual(timers, 1)
            self.assertLessEqual(len(answers) - timers, answerable_lines(sent))

        check(take(transport))
        for event in events:
            if isinstance(event, bytes):
                proto.dataReceived(event)
                sent += event
            elif event == "tick":
                clock.advance(300)
            elif event == "handshake":
                proto.handshakeCompleted()
            elif event == "release":
                tracker.release()
            elif transport.producer is not None:
                # The client stops (or starts again) reading its answers.
                if event == "stop-reading":
                    transport.producer.pauseProducing()
                else:
                    transport.producer.resumeProducing()
            check(take(transport))
            if transport.disconnecting and closed_at is None:
                closed_at = len(reader.responses)

        def behave() -> None:
            # The client reads again, answers come, a STARTTLS accepted meanwhile completes.
            while True:
                if transport.producer is not None:
                    transport.producer.resumeProducing()
                proto.handshakeCompleted()
                if not tracker.pending:
                    break
                tracker.release()

        # Whatever happened, the session is either closed for a documented
        # reason, or it answers a COMMENT once the client behaves.  A COMMENT
        # that followed an accepted STARTTLS in the clear is dropped, as it
        # must be: then it is sent again inside TLS.
        for line in (b"\r\nCOMMENT\r\n", b"COMMENT\r\n"):
            if transport.disconnecting:
                break
            behave()
            proto.dataReceived(line)
            sent += line
            behave()
            check(take(transport))
            if not is_greeting(reader.responses[-1]):
                break
        last = reader.responses[-1]
        if transport.disconnecting:
            self.assertIsNotNone(closing_reason(last), last)
        elif not acceptable and sum(map(is_greeting, reader.responses)) > 1:
            # Inside TLS below policy: refused, but answered.
            self.assertEqual((last.indicator, last.reasons), (wire.Indicator.ERR, ("insecure",)))
        else:
            self.assertEqual(last.to_bytes(), COMMENT_OK)

    @settings(max_examples=300, deadline=None)
    @given(answer=_answer_stream, cuts=st.lists(st.integers(0, 2000), max_size=8))
    def test_client_survives_any_answer(self, answer: bytes, cuts: list[int]) -> None:
        # The gateway's side: whatever an inner host sends after a TRACK,
        # nothing escapes dataReceived and the query ends in an Answer or a
        # ClientError (then the session is aborted), or is still waiting.
        proto = client.MTQPClientProtocol(max_lines=200, max_octets=16384)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"+OK/MTQP inner.example MTQP server ready\r\n")
        self.successResultOf(proto.ready)
        outcome: list[Any] = []
        proto.track("a@b", "YWJj").addBoth(outcome.append)
        bounds = [0, *sorted(c for c in cuts if c < len(answer)), len(answer)]
        for start, end in zip(bounds, bounds[1:], strict=False):
            proto.dataReceived(answer[start:end])
        if not outcome:
            self.assertFalse(transport.disconnecting, "aborted, yet the query never ended")
            return
        (result,) = outcome
        if isinstance(result, Failure):
            self.assertTrue(result.check(client.ClientError), result)
            self.assertTrue(transport.disconnecting, "a failed session is not kept")
        else:
            self.assertIsInstance(result, Answer)


# --- slow and greedy clients on a StringTransport ----------------------------


class SlowClientTests(SynchronousTestCase):
    """A client that sends one byte a minute: octets are not activity, only commands are."""

    def drip(
        self, proto: MTQPServer, transport: StringTransport, clock: task.Clock, data: bytes
    ) -> int:
        """Send ``data`` one byte every 60 s, over and over, until the server closes."""
        sent = 0
        while not transport.disconnecting:
            proto.dataReceived(data[sent % len(data) : sent % len(data) + 1])
            sent += 1
            clock.advance(60)
            self.assertLess(sent, 1000, "the server never closed")
        return sent

    def test_dripping_one_command_is_logged_out_when_idle(self) -> None:
        # 32 octets at one a minute would take 31 minutes: the command never
        # completes, so nothing resets the idle timer.
        proto, transport, clock = open_session(QuickTracker(), ServerLimits(hostname=HOST))
        take(transport)
        command = b"COMMENT one byte every minute\r\n"
        sent = self.drip(proto, transport, clock, command)
        self.assertEqual(clock.seconds(), 600, "autologout at idle_timeout, to the second")
        self.assertLess(sent, len(command))
        self.assertEqual(
            take(transport), b"-TEMP/timeout Idle for too long, closing (autologout)\r\n"
        )
        proto.dataReceived(b"\r\nCOMMENT\r\n")
        self.assertEqual(take(transport), b"", "the half command is never answered")

    def test_dripping_short_commands_meets_the_connection_time_limit(self) -> None:
        # A 9-octet COMMENT completes every 9 minutes, inside the idle
        # timeout: only max_connection_time ends this one.
        proto, transport, clock = open_session(QuickTracker(), ServerLimits(hostname=HOST))
        take(transport)
        self.drip(proto, transport, clock, b"COMMENT\r\n")
        self.assertEqual(clock.seconds(), 3600)
        self.assertEqual(
            take(transport),
            COMMENT_OK * 6 + b"-TEMP/timeout Connection time limit reached, closing\r\n",
        )
        proto.connectionLost(None)
        self.assertEqual(proto.factory.connections, 0)
        self.assertEqual(clock.getDelayedCalls(), [], "no timer outlives the session")


class SendBufferTransport(StringTransport):
    """A transport whose send buffer fills when the client does not read, as TCP's does.

    Past ``high`` unread octets it pauses the registered producer (the
    server) and resumes it when the client reads.  It counts what is written
    instead of keeping it, so a long test does not hold its output.
    """

    def __init__(self, high: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.high = high
        self.unread = 0
        self.most_unread = 0
        self.statuses: list[bytes] = []
        self.largest_write = 0
        self._pushed_back = False

    def write(self, data: bytes) -> None:
        self.statuses.append(data[:5])
        self.unread += len(data)
        self.largest_write = max(self.largest_write, len(data))
        self.most_unread = max(self.most_unread, self.unread)
        if self.unread > self.high and not self._pushed_back and self.producer is not None:
            self._pushed_back = True
            self.producer.pauseProducing()

    def client_reads(self) -> None:
        self.unread = 0
        if self._pushed_back:
            self._pushed_back = False
            self.producer.resumeProducing()


class GreedyClientTests(SynchronousTestCase):
    """100,000 pipelined TRACKs from a client that reads nothing: memory stays bounded both ways."""

    COUNT = 100_000
    READ = 65536  # one read from the socket
    SEND_BUFFER = 64 * 1024

    def test_pipelined_flood_without_reading(self) -> None:
        tracker = QuickTracker()
        transport = SendBufferTransport(
            self.SEND_BUFFER, peerAddress=IPv4Address("TCP", "192.0.2.1", 40000)
        )
        proto, _, _ = open_session(
            tracker,
            ServerLimits(hostname=HOST, max_commands=10**6, max_failed_tracks=10**6),
            transport=transport,
        )
        data = b"".join(
            b"TRACK <found-%d@example.com> YWJjZGVmZ2gK\r\n" % i
            if i % 10 == 0
            else b"TRACK <m%d@example.com> YWJjZGVmZ2gK\r\n" % i
            for i in range(self.COUNT)
        )
        longest = max(len(line) for line in data.split(b"\r\n")) + 2
        offset = 0

        def deliver() -> None:
            # The kernel hands the server one read at a time while it reads.
            nonlocal offset
            while offset < len(data) and transport.producerState == "producing":
                proto.dataReceived(data[offset : offset + self.READ])
                offset += self.READ
                self.assertLessEqual(proto.queued, server_module.QUEUE_HIGH)
                self.assertLess(len(proto._buffer), self.READ + longest)

        deliver()
        # The client has read nothing: the server stopped answering and reading.
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(offset, len(data) // 10, "reading stopped early in the flood")
        asked = len(tracker.calls)
        self.assertLess(asked, 1000)
        deliver()
        self.assertEqual(len(tracker.calls), asked, "nothing more is processed meanwhile")
        # The client reads in bursts; every TRACK is answered, in order.
        for _ in range(10 * self.COUNT):
            if len(tracker.calls) == self.COUNT and not proto.queued:
                break
            transport.client_reads()
            deliver()
        statuses = transport.statuses[1:]  # after the greeting
        self.assertEqual(len(statuses), self.COUNT)
        self.assertEqual(statuses.count(b"+OK+ "), self.COUNT // 10)
        self.assertEqual(statuses[::10], [b"+OK+ "] * (self.COUNT // 10))
        self.assertEqual(tracker.calls[-1], f"m{self.COUNT - 1}@example.com")
        # Unread output never passed the send buffer by more than one answer.
        self.assertLessEqual(transport.most_unread, self.SEND_BUFFER + transport.largest_write)


# --- real sockets ------------------------------------------------------------


class RawClient(LineReceiver):
    """An outside client on a loopback socket that keeps each response with its exact octets."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1_000_000

    def __init__(self) -> None:
        self.parser = wire.ResponseParser()
        self.octets = b""
        self.received: deque[tuple[wire.Response, bytes]] = deque()
        self.waiting: deque[defer.Deferred[tuple[wire.Response, bytes]]] = deque()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.octets += line + b"\r\n"
        response = self.parser.feed(line)
        if response is None:
            return
        item, self.octets = (response, self.octets), b""
        if self.waiting:
            self.waiting.popleft().callback(item)
        else:
            self.received.append(item)

    def next(self) -> defer.Deferred[tuple[wire.Response, bytes]]:
        """The next response and its octets."""
        if self.received:
            return defer.succeed(self.received.popleft())
        d: defer.Deferred[tuple[wire.Response, bytes]] = defer.Deferred()
        self.waiting.append(d)
        return d

    def send(self, line: bytes) -> defer.Deferred[tuple[wire.Response, bytes]]:
        self.transport.write(line)
        return self.next()

    def connectionLost(self, reason: Failure | None = None) -> None:
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.errback(reason or Failure(ConnectionError("closed")))
        self.closed.callback(None)


class WatchedFactory(TrackedServerFactory):
    """The server factory, telling the test when a connection is released or its output paused."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._released: fakes.Waiters[None] = fakes.Waiters()
        self._paused: fakes.Waiters[MTQPServer] = fakes.Waiters()

    def release(self, proto: MTQPServer) -> None:
        super().release(proto)
        self._released.fire(None)

    def next_release(self) -> defer.Deferred[None]:
        return self._released.wait()

    def output_paused(self, proto: MTQPServer) -> None:
        self._paused.fire(proto)

    def next_output_pause(self) -> defer.Deferred[MTQPServer]:
        return self._paused.wait()


class SmallBufferServer(MTQPServer):
    """The server with a small kernel send buffer, telling its factory when its output pauses."""

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connectionMade()

    def _pause(self, reason: str) -> None:
        super()._pause(reason)
        if reason == "write":
            self.factory.output_paused(self)


class FloodClient(protocol.Protocol):
    """Pipelines ``count`` TRACKs and stops reading at once, with a small receive buffer."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.data = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pauseProducing()
        self.transport.write(b"TRACK <m1@example.com> YWJjZGVmZ2gK\r\n" * self.count)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


def within(d: defer.Deferred[Any], seconds: float, what: str) -> defer.Deferred[Any]:
    """``d``, failing with a readable message if it has not fired after ``seconds``."""

    def late(failure: Failure) -> Failure:
        if failure.check(defer.TimeoutError):
            raise AssertionError(f"{what}: nothing after {seconds:g} s")
        return failure

    return d.addTimeout(seconds, reactor).addErrback(late)


class SocketTestCase(TestCase):
    """Loopback servers and clients with an orderly shutdown (tests/test_chain_integration's)."""

    timeout = 30

    def setUp(self) -> None:
        self.net = Harness(self)

    def serve(
        self,
        tracker: Any,
        limits: ServerLimits,
        clock: Any = None,
        kind: type[MTQPServer] = MTQPServer,
        tls: Any = None,
    ) -> tuple[int, WatchedFactory]:
        factory = WatchedFactory(
            tracker, limits, tls, clock if clock is not None else task.Clock()
        )
        factory.protocol = kind
        return self.net.listen(factory), factory

    async def client(self, port: int, source: str, proto: Any = None) -> Any:
        """A client connected from ``source`` (any 127.x.y.z address) to ``port``."""
        endpoint = endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0)
        )
        proto = await endpoints.connectProtocol(endpoint, proto or RawClient())
        self.net.clients.append(proto)
        return proto

    async def session(self, port: int, source: str) -> RawClient:
        """A client whose greeting has come and was positive."""
        client = await self.client(port, source)
        greeting, _ = await client.next()
        self.assertTrue(is_greeting(greeting), greeting)
        return client

    async def refused(self, port: int, source: str) -> wire.Response:
        """Connect, expecting a refusal line and the server closing the connection."""
        client = await self.client(port, source)
        refusal, _ = await client.next()
        await within(client.closed, 5, "the refused connection was not closed")
        self.assertIs(refusal.indicator, wire.Indicator.TEMP)
        self.assertTrue(refusal.has_reason("unavailable"))
        return refusal


class SocketLimitTests(SocketTestCase):
    async def test_connection_limits(self) -> None:
        port, factory = self.serve(
            QuickTracker(),
            ServerLimits(hostname=HOST, max_connections=4, max_connections_per_address=2),
        )
        a1 = await self.session(port, "127.0.0.2")
        await self.session(port, "127.0.0.2")
        refusal = await self.refused(port, "127.0.0.2")
        self.assertIn("your address", refusal.text)
        b1 = await self.session(port, "127.0.0.3")
        await self.session(port, "127.0.0.4")
        refusal = await self.refused(port, "127.0.0.5")
        self.assertNotIn("your address", refusal.text)
        self.assertEqual(factory.connections, 4, "refused connections are not counted")
        # The connections already open are unaffected.
        _, octets = await a1.send(b"COMMENT still here\r\n")
        self.assertEqual(octets, COMMENT_OK)
        answer, _ = await b1.send(b"TRACK <found-7@example.com> YWJjZGVmZ2gK\r\n")
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI)
        # A place frees up when one leaves.
        released = factory.next_release()
        goodbye, _ = await a1.send(b"QUIT\r\n")
        self.assertEqual(closing_reason(goodbye), "quit")
        await within(released, 5, "QUIT did not free the connection")
        await self.session(port, "127.0.0.5")

    async def flood_until_paused(self, limits: ServerLimits) -> tuple[Any, Any, MTQPServer, Any]:
        clock = task.Clock()
        port, factory = self.serve(QuickTracker(), limits, clock, SmallBufferServer)
        paused = factory.next_output_pause()
        flooder = await self.client(port, "127.0.0.2", FloodClient(20_000))
        server = await within(paused, 10, "the server's output never paused")
        return clock, factory, server, flooder

    async def test_client_that_never_reads_loses_its_place(self) -> None:
        limits = ServerLimits(hostname=HOST, max_connections_per_address=1, max_commands=10**6)
        clock, factory, server, _ = await self.flood_until_paused(limits)
        clock.advance(limits.idle_timeout)
        self.assertTrue(server.transport.disconnecting, "autologout asked for the close")
        # It cannot close while its answers are unread, and it still holds
        # the address's only place...
        self.assertEqual(factory.connections, 1)
        await self.refused(self.net.ports[0].getHost().port, "127.0.0.2")
        # ...until the grace period ends and the server aborts it.
        released = factory.next_release()
        clock.advance(server_module.CLOSE_GRACE)
        await within(released, 5, "the unread connection was never aborted")
        self.assertEqual(factory.connections, 0)
        await self.session(self.net.ports[0].getHost().port, "127.0.0.2")

    async def test_client_that_reads_late_sees_the_close(self) -> None:
        limits = ServerLimits(hostname=HOST, max_commands=10**6)
        clock, factory, server, flooder = await self.flood_until_paused(limits)
        released = factory.next_release()
        clock.advance(limits.idle_timeout)
        # The client reads everything now; once the answers are out, the
        # close goes through at once, without waiting for the grace period.
        flooder.transport.resumeProducing()
        await within(flooder.closed, 10, "the server never closed after its output drained")
        await within(released, 5, "the server did not release the connection")
        self.assertEqual(factory.connections, 0)


# --- guessing secrets --------------------------------------------------------

KNOWN = "guess-me@example1.com"
UNKNOWN = "never-sent@example1.com"
KNOWN_PART = TrackingStatus(
    original_envelope_id=KNOWN,
    reporting_mta=f"dns; {HOST}",
    arrival_date="Mon, 30 Nov 2026 15:15:15 +0000",
    recipients=(block("user1@example1.com", Action.DELIVERED),),
)
INNER = "mx.corp.example.com"
INNER_PART = TrackingStatus(
    original_envelope_id=KNOWN,
    reporting_mta=f"dns; {INNER}",
    arrival_date="Mon, 30 Nov 2026 15:15:15 +0000",
    recipients=(block("user1@example1.com", Action.DELIVERED),),
)
DEADLINE = 1.5
SLACK = 1.0


def track(envid: str, secret: str) -> bytes:
    return wire.track_line(envid, secret)


class GuessingTests(SocketTestCase):
    """The failed-TRACK brake: per address, silent about which envids exist, exemptions honoured."""

    async def test_plain_server(self) -> None:
        store = await self.net.store_with(KNOWN_PART)
        clock = task.Clock()
        limits = ServerLimits(
            hostname=HOST,
            max_failed_tracks=3,
            failed_track_window=300,
            throttle_exempt=("127.0.0.9",),
        )
        port, _ = self.serve(LocalTracker(store, HOST), limits, clock)
        guesser = await self.session(port, "127.0.0.2")
        wrong_known = (await guesser.send(track(KNOWN, WRONG[0])))[1]
        wrong_unknown = (await guesser.send(track(UNKNOWN, WRONG[1])))[1]
        self.assertEqual(wrong_known, wrong_unknown, "a wrong secret looks like no message")
        self.assertTrue(wrong_known.startswith(b"-ERR/noinfo"))
        await guesser.send(track(KNOWN, WRONG[2]))
        # Three failures: from now on this address gets -TEMP, the same line
        # whether the envid exists or not, and even with the right secret.
        refusals = [
            (await guesser.send(track(KNOWN, WRONG[3])))[1],
            (await guesser.send(track(UNKNOWN, WRONG[0])))[1],
            (await guesser.send(track(KNOWN, SECRET_B64)))[1],
        ]
        self.assertTrue(refusals[0].startswith(b"-TEMP/unavailable "), refusals[0])
        self.assertEqual(refusals, [refusals[0]] * 3)
        # Per address, not per connection: a new connection is refused alike...
        again = await self.session(port, "127.0.0.2")
        self.assertEqual((await again.send(track(KNOWN, SECRET_B64)))[1], refusals[0])
        # ...while another address is answered.
        other = await self.session(port, "127.0.0.3")
        found, _ = await other.send(track(KNOWN, SECRET_B64))
        self.assertEqual(answer_from_response(found), Answer.found([KNOWN_PART]))
        # An exempt address is never throttled.
        exempt = await self.session(port, "127.0.0.9")
        for i in range(12):
            _, octets = await exempt.send(track(KNOWN if i % 2 else UNKNOWN, WRONG[i % 4]))
            self.assertEqual(octets, wrong_known)
        found, _ = await exempt.send(track(KNOWN, SECRET_B64))
        self.assertEqual(answer_from_response(found), Answer.found([KNOWN_PART]))
        # The window passes; the guesser's address is answered again.
        clock.advance(300)
        found, _ = await guesser.send(track(KNOWN, SECRET_B64))
        self.assertEqual(answer_from_response(found), Answer.found([KNOWN_PART]))

    async def chain(self, exempt_gateway: bool) -> tuple[int, CountingTracker, Any, int]:
        """An inner host knowing KNOWN, and an empty gateway fanning out to it."""
        inner_store = await self.net.store_with(INNER_PART)
        inner_tracker = CountingTracker(LocalTracker(inner_store, INNER))
        inner_limits = ServerLimits(
            hostname=INNER,
            max_failed_tracks=3,
            throttle_exempt=("127.0.0.1",) if exempt_gateway else (),
        )
        inner_port, inner_factory = self.serve(inner_tracker, inner_limits)
        pool = RecordingPool(reactor)
        self.net.pools.append(pool)
        chain = ChainConfig(
            deadline=DEADLINE, inner=(InnerHost(INNER, "127.0.0.1", inner_port, "off"),)
        )
        gateway = ChainingTracker(
            LocalTracker(await self.net.store_with(), GATEWAY),
            chain,
            Rewriter(()),
            GATEWAY,
            reactor,
            pool=pool,
        )
        gateway.service.startService()
        port, _ = self.serve(gateway, ServerLimits(hostname=GATEWAY, max_failed_tracks=3))
        return port, inner_tracker, inner_factory, inner_port

    async def test_gateway_exempt_at_its_inner_host(self) -> None:
        port, inner_tracker, inner_factory, inner_port = await self.chain(exempt_gateway=True)
        # Fifty outside clients, one unknown envid each: every TRACK fans out
        # to the inner host, all from the gateway's one address.
        clients = [await self.session(port, f"127.0.0.{10 + i}") for i in range(50)]
        answers = await defer.gatherResults(
            [c.send(track(f"unknown-{i}@example1.com", WRONG[0])) for i, c in enumerate(clients)]
        )
        self.assertEqual({octets for _, octets in answers}, {answers[0][1]})
        self.assertTrue(answers[0][1].startswith(b"-ERR/noinfo"))
        self.assertEqual(inner_tracker.calls, 50, "each one reached the inner host's store")
        self.assertEqual(len(inner_factory.throttle), 0, "the gateway's failures are not counted")
        legit = await self.session(port, "127.0.0.70")
        found, _ = await legit.send(track(KNOWN, SECRET_B64))
        self.assertIn(
            f"dns; {INNER}", [p.reporting_mta for p in answer_from_response(found).parts]
        )
        # The gateway throttles an outside guesser itself, by its own address;
        # the refused TRACK never leaves the gateway.
        guesser = await self.session(port, "127.0.0.80")
        for secret in WRONG[:3]:
            self.assertTrue(is_noinfo((await guesser.send(track(KNOWN, secret)))[0]))
        refusal, _ = await guesser.send(track(KNOWN, SECRET_B64))
        self.assertEqual(refusal.indicator, wire.Indicator.TEMP)
        self.assertEqual(inner_tracker.calls, 50 + 1 + 3)

    async def test_gateway_not_exempt_gets_throttled(self) -> None:
        # Why an inner host must list its gateway in throttle_exempt: three
        # outside clients asking for unknown envids make the inner host
        # throttle the gateway itself, and everyone behind it.
        port, inner_tracker, inner_factory, inner_port = await self.chain(exempt_gateway=False)
        for i in range(3):
            client = await self.session(port, f"127.0.0.{10 + i}")
            self.assertTrue(is_noinfo((await client.send(track(UNKNOWN, WRONG[i])))[0]))
        self.assertTrue(inner_factory.throttle.blocked("127.0.0.1", 0))
        # The inner host now answers -TEMP to anything from the gateway's address...
        direct = await self.session(inner_port, "127.0.0.1")
        refused, _ = await direct.send(track(KNOWN, SECRET_B64))
        self.assertEqual(refused.indicator, wire.Indicator.TEMP)
        # ...so a legitimate outside client with the right secret gets only
        # "try again later" (-TEMP, not a misleading noinfo).
        legit = await self.session(port, "127.0.0.20")
        answer = (await legit.send(track(KNOWN, SECRET_B64)))[0]
        self.assertEqual(answer.indicator, wire.Indicator.TEMP)
        self.assertEqual(inner_tracker.calls, 3, "the inner host no longer even looks")


# --- inner-host faults through the gateway -----------------------------------


class FiftyMegabyteServer(fakes.EndlessBodyServer):
    """``+OK+`` and 50 MB of plausible tracking-status lines, never the closing ``.``.

    It writes one 64 KiB chunk (the same one each time, so the test holds no
    50 MB) per reactor turn while the gateway reads.
    """

    TOTAL = 50 * 1024 * 1024
    HEAD = (
        b"+OK+ Tracking information follows\r\n"
        b'Content-Type: multipart/related; boundary="b"; type="message/tracking-status"\r\n'
        b"\r\n--b\r\nContent-Type: message/tracking-status\r\n\r\n"
        b"Original-Envelope-Id: big@example1.com\r\n"
        b"Reporting-MTA: dns; big.corp.example.com\r\n\r\n"
    )
    _BLOCK = (
        b"Original-Recipient: rfc822; user@example1.com\r\n"
        b"Final-Recipient: rfc822; user@example1.com\r\n"
        b"Action: delivered\r\nStatus: 2.5.0\r\n"
        b"Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as " + b"Q" * 700 + b"\r\n\r\n"
    )
    CHUNK = _BLOCK * (65536 // len(_BLOCK))

    def streaming_started(self) -> None:
        self.factory.streaming.callback(None)


# Each misbehaving inner host: name -> fake server class and options.
FAULTS: dict[str, tuple[type[fakes.FakeMTQPServer], dict[str, Any]]] = {
    "reset.corp.example.com": (fakes.ResetServer, {}),
    "hang.corp.example.com": (fakes.HangServer, {}),
    "drip.corp.example.com": (fakes.DripServer, {"interval": 0.05}),
    "garbage.corp.example.com": (fakes.GarbageServer, {}),
    "longline.corp.example.com": (fakes.LongLineServer, {}),
    "big.corp.example.com": (FiftyMegabyteServer, {}),
}
REFUSED = "refused.corp.example.com"
BAD_CERT = "badcert.corp.example.com"
GOOD = "good.corp.example.com"
FAULTY_ENVID = "faulty@example1.com"
LOCAL_ENVID = "local-only@example1.com"


GATEWAY_FAULTY_PART = chain_part(
    GATEWAY,
    *(
        block(f"{name.split('.')[0]}@example1.com", Action.RELAYED, name)
        for name in [GOOD, *FAULTS, REFUSED, BAD_CERT]
    ),
    envid=FAULTY_ENVID,
)
GOOD_PART = chain_part(GOOD, block("good@example1.com", Action.DELIVERED), envid=FAULTY_ENVID)
LOCAL_PART = chain_part(GATEWAY, block("here@example1.com", Action.DELIVERED), envid=LOCAL_ENVID)


class InnerFaultTests(SocketTestCase):
    """Every kind of broken inner host at once: each costs its own part, the gateway keeps serving."""

    async def test_all_faults_at_once(self) -> None:
        good_port, _ = self.serve(
            LocalTracker(await self.net.store_with(GOOD_PART), GOOD), ServerLimits(hostname=GOOD)
        )
        inner = [InnerHost(GOOD, "127.0.0.1", good_port, "off")]
        faulty: dict[str, fakes.FakeServerFactory] = {}
        for name, (kind, options) in FAULTS.items():
            faulty[name] = fakes.FakeServerFactory(kind, **options)
            inner.append(InnerHost(name, "127.0.0.1", self.net.listen(faulty[name]), "off"))
        streaming: defer.Deferred[None] = defer.Deferred()
        faulty["big.corp.example.com"].streaming = streaming  # type: ignore[attr-defined]
        # Nobody listens here: connection refused.
        closed = reactor.listenTCP(
            0, fakes.FakeServerFactory(fakes.HangServer), interface="127.0.0.1"
        )
        inner.append(InnerHost(REFUSED, "127.0.0.1", closed.getHost().port, "off"))
        await closed.stopListening()
        # TLS required, and its certificate is signed by a CA the gateway does not trust.
        from mtqpgw.tls import ServerTLS

        rogue = certs.new_authority("Rogue CA").issue([BAD_CERT])
        bad_cert_tracker = CountingTracker(
            LocalTracker(
                await self.net.store_with(chain_part(BAD_CERT, envid=FAULTY_ENVID)), BAD_CERT
            )
        )
        bad_cert_port, _ = self.serve(
            bad_cert_tracker,
            ServerLimits(hostname=BAD_CERT),
            tls=ServerTLS.from_files([rogue.pair]),
        )
        inner.append(
            InnerHost(
                BAD_CERT, "127.0.0.1", bad_cert_port, "required", certs.default_ca().cert_path
            )
        )

        pool = RecordingPool(reactor)
        self.net.pools.append(pool)
        gateway = ChainingTracker(
            LocalTracker(await self.net.store_with(GATEWAY_FAULTY_PART, LOCAL_PART), GATEWAY),
            ChainConfig(deadline=DEADLINE, inner=tuple(inner)),
            Rewriter(()),
            GATEWAY,
            reactor,
            pool=pool,
        )
        gateway.service.startService()
        port, _ = self.serve(gateway, ServerLimits(hostname=GATEWAY))

        asker = await self.session(port, "127.0.0.2")
        started = time.monotonic()
        slow = asker.send(track(FAULTY_ENVID, SECRET_B64))
        await within(streaming, 5, "the gateway never asked the 50 MB host")
        # While that query runs, another client is served at once.
        other = await self.session(port, "127.0.0.3")
        quick_start = time.monotonic()
        self.assertEqual((await other.send(b"COMMENT are you there?\r\n"))[1], COMMENT_OK)
        local, _ = await other.send(track(LOCAL_ENVID, SECRET_B64))
        self.assertLess(time.monotonic() - quick_start, DEADLINE / 3)
        self.assertEqual(answer_from_response(local), Answer.found([LOCAL_PART]))
        self.assertNoResult(slow)

        response, _ = await slow
        elapsed = time.monotonic() - started
        # Held to the deadline by the hanging and dripping hosts, and no longer.
        self.assertGreaterEqual(elapsed, DEADLINE * 0.9)
        self.assertLess(elapsed, DEADLINE + SLACK)
        # The good host's part, and the gateway's own blocks for every other.
        self.assertEqual(
            answer_from_response(response), Answer.found([GATEWAY_FAULTY_PART, GOOD_PART])
        )
        for name, factory in faulty.items():
            self.assertEqual(factory.tracks, 1, f"{name} was asked once")
            await within(factory.when_all_closed(), 5, f"{name}'s session was not closed")
        big = faulty["big.corp.example.com"]
        # The answer caps stopped the body long before its 50 MB (what was
        # sent also fills the socket buffers, hence the margin).
        self.assertLess(big.octets_sent, 16 * 1024 * 1024)
        self.assertEqual(
            bad_cert_tracker.calls, 0, "no TRACK, and no secret, to an unverified host"
        )
        for host in inner[1:]:
            self.assertEqual(pool.stats(host)["open"], 0, f"{host.name} was not kept for reuse")
