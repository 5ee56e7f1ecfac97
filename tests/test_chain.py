"""Tests for mtqpgw.chain: the chaining engine, with a task.Clock and fake inner hosts.

The inner hosts are a fake pool whose queries are Deferreds the test fires
(or leaves hanging); the local store is a dict behind the real LocalTracker,
so the certifier check and the "unknown" answers are the production ones.
The seed examples used are tests/seed.py's corrected models (examples 10,
11 and 12, corrections listed there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.certifier import certifier_for_secret
from mtqpgw.chain import MAX_PARTS_PER_ANSWER, ChainingTracker, listen_addresses, part_size
from mtqpgw.client import ClientError
from mtqpgw.config import ChainConfig, InnerHost, RewriteRule
from mtqpgw.rewrite import Rewriter
from mtqpgw.status import Action, Answer, Outcome, RecipientStatus, TrackingStatus
from mtqpgw.store import LocalTracker, StoredMessage
from tests.seed import ENVID, EXAMPLES, SECRET_B64

GATEWAY = "example2.com"
WRONG_SECRET = "d3Jvbmcgc2VjcmV0"
FAR_FUTURE = 4_102_444_800  # 2100-01-01


@dataclass
class Call:
    """One query the engine made of an inner host."""

    host: str
    envid: str
    secret: str
    secure: bool
    deferred: defer.Deferred[Answer] = field(repr=False)
    cancelled: bool = False


class FakePool:
    """Stands in for SessionPool: each query is a Deferred the test controls."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.service = service.Service()
        # host -> Answer (or Exception) to fire at once; absent: left pending.
        self.auto: dict[str, Any] = {}

    def track(
        self, inner: InnerHost, envid: str, secret: str, secure: bool = False
    ) -> defer.Deferred[Answer]:
        def cancel(_: defer.Deferred[Answer]) -> None:
            call.cancelled = True

        d: defer.Deferred[Answer] = defer.Deferred(cancel)
        call = Call(inner.name, envid, secret, secure, d)
        self.calls.append(call)
        if inner.name in self.auto:
            outcome = self.auto[inner.name]
            if isinstance(outcome, Exception):
                d.errback(outcome)
            else:
                d.callback(outcome)
        return d

    def hosts(self) -> list[str]:
        return [call.host for call in self.calls]

    def call(self, host: str) -> Call:
        (found,) = [c for c in self.calls if c.host == host]
        return found

    def answer(self, host: str, answer: Answer) -> None:
        self.call(host).deferred.callback(answer)

    def fail(self, host: str, exc: Exception) -> None:
        self.call(host).deferred.errback(exc)


def stored(part: TrackingStatus, secret: str = SECRET_B64) -> StoredMessage:
    """What a store keeps for ``part``, its secret ``secret``, expiring in 2100."""
    return StoredMessage(
        envid=part.original_envelope_id,
        certifier=certifier_for_secret(secret),
        expires=FAR_FUTURE,
        recipients=part.recipients,
        arrival_date=part.arrival_date,
        received_from_mta=part.received_from_mta,
    )


class DictStore:
    """An ITrackingStore in a dict, answering at once (or never, when told to hang)."""

    def __init__(self) -> None:
        self.messages: dict[str, StoredMessage] = {}
        self.hang = False
        self.lookups: list[defer.Deferred[Any]] = []

    def add(self, part: TrackingStatus, secret: str = SECRET_B64) -> None:
        self.messages[part.original_envelope_id] = stored(part, secret)

    def lookup(self, envid: str, accept: Any = None) -> defer.Deferred[StoredMessage | None]:
        if self.hang:
            d: defer.Deferred[Any] = defer.Deferred()
            self.lookups.append(d)
            return d
        message = self.messages.get(envid)
        if accept is not None and not accept(message.certifier if message else None):
            return defer.succeed(None)
        return defer.succeed(message)


def part(reporting: str, *recipients: RecipientStatus, envid: str = ENVID) -> TrackingStatus:
    return TrackingStatus(envid, f"dns; {reporting}", recipients=recipients)


def relayed(user: str, to: str, action: Action = Action.RELAYED) -> RecipientStatus:
    return RecipientStatus(
        original_recipient=f"rfc822; {user}",
        final_recipient=f"rfc822; {user}",
        action=action,
        status="2.1.9" if action is Action.RELAYED else "2.4.0",
        remote_mta=f"dns; {to}",
    )


def delivered(user: str) -> RecipientStatus:
    return RecipientStatus(
        original_recipient=f"rfc822; {user}",
        final_recipient=f"rfc822; {user}",
        action=Action.DELIVERED,
        status="2.5.0",
    )


def inner_hosts(*names: str) -> tuple[InnerHost, ...]:
    return tuple(InnerHost(name, "192.0.2.1", 1038, "off") for name in names)


class LogCapture:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)


class ChainTestCase(SynchronousTestCase):
    deadline = 110.0

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = DictStore()
        self.pool = FakePool()

    def gateway(
        self,
        *names: str,
        report: str = "hops",
        fanout: bool = True,
        max_depth: int = 4,
        rules: tuple[RewriteRule, ...] = (),
        unknown_message: str = "noinfo",
        **limits: int,
    ) -> ChainingTracker:
        chain = ChainConfig(
            deadline=self.deadline,
            report=report,
            fanout=fanout,
            max_depth=max_depth,
            inner=inner_hosts(*names),
        )
        local = LocalTracker(self.store, GATEWAY, unknown_message)
        return ChainingTracker(
            local, chain, Rewriter(rules), GATEWAY, reactor=self.clock, pool=self.pool, **limits
        )


