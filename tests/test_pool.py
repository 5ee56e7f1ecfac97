"""Tests for mtqpgw.pool: reusing MTQP sessions towards inner hosts, with fake sessions and a Clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.pool import PoolClosed, PoolFull, SessionPool, effective_tls, key_for
from mtqpgw.status import Answer, TrackingStatus


@dataclass(frozen=True)
class Inner:
    """The shape of a [[chain.inner]] entry, as the pool reads it."""

    name: str
    host: str | None = None
    port: int = 1038
    tls: str = "off"
    cafile: str | None = None


class FakeTransport:
    def __init__(self, session: FakeSession) -> None:
        self.session = session
        self.aborted = False

    def abortConnection(self) -> None:
        # Like a TCP transport: the loss is reported on a later turn.
        self.aborted = True
        self.session.clock.callLater(0, self.session.lost, "aborted")


class FakeSession:
    """Stands in for client.MTQPClientProtocol: TRACKs answered by the test."""

    def __init__(self, label: str, clock: task.Clock) -> None:
        self.label = label
        self.clock = clock
        self.transport = FakeTransport(self)
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.asked: list[tuple[str, str, defer.Deferred[Answer]]] = []
        self.quits = 0

    @property
    def idle(self) -> bool:
        return not self.closed.called and not any(not d.called for _, _, d in self.asked)

    def track(self, envid: str, secret: str) -> defer.Deferred[Answer]:
        assert self.idle, "a pooled session must never get two TRACKs at once"
        # Like the real client: cancelling a command aborts the connection.
        d: defer.Deferred[Answer] = defer.Deferred(lambda _: self.transport.abortConnection())
        self.asked.append((envid, secret, d))
        return d

    def answer(self, answer: Answer) -> None:
        self.asked[-1][2].callback(answer)

    def fail(self, exc: Exception) -> None:
        self.asked[-1][2].errback(exc)

    def quit(self) -> defer.Deferred[None]:
        self.quits += 1
        self.lost("quit")
        return self.closed

    def lost(self, why: str) -> None:
        # The client fails what is outstanding first, then fires ``closed``.
        for _, _, d in self.asked:
            if not d.called:
                d.errback(ConnectionError(why))
        if not self.closed.called:
            self.closed.callback(None)


class FakeConnector:
    """Records connection attempts; the test decides when and how each completes."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.attempts: list[tuple[Any, str, defer.Deferred[Any]]] = []
        self.cancelled = 0
        self.made: list[FakeSession] = []

    def __call__(self, inner: Any, mode: str) -> defer.Deferred[Any]:
        def cancel(_: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self.attempts.append((inner, mode, d))
        return d

    def complete(self, index: int = -1) -> FakeSession:
        session = FakeSession(f"s{len(self.made)}", self.clock)
        self.made.append(session)
        self.attempts[index][2].callback(session)
        return session


def found(envid: str = "e@example.com") -> Answer:
    return Answer.found([TrackingStatus(envid, "dns; inner.example")])


class PoolTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.connector = FakeConnector(self.clock)
        self.inner = Inner("inner.example", "192.0.2.5")

    def make_pool(self, **kwargs: Any) -> SessionPool:
        return SessionPool(self.clock, self.connector, **kwargs)


class ReuseTests(PoolTestCase):
    def test_second_query_reuses_the_session(self) -> None:
        pool = self.make_pool()
        d1 = pool.track(self.inner, "e@example.com", "c2VjcmV0")
        self.assertEqual(len(self.connector.attempts), 1)
        session = self.connector.complete()
        self.assertEqual(session.asked[0][:2], ("e@example.com", "c2VjcmV0"))
        session.answer(found())
        self.assertEqual(self.successResultOf(d1), found())
        self.assertEqual(pool.stats(self.inner)["idle"], 1)

        d2 = pool.track(self.inner, "f@example.com", "c2VjcmV0")
        self.assertEqual(len(self.connector.attempts), 1, "no new connection")
        self.assertEqual(len(session.asked), 2)
        session.answer(Answer.noinfo())
        self.assertEqual(self.successResultOf(d2), Answer.noinfo())

    def test_negative_answer_keeps_the_session(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.answer(Answer.temp(("unavailable",), "busy"))
        self.successResultOf(d)
        self.assertFalse(session.transport.aborted)
        self.assertEqual(pool.stats(self.inner), {"open": 1, "idle": 1, "busy": 0, "waiting": 0})

    def test_busy_session_is_not_shared(self) -> None:
        pool = self.make_pool()
        pool.track(self.inner, "e@example.com", "x")
        self.connector.complete()
        pool.track(self.inner, "f@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2, "a second session for the second query")
        self.assertEqual(pool.stats(self.inner)["open"], 2)

    def test_failed_session_is_discarded(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.fail(ValueError("garbage"))
        self.failureResultOf(d, ValueError)
        self.assertTrue(session.transport.aborted)
        self.assertEqual(pool.stats(self.inner)["open"], 0)
        pool.track(self.inner, "e@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2, "a fresh connection, not the bad one")

    def test_session_closed_by_server_is_forgotten(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.answer(found())
        self.successResultOf(d)
        session.lost("autologout")
        self.assertEqual(pool.stats(self.inner), {"open": 0, "idle": 0, "busy": 0, "waiting": 0})
        pool.track(self.inner, "e@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_connection_failure_reaches_the_query(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        self.connector.attempts[0][2].errback(ConnectionRefusedError())
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(pool.stats(self.inner)["open"], 0)

    def test_connector_raising_is_a_failed_query(self) -> None:
        def broken(inner: Any, mode: str) -> defer.Deferred[Any]:
            raise RuntimeError("cannot build endpoint")

        pool = SessionPool(self.clock, broken)
        self.failureResultOf(pool.track(self.inner, "e@example.com", "x"), RuntimeError)
        self.assertEqual(pool.stats(self.inner)["open"], 0)


class LimitTests(PoolTestCase):
    def test_bounded_sessions_and_fifo_waiters(self) -> None:
        pool = self.make_pool(max_per_host=2)
        d1 = pool.track(self.inner, "1@example.com", "x")
        d2 = pool.track(self.inner, "2@example.com", "x")
        d3 = pool.track(self.inner, "3@example.com", "x")
        d4 = pool.track(self.inner, "4@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual(pool.stats(self.inner)["waiting"], 2)
        s1 = self.connector.complete(0)
        s2 = self.connector.complete(1)
        s2.answer(found("2@example.com"))
        self.successResultOf(d2)
        # The released session goes straight to the first waiter.
        self.assertEqual(s2.asked[-1][0], "3@example.com")
        s1.answer(found("1@example.com"))
        self.successResultOf(d1)
        self.assertEqual(s1.asked[-1][0], "4@example.com")
        self.assertEqual(len(self.connector.attempts), 2, "never more than max_per_host")
        s2.answer(found())
        s1.answer(found())
        self.successResultOf(d3)
        self.successResultOf(d4)
        self.assertEqual(pool.stats(self.inner), {"open": 2, "idle": 2, "busy": 0, "waiting": 0})

    def test_queue_is_bounded(self) -> None:
        pool = self.make_pool(max_per_host=1, max_waiting=1)
        pool.track(self.inner, "1@example.com", "x")
        pool.track(self.inner, "2@example.com", "x")
        self.failureResultOf(pool.track(self.inner, "3@example.com", "x"), PoolFull)

    def test_freed_slot_connects_for_a_waiter(self) -> None:
        pool = self.make_pool(max_per_host=1)
        d1 = pool.track(self.inner, "1@example.com", "x")
        d2 = pool.track(self.inner, "2@example.com", "x")
        self.connector.attempts[0][2].errback(ConnectionRefusedError())
        self.failureResultOf(d1, ConnectionRefusedError)
        self.assertEqual(len(self.connector.attempts), 2, "the waiter now connects")
        session = self.connector.complete()
        session.answer(found())
        self.successResultOf(d2)

    def test_retired_after_max_uses(self) -> None:
        pool = self.make_pool(max_uses=2)
        for _ in range(2):
            d = pool.track(self.inner, "e@example.com", "x")
            if not self.connector.made:
                self.connector.complete()
            self.connector.made[0].answer(found())
            self.successResultOf(d)
        self.assertEqual(self.connector.made[0].quits, 1, "closed politely after its last use")
        pool.track(self.inner, "e@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_retired_after_max_age(self) -> None:
        pool = self.make_pool(max_age=100, idle_timeout=60)
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        self.clock.advance(99)
        session.answer(found())
        self.successResultOf(d)
        self.clock.advance(2)
        pool.track(self.inner, "e@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2, "too old to reuse")
        self.assertEqual(session.quits, 1)


class IdleTimeoutTests(PoolTestCase):
    def used_once(self) -> tuple[SessionPool, Any]:
        """A pool (idle_timeout 60) whose one session has answered one TRACK and is idle."""
        pool = self.make_pool(idle_timeout=60)
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.answer(found())
        self.successResultOf(d)
        return pool, session

    def use_again(self, pool: SessionPool, session: Any) -> None:
        d = pool.track(self.inner, "e@example.com", "x")
        session.answer(found())
        self.successResultOf(d)

    def assert_closed_in(self, session: Any, seconds: float) -> None:
        """``session`` is still open ``seconds`` - 0.1 from now, and QUIT at ``seconds``."""
        self.clock.advance(seconds - 0.1)
        self.assertEqual(session.quits, 0)
        self.clock.advance(0.1)
        self.assertEqual(session.quits, 1)

    def test_idle_session_closed_after_timeout(self) -> None:
        pool, session = self.used_once()
        self.assert_closed_in(session, 60)
        self.assertEqual(pool.stats(self.inner)["open"], 0)

    def test_reuse_resets_the_idle_timer(self) -> None:
        pool, session = self.used_once()
        self.clock.advance(50)
        self.use_again(pool, session)
        self.assert_closed_in(session, 60)

    def test_busy_when_the_timer_fires(self) -> None:
        # A query outlasting idle_timeout: the session is not closed under
        # it, and is closed idle_timeout after it goes idle again.
        pool, session = self.used_once()
        self.clock.advance(30)
        d = pool.track(self.inner, "e@example.com", "x")
        self.clock.advance(40)  # the first timer fires mid-query
        self.assertEqual(session.quits, 0)
        session.answer(found())
        self.successResultOf(d)
        self.assert_closed_in(session, 60)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed_idle_timeout_after_its_last_of_many_uses(self) -> None:
        pool, session = self.used_once()
        for _ in range(100):
            self.clock.advance(1)
            self.use_again(pool, session)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assert_closed_in(session, 60)

    def test_default_idle_timeout_is_well_under_autologout(self) -> None:
        self.assertLess(SessionPool(self.clock).idle_timeout, 600 / 2)

    def test_default_answer_caps_bound_the_stall(self) -> None:
        """Review M5: each inner answer is at most 512 KiB and 10,000 lines.

        A report about a message to 1,000 recipients, every field present,
        fits (about 370 KiB, 9,000 lines); the old 4 MiB cap let one answer
        hold the reactor for over a second.
        """
        from mtqpgw.report import response_for_answer
        from mtqpgw.status import Action, RecipientStatus

        pool = SessionPool(self.clock)
        self.assertEqual((pool.max_octets, pool.max_lines), (512 * 1024, 10_000))
        blocks = tuple(
            RecipientStatus(
                original_recipient=f"rfc822; user{i:04d}@example1.com",
                final_recipient=f"rfc822; user{i:04d}@mbox.example1.com",
                action=Action.FAILED,
                status="5.1.1 (Mailbox unavailable)",
                remote_mta="dns; mx1.corp.example.com",
                diagnostic_code=f"smtp; 550 5.1.1 <user{i:04d}@example1.com>: Recipient "
                "address rejected: User unknown in local recipient table",
                last_attempt_date="Mon, 30 Nov 2026 19:15:03 -0500",
            )
            for i in range(1000)
        )
        report = TrackingStatus("e@example.com", "dns; mx1.corp.example.com", recipients=blocks)
        response = response_for_answer(Answer.found([report]))
        self.assertLess(len(response.to_bytes()), pool.max_octets * 3 // 4)
        self.assertLess(len(response.lines or ()), pool.max_lines)


class CancelTests(PoolTestCase):
    def test_cancel_while_connecting_aborts_the_attempt(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.connector.cancelled, 1)
        self.assertEqual(pool.stats(self.inner)["open"], 0)

    def test_cancel_while_waiting_for_the_answer_aborts_the_session(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(session.transport.aborted)
        self.assertEqual(pool.stats(self.inner)["open"], 0)
        pool.track(self.inner, "e@example.com", "x")
        self.assertEqual(len(self.connector.attempts), 2, "the aborted session is not reused")

    def test_cancel_on_a_reused_session_aborts_it(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.answer(found())
        self.successResultOf(d)
        d = pool.track(self.inner, "e@example.com", "x")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(session.transport.aborted)

    def test_cancel_while_queued_leaves_the_queue(self) -> None:
        pool = self.make_pool(max_per_host=1)
        d1 = pool.track(self.inner, "1@example.com", "x")
        d2 = pool.track(self.inner, "2@example.com", "x")
        d2.cancel()
        self.failureResultOf(d2, defer.CancelledError)
        self.assertEqual(pool.stats(self.inner)["waiting"], 0)
        session = self.connector.complete()
        session.answer(found())
        self.successResultOf(d1)
        self.assertEqual(len(session.asked), 1, "the cancelled query never ran")
        self.assertEqual(pool.stats(self.inner)["idle"], 1)

    def test_cancel_a_waiter_that_is_connecting(self) -> None:
        pool = self.make_pool(max_per_host=1)
        d1 = pool.track(self.inner, "1@example.com", "x")
        d2 = pool.track(self.inner, "2@example.com", "x")
        self.connector.attempts[0][2].errback(ConnectionRefusedError())
        self.failureResultOf(d1)
        self.assertEqual(len(self.connector.attempts), 2)
        d2.cancel()
        self.failureResultOf(d2, defer.CancelledError)
        self.assertEqual(self.connector.cancelled, 1)
        self.assertEqual(pool.stats(self.inner)["open"], 0)


class TLSKeyTests(PoolTestCase):
    def test_secure_upgrades_off_to_opportunistic(self) -> None:
        self.assertEqual(effective_tls(Inner("a", tls="off"), secure=True), "opportunistic")
        self.assertEqual(effective_tls(Inner("a", tls="off"), secure=False), "off")
        self.assertEqual(effective_tls(Inner("a", tls="required"), secure=False), "required")
        self.assertEqual(
            effective_tls(Inner("a", tls="opportunistic"), secure=True), "opportunistic"
        )

    def test_secure_and_plain_sessions_pooled_apart(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x", secure=False)
        plain = self.connector.complete()
        plain.answer(found())
        self.successResultOf(d)
        pool.track(self.inner, "e@example.com", "x", secure=True)
        self.assertEqual(len(self.connector.attempts), 2, "the plain session is not used")
        self.assertEqual(self.connector.attempts[1][1], "opportunistic")
        self.assertEqual(pool.stats(self.inner, secure=False)["idle"], 1)

    def test_tls_hosts_share_sessions_across_client_security(self) -> None:
        inner = Inner("tls.example", tls="required")
        pool = self.make_pool()
        d = pool.track(inner, "e@example.com", "x", secure=False)
        session = self.connector.complete()
        self.assertEqual(self.connector.attempts[0][1], "required")
        session.answer(found())
        self.successResultOf(d)
        pool.track(inner, "e@example.com", "x", secure=True)
        self.assertEqual(len(self.connector.attempts), 1)

    def test_key_normalises_the_name(self) -> None:
        key = key_for(Inner("Smtp.Corp.Example.", None, 1038))
        self.assertEqual(
            (key.name, key.host, key.port), ("smtp.corp.example", "smtp.corp.example", 1038)
        )

    def test_required_without_context_fails_only_that_query(self) -> None:
        pool = SessionPool(self.clock)
        # No mtqpgw.tls context for this host: the default connector refuses
        # to go on in the clear.
        import mtqpgw.pool as pool_module

        self.patch(pool_module, "tls_context_for", lambda inner, mode: None)
        failure = self.failureResultOf(
            pool.track(Inner("tls.example", "127.0.0.1", 1, tls="required"), "e@example.com", "x")
        )
        self.assertIn("TLS is required", failure.getErrorMessage())


class ServiceTests(PoolTestCase):
    def test_stop_closes_idle_and_fails_waiters(self) -> None:
        pool = self.make_pool(max_per_host=1)
        pool.service.startService()
        d1 = pool.track(self.inner, "1@example.com", "x")
        s1 = self.connector.complete()
        s1.answer(found())
        self.successResultOf(d1)
        other = Inner("other.example")
        d2 = pool.track(other, "2@example.com", "x")
        s2 = self.connector.complete()
        d3 = pool.track(other, "3@example.com", "x")
        stopped = pool.service.stopService()
        self.successResultOf(stopped)
        self.assertEqual(s1.quits, 1, "idle session closed")
        self.failureResultOf(d3, PoolClosed)
        self.assertNoResult(d2)  # a query already running is left to finish
        s2.answer(found())
        self.successResultOf(d2)
        self.assertEqual(s2.quits, 1, "closed once its answer came in")
        self.failureResultOf(pool.track(self.inner, "e@example.com", "x"), PoolClosed)

    def test_stop_aborts_sessions_that_do_not_close(self) -> None:
        pool = self.make_pool(close_timeout=5)
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.answer(found())
        self.successResultOf(d)
        # A session whose QUIT does not close it.
        session.quit = lambda: defer.Deferred()  # type: ignore[method-assign]
        stopped = pool.close()
        self.assertNoResult(stopped)
        self.clock.advance(5)
        self.successResultOf(stopped)
        self.assertTrue(session.transport.aborted)

    def test_failure_results_are_not_swallowed(self) -> None:
        pool = self.make_pool()
        d = pool.track(self.inner, "e@example.com", "x")
        session = self.connector.complete()
        session.fail(ValueError("over-long line"))
        failure = self.failureResultOf(d)
        self.assertIsInstance(failure, Failure)
        self.assertEqual(failure.getErrorMessage(), "over-long line")
