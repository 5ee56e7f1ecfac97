"""Integration tests of the chaining gateway over real loopback sockets.

A gateway (MTQPServerFactory + ChainingTracker + SessionPool) and three real
inner servers (this project's server, each with its own SQLite store) answer
real clients; around them sit the misbehaving fakes of tests/fakes.py.  The
seed examples are tests/seed.py's corrected models of examples 10, 11 and 12
(the corrections are listed there; the data is the seed's own, with an
expiry in the future so the store reports it).

These tests use the real reactor's clock, so the gateway's deadline is short
(DEADLINE, under 2 seconds) and no test sleeps: each waits for Deferreds.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.trial.unittest import TestCase

from mtqpgw import client
from mtqpgw.chain import ChainingTracker
from mtqpgw.config import ChainConfig, InnerHost, RewriteRule
from mtqpgw.pool import SessionPool
from mtqpgw.rewrite import Rewriter
from mtqpgw.server import MTQPServerFactory, ServerLimits
from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus
from mtqpgw.store import LocalTracker, SQLiteStore
from tests import fakes
from tests.seed import ENVID, EXAMPLES, SECRET_B64
from tests.test_chain import stored

DEADLINE = 1.5
# Scheduling slack on a loaded machine: the answer must come by DEADLINE + SLACK.
SLACK = 1.0
GATEWAY = "example2.com"
CHAIN_ENVID = "chain-2@example1.com"

# The misbehaving inner hosts: name -> fake server class (and options).
BAD_HOSTS: dict[str, tuple[type[fakes.FakeMTQPServer], dict[str, Any]]] = {
    "hang.corp.example.com": (fakes.HangServer, {}),
    "silent.corp.example.com": (fakes.SilentServer, {}),
    "drip.corp.example.com": (fakes.DripServer, {"interval": 0.05}),
    "garbage.corp.example.com": (fakes.GarbageServer, {}),
    "banner.corp.example.com": (fakes.GarbageGreetingServer, {}),
    "close.corp.example.com": (fakes.CloseEarlyServer, {"partial": 40}),
    "endless.corp.example.com": (fakes.EndlessBodyServer, {}),
    "longline.corp.example.com": (fakes.LongLineServer, {}),
    "reset.corp.example.com": (fakes.ResetServer, {}),
}


# An inner host whose port has nobody listening: connection refused.
REFUSED = "refused.corp.example.com"


def block(user: str, action: Action, remote: str | None = None) -> RecipientStatus:
    status = {Action.RELAYED: "2.1.9", Action.TRANSFERRED: "2.4.0"}.get(action, "2.5.0")
    return RecipientStatus(
        original_recipient=f"rfc822; {user}",
        final_recipient=f"rfc822; {user}",
        action=action,
        status=status,
        remote_mta=f"dns; {remote}" if remote else None,
    )


def chain_part(
    reporter: str, *blocks: RecipientStatus, envid: str = CHAIN_ENVID
) -> TrackingStatus:
    return TrackingStatus(
        original_envelope_id=envid,
        reporting_mta=f"dns; {reporter}",
        arrival_date="Mon, 30 Nov 2026 15:15:15 +0000",
        recipients=blocks,
    )


# The chained message: user a went gateway -> mx1 -> mx2 (depth 2); every
# other recipient went to one misbehaving host each.
GATEWAY_CHAIN_PART = chain_part(
    GATEWAY,
    block("a@example1.com", Action.RELAYED, "mx1.corp.example.com"),
    *(
        block(f"{name.split('.')[0]}@example1.com", Action.RELAYED, name)
        for name in [*sorted(BAD_HOSTS), REFUSED]
    ),
    block("z@example1.com", Action.RELAYED, "not-configured.example.net"),
)
MX1_CHAIN_PART = chain_part(
    "mx1.corp.example.com",
    block("a@example1.com", Action.TRANSFERRED, "mx2.corp.example.com"),
)
MX2_CHAIN_PART = chain_part("mx2.corp.example.com", block("a@example1.com", Action.DELIVERED))


class TrackedServerFactory(MTQPServerFactory):
    """The project's server factory, remembering its connections so a test can close them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made = 0
        self.live: set[Any] = set()
        self._waiting: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        self.made += 1
        self.live.add(proto)
        original = proto.connectionLost

        def lost(reason: Any = None) -> None:
            original(reason)
            self.live.discard(proto)
            if not self.live:
                waiting, self._waiting = self._waiting, []
                for d in waiting:
                    d.callback(None)

        proto.connectionLost = lost
        return proto

    def close_all(self) -> defer.Deferred[None]:
        if not self.live:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        for proto in list(self.live):
            proto.transport.abortConnection()
        return d


