# -*- test-case-name: tests.test_store_reader -*-
"""SQLiteStore's look-up connection: look-ups on the reactor thread, the pool as fallback."""

from __future__ import annotations

import sqlite3

from twisted.trial.unittest import TestCase

from mtqpgw.store import SQLiteStore
from tests.test_store import StoreTestMixin, deferred_test, message

ENVID = "12345-20010101@example.com"


class ReaderTests(StoreTestMixin, TestCase):
    @deferred_test
    async def test_lookup_answers_at_once(self) -> None:
        """A file store answers a look-up without a thread hop, and sees what the pool wrote."""
        store, _ = await self.started()
        await store.upsert([message()])
        d = store.lookup(ENVID)
        self.assertTrue(d.called)
        self.assertEqual(await d, message())
        self.assertIsNone(await store.lookup("unknown@example.com"))

    @deferred_test
    async def test_reader_is_query_only(self) -> None:
        store, _ = await self.started()
        assert store._reader is not None
        with self.assertRaises(sqlite3.OperationalError):
            store._reader.execute("DELETE FROM messages")

    @deferred_test
    async def test_failing_reader_falls_back_to_the_pool(self) -> None:
        """Any SQLite error on the reader (here: a closed connection) leaves it to the pool."""
        store, _ = await self.started()
        await store.upsert([message()])
        assert store._reader is not None
        store._reader.close()
        self.assertEqual(await store.lookup(ENVID), message())

    @deferred_test
    async def test_memory_store_has_no_reader(self) -> None:
        """A second connection to ":memory:" would be another, empty database."""
        store = SQLiteStore(":memory:")
        await store.start()
        self.addCleanup(store.stop)
        self.assertIsNone(store._reader)
        await store.upsert([message(expires=2**40)])
        self.assertEqual(await store.lookup(ENVID), message(expires=2**40))

    @deferred_test
    async def test_stop_closes_reader(self) -> None:
        store, _ = await self.started()
        reader = store._reader
        assert reader is not None
        await store.stop()
        self.assertIsNone(store._reader)
        with self.assertRaises(sqlite3.ProgrammingError):
            reader.execute("SELECT 1")
