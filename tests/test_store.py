"""Tests for mtqpgw.store: the SQLite tracking store and the LocalTracker."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mtqpgw import store as store_module
from mtqpgw.certifier import certifier_for
from mtqpgw.interfaces import ITracker
from mtqpgw.status import Action, Answer, Outcome, RecipientStatus, TrackingStatus
from mtqpgw.store import (
    OPAQUE_RECIPIENT,
    SCHEMA_VERSION,
    ITrackingStore,
    LocalTracker,
    SQLiteStore,
    SQLiteWriter,
    StoredMessage,
    StoreError,
    StoreService,
    merge_recipients,
    select_message,
)

SECRET = b"abcdefgh\n"
SECRET_B64 = "YWJjZGVmZ2gK"  # base64 of SECRET, as a TRACK line carries it
WRONG_B64 = "YWJjZGVmZ2g="  # base64 of "abcdefg"
CERTIFIER = certifier_for(SECRET)
START = 1_800_000_000.0  # the Clock's time in these tests
DAY = 86400


def recipient(
    address: str,
    action: str = "delivered",
    status: str = "2.0.0",
    original: str | None = None,
    **fields: Any,
) -> RecipientStatus:
    return RecipientStatus(
        final_recipient=f"rfc822; {address}",
        original_recipient=f"rfc822; {original}" if original else None,
        action=Action(action),
        status=status,
        **fields,
    )


def message(
    envid: str = "12345-20010101@example.com",
    expires: float = START + DAY,
    recipients: tuple[RecipientStatus, ...] | None = None,
    **fields: Any,
) -> StoredMessage:
    if recipients is None:
        recipients = (recipient("user1@example1.com", original="user1@example1.com"),)
    values: dict[str, Any] = {
        "certifier": CERTIFIER,
        "arrival_date": "Mon, 30 Nov 2026 15:15:15 -0500",
        "received_from_mta": "dns; client.example.net",
    }
    values.update(fields)
    return StoredMessage(envid=envid, expires=int(expires), recipients=recipients, **values)


class MergeRecipientsTests(SynchronousTestCase):
    """merge_recipients: the update rule of a re-import, without a database."""

    def test_replace_keep_append(self) -> None:
        a = recipient("a@x", original="a@x")
        b = recipient("b@x", original="b@x")
        c = recipient("c@x")  # no ORCPT: matched by Final-Recipient
        a2 = recipient("a@x", "failed", "5.1.1", original="a@x")
        c2 = recipient("c@x", "delayed", "4.4.1")
        d = recipient("d@x", original="d@x")
        self.assertEqual(merge_recipients((a, b, c), (d, c2, a2)), (a2, b, c2, d))

    def test_key_domain_case_insensitive(self) -> None:
        old = recipient("user@EXAMPLE.com", original="user@EXAMPLE.com")
        new = recipient("user@example.com", "failed", "5.0.0", original="user@example.com")
        self.assertEqual(merge_recipients((old,), (new,)), (new,))

    def test_group_replaced_in_place(self) -> None:
        # An expanded alias: several final recipients share one ORCPT.
        x1 = recipient("x1@l", original="list@l")
        x2 = recipient("x2@l", original="list@l")
        other = recipient("o@l", original="o@l")
        y = recipient("y@l", "relayed", "2.1.9", original="list@l")
        self.assertEqual(merge_recipients((x1, other, x2), (y,)), (y, other))


_addresses = st.sampled_from(["a@x", "b@x", "B@X", "c@y", "d@z"])
_recipients = st.builds(
    recipient,
    _addresses,
    st.sampled_from(["delivered", "relayed", "failed"]),
    st.sampled_from(["2.0.0", "5.1.1"]),
    st.none() | _addresses,
)
_messages = st.builds(
    message,
    st.sampled_from(["e1", "e2", "e3"]),
    st.just(START + DAY),
    st.lists(_recipients, min_size=1, max_size=4).map(tuple),
)


class UpsertModelTests(SynchronousTestCase):
    """The SQL gives what applying merge_recipients in order gives, batch after batch."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(_messages, max_size=6), max_size=4))
    def test_sql_matches_model(self, batches: list[list[StoredMessage]]) -> None:
        model: dict[str, StoredMessage] = {}
        with SQLiteWriter(":memory:", clock=lambda: START) as writer:
            for batch in batches:
                writer.upsert(batch)
                for m in batch:
                    old = model.get(m.envid)
                    merged = merge_recipients(old.recipients if old else (), m.recipients)
                    model[m.envid] = StoredMessage(
                        envid=m.envid,
                        certifier=m.certifier,
                        expires=m.expires,
                        recipients=merged,
                        arrival_date=m.arrival_date,
                        received_from_mta=m.received_from_mta,
                    )
            cursor = writer._connection.cursor()  # type: ignore[union-attr]
            for envid in ("e1", "e2", "e3"):
                self.assertEqual(select_message(cursor, envid, START), model.get(envid))