class RecordingPool(SessionPool):
    """The real pool, remembering every session it made so the test can wait for their end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[Any] = []

    def _connect(self, inner: Any, mode: str) -> defer.Deferred[Any]:
        d = super()._connect(inner, mode)

        def made(session: Any) -> Any:
            self.sessions.append(session)
            return session

        return d.addCallback(made)


class Harness:
    """Listening servers, stores and gateways of one test, and their orderly shutdown."""

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.ports: list[Any] = []
        self.stores: list[SQLiteStore] = []
        self.factories: list[Any] = []
        self.pools: list[RecordingPool] = []
        self.clients: list[client.MTQPClientProtocol] = []
        case.addCleanup(self.shutdown)

    async def store_with(self, *parts: TrackingStatus) -> SQLiteStore:
        store = SQLiteStore(":memory:", reactor=reactor)
        await store.start()
        self.stores.append(store)
        if parts:
            await store.upsert([stored(p) for p in parts])
        return store

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        self.factories.append(factory)
        return port.getHost().port

    async def inner_server(
        self, name: str, *parts: TrackingStatus, tls: Any = None
    ) -> tuple[InnerHost, TrackedServerFactory]:
        store = await self.store_with(*parts)
        factory = TrackedServerFactory(
            LocalTracker(store, name),
            # An inner host exempts its gateway from the failed-TRACK brake:
            # fan-out makes the gateway ask for messages it never saw.
            ServerLimits(hostname=name, throttle_exempt=("127.0.0.1",)),
            tls,
        )
        port = self.listen(factory)
        return InnerHost(name, "127.0.0.1", port, "off"), factory

    def fake_server(self, name: str) -> tuple[InnerHost, fakes.FakeServerFactory]:
        kind, options = BAD_HOSTS[name]
        factory = fakes.FakeServerFactory(kind, **options)
        port = self.listen(factory)
        return InnerHost(name, "127.0.0.1", port, "off"), factory

    async def gateway(
        self,
        inner: tuple[InnerHost, ...],
        *local_parts: TrackingStatus,
        report: str = "hops",
        rules: tuple[RewriteRule, ...] = (),
        deadline: float = DEADLINE,
        tls: Any = None,
    ) -> tuple[int, RecordingPool, TrackedServerFactory]:
        store = await self.store_with(*local_parts)
        pool = RecordingPool(reactor)
        self.pools.append(pool)
        chain = ChainConfig(deadline=deadline, report=report, fanout=True, inner=inner)
        tracker = ChainingTracker(
            LocalTracker(store, GATEWAY), chain, Rewriter(rules), GATEWAY, reactor, pool=pool
        )
        tracker.service.startService()
        factory = TrackedServerFactory(tracker, ServerLimits(hostname=GATEWAY), tls)
        return self.listen(factory), pool, factory

    async def ask(
        self, port: int, envid: str, secret: str = SECRET_B64, tls_context: Any = None
    ) -> Answer:
        """One outside client: connect, TRACK, QUIT, and wait until the connection is closed.

        With ``tls_context`` the client insists on STARTTLS towards the gateway.
        """
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        if tls_context is None:
            proto = await client.connect(reactor, endpoint)
        else:
            proto = await client.connect(reactor, endpoint, "required", GATEWAY, tls_context)
        self.clients.append(proto)
        try:
            return await proto.track(envid, secret)
        finally:
            await proto.quit()

    async def shutdown(self) -> None:
        for pool in self.pools:
            await pool.service.stopService()
        for proto in self.clients:
            if not proto.closed.called and proto.transport is not None:
                proto.transport.abortConnection()
            await proto.closed
        for factory in self.factories:
            await factory.close_all()
        for pool in self.pools:
            for session in pool.sessions:
                await session.closed
        for port in self.ports:
            await port.stopListening()
        for store in self.stores:
            await store.stop()


class SeedExampleTests(TestCase):
    """Seed examples 10, 11 and 12 through a real gateway and a real inner server."""

    timeout = 20

    async def setUp(self) -> None:
        self.net = Harness(self)
        local, inner = EXAMPLES[10].parts
        self.inner, self.inner_factory = await self.net.inner_server("smtp.example3.com", inner)
        self.local = local

    async def answer(self, **kwargs: Any) -> Answer:
        port, _, _ = await self.net.gateway((self.inner,), self.local, **kwargs)
        return await self.net.ask(port, ENVID)

    async def test_example_10_hops(self) -> None:
        self.assertEqual(await self.answer(report="hops"), EXAMPLES[10].answer)

    async def test_example_11_combined(self) -> None:
        self.assertEqual(await self.answer(report="combined"), EXAMPLES[11].answer)

    async def test_example_12_rewrite(self) -> None:
        rules = (
            RewriteRule("smtp.example3.com", "example2.com"),
            RewriteRule("example3.com", "example1.com", addresses=True),
        )
        self.assertEqual(await self.answer(report="hops", rules=rules), EXAMPLES[12].answer)

    async def test_sessions_are_reused(self) -> None:
        port, pool, _ = await self.net.gateway((self.inner,), self.local)
        for _ in range(5):
            self.assertEqual(await self.net.ask(port, ENVID), EXAMPLES[10].answer)
        self.assertEqual(self.inner_factory.made, 1, "one inner connection for five queries")
        self.assertEqual(pool.stats(self.inner)["idle"], 1)

    async def test_wrong_secret_answers_like_unknown(self) -> None:
        port, _, _ = await self.net.gateway((self.inner,), self.local)
        wrong = await self.net.ask(port, ENVID, "d3Jvbmc=")
        unknown = await self.net.ask(port, "nobody@example.com", "d3Jvbmc=")
        self.assertEqual(wrong, unknown)
        self.assertEqual(wrong, Answer.noinfo())


class MisbehavingInnerHostTests(TestCase):
    """Good hosts two deep and ten bad ones: the answer comes at the deadline with the good data."""

    timeout = 20

    async def setUp(self) -> None:
        self.net = Harness(self)
        mx1, _ = await self.net.inner_server("mx1.corp.example.com", MX1_CHAIN_PART)
        mx2, _ = await self.net.inner_server("mx2.corp.example.com", MX2_CHAIN_PART)
        smtp3, _ = await self.net.inner_server("smtp.example3.com", EXAMPLES[10].parts[1])
        self.bad = {name: self.net.fake_server(name) for name in sorted(BAD_HOSTS)}
        closed = reactor.listenTCP(
            0, fakes.FakeServerFactory(fakes.HangServer), interface="127.0.0.1"
        )
        refused = InnerHost(REFUSED, "127.0.0.1", closed.getHost().port, "off")
        await closed.stopListening()
        self.inner = (mx1, mx2, smtp3, refused, *(host for host, _ in self.bad.values()))
        self.port, self.pool, _ = await self.net.gateway(
            self.inner, GATEWAY_CHAIN_PART, EXAMPLES[10].parts[0]
        )

    async def test_answer_in_time_with_the_good_hosts_data(self) -> None:
        started = time.monotonic()
        answer = await self.net.ask(self.port, CHAIN_ENVID)
        elapsed = time.monotonic() - started
        self.assertEqual(
            answer, Answer.found([GATEWAY_CHAIN_PART, MX1_CHAIN_PART, MX2_CHAIN_PART])
        )
        # The hanging hosts held it to the deadline, and no longer.
        self.assertGreaterEqual(elapsed, DEADLINE * 0.9)
        self.assertLess(elapsed, DEADLINE + SLACK)
        for name, (_, factory) in self.bad.items():
            self.assertEqual(factory.connections, 1, f"{name} was asked once")
        # Every bad session was closed by the gateway, none kept for reuse.
        for name, (_, factory) in self.bad.items():
            await factory.when_all_closed()
            self.assertEqual(factory.lost, 1, name)
        for host in self.inner[3:]:
            self.assertEqual(self.pool.stats(host)["open"], 0, host.name)
        endless = self.bad["endless.corp.example.com"][1]
        self.assertLess(endless.octets_sent, 64 * 1024 * 1024, "the endless body was cut off")

    async def test_combined_keeps_gateway_blocks_for_bad_hosts(self) -> None:
        port, _, _ = await self.net.gateway(self.inner, GATEWAY_CHAIN_PART, report="combined")
        started = time.monotonic()
        (combined,) = (await self.net.ask(port, CHAIN_ENVID)).parts
        self.assertLess(time.monotonic() - started, DEADLINE + SLACK)
        self.assertEqual(combined.reporting_mta, f"dns; {GATEWAY}")
        # a@ from the deepest hop; every other recipient as the gateway has it.
        self.assertEqual(combined.recipients[0], MX2_CHAIN_PART.recipients[0])
        self.assertEqual(combined.recipients[1:], GATEWAY_CHAIN_PART.recipients[1:])

    async def test_other_clients_are_not_held_up(self) -> None:
        slow = defer.ensureDeferred(self.net.ask(self.port, CHAIN_ENVID))
        started = time.monotonic()
        quick = await self.net.ask(self.port, ENVID)
        self.assertLess(time.monotonic() - started, DEADLINE)
        self.assertEqual(quick, EXAMPLES[10].answer)
        self.assertNoResult(slow)
        answer = await slow
        self.assertEqual(len(answer.parts), 3)


class AnswerSizeTests(TestCase):
    """Review M5: an inner answer over the pool's 512 KiB cap costs that host, at once."""

    timeout = 20

    async def setUp(self) -> None:
        self.net = Harness(self)
        self.local = chain_part(
            GATEWAY, block("a@example1.com", Action.RELAYED, "big.corp.example.com")
        )

    def report(self, recipients: int, padding: int = 0) -> tuple[TrackingStatus, bytes]:
        from mtqpgw.report import response_for_answer

        blocks = tuple(
            RecipientStatus(
                original_recipient=f"rfc822; user{i:04d}@example1.com",
                final_recipient=f"rfc822; user{i:04d}@example1.com",
                action=Action.FAILED,
                status="5.1.1 (Mailbox unavailable)",
                diagnostic_code=f"smtp; 550 5.1.1 <user{i:04d}@example1.com>: Recipient "
                "address rejected: User unknown in local recipient table",
                last_attempt_date="Mon, 30 Nov 2026 19:15:03 -0500",
                extensions=(("X-Padding", "p" * padding),) if padding else (),
            )
            for i in range(recipients)
        )
        part = chain_part("big.corp.example.com", *blocks)
        return part, response_for_answer(Answer.found([part])).to_bytes()

    async def ask_big(self, recipients: int, padding: int = 0) -> tuple[Answer, float, int]:
        part, response = self.report(recipients, padding)
        factory = fakes.FakeServerFactory(fakes.CannedServer, response=response)
        inner = InnerHost("big.corp.example.com", "127.0.0.1", self.net.listen(factory), "off")
        port, _, _ = await self.net.gateway((inner,), self.local, deadline=10)
        started = time.monotonic()
        answer = await self.net.ask(port, CHAIN_ENVID)
        return answer, time.monotonic() - started, len(response)

    async def test_a_thousand_recipients_fit(self) -> None:
        answer, _, size = await self.ask_big(1000)
        self.assertGreater(size, 300_000)
        self.assertEqual(len(answer.parts), 2)
        self.assertEqual(len(answer.parts[1].recipients), 1000)

    async def test_over_the_cap_costs_that_host(self) -> None:
        # Under the 10,000-line cap, over the octet cap.
        answer, elapsed, size = await self.ask_big(1000, 300)
        self.assertGreater(size, 512 * 1024)
        self.assertEqual(answer, Answer.found([self.local]))
        self.assertLess(elapsed, 5, "refused as the cap passed, not at the deadline")


