# -*- test-case-name: tests.test_chain_integration -*-
"""``mtqp demo``: a chaining gateway and two inner MTQP servers in one process, on loopback.

Everything is real except the network: three of this project's servers,
each with its own in-memory tracking store seeded through the import format
(``mtqpgw.importer``), the gateway chaining to the other two through its
session pool.  The demo prints the ``mtqp://`` URIs and ``mtqp track``
command lines to try, and runs until interrupted (Ctrl-C exits 0).

The secrets are fixed and printed: this is a demonstration, not a
deployment.  The stores live in memory and vanish at exit.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.internet import defer
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from mtqpgw.chain import ChainingTracker
from mtqpgw.config import ChainConfig, InnerHost
from mtqpgw.importer import parse_line
from mtqpgw.rewrite import Rewriter
from mtqpgw.server import MTQPServerFactory, ServerLimits
from mtqpgw.store import LocalTracker, SQLiteStore
from mtqpgw.uri import MTQPURI

__all__ = ["DEMO_MESSAGES", "Demo", "DemoMessage", "main", "start_demo"]

GATEWAY = "gateway.example.com"
MX1 = "mx1.corp.example.com"
MX2 = "mx2.corp.example.com"
LOOPBACK = "127.0.0.1"
#: Short enough to watch, long enough for loopback.
DEMO_DEADLINE = 10.0


@dataclass(frozen=True)
class DemoMessage:
    """One demo message: its envelope id, secret A, and what each server knows of it."""

    envid: str
    secret: str  # the plain secret A; the wire carries base64 of its UTF-8 octets
    story: str
    # server name -> recipients (import-format dicts) that server tracks
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def mtrk_secret(self) -> str:
        return base64.b64encode(self.secret.encode("utf-8")).decode("ascii")


def _rcpt(user: str, action: str, status: str, remote: str | None = None) -> dict[str, Any]:
    return {
        "original_recipient": f"rfc822; {user}",
        "final_recipient": f"rfc822; {user}",
        "action": action,
        "status": status,
        "remote_mta": f"dns; {remote}" if remote else None,
    }


# Secrets chosen so that their base64 needs no escaping in a URI.
DEMO_MESSAGES: tuple[DemoMessage, ...] = (
    DemoMessage(
        "demo-1@example.com",
        "demo secret one",
        "the gateway relayed alice to mx1 (delivered) and bob to mx2 (delayed): "
        "both inner hosts asked at once",
        {
            GATEWAY: [
                _rcpt("alice@example.com", "relayed", "2.1.9", MX1),
                _rcpt("bob@example.com", "relayed", "2.1.9", MX2),
            ],
            MX1: [_rcpt("alice@example.com", "delivered", "2.5.0")],
            MX2: [_rcpt("bob@example.com", "delayed", "4.4.1 (No answer from host)")],
        },
    ),
    DemoMessage(
        "demo-2@example.com",
        "demo secret two",
        "the gateway relayed carol to mx1, which transferred her to mx2: followed two deep",
        {
            GATEWAY: [_rcpt("carol@example.com", "relayed", "2.1.9", MX1)],
            MX1: [_rcpt("carol@example.com", "transferred", "2.4.0", MX2)],
            MX2: [_rcpt("carol@example.com", "delivered", "2.5.0")],
        },
    ),
    DemoMessage(
        "demo-3@example.com",
        "demo secret three",
        "only mx2 knows this one: the gateway has no record and asks every inner host",
        {MX2: [_rcpt("dave@example.com", "delivered", "2.5.0")]},
    ),
)


@dataclass
class Demo:
    """The running demo: where each server listens, and how to stop it all."""

    gateway_port: int
    inner_ports: dict[str, int]
    stops: list[Callable[[], Any]] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop listening, close pooled sessions and stores (in reverse order of start)."""
        stops, self.stops = self.stops, []
        for stop in reversed(stops):
            await defer.maybeDeferred(stop)


def _records_for(server: str, now_text: str, now: float) -> list[Any]:
    records = []
    for message in DEMO_MESSAGES:
        recipients = message.records.get(server)
        if not recipients:
            continue
        line = json.dumps(
            {
                "envid": message.envid,
                "secret": message.secret,
                "arrival_date": now_text,
                "recipients": recipients,
            }
        )
        records.append(parse_line(line, now))
    return records


