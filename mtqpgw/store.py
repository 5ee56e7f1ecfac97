# -*- test-case-name: tests.test_store -*-
"""The local tracking store: SQLite behind an interface, and the tracker that answers from it.

Three layers share one set of SQL functions, each taking a DB-API cursor:

- ``SQLiteStore``: the daemon's store.  Writes (upserts, the purge a
  ``LoopingCall`` runs) go through ``twisted.enterprise.adbapi`` on a single
  connection, off the reactor thread.  Look-ups of a file store run on the
  reactor thread on a second, query-only connection (see ``SQLiteStore``).
- ``SQLiteWriter``: the same SQL, synchronous, for ``mtqp import`` (no reactor
  to spin for a bulk load).
- ``LocalTracker``: answers ``TRACK`` from any ``ITrackingStore``.

Unknown envelope id, expired record and wrong secret all produce the same
``Answer``, built by the same code after the same work (one look-up, one
``check_secret``), so neither the answer nor its cost tells them apart.

With ``unknown_message = "opaque"`` that answer is a positive one (RFC 3887
section 4): one part, Reporting-MTA this host, Original-Envelope-Id echoing
what the client sent, no Arrival-Date (there is none to give, and a made-up
one would be a lie), and one recipient block::

    Final-Recipient: rfc822; undisclosed-recipients:;
    Action: opaque
    Status: 4.0.0

The recipient is the RFC 5322 empty group, the usual spelling of "recipients
withheld".  ``4.0.0`` claims neither delivery (2.x) nor a permanent failure
(5.x): X.0.0 is "nothing more specific to say", and class 4 tells the client
that asking again later may give more.  Every value in it comes from the
query or the configuration, never from the store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mtqpgw.certifier import check_secret
from mtqpgw.config import MEMORY_STORE, UNKNOWN_MESSAGE_CHOICES
from mtqpgw.interfaces import ITracker
from mtqpgw.status import Action, Answer, RecipientStatus, TrackingStatus

__all__ = [
    "OPAQUE_RECIPIENT",
    "OPAQUE_STATUS",
    "SCHEMA_VERSION",
    "ITrackingStore",
    "ImportRecord",
    "LocalTracker",
    "SQLiteStore",
    "SQLiteWriter",
    "StoreError",
    "StoreService",
    "StoredMessage",
    "merge_recipients",
]

log = Logger()

SCHEMA_VERSION = 1

OPAQUE_RECIPIENT = "rfc822; undisclosed-recipients:;"
OPAQUE_STATUS = "4.0.0"

# Expired messages deleted per transaction: the store has one connection, so
# a purge of a million rows in one go would hold every TRACK behind it.
PURGE_CHUNK = 2000

# Host parameters per "IN (...)" list; well under SQLite's limit of 999 in
# builds older than 3.32.
_IN_CHUNK = 500

# Each entry moves the schema from version N to N + 1 (PRAGMA user_version).
# Append, never edit: a database in the field is at any earlier version.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE messages (
            envid TEXT PRIMARY KEY,
            certifier TEXT NOT NULL,
            arrival_date TEXT,
            received_from_mta TEXT,
            expires INTEGER NOT NULL,
            extensions TEXT
        )""",
        # The purge finds expired rows by range; without this it scans the table.
        "CREATE INDEX messages_expires ON messages (expires)",
        # WITHOUT ROWID clusters a message's recipients on the primary key, so
        # a look-up is one B-tree descent and a short range scan at any size.
        """CREATE TABLE recipients (
            envid TEXT NOT NULL,
            position INTEGER NOT NULL,
            original_recipient TEXT,
            final_recipient TEXT NOT NULL,
            action TEXT NOT NULL,
            status TEXT NOT NULL,
            remote_mta TEXT,
            diagnostic_code TEXT,
            last_attempt_date TEXT,
            will_retry_until TEXT,
            extensions TEXT,
            PRIMARY KEY (envid, position)
        ) WITHOUT ROWID""",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class StoreError(Exception):
    """The store cannot be used; ``str()`` is one readable line naming the path."""


