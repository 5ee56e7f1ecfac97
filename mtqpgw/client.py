# -*- test-case-name: tests.test_client -*-
"""The MTQP client protocol, shared by the gateway and the ``mtqp`` command.

Three lines to ask a server::

    from twisted.internet import endpoints, reactor
    endpoint = endpoints.HostnameEndpoint(reactor, "mtqp.example.com", 1038)
    d = track(reactor, endpoint, "12345-20010101@example.com", "YWJjZGVmZ2gK")

It reads and checks the greeting, negotiates STARTTLS when asked to, issues
TRACK and parses the answer with the core codec.  Everything it accepts is
capped (line length, lines and octets per response, time), and cancelling the
Deferred closes the connection.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mtqpgw import wire
from mtqpgw.report import answer_from_response
from mtqpgw.status import Answer

__all__ = [
    "ClientError",
    "MTQPClientProtocol",
    "ServerInfo",
    "TLSMode",
    "TLSRequiredError",
    "UnexpectedGreeting",
    "connect",
    "track",
]

log = Logger()

DEFAULT_TIMEOUT = 150.0  # RFC 3887 section 2.5: a client waits at least 2 minutes
DEFAULT_MAX_OCTETS = 8 * 1024 * 1024
DEFAULT_MAX_LINES = 100_000


class TLSMode(enum.Enum):
    OFF = "off"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


class ClientError(Exception):
    """The server could not be asked: the message says why, in one sentence."""


class UnexpectedGreeting(ClientError):
    """The server's greeting was negative or not MTQP."""

    def __init__(self, message: str, response: wire.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


class TLSRequiredError(ClientError):
    """TLS was required but the server did not offer it, or it failed."""


@dataclass
class ServerInfo:
    """What the client learnt of the server in this session (after TLS, only what came after)."""

    greeting: wire.Response
    options: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    starttls_offered_before_tls: bool = False
    peer_certificate: Any = None


class _Phase(enum.Enum):
    GREETING = "greeting"
    STARTTLS = "starttls"  # STARTTLS sent, waiting for its answer
    HANDSHAKE = "handshake"  # +OK received; TLS negotiating
    READY = "ready"
    CLOSED = "closed"


@implementer(interfaces.IHandshakeListener)
class MTQPClientProtocol(protocol.Protocol):
    """One client session: greeting, optional STARTTLS, then any number of commands.

    ``ready`` fires with L{ServerInfo} once the session can take commands.
    ``track()`` may be called many times (answers come in order), so a pool
    can keep one session for many queries.
    """

    def __init__(
        self,
        tls_mode: TLSMode | str = TLSMode.OFF,
        tls_name: str | None = None,
        tls_context: Any = None,
        max_lines: int = DEFAULT_MAX_LINES,
        max_octets: int = DEFAULT_MAX_OCTETS,
    ) -> None:
        self.tls_mode = TLSMode(tls_mode)
        self.tls_name = tls_name
        self.tls_context = tls_context
        if self.tls_mode is not TLSMode.OFF and (tls_name is None or tls_context is None):
            raise ValueError("TLS needs the server's name and a client context")
        self._max_lines, self._max_octets = max_lines, max_octets
        self._new_parser()
        self._phase = _Phase.GREETING
        self._waiting: deque[defer.Deferred[wire.Response]] = deque()
        self.ready: defer.Deferred[ServerInfo] = defer.Deferred(self._cancel_ready)
        self.info: ServerInfo | None = None
        self._offered_before_tls = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    # -- connection --------------------------------------------------------

    def connectionLost(self, reason: Failure | None = None) -> None:
        during_handshake = self._phase is _Phase.HANDSHAKE
        self._phase = _Phase.CLOSED
        why = ClientError("the server closed the connection")
        if reason is not None and not reason.check(error.ConnectionDone):
            why = ClientError(f"the connection was lost: {reason.getErrorMessage()}")
        if during_handshake:
            # Say what failed (a certificate that does not verify, an old
            # protocol version); with TLS required that is TLSRequiredError.
            kind = TLSRequiredError if self.tls_mode is TLSMode.REQUIRED else ClientError
            why = kind(f"the TLS handshake failed: {_handshake_problem(reason)}")
        self._fail_all(why)
        if not self.closed.called:
            self.closed.callback(None)

    def _fail_all(self, exc: Exception) -> None:
        # A cancelled Deferred has already fired; the rest learn why we stopped.
        if not self.ready.called:
            self.ready.errback(exc)
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            if not d.called:
                d.errback(exc)

    def _abort(self, exc: Exception) -> None:
        self._fail_all(exc)
        self._phase = _Phase.CLOSED
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancel_ready(self, _: defer.Deferred[Any]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    # -- lines -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # The parser cuts whole responses out of the buffer (a line longer
        # than 998 octets is refused there, as soon as it is seen).
        if self._phase in (_Phase.HANDSHAKE, _Phase.CLOSED):
            return
        parser = self._parser
        parser.receive(data)
        while True:
            try:
                response = parser.next_response()
            except wire.ResponseError as e:
                self._abort(ClientError(f"the server sent a malformed response: {e}"))
                return
            if response is None:
                return
            self._response(response)
            # After STARTTLS's +OK the rest is not ours (a new parser has
            # taken over); after an abort nothing is; and once the session is
            # being closed (quit() from an answer's callback), what follows
            # in the same read is not read, as LineReceiver did not.
            if (
                self._phase in (_Phase.HANDSHAKE, _Phase.CLOSED)
                or self._parser is not parser
                or self.transport.disconnecting
            ):
                return

    def _response(self, response: wire.Response) -> None:
        if self._phase is _Phase.GREETING:
            self._greeting(response)
        elif self._phase is _Phase.STARTTLS:
            self._starttls_answer(response)
        elif self._waiting:
            self._waiting.popleft().callback(response)
        else:
            self._abort(ClientError("the server sent a response nobody asked for"))

    def _greeting(self, response: wire.Response) -> None:
        if not response.is_positive:
            reason = "/".join(response.reasons) or "no reason"
            self._abort(
                UnexpectedGreeting(
                    f"the server is not available ({reason}): {response.text}", response
                )
            )
            return
        if not response.has_reason("MTQP"):
            self._abort(UnexpectedGreeting("the server's greeting is not MTQP", response))
            return
        tls_now = interfaces.ISSLTransport.providedBy(self.transport)
        options = wire.parse_options(response.lines or ())
        self.info = ServerInfo(
            greeting=response,
            options=options,
            tls=tls_now,
            starttls_offered_before_tls=self._offered_before_tls,
        )
        offered = wire.starttls_offered(options)
        if tls_now:
            if offered:
                # RFC 3887 6.2: the list after TLS MUST NOT offer STARTTLS again.
                log.warn("Server offered STARTTLS again inside TLS; ignoring it")
            self.info.peer_certificate = self._peer_certificate()
        elif self.tls_mode is not TLSMode.OFF and offered:
            self._offered_before_tls = True
            try:
                line = wire.starttls_line(self.tls_name)
            except ValueError:
                # STARTTLS must name an FQDN (RFC 3887 section 6); an IP
                # literal or a one-label name cannot be asked for.
                if self.tls_mode is TLSMode.REQUIRED:
                    self._abort(
                        TLSRequiredError(
                            f"cannot ask for TLS: {self.tls_name!r} is not a fully "
                            "qualified domain name"
                        )
                    )
                    return
                log.info(
                    "Not using STARTTLS with {name}: not a fully qualified domain name",
                    name=self.tls_name,
                )
            else:
                self._phase = _Phase.STARTTLS
                self.transport.write(line)
                return
        elif self.tls_mode is TLSMode.REQUIRED:
            self._abort(TLSRequiredError("the server does not offer STARTTLS"))
            return
        self._phase = _Phase.READY
        self.ready.callback(self.info)

    def _peer_certificate(self) -> Any:
        try:
            return self.transport.getPeerCertificate()
        except Exception:
            return None

    def _starttls_answer(self, response: wire.Response) -> None:
        if response.indicator is not wire.Indicator.OK:
            if self.tls_mode is TLSMode.REQUIRED:
                self._abort(
                    TLSRequiredError(f"the server refused STARTTLS: {response.text or 'no text'}")
                )
                return
            log.info("STARTTLS refused ({text}); continuing in the clear", text=response.text)
            self._phase = _Phase.READY
            self.ready.callback(self.info)
            return
        # Bytes the server sent after its +OK and before the handshake are
        # not part of the TLS session: drop them (response injection).
        self._new_parser()
        self._phase = _Phase.HANDSHAKE
        self.transport.startTLS(self.tls_context)

    def _new_parser(self) -> None:
        self._parser = wire.ResponseParser(max_lines=self._max_lines, max_octets=self._max_octets)

    def handshakeCompleted(self) -> None:
        if self._phase is not _Phase.HANDSHAKE:
            return
        # RFC 3887 6.2: forget what was learnt in the clear; a new greeting comes.
        self._new_parser()
        self.info = None
        self._phase = _Phase.GREETING

    # -- commands ----------------------------------------------------------

    def _send(self, line: bytes) -> defer.Deferred[wire.Response]:
        if self._phase is not _Phase.READY:
            return defer.fail(ClientError("the session is not ready for commands"))
        d: defer.Deferred[wire.Response] = defer.Deferred(self._cancel_ready)
        self._waiting.append(d)
        self.transport.write(line)
        return d

    def track(self, envid: str, secret: str) -> defer.Deferred[Answer]:
        """Send TRACK; fires with the L{Answer} (negative answers are Answers too)."""
        return self._send(wire.track_line(envid, secret)).addCallback(answer_from_response)

    def track_response(self, envid: str, secret: str) -> defer.Deferred[wire.Response]:
        """Send TRACK; fires with the raw L{wire.Response} (for ``--raw``)."""
        return self._send(wire.track_line(envid, secret))

    def quit(self) -> defer.Deferred[None]:
        """Send QUIT and close; fires when the connection is closed."""
        if self._phase is _Phase.READY:
            self.transport.write(wire.QUIT_LINE)
        if self.transport is not None and self._phase is not _Phase.CLOSED:
            self.transport.loseConnection()
        return self.closed

    @property
    def idle(self) -> bool:
        """Ready and with nothing outstanding: a pool may reuse it."""
        return self._phase is _Phase.READY and not self._waiting


def _handshake_problem(reason: Failure | None) -> str:
    if reason is None or reason.check(error.ConnectionDone):
        return "the server closed the connection"
    # pyOpenSSL's errors carry a list of (library, function, reason) triples.
    args = getattr(reason.value, "args", ())
    if args and isinstance(args[0], list):
        texts = [str(t[-1]) for t in args[0] if isinstance(t, tuple) and t and t[-1]]
        if texts:
            return "; ".join(texts)
    return reason.getErrorMessage()


def connect(
    reactor: Any,
    endpoint: interfaces.IStreamClientEndpoint,
    tls: TLSMode | str = TLSMode.OFF,
    tls_name: str | None = None,
    tls_context: Any = None,
    max_lines: int = DEFAULT_MAX_LINES,
    max_octets: int = DEFAULT_MAX_OCTETS,
) -> defer.Deferred[MTQPClientProtocol]:
    """Connect and wait for a session ready for commands; cancelling aborts it."""
    proto_holder: list[MTQPClientProtocol] = []

    def build() -> MTQPClientProtocol:
        proto = MTQPClientProtocol(tls, tls_name, tls_context, max_lines, max_octets)
        proto_holder.append(proto)
        return proto

    # A quiet one-shot factory: the gateway connects to inner hosts all the
    # time, and "Starting factory" twice per query is only noise in its log.
    factory = protocol.Factory.forProtocol(build)
    factory.noisy = False
    connecting = endpoint.connect(factory)

    def cancel(_: Any) -> None:
        connecting.cancel()
        for proto in proto_holder:
            if proto.transport is not None:
                proto.transport.abortConnection()

    result: defer.Deferred[MTQPClientProtocol] = defer.Deferred(cancel)

    def connected(proto: MTQPClientProtocol) -> Any:
        return proto.ready.addCallback(lambda _: proto)

    connecting.addCallback(connected)
    connecting.chainDeferred(result)
    return result


def track(
    reactor: Any,
    endpoint: interfaces.IStreamClientEndpoint,
    envid: str,
    secret: str,
    tls: TLSMode | str = TLSMode.OFF,
    tls_name: str | None = None,
    tls_context: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_lines: int = DEFAULT_MAX_LINES,
    max_octets: int = DEFAULT_MAX_OCTETS,
) -> defer.Deferred[Answer]:
    """Connect, TRACK once, QUIT: fires with the L{Answer}.

    Raises (through the Deferred) L{ClientError} for anything that is not an
    answer: refused, garbage, over-long lines, TLS required but absent.
    ``timeout`` bounds the whole exchange; cancelling closes the connection.
    """
    state: dict[str, MTQPClientProtocol] = {}

    def ask(proto: MTQPClientProtocol) -> defer.Deferred[Answer]:
        state["proto"] = proto
        return proto.track(envid, secret)

    def finish(result: Any) -> Any:
        proto = state.get("proto")
        if proto is not None:
            if isinstance(result, Failure):
                if proto.transport is not None:
                    proto.transport.abortConnection()
            else:
                proto.quit()
        return result

    d = connect(reactor, endpoint, tls, tls_name, tls_context, max_lines, max_octets)
    d.addCallback(ask)
    d.addBoth(finish)
    d.addTimeout(timeout, reactor, onTimeoutCancel=_timed_out)
    return d


def _timed_out(result: Any, timeout: float) -> Any:
    return Failure(ClientError(f"no answer within {timeout:g} seconds"))
