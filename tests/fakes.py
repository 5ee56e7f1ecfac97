"""Misbehaving MTQP servers for tests: small Twisted protocols that break the protocol on purpose.

Each server greets like an MTQP server (unless its fault is in the
greeting), then misbehaves when it gets a TRACK.  All share one factory,
L{FakeServerFactory}, which counts connections and TRACKs, remembers its
live connections, and can abort them all (``close_all``) so that a test
leaves a clean reactor::

    factory = FakeServerFactory(HangServer)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    ...
    await factory.close_all(); await port.stopListening()

The faults: L{SilentServer} (never greets), L{HangServer} (greets, never
answers), L{DripServer} (a valid answer one byte per clock tick),
L{GarbageServer} (a reply that is not MTQP), L{GarbageGreetingServer},
L{CloseEarlyServer} (closes instead of answering), L{EndlessBodyServer}
(``+OK+`` and data lines that never end, written as fast as the peer reads
them), L{LongLineServer} (1,000-octet data lines, over the 998 limit),
L{ResetServer} (half an answer, then a TCP reset) and L{CannedServer} (a
fixed, well-formed reply: the good control).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Generic, TypeVar

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from mtqpgw.report import response_for_answer
from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus

__all__ = [
    "CannedServer",
    "CloseEarlyServer",
    "DripServer",
    "EndlessBodyServer",
    "FakeServerFactory",
    "GarbageGreetingServer",
    "GarbageServer",
    "HangServer",
    "LongLineServer",
    "ResetServer",
    "SilentServer",
    "Waiters",
    "canned_answer",
]


T = TypeVar("T")


class Waiters(Generic[T]):
    """Deferreds waiting for the next time something happens: ``wait()``, then ``fire(value)``."""

    def __init__(self) -> None:
        self._waiting: list[defer.Deferred[T]] = []

    def wait(self) -> defer.Deferred[T]:
        d: defer.Deferred[T] = defer.Deferred()
        self._waiting.append(d)
        return d

    def fire(self, value: T) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(value)


def canned_answer(envid: str = "fake@example.com", reporter: str = "fake.invalid") -> bytes:
    """A well-formed ``+OK+`` TRACK response: one part, one delivered recipient."""
    answer = Answer.found(
        [
            TrackingStatus(
                original_envelope_id=envid,
                reporting_mta=f"dns; {reporter}",
                recipients=(
                    RecipientStatus(
                        final_recipient="rfc822; someone@example.com",
                        action=Action.DELIVERED,
                        status="2.5.0",
                    ),
                ),
            )
        ]
    )
    return response_for_answer(answer).to_bytes()


class FakeMTQPServer(LineReceiver):
    """Greets, answers QUIT and refuses other commands; subclasses decide what TRACK does."""

    delimiter = b"\r\n"
    # Generous: the fakes must read whatever a client sends without fuss.
    MAX_LENGTH = 64 * 1024
    greeting = b"+OK/MTQP fake.invalid MTQP server ready\r\n"

    factory: FakeServerFactory
    # A subclass's pending clock call (DripServer, EndlessBodyServer): cancelled
    # when the connection goes.
    _call: Any = None

    def connectionMade(self) -> None:
        self.factory.connection_made(self)
        if self.greeting:
            self.transport.write(self.greeting)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.factory.connection_lost(self)

    def lineReceived(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"TRACK":
            self.factory.tracks += 1
            self.track(line)
        elif verb == b"QUIT":
            self.transport.write(b"+OK Goodbye\r\n")
            self.transport.loseConnection()
        elif verb == b"STARTTLS":
            self.transport.write(b"-ERR/unsupported TLS is not available\r\n")
        else:
            self.transport.write(b"-BAD/unknown-command Unknown command\r\n")

    def track(self, line: bytes) -> None:
        raise NotImplementedError

    @property
    def clock(self) -> Any:
        return self.factory.clock


class CannedServer(FakeMTQPServer):
    """Answers every TRACK with ``factory.options["response"]`` (default: L{canned_answer})."""

    def track(self, line: bytes) -> None:
        self.transport.write(self.factory.options.get("response") or canned_answer())


class SilentServer(FakeMTQPServer):
    """Accepts the connection and never says anything."""

    greeting = b""

    def track(self, line: bytes) -> None:
        pass


class HangServer(FakeMTQPServer):
    """Greets, then never answers a TRACK."""

    def track(self, line: bytes) -> None:
        pass


class DripServer(FakeMTQPServer):
    """A valid answer, one byte per tick of ``options["interval"]`` seconds (default 0.1)."""

    def track(self, line: bytes) -> None:
        self._pending = self.factory.options.get("response") or canned_answer()
        self._drip()

    def _drip(self) -> None:
        self._call = None
        if not self._pending:
            return
        byte, self._pending = self._pending[:1], self._pending[1:]
        self.transport.write(byte)
        self.factory.octets_sent += 1
        self._call = self.clock.callLater(self.factory.options.get("interval", 0.1), self._drip)


class GarbageServer(FakeMTQPServer):
    """Replies to TRACK with a line that is no MTQP status."""

    def track(self, line: bytes) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\x00\xff\xfe garbage\r\n")


class GarbageGreetingServer(FakeMTQPServer):
    """Greets with something that is not MTQP (an SMTP banner)."""

    greeting = b"220 smtp.fake.invalid ESMTP ready\r\n"

    def track(self, line: bytes) -> None:
        self.transport.write(b"500 what?\r\n")


class CloseEarlyServer(FakeMTQPServer):
    """Closes the connection instead of answering (after ``options["partial"]`` bytes, if any)."""

    def track(self, line: bytes) -> None:
        partial = self.factory.options.get("partial", 0)
        if partial:
            self.transport.write(canned_answer()[:partial])
        self.transport.loseConnection()


@implementer(interfaces.IPushProducer)
class EndlessBodyServer(FakeMTQPServer):
    """``+OK+`` and then data lines forever, as fast as the client reads them.

    A push producer, so the server's own memory stays flat: it writes a chunk
    per reactor turn while the transport wants more, and stops when paused.
    Subclasses change ``HEAD``, ``CHUNK`` and ``TOTAL`` (octets in all; None:
    no end) and may hook ``streaming_started``.
    """

    HEAD = (
        b"+OK+ Tracking information follows\r\n"
        b'Content-Type: multipart/related; boundary="b"; type="message/tracking-status"\r\n'
        b"\r\n--b\r\nContent-Type: message/tracking-status\r\n\r\n"
    )
    CHUNK = (b"X-Filler: " + b"x" * 80 + b"\r\n") * 512
    TOTAL: int | None = None
    _paused = False
    _stopped = False

    def track(self, line: bytes) -> None:
        self.transport.write(self.HEAD)
        self.transport.registerProducer(self, True)
        self.streaming_started()
        self._pump()

    def streaming_started(self) -> None:
        """Called once the head is written and streaming begins."""

    def _pump(self) -> None:
        self._call = None
        if self._paused or self._stopped:
            return
        if self.TOTAL is not None and self.factory.octets_sent >= self.TOTAL:
            return
        self.transport.write(self.CHUNK)
        self.factory.octets_sent += len(self.CHUNK)
        self._call = self.clock.callLater(0, self._pump)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._call is None:
            self._pump()

    def stopProducing(self) -> None:
        self._stopped = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stopped = True
        super().connectionLost(reason)


class LongLineServer(FakeMTQPServer):
    """``+OK+`` followed by data lines of 1,000 octets (the limit is 998 before CRLF)."""

    def track(self, line: bytes) -> None:
        self.transport.write(b"+OK+ Tracking information follows\r\n")
        self.transport.write((b"Y" * 1000 + b"\r\n") * 4 + b".\r\n")


class ResetServer(FakeMTQPServer):
    """Half a well-formed answer, then a TCP reset (RST, not FIN)."""

    def track(self, line: bytes) -> None:
        response = canned_answer()
        self.transport.write(response[: len(response) // 2])
        # SO_LINGER with a zero timeout makes close() send RST; the half
        # answer may or may not reach the peer first, as in real life.
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if handle is not None:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()


class FakeServerFactory(Factory):
    """Builds one kind of fake server and keeps count of what happened to it."""

    def __init__(self, protocol: type[FakeMTQPServer], clock: Any = None, **options: Any) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.protocol = protocol
        self.clock = clock
        self.options = options
        self.connections = 0  # ever made
        self.lost = 0  # ever lost
        self.tracks = 0
        self.octets_sent = 0
        self.live: set[FakeMTQPServer] = set()
        self._all_gone: Waiters[None] = Waiters()

    def connection_made(self, proto: FakeMTQPServer) -> None:
        self.connections += 1
        self.live.add(proto)

    def connection_lost(self, proto: FakeMTQPServer) -> None:
        self.lost += 1
        self.live.discard(proto)
        if not self.live:
            self._all_gone.fire(None)

    def when_all_closed(self) -> defer.Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        if not self.live:
            return defer.succeed(None)
        return self._all_gone.wait()

    def close_all(self) -> defer.Deferred[None]:
        """Abort every open connection; fires when they are all gone."""
        done = self.when_all_closed()
        for proto in list(self.live):
            proto.transport.abortConnection()
        return done
