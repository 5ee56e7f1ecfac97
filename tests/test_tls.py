# -*- test-case-name: tests.test_tls -*-
"""Tests for mtqpgw.tls: certificate loading and selection, policy, and real TLS over loopback.

The loopback tests run the real server (mtqpgw.server) with real TLS on
127.0.0.1, with certificates made in-process by tests/certs.py: a test CA,
``mtqp.example.com``, ``mtqp.example.org``, and ``*.example.net`` served
through an intermediate CA.  Clients are a bare line client driven from the
test, mtqpgw.client, and the standard library's ``ssl`` (in a thread, with
blocking sockets and timeouts: nothing sleeps).
"""

from __future__ import annotations

import os
import socket
import ssl
import warnings
from collections import deque
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, endpoints, interfaces, reactor, threads
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from mtqpgw import client, pool, wire
from mtqpgw.interfaces import IServerTLS
from mtqpgw.server import MTQPServer, MTQPServerFactory, ServerLimits
from mtqpgw.status import Action, Answer, Outcome, RecipientStatus, TrackingStatus
from mtqpgw.tls import (
    ServerTLS,
    TLSConfigError,
    client_context,
    client_tls_context,
    inner_tls_mode,
    load_ca_bundle,
    load_certificate,
    peer_certificate_sha256,
)
from mtqpgw.tofu import Observation, TofuCache, observation_from_info
from tests import certs

HOST = "mtqp.example.com"
ORG = "mtqp.example.org"
ENVID = "12345-20010101@example.com"
SECRET = "YWJjZGVmZ2gK"
TRACK = wire.track_line(ENVID, SECRET)