class SeedExampleTests(ChainTestCase):
    """Seed examples 10, 11, 12: the gateway relayed user1 to smtp.example3.com."""

    def setUp(self) -> None:
        super().setUp()
        self.local_part, self.inner_part = EXAMPLES[10].parts
        self.store.add(self.local_part)

    def run_example(self, **kwargs: Any) -> Answer:
        tracker = self.gateway("smtp.example3.com", **kwargs)
        d = tracker.track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["smtp.example3.com"])
        call = self.pool.call("smtp.example3.com")
        self.assertEqual((call.envid, call.secret), (ENVID, SECRET_B64), "secret forwarded")
        self.assertNoResult(d)
        self.pool.answer("smtp.example3.com", Answer.found([self.inner_part]))
        return self.successResultOf(d)

    def test_hops_is_example_10(self) -> None:
        self.assertEqual(self.run_example(report="hops"), EXAMPLES[10].answer)

    def test_combined_is_example_11(self) -> None:
        self.assertEqual(self.run_example(report="combined"), EXAMPLES[11].answer)

    def test_rewrite_is_example_12(self) -> None:
        rules = (
            RewriteRule("smtp.example3.com", "example2.com"),
            RewriteRule("example3.com", "example1.com", addresses=True),
        )
        self.assertEqual(self.run_example(report="hops", rules=rules), EXAMPLES[12].answer)

    def test_inner_name_matched_case_insensitively(self) -> None:
        self.store.add(
            self.local_part.evolve(
                recipients=(relayed("user1@example1.com", "SMTP.Example3.COM."),)
            )
        )
        self.gateway("smtp.example3.com").track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["smtp.example3.com"])

    def test_secure_is_passed_to_the_pool(self) -> None:
        self.gateway("smtp.example3.com").track(ENVID, SECRET_B64, secure=True)
        self.assertTrue(self.pool.call("smtp.example3.com").secure)


class ClearTextWarningTests(ChainTestCase):
    """RFC 3887 section 11: a TLS client's secret going on in clear text is warned of."""

    def setUp(self) -> None:
        super().setUp()
        self.log = LogCapture(self)

    def warnings(self) -> list[str]:
        return [line for line in self.log.text().splitlines() if "without TLS" in line]

    def test_warned_once_a_minute_per_host(self) -> None:
        tracker = self.gateway("10.0.0.5", "mx", "a.corp.example.com")
        required = InnerHost("[10.0.0.9]", "10.0.0.9", 1038, "required")
        tracker.inner["10.0.0.9"] = required
        for _ in range(3):
            tracker.track(ENVID, SECRET_B64, secure=True)
        self.assertEqual(len(self.pool.calls), 12, "fan-out: every host asked each time")
        warned = self.warnings()
        self.assertEqual(len(warned), 2, warned)
        self.assertIn("10.0.0.5", warned[0])
        self.assertIn("'mx'", warned[1])
        self.clock.advance(61)
        tracker.track(ENVID, SECRET_B64, secure=True)
        self.assertEqual(len(self.warnings()), 4)

    def test_not_for_plain_clients_nor_fqdns(self) -> None:
        tracker = self.gateway("10.0.0.5", "a.corp.example.com")
        tracker.track(ENVID, SECRET_B64)
        self.assertEqual(self.warnings(), [])
        tracker = self.gateway("a.corp.example.com")
        tracker.track(ENVID, SECRET_B64, secure=True)
        self.assertEqual(self.warnings(), [])


