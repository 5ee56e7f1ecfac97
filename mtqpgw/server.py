# -*- test-case-name: tests.test_server -*-
"""The MTQP server protocol: greeting, commands, pipelining, limits and timers.

A thin Twisted shell: lines are parsed by L{mtqpgw.wire}, answers come from an
L{ITracker} and are rendered by L{mtqpgw.report}.  Commands are answered
strictly in the order received with one in flight at a time (RFC 3887 section
8); a client that floods commands or does not read its answers is stopped by
pausing the transport, so nothing it sends grows memory without bound.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from typing import Any

from twisted.internet import defer, interfaces
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mtqpgw import wire
from mtqpgw.config import ServerConfig
from mtqpgw.interfaces import IServerTLS, ITracker
from mtqpgw.logtext import literal
from mtqpgw.report import response_for_answer
from mtqpgw.status import Action, Answer, Outcome
from mtqpgw.throttle import FailureThrottle

__all__ = ["MTQPServer", "MTQPServerFactory", "ServerLimits", "is_failed_lookup"]

log = Logger()

# How many parsed commands may wait behind the one in flight before reading
# from the socket stops; reading resumes once the queue is half drained.
QUEUE_HIGH = 64
QUEUE_LOW = QUEUE_HIGH // 2

# Seconds a connection the server closed may take to flush its last answers
# before it is aborted: a client that does not read would otherwise hold it,
# and its place under max_connections, for ever.
CLOSE_GRACE = 30.0


# The protocol reads its limits straight from the validated [server] section;
# tests build one with only the fields they care about.
ServerLimits = ServerConfig


def is_failed_lookup(answer: Answer) -> bool:
    """Whether a TRACK found nothing: noinfo, or the opaque stand-in answer."""
    if answer.outcome is Outcome.NOINFO:
        return True
    if answer.outcome is Outcome.OK:
        blocks = [r for part in answer.parts for r in part.recipients]
        return bool(blocks) and all(r.action is Action.OPAQUE for r in blocks)
    return False


class _State(enum.Enum):
    READY = "ready"
    TLS_STARTING = "tls-starting"  # +OK sent to STARTTLS; waiting for the handshake
    INSECURE = "insecure"  # TLS ended below policy: everything but QUIT is refused
    CLOSING = "closing"


def _response(indicator: wire.Indicator, reasons: tuple[str, ...], text: str) -> bytes:
    return wire.Response(indicator, reasons, text).to_bytes()


_TRACKING_UNAVAILABLE = wire.Response(
    wire.Indicator.TEMP, ("unavailable",), "Tracking temporarily unavailable"
).to_bytes()


def _no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a TCP transport (others are left alone).

    Answers are written one by one as the store returns them, not in one
    write per batch of pipelined commands.  With Nagle on, every answer after
    the first of a pipelined group waits for the client to acknowledge the
    one before, and a client waiting for the whole group delays that ACK
    (40 ms on Linux): 4-deep pipelining ran at under 1,000 TRACK/s.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except OSError:
        pass  # the connection is already gone; connectionLost follows


@implementer(interfaces.IPushProducer)
class _WriteBackPressure:
    """Registered with the transport: a full send buffer pauses command processing."""

    def __init__(self, protocol: MTQPServer) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol._pause("write")

    def resumeProducing(self) -> None:
        self.protocol._unpause("write")

    def stopProducing(self) -> None:
        self.protocol._pause("write")


@implementer(interfaces.IHandshakeListener)
class MTQPServer(LineReceiver, TimeoutMixin):
    """One MTQP session with one client."""

    delimiter = b"\r\n"
    MAX_LENGTH = wire.MAX_LINE

    factory: MTQPServerFactory

    def __init__(self) -> None:
        self._state = _State.READY
        self._queue: deque[wire.Command | wire.CommandError] = deque()
        self._in_flight: defer.Deferred[Any] | None = None
        self._pause_reasons: set[str] = set()
        self._discarding = False  # inside an over-long line, until its CRLF
        self._discard_tail = b""
        self._refeed = False
        self._counted = False
        self._tls_active = False
        self._commands = 0
        self._bad_commands = 0
        self._lifetime_call: Any = None
        self._abort_call: Any = None
        self._producer: _WriteBackPressure | None = None
        self.peer_host = "?"

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self.callLater = self.factory.clock.callLater
        _no_delay(self.transport)
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", "?")
        # Parsed once: the throttle is consulted several times per TRACK.
        self.throttle_client = self.factory.throttle.client(self.peer_host)
        refusal = self.factory.admit(self)
        if refusal is not None:
            self._close_with(refusal)
            return
        self._counted = True
        self._producer = _WriteBackPressure(self)
        self.transport.registerProducer(self._producer, True)
        self.setTimeout(self.factory.limits.idle_timeout)
        self._lifetime_call = self.callLater(
            self.factory.limits.max_connection_time, self._lifetime_exceeded
        )
        self._send_greeting()
        if self.factory.admin_down:
            self._state = _State.CLOSING
            self._lose_connection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stop_timers()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self._state = _State.CLOSING
        self._queue.clear()
        if self._in_flight is not None:
            d, self._in_flight = self._in_flight, None
            d.cancel()
        if self._counted:
            self._counted = False
            self.factory.release(self)

    def _send_greeting(self) -> None:
        options = [] if self._tls_active else self.factory.tls_options()
        greeting = wire.greeting(
            self.factory.limits.hostname, options, admin_down=self.factory.admin_down
        )
        self.transport.write(greeting.to_bytes())

    def _stop_timers(self) -> None:
        self.setTimeout(None)
        if self._lifetime_call is not None and self._lifetime_call.active():
            self._lifetime_call.cancel()
        self._lifetime_call = None

    def _close_with(self, line: bytes) -> None:
        if self._state is _State.CLOSING:
            return  # one closing line per session, not one per timer
        self._state = _State.CLOSING
        self._queue.clear()
        self.transport.write(line)
        self._lose_connection()

    def _lose_connection(self) -> None:
        self._stop_timers()
        # Twisted keeps a TCP connection open after loseConnection for as
        # long as a producer is registered, so ours goes first.
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        log.info(
            "Aborting the connection from {peer}: it did not read its last answers",
            peer=self.peer_host,
        )
        self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        log.info(
            "Autologout of {peer} after {idle}s idle",
            peer=self.peer_host,
            idle=self.factory.limits.idle_timeout,
        )
        self._close_with(
            _response(wire.Indicator.TEMP, ("timeout",), "Idle for too long, closing (autologout)")
        )

    def _lifetime_exceeded(self) -> None:
        self._lifetime_call = None
        self._close_with(
            _response(wire.Indicator.TEMP, ("timeout",), "Connection time limit reached, closing")
        )

    # -- reading ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state in (_State.CLOSING, _State.TLS_STARTING):
            # After +OK to STARTTLS nothing but the handshake may follow in
            # the clear; startTLS routes the handshake past this method.
            return
        if self._discarding:
            data = self._skip_rest_of_long_line(data)
            if self._discarding:
                return
        super().dataReceived(data)
        while self._refeed and not self.paused and self._state in (_State.READY, _State.INSECURE):
            self._refeed = False
            super().dataReceived(b"")

    def _skip_rest_of_long_line(self, data: bytes) -> bytes:
        joined = self._discard_tail + data
        head, sep, rest = joined.partition(self.delimiter)
        if not sep:
            self._discard_tail = joined[-1:]
            return b""
        self._discarding = False
        self._discard_tail = b""
        return rest

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted's default drops the connection; RFC 3887 wants -BAD and a
        # usable session.  ``line`` is the long line plus whatever followed.
        self.resetTimeout()
        _, sep, rest = line.partition(self.delimiter)
        if sep:
            self._buffer = rest + self._buffer
            self._refeed = True
        else:
            self._discarding = True
            self._discard_tail = line[-1:]
        self._enqueue(
            wire.CommandError(
                wire.Response(
                    wire.Indicator.BAD, ("line-too-long",), "Command line longer than 998 octets"
                )
            )
        )

    def lineReceived(self, line: bytes) -> None:
        if self._state is not _State.READY and self._state is not _State.INSECURE:
            return
        self.resetTimeout()
        try:
            item: wire.Command | wire.CommandError = wire.parse_command(line)
        except wire.CommandError as e:
            item = e
        if isinstance(item, wire.StartTLS) and not self._tls_active:
            # STARTTLS ends a pipelined group (RFC 3887 section 8): read
            # nothing more until it is answered, so that, if it is accepted,
            # what followed in the clear is discarded, never executed.
            # Inside TLS it is always refused (and, in the insecure state,
            # answered without reaching _starttls, which would unpause).
            self._pause("starttls")
        self._enqueue(item)

    def _enqueue(self, item: wire.Command | wire.CommandError) -> None:
        self._queue.append(item)
        if len(self._queue) >= QUEUE_HIGH:
            self._pause("flood")
        self._process()

    # -- flow control ----------------------------------------------------

    def _pause(self, reason: str) -> None:
        first = not self._pause_reasons
        self._pause_reasons.add(reason)
        if first and self.transport is not None and self._state is not _State.CLOSING:
            self.paused = True
            self.transport.pauseProducing()

    def _unpause(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if self._pause_reasons or self._state is _State.CLOSING:
            return
        self.paused = False
        self.transport.resumeProducing()
        self._process()
        if not self.paused and self._state in (_State.READY, _State.INSECURE):
            self.dataReceived(b"")

    @property
    def queued(self) -> int:
        """Commands waiting behind the one in flight (for tests and metrics)."""
        return len(self._queue)

    # -- processing --------------------------------------------------------

    def _process(self) -> None:
        while (
            self._queue
            and self._in_flight is None
            and self._state in (_State.READY, _State.INSECURE)
            and "write" not in self._pause_reasons
        ):
            item = self._queue.popleft()
            self._dispatch(item)
        if "flood" in self._pause_reasons and len(self._queue) <= QUEUE_LOW:
            self._unpause("flood")

    def _write(self, data: bytes) -> None:
        if self._state is not _State.CLOSING:
            self.transport.write(data)

    def _dispatch(self, item: wire.Command | wire.CommandError) -> None:
        if isinstance(item, wire.CommandError):
            self._bad_commands += 1
            if self._bad_commands > self.factory.limits.max_bad_commands:
                self._close_with(
                    _response(wire.Indicator.ERR, ("limit",), "Too many bad commands, closing")
                )
                return
            self._write(item.response.to_bytes())
            return
        if isinstance(item, wire.Quit):
            # RFC 3887 section 7: QUIT MUST get a successful answer, limits or not.
            self._close_with(_response(wire.Indicator.OK, (), "Goodbye"))
            return
        self._commands += 1
        if self._commands > self.factory.limits.max_commands:
            self._close_with(
                _response(
                    wire.Indicator.ERR, ("limit",), "Too many commands on one connection, closing"
                )
            )
            return
        if self._state is _State.INSECURE:
            self._write(
                _response(
                    wire.Indicator.ERR,
                    ("insecure",),
                    "TLS session is below this server's policy; only QUIT",
                )
            )
            return
        if isinstance(item, wire.Comment):
            self._write(_response(wire.Indicator.OK, (), "Comment noted"))
        elif isinstance(item, wire.StartTLS):
            self._starttls(item)
        elif isinstance(item, wire.Track):
            self._track(item)

    def _starttls(self, command: wire.StartTLS) -> None:
        tls = self.factory.tls
        context = None
        if self._tls_active:
            reply = _response(wire.Indicator.BAD, ("tls-in-progress",), "TLS is already active")
        elif tls is None or not tls.offered:
            reply = _response(wire.Indicator.ERR, ("unsupported",), "TLS is not available")
        else:
            context = tls.context_for(command.domain)
            reply = (
                _response(wire.Indicator.BAD, ("bad-fqdn",), "No certificate for that name")
                if context is None
                else _response(wire.Indicator.OK, (), "Begin TLS negotiation")
            )
        self._write(reply)
        if context is None:
            self._unpause("starttls")
            return
        # Everything the client sent after STARTTLS in the clear is dropped
        # (CVE-2011-0411 class): the queue and LineReceiver's buffer.
        self._queue.clear()
        self.clearLineBuffer()
        self._discarding = False
        self._state = _State.TLS_STARTING
        self.transport.startTLS(context)
        self._pause_reasons.discard("starttls")
        if not self._pause_reasons:
            self.paused = False
            self.transport.resumeProducing()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is up; the session starts over (RFC 3887 6.2)."""
        if self._state is not _State.TLS_STARTING:
            return
        self._tls_active = True
        self._commands = 0
        self._bad_commands = 0
        self.clearLineBuffer()
        tls = self.factory.tls
        acceptable = tls is None or tls.session_acceptable(self.transport)
        self._state = _State.READY if acceptable else _State.INSECURE
        self.resetTimeout()
        self._send_greeting()

    def _track(self, command: wire.Track) -> None:
        factory = self.factory
        if factory.admin_down:
            self._write(
                _response(
                    wire.Indicator.TEMP,
                    ("admin",),
                    "Service down for administration, call back later",
                )
            )
            return
        now = factory.clock.seconds()
        if factory.throttle.blocked(self.throttle_client, now):
            # One log line when an address crosses the limit (below), not one
            # per refused guess: refusals must not flood the log.
            log.debug("TRACK from {peer} refused: too many failed TRACKs", peer=self.peer_host)
            self._write(
                _response(
                    wire.Indicator.TEMP,
                    ("unavailable",),
                    "Too many failed TRACK commands from your address; try again later",
                )
            )
            return
        tls = factory.tls
        if not self._tls_active and tls is not None and tls.required_for(command.envid):
            self._write(
                _response(
                    wire.Indicator.ERR,
                    ("tls-required",),
                    "Use STARTTLS before tracking this message",
                )
            )
            return
        factory.throttle.started(self.throttle_client)
        started = time.monotonic()
        try:
            d = defer.maybeDeferred(
                factory.tracker.track, command.envid, command.secret, secure=self._tls_active
            )
        except Exception:  # maybeDeferred catches; this is belt and braces
            d = defer.fail()
        self._in_flight = d
        d.addCallback(self._answer_ready, command.envid, started)
        d.addErrback(self._track_failed, command.envid)
        d.addBoth(self._track_done, d)

    def _answer_ready(self, answer: Answer, envid: str, started: float) -> None:
        self._throttle_finished(failed=is_failed_lookup(answer))
        peer, outcome, duration = self.peer_host, answer.outcome.value, time.monotonic() - started
        log.info(
            literal(f"TRACK {envid} from {peer}: {outcome} in {duration:.3f}s"),
            envid=envid,
            peer=peer,
            outcome=outcome,
            duration=duration,
        )
        self._write(response_for_answer(answer).to_bytes())

    def _track_failed(self, failure: Failure, envid: str) -> None:
        if failure.check(defer.CancelledError) and self._state is _State.CLOSING:
            # The client left mid-TRACK: it counts as a failed guess, or
            # hanging up before the answer would be a free one.
            self._throttle_finished(failed=True)
            return
        self._throttle_finished(failed=False)  # our failure, not a wrong guess
        log.failure("TRACK {envid} from {peer} failed", failure, envid=envid, peer=self.peer_host)
        self._write(_TRACKING_UNAVAILABLE)

    def _throttle_finished(self, failed: bool) -> None:
        throttle, now = self.factory.throttle, self.factory.clock.seconds()
        if not failed:
            # Nothing recorded, so the count cannot cross the limit: no
            # counting before and after for every TRACK that found something.
            throttle.finished(self.throttle_client, now, False)
            return
        before = throttle.failures(self.throttle_client, now)
        throttle.finished(self.throttle_client, now, True)
        if throttle.failures(self.throttle_client, now) >= throttle.limit > before:
            # One line when an address crosses the limit, not one per guess.
            log.warn(
                "Throttling TRACKs from {peer}: {n} failed within {window:g}s",
                peer=self.peer_host,
                n=throttle.limit,
                window=throttle.window,
            )

    def _track_done(self, _: object, d: defer.Deferred[Any]) -> None:
        if self._in_flight is d:
            self._in_flight = None
            self.resetTimeout()
            self._process()


