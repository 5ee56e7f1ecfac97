"""Tests for ``mtqp track`` (mtqpgw.trackcmd) and its --follow planner (mtqpgw.follow).

End to end on loopback: the command runs in-process on the test's reactor
against real MTQP servers (this project's, or a scripted one where the
bytes matter), found through a real name server (tests.dnsserver) that the
command reaches with ``--dns-server``.  Nothing leaves 127.0.0.0/8 and no
test sleeps: the one timeout test drives a task.Clock.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.names import dns as names_dns
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mtqpgw import wire
from mtqpgw.certifier import certifier_for_secret
from mtqpgw.cli import build_parser
from mtqpgw.follow import Hop, Referral, plan
from mtqpgw.interfaces import ITracker
from mtqpgw.merge import host_key
from mtqpgw.report import answer_to_json
from mtqpgw.server import MTQPServerFactory, ServerLimits
from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus
from mtqpgw.store import LocalTracker, SQLiteStore, StoredMessage
from mtqpgw.tls import ServerTLS
from mtqpgw.tofu import Observation, TofuCache
from mtqpgw.trackcmd import render_text, run
from tests import certs
from tests.dnsserver import MemoryZone, serve_dns
from tests.seed import EXAMPLES
from tests.test_dns import ScriptedRandom

ENVID = "12345-20010101@example.com"
SECRET = "YWJjZGVmZ2gK"
ARRIVED = "Tue, 1 Jan 2030 10:00:00 +0000"


# -- fixtures -----------------------------------------------------------------


def _track_closes(factory: protocol.Factory) -> Callable[[], defer.Deferred[None]]:
    """Make *factory*'s protocols report closing; return "wait until all are closed"."""
    live: set[Any] = set()
    waiters: list[defer.Deferred[None]] = []
    base = factory.protocol

    class Tracked(base):  # type: ignore[misc, valid-type]
        def connectionMade(self) -> None:
            live.add(self)
            super().connectionMade()

        def connectionLost(self, reason: Any = None) -> None:
            super().connectionLost(reason)
            live.discard(self)
            if not live:
                while waiters:
                    waiters.pop().callback(None)

    factory.protocol = Tracked

    def all_closed() -> defer.Deferred[None]:
        if not live:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        waiters.append(d)
        return d

    return all_closed


def listen(testcase: TestCase, factory: protocol.Factory, interface: str = "127.0.0.1") -> int:
    """Listen on a random port of *interface* until the test ends (connections closed too)."""
    all_closed = _track_closes(factory)
    port = reactor.listenTCP(0, factory, interface=interface)
    # Cleanups run last-added first: stop listening, then wait for the
    # server's side of every connection to be gone.
    testcase.addCleanup(all_closed)
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


async def dead_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    return number


@implementer(ITracker)
class FixedTracker:
    """Answers every TRACK the same, and counts them."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        self.asked.append(envid)
        return defer.succeed(self.answer)


@implementer(ITracker)
class CountingTracker:
    """Passes TRACK to another tracker and records the envids asked."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked: list[str] = []

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        self.asked.append(envid)
        return self.inner.track(envid, secret, secure)


def part(reporter: str, *recipients: RecipientStatus) -> TrackingStatus:
    return TrackingStatus(ENVID, f"dns; {reporter}", ARRIVED, recipients=recipients)


def rcpt(user: str, action: Action, status: str, remote: str | None = None) -> RecipientStatus:
    return RecipientStatus(
        final_recipient=f"rfc822; {user}@example1.com",
        original_recipient=f"rfc822; {user}@example1.com",
        action=action,
        status=status,
        remote_mta=f"dns; {remote}" if remote else None,
        last_attempt_date=ARRIVED if remote else None,
    )


class ScriptedFactory(protocol.Factory):
    """A hand-written MTQP server: a fixed greeting, a fixed TRACK reply (or silence)."""

    def __init__(self, reply: bytes | None, greeting: bytes = b"+OK/MTQP scripted\r\n") -> None:
        self.reply = reply
        self.greeting = greeting
        self.lines: list[bytes] = []
        self.track_received: defer.Deferred[bytes] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        p = self.protocol()
        p.factory = self
        return p


class _Scripted(LineReceiver):
    delimiter = b"\r\n"
    factory: ScriptedFactory

    def connectionMade(self) -> None:
        self.transport.write(self.factory.greeting)

    def lineReceived(self, line: bytes) -> None:
        self.factory.lines.append(line)
        if line.upper().startswith(b"TRACK"):
            if self.factory.reply is not None:
                self.transport.write(self.factory.reply)
            if not self.factory.track_received.called:
                self.factory.track_received.callback(line)
        elif line.upper().startswith(b"QUIT"):
            self.transport.write(b"+OK bye\r\n")
            self.transport.loseConnection()


ScriptedFactory.protocol = _Scripted


class TrackTestCase(TestCase):
    """A name server for the ``.test`` zone, and ways to start MTQP servers named in it."""

    def setUp(self) -> None:
        self.zone = MemoryZone("test")
        self.dns = serve_dns(self, self.zone)

    def serve(self, tracker: Any, hostname: str, interface: str = "127.0.0.1") -> int:
        factory = MTQPServerFactory(tracker, ServerLimits(hostname=hostname))
        return listen(self, factory, interface)

    def name(self, host: str, port: int, address: str = "127.0.0.1", **srv: int) -> None:
        """``_mtqp._tcp.HOST`` SRV -> HOST:port, and HOST's A record."""
        self.zone.add_srv(f"_mtqp._tcp.{host}", host, port, **srv)
        self.zone.add_a(host, address)

    def serve_named(self, host: str, answer: Answer) -> FixedTracker:
        tracker = FixedTracker(answer)
        self.name(host, self.serve(tracker, host))
        return tracker

    async def track(self, *argv: str, **kw: Any) -> tuple[int, str, str]:
        args = build_parser().parse_args(["track", "--dns-server", self.dns, *argv])
        out, err = io.StringIO(), io.StringIO()
        code = await run(reactor, args, out, err, **kw)
        for text in (out.getvalue(), err.getvalue()):
            self.assertNotIn("Traceback", text)
        return code, out.getvalue(), err.getvalue()

    async def store_tracker(self, hostname: str, *recipients: RecipientStatus) -> CountingTracker:
        """A LocalTracker over an in-memory SQLite store holding one message."""
        store = SQLiteStore(":memory:")
        await store.start()
        self.addCleanup(store.stop)
        await store.upsert(
            [
                StoredMessage(
                    envid=ENVID,
                    certifier=certifier_for_secret(SECRET),
                    expires=int(time.time()) + 86400,
                    recipients=recipients,
                    arrival_date=ARRIVED,
                )
            ]
        )
        return CountingTracker(LocalTracker(store, hostname))