class DeadlineTests(ChainTestCase):
    deadline = 30.0

    def setUp(self) -> None:
        super().setUp()
        self.local = part(
            GATEWAY,
            relayed("a@example1.com", "fast.corp"),
            relayed("b@example1.com", "slow.corp"),
        )
        self.store.add(self.local)
        self.tracker = self.gateway("fast.corp", "slow.corp")

    def test_answer_exactly_at_the_deadline(self) -> None:
        d = self.tracker.track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["fast.corp", "slow.corp"], "asked concurrently")
        fast = part("fast.corp", delivered("a@example1.com"))
        self.pool.answer("fast.corp", Answer.found([fast]))
        self.clock.advance(self.deadline - 0.001)
        self.assertNoResult(d)
        self.assertFalse(self.pool.call("slow.corp").cancelled)
        self.clock.advance(0.001)
        answer = self.successResultOf(d)
        # slow.corp's recipient keeps the gateway's block: passed on, no more.
        self.assertEqual(answer, Answer.found([self.local, fast]))
        self.assertTrue(self.pool.call("slow.corp").cancelled, "the slow session was aborted")
        self.assertFalse(self.pool.call("fast.corp").cancelled)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_answers_gives_the_local_part(self) -> None:
        d = self.tracker.track(ENVID, SECRET_B64)
        self.clock.advance(self.deadline)
        self.assertEqual(self.successResultOf(d), Answer.found([self.local]))
        self.assertTrue(all(call.cancelled for call in self.pool.calls))

    def test_combined_keeps_the_gateway_block_for_the_silent_host(self) -> None:
        tracker = self.gateway("fast.corp", "slow.corp", report="combined")
        d = tracker.track(ENVID, SECRET_B64)
        self.pool.answer(
            "fast.corp", Answer.found([part("fast.corp", delivered("a@example1.com"))])
        )
        self.clock.advance(self.deadline)
        (combined,) = self.successResultOf(d).parts
        self.assertEqual(combined.reporting_mta, f"dns; {GATEWAY}")
        self.assertEqual(
            combined.recipients, (delivered("a@example1.com"), self.local.recipients[1])
        )

    def test_answers_early_when_all_hosts_answered(self) -> None:
        d = self.tracker.track(ENVID, SECRET_B64)
        self.pool.answer("fast.corp", Answer.noinfo())
        self.assertNoResult(d)
        self.pool.answer("slow.corp", Answer.noinfo())
        self.assertEqual(self.successResultOf(d), Answer.found([self.local]))
        self.assertEqual(self.clock.getDelayedCalls(), [], "deadline timer cancelled")

    def test_local_store_hanging(self) -> None:
        self.store.hang = True
        d = self.tracker.track(ENVID, SECRET_B64)
        self.clock.advance(self.deadline - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        answer = self.successResultOf(d)
        self.assertEqual((answer.outcome, answer.reasons), (Outcome.TEMP, ("unavailable",)))
        self.assertEqual(self.pool.calls, [], "no inner host asked without a local answer")
        self.assertTrue(self.store.lookups[0].called, "the look-up was cancelled")

    def test_deadline_must_be_under_two_minutes(self) -> None:
        self.deadline = 120.0
        self.assertRaises(ValueError, self.gateway, "fast.corp")
        self.deadline = 0
        self.assertRaises(ValueError, self.gateway, "fast.corp")


class CancelTests(ChainTestCase):
    def test_cancelling_the_track_cancels_every_inner_query(self) -> None:
        self.store.add(
            part(GATEWAY, relayed("a@example1.com", "a.corp"), relayed("b@example1.com", "b.corp"))
        )
        d = self.gateway("a.corp", "b.corp").track(ENVID, SECRET_B64)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual([c.cancelled for c in self.pool.calls], [True, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_while_the_local_lookup_runs(self) -> None:
        self.store.hang = True
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(self.store.lookups[0].called)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FollowTests(ChainTestCase):
    def test_referrals_followed_to_configured_hosts(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", "a.corp")))
        d = self.gateway("a.corp", "b.corp").track(ENVID, SECRET_B64)
        a = part("a.corp", relayed("a@example1.com", "b.corp", Action.TRANSFERRED))
        self.pool.answer("a.corp", Answer.found([a]))
        self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp"])
        self.assertEqual(self.pool.call("b.corp").secret, SECRET_B64)
        b = part("b.corp", delivered("a@example1.com"))
        self.pool.answer("b.corp", Answer.found([b]))
        self.assertEqual(len(self.successResultOf(d).parts), 3)

    def test_depth_limit(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", "a.corp")))
        d = self.gateway("a.corp", "b.corp", "c.corp", max_depth=2).track(ENVID, SECRET_B64)
        self.pool.answer(
            "a.corp", Answer.found([part("a.corp", relayed("a@example1.com", "b.corp"))])
        )
        self.pool.answer(
            "b.corp", Answer.found([part("b.corp", relayed("a@example1.com", "c.corp"))])
        )
        self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp"], "c.corp is a third inner hop")
        answer = self.successResultOf(d)
        self.assertEqual(
            [p.reporting_mta for p in answer.parts],
            ["dns; example2.com", "dns; a.corp", "dns; b.corp"],
        )

    def test_depth_one_asks_only_direct_hosts(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", "a.corp")))
        d = self.gateway("a.corp", "b.corp", max_depth=1).track(ENVID, SECRET_B64)
        self.pool.answer(
            "a.corp", Answer.found([part("a.corp", relayed("a@example1.com", "b.corp"))])
        )
        self.successResultOf(d)
        self.assertEqual(self.pool.hosts(), ["a.corp"])

    def test_no_host_asked_twice(self) -> None:
        self.store.add(
            part(
                GATEWAY,
                relayed("a@example1.com", "a.corp"),
                relayed("b@example1.com", "A.CORP"),
                relayed("c@example1.com", "b.corp"),
            )
        )
        d = self.gateway("a.corp", "b.corp").track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp"])
        # Each refers to the other, and to itself.
        self.pool.answer(
            "a.corp",
            Answer.found(
                [
                    part(
                        "a.corp",
                        relayed("a@example1.com", "b.corp"),
                        relayed("b@example1.com", "a.corp"),
                    )
                ]
            ),
        )
        self.pool.answer(
            "b.corp", Answer.found([part("b.corp", relayed("c@example1.com", "a.corp"))])
        )
        self.successResultOf(d)
        self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp"])

    def test_unconfigured_remote_mta_never_contacted(self) -> None:
        local = part(
            GATEWAY,
            relayed("a@example1.com", "attacker.example"),
            relayed("b@example1.com", "a.corp"),
        )
        self.store.add(local)
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["a.corp"])
        self.pool.answer(
            "a.corp",
            Answer.found(
                [
                    part(
                        "a.corp",
                        relayed("b@example1.com", "evil.example"),
                        relayed("b@example1.com", "127.0.0.1"),
                    )
                ]
            ),
        )
        self.successResultOf(d)
        self.assertEqual(self.pool.hosts(), ["a.corp"])

    def test_referrals_to_hosts_configured_by_address(self) -> None:
        """Review m8: a Remote-MTA of "dns; [10.0.0.5]" is the inner host named "10.0.0.5"."""
        self.store.add(
            part(
                GATEWAY,
                relayed("a@example1.com", "[10.0.0.5]"),
                relayed("b@example1.com", "[IPv6:2001:DB8:0::5]"),
                relayed("c@example1.com", "[10.0.0.6]"),
                relayed("d@example1.com", "[192.0.2.9]"),
            )
        )
        d = self.gateway("10.0.0.5", "2001:db8::5", "[192.0.2.9]", "deep.corp").track(
            ENVID, SECRET_B64
        )
        # 10.0.0.6 is configured nowhere: never contacted.
        self.assertEqual(self.pool.hosts(), ["10.0.0.5", "2001:db8::5", "[192.0.2.9]"])
        self.pool.answer(
            "10.0.0.5",
            Answer.found(
                [
                    part(
                        "[10.0.0.5]",
                        relayed("a@example1.com", "[::ffff:10.0.0.99]"),
                        relayed("a@example1.com", "deep.corp"),
                    )
                ]
            ),
        )
        self.assertEqual(
            self.pool.hosts(), ["10.0.0.5", "2001:db8::5", "[192.0.2.9]", "deep.corp"]
        )
        for host in ("2001:db8::5", "[192.0.2.9]", "deep.corp"):
            self.pool.answer(host, Answer.noinfo())
        self.assertEqual(len(self.successResultOf(d).parts), 2)

    def test_own_address_never_contacted(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", "[192.0.2.1]")))
        chain = ChainConfig(deadline=self.deadline, inner=inner_hosts("192.0.2.1"))
        tracker = ChainingTracker(
            LocalTracker(self.store, GATEWAY),
            chain,
            Rewriter(),
            "[192.0.2.1]",
            reactor=self.clock,
            pool=self.pool,
        )
        self.successResultOf(tracker.track(ENVID, SECRET_B64))
        self.assertEqual(self.pool.hosts(), [])

    def test_own_name_never_contacted(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", GATEWAY)))
        d = self.gateway(GATEWAY, "a.corp").track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), [])
        self.successResultOf(d)

    def test_delivered_recipients_are_not_followed(self) -> None:
        self.store.add(
            part(
                GATEWAY,
                delivered("a@example1.com").evolve(remote_mta="dns; a.corp"),
                relayed("b@example1.com", "b.corp"),
            )
        )
        self.gateway("a.corp", "b.corp").track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["b.corp"])

    def test_path_order_is_by_depth_not_by_arrival(self) -> None:
        self.store.add(
            part(GATEWAY, relayed("a@example1.com", "a.corp"), relayed("b@example1.com", "b.corp"))
        )
        d = self.gateway("a.corp", "b.corp", "c.corp").track(ENVID, SECRET_B64)
        self.pool.answer(
            "a.corp", Answer.found([part("a.corp", relayed("a@example1.com", "c.corp"))])
        )
        self.pool.answer("c.corp", Answer.found([part("c.corp", delivered("a@example1.com"))]))
        self.pool.answer("b.corp", Answer.found([part("b.corp", delivered("b@example1.com"))]))
        reporters = [p.reporting_mta for p in self.successResultOf(d).parts]
        self.assertEqual(
            reporters, ["dns; example2.com", "dns; a.corp", "dns; b.corp", "dns; c.corp"]
        )

    def test_inner_gateway_with_several_parts(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", "a.corp")))
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        deeper = [
            part("a.corp", relayed("a@example1.com", "hidden.corp")),
            part("hidden.corp", delivered("a@example1.com")),
        ]
        self.pool.answer("a.corp", Answer.found(deeper))
        self.assertEqual(self.successResultOf(d).parts[1:], tuple(deeper))
        self.assertEqual(self.pool.hosts(), ["a.corp"], "hidden.corp is not configured here")

    def test_synchronous_answers(self) -> None:
        # A pool may answer before track() returns (a cached answer, a fake).
        self.store.add(
            part(GATEWAY, relayed("a@example1.com", "a.corp"), relayed("b@example1.com", "b.corp"))
        )
        self.pool.auto["a.corp"] = Answer.found(
            [part("a.corp", relayed("a@example1.com", "c.corp"))]
        )
        self.pool.auto["b.corp"] = Answer.noinfo()
        self.pool.auto["c.corp"] = Answer.found([part("c.corp", delivered("a@example1.com"))])
        d = self.gateway("a.corp", "b.corp", "c.corp").track(ENVID, SECRET_B64)
        self.assertEqual(sorted(self.pool.hosts()), ["a.corp", "b.corp", "c.corp"])
        reporters = [p.reporting_mta for p in self.successResultOf(d).parts]
        self.assertEqual(reporters, ["dns; example2.com", "dns; a.corp", "dns; c.corp"])


class UnknownTests(ChainTestCase):
    """No local record: fan-out, and unknown id and wrong secret answering alike."""

    def test_fanout_asks_every_inner_host(self) -> None:
        d = self.gateway("a.corp", "b.corp").track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp"])
        b = part("b.corp", delivered("a@example1.com"))
        self.pool.answer("a.corp", Answer.noinfo())
        self.pool.answer("b.corp", Answer.found([b]))
        self.assertEqual(self.successResultOf(d), Answer.found([b]))

    def test_fanout_combined_reports_as_the_gateway(self) -> None:
        d = self.gateway("a.corp", report="combined").track(ENVID, SECRET_B64)
        self.pool.answer("a.corp", Answer.found([part("a.corp", delivered("a@example1.com"))]))
        (combined,) = self.successResultOf(d).parts
        self.assertEqual(combined.reporting_mta, f"dns; {GATEWAY}")

    def test_nothing_anywhere_is_the_local_unknown_answer(self) -> None:
        for mode in ("noinfo", "opaque"):
            self.pool.calls.clear()
            local = LocalTracker(self.store, GATEWAY, mode)
            expected = self.successResultOf(local.track(ENVID, SECRET_B64))
            d = self.gateway("a.corp", "b.corp", unknown_message=mode).track(ENVID, SECRET_B64)
            self.pool.answer("a.corp", Answer.noinfo())
            self.pool.answer("b.corp", expected)  # an inner opaque answer tells nothing
            self.assertEqual(self.successResultOf(d), expected, mode)

    def test_wrong_secret_same_as_unknown(self) -> None:
        self.store.add(part(GATEWAY, relayed("a@example1.com", "a.corp")))
        tracker = self.gateway("a.corp", "b.corp")
        outcomes = []
        for envid, secret in ((ENVID, WRONG_SECRET), ("unknown@example.com", WRONG_SECRET)):
            self.pool.calls.clear()
            d = tracker.track(envid, secret)
            # With no local record the gateway asks every inner host,
            # forwarding the secret; they check it and say noinfo.
            self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp"])
            self.assertEqual({c.secret for c in self.pool.calls}, {WRONG_SECRET})
            for call in self.pool.calls:
                call.deferred.callback(Answer.noinfo())
            outcomes.append(self.successResultOf(d))
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual(outcomes[0], Answer.noinfo())

    def test_inner_failure_with_nothing_known_is_temp(self) -> None:
        # A broken inner host must not read as "no such message" (operator
        # walkthrough 1): the answer is "try again later".
        d = self.gateway("a.corp", "b.corp").track(ENVID, SECRET_B64)
        self.pool.answer("a.corp", Answer.noinfo())
        self.pool.calls[1].deferred.errback(ClientError("connection refused"))
        answer = self.successResultOf(d)
        self.assertEqual((answer.outcome, answer.reasons), (Outcome.TEMP, ("unavailable",)))
        # The same for a host answering -TEMP (say, throttling the gateway).
        self.pool.calls.clear()
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        self.pool.answer("a.corp", Answer.temp(("unavailable",), "busy"))
        self.assertEqual(self.successResultOf(d).outcome, Outcome.TEMP)

    def test_inner_silence_at_the_deadline_is_no_further_information(self) -> None:
        # RFC 3887 section 2.4: at the time limit, "no further information".
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        self.clock.advance(110)
        self.assertEqual(self.successResultOf(d), Answer.noinfo())

    def test_partial_answer_logged_as_a_warning(self) -> None:
        log = LogCapture(self)
        self.store.add(part(GATEWAY, relayed("a@example1.com", "a.corp")))
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        self.pool.calls[0].deferred.errback(ClientError("reset"))
        self.assertEqual(self.successResultOf(d).outcome, Outcome.OK, "the gateway's own part")
        summaries = [e for e in log.events if "chained" in e.get("log_format", "")]
        self.assertEqual([e["log_level"].name for e in summaries], ["warn"])

    def test_no_fanout(self) -> None:
        d = self.gateway("a.corp", fanout=False).track(ENVID, SECRET_B64)
        self.assertEqual(self.pool.hosts(), [])
        self.assertEqual(self.successResultOf(d), Answer.noinfo())

    def test_store_unavailable_passed_on(self) -> None:
        def broken(envid: str, accept: Any = None) -> defer.Deferred[Any]:
            return defer.fail(RuntimeError("disk gone"))

        self.store.lookup = broken  # type: ignore[method-assign]
        d = self.gateway("a.corp").track(ENVID, SECRET_B64)
        self.assertEqual(self.successResultOf(d).outcome, Outcome.TEMP)
        self.assertEqual(self.pool.hosts(), [])
        self.flushLoggedErrors(RuntimeError)


class RobustnessTests(ChainTestCase):
    def test_a_bug_does_not_leave_the_client_waiting(self) -> None:
        class Odd:
            def track(self, envid: str, secret: str, secure: bool = False) -> Any:
                return defer.succeed(Answer.found([object()]))  # type: ignore[list-item]

        chain = ChainConfig(deadline=self.deadline, inner=inner_hosts("a.corp"))
        tracker = ChainingTracker(Odd(), chain, Rewriter(), GATEWAY, self.clock, self.pool)
        self.failureResultOf(tracker.track(ENVID, SECRET_B64), AttributeError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class InnerFailureTests(ChainTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.log = LogCapture(self)
        self.local = part(
            GATEWAY,
            relayed("a@example1.com", "good.corp"),
            relayed("b@example1.com", "err.corp"),
            relayed("c@example1.com", "temp.corp"),
            relayed("d@example1.com", "broken.corp"),
        )
        self.store.add(self.local)
        self.good = part("good.corp", delivered("a@example1.com"))

    def test_each_failure_costs_only_its_host(self) -> None:
        from mtqpgw.client import ClientError

        d = self.gateway("good.corp", "err.corp", "temp.corp", "broken.corp").track(
            ENVID, SECRET_B64
        )
        self.pool.answer("err.corp", Answer.error(("unsupported",), "go away"))
        self.pool.answer("temp.corp", Answer.temp(("unavailable",), "busy"))
        self.pool.fail("broken.corp", ClientError("the server sent a line longer than 998 octets"))
        self.pool.answer("good.corp", Answer.found([self.good]))
        self.assertEqual(self.successResultOf(d), Answer.found([self.local, self.good]))
        text = self.log.text()
        for host in ("err.corp", "temp.corp", "broken.corp"):
            self.assertIn(host, text)
        self.assertIn("longer than 998 octets", text)
        self.assertIn(ENVID, text)
        self.assertNotIn(SECRET_B64, text, "the secret is never logged")
        self.assertFalse(
            any(SECRET_B64 in repr(event) for event in self.log.events), "not even in fields"
        )

    def test_deadline_is_logged_per_host(self) -> None:
        self.deadline = 5
        d = self.gateway("good.corp").track(ENVID, SECRET_B64)
        self.clock.advance(5)
        self.successResultOf(d)
        self.assertIn("good.corp", self.log.text())
        self.assertIn("deadline", self.log.text())

    def test_pool_raising_costs_that_host(self) -> None:
        class Raising(FakePool):
            def track(self, inner: InnerHost, *args: Any, **kwargs: Any) -> Any:
                if inner.name == "err.corp":
                    raise RuntimeError("bug")
                return super().track(inner, *args, **kwargs)

        self.pool = Raising()
        d = self.gateway("good.corp", "err.corp").track(ENVID, SECRET_B64)
        self.pool.answer("good.corp", Answer.found([self.good]))
        self.assertEqual(self.successResultOf(d), Answer.found([self.local, self.good]))
        self.assertIn("err.corp", self.log.text())


class HostileInnerTests(ChainTestCase):
    """Review M2: a hostile inner host (evil.corp) answering for inner.corp and for the gateway."""

    def setUp(self) -> None:
        super().setUp()
        self.log = LogCapture(self)
        self.local = part(
            GATEWAY,
            relayed("a@example1.com", "inner.corp"),
            relayed("b@example1.com", "evil.corp"),
        )
        self.store.add(self.local)
        self.inner = part("inner.corp", delivered("a@example1.com"))
        self.evil = part("evil.corp", delivered("b@example1.com"))
        failed = RecipientStatus(
            original_recipient="rfc822; a@example1.com",
            final_recipient="rfc822; a@example1.com",
            action=Action.FAILED,
            status="5.1.1",
        )
        self.forged_inner = TrackingStatus(
            ENVID, "dns; inner.corp", extensions=(("X-Injected", "1"),), recipients=(failed,)
        )
        # Claims to be the gateway, adds a recipient and refers it to a
        # configured host that nobody else named.
        self.forged_gateway = part(
            GATEWAY.upper() + ".",
            relayed("injected@example1.com", "third.corp"),
        )
        self.other_message = part("evil.corp", delivered("a@example1.com"), envid="other-" + ENVID)

    def run_query(self, report: str) -> Answer:
        d = self.gateway("inner.corp", "evil.corp", "third.corp", report=report).track(
            ENVID, SECRET_B64
        )
        self.assertEqual(self.pool.hosts(), ["inner.corp", "evil.corp"])
        self.pool.answer(
            "evil.corp",
            Answer.found([self.forged_inner, self.evil, self.forged_gateway, self.other_message]),
        )
        self.pool.answer("inner.corp", Answer.found([self.inner]))
        return self.successResultOf(d)

    def test_hops(self) -> None:
        answer = self.run_query("hops")
        # inner.corp's part is its own; evil.corp's claim to be inner.corp
        # is dropped (it was once kept as a part of evil.corp's answer);
        # nothing names the gateway but its own part.
        self.assertEqual(answer.parts, (self.local, self.inner, self.evil))
        self.assertEqual(self.pool.hosts(), ["inner.corp", "evil.corp"], "third.corp not asked")
        text = self.log.text()
        self.assertIn("names this gateway", text)
        self.assertIn("names another inner host", text)
        self.assertIn("Original-Envelope-Id", text)
        self.assertIn("evil.corp", text)

    def test_combined(self) -> None:
        (combined,) = self.run_query("combined").parts
        self.assertEqual(combined.reporting_mta, f"dns; {GATEWAY}")
        self.assertEqual(
            combined.recipients, (delivered("a@example1.com"), delivered("b@example1.com"))
        )
        self.assertEqual(combined.extensions, ())

    def test_gateway_addresses_and_spellings_refused(self) -> None:
        """Review M2: the gateway's own address, or its name in a comment or quotes, is refused."""
        tracker = self.gateway("inner.corp", "evil.corp")
        tracker = ChainingTracker(
            tracker.local,
            ChainConfig(inner=inner_hosts("inner.corp", "evil.corp")),
            Rewriter(),
            GATEWAY,
            reactor=self.clock,
            pool=self.pool,
            addresses=listen_addresses(["tcp:1038:interface=192.0.2.7", "tcp6:1038"]),
        )
        self.assertEqual(tracker.addresses, {"192.0.2.7"})
        d = tracker.track(ENVID, SECRET_B64)
        forged = [
            TrackingStatus(ENVID, reporter, recipients=self.forged_gateway.recipients)
            for reporter in (
                "dns; [192.0.2.7]",
                f"dns; {GATEWAY} (gateway)",
                f'dns; "{GATEWAY}"',
                f"dns; {GATEWAY};",
                f"dns;{GATEWAY}\u200b",
            )
        ]
        self.pool.answer("evil.corp", Answer.found([*forged, self.evil]))
        self.pool.answer("inner.corp", Answer.found([self.inner]))
        self.assertEqual(self.successResultOf(d).parts, (self.local, self.inner, self.evil))
        self.assertEqual(self.pool.hosts(), ["inner.corp", "evil.corp"], "third.corp not asked")
        text = self.log.text()
        self.assertEqual(text.count("names this gateway"), 4)
        self.assertEqual(text.count("not a plain host name"), 1)

    def test_rewriting_inner_names_to_the_gateways_is_the_operators_choice(self) -> None:
        """Seed example 12 rewrites an inner name to the gateway's: the screen runs before.

        An inner part made to read as the gateway by a rule the operator wrote
        is kept (after the gateway's own part, never merged into it); an inner
        part that names the gateway itself is still refused.
        """
        rules = (RewriteRule("*.corp", GATEWAY),)
        d = self.gateway("inner.corp", "evil.corp", report="hops", rules=rules).track(
            ENVID, SECRET_B64
        )
        self.pool.answer("evil.corp", Answer.found([self.forged_gateway, self.evil]))
        self.pool.answer("inner.corp", Answer.found([self.inner]))
        parts = self.successResultOf(d).parts
        rewrite = Rewriter(rules).part
        self.assertEqual(parts, tuple(map(rewrite, (self.local, self.inner, self.evil))))
        self.assertEqual([p.reporting_mta for p in parts], [f"dns; {GATEWAY}"] * 3)
        self.assertIn("names this gateway", self.log.text())

    def test_listen_addresses(self) -> None:
        self.assertEqual(
            listen_addresses(
                [
                    "tcp:1038:interface=192.0.2.1",
                    "tcp6:port=1038:interface=2001\\:DB8\\:\\:1",
                    "tcp:1038",
                    "tcp:1038:interface=0.0.0.0",
                    "tcp6:1038:interface=\\:\\:",
                    "tcp:1038:interface=gw.example.com",
                    "unix:/run/mtqp.sock",
                ]
            ),
            {"192.0.2.1", "2001:db8::1"},
        )

    def test_inner_gateway_keeps_the_parts_it_passes_on(self) -> None:
        """An inner host that chains itself: the parts from behind it stay in its answer."""
        d = self.gateway("inner.corp", "evil.corp").track(ENVID, SECRET_B64)
        behind = part("hidden.corp", delivered("b@example1.com"))
        # evil.corp also passes on a (stale) copy of inner.corp's part: a
        # configured host the gateway asks itself, so that copy is dropped
        # (review M2; it was once kept).
        stale = part("inner.corp", relayed("a@example1.com", "hidden.corp"))
        self.pool.answer("evil.corp", Answer.found([self.evil, behind, stale]))
        self.pool.answer("inner.corp", Answer.found([self.inner]))
        self.assertEqual(
            self.successResultOf(d).parts, (self.local, self.inner, self.evil, behind)
        )

    def test_a_host_may_not_speak_as_a_configured_host_not_asked(self) -> None:
        """Review M2: evil.corp's part as third.corp (configured, not asked) is dropped too."""
        d = self.gateway("inner.corp", "evil.corp", "third.corp").track(ENVID, SECRET_B64)
        as_third = part("Third.Corp.", relayed("b@example1.com", "inner.corp"))
        self.pool.answer("evil.corp", Answer.found([as_third, self.evil]))
        self.pool.answer("inner.corp", Answer.found([self.inner]))
        self.assertEqual(self.successResultOf(d).parts, (self.local, self.inner, self.evil))
        self.assertIn("names another inner host", self.log.text())


def big_part(reporter: str, size: int, *extra: RecipientStatus) -> TrackingStatus:
    """A part of about ``size`` octets as serialised: one recipient with long X- fields."""
    value = "x" * 900
    count = max(1, size // 915)
    block = delivered("big@example1.com").evolve(
        extensions=tuple((f"X-F{i}", value) for i in range(count))
    )
    return part(reporter, block, *extra)


class AnswerSizeTests(ChainTestCase):
    """Review M5: what one TRACK takes from all its inner hosts is capped."""

    def setUp(self) -> None:
        super().setUp()
        self.log = LogCapture(self)
        self.local = part(
            GATEWAY,
            relayed("a@example1.com", "a.corp"),
            relayed("b@example1.com", "b.corp"),
            relayed("c@example1.com", "c.corp"),
        )
        self.store.add(self.local)

    def test_part_size_is_the_serialised_size(self) -> None:
        from mtqpgw.status import serialise_tracking_status

        for ts in (
            self.local,
            big_part("a.corp", 50_000),
            part(
                "a.corp", delivered("a@example1.com").evolve(diagnostic_code="smtp; " + "w " * 400)
            ),
        ):
            lines = serialise_tracking_status(ts)
            octets = sum(len(line) + 2 for line in lines)
            estimate = part_size(ts)
            self.assertLessEqual(abs(estimate[0] - (len(lines) + 4)), 2)
            self.assertLessEqual(abs(estimate[1] - (octets + 80)), octets // 50 + 10)

    def test_part_size_lines_are_build_reports(self) -> None:
        """Review: each part in build_report costs its body, two lines of head and two blanks."""
        from mtqpgw.report import build_report

        small = part("a.corp", delivered("a@example1.com"))
        for parts in ([small], [small] * 10, [small] * 1_000, [self.local, small, self.local]):
            # The report's own lines: its Content-Type, a blank, the close.
            self.assertEqual(
                sum(part_size(p)[0] for p in parts) + 3, len(build_report(parts)), len(parts)
            )

    def test_default_cap_is_a_mebibyte(self) -> None:
        tracker = self.gateway("a.corp", "b.corp", "c.corp")
        self.assertEqual((tracker.max_inner_octets, tracker.max_inner_lines), (1 << 20, 20_000))
        d = tracker.track(ENVID, SECRET_B64)
        a = big_part("a.corp", 500_000)
        b = big_part("b.corp", 500_000)
        c = big_part("c.corp", 500_000, relayed("c@example1.com", "d.corp"))
        self.pool.answer("a.corp", Answer.found([a]))
        self.pool.answer("c.corp", Answer.found([c]))
        self.pool.answer("b.corp", Answer.found([b]))
        # a.corp and c.corp came first and fill the mebibyte; b.corp's part
        # is dropped, logged, and the answer is built from the rest.
        self.assertEqual(self.successResultOf(d).parts, (self.local, a, c))
        self.assertIn("dropped 1 part(s) from inner host b.corp", self.log.text())

    def test_dropped_parts_are_not_followed(self) -> None:
        tracker = self.gateway("a.corp", "b.corp", "c.corp", "d.corp")
        tracker.max_inner_octets = part_size(big_part("a.corp", 3_000))[1]
        d = tracker.track(ENVID, SECRET_B64)
        a = big_part("a.corp", 3_000)
        self.pool.answer("a.corp", Answer.found([a]))
        # Past the cap: a small part later is dropped too, and its referral
        # to d.corp is never followed.
        small = part("b.corp", relayed("b@example1.com", "d.corp"))
        self.pool.answer("b.corp", Answer.found([small]))
        self.pool.answer("c.corp", Answer.noinfo())
        self.assertEqual(self.successResultOf(d).parts, (self.local, a))
        self.assertEqual(self.pool.hosts(), ["a.corp", "b.corp", "c.corp"])

    def test_parts_per_answer_capped(self) -> None:
        """Review M5: an answer of many small parts, under the size caps, is cut at 200 parts."""
        self.assertEqual(MAX_PARTS_PER_ANSWER, 200)
        d = self.gateway("a.corp", "b.corp", "c.corp").track(ENVID, SECRET_B64)
        many = [part(f"r{i}.a.corp", delivered(f"u{i}@example1.com")) for i in range(250)]
        self.pool.answer("a.corp", Answer.found(many))
        self.pool.answer("b.corp", Answer.noinfo())
        self.pool.answer("c.corp", Answer.noinfo())
        self.assertEqual(self.successResultOf(d).parts, (self.local, *many[:200]))
        self.assertIn(
            "dropped 50 part(s) from inner host a.corp: an inner answer brings at most 200",
            self.log.text(),
        )

    def test_line_cap(self) -> None:
        tracker = self.gateway("a.corp", "b.corp", "c.corp", max_inner_lines=30)
        d = tracker.track(ENVID, SECRET_B64)
        first = part("a.corp", *(delivered(f"u{i}@example1.com") for i in range(2)))
        many = part("b.corp", *(delivered(f"v{i}@example1.com") for i in range(3)))
        self.pool.answer("a.corp", Answer.found([first, many]))
        self.pool.answer("b.corp", Answer.noinfo())
        self.pool.answer("c.corp", Answer.noinfo())
        self.assertEqual(self.successResultOf(d).parts, (self.local, first))


class ServiceTests(ChainTestCase):
    def test_service_is_the_pools(self) -> None:
        tracker = self.gateway("a.corp")
        self.assertIs(tracker.service, self.pool.service)

    def test_default_pool(self) -> None:
        chain = ChainConfig(inner=inner_hosts("a.corp"))
        tracker = ChainingTracker(
            LocalTracker(self.store, GATEWAY), chain, Rewriter(), GATEWAY, reactor=self.clock
        )
        self.assertTrue(service.IService.providedBy(tracker.service))
        self.assertEqual(tracker.deadline, 110.0)