class InnerTLSTests(TestCase):
    """STARTTLS towards inner hosts: required with a CA file, and the upgrade for secure clients."""

    timeout = 20

    async def setUp(self) -> None:
        from mtqpgw.tls import ServerTLS
        from tests import certs

        self.certs = certs
        self.server_tls = ServerTLS.from_files
        self.net = Harness(self)
        self.name = "tls.corp.example.com"
        self.local = chain_part(GATEWAY, block("a@example1.com", Action.RELAYED, self.name))
        self.inner_part = chain_part(self.name, block("a@example1.com", Action.DELIVERED))

    async def tls_inner(self, authority: Any = None) -> InnerHost:
        issuer = authority or self.certs.default_ca()
        tls = self.server_tls([issuer.issue([self.name]).pair])
        host, _ = await self.net.inner_server(self.name, self.inner_part, tls=tls)
        return host

    async def test_required_with_cafile(self) -> None:
        host = await self.tls_inner()
        inner = InnerHost(
            host.name, host.host, host.port, "required", self.certs.default_ca().cert_path
        )
        port, pool, _ = await self.net.gateway((inner,), self.local)
        answer = await self.net.ask(port, CHAIN_ENVID)
        self.assertEqual(answer, Answer.found([self.local, self.inner_part]))
        (session,) = pool.sessions
        self.assertTrue(session.info.tls)

    async def test_untrusted_certificate_costs_only_that_host(self) -> None:
        host = await self.tls_inner(self.certs.new_authority("Rogue CA"))
        inner = InnerHost(
            host.name, host.host, host.port, "required", self.certs.default_ca().cert_path
        )
        port, _, _ = await self.net.gateway((inner,), self.local)
        started = time.monotonic()
        answer = await self.net.ask(port, CHAIN_ENVID)
        self.assertLess(time.monotonic() - started, DEADLINE + SLACK)
        self.assertEqual(answer, Answer.found([self.local]))

    async def test_secure_client_upgrades_off_to_opportunistic(self) -> None:
        from mtqpgw.tls import client_tls_context

        host = await self.tls_inner()  # configured "off", but it offers STARTTLS
        gateway_tls = self.server_tls([self.certs.default_ca().issue([GATEWAY]).pair])
        port, pool, _ = await self.net.gateway((host,), self.local, tls=gateway_tls)
        context = client_tls_context(GATEWAY, self.certs.default_ca().cert_path)
        secure = await self.net.ask(port, CHAIN_ENVID, tls_context=context)
        plain = await self.net.ask(port, CHAIN_ENVID)
        self.assertEqual(secure, plain)
        self.assertEqual(secure, Answer.found([self.local, self.inner_part]))
        # Two sessions: TLS for the client that used TLS, plain for the other.
        self.assertEqual(sorted(s.info.tls for s in pool.sessions), [False, True])