async def start_demo(reactor: Any, port: int = 0) -> Demo:
    """Start the two inner servers and the gateway (on ``port``, 0 for any) on loopback."""
    now = reactor.seconds()
    now_text = email.utils.format_datetime(datetime.fromtimestamp(now, UTC))
    demo = Demo(gateway_port=0, inner_ports={})
    try:
        trackers: dict[str, Any] = {}
        for name in (GATEWAY, MX1, MX2):
            store = SQLiteStore(":memory:", reactor=reactor)
            await store.start()
            demo.stops.append(store.stop)
            await store.upsert(_records_for(name, now_text, now))
            trackers[name] = LocalTracker(store, name)
        inner = []
        for name in (MX1, MX2):
            factory = MTQPServerFactory(
                trackers[name],
                # The gateway fans out for unknown ids: exempt it from the
                # failed-TRACK brake, as interface.md tells inner hosts to.
                ServerLimits(hostname=name, throttle_exempt=(LOOPBACK,)),
                clock=reactor,
            )
            factory.noisy = False
            listening = reactor.listenTCP(0, factory, interface=LOOPBACK)
            demo.stops.append(listening.stopListening)
            demo.inner_ports[name] = listening.getHost().port
            inner.append(InnerHost(name, LOOPBACK, demo.inner_ports[name], "off"))
        chain = ChainConfig(
            deadline=DEMO_DEADLINE, report="hops", fanout=True, max_depth=4, inner=tuple(inner)
        )
        gateway = ChainingTracker(trackers[GATEWAY], chain, Rewriter(()), GATEWAY, reactor=reactor)
        gateway.service.startService()
        demo.stops.append(gateway.service.stopService)
        factory = MTQPServerFactory(gateway, ServerLimits(hostname=GATEWAY), clock=reactor)
        factory.noisy = False
        listening = reactor.listenTCP(port, factory, interface=LOOPBACK)
        demo.stops.append(listening.stopListening)
        demo.gateway_port = listening.getHost().port
    except BaseException:
        await demo.stop()
        raise
    return demo


def describe(demo: Demo, out: TextIO) -> None:
    """Print where the servers are and what to try."""
    gateway = f"{LOOPBACK}:{demo.gateway_port}"
    lines = [
        "mtqp demo: a chaining MTQP gateway and two inner MTQP servers on loopback.",
        "",
        f"  gateway  {GATEWAY:<22} {gateway}  (report hops, fan-out on,"
        f" deadline {DEMO_DEADLINE:g} s)",
    ]
    for name, port in demo.inner_ports.items():
        lines.append(f"  inner    {name:<22} {LOOPBACK}:{port}")
    lines.append("")
    lines.append("Demo messages (fixed demo secrets; the wire carries base64 of secret A):")
    for message in DEMO_MESSAGES:
        uri = MTQPURI(LOOPBACK, demo.gateway_port, message.envid, message.mtrk_secret)
        lines += [
            "",
            f"  {message.envid}: {message.story}",
            f"    secret A {message.secret!r}, mtrk-secret {message.mtrk_secret}",
            f"    mtqp track '{uri.to_text()}'",
            f"    mtqp track --tls off --server {gateway} {message.envid} {message.mtrk_secret}",
        ]
    lines += [
        "",
        "An unknown envelope id or a wrong secret gets the same answer: -ERR/noinfo.",
        "Ask an inner server directly with its own address in --server to compare.",
        "Press Ctrl-C to stop.",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


def main(args: argparse.Namespace) -> int:
    """``mtqp demo [--port N]``: run until interrupted; 0 on Ctrl-C, 2 if it cannot start."""
    from twisted.internet import reactor

    # The servers' own log lines (each TRACK, each inner host that fails)
    # show what the gateway does; warnings and up only from Twisted itself.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    predicate.setLogLevelForNamespace("twisted", LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    outcome: dict[str, Any] = {"status": 0}

    async def run() -> None:
        try:
            demo = await start_demo(reactor, getattr(args, "port", 0) or 0)
        except Exception as e:
            print(f"mtqp demo: cannot start: {e}", file=sys.stderr)
            outcome["status"] = 2
            reactor.stop()
            return
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: defer.Deferred.fromCoroutine(demo.stop())
        )
        describe(demo, sys.stdout)

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()))
    # The reactor's own SIGINT handler stops it: Ctrl-C ends run() cleanly.
    reactor.run()
    return int(outcome["status"])