@dataclass(frozen=True)
class StoredMessage:
    """One tracked message: what ``upsert`` writes and ``lookup`` gives back.

    ``certifier`` is base64(SHA1(A)) in canonical base64; the secret A is
    never held.  ``expires`` is UTC epoch seconds; a message is reported only
    while ``expires`` is later than now.  Dates are RFC 5322 text as they
    appear in a report.
    """

    envid: str
    certifier: str
    expires: int
    recipients: tuple[RecipientStatus, ...]
    arrival_date: str | None = None
    received_from_mta: str | None = None
    extensions: tuple[tuple[str, str], ...] = ()


# What the importer produces and upsert takes.  The same class as what a
# look-up returns, so that a record read back compares equal to what was
# written.
ImportRecord = StoredMessage


class ITrackingStore(Interface):
    """Where local tracking records live.  Every method returns a Deferred.

    SQLite today; a shared database server can take its place when one
    machine is not enough.
    """

    def start():  # type: ignore[no-untyped-def]
        """Open the store (creating or migrating the schema) and start purging.

        Fails with L{StoreError} when the store cannot be opened or written.
        """

    def stop():  # type: ignore[no-untyped-def]
        """Stop purging and close the store."""

    def lookup(envid, accept=None):  # type: ignore[no-untyped-def]
        """Fire with the L{StoredMessage} for C{envid}, or None when unknown or expired.

        With C{accept}, also None unless C{accept(certifier)} holds (see
        L{select_message}).
        """

    def upsert(records):  # type: ignore[no-untyped-def]
        """Write C{records} in one transaction; fire with how many were written.

        An envid already stored is updated: its per-message fields and
        certifier are replaced, see L{merge_recipients} for its recipients.
        """

    def purge_expired():  # type: ignore[no-untyped-def]
        """Delete expired messages; fire with how many were deleted."""

    def count():  # type: ignore[no-untyped-def]
        """Fire with the number of messages held, expired ones not yet purged included."""


def merge_recipients(
    current: Sequence[RecipientStatus], new: Sequence[RecipientStatus]
) -> tuple[RecipientStatus, ...]:
    """The recipients of a message after importing ``new`` over ``current``.

    Recipients are matched by ``join_key`` (Original-Recipient, else
    Final-Recipient, domain case-insensitive).  A current recipient whose key
    appears in ``new`` is replaced, in its place, by every new recipient with
    that key (an expanded alias can have several); the others are kept; new
    recipients with unseen keys are appended in the order given.
    """
    new_keys = {r.join_key for r in new}
    placed: set[str | None] = set()
    merged: list[RecipientStatus] = []
    for recipient in current:
        key = recipient.join_key
        if key not in new_keys:
            merged.append(recipient)
        elif key not in placed:
            placed.add(key)
            merged.extend(r for r in new if r.join_key == key)
    merged.extend(r for r in new if r.join_key not in placed)
    return tuple(merged)


# --- SQL shared by the asynchronous store and the synchronous writer -------
#
# Each function takes a DB-API cursor (an adbapi Transaction is one).  Those
# that write begin the transaction themselves with BEGIN IMMEDIATE, which takes
# the write lock before the first read, so what they read stays true until
# their caller commits (or rolls back on an exception).

_UPSERT_MESSAGE = """
    INSERT INTO messages (envid, certifier, arrival_date, received_from_mta, expires, extensions)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (envid) DO UPDATE SET
        certifier = excluded.certifier,
        arrival_date = excluded.arrival_date,
        received_from_mta = excluded.received_from_mta,
        expires = excluded.expires,
        extensions = excluded.extensions
"""