class StoreTestMixin:
    """Start a file store in the test's temp dir on a Clock; stop it afterwards."""

    def make_store(
        self, clock: Clock | None = None, path: str | None = None, **kw: Any
    ) -> tuple[SQLiteStore, Clock]:
        if clock is None:
            clock = Clock()
            clock.advance(START)
        store = SQLiteStore(path or self.db_path(), reactor=clock, **kw)  # type: ignore[attr-defined]
        return store, clock

    def db_path(self) -> str:
        directory = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(directory)
        return os.path.join(directory, "store.sqlite3")

    async def started(self, **kw: Any) -> tuple[SQLiteStore, Clock]:
        store, clock = self.make_store(**kw)
        await store.start()
        self.addCleanup(store.stop)  # type: ignore[attr-defined]
        return store, clock


def deferred_test(f: Any) -> Any:
    """Run an async test method as a Deferred (trial waits on it)."""

    def wrapper(self: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(f(self))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


class SQLiteStoreTests(StoreTestMixin, TestCase):
    @deferred_test
    async def test_interface(self) -> None:
        store, _ = await self.started()
        self.assertTrue(verifyObject(ITrackingStore, store))

    @deferred_test
    async def test_schema_created(self) -> None:
        store, _ = await self.started()
        db = sqlite3.connect(store.path)
        self.addCleanup(db.close)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertEqual(tables, {"messages", "recipients"})
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertIn("messages_expires", indexes)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        # The look-up uses the keys, never a scan.
        for sql in (
            "SELECT * FROM messages WHERE envid = 'x' AND expires > 0",
            "SELECT * FROM recipients WHERE envid = 'x' ORDER BY position",
        ):
            plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql))
            self.assertIn("SEARCH", plan)
            self.assertNotIn("SCAN", plan)

    @deferred_test
    async def test_reopen_keeps_data(self) -> None:
        store, clock = await self.started()
        await store.upsert([message()])
        await store.stop()
        again = SQLiteStore(store.path, reactor=clock)
        await again.start()
        self.addCleanup(again.stop)
        self.assertEqual(await again.lookup("12345-20010101@example.com"), message())

    @deferred_test
    async def test_memory_store(self) -> None:
        store, _ = await self.started(path=":memory:")
        self.assertEqual(await store.upsert([message()]), 1)
        self.assertEqual(await store.lookup("12345-20010101@example.com"), message())
        self.assertEqual(await store.count(), 1)

    @deferred_test
    async def test_lookup_hit_round_trips(self) -> None:
        store, _ = await self.started()
        stored = message(
            extensions=(("X-Queue-Id", "4Ab1"),),
            recipients=(
                recipient(
                    "a@x",
                    "relayed",
                    "2.1.9",
                    original="a@x",
                    remote_mta="dns; smtp.corp.example.com",
                    last_attempt_date="Mon, 30 Nov 2026 19:15:03 -0500",
                ),
                recipient(
                    "b@x",
                    "delayed",
                    "4.4.1 (No answer from host)",
                    diagnostic_code="smtp; 421 try later",
                    will_retry_until="Tue, 1 Dec 2026 19:15:03 -0500",
                    extensions=(("X-Note", "ünïcode"),),
                ),
            ),
        )
        await store.upsert([stored])
        self.assertEqual(await store.lookup(stored.envid), stored)

    @deferred_test
    async def test_lookup_miss(self) -> None:
        store, _ = await self.started()
        await store.upsert([message()])
        self.assertIsNone(await store.lookup("nobody@example.com"))
        self.assertIsNone(await store.lookup("12345-20010101@EXAMPLE.com"))

    @deferred_test
    async def test_expired_never_returned(self) -> None:
        store, clock = await self.started()
        await store.upsert([message(expires=START + 100)])
        self.assertIsNotNone(await store.lookup("12345-20010101@example.com"))
        clock.advance(99)
        self.assertIsNotNone(await store.lookup("12345-20010101@example.com"))
        clock.advance(1)
        self.assertIsNone(await store.lookup("12345-20010101@example.com"))
        # Still in the table until the purge runs: the query itself filters.
        self.assertEqual(await store.count(), 1)

    @deferred_test
    async def test_purge_expired(self) -> None:
        store, clock = await self.started()
        await store.upsert(
            [message("old", expires=START + 10), message("new", expires=START + DAY)]
        )
        self.assertEqual(await store.purge_expired(), 0)
        clock.advance(10)
        self.assertEqual(await store.purge_expired(), 1)
        self.assertEqual(await store.count(), 1)
        self.assertIsNotNone(await store.lookup("new"))
        db = sqlite3.connect(store.path)
        self.addCleanup(db.close)
        envids = {r[0] for r in db.execute("SELECT envid FROM recipients")}
        self.assertEqual(envids, {"new"})

    @deferred_test
    async def test_purge_in_chunks(self) -> None:
        self.patch(store_module, "PURGE_CHUNK", 7)
        store, clock = await self.started()
        await store.upsert([message(f"m{i}", expires=START + 1) for i in range(30)])
        clock.advance(1)
        self.assertEqual(await store.purge_expired(), 30)
        self.assertEqual(await store.count(), 0)

    @deferred_test
    async def test_purge_timer(self) -> None:
        store, clock = await self.started(purge_interval=60.0)
        await store.upsert([message("old", expires=START + 30), message("new")])
        clock.advance(59)
        self.assertEqual(await store.count(), 2)
        clock.advance(1)
        # The timer has queued the purge on the store's single database
        # thread; count() queues behind it, so it sees the purge done.
        self.assertEqual(await store.count(), 1)
        self.assertIsNone(await store.lookup("old"))
        await store.upsert([message("later", expires=START + 100)])
        clock.advance(60)
        self.assertEqual(await store.count(), 1)
        self.assertIsNotNone(await store.lookup("new"))

    @deferred_test
    async def test_purge_timer_survives_errors(self) -> None:
        store, clock = await self.started(purge_interval=60.0)
        calls = []

        def broken(cursor: Any, now: float, limit: int = 0) -> int:
            calls.append(now)
            raise sqlite3.OperationalError("database is locked")

        self.patch(store_module, "purge_chunk", broken)
        clock.advance(60)
        await store.count()
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        clock.advance(60)
        await store.count()
        self.assertEqual(len(calls), 2)
        self.flushLoggedErrors(sqlite3.OperationalError)

    @deferred_test
    async def test_stop_stops_timer(self) -> None:
        store, clock = self.make_store(purge_interval=60.0)
        await store.start()
        self.assertTrue(clock.getDelayedCalls())
        await store.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        with self.assertRaises(StoreError):
            await store.lookup("x")

    @deferred_test
    async def test_upsert_updates(self) -> None:
        store, _ = await self.started()
        a = recipient("a@x", "relayed", "2.1.9", original="a@x")
        b = recipient("b@x", "delayed", "4.4.1", original="b@x")
        c = recipient("c@x", "delayed", "4.4.1")
        await store.upsert([message(recipients=(a, b, c))])
        a2 = recipient("a@x", "delivered", "2.0.0", original="a@x")
        c2 = recipient("c@x", "failed", "5.1.1")
        d = recipient("d@x", original="d@x")
        other = certifier_for(b"another secret")
        update = message(
            recipients=(c2, d, a2),
            certifier=other,
            arrival_date=None,
            received_from_mta="dns; other.example.net",
            expires=START + 2 * DAY,
        )
        self.assertEqual(await store.upsert([update]), 1)
        got = await store.lookup(update.envid)
        self.assertEqual(got.recipients, (a2, b, c2, d))
        self.assertEqual(got.certifier, other)
        self.assertIsNone(got.arrival_date)
        self.assertEqual(got.received_from_mta, "dns; other.example.net")
        self.assertEqual(got.expires, START + 2 * DAY)
        self.assertEqual(await store.count(), 1)

    @deferred_test
    async def test_same_envid_twice_in_a_batch(self) -> None:
        store, _ = await self.started()
        a = recipient("a@x", original="a@x")
        b = recipient("b@x", original="b@x")
        a2 = recipient("a@x", "failed", "5.0.0", original="a@x")
        await store.upsert([message(recipients=(a,)), message(recipients=(b, a2))])
        got = await store.lookup(message().envid)
        self.assertEqual(got.recipients, (a2, b))

    @deferred_test
    async def test_reimport_over_expired_record(self) -> None:
        store, clock = await self.started()
        old = recipient("old@x", original="old@x")
        await store.upsert([message(recipients=(old,), expires=START + 10)])
        clock.advance(10)
        new = recipient("new@x", original="new@x")
        await store.upsert([message(recipients=(new,), expires=START + DAY)])
        got = await store.lookup(message().envid)
        self.assertEqual(got.recipients, (new,))

    @deferred_test
    async def test_failed_batch_leaves_nothing(self) -> None:
        store, _ = await self.started()
        before = message("kept", recipients=(recipient("k@x", original="k@x"),))
        await store.upsert([before])
        # The third record cannot be bound as an SQL value: the batch fails
        # after the message rows and some recipient rows went in.
        broken = message("broken", recipients=(recipient("z@x", status=object()),))  # type: ignore[arg-type]
        batch = [
            message("m1"),
            message("kept", recipients=(recipient("k@x", "failed", "5.0.0", original="k@x"),)),
            broken,
            message("m4"),
        ]
        with self.assertRaises(sqlite3.Error):
            await store.upsert(batch)
        self.assertEqual(await store.count(), 1)
        self.assertEqual(await store.lookup("kept"), before)
        self.assertIsNone(await store.lookup("m1"))
        db = sqlite3.connect(store.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT count(*) FROM recipients").fetchone()[0], 1)
        # The store is usable afterwards.
        self.assertEqual(await store.upsert([message("m1")]), 1)

    @deferred_test
    async def test_failure_inside_interaction_rolls_back(self) -> None:
        store, _ = await self.started()
        await store.upsert([message("kept")])
        # The message rows of the batch are written, then the recipient
        # insert fails: nothing of the batch may remain.
        self.patch(store_module, "_INSERT_RECIPIENT", "INSERT INTO nowhere VALUES (?)")
        with self.assertRaises(sqlite3.OperationalError):
            await store.upsert(
                [message(f"m{i}") for i in range(5)]
                + [message("kept", certifier=certifier_for(b"x"), recipients=())]
            )
        self.assertEqual(await store.count(), 1)
        self.assertEqual(await store.lookup("kept"), message("kept"))

    @deferred_test
    async def test_upsert_empty(self) -> None:
        store, _ = await self.started()
        self.assertEqual(await store.upsert([]), 0)

    @deferred_test
    async def test_many_records(self) -> None:
        store, _ = await self.started()
        records = [message(f"m{i}@example.com") for i in range(2500)]
        self.assertEqual(await store.upsert(records), 2500)
        self.assertEqual(await store.count(), 2500)
        self.assertEqual(await store.lookup("m1234@example.com"), records[1234])


class OpenErrorTests(StoreTestMixin, TestCase):
    """A store that cannot be opened gives one readable StoreError naming the path."""

    async def start_refused(self, path: str) -> tuple[SQLiteStore, StoreError]:
        """A store at ``path`` and the StoreError its start() fails with."""
        store, _ = self.make_store(path=path)
        with self.assertRaises(StoreError) as caught:
            await store.start()
        return store, caught.exception

    @deferred_test
    async def test_missing_directory(self) -> None:
        path = os.path.join(self.mktemp(), "nope", "store.sqlite3")
        store, error = await self.start_refused(path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))
        await store.stop()
        with self.assertRaises(StoreError) as caught:
            SQLiteWriter(path)
        self.assertIn(path, str(caught.exception))

    @deferred_test
    async def test_read_only_file(self) -> None:
        path = self.db_path()
        SQLiteWriter(path).close()
        os.chmod(path, 0o444)
        _, error = await self.start_refused(path)
        self.assertIn(path, str(error))
        self.assertIn("read-only", str(error))
        with self.assertRaises(StoreError) as caught:
            SQLiteWriter(path)
        self.assertIn(path, str(caught.exception))

    @deferred_test
    async def test_not_a_database(self) -> None:
        path = self.db_path()
        with open(path, "wb") as f:
            f.write(b"this is not an SQLite file, not at all" * 100)
        _, error = await self.start_refused(path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))

    @deferred_test
    async def test_newer_schema(self) -> None:
        path = self.db_path()
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        _, error = await self.start_refused(path)
        self.assertIn("newer", str(error))
        self.assertIn(path, str(error))