def uri(host: str) -> str:
    return f"mtqp://{host}/track/{ENVID}/{SECRET}"


# -- discovery, end to end ------------------------------------------------------


class DiscoveryEndToEndTests(TrackTestCase):
    async def test_priority_and_dead_first_target(self) -> None:
        """The lowest-priority target refuses; the next one answers."""
        self.name("live.test", self.serve(FixedTracker(Answer.found([part("live.test")])), "x"))
        self.zone.add_srv(
            "_mtqp._tcp.mail.test", "live.test", self._port("live.test"), priority=20
        )
        self.zone.add_srv("_mtqp._tcp.mail.test", "dead.test", await dead_port(), priority=10)
        self.zone.add_a("dead.test")
        code, out, err = await self.track(uri("mail.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"Server live.test:{self._port('live.test')}:", out)
        self.assertIn("Reporting MTA dns; live.test", out)
        self.assertLess(
            self.zone.queries.index(("dead.test", "A")),
            self.zone.queries.index(("live.test", "A")),
        )

    def _port(self, host: str) -> int:
        (record,) = self.zone.records[f"_mtqp._tcp.{host}".encode()]
        return int(record.port)

    async def test_target_without_address_skipped(self) -> None:
        tracker = FixedTracker(Answer.found([part("live.test")]))
        port = self.serve(tracker, "live.test")
        self.zone.add_srv("_mtqp._tcp.mail.test", "void.test", 1, priority=1)
        self.zone.add_srv("_mtqp._tcp.mail.test", "live.test", port, priority=2)
        self.zone.add_a("live.test")
        code, out, err = await self.track(uri("mail.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(tracker.asked, [ENVID])

    async def test_admin_down_target_skipped(self) -> None:
        """A server that greets -TEMP/admin is like one that is down: try the next."""
        down = MTQPServerFactory(FixedTracker(Answer.noinfo()), ServerLimits(hostname="down.test"))
        down.admin_down = True
        self.zone.add_srv("_mtqp._tcp.mail.test", "down.test", listen(self, down), priority=1)
        self.zone.add_a("down.test")
        up = FixedTracker(Answer.found([part("up.test")]))
        self.zone.add_srv("_mtqp._tcp.mail.test", "up.test", self.serve(up, "up.test"), priority=2)
        self.zone.add_a("up.test")
        code, out, err = await self.track(uri("mail.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(up.asked, [ENVID])

    async def test_weights_with_injected_random(self) -> None:
        """Equal priority: the draw (from the injected source) picks by weight."""
        self.zone.add_srv(
            "_mtqp._tcp.mail.test",
            "light.test",
            self.serve(FixedTracker(Answer.found([part("light.test")])), "light.test"),
            weight=10,
        )
        self.zone.add_srv(
            "_mtqp._tcp.mail.test",
            "heavy.test",
            self.serve(FixedTracker(Answer.found([part("heavy.test")])), "heavy.test"),
            weight=90,
        )
        self.zone.add_a("light.test")
        self.zone.add_a("heavy.test")
        # Running sums 10 (light) and 100 (heavy): 11 picks heavy, 10 light.
        code, out, _ = await self.track(uri("mail.test"), rng=ScriptedRandom(11, 0))
        self.assertIn("Reporting MTA dns; heavy.test", out)
        code, out, _ = await self.track(uri("mail.test"), rng=ScriptedRandom(10, 0))
        self.assertIn("Reporting MTA dns; light.test", out)

    async def test_dot_target(self) -> None:
        self.zone.add_srv("_mtqp._tcp.mail.test", ".", 0)
        self.zone.add_a("mail.test")
        code, out, err = await self.track(uri("mail.test"))
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertEqual(
            err, "mtqp track: mail.test offers no MTQP service (its SRV record's target is '.')\n"
        )

    async def test_fallback_to_address_default_port_parameter(self) -> None:
        """No SRV: HOST's own address, on the default port (passed in: the test's port)."""
        tracker = FixedTracker(Answer.found([part("plain.test")]))
        port = self.serve(tracker, "plain.test")
        self.zone.add_a("plain.test")
        code, out, err = await self.track(uri("plain.test"), default_port=port)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"Server plain.test:{port}:", out)
        self.assertEqual(self.zone.asked("_mtqp._tcp.plain.test", "SRV"), 1)
        # The address discovery found is the one connected to: not asked twice.
        self.assertEqual(self.zone.asked("plain.test", "A"), 1)

    async def test_fallback_to_address_on_1038(self) -> None:
        """The real default: HOST's address on port 1038 (skipped if 127.0.10.38:1038 is taken)."""
        factory = MTQPServerFactory(
            FixedTracker(Answer.found([part("std.test")])), ServerLimits(hostname="std.test")
        )
        all_closed = _track_closes(factory)
        try:
            port = reactor.listenTCP(1038, factory, interface="127.0.10.38")
        except CannotListenError as e:
            raise self.skipTest(f"cannot listen on 127.0.10.38:1038: {e}") from None
        self.addCleanup(all_closed)
        self.addCleanup(port.stopListening)
        self.zone.add_a("std.test", "127.0.10.38")
        code, out, err = await self.track(uri("std.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Server std.test:1038:", out)

    async def test_no_such_host(self) -> None:
        code, out, err = await self.track(uri("nowhere.test"))
        self.assertEqual((code, out, err), (2, "", "mtqp track: no such host: nowhere.test\n"))

    async def test_no_srv_no_address(self) -> None:
        self.zone.add("bare.test", names_dns.Record_TXT(b"nothing to see", ttl=60))
        code, out, err = await self.track(uri("bare.test"))
        self.assertEqual(
            (code, out, err),
            (2, "", "mtqp track: bare.test has no MTQP SRV record and no address\n"),
        )

    async def test_refused(self) -> None:
        port = await dead_port()
        code, out, err = await self.track("--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual(
            (code, out, err),
            (2, "", f"mtqp track: could not reach 127.0.0.1:{port}: connection refused\n"),
        )
        self.assertEqual(self.zone.queries, [], "an address and a port: nothing to look up")

    async def test_every_target_dead(self) -> None:
        first, second = await dead_port(), await dead_port()
        self.zone.add_srv("_mtqp._tcp.mail.test", "a.test", first, priority=1)
        self.zone.add_srv("_mtqp._tcp.mail.test", "b.test", second, priority=2)
        self.zone.add_a("a.test")
        self.zone.add_a("b.test")
        code, out, err = await self.track(uri("mail.test"))
        self.assertEqual(code, 2)
        self.assertEqual(
            err,
            "mtqp track: could not reach an MTQP server for mail.test: "
            f"a.test:{first} (127.0.0.1): connection refused; "
            f"b.test:{second} (127.0.0.1): connection refused\n",
        )


class UnreachableJSONTests(TrackTestCase):
    """--json prints one object also when no server answered (exit 2); stderr keeps its line."""

    async def test_refused(self) -> None:
        port = await dead_port()
        code, out, err = await self.track("--json", "--server", f"127.0.0.1:{port}", ENVID, SECRET)
        text = f"could not reach 127.0.0.1:{port}: connection refused"
        self.assertEqual((code, err), (2, f"mtqp track: {text}\n"))
        self.assertEqual(
            json.loads(out),
            {
                "status": "unreachable",
                "server": f"127.0.0.1:{port}",
                "reason": [],
                "text": text,
                "host": "127.0.0.1",
            },
        )

    async def test_no_such_host(self) -> None:
        code, out, err = await self.track("--json", uri("nowhere.test"))
        self.assertEqual((code, err), (2, "mtqp track: no such host: nowhere.test\n"))
        data = json.loads(out)
        self.assertEqual(
            (data["status"], data["server"], data["text"], data["host"]),
            ("unreachable", None, "no such host: nowhere.test", "nowhere.test"),
        )

    async def test_every_target_dead(self) -> None:
        first, second = await dead_port(), await dead_port()
        self.zone.add_srv("_mtqp._tcp.mail.test", "a.test", first, priority=1)
        self.zone.add_srv("_mtqp._tcp.mail.test", "b.test", second, priority=2)
        self.zone.add_a("a.test")
        self.zone.add_a("b.test")
        code, out, err = await self.track("--json", uri("mail.test"))
        self.assertEqual(code, 2)
        data = json.loads(out)
        self.assertEqual((data["status"], data["server"]), ("unreachable", None))
        self.assertEqual(f"mtqp track: {data['text']}\n", err)

    async def test_timeout(self) -> None:
        factory = ScriptedFactory(None)
        port = listen(self, factory)
        clock = Clock()
        result = defer.ensureDeferred(
            self.track(
                "--json",
                "--timeout",
                "5",
                "--server",
                f"127.0.0.1:{port}",
                ENVID,
                SECRET,
                clock=clock,
            )
        )
        await factory.track_received
        clock.advance(5)
        code, out, err = await result
        self.assertEqual(code, 2)
        data = json.loads(out)
        self.assertEqual(
            (data["status"], data["server"], data["text"]),
            ("unreachable", f"127.0.0.1:{port}", f"127.0.0.1:{port}: no answer within 5 seconds"),
        )
        self.assertNotIn(SECRET, out)

    async def test_follow_keeps_the_follow_shape(self) -> None:
        """Following: the same object, with the one-entry path as follow mode writes it."""
        code, out, err = await self.track("--json", "--follow", uri("nowhere.test"))
        self.assertEqual(code, 2)
        data = json.loads(out)
        self.assertEqual(data["status"], "unreachable")
        self.assertEqual(
            data["path"],
            [
                {
                    "status": "unreachable",
                    "server": None,
                    "reason": [],
                    "text": "no such host: nowhere.test",
                    "host": "nowhere.test",
                    "referred_by": None,
                }
            ],
        )
        self.assertEqual(data["not_followed"], [])

    async def test_usage_errors_print_no_json(self) -> None:
        """A command line that cannot be run prints no result (as argparse's own errors)."""
        code, out, err = await self.track("--json", "--server", "hop1.test", ENVID)
        self.assertEqual((code, out), (2, ""))


class NegativeGreetingTests(TrackTestCase):
    """A server that greets with -TEMP or -ERR was reached and said no: exit 1, not "unreachable"."""

    ADMIN = b"-TEMP/MTQP/admin down.test MTQP service down for administration\r\n"

    def refusing(self, greeting: bytes) -> int:
        return listen(self, ScriptedFactory(None, greeting=greeting))

    async def test_admin_down(self) -> None:
        port = self.refusing(self.ADMIN)
        code, out, err = await self.track("--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual(
            (code, out, err),
            (
                1,
                "",
                f"mtqp track: 127.0.0.1:{port}: the server is down for administration (admin): "
                "down.test MTQP service down for administration\n",
            ),
        )

    async def test_admin_down_json(self) -> None:
        port = self.refusing(self.ADMIN)
        code, out, err = await self.track("--json", "--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual((code, err), (1, ""))
        self.assertEqual(
            json.loads(out),
            {
                "status": "temp",
                "server": f"127.0.0.1:{port}",
                "reason": ["admin"],
                "text": "down.test MTQP service down for administration",
            },
        )

    async def test_refused_session_json(self) -> None:
        port = self.refusing(b"-ERR/MTQP/unavailable Not today\r\n")
        code, out, err = await self.track("--json", "--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual(code, 1)
        self.assertEqual(
            json.loads(out),
            {
                "status": "error",
                "server": f"127.0.0.1:{port}",
                "reason": ["unavailable"],
                "text": "Not today",
            },
        )

    async def test_refused_session_readable(self) -> None:
        port = self.refusing(b"-ERR/MTQP/unavailable Not today\r\n")
        code, out, err = await self.track("--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"mtqp track: 127.0.0.1:{port}: the server refused the session (unavailable): "
            "Not today\n",
        )

    async def test_real_admin_down_server(self) -> None:
        """This project's server with admin_down set: its greeting, as the daemon sends it."""
        down = MTQPServerFactory(FixedTracker(Answer.noinfo()), ServerLimits(hostname="down.test"))
        down.admin_down = True
        self.name("down.test", listen(self, down))
        code, out, err = await self.track(uri("down.test"))
        self.assertEqual((code, out), (1, ""))
        self.assertIn(": the server is down for administration (admin): ", err)
        self.assertNotIn("could not reach", err)
        self.assertNotIn("mtqp/", err.lower())

    async def test_every_target_refuses_first_answer_wins(self) -> None:
        """Each target is still tried; when none takes a session, the first refusal is the outcome."""
        first = self.refusing(self.ADMIN)
        second = self.refusing(b"-ERR/MTQP/unavailable Not today\r\n")
        self.zone.add_srv("_mtqp._tcp.mail.test", "a.test", first, priority=1)
        self.zone.add_srv("_mtqp._tcp.mail.test", "b.test", second, priority=2)
        self.zone.add_a("a.test")
        self.zone.add_a("b.test")
        code, out, err = await self.track("--json", uri("mail.test"))
        self.assertEqual(code, 1)
        self.assertEqual(json.loads(out)["server"], f"a.test:{first}")
        self.assertEqual(json.loads(out)["reason"], ["admin"])
        self.assertEqual(self.zone.asked("b.test", "A"), 1, "the second target was tried")

    async def test_refusal_beats_a_dead_target(self) -> None:
        dead = await dead_port()
        down = self.refusing(self.ADMIN)
        self.zone.add_srv("_mtqp._tcp.mail.test", "dead.test", dead, priority=1)
        self.zone.add_srv("_mtqp._tcp.mail.test", "down.test", down, priority=2)
        self.zone.add_a("dead.test")
        self.zone.add_a("down.test")
        code, out, err = await self.track(uri("mail.test"))
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith(f"mtqp track: down.test:{down}: the server is down"), err)

    async def test_follow_shows_a_refusing_hop(self) -> None:
        self.name("down.test", self.refusing(self.ADMIN))
        self.serve_named(
            "hop1.test",
            Answer.found([part("hop1.test", rcpt("a", Action.TRANSFERRED, "2.0.0", "down.test"))]),
        )
        code, out, err = await self.track("--follow", uri("hop1.test"))
        self.assertEqual((code, err), (0, ""))
        down = self.zone.records[b"_mtqp._tcp.down.test"][0].port
        self.assertIn(
            f"Hop 2: down.test at down.test:{down}, named by hop1.test: "
            "the server is down for administration (admin): ",
            out,
        )


# -- answers and output -----------------------------------------------------------


class OutputTests(TrackTestCase):
    async def test_uri_with_escaped_slash_reaches_the_wire(self) -> None:
        """Seed section 9: %2F in the envid (and secret) is a '/' in the TRACK line."""
        factory = ScriptedFactory(b"-ERR/noinfo Nothing\r\n")
        self.name("hop1.test", listen(self, factory))
        code, _, err = await self.track("mtqp://HOP1.test/TRACK/a%2Fb-2001@example.com/YWJ%2FZGVm")
        self.assertEqual(code, 1)
        self.assertEqual(factory.lines[0], b"TRACK <a/b-2001@example.com> YWJ/ZGVm")
        self.assertNotIn("YWJ", err)

    async def test_server_form_with_port(self) -> None:
        factory = ScriptedFactory(EXAMPLES[6].response_bytes())
        port = listen(self, factory)
        code, out, err = await self.track("--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(factory.lines[0], f"TRACK <{ENVID}> {SECRET}".encode())
        self.assertEqual(self.zone.queries, [])

    async def test_readable(self) -> None:
        answer = Answer.found(
            [
                part(
                    "hop1.test",
                    rcpt("user1", Action.TRANSFERRED, "2.0.0", "hop2.test"),
                    RecipientStatus(
                        "rfc822; user2@example2.com",
                        Action.DELAYED,
                        "4.4.1 (No answer from host)",
                        original_recipient="rfc822; alias@example1.com",
                        will_retry_until="Thu, 3 Jan 2030 10:00:00 +0000",
                        diagnostic_code="smtp; 421 try later",
                    ),
                )
            ]
        )
        self.name("hop1.test", self.serve(FixedTracker(answer), "hop1.test"))
        code, out, err = await self.track(uri("hop1.test"))
        port = self.zone.records[b"_mtqp._tcp.hop1.test"][0].port
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out,
            f"Message {ENVID}\n"
            f"Server hop1.test:{port}:\n"
            f"  Reporting MTA dns; hop1.test, arrived {ARRIVED}\n"
            "    rfc822; user1@example1.com: transferred, 2.0.0, next hop dns; hop2.test, "
            f"last attempt {ARRIVED}\n"
            "    rfc822; user2@example2.com (originally rfc822; alias@example1.com): "
            "delayed, 4.4.1 (No answer from host), will retry until "
            "Thu, 3 Jan 2030 10:00:00 +0000, smtp; 421 try later\n",
        )
        self.assertNotIn(SECRET, out)

    async def test_json(self) -> None:
        answer = Answer.found([part("hop1.test", rcpt("user1", Action.DELIVERED, "2.0.0"))])
        self.name("hop1.test", self.serve(FixedTracker(answer), "hop1.test"))
        code, out, err = await self.track("--json", uri("hop1.test"))
        port = self.zone.records[b"_mtqp._tcp.hop1.test"][0].port
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), answer_to_json(answer, f"hop1.test:{port}"))
        self.assertNotIn(SECRET, out)

    async def test_json_negative(self) -> None:
        self.serve_named("hop1.test", Answer.noinfo("Never heard of it"))
        code, out, err = await self.track("--json", uri("hop1.test"))
        port = self.zone.records[b"_mtqp._tcp.hop1.test"][0].port
        self.assertEqual((code, err), (1, ""))
        self.assertEqual(
            json.loads(out),
            {
                "status": "noinfo",
                "server": f"hop1.test:{port}",
                "reason": ["noinfo"],
                "text": "Never heard of it",
            },
        )

    async def test_raw_is_the_body_as_received(self) -> None:
        """--raw: the MIME lines, CRLF-ended, with the wire's dot-stuffing removed (seed #8)."""
        example = EXAMPLES[8]
        self.assertIn(b"..Dot-Stuffed-Header: as an example\r\n", example.response_bytes())
        self.name("hop1.test", listen(self, ScriptedFactory(example.response_bytes())))
        code, out, err = await self.track("--raw", uri("hop1.test"))
        self.assertEqual((code, err), (0, ""))
        expected = b"".join(line + b"\r\n" for line in example.lines).decode()
        self.assertEqual(out, expected)
        self.assertIn("\r\n.Dot-Stuffed-Header: as an example\r\n", out)

    async def test_noinfo(self) -> None:
        self.serve_named("hop1.test", Answer.noinfo())
        code, out, err = await self.track(uri("hop1.test"))
        port = self.zone.records[b"_mtqp._tcp.hop1.test"][0].port
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(
            err,
            f"mtqp track: hop1.test:{port}: no information about this message (noinfo): "
            "No information about that message\n",
        )

    async def test_temp(self) -> None:
        self.serve_named("hop1.test", Answer.temp(("unavailable",), "Store is busy"))
        code, out, err = await self.track(uri("hop1.test"))
        self.assertEqual(code, 1)
        self.assertTrue(
            err.endswith(": temporarily unable to answer (unavailable): Store is busy\n")
        )
        self.assertEqual(err.count("\n"), 1)

    async def test_raw_negative(self) -> None:
        self.serve_named("hop1.test", Answer.error((), "Go away"))
        code, out, err = await self.track("--raw", uri("hop1.test"))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.endswith(": refused the query: Go away\n"))

    async def test_garbage_greeting(self) -> None:
        factory = ScriptedFactory(None, greeting=b"220 smtp.test ESMTP\r\n")
        port = listen(self, factory)
        code, out, err = await self.track("--server", f"127.0.0.1:{port}", ENVID, SECRET)
        self.assertEqual((code, out), (2, ""))
        self.assertTrue(err.startswith(f"mtqp track: could not reach 127.0.0.1:{port}: "))
        self.assertEqual(err.count("\n"), 1)

    async def test_timeout(self) -> None:
        """A server that takes TRACK and never answers: the wait ends at --timeout (default 150)."""
        factory = ScriptedFactory(None)
        port = listen(self, factory)
        clock = Clock()
        args = ["--server", f"127.0.0.1:{port}", ENVID, SECRET]
        self.assertGreaterEqual(build_parser().parse_args(["track", *args]).timeout, 120)
        result = defer.ensureDeferred(self.track(*args, clock=clock))
        await factory.track_received
        clock.advance(149.9)
        self.assertFalse(result.called)
        clock.advance(0.1)
        code, out, err = await result
        self.assertEqual(
            (code, out, err),
            (2, "", f"mtqp track: 127.0.0.1:{port}: no answer within 150 seconds\n"),
        )

    async def test_timeout_option(self) -> None:
        factory = ScriptedFactory(None)
        port = listen(self, factory)
        clock = Clock()
        result = defer.ensureDeferred(
            self.track(
                "--timeout", "5", "--server", f"127.0.0.1:{port}", ENVID, SECRET, clock=clock
            )
        )
        await factory.track_received
        clock.advance(5)
        code, _, err = await result
        self.assertEqual(code, 2)
        self.assertIn("no answer within 5 seconds", err)

    async def test_tls_required_but_not_offered(self) -> None:
        self.serve_named("hop1.test", Answer.noinfo())
        code, out, err = await self.track("--tls", "required", uri("hop1.test"))
        self.assertEqual((code, out), (2, ""))
        self.assertIn("the server does not offer STARTTLS", err)

    async def test_tls_required_with_cafile(self) -> None:
        """--tls required --cafile: STARTTLS to the SRV target's name, verified, then TRACK."""
        leaf = certs.issue(["hop1.test"])
        server_tls = ServerTLS.from_files([(leaf.cert, leaf.key)])
        answer = Answer.found([part("hop1.test", rcpt("user1", Action.DELIVERED, "2.0.0"))])
        factory = MTQPServerFactory(
            FixedTracker(answer), ServerLimits(hostname="hop1.test"), tls=server_tls
        )
        self.name("hop1.test", listen(self, factory))
        cafile = certs.default_ca().cert_path
        code, out, err = await self.track(
            "--tls", "required", "--cafile", cafile, "--json", uri("hop1.test")
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["hops"][0]["reporting_mta"], "dns; hop1.test")

    async def test_opportunistic_tls_remembers_the_server(self) -> None:
        """Default --tls: STARTTLS without a CA file; the TOFU record alarms on a new certificate."""
        answer = Answer.found([part("hop1.test", rcpt("user1", Action.DELIVERED, "2.0.0"))])
        first = certs.issue(["hop1.test"])
        factory = MTQPServerFactory(
            FixedTracker(answer),
            ServerLimits(hostname="hop1.test"),
            tls=ServerTLS.from_files([(first.cert, first.key)]),
        )
        port = listen(self, factory)
        self.name("hop1.test", port)
        tofu = TofuCache(self.mktemp())
        code, out, err = await self.track(uri("hop1.test"), tofu=tofu)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(tofu.get("hop1.test", port).cert_sha256, first.sha256)

        # A certificate from a CA nobody trusts: opportunistic mode still
        # talks (it does not verify), but says the certificate changed.
        rogue = certs.new_authority("Rogue CA").issue(["hop1.test"])
        factory.tls = ServerTLS.from_files([(rogue.cert, rogue.key)])
        code, out, err = await self.track(uri("hop1.test"), tofu=TofuCache(tofu.path))
        self.assertEqual(code, 0)
        self.assertIn(f"mtqp track: WARNING: hop1.test:{port} presented a different", err)
        remembered = TofuCache(tofu.path).get("hop1.test", port)
        self.assertEqual(remembered.cert_sha256, first.sha256, "an alarm keeps the old record")


class TLSNameTests(TrackTestCase):
    """--tls-name: STARTTLS to a server reached by address (RFC 3887 section 6 needs an FQDN)."""

    def tls_server(self, name: str = "hop1.test") -> tuple[int, Any]:
        leaf = certs.issue([name])
        answer = Answer.found([part(name, rcpt("user1", Action.DELIVERED, "2.0.0"))])
        factory = MTQPServerFactory(
            FixedTracker(answer),
            ServerLimits(hostname=name),
            tls=ServerTLS.from_files([(leaf.cert, leaf.key)]),
        )
        return listen(self, factory), leaf

    async def test_required_by_address_says_use_tls_name(self) -> None:
        port = await dead_port()
        code, out, err = await self.track(
            "--tls", "required", "--server", f"127.0.0.1:{port}", ENVID, SECRET
        )
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("127.0.0.1 is not one", err)
        self.assertIn("--tls-name NAME", err)
        self.assertNotIn("could not reach", err, "refused before connecting")

    async def test_required_with_tls_name_verifies_that_name(self) -> None:
        port, leaf = self.tls_server()
        tofu = TofuCache(self.mktemp())
        cafile = certs.default_ca().cert_path
        argv = ["--tls", "required", "--cafile", cafile, "--server", f"127.0.0.1:{port}"]
        code, out, err = await self.track(
            *argv, "--tls-name", "hop1.test", ENVID, SECRET, tofu=tofu
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Reporting MTA dns; hop1.test", out)
        # Remembered under the server connected to, with the certificate seen.
        self.assertEqual(TofuCache(tofu.path).get("127.0.0.1", port).cert_sha256, leaf.sha256)
        self.assertIsNone(TofuCache(tofu.path).get("hop1.test", port))

        # Another name is what STARTTLS asks for: this server has no certificate for it.
        code, out, err = await self.track(*argv, "--tls-name", "other.test", ENVID, SECRET)
        self.assertEqual((code, out), (2, ""))
        self.assertIn("the server refused STARTTLS: No certificate for that name", err)

    async def test_opportunistic_by_address_warns_and_records_nothing(self) -> None:
        port, _ = self.tls_server()
        tofu = TofuCache(self.mktemp())
        code, out, err = await self.track(
            "--server", f"127.0.0.1:{port}", ENVID, SECRET, tofu=tofu
        )
        self.assertEqual(code, 0)
        self.assertEqual(
            err,
            f"mtqp track: warning: 127.0.0.1:{port} offers STARTTLS but TLS was not attempted: "
            "STARTTLS needs the server's domain name and 127.0.0.1 is not one; "
            "give the server's domain name with --tls-name NAME\n",
        )
        self.assertIsNone(
            TofuCache(tofu.path).get("127.0.0.1", port),
            "a session that never tried TLS is not remembered as one that went well",
        )

    async def test_opportunistic_with_tls_name_uses_tls(self) -> None:
        port, leaf = self.tls_server()
        tofu = TofuCache(self.mktemp())
        code, out, err = await self.track(
            "--server", f"127.0.0.1:{port}", "--tls-name", "hop1.test", ENVID, SECRET, tofu=tofu
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            TofuCache(tofu.path).get("127.0.0.1", port), Observation(True, leaf.sha256)
        )

    async def test_untried_tls_still_checks_for_a_stripped_starttls(self) -> None:
        """Not recorded, but a STARTTLS that vanished since an earlier session still alarms."""
        factory = ScriptedFactory(b"-ERR/noinfo Nothing\r\n")  # offers no STARTTLS
        port = listen(self, factory)
        tofu = TofuCache(self.mktemp())
        tofu.remember("127.0.0.1", port, Observation(True, "a" * 64))
        code, out, err = await self.track(
            "--server", f"127.0.0.1:{port}", ENVID, SECRET, tofu=tofu
        )
        self.assertEqual(code, 1)
        self.assertIn(f"WARNING: 127.0.0.1:{port} offered STARTTLS in an earlier session", err)
        self.assertEqual(TofuCache(tofu.path).get("127.0.0.1", port), Observation(True, "a" * 64))

    async def test_tls_name_usage(self) -> None:
        for argv in (
            ["--tls", "off", "--tls-name", "hop1.test"],
            ["--tls-name", "localhost"],
            ["--tls-name", "127.0.0.1"],
        ):
            code, out, err = await self.track(*argv, "--server", "127.0.0.1:1", ENVID, SECRET)
            self.assertEqual((code, out), (2, ""), argv)
            self.assertTrue(err.startswith("mtqp track: --tls-name"), err)
            self.assertEqual(self.zone.queries, [])


class CertificateRenewalTests(TrackTestCase):
    """A verified session's new certificate replaces the remembered one, with a note."""

    async def test_verified_renewal_is_remembered(self) -> None:
        answer = Answer.found([part("hop1.test", rcpt("user1", Action.DELIVERED, "2.0.0"))])
        # Same CA and name, another certificate (certs.issue caches by its arguments).
        old, new = certs.issue(["hop1.test"]), certs.issue(["hop1.test"], common_name="renewed")
        self.assertNotEqual(old.sha256, new.sha256)
        factory = MTQPServerFactory(
            FixedTracker(answer),
            ServerLimits(hostname="hop1.test"),
            tls=ServerTLS.from_files([(old.cert, old.key)]),
        )
        port = listen(self, factory)
        self.name("hop1.test", port)
        path = self.mktemp()
        cafile = certs.default_ca().cert_path
        for mode in ("required", "opportunistic"):
            argv = ["--tls", mode, "--cafile", cafile, uri("hop1.test")]
            factory.tls = ServerTLS.from_files([(old.cert, old.key)])
            TofuCache(path).forget("hop1.test", port)
            code, out, err = await self.track(*argv, tofu=TofuCache(path))
            self.assertEqual((code, err), (0, ""))

            factory.tls = ServerTLS.from_files([(new.cert, new.key)])
            code, out, err = await self.track(*argv, tofu=TofuCache(path))
            self.assertEqual(code, 0)
            self.assertTrue(
                err.startswith(f"mtqp track: note: hop1.test:{port} presented a new TLS"), err
            )
            self.assertNotIn("WARNING", err)
            self.assertEqual(err.count("\n"), 1)
            self.assertEqual(TofuCache(path).get("hop1.test", port).cert_sha256, new.sha256)
            code, out, err = await self.track(*argv, tofu=TofuCache(path))
            self.assertEqual((code, err), (0, ""), "the renewal is not news twice")


class UsageTests(TrackTestCase):
    async def check_usage(self, *argv: str) -> str:
        code, out, err = await self.track(*argv)
        self.assertEqual((code, out), (2, ""))
        self.assertTrue(err.startswith("mtqp track: "), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn(SECRET, err)
        return err

    async def test_nothing(self) -> None:
        await self.check_usage()

    async def test_server_without_secret(self) -> None:
        await self.check_usage("--server", "hop1.test", ENVID)

    async def test_uri_and_server(self) -> None:
        await self.check_usage("--server", "hop1.test", uri("hop1.test"), ENVID, SECRET)

    async def test_bad_uri(self) -> None:
        err = await self.check_usage(f"http://hop1.test/track/{ENVID}/{SECRET}")
        self.assertIn("mtqp://", err)

    async def test_bad_secret(self) -> None:
        await self.check_usage("--server", "hop1.test", ENVID, "not base64!")

    async def test_plain_secret_with_server(self) -> None:
        """--server mode: the likely slip is secret A itself; say what SECRET must be."""
        plain = "op secret 1"
        err = await self.check_usage("--server", "hop1.test", ENVID, plain)
        self.assertEqual(
            err,
            "mtqp track: SECRET must be the base64 mtrk-secret as sent on the wire "
            "(base64 of secret A), not secret A itself\n",
        )
        self.assertNotIn(plain, err)
        self.assertNotIn("%2F", err, "escapes are a URI matter")

    async def test_secret_with_slash_needs_no_escape_with_server(self) -> None:
        factory = ScriptedFactory(b"-ERR/noinfo Nothing\r\n")
        port = listen(self, factory)
        code, out, err = await self.track("--server", f"127.0.0.1:{port}", ENVID, "YWJ/ZGVm")
        self.assertEqual(code, 1)
        self.assertEqual(factory.lines[0], f"TRACK <{ENVID}> YWJ/ZGVm".encode())

    async def test_bad_port(self) -> None:
        await self.check_usage("--server", "hop1.test:99999", ENVID, SECRET)

    async def test_raw_follow(self) -> None:
        await self.check_usage("--raw", "--follow", uri("hop1.test"))

    async def test_bad_dns_server(self) -> None:
        args = build_parser().parse_args(["track", "--dns-server", "ns.test", uri("hop1.test")])
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(await run(reactor, args, out, err), 2)
        self.assertIn("--dns-server", err.getvalue())

    async def test_zero_max_hops(self) -> None:
        await self.check_usage("--follow", "--max-hops", "0", uri("hop1.test"))

    async def test_bad_cafile(self) -> None:
        await self.check_usage("--cafile", "/nonexistent/ca.pem", uri("hop1.test"))


# -- --follow -----------------------------------------------------------------------


class FollowEndToEndTests(TrackTestCase):
    async def three_hops(self) -> tuple[list[CountingTracker], list[int]]:
        """hop1 transferred -> hop2 relayed -> hop3 delivered, and hop3 points back at hop1."""
        hop1 = await self.store_tracker(
            "hop1.test",
            rcpt("user1", Action.TRANSFERRED, "2.0.0", "hop2.test"),
            rcpt("user2", Action.TRANSFERRED, "2.0.0", "hop2.test"),
        )
        hop2 = await self.store_tracker(
            "hop2.test",
            rcpt("user1", Action.RELAYED, "2.1.9", "hop3.test"),
            rcpt("user2", Action.TRANSFERRED, "2.0.0", "hop3.test"),
        )
        hop3 = await self.store_tracker(
            "hop3.test",
            rcpt("user1", Action.DELIVERED, "2.0.0"),
            # The loop: a referral back to the first hop (spelt differently).
            rcpt("user2", Action.TRANSFERRED, "2.0.0", "HOP1.test."),
        )
        ports = []
        for number, tracker in enumerate((hop1, hop2, hop3), 1):
            host = f"hop{number}.test"
            ports.append(self.serve(tracker, host))
            self.name(host, ports[-1])
        return [hop1, hop2, hop3], ports

    async def test_three_hops_with_a_loop(self) -> None:
        trackers, ports = await self.three_hops()
        code, out, err = await self.track("--follow", uri("hop1.test"))
        self.assertEqual((code, err), (0, ""))
        for tracker in trackers:
            self.assertEqual(tracker.asked, [ENVID], "each server asked exactly once")
        p1, p2, p3 = ports
        self.assertEqual(
            out,
            f"Message {ENVID}\n"
            f"Hop 1: hop1.test at hop1.test:{p1}:\n"
            f"  Reporting MTA dns; hop1.test, arrived {ARRIVED}\n"
            "    rfc822; user1@example1.com: transferred, 2.0.0, next hop dns; hop2.test, "
            f"last attempt {ARRIVED}\n"
            "    rfc822; user2@example1.com: transferred, 2.0.0, next hop dns; hop2.test, "
            f"last attempt {ARRIVED}\n"
            f"Hop 2: hop2.test at hop2.test:{p2}, named by hop1.test:\n"
            f"  Reporting MTA dns; hop2.test, arrived {ARRIVED}\n"
            "    rfc822; user1@example1.com: relayed, 2.1.9, next hop dns; hop3.test, "
            f"last attempt {ARRIVED}\n"
            "    rfc822; user2@example1.com: transferred, 2.0.0, next hop dns; hop3.test, "
            f"last attempt {ARRIVED}\n"
            f"Hop 3: hop3.test at hop3.test:{p3}, named by hop2.test:\n"
            f"  Reporting MTA dns; hop3.test, arrived {ARRIVED}\n"
            "    rfc822; user1@example1.com: delivered, 2.0.0\n"
            "    rfc822; user2@example1.com: transferred, 2.0.0, next hop dns; HOP1.test., "
            f"last attempt {ARRIVED}\n"
            "Not followed: hop1.test, named by hop3.test for rfc822; user2@example1.com: "
            "already on the path\n",
        )

    async def test_three_hops_json(self) -> None:
        trackers, ports = await self.three_hops()
        code, out, err = await self.track("--follow", "--json", uri("hop1.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn(SECRET, out)
        data = json.loads(out)
        self.assertEqual((data["status"], data["server"]), ("ok", f"hop1.test:{ports[0]}"))
        self.assertEqual(
            [hop["reporting_mta"] for hop in data["hops"]],
            ["dns; hop1.test", "dns; hop2.test", "dns; hop3.test"],
        )
        self.assertEqual(
            [(h["host"], h["status"], h["referred_by"]) for h in data["path"]],
            [
                ("hop1.test", "ok", None),
                ("hop2.test", "ok", "hop1.test"),
                ("hop3.test", "ok", "hop2.test"),
            ],
        )
        self.assertEqual(
            data["not_followed"],
            [
                {
                    "host": "hop1.test",
                    "referred_by": "hop3.test",
                    "recipient": "rfc822; user2@example1.com",
                    "why": "already on the path",
                }
            ],
        )

    async def test_max_hops(self) -> None:
        trackers, ports = await self.three_hops()
        code, out, err = await self.track("--follow", "--max-hops", "2", uri("hop1.test"))
        self.assertEqual(code, 0)
        self.assertEqual([len(t.asked) for t in trackers], [1, 1, 0])
        self.assertTrue(
            out.endswith(
                "Not followed: hop3.test, named by hop2.test for rfc822; user1@example1.com: "
                "--max-hops reached\n"
            )
        )

    async def test_hops_without_information_or_answer(self) -> None:
        """The path shows hops that said noinfo, refused, or do not exist."""
        dead = await dead_port()
        self.zone.add_srv("_mtqp._tcp.dead.test", "dead.test", dead)
        self.zone.add_a("dead.test")
        self.serve_named("quiet.test", Answer.noinfo())
        self.serve_named(
            "hop1.test",
            Answer.found(
                [
                    part(
                        "hop1.test",
                        rcpt("a", Action.TRANSFERRED, "2.0.0", "quiet.test"),
                        rcpt("b", Action.RELAYED, "2.1.9", "dead.test"),
                        rcpt("c", Action.TRANSFERRED, "2.0.0", "gone.test"),
                        rcpt("d", Action.DELIVERED, "2.0.0", "ignored.test"),
                    )
                ]
            ),
        )
        code, out, err = await self.track("--follow", uri("hop1.test"))
        self.assertEqual((code, err), (0, ""))
        quiet = self.zone.records[b"_mtqp._tcp.quiet.test"][0].port
        hops = [line for line in out.splitlines() if line.startswith("Hop ")]
        self.assertEqual(
            hops[1:],
            [
                f"Hop 2: quiet.test at quiet.test:{quiet}, named by hop1.test: "
                "no information about this message (noinfo): No information about that message",
                "Hop 3: dead.test, named by hop1.test: did not answer: "
                f"could not reach dead.test:{dead} (127.0.0.1): connection refused",
                "Hop 4: gone.test, named by hop1.test: did not answer: no such host: gone.test",
            ],
        )
        self.assertEqual(self.zone.asked("ignored.test"), 0, "delivered is not a referral")

    async def test_gateway_parts_not_asked_again(self) -> None:
        """A chaining gateway's answer already holds its inner host's part: that host is not asked."""
        self.serve_named(
            "gw.test",
            Answer.found(
                [
                    part("gw.test", rcpt("a", Action.TRANSFERRED, "2.0.0", "inner.test")),
                    part("inner.test", rcpt("a", Action.DELIVERED, "2.0.0")),
                ]
            ),
        )
        code, out, err = await self.track("--follow", uri("gw.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.zone.asked("_mtqp._tcp.inner.test"), 0)
        self.assertIn("Not followed: inner.test, named by gw.test", out)

    async def test_rewritten_inner_hosts_are_reported_not_on_the_path(self) -> None:
        """A gateway shows its inner hosts as example.com: not followed, once, for a true reason."""
        self.serve_named(
            "gw.test",
            Answer.found(
                [
                    part(
                        "gw.test",
                        rcpt("a", Action.TRANSFERRED, "2.0.0", "example.com"),
                        rcpt("b", Action.TRANSFERRED, "2.0.0", "example.com"),
                    ),
                    part("example.com", rcpt("a", Action.DELIVERED, "2.0.0")),
                    part("example.com", rcpt("b", Action.DELIVERED, "2.0.0")),
                ]
            ),
        )
        code, out, err = await self.track("--follow", uri("gw.test"))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.zone.asked("_mtqp._tcp.example.com"), 0)
        self.assertNotIn("already on the path", out)
        self.assertEqual(
            [line for line in out.splitlines() if line.startswith("Not followed")],
            [
                "Not followed: example.com, named by gw.test for rfc822; a@example1.com "
                "and 1 more: already reported in gw.test's answer"
            ],
        )
        code, out, err = await self.track("--follow", "--json", uri("gw.test"))
        self.assertEqual(
            [(n["host"], n["recipient"], n["why"]) for n in json.loads(out)["not_followed"]],
            [
                ("example.com", "rfc822; a@example1.com", "already reported"),
                ("example.com", "rfc822; b@example1.com", "already reported"),
            ],
        )


class RenderTests(SynchronousTestCase):
    def test_each_host_not_followed_once(self) -> None:
        """Many recipients sent back to an asked host: one line, counting the others."""
        a = Hop(
            "a.test",
            ok(part("a.test", rcpt("u", Action.TRANSFERRED, "2.0.0", "b.test"))),
            server="a.test:1038",
        )
        b = Hop(
            "b.test",
            ok(
                part(
                    "b.test",
                    rcpt("u1", Action.TRANSFERRED, "2.0.0", "a.test"),
                    rcpt("u2", Action.TRANSFERRED, "2.0.0", "a.test"),
                    rcpt("u3", Action.TRANSFERRED, "2.0.0", "A.test."),
                )
            ),
            server="b.test:1038",
            referral=Referral("b.test", "a.test", "rfc822; u@example1.com"),
        )
        out = render_text(ENVID, [a, b], plan([a, b], 8))
        self.assertEqual(
            [line for line in out.splitlines() if line.startswith("Not followed")],
            [
                "Not followed: a.test, named by b.test for rfc822; u1@example1.com and 2 more: "
                "already on the path"
            ],
        )


# -- the planner, alone ---------------------------------------------------------------


def ok(*parts: TrackingStatus) -> Answer:
    return Answer.found(parts)


class PlanTests(SynchronousTestCase):
    def test_first_referrals_in_order_each_once(self) -> None:
        first = Hop(
            "a.test",
            ok(
                part(
                    "a.test",
                    rcpt("u1", Action.TRANSFERRED, "2.0.0", "b.test"),
                    rcpt("u2", Action.RELAYED, "2.1.9", "c.test"),
                    rcpt("u3", Action.TRANSFERRED, "2.0.0", "B.TEST."),
                    rcpt("u4", Action.DELIVERED, "2.0.0"),
                    rcpt("u5", Action.FAILED, "5.0.0", "d.test"),
                )
            ),
        )
        step = plan([first], 8)
        self.assertEqual(
            step.ask,
            (
                Referral("b.test", "a.test", "rfc822; u1@example1.com"),
                Referral("c.test", "a.test", "rfc822; u2@example1.com"),
            ),
        )
        self.assertEqual((step.beyond_limit, step.repeats), ((), ()))

    def test_limit_counts_every_hop(self) -> None:
        first = Hop(
            "a.test",
            ok(
                part(
                    "a.test",
                    rcpt("u1", Action.TRANSFERRED, "2.0.0", "b.test"),
                    rcpt("u2", Action.TRANSFERRED, "2.0.0", "c.test"),
                )
            ),
        )
        step = plan([first], 2)
        self.assertEqual([r.host for r in step.ask], ["b.test"])
        self.assertEqual([r.host for r in step.beyond_limit], ["c.test"])
        self.assertEqual(plan([first], 1).ask, ())

    def test_never_twice(self) -> None:
        """Asked hosts, and hosts whose part is already in an answer, are not asked."""
        a = Hop("a.test", ok(part("a.test", rcpt("u", Action.TRANSFERRED, "2.0.0", "b.test"))))
        b = Hop(
            "b.test",
            ok(part("b.test", rcpt("u", Action.TRANSFERRED, "2.0.0", "a.test"))),
            referral=Referral("b.test", "a.test", "rfc822; u@example1.com"),
        )
        step = plan([a, b], 8)
        self.assertEqual(step.ask, ())
        self.assertEqual(step.repeats, (Referral("a.test", "b.test", "rfc822; u@example1.com"),))

    def test_reported_hosts_are_not_repeats(self) -> None:
        """A host never asked whose part is in an answer: ``reported``, with that answer's hop."""
        gw = Hop(
            "gw.test",
            ok(
                part("gw.test", rcpt("u", Action.TRANSFERRED, "2.0.0", "inner.test")),
                part("inner.test", rcpt("u", Action.DELIVERED, "2.0.0")),
            ),
        )
        step = plan([gw], 8)
        self.assertEqual((step.ask, step.repeats, step.beyond_limit), ((), (), ()))
        self.assertEqual(
            step.reported,
            ((Referral("inner.test", "gw.test", "rfc822; u@example1.com"), "gw.test"),),
        )

    def test_failed_hops_refer_nobody(self) -> None:
        a = Hop("a.test", ok(part("a.test", rcpt("u", Action.TRANSFERRED, "2.0.0", "b.test"))))
        b = Hop("b.test", error="connection refused", referral=plan([a], 8).ask[0])
        c = Hop("c.test", Answer.noinfo())
        self.assertEqual(plan([a, b, c], 8), plan([a, b], 8))
        self.assertEqual(plan([a, b], 8).ask, ())

    def test_a_loop_ends(self) -> None:
        """Feeding the planner answers that always refer onwards in a ring terminates."""
        ring = ["r0.test", "r1.test", "r2.test"]

        def answer_of(host: str) -> Answer:
            nxt = ring[(ring.index(host) + 1) % len(ring)]
            return ok(part(host, rcpt("u", Action.TRANSFERRED, "2.0.0", nxt)))

        path = [Hop("r0.test", answer_of("r0.test"))]
        while (step := plan(path, 100)).ask:
            ref = step.ask[0]
            path.append(Hop(ref.host, answer_of(ref.host), referral=ref))
        self.assertEqual([hop.host for hop in path], ring)

    def test_hop_host(self) -> None:
        # The planner compares hosts in merge.host_key form, as referrals() gives them.
        self.assertEqual(host_key("Mail.Example.COM."), "mail.example.com")
        self.assertEqual(host_key("[192.0.2.1]"), "192.0.2.1")
        self.assertEqual(host_key("[IPv6:2001:DB8::1]"), "2001:db8::1")
        self.assertEqual(host_key("[nonsense]"), "nonsense")

    def test_wire_track_line(self) -> None:
        # The follow path sends the same envid and secret at every hop;
        # the line is built by the core codec, not here.
        self.assertEqual(wire.track_line("a/b", SECRET), b"TRACK <a/b> YWJjZGVmZ2gK\r\n")