class MTQPServerFactory(ServerFactory):
    """Shared state of all sessions: limits, counters, the tracker and TLS policy."""

    protocol = MTQPServer

    def __init__(
        self,
        tracker: ITracker,
        limits: ServerLimits | None = None,
        tls: IServerTLS | None = None,
        clock: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.tracker = tracker
        self.limits = limits or ServerLimits()
        self.tls = tls
        self.clock = clock
        self.admin_down = False
        self.connections = 0
        self.per_address: dict[str, int] = {}
        self._refused_since_log = 0
        self._refusal_log_after = 0.0
        self.throttle = FailureThrottle(
            self.limits.max_failed_tracks,
            self.limits.failed_track_window,
            self.limits.throttle_exempt,
        )

    def tls_options(self) -> list[str]:
        return self.tls.options() if self.tls is not None and self.tls.offered else []

    def admit(self, proto: MTQPServer) -> bytes | None:
        """Count a new connection, or return the line that refuses it."""
        limits = self.limits
        host = proto.peer_host
        if self.connections >= limits.max_connections:
            self._note_refusal(host, "the server is full")
            return _response(
                wire.Indicator.TEMP,
                ("MTQP", "unavailable"),
                "Too many connections, try again later",
            )
        key = proto.throttle_client.key  # IPv6 per /64, like the throttle
        if self.per_address.get(key, 0) >= limits.max_connections_per_address:
            self._note_refusal(host, "too many connections from that address")
            return _response(
                wire.Indicator.TEMP,
                ("MTQP", "unavailable"),
                "Too many connections from your address, try again later",
            )
        self.connections += 1
        self.per_address[key] = self.per_address.get(key, 0) + 1
        return None

    def _note_refusal(self, host: str, why: str) -> None:
        # A flood of connections must not become a flood of log lines: one
        # warning, then at most one a minute with the count in between.
        now = self.clock.seconds()
        self._refused_since_log += 1
        if now < self._refusal_log_after:
            return
        log.warn(
            "Refused {count} connection(s) in the last minute; latest {peer}: {why}",
            count=self._refused_since_log,
            peer=host,
            why=why,
        )
        self._refused_since_log = 0
        self._refusal_log_after = now + 60.0

    def release(self, proto: MTQPServer) -> None:
        self.connections -= 1
        key = proto.throttle_client.key
        left = self.per_address.get(key, 1) - 1
        if left > 0:
            self.per_address[key] = left
        else:
            self.per_address.pop(key, None)