class CheckAndServiceTests(StoreTestMixin, TestCase):
    def test_check_creates_schema(self) -> None:
        store, _ = self.make_store()
        store.check()
        db = sqlite3.connect(store.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)

    def test_check_errors(self) -> None:
        path = os.path.join(self.mktemp(), "store.sqlite3")
        with self.assertRaises(StoreError) as caught:
            SQLiteStore(path, reactor=Clock()).check()
        self.assertIn(path, str(caught.exception))
        SQLiteStore(":memory:", reactor=Clock()).check()

    @deferred_test
    async def test_service(self) -> None:
        store, clock = self.make_store(purge_interval=60.0)
        svc = StoreService(store)
        svc.startService()
        await store.upsert([message()])
        self.assertEqual(await store.count(), 1)
        self.assertTrue(clock.getDelayedCalls())
        await svc.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    @deferred_test
    async def test_wrong_secret_reads_no_recipients(self) -> None:
        # A failed TRACK must not cost time in proportion to what the message
        # holds: its recipients are read only once the certifier matched.
        store, _ = await self.started()
        await store.upsert([message()])
        statements: list[str] = []
        db = sqlite3.connect(store.path)
        self.addCleanup(db.close)
        db.set_trace_callback(statements.append)
        seen: list[str | None] = []

        def refuse(certifier: str | None) -> bool:
            seen.append(certifier)
            return False

        self.assertIsNone(select_message(db.cursor(), message().envid, START, refuse))
        self.assertIsNone(select_message(db.cursor(), "nobody@example.com", START, refuse))
        self.assertEqual(seen, [message().certifier, None], "a miss is checked too")
        self.assertFalse([q for q in statements if "recipients" in q], statements)
        found = select_message(db.cursor(), message().envid, START, lambda c: True)
        self.assertEqual(found, message())

    @deferred_test
    async def test_store_files_private(self) -> None:
        # Certifiers and recipient addresses are for the daemon's user only
        # (review m10), whatever the umask: daemon, writer and check alike.
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        store, _ = self.make_store()
        store.check()
        self.assertEqual(stat.S_IMODE(os.stat(store.path).st_mode), 0o600)
        await store.start()
        self.addCleanup(store.stop)
        await store.upsert([message()])
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(store.path + suffix):
                mode = stat.S_IMODE(os.stat(store.path + suffix).st_mode)
                self.assertEqual(mode, 0o600, suffix)
        writer_path = self.db_path()
        SQLiteWriter(writer_path).close()
        self.assertEqual(stat.S_IMODE(os.stat(writer_path).st_mode), 0o600)

    @deferred_test
    async def test_stop_while_starting_leaves_no_timer(self) -> None:
        # A daemon stopped during start-up: the open finishes after stop()
        # and must not start the purge timer of a closed store.
        store, clock = self.make_store(purge_interval=60.0)
        starting = store.start()
        await store.stop()
        try:
            await starting
        except StoreError:
            pass
        self.assertEqual(clock.getDelayedCalls(), [])

    @deferred_test
    async def test_service_failure_logged(self) -> None:
        path = os.path.join(self.mktemp(), "store.sqlite3")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store, _ = self.make_store(path=path)
        svc = StoreService(store)
        svc.startService()
        await svc.stopService()
        critical = [e for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertIn(path, critical[0]["error"])


class SQLiteWriterTests(StoreTestMixin, TestCase):
    @deferred_test
    async def test_writer_and_store_share_a_file(self) -> None:
        path = self.db_path()
        with SQLiteWriter(path, clock=lambda: START) as writer:
            self.assertEqual(writer.upsert([message(), message("other")]), 2)
            self.assertEqual(writer.count(), 2)
        store, _ = await self.started(path=path)
        self.assertEqual(await store.lookup(message().envid), message())

    def test_writer_rolls_back(self) -> None:
        path = self.db_path()
        with SQLiteWriter(path, clock=lambda: START) as writer:
            broken = message("b", recipients=(recipient("z@x", status=object()),))  # type: ignore[arg-type]
            with self.assertRaises(sqlite3.Error):
                writer.upsert([message("a"), broken])
            self.assertEqual(writer.count(), 0)
            writer.upsert([message("a")])
            self.assertEqual(writer.count(), 1)

    def test_closed_writer(self) -> None:
        writer = SQLiteWriter(self.db_path())
        writer.close()
        with self.assertRaises(StoreError):
            writer.upsert([message()])


@implementer(ITrackingStore)
class FakeStore:
    """A dict standing in for the database, to test the tracker alone."""

    def __init__(self, *messages: StoredMessage, error: Exception | None = None) -> None:
        self.messages = {m.envid: m for m in messages}
        self.error = error
        self.looked_up: list[str] = []

    def start(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def lookup(
        self, envid: str, accept: Callable[[str | None], bool] | None = None
    ) -> defer.Deferred[StoredMessage | None]:
        self.looked_up.append(envid)
        if self.error is not None:
            return defer.fail(self.error)
        message = self.messages.get(envid)
        if accept is not None and not accept(message.certifier if message else None):
            return defer.succeed(None)
        return defer.succeed(message)

    def upsert(self, records: Any) -> defer.Deferred[int]:
        raise NotImplementedError

    def purge_expired(self) -> defer.Deferred[int]:
        return defer.succeed(0)

    def count(self) -> defer.Deferred[int]:
        return defer.succeed(len(self.messages))


class LocalTrackerTests(SynchronousTestCase):
    hostname = "mtqp.example.com"

    def answer(self, tracker: LocalTracker, envid: str, secret: str) -> Answer:
        return self.successResultOf(tracker.track(envid, secret))

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ITracker, LocalTracker(FakeStore(), self.hostname)))

    def test_found(self) -> None:
        stored = message(extensions=(("X-Queue-Id", "4Ab1"),))
        tracker = LocalTracker(FakeStore(stored), self.hostname)
        answer = self.answer(tracker, stored.envid, SECRET_B64)
        self.assertEqual(
            answer,
            Answer.found(
                [
                    TrackingStatus(
                        original_envelope_id=stored.envid,
                        reporting_mta="dns; mtqp.example.com",
                        arrival_date=stored.arrival_date,
                        received_from_mta=stored.received_from_mta,
                        extensions=stored.extensions,
                        recipients=stored.recipients,
                    )
                ]
            ),
        )

    def test_secure_flag_accepted(self) -> None:
        tracker = LocalTracker(FakeStore(message()), self.hostname)
        answer = self.successResultOf(tracker.track(message().envid, SECRET_B64, secure=True))
        self.assertTrue(answer.ok)

    def test_failures_are_identical(self) -> None:
        stored = message()
        for mode in ("noinfo", "opaque"):
            tracker = LocalTracker(FakeStore(stored), self.hostname, unknown_message=mode)
            unknown = self.answer(tracker, "unknown@example.com", SECRET_B64)
            # Same envid in both, so only the store's knowledge differs.
            unknown_same = LocalTracker(FakeStore(), self.hostname, unknown_message=mode)
            baseline = self.answer(unknown_same, stored.envid, SECRET_B64)
            for secret in (WRONG_B64, "not base64!", "", "YWJj"):
                self.assertEqual(
                    self.answer(tracker, stored.envid, secret), baseline, (mode, secret)
                )
            self.assertNotEqual(baseline.outcome, Outcome.TEMP)
            if mode == "noinfo":
                self.assertEqual(baseline, Answer.noinfo())
                self.assertEqual(unknown, Answer.noinfo())

    def test_opaque_answer(self) -> None:
        stored = message()
        tracker = LocalTracker(FakeStore(stored), self.hostname, unknown_message="opaque")
        answer = self.answer(tracker, stored.envid, WRONG_B64)
        self.assertTrue(answer.ok)
        (part,) = answer.parts
        self.assertEqual(part.original_envelope_id, stored.envid)
        self.assertEqual(part.reporting_mta, "dns; mtqp.example.com")
        self.assertIsNone(part.arrival_date)
        self.assertIsNone(part.received_from_mta)
        (block,) = part.recipients
        self.assertIs(block.action, Action.OPAQUE)
        self.assertEqual(block.final_recipient, OPAQUE_RECIPIENT)
        # Nothing of the stored record leaks into it.
        text = repr(answer)
        for value in ("user1", "client.example.net", "2026", CERTIFIER):
            self.assertNotIn(value, text)

    def test_both_failures_check_the_secret(self) -> None:
        calls: list[tuple[str, str | None]] = []
        real = store_module.check_secret

        def spy(secret: str, certifier: str | None) -> bool:
            calls.append((secret, certifier))
            return real(secret, certifier)

        self.patch(store_module, "check_secret", spy)
        tracker = LocalTracker(FakeStore(message()), self.hostname)
        self.answer(tracker, "unknown@example.com", SECRET_B64)
        self.answer(tracker, message().envid, WRONG_B64)
        self.assertEqual(calls, [(SECRET_B64, None), (WRONG_B64, CERTIFIER)])

    def test_store_error_is_temp(self) -> None:
        tracker = LocalTracker(
            FakeStore(error=sqlite3.OperationalError("disk I/O error")), self.hostname
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        answer = self.answer(tracker, "x@example.com", SECRET_B64)
        self.assertEqual(answer, Answer.temp(("unavailable",), "Tracking store unavailable"))
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        logged = [e for e in events if "log_failure" in e]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["envid"], "x@example.com")
        self.assertNotIn(SECRET_B64, repr(events))

    def test_cancel_passes_through(self) -> None:
        pending: defer.Deferred[StoredMessage | None] = defer.Deferred()
        store = FakeStore()
        store.lookup = lambda envid, accept=None: pending  # type: ignore[method-assign]
        d = LocalTracker(store, self.hostname).track("x", SECRET_B64)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_bad_mode(self) -> None:
        with self.assertRaises(ValueError):
            LocalTracker(FakeStore(), self.hostname, unknown_message="maybe")