class DemoTests(TestCase):
    """``mtqp demo``'s servers answer the printed commands as the printout says."""

    timeout = 20

    async def test_demo_messages(self) -> None:
        import io

        from mtqpgw import demo

        running = await demo.start_demo(reactor)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(running.stop()))
        out = io.StringIO()
        demo.describe(running, out)
        net = Harness(self)
        reporters = {}
        for message in demo.DEMO_MESSAGES:
            self.assertIn(
                f"mtqp track --tls off --server 127.0.0.1:{running.gateway_port} "
                f"{message.envid} {message.mtrk_secret}",
                out.getvalue(),
            )
            answer = await net.ask(running.gateway_port, message.envid, message.mtrk_secret)
            reporters[message.envid] = [p.reporting_mta for p in answer.parts]
        self.assertEqual(
            reporters,
            {
                "demo-1@example.com": [
                    "dns; gateway.example.com",
                    "dns; mx1.corp.example.com",
                    "dns; mx2.corp.example.com",
                ],
                "demo-2@example.com": [
                    "dns; gateway.example.com",
                    "dns; mx1.corp.example.com",
                    "dns; mx2.corp.example.com",
                ],
                "demo-3@example.com": ["dns; mx2.corp.example.com"],
            },
        )
        wrong = await net.ask(running.gateway_port, "demo-1@example.com", "d3Jvbmc=")
        self.assertEqual(wrong, Answer.noinfo())