_INSERT_RECIPIENT = """
    INSERT INTO recipients (envid, position, original_recipient, final_recipient, action,
        status, remote_mta, diagnostic_code, last_attempt_date, will_retry_until, extensions)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_SELECT_MESSAGE = """
    SELECT envid, certifier, arrival_date, received_from_mta, expires, extensions
    FROM messages WHERE envid = ? AND expires > ?
"""

_SELECT_RECIPIENTS = """
    SELECT original_recipient, final_recipient, action, status, remote_mta,
        diagnostic_code, last_attempt_date, will_retry_until, extensions
    FROM recipients WHERE envid = ? ORDER BY position
"""


def _encode_extensions(pairs: tuple[tuple[str, str], ...]) -> str | None:
    return json.dumps([list(p) for p in pairs], ensure_ascii=False) if pairs else None


def _decode_extensions(text: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in json.loads(text)) if text else ()


def _recipient_rows(envid: str, recipients: Iterable[RecipientStatus]) -> list[tuple[Any, ...]]:
    return [
        (
            envid,
            position,
            r.original_recipient,
            r.final_recipient,
            r.action.value,
            r.status,
            r.remote_mta,
            r.diagnostic_code,
            r.last_attempt_date,
            r.will_retry_until,
            _encode_extensions(r.extensions),
        )
        for position, r in enumerate(recipients)
    ]


def _recipient_from_row(row: Sequence[Any]) -> RecipientStatus:
    return RecipientStatus(
        original_recipient=row[0],
        final_recipient=row[1],
        action=Action(row[2]),
        status=row[3],
        remote_mta=row[4],
        diagnostic_code=row[5],
        last_attempt_date=row[6],
        will_retry_until=row[7],
        extensions=_decode_extensions(row[8]),
    )


def _select_recipients(cursor: Any, envid: str) -> tuple[RecipientStatus, ...]:
    cursor.execute(_SELECT_RECIPIENTS, (envid,))
    return tuple(_recipient_from_row(row) for row in cursor.fetchall())


def select_message(
    cursor: Any,
    envid: str,
    now: float,
    accept: Callable[[str | None], bool] | None = None,
) -> StoredMessage | None:
    """The unexpired message ``envid``, or None.

    With ``accept`` (the TRACK's certifier check), the message only when
    ``accept(its certifier)`` holds, and its recipients are read only then:
    a wrong secret and an unknown envelope id both cost one indexed probe
    and one hash (``accept(None)`` for a miss), so nothing about a stored
    message, not even how many recipients it has, shows in the time a
    failed TRACK takes.
    """
    cursor.execute(_SELECT_MESSAGE, (envid, now))
    row = cursor.fetchone()
    if accept is not None and not accept(row[1] if row is not None else None):
        return None
    if row is None:
        return None
    return StoredMessage(
        envid=row[0],
        certifier=row[1],
        arrival_date=row[2],
        received_from_mta=row[3],
        expires=row[4],
        extensions=_decode_extensions(row[5]),
        recipients=_select_recipients(cursor, envid),
    )


def upsert_records(cursor: Any, records: Sequence[StoredMessage], now: float) -> int:
    """Write ``records`` (in order: a later one for the same envid updates an earlier one)."""
    if not records:
        return 0
    cursor.execute("BEGIN IMMEDIATE")
    envids = list(dict.fromkeys(r.envid for r in records))
    stored_expiry: dict[str, int] = {}
    for start in range(0, len(envids), _IN_CHUNK):
        chunk = envids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        cursor.execute(f"SELECT envid, expires FROM messages WHERE envid IN ({marks})", chunk)
        stored_expiry.update(cursor.fetchall())

    recipients: dict[str, tuple[RecipientStatus, ...]] = {}
    for record in records:
        if record.envid in recipients:
            base = recipients[record.envid]
        elif stored_expiry.get(record.envid, now) > now:
            base = _select_recipients(cursor, record.envid)
        else:
            # Unknown, or expired and not purged yet: an expired record is
            # gone as far as anyone can see, so nothing of it is merged back.
            base = ()
        recipients[record.envid] = (
            merge_recipients(base, record.recipients) if base else tuple(record.recipients)
        )

    cursor.executemany(
        _UPSERT_MESSAGE,
        [
            (
                r.envid,
                r.certifier,
                r.arrival_date,
                r.received_from_mta,
                int(r.expires),
                _encode_extensions(r.extensions),
            )
            for r in records
        ],
    )
    cursor.executemany(
        "DELETE FROM recipients WHERE envid = ?", [(envid,) for envid in stored_expiry]
    )
    rows: list[tuple[Any, ...]] = []
    for envid, merged in recipients.items():
        rows.extend(_recipient_rows(envid, merged))
    cursor.executemany(_INSERT_RECIPIENT, rows)
    return len(records)


def purge_chunk(cursor: Any, now: float, limit: int = PURGE_CHUNK) -> int:
    """Delete up to ``limit`` messages expired at ``now``; return how many went."""
    # Without the lock first, an import could renew a message between the
    # SELECT and the DELETE, and the purge would delete the renewed record.
    cursor.execute("BEGIN IMMEDIATE")
    cursor.execute("SELECT envid FROM messages WHERE expires <= ? LIMIT ?", (now, limit))
    doomed = cursor.fetchall()
    cursor.executemany("DELETE FROM recipients WHERE envid = ?", doomed)
    cursor.executemany("DELETE FROM messages WHERE envid = ?", doomed)
    return len(doomed)


def count_messages(cursor: Any) -> int:
    cursor.execute("SELECT count(*) FROM messages")
    return int(cursor.fetchone()[0])


# --- Opening ---------------------------------------------------------------


def _is_memory(path: str) -> bool:
    return path == MEMORY_STORE


def check_path(path: str) -> None:
    """Raise L{StoreError} when ``path`` cannot hold a writable store.

    The permission bits are checked as well as access, because the daemon
    may run as root, which SQLite would let write to a file marked
    read-only: such a mark is a statement of intent worth honouring.
    """
    if _is_memory(path):
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(f"cannot open the tracking store {path}: no directory {directory}")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot open the tracking store {path}: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        raise StoreError(f"cannot open the tracking store {path}: not a regular file")
    if not mode & 0o222 or not os.access(path, os.W_OK):
        raise StoreError(f"cannot open the tracking store {path}: the file is read-only")


def create_private(path: str) -> None:
    """Create the store file readable by its owner only, unless it exists.

    It holds certifiers (SHA-1 of the secrets: a weak secret can be guessed
    offline from one) and recipient addresses.  SQLite gives the -wal and
    -shm files the mode of the database file.  An empty file is an empty
    SQLite database.
    """
    if _is_memory(path):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StoreError(f"cannot create the tracking store {path}: {e.strerror}") from e
    os.close(fd)


def _check_schema(cursor: Any, path: str) -> int:
    """The schema version; L{StoreError} for a database that is not ours to use.

    A database of another program (tables, but no schema version of ours) is
    refused, never migrated into; so is a schema newer than this code.
    """
    cursor.execute("PRAGMA user_version")
    version = int(cursor.fetchone()[0])
    if version == 0:
        cursor.execute("SELECT count(*) FROM sqlite_master")
        if cursor.fetchone()[0]:
            raise StoreError(
                f"cannot open the tracking store {path}: it is another program's "
                "SQLite database (it has tables but no mtqpgw schema)"
            )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"cannot open the tracking store {path}: schema version {version} "
            f"is newer than this mtqpgw understands ({SCHEMA_VERSION})"
        )
    return version


def prepare_connection(connection: sqlite3.Connection, path: str) -> None:
    """Set pragmas and create or migrate the schema on a new connection.

    Raises L{StoreError} naming ``path``; the connection is closed then.
    """
    try:
        cursor = connection.cursor()
        # Before anything is written.
        version = _check_schema(cursor, path)
        if not _is_memory(path):
            # WAL lets readers (TRACK look-ups) run while an import writes;
            # NORMAL durability is safe with WAL (a power cut may lose the
            # last commits, never corrupt the file).
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        if version < SCHEMA_VERSION:
            # IMMEDIATE takes the write lock first, so two processes opening a
            # new file do not both migrate it; what another one did meanwhile
            # is checked again under the lock.
            cursor.execute("BEGIN IMMEDIATE")
            version = _check_schema(cursor, path)
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    cursor.execute(statement)
            cursor.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.commit()
        else:
            # A write that changes nothing: SQLite opens a read-only file
            # without complaint and only refuses the first write, which had
            # better happen here than at the first import.
            cursor.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        cursor.close()
    except sqlite3.Error as e:
        connection.close()
        raise StoreError(f"cannot open the tracking store {path}: {e}") from e
    except BaseException:
        connection.close()
        raise


def open_store(path: str) -> sqlite3.Connection:
    """A synchronous connection to the store at ``path``, its schema created or migrated.

    Raises L{StoreError} naming ``path``.
    """
    check_path(path)
    create_private(path)
    try:
        # A daemon's purge or an import may hold the write lock for a moment.
        connection = sqlite3.connect(path, timeout=30.0)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the tracking store {path}: {e}") from e
    prepare_connection(connection, path)
    return connection


def inspect_store(path: str) -> None:
    """Raise L{StoreError} unless ``path`` is usable as a store, without writing to it.

    For ``mtqp check-config``: the same verdicts the daemon's start-up
    reaches (a writable place, not another program's database, not a newer
    schema), but the file is opened read-only, nothing is migrated and the
    journal mode is left alone.  A file that does not exist yet is fine when
    its directory is.
    """
    check_path(path)
    if _is_memory(path) or not os.path.exists(path):
        return
    try:
        connection = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the tracking store {path}: {e}") from e
    try:
        _check_schema(connection.cursor(), path)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the tracking store {path}: {e}") from e
    finally:
        connection.close()


# --- The asynchronous store ------------------------------------------------


@implementer(ITrackingStore)
class SQLiteStore:
    """An L{ITrackingStore} in one SQLite file (or ``":memory:"``).

    Look-ups (every TRACK) of a file store run synchronously on the reactor
    thread, on a query-only connection of their own.  A look-up by primary
    key reads about ten pages and takes tens of microseconds when the pages
    are in the OS page cache; a hop to the adbapi thread and back costs more
    than that, and under load far more (the two threads hand the GIL back
    and forth at every SQLite call): with the hop a server answered 2,400
    TRACK/s from a million messages, without it 7,400 (docs/performance.md).
    The price: a page that is not cached is read from disk with the reactor
    waiting, so a cold store makes every connection wait for those reads.
    The reader never waits for a lock (timeout 0): a look-up it cannot do at
    once (busy, locked, any SQLite error) is done by the pool as before, so
    failures are reported exactly as they were.  ``":memory:"`` has no second
    connection (it would be another, empty database) and always uses the pool.

    ``reactor`` gives the time (``seconds()``) and runs the purge timer, so
    tests pass a C{task.Clock}.  The database thread pool runs on ``reactor``
    when it can run threads, else on the global reactor.

        store = SQLiteStore("/var/lib/mtqpgw/store.sqlite3")
        await store.start()
        message = await store.lookup("12345-20010101@example.com")
    """

    def __init__(self, path: str, reactor: Any = None, purge_interval: float = 3600.0) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.path = path
        self.purge_interval = purge_interval
        self._clock: IReactorTime = reactor
        self._pool_reactor = reactor if IReactorThreads.providedBy(reactor) else None
        self._pool: adbapi.ConnectionPool | None = None
        self._reader: sqlite3.Connection | None = None
        self._loop: LoopingCall | None = None
        self._purging: defer.Deferred[int] | None = None

    def check(self) -> None:
        """Open, create or migrate the store synchronously, then close it.

        For start-up, before the reactor runs: a store that cannot be used
        stops the daemon with one L{StoreError} line instead of failing later.
        """
        if not _is_memory(self.path):
            open_store(self.path).close()

    def start(self) -> defer.Deferred[None]:
        if self._pool is not None:
            return defer.succeed(None)
        try:
            check_path(self.path)
            create_private(self.path)
        except StoreError:
            return defer.fail()
        extra = {} if self._pool_reactor is None else {"cp_reactor": self._pool_reactor}
        # One connection: SQLite serialises writers anyway, and for
        # ":memory:" that connection *is* the database.
        pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=partial(prepare_connection, path=self.path),
            cp_name=f"mtqpgw-store-{id(self):x}",
            **extra,
        )
        pool.start()
        self._pool = pool

        def opened(_: object) -> None:
            if self._pool is not pool:
                # stop() came first: no purge timer for a closed store.
                return
            log.info("Tracking store {path} open", path=self.path)
            self._reader = self._open_reader()
            loop = self._loop = LoopingCall(self._purge_tick)
            loop.clock = self._clock
            loop.start(self.purge_interval, now=False)

        def failed(failure: Failure) -> Failure:
            if self._pool is pool:
                self._pool = None
                pool.close()
            if not failure.check(StoreError):
                error = StoreError(f"cannot open the tracking store {self.path}: {failure.value}")
                return Failure(error)
            return failure

        # Connecting runs prepare_connection: schema errors surface here, not
        # at the first TRACK.
        d: defer.Deferred[None] = pool.runWithConnection(lambda connection: None)
        d.addCallbacks(opened, failed)
        return d

    def stop(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._purging is not None:
            try:
                await self._purging
            except Exception:  # logged by _purge_tick
                pass
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _open_reader(self) -> sqlite3.Connection | None:
        """The look-up connection, once the pool has created or migrated the schema."""
        if _is_memory(self.path):
            return None
        try:
            # timeout=0: never wait for a lock on the reactor thread.
            reader = sqlite3.connect(self.path, timeout=0)
            reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            log.warn(
                "Tracking store {path}: look-ups go through the pool thread ({error})",
                path=self.path,
                error=str(e),
            )
            return None
        return reader

    def _run(self, interaction: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        if self._pool is None:
            return defer.fail(StoreError(f"the tracking store {self.path} is not open"))
        return self._pool.runInteraction(interaction, *args)

    def lookup(
        self, envid: str, accept: Callable[[str | None], bool] | None = None
    ) -> defer.Deferred[StoredMessage | None]:
        now = self._clock.seconds()
        if self._reader is not None:
            try:
                return defer.succeed(select_message(self._reader.cursor(), envid, now, accept))
            except sqlite3.Error:
                pass  # busy, locked or worse: the pool waits, retries or reports it
        return self._run(select_message, envid, now, accept)

    def upsert(self, records: Iterable[StoredMessage]) -> defer.Deferred[int]:
        return self._run(upsert_records, list(records), self._clock.seconds())

    def count(self) -> defer.Deferred[int]:
        return self._run(count_messages)

    def purge_expired(self) -> defer.Deferred[int]:
        return defer.Deferred.fromCoroutine(self._purge())

    async def _purge(self) -> int:
        now = self._clock.seconds()
        total = 0
        while True:
            # One transaction per chunk: TRACK look-ups queued meanwhile run
            # between chunks.
            deleted = await self._run(purge_chunk, now)
            total += deleted
            if deleted < PURGE_CHUNK:
                break
        if total:
            log.info(
                "Purged {count} expired tracking records from {path}", count=total, path=self.path
            )
        return total

    def _purge_tick(self) -> defer.Deferred[None]:
        d = self._purging = self.purge_expired()

        def done(result: int | Failure) -> None:
            self._purging = None
            if isinstance(result, Failure):
                # Keep the timer going: a locked or full disk may recover.
                log.failure(
                    "Purging expired tracking records from {path} failed", result, path=self.path
                )

        return d.addBoth(done)


class StoreService(Service):
    """Starts a store with the application and stops it on shutdown."""

    def __init__(self, store: ITrackingStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.start().addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        # TRACK answers -TEMP/unavailable meanwhile; the reason is one line.
        log.critical("Tracking store not available: {error}", error=str(failure.value))

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.store.stop()


# --- The synchronous writer for bulk import --------------------------------


class SQLiteWriter:
    """Synchronous writes to a store file, for ``mtqp import`` (no reactor).

    Shares the SQL of L{SQLiteStore}; may run while a daemon has the same
    file open.

        with SQLiteWriter("store.sqlite3") as writer:
            writer.upsert(records)
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._connection: sqlite3.Connection | None = open_store(path)

    def upsert(self, records: Sequence[StoredMessage]) -> int:
        """Write ``records`` in one transaction (all or nothing); return how many."""
        if self._connection is None:
            raise StoreError(f"the tracking store {self.path} is closed")
        cursor = self._connection.cursor()
        try:
            written = upsert_records(cursor, records, self._clock())
            self._connection.commit()
        except BaseException:
            self._connection.rollback()
            raise
        finally:
            cursor.close()
        return written

    def count(self) -> int:
        if self._connection is None:
            raise StoreError(f"the tracking store {self.path} is closed")
        return count_messages(self._connection.cursor())

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def __enter__(self) -> SQLiteWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- The tracker -----------------------------------------------------------


@implementer(ITracker)
class LocalTracker:
    """Answers TRACK from a tracking store (the ``ITracker`` of a plain server).

        tracker = LocalTracker(store, "mtqp.example.com", unknown_message="opaque")
        answer = await tracker.track("12345-20010101@example.com", "YWJjZGVmZ2gK")

    The store keeps the time.
    """

    def __init__(
        self,
        store: ITrackingStore,
        hostname: str,
        unknown_message: str = "noinfo",
    ) -> None:
        if unknown_message not in UNKNOWN_MESSAGE_CHOICES:
            raise ValueError(f"unknown_message must be one of {UNKNOWN_MESSAGE_CHOICES}")
        self.store = store
        self.hostname = hostname
        self.unknown_message = unknown_message
        self._reporting_mta = f"dns; {hostname}"

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        """Fire with the Answer for ``envid``; the secret is only ever hashed."""

        def accept(certifier: str | None) -> bool:
            # Runs for a miss too (certifier None): both failures take the
            # same path and the same time.
            return check_secret(secret, certifier)

        d = self.store.lookup(envid, accept)
        d.addCallback(self._answer, envid)
        d.addErrback(self._unavailable, envid)
        return d

    def _answer(self, message: StoredMessage | None, envid: str) -> Answer:
        if message is None:
            return self._unknown(envid)
        return Answer.found(
            [
                TrackingStatus(
                    original_envelope_id=message.envid,
                    reporting_mta=self._reporting_mta,
                    arrival_date=message.arrival_date,
                    received_from_mta=message.received_from_mta,
                    extensions=message.extensions,
                    recipients=message.recipients,
                )
            ]
        )

    def _unknown(self, envid: str) -> Answer:
        if self.unknown_message == "noinfo":
            return Answer.noinfo()
        return Answer.found(
            [
                TrackingStatus(
                    original_envelope_id=envid,
                    reporting_mta=self._reporting_mta,
                    recipients=(
                        RecipientStatus(
                            final_recipient=OPAQUE_RECIPIENT,
                            action=Action.OPAQUE,
                            status=OPAQUE_STATUS,
                        ),
                    ),
                )
            ]
        )

    def _unavailable(self, failure: Failure, envid: str) -> Answer | Failure:
        if failure.check(defer.CancelledError):
            return failure
        log.failure("Tracking store look-up for {envid} failed", failure, envid=envid)
        return Answer.temp(("unavailable",), "Tracking store unavailable")