class LocalTrackerWithSQLiteTests(StoreTestMixin, TestCase):
    @deferred_test
    async def test_end_to_end(self) -> None:
        store, clock = await self.started()
        await store.upsert([message(expires=START + 100)])
        for mode in ("noinfo", "opaque"):
            tracker = LocalTracker(store, "mtqp.example.com", unknown_message=mode)
            found = await tracker.track(message().envid, SECRET_B64)
            self.assertTrue(found.ok)
            self.assertEqual(found.parts[0].recipients, message().recipients)
            wrong = await tracker.track(message().envid, WRONG_B64)
            unknown = await tracker.track("unknown@example.com", SECRET_B64)
            unknown_same = await LocalTracker(
                FakeStore(), "mtqp.example.com", unknown_message=mode
            ).track(message().envid, SECRET_B64)
            self.assertEqual(wrong, unknown_same)
            self.assertEqual(unknown.outcome, wrong.outcome)
        clock.advance(100)
        expired = await LocalTracker(store, "mtqp.example.com").track(message().envid, SECRET_B64)
        self.assertEqual(expired, Answer.noinfo())

    @deferred_test
    async def test_stopped_store_is_temp(self) -> None:
        store, _ = await self.started()
        await store.stop()
        answer = await LocalTracker(store, "h").track("x", SECRET_B64)
        self.assertEqual(answer.outcome, Outcome.TEMP)
        self.assertEqual(answer.reasons, ("unavailable",))
        self.flushLoggedErrors(StoreError)