def found(reporting: str = HOST) -> Answer:
    return Answer.found(
        [
            TrackingStatus(
                original_envelope_id=ENVID,
                reporting_mta=f"dns; {reporting}",
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


def leaf_com() -> certs.CertFiles:
    return certs.issue([HOST], common_name="not-used.example.com")


def leaf_org() -> certs.CertFiles:
    return certs.issue([ORG, "tracking.example.org"])


def leaf_wild() -> certs.CertFiles:
    return certs.issue(["*.example.net"], via_intermediate=True)


def ca_path() -> str:
    return certs.default_ca().cert_path


def standard_tls(**kwargs: Any) -> ServerTLS:
    return ServerTLS.from_files([leaf_com().pair, leaf_org().pair, leaf_wild().pair], **kwargs)


# -- sans-I/O: loading, selection, policy ----------------------------------------


class LoadingTests(SynchronousTestCase):
    def test_names_come_from_subject_alt_name_only(self) -> None:
        tls = standard_tls()
        self.assertTrue(IServerTLS.providedBy(tls))
        self.assertEqual(
            tls.names, (HOST, ORG, "tracking.example.org", "*.example.net"), "CN is not a name"
        )
        self.assertIsNone(tls.context_for("not-used.example.com"))

    def test_invalid_wildcards_are_skipped(self) -> None:
        leaf = certs.issue(["*.com", "a.*.example.com", "*.*.example.com", "ok.example.com"])
        self.assertEqual(load_certificate(*leaf.pair).names, ("ok.example.com",))

    def test_chain_file_keeps_intermediates(self) -> None:
        served = load_certificate(*leaf_wild().pair)
        self.assertEqual(served.names, ("*.example.net",))
        self.assertEqual(len(served.options.extraCertChain), 1)

    def test_contexts_are_built_once(self) -> None:
        tls = standard_tls()
        context = tls.context_for(HOST)
        self.assertIs(context, tls.context_for("MTQP.example.COM."))
        self.assertIs(context.getContext(), context.getContext())

    def test_options(self) -> None:
        self.assertEqual(standard_tls().options(), ["STARTTLS"])
        self.assertEqual(standard_tls(required=True).options(), ["STARTTLS required"])
        self.assertEqual(standard_tls(required=["example.com"]).options(), ["STARTTLS required"])
        nothing = ServerTLS()
        self.assertFalse(nothing.offered)
        self.assertEqual(nothing.options(), [])
        self.assertIsNone(nothing.context_for(HOST))

    def test_from_config(self) -> None:
        entry = SimpleNamespace(cert=leaf_com().cert, key=leaf_com().key)
        config = SimpleNamespace(certificates=(leaf_org().pair, entry), required=("Example.COM.",))
        tls = ServerTLS.from_config(config)
        self.assertEqual(tls.names[0], ORG)
        self.assertEqual(tls.required, ("example.com",))
        self.assertFalse(ServerTLS.from_config(SimpleNamespace(certificates=())).offered)

    def test_from_config_names_the_key_for_the_daemon(self) -> None:
        from mtqpgw.config import ConfigError

        config = SimpleNamespace(certificates=(leaf_com().pair, (leaf_org().cert, "/nonexistent")))
        e = self.assertRaises(TLSConfigError, ServerTLS.from_config, config)
        self.assertIsInstance(e, ConfigError, "the daemon refuses ConfigErrors in one line")
        self.assertTrue(str(e).startswith("tls.certificates[1]: /nonexistent: "), str(e))

    def _refused(self, cert: str, key: str) -> str:
        e = self.assertRaises(TLSConfigError, load_certificate, cert, key)
        self.assertIsInstance(e, ValueError)
        self.assertNotIn("\n", str(e))
        return str(e)

    def test_bad_files_refused_with_one_line_naming_the_file(self) -> None:
        good = leaf_com()
        other = leaf_org()
        missing = os.path.join(self.mktemp(), "nowhere.pem")
        self.assertIn(missing, self._refused(missing, good.key))
        self.assertIn(missing, self._refused(good.cert, missing))
        garbage = self.mktemp()
        with open(garbage, "wb") as f:
            f.write(b"this is not a certificate\n")
        self.assertIn(garbage, self._refused(garbage, good.key))
        self.assertIn(garbage, self._refused(good.cert, garbage))
        message = self._refused(good.cert, other.key)
        self.assertIn(other.key, message)
        self.assertIn("does not belong", message)

    def test_encrypted_key_refused(self) -> None:
        from cryptography.hazmat.primitives import serialization

        with open(leaf_com().key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"hunter2"),
                )
            )
        self.assertIn("encrypted", self._refused(leaf_com().cert, path))

    def test_certificate_without_dns_names_refused(self) -> None:
        bare = certs.issue([], ip_addresses=["127.0.0.1"], common_name=HOST)
        self.assertIn("dNSName", self._refused(*bare.pair))

    def test_from_files_stops_at_first_bad_pair(self) -> None:
        self.assertRaises(
            TLSConfigError, ServerTLS.from_files, [leaf_com().pair, ("/nonexistent", "/x")]
        )

    def test_expired_certificate_loads_with_a_warning(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        tls = ServerTLS.from_files([certs.expired(["old.example.com"]).pair])
        self.assertTrue(tls.offered)
        self.assertTrue(any("expired" in e.get("log_format", "") for e in events))


class SelectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tls = standard_tls()

    def which(self, domain: str) -> str | None:
        served = self.tls.certificate_for(domain)
        return None if served is None else served.names[0]

    def test_exact_names_case_and_trailing_dot(self) -> None:
        self.assertEqual(self.which(HOST), HOST)
        self.assertEqual(self.which("MTQP.EXAMPLE.COM."), HOST)
        self.assertEqual(self.which("tracking.example.org"), ORG, "second name of a certificate")

    def test_wildcard_matches_one_leftmost_label(self) -> None:
        self.assertEqual(self.which("a.example.net"), "*.example.net")
        self.assertEqual(self.which("A.Example.Net."), "*.example.net")
        self.assertIsNone(self.which("example.net"))
        self.assertIsNone(self.which("a.b.example.net"))
        self.assertIsNone(self.which("xn--bcher-kva.example.net"), "service-identity: no IDNA")

    def test_no_match(self) -> None:
        for domain in ("other.example.com", "example.com", "", ".", "127.0.0.1", "a..b"):
            self.assertIsNone(self.which(domain), domain)

    def test_exact_name_wins_over_an_earlier_wildcard(self) -> None:
        special = certs.issue(["special.example.net"])
        tls = ServerTLS.from_files([leaf_wild().pair, special.pair])
        self.assertEqual(tls.certificate_for("special.example.net").names, special.names)
        self.assertEqual(tls.certificate_for("other.example.net").names, ("*.example.net",))

    def test_first_certificate_wins_a_duplicate_name(self) -> None:
        first, second = leaf_com(), certs.issue([HOST, "second.example.com"])
        tls = ServerTLS.from_files([first.pair, second.pair])
        self.assertEqual(tls.certificate_for(HOST).sha256, first.sha256)
        self.assertEqual(tls.certificate_for("second.example.com").sha256, second.sha256)


class RequiredTests(SynchronousTestCase):
    def test_false_and_true(self) -> None:
        self.assertFalse(ServerTLS(required=False).required_for(ENVID))
        self.assertTrue(ServerTLS(required=True).required_for(ENVID))
        self.assertTrue(ServerTLS(required=True).required_for("no-domain-at-all"))

    def test_domain_list(self) -> None:
        tls = ServerTLS(required=["Example.com", "secret.example.org."])
        self.assertTrue(tls.required_for("1@example.com"))
        self.assertTrue(tls.required_for("1@MAIL.Example.COM"))
        self.assertTrue(tls.required_for("a@b@x.secret.example.org."))
        self.assertFalse(tls.required_for("1@example.org"))
        self.assertFalse(tls.required_for("1@badexample.com"), "a suffix is not a subdomain")
        self.assertFalse(tls.required_for("no-domain"))
        self.assertFalse(ServerTLS(required=()).required_for("1@example.com"))


class _Handle:
    def __init__(self, version: str | None, bits: int | None) -> None:
        self.version, self.bits = version, bits

    def get_protocol_version_name(self) -> str | None:
        return self.version

    def get_cipher_bits(self) -> int | None:
        return self.bits


class SessionPolicyTests(SynchronousTestCase):
    def acceptable(self, version: str | None, bits: int | None, **kw: Any) -> bool:
        transport = SimpleNamespace(getHandle=lambda: _Handle(version, bits))
        return ServerTLS(**kw).session_acceptable(transport)

    def test_versions_and_bits(self) -> None:
        self.assertTrue(self.acceptable("TLSv1.3", 256))
        self.assertTrue(self.acceptable("TLSv1.2", 128))
        self.assertFalse(self.acceptable("TLSv1.1", 256))
        self.assertFalse(self.acceptable("TLSv1", 256))
        self.assertFalse(self.acceptable("TLSv1.2", 56))
        self.assertFalse(self.acceptable("TLSv1.2", None))
        self.assertFalse(self.acceptable("TLSv1.3", 256, min_cipher_bits=512))

    def test_not_a_tls_transport(self) -> None:
        def broken() -> Any:
            raise AttributeError("no TLS here")

        self.assertFalse(ServerTLS().session_acceptable(SimpleNamespace(getHandle=broken)))


class ClientContextTests(SynchronousTestCase):
    def test_modes(self) -> None:
        self.assertIsNone(client_context(HOST, None, "off"))
        self.assertIsNone(client_context(HOST, ca_path(), client.TLSMode.OFF))
        verifying = client_context(HOST, ca_path(), "required")
        self.assertTrue(interfaces.IOpenSSLClientConnectionCreator.providedBy(verifying))
        self.assertIs(verifying, client_context(HOST, ca_path(), client.TLSMode.REQUIRED))
        encrypt_only = client_context(HOST, None, "opportunistic")
        self.assertTrue(interfaces.IOpenSSLClientConnectionCreator.providedBy(encrypt_only))
        self.assertNotEqual(type(encrypt_only), type(verifying))
        self.assertEqual(
            type(client_context(HOST, ca_path(), "opportunistic")),
            type(verifying),
            "opportunistic with a cafile verifies",
        )
        self.assertRaises(ValueError, client_context, HOST, None, "sometimes")

    def test_inner_mode(self) -> None:
        self.assertEqual(inner_tls_mode("off", False), "off")
        self.assertEqual(inner_tls_mode("off", True), "opportunistic")
        self.assertEqual(inner_tls_mode("REQUIRED", True), "required")
        self.assertEqual(inner_tls_mode(client.TLSMode.OPPORTUNISTIC, False), "opportunistic")

    def test_context_for_inner(self) -> None:
        # The gateway's pool: the effective mode, then the context for it.
        def context_for_inner(inner: Any, secure: bool = False) -> Any:
            return pool.tls_context_for(inner, pool.effective_tls(inner, secure))

        inner = SimpleNamespace(name=HOST, tls="off", cafile=None)
        self.assertIsNone(context_for_inner(inner))
        self.assertIsNotNone(context_for_inner(inner, secure=True))
        required = SimpleNamespace(name=HOST, tls="required", cafile=ca_path())
        self.assertIsNotNone(context_for_inner(required))

    def test_ca_bundle(self) -> None:
        bundle = self.mktemp()
        with open(bundle, "wb") as f:
            for path in (ca_path(), certs.new_authority().cert_path):
                with open(path, "rb") as one:
                    f.write(one.read())
        self.assertEqual(len(load_ca_bundle(bundle)), 2)
        self.assertRaises(TLSConfigError, load_ca_bundle, leaf_com().key)
        self.assertRaises(TLSConfigError, client_tls_context, HOST, "/nonexistent/ca.pem", True)


# -- loopback helpers --------------------------------------------------------------


class FakeTracker:
    """An ITracker that answers at once and remembers what it was asked."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer if answer is not None else found()
        self.calls: list[tuple[str, str, bool]] = []

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        self.calls.append((envid, secret, secure))
        return defer.succeed(self.answer)


class LaterTracker(FakeTracker):
    """Answers on the next reactor turn, so a TRACK is really in flight for a while."""

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        self.calls.append((envid, secret, secure))
        d: defer.Deferred[Answer] = defer.Deferred()
        reactor.callLater(0, d.callback, self.answer)
        return d


class _WatchedServer(MTQPServer):
    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.factory.lost.append(reason)
        self.gone.callback(None)


class _WatchedFactory(MTQPServerFactory):
    """The real server factory, plus a Deferred per connection that fires when it ends."""

    protocol = _WatchedServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gone: list[defer.Deferred[None]] = []
        self.lost: list[Failure | None] = []

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        proto.gone = defer.Deferred()
        self.gone.append(proto.gone)
        return proto


class ConnectionClosed(Exception):
    pass


@implementer(interfaces.IHandshakeListener)
class LineClient(LineReceiver):
    """A bare MTQP client the test drives line by line."""

    delimiter = b"\r\n"
    MAX_LENGTH = 100_000

    def __init__(self) -> None:
        self.parser = wire.ResponseParser()
        self.responses: deque[wire.Response] = deque()
        self.waiting: deque[defer.Deferred[wire.Response]] = deque()
        self.handshake: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.lost_reason: Failure | None = None
        self.connected_now = False

    def connectionMade(self) -> None:
        self.connected_now = True

    def lineReceived(self, line: bytes) -> None:
        response = self.parser.feed(line)
        if response is None:
            return
        if self.waiting:
            self.waiting.popleft().callback(response)
        else:
            self.responses.append(response)

    def next_response(self) -> defer.Deferred[wire.Response]:
        if self.responses:
            return defer.succeed(self.responses.popleft())
        if not self.connected_now:
            return defer.fail(ConnectionClosed())
        d: defer.Deferred[wire.Response] = defer.Deferred()
        self.waiting.append(d)
        return d

    def ask(self, data: bytes) -> defer.Deferred[wire.Response]:
        self.transport.write(data)
        return self.next_response()

    def start_tls(self, context: Any) -> defer.Deferred[None]:
        self.clearLineBuffer()
        self.parser = wire.ResponseParser()
        self.transport.startTLS(context)
        return self.handshake

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected_now = False
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.errback(ConnectionClosed())
        if not self.handshake.called:
            self.handshake.errback(reason or Failure(ConnectionClosed()))
            self.handshake.addErrback(lambda _: None)
        self.lost_reason = reason
        self.lost.callback(None)


def is_response(response: wire.Response, indicator: wire.Indicator, *reasons: str) -> bool:
    return response.indicator is indicator and all(response.has_reason(r) for r in reasons)


class LoopbackCase(TestCase):
    """Real servers on 127.0.0.1; every connection is closed and waited for at the end."""

    timeout = 30

    def setUp(self) -> None:
        self.ports: list[Any] = []
        self.factories: list[_WatchedFactory] = []
        self.line_clients: list[LineClient] = []
        self.mtqp_clients: list[client.MTQPClientProtocol] = []
        self.pools: list[Any] = []
        self.addCleanup(self._tidy)

    @defer.inlineCallbacks
    def _tidy(self) -> Any:
        for session_pool in self.pools:
            yield session_pool.close()
        waits = []
        for proto in self.line_clients:
            if proto.connected_now:
                proto.transport.abortConnection()
            waits.append(proto.lost)
        for mtqp in self.mtqp_clients:
            if mtqp.transport is not None and not mtqp.closed.called:
                mtqp.transport.abortConnection()
            waits.append(mtqp.closed)
        for factory in self.factories:
            waits.extend(factory.gone)
        yield defer.gatherResults(waits)
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def serve(
        self,
        tls: ServerTLS | None,
        tracker: FakeTracker | None = None,
        hostname: str = HOST,
    ) -> tuple[int, _WatchedFactory]:
        factory = _WatchedFactory(
            tracker or FakeTracker(), ServerLimits(hostname=hostname), tls=tls
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        self.factories.append(factory)
        return port.getHost().port, factory

    def endpoint(self, port: int) -> endpoints.TCP4ClientEndpoint:
        return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)

    @defer.inlineCallbacks
    def open(self, port: int) -> Any:
        """Connect a L{LineClient}; returns ``(client, greeting)``."""
        proto = LineClient()
        self.line_clients.append(proto)
        yield endpoints.connectProtocol(self.endpoint(port), proto)
        greeting = yield proto.next_response()
        return proto, greeting

    @defer.inlineCallbacks
    def open_tls(self, port: int, name: str = HOST, cafile: str | None = None) -> Any:
        """Connect, STARTTLS ``name`` with a verifying client; returns ``(client, new greeting)``."""
        proto, _ = yield self.open(port)
        ok = yield proto.ask(wire.starttls_line(name))
        self.assertTrue(is_response(ok, wire.Indicator.OK), ok)
        yield proto.start_tls(client_tls_context(name, cafile or ca_path(), verify=True))
        greeting = yield proto.next_response()
        return proto, greeting

    @defer.inlineCallbacks
    def mtqp_connect(self, port: int, mode: str, name: str = HOST, context: Any = None) -> Any:
        """mtqpgw.client.connect; returns the ready L{client.MTQPClientProtocol}."""
        if context is None and mode != "off":
            context = client_context(name, ca_path(), mode)
        # A session that fails half-way is waited for through the server's side.
        proto = yield client.connect(reactor, self.endpoint(port), mode, name, context)
        self.mtqp_clients.append(proto)
        return proto


# -- the server over real TLS --------------------------------------------------------


class ServerSTARTTLSTests(LoopbackCase):
    @defer.inlineCallbacks
    def test_greeting_offers_starttls(self) -> Any:
        port, _ = self.serve(standard_tls())
        _, greeting = yield self.open(port)
        self.assertEqual(greeting.indicator, wire.Indicator.OK_MULTI)
        self.assertEqual(greeting.lines, (b"STARTTLS",))
        port, _ = self.serve(standard_tls(required=["example.com"]))
        _, greeting = yield self.open(port)
        self.assertEqual(greeting.lines, (b"STARTTLS required",))

    @defer.inlineCallbacks
    def test_no_certificates_means_unsupported(self) -> Any:
        for tls in (None, ServerTLS()):
            port, _ = self.serve(tls)
            proto, greeting = yield self.open(port)
            self.assertEqual(greeting.indicator, wire.Indicator.OK, "no options listed")
            answer = yield proto.ask(wire.starttls_line(HOST))
            self.assertTrue(is_response(answer, wire.Indicator.ERR, "unsupported"), answer)
            answer = yield proto.ask(b"COMMENT still here\r\n")
            self.assertTrue(answer.is_positive)

    @defer.inlineCallbacks
    def test_certificate_selected_by_fqdn(self) -> Any:
        """One server, three domains: each STARTTLS gets the certificate naming it.

        The client verifies chain and name against the test CA; the wildcard
        certificate comes through an intermediate, so that also shows the
        chain file is served whole.
        """
        port, _ = self.serve(standard_tls())
        cases = [
            (HOST, leaf_com()),
            ("MTQP.Example.ORG.", leaf_org()),
            ("tracking.example.org", leaf_org()),
            ("a.example.net", leaf_wild()),
        ]
        for name, expected in cases:
            verify_name = name.rstrip(".").lower()
            proto, _ = yield self.open(port)
            ok = yield proto.ask(wire.starttls_line(name))
            self.assertTrue(is_response(ok, wire.Indicator.OK), ok)
            yield proto.start_tls(client_tls_context(verify_name, ca_path(), verify=True))
            greeting = yield proto.next_response()
            self.assertTrue(greeting.is_positive)
            self.assertEqual(peer_certificate_sha256(proto.transport), expected.sha256, name)

    @defer.inlineCallbacks
    def test_bad_fqdn(self) -> Any:
        port, _ = self.serve(standard_tls())
        proto, _ = yield self.open(port)
        for name in ("other.example.com", "example.net", "a.b.example.net"):
            answer = yield proto.ask(wire.starttls_line(name))
            self.assertTrue(is_response(answer, wire.Indicator.BAD, "bad-fqdn"), (name, answer))
        answer = yield proto.ask(TRACK)
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI, "the session goes on")

    @defer.inlineCallbacks
    def test_session_starts_over_after_tls(self) -> Any:
        """New greeting without STARTTLS; STARTTLS again is -BAD/tls-in-progress; TRACK is secure."""
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(), tracker)
        proto, greeting = yield self.open_tls(port)
        self.assertTrue(greeting.has_reason("MTQP"))
        self.assertEqual(greeting.indicator, wire.Indicator.OK, "no STARTTLS option after TLS")
        answer = yield proto.ask(wire.starttls_line(HOST))
        self.assertTrue(is_response(answer, wire.Indicator.BAD, "tls-in-progress"), answer)
        answer = yield proto.ask(TRACK)
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI)
        self.assertEqual(tracker.calls, [(ENVID, SECRET, True)])
        bye = yield proto.ask(wire.QUIT_LINE)
        self.assertEqual(bye.indicator, wire.Indicator.OK)

    @defer.inlineCallbacks
    def test_commands_pipelined_after_starttls_are_discarded(self) -> Any:
        """STARTTLS and TRACK in one write: the TRACK sent in the clear is never run.

        The command-injection class of CVE-2011-0411: an attacker appends a
        command after the client's STARTTLS; executed after the handshake it
        would pass as the protected client's.
        """
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(), tracker)
        proto, _ = yield self.open(port)
        proto.transport.write(wire.starttls_line(HOST) + TRACK + b"COMMENT injected\r\n")
        ok = yield proto.next_response()
        self.assertTrue(is_response(ok, wire.Indicator.OK), ok)
        yield proto.start_tls(client_tls_context(HOST, ca_path(), verify=True))
        greeting = yield proto.next_response()
        self.assertTrue(greeting.has_reason("MTQP"), "the next thing is the fresh greeting")
        answer = yield proto.ask(b"COMMENT first inside TLS\r\n")
        self.assertEqual(answer.indicator, wire.Indicator.OK)
        self.assertEqual(tracker.calls, [], "the injected TRACK was not executed")
        self.assertEqual(len(proto.responses), 0)

    @defer.inlineCallbacks
    def test_starttls_behind_a_track_in_flight(self) -> Any:
        """TRACK, STARTTLS, TRACK in one write while the first TRACK is still being answered.

        The first is answered in the clear, then STARTTLS; the third, sent
        in the clear after STARTTLS, is dropped.
        """
        tracker = LaterTracker()
        port, _ = self.serve(standard_tls(), tracker)
        proto, _ = yield self.open(port)
        third = wire.track_line("third@example.com", SECRET)
        proto.transport.write(TRACK + wire.starttls_line(HOST) + third)
        first = yield proto.next_response()
        self.assertEqual(first.indicator, wire.Indicator.OK_MULTI)
        ok = yield proto.next_response()
        self.assertTrue(is_response(ok, wire.Indicator.OK), ok)
        yield proto.start_tls(client_tls_context(HOST, ca_path(), verify=True))
        greeting = yield proto.next_response()
        self.assertTrue(greeting.has_reason("MTQP"))
        answer = yield proto.ask(b"COMMENT inside\r\n")
        self.assertEqual(answer.indicator, wire.Indicator.OK)
        self.assertEqual([c[0] for c in tracker.calls], [ENVID])

    @defer.inlineCallbacks
    def test_refused_starttls_lets_the_rest_of_the_group_run(self) -> Any:
        """When STARTTLS is refused nothing changes, so what followed is an ordinary command."""
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(), tracker)
        proto, _ = yield self.open(port)
        proto.transport.write(wire.starttls_line("other.example.com") + TRACK)
        refused = yield proto.next_response()
        self.assertTrue(is_response(refused, wire.Indicator.BAD, "bad-fqdn"))
        answer = yield proto.next_response()
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI)
        self.assertEqual(tracker.calls, [(ENVID, SECRET, False)])

    @defer.inlineCallbacks
    def test_tls_required_for_every_message(self) -> Any:
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(required=True), tracker)
        proto, _ = yield self.open(port)
        answer = yield proto.ask(TRACK)
        self.assertTrue(is_response(answer, wire.Indicator.ERR, "tls-required"), answer)
        self.assertEqual(tracker.calls, [], "the tracker is not even asked")
        proto, _ = yield self.open_tls(port)
        answer = yield proto.ask(TRACK)
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI)

    @defer.inlineCallbacks
    def test_tls_required_for_listed_domains(self) -> Any:
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(required=["example.com"]), tracker)
        proto, _ = yield self.open(port)
        answer = yield proto.ask(wire.track_line("1@mail.example.com", SECRET))
        self.assertTrue(is_response(answer, wire.Indicator.ERR, "tls-required"), answer)
        answer = yield proto.ask(wire.track_line("1@example.org", SECRET))
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI)
        self.assertEqual(tracker.calls, [("1@example.org", SECRET, False)])

    @defer.inlineCallbacks
    def test_session_below_policy_is_insecure(self) -> Any:
        """A negotiated session below policy: -ERR/insecure for all but QUIT (RFC 3887 6.1)."""
        tracker = FakeTracker()
        strict = ServerTLS.from_files([leaf_com().pair])
        strict.min_cipher_bits = 100_000
        port, _ = self.serve(strict, tracker)
        proto, greeting = yield self.open_tls(port)
        self.assertTrue(greeting.is_positive)
        for command in (TRACK, b"COMMENT hello\r\n", wire.starttls_line(HOST)):
            answer = yield proto.ask(command)
            self.assertTrue(is_response(answer, wire.Indicator.ERR, "insecure"), answer)
        self.assertEqual(tracker.calls, [])
        bye = yield proto.ask(wire.QUIT_LINE)
        self.assertEqual(bye.indicator, wire.Indicator.OK)

    @defer.inlineCallbacks
    def test_failed_handshakes_close_only_that_connection(self) -> Any:
        port, factory = self.serve(standard_tls())
        # 1: plain text where the ClientHello should be.
        proto, _ = yield self.open(port)
        ok = yield proto.ask(wire.starttls_line(HOST))
        self.assertTrue(ok.is_positive)
        proto.transport.write(b"TRACK <x@example.com> YWJj\r\n" * 20)
        yield proto.lost
        # 2: a client that does not trust the certificate and aborts.
        proto, _ = yield self.open(port)
        yield proto.ask(wire.starttls_line(HOST))
        rogue_ca = certs.new_authority("Rogue CA").cert_path
        yield self.assertFailure(
            proto.start_tls(client_tls_context(HOST, rogue_ca, verify=True)), Exception
        )
        yield proto.lost
        # The server is unharmed: a good session works, and nothing leaked.
        proto, _ = yield self.open_tls(port)
        answer = yield proto.ask(TRACK)
        self.assertEqual(answer.indicator, wire.Indicator.OK_MULTI)
        self.assertEqual(factory.connections, 1)


# -- the standard library's ssl as the client -------------------------------------------


class _BlockingLines:
    """Blocking line reading for a client thread (socket timeouts bound every wait)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def response(self) -> wire.Response:
        parser = wire.ResponseParser()
        while True:
            response = parser.feed(self.line())
            if response is not None:
                return response


def stdlib_session(
    port: int, name: str, context: ssl.SSLContext, commands: tuple[bytes, ...] = ()
) -> dict[str, Any]:
    """Runs in a thread: greeting, STARTTLS ``name``, handshake, then ``commands``.

    Returns what happened; an ``ssl.SSLError`` during the handshake is
    returned under ``"handshake_error"``.
    """
    result: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        plain = _BlockingLines(sock)
        result["greeting"] = plain.response()
        sock.sendall(wire.starttls_line(name))
        result["starttls"] = plain.response()
        result["pending_before_handshake"] = plain.buffer
        try:
            tls = context.wrap_socket(sock, server_hostname=name)
        except ssl.SSLError as e:
            result["handshake_error"] = e
            return result
        with tls:
            result["version"] = tls.version()
            result["cipher"] = tls.cipher()
            lines = _BlockingLines(tls)  # type: ignore[arg-type]
            result["tls_greeting"] = lines.response()
            result["answers"] = []
            for command in commands:
                tls.sendall(command)
                result["answers"].append(lines.response())
    return result


class StdlibClientTests(LoopbackCase):
    """An independent TLS client (CPython's ssl module) against the server."""

    def verifying_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=ca_path())
        self.assertTrue(context.check_hostname)
        return context

    @defer.inlineCallbacks
    def test_full_session_through_a_wildcard_and_an_intermediate(self) -> Any:
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(), tracker)
        result = yield threads.deferToThread(
            stdlib_session,
            port,
            "mtqp-1.example.net",
            self.verifying_context(),
            (TRACK, wire.starttls_line(HOST), wire.QUIT_LINE),
        )
        self.assertEqual(result["greeting"].lines, (b"STARTTLS",))
        self.assertTrue(is_response(result["starttls"], wire.Indicator.OK))
        self.assertEqual(result["pending_before_handshake"], b"")
        self.assertIn(result["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertGreaterEqual(result["cipher"][2], 128)
        self.assertEqual(result["tls_greeting"].indicator, wire.Indicator.OK, "no STARTTLS now")
        track, again, bye = result["answers"]
        self.assertEqual(track.indicator, wire.Indicator.OK_MULTI)
        self.assertIn(b"Original-Envelope-Id: " + ENVID.encode(), track.lines)
        self.assertTrue(is_response(again, wire.Indicator.BAD, "tls-in-progress"))
        self.assertEqual(bye.indicator, wire.Indicator.OK)
        self.assertEqual(tracker.calls, [(ENVID, SECRET, True)])

    @defer.inlineCallbacks
    def test_tls_1_2_accepted(self) -> Any:
        port, _ = self.serve(standard_tls())
        context = self.verifying_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        result = yield threads.deferToThread(stdlib_session, port, HOST, context, (TRACK,))
        self.assertEqual(result["version"], "TLSv1.2")
        self.assertEqual(result["answers"][0].indicator, wire.Indicator.OK_MULTI)

    @defer.inlineCallbacks
    def test_tls_1_0_and_1_1_refused(self) -> Any:
        """RFC 8996: a client that offers only TLS 1.1 (or 1.0) gets a protocol_version alert.

        The client is made willing (security level 0, so this OpenSSL does
        not refuse old versions itself).  If it still will not even send its
        ClientHello, there is nothing to show here: skip with that reason.
        """
        old = {"TLSv1.1": "TLSv1_1", "TLSv1.0": "TLSv1"}
        for label, attribute in old.items():
            port, factory = self.serve(standard_tls())
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            try:
                with warnings.catch_warnings():
                    # ssl.TLSVersion.TLSv1_1 warns on use; using it is the point.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    version = getattr(ssl.TLSVersion, attribute)
                    context.minimum_version = context.maximum_version = version
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
            except (ValueError, ssl.SSLError) as e:
                raise SkipTest(f"this Python's ssl cannot be set to {label}: {e}") from None
            result = yield threads.deferToThread(stdlib_session, port, HOST, context)
            error = result.get("handshake_error")
            self.assertIsNotNone(error, f"{label} handshake succeeded: {result.get('version')}")
            reason = getattr(error, "reason", None) or ""
            if not reason.startswith(("TLSV1_ALERT", "SSLV3_ALERT")):
                raise SkipTest(
                    f"the local OpenSSL ({ssl.OPENSSL_VERSION}) refused to try {label} "
                    f"itself ({reason or error}), so the server's refusal cannot be shown"
                )
            self.assertEqual(reason, "TLSV1_ALERT_PROTOCOL_VERSION", label)
            yield factory.gone[0]
            (lost,) = factory.lost
            self.assertIsNotNone(lost, "the server ended the connection because of TLS")
            # And the server is fine afterwards.
            proto, greeting = yield self.open_tls(port)
            self.assertTrue(greeting.is_positive)


# -- mtqpgw.client over real TLS, and the gateway towards inner hosts --------------------


@implementer(interfaces.IHandshakeListener)
class _InjectingServer(LineReceiver):
    """A hostile MTQP server: its +OK to STARTTLS carries a forged response behind it."""

    delimiter = b"\r\n"

    def __init__(self, context: Any) -> None:
        self.context = context
        self.gone: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(wire.greeting("evil.example.com", ["STARTTLS"]).to_bytes())

    def lineReceived(self, line: bytes) -> None:
        if line.upper().startswith(b"STARTTLS"):
            # One write: the answer and, before any TLS byte, a forged
            # answer to the TRACK the client will send inside TLS.
            self.transport.write(
                b"+OK Begin TLS negotiation\r\n-ERR/noinfo Forged before the handshake\r\n"
            )
            self.transport.startTLS(self.context)
        elif line.upper().startswith(b"TRACK"):
            self.transport.write(
                wire.Response(wire.Indicator.TEMP, ("genuine",), "Answered inside TLS").to_bytes()
            )
        elif line.upper().startswith(b"QUIT"):
            self.transport.write(b"+OK Bye\r\n")
            self.transport.loseConnection()

    def handshakeCompleted(self) -> None:
        self.transport.write(wire.greeting("evil.example.com").to_bytes())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone.callback(None)


class ClientTLSTests(LoopbackCase):
    @defer.inlineCallbacks
    def test_required_and_verified(self) -> Any:
        tracker = FakeTracker()
        port, _ = self.serve(standard_tls(), tracker)
        proto = yield self.mtqp_connect(port, "required")
        self.assertTrue(proto.info.tls)
        self.assertTrue(proto.info.starttls_offered_before_tls)
        self.assertEqual(proto.info.options, {}, "options learnt in the clear are forgotten")
        self.assertEqual(observation_from_info(proto.info), Observation(True, leaf_com().sha256))
        answer = yield proto.track(ENVID, SECRET)
        self.assertEqual(answer.outcome, Outcome.OK)
        self.assertEqual(tracker.calls, [(ENVID, SECRET, True)])
        yield proto.quit()

    @defer.inlineCallbacks
    def test_required_refuses_an_untrusted_certificate(self) -> Any:
        rogue = certs.new_authority("Rogue CA").issue([HOST])
        tracker = FakeTracker()
        port, factory = self.serve(ServerTLS.from_files([rogue.pair]), tracker)
        failure = yield self.assertFailure(
            self.mtqp_connect(port, "required"), client.TLSRequiredError
        )
        self.assertEqual(str(failure), "the TLS handshake failed: certificate verify failed")
        self.assertEqual(tracker.calls, [], "nothing was asked")
        yield factory.gone[0]

    @defer.inlineCallbacks
    def test_required_refuses_a_certificate_for_another_name(self) -> Any:
        """Chain fine, name wrong: service-identity's check fails the handshake."""
        port, _ = self.serve(standard_tls())
        context = client_context("other.example.com", ca_path(), "required")
        failure = yield self.assertFailure(
            self.mtqp_connect(port, "required", HOST, context), client.TLSRequiredError
        )
        self.assertIn("the TLS handshake failed", str(failure))
        self.assertIn("mismatch", str(failure).lower(), "service-identity's name check")

    @defer.inlineCallbacks
    def test_required_without_starttls_offered(self) -> Any:
        port, _ = self.serve(None)
        yield self.assertFailure(self.mtqp_connect(port, "required"), client.TLSRequiredError)

    @defer.inlineCallbacks
    def test_opportunistic_encrypts_without_verifying(self) -> Any:
        rogue = certs.new_authority("Self-made CA").issue([HOST])
        port, _ = self.serve(ServerTLS.from_files([rogue.pair]))
        context = client_context(HOST, None, "opportunistic")
        proto = yield self.mtqp_connect(port, "opportunistic", HOST, context)
        self.assertTrue(proto.info.tls)
        self.assertEqual(observation_from_info(proto.info).cert_sha256, rogue.sha256)
        yield proto.quit()

    @defer.inlineCallbacks
    def test_opportunistic_goes_on_in_the_clear_when_refused(self) -> Any:
        port, _ = self.serve(standard_tls())
        name = "unknown.example.com"
        proto = yield self.mtqp_connect(
            port, "opportunistic", name, client_context(name, None, "opportunistic")
        )
        self.assertFalse(proto.info.tls)
        answer = yield proto.track(ENVID, SECRET)
        self.assertEqual(answer.outcome, Outcome.OK)
        yield proto.quit()

    @defer.inlineCallbacks
    def test_bytes_between_starttls_answer_and_handshake_are_discarded(self) -> Any:
        served = load_certificate(*certs.issue(["evil.example.com"]).pair)
        servers: list[_InjectingServer] = []

        def build() -> _InjectingServer:
            servers.append(_InjectingServer(served.options))
            return servers[-1]

        listening = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
        self.ports.append(listening)
        port = listening.getHost().port
        context = client_context("evil.example.com", ca_path(), "required")
        proto = yield self.mtqp_connect(port, "required", "evil.example.com", context)
        self.assertTrue(proto.info.tls)
        answer = yield proto.track(ENVID, SECRET)
        self.assertEqual(answer.reasons, ("genuine",), "the forged -ERR was not taken")
        yield proto.quit()
        yield servers[0].gone


class TofuTests(LoopbackCase):
    """Section 11's alarms from real sessions: the same server name, three different servers."""

    @defer.inlineCallbacks
    def observe(self, cache: TofuCache, port: int) -> Any:
        context = client_context(HOST, None, "opportunistic")
        proto = yield self.mtqp_connect(port, "opportunistic", HOST, context)
        seen = observation_from_info(proto.info)
        yield proto.quit()
        return cache.observe(HOST, 1038, seen)

    @defer.inlineCallbacks
    def test_stripped_starttls_and_changed_certificate_alarm(self) -> Any:
        cache = TofuCache(os.path.join(self.mktemp(), "servers.json"))
        genuine, _ = self.serve(standard_tls())
        impostor, _ = self.serve(
            ServerTLS.from_files([certs.new_authority("Impostor CA").issue([HOST]).pair])
        )
        stripped, _ = self.serve(None)

        self.assertEqual((yield self.observe(cache, genuine)), [], "first use")
        self.assertEqual((yield self.observe(cache, genuine)), [], "same again")
        warnings = yield self.observe(cache, impostor)
        self.assertIn("different TLS certificate", warnings[0])
        warnings = yield self.observe(cache, stripped)
        self.assertIn("STARTTLS", warnings[0])
        self.assertEqual(
            cache.get(HOST, 1038), Observation(True, leaf_com().sha256), "alarms change nothing"
        )


class GatewayTLSTests(LoopbackCase):
    """The chaining gateway (mtqpgw.chain) talking STARTTLS to a real inner server."""

    INNER = "inner.corp.example.com"

    def gateway(self, inner: Any) -> Any:
        from mtqpgw.chain import ChainingTracker
        from mtqpgw.config import ChainConfig
        from mtqpgw.rewrite import Rewriter

        chain = ChainConfig(deadline=20, fanout=True, inner=(inner,))
        tracker = ChainingTracker(
            FakeTracker(Answer.noinfo()), chain, Rewriter(), "gw.example.com", reactor
        )
        self.pools.append(tracker.pool)
        return tracker

    def inner_host(self, port: int, tls: str, cafile: str | None) -> Any:
        from mtqpgw.config import InnerHost

        return InnerHost(self.INNER, "127.0.0.1", port, tls, cafile)

    def serve_inner(self, authority: certs.Authority | None = None) -> tuple[int, FakeTracker]:
        leaf = (authority or certs.default_ca()).issue([self.INNER])
        tracker = FakeTracker(found(self.INNER))
        port, _ = self.serve(ServerTLS.from_files([leaf.pair]), tracker, hostname=self.INNER)
        return port, tracker

    @defer.inlineCallbacks
    def test_required_with_a_verified_certificate(self) -> Any:
        port, inner = self.serve_inner()
        gateway = self.gateway(self.inner_host(port, "required", ca_path()))
        answer = yield gateway.track(ENVID, SECRET)
        self.assertEqual(answer.outcome, Outcome.OK)
        self.assertEqual([p.reporting_mta for p in answer.parts], [f"dns; {self.INNER}"])
        self.assertEqual(inner.calls, [(ENVID, SECRET, True)], "the inner session was TLS")

    @defer.inlineCallbacks
    def test_required_with_a_wrong_certificate_costs_that_host_only(self) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port, inner = self.serve_inner(certs.new_authority("Rogue CA"))
        gateway = self.gateway(self.inner_host(port, "required", ca_path()))
        answer = yield gateway.track(ENVID, SECRET)
        # Nothing local, and the only host that might know could not be
        # asked safely: "try again later", not a misleading noinfo.
        self.assertEqual(answer.outcome, Outcome.TEMP)
        self.assertEqual(answer.reasons, ("unavailable",))
        self.assertEqual(inner.calls, [], "the secret never reached the impostor")
        (failed,) = [e for e in events if e.get("host") == self.INNER and "error" in e]
        self.assertIn("certificate", failed["error"].lower(), "logged with the TLS reason")
        self.assertNotIn(SECRET, formatEvent(failed))

    @defer.inlineCallbacks
    def test_secure_client_gets_tls_towards_an_inner_host_that_offers_it(self) -> Any:
        port, inner = self.serve_inner()
        gateway = self.gateway(self.inner_host(port, "off", None))
        yield gateway.track(ENVID, SECRET, secure=False)
        yield gateway.track(ENVID, SECRET, secure=True)
        self.assertEqual([c[2] for c in inner.calls], [False, True])


def old_tls_server(listener: socket.socket, context: ssl.SSLContext, sessions: int) -> list[str]:
    """Runs in a thread: an MTQP server whose TLS stops at 1.1; what each handshake gave."""
    outcomes = []
    for _ in range(sessions):
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(wire.greeting("old.example.com", ["STARTTLS"]).to_bytes())
            _BlockingLines(conn).line()
            conn.sendall(b"+OK Begin TLS negotiation\r\n")
            try:
                tls = context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                outcomes.append(f"refused {getattr(e, 'reason', None) or e}")
                continue
            with tls:
                outcomes.append(str(tls.version()))
                tls.sendall(wire.greeting("old.example.com").to_bytes())
    return outcomes


class ClientMinimumVersionTests(LoopbackCase):
    @defer.inlineCallbacks
    def test_client_contexts_refuse_a_tls_1_1_server(self) -> Any:
        """Both client contexts (verifying, encrypt-only) insist on TLS 1.2 or later.

        A stdlib server limited to TLS 1.1 first shows, with a stdlib TLS 1.1
        client, that this machine can speak 1.1 at all; then mtqpgw's clients
        must fail against it.
        """
        name = "old.example.com"
        leaf = certs.issue([name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old = ssl.TLSVersion.TLSv1_1
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(leaf.cert, leaf.key)
        peer_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        peer_context.check_hostname = False
        peer_context.verify_mode = ssl.CERT_NONE
        try:
            for context in (server_context, peer_context):
                context.minimum_version = context.maximum_version = old
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError) as e:
            raise SkipTest(f"this Python's ssl cannot be limited to TLS 1.1: {e}") from None
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        serving = threads.deferToThread(old_tls_server, listener, server_context, 3)

        control = yield threads.deferToThread(stdlib_session, port, name, peer_context)
        for context in (
            client_context(name, ca_path(), "required"),
            client_context(name, None, "opportunistic"),
        ):
            yield self.assertFailure(
                client.connect(reactor, self.endpoint(port), "required", name, context),
                client.ClientError,
            )
        outcomes = yield serving
        if "handshake_error" in control:
            raise SkipTest(f"the local OpenSSL cannot speak TLS 1.1: {control['handshake_error']}")
        self.assertEqual(outcomes[0], "TLSv1.1", "the control handshake")
        for outcome in outcomes[1:]:
            self.assertTrue(outcome.startswith("refused"), outcomes)
