"""The tracking store under faults: unusable store files at start-up, and an import killed half-way.

Tests run as root here, so a file's permission bits stop nobody: the faults
are ones root meets too (the path is a directory, its directory is missing,
the file is not a database, the file is another program's SQLite database)
plus the read-only mark the store honours on purpose.  The daemon must refuse
each at start-up in one line naming the path, and leave the file as it was.

``mtqp import`` runs in a child process that is SIGKILLed half-way, once at
a chosen point inside a transaction (the child kills itself from SQLite's
statement trace) and once from outside at a moment the test does not pick
exactly.  Either way every stored message keeps all its recipients.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mtqpgw import importer, tap
from mtqpgw.store import SQLiteWriter, select_message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAR_FUTURE = 4_102_444_800  # 2100-01-01


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class StartUpTests(SynchronousTestCase):
    """``twistd mtqpgw`` refuses a store it cannot use: one line, the path named, nothing changed."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def config(self, store_path: str) -> str:
        path = os.path.join(self.dir, "mtqpgw.toml")
        with open(path, "w") as f:
            f.write(
                "[server]\n"
                'listen = "tcp:0:interface=127.0.0.1"\n'
                'hostname = "mtqp.example.com"\n'
                "[store]\n"
                f"path = {json.dumps(store_path)}\n"
            )
        return path

    def start(self, store_path: str) -> Any:
        """What the plugin does at start-up (without starting the service)."""
        options = tap.Options()
        options.parseOptions(["--config", self.config(store_path)])
        return tap.makeService(options)

    def refusal(self, store_path: str) -> str:
        with self.assertRaises(SystemExit) as caught:
            self.start(store_path)
        message = str(caught.exception.code)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertNotIn("Traceback", message)
        return message

    def foreign_database(self, table: str = "users") -> str:
        path = os.path.join(self.dir, "other.db")
        db = sqlite3.connect(path)
        db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute(f"INSERT INTO {table} (name) VALUES ('someone else''s data')")
        db.commit()
        db.close()
        return path

    def test_usable_path_starts(self) -> None:
        # The control: the same start-up with a fresh path goes through.
        self.assertIsNotNone(self.start(os.path.join(self.dir, "store.sqlite3")))

    def test_path_is_a_directory(self) -> None:
        path = os.path.join(self.dir, "store.sqlite3")
        os.makedirs(path)
        message = self.refusal(path)
        self.assertIn("store.path", message)
        self.assertIn(path, message)

    def test_directory_missing(self) -> None:
        missing = os.path.join(self.dir, "no-such-dir")
        message = self.refusal(os.path.join(missing, "store.sqlite3"))
        self.assertIn("store.path", message)
        self.assertIn(missing, message)

    def test_not_a_database(self) -> None:
        path = os.path.join(self.dir, "store.sqlite3")
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * 32)
        before = _digest(path)
        message = self.refusal(path)
        self.assertIn(path, message)
        self.assertIn("not a database", message)
        self.assertEqual(_digest(path), before)

    def test_another_programs_database(self) -> None:
        path = self.foreign_database()
        before = _digest(path)
        message = self.refusal(path)
        self.assertIn(path, message)
        # Refused before anything was written: no tables added, no WAL switch.
        self.assertEqual(_digest(path), before)
        self.assertFalse(os.path.exists(path + "-wal"))

    def test_another_programs_database_with_clashing_names(self) -> None:
        path = self.foreign_database(table="messages")
        before = _digest(path)
        self.assertIn(path, self.refusal(path))
        self.assertEqual(_digest(path), before)

    def test_read_only_store(self) -> None:
        path = os.path.join(self.dir, "store.sqlite3")
        SQLiteWriter(path).close()
        os.chmod(path, 0o444)
        message = self.refusal(path)
        self.assertIn(path, message)
        self.assertIn("read-only", message)

    def test_twistd_exits_on_another_programs_database(self) -> None:
        path = self.foreign_database()
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
            + ["-n", "--pidfile=", "mtqpgw", "--config", self.config(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("mtqpgw: "), lines[0])
        self.assertIn(path, lines[0])


# --- an import killed half-way ------------------------------------------------

# Run in the child: mtqp import, SIGKILLed by itself when it starts writing
# recipients in its third batch, after two batches have been committed.
_KILL_IN_THIRD_BATCH = """
import os, signal, sqlite3, sys

commits = 0


def trace(statement):
    global commits
    words = statement.split()
    if words[:1] == ["COMMIT"]:
        commits += 1
    elif commits == 2 and "recipients" in words and words[0] == "INSERT":
        os.kill(os.getpid(), signal.SIGKILL)


real_connect = sqlite3.connect


def connect(*args, **kwargs):
    connection = real_connect(*args, **kwargs)
    connection.set_trace_callback(trace)
    return connection


sqlite3.connect = connect
from mtqpgw import cli

sys.exit(cli.main(["import", "--store", sys.argv[1], sys.argv[2]]))
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class _Child(protocol.ProcessProtocol):
    """Watches ``mtqp import``; kills it when its stderr shows it reached the planted bad line."""

    def __init__(self) -> None:
        self.stderr = b""
        self.ended: defer.Deferred[BaseException] = defer.Deferred()
        self.killed_at: float | None = None

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        if self.killed_at is None and b": not a JSON object" in self.stderr:
            self.killed_at = time.monotonic()
            self.transport.signalProcess("KILL")

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


class KilledImportTests(TestCase):
    """SIGKILL mid-import leaves whole records only: one transaction per batch."""

    timeout = 60
    RECORDS = 12_000

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "store.sqlite3")
        SQLiteWriter(self.db).close()
        self.expected: dict[str, int] = {}

    def write_records(self, bad_line_after: int | None = None) -> str:
        """RECORDS messages of 1 to 6 recipients each (a bad line planted after some)."""
        path = os.path.join(self.dir, "records.jsonl")
        with open(path, "w") as f:
            for i in range(self.RECORDS):
                if i == bad_line_after:
                    f.write("[]\n")
                envid = f"kill-{i}@example.com"
                count = 1 + (i * 7) % 6
                self.expected[envid] = count
                record = {
                    "envid": envid,
                    "secret": f"secret-{i}",
                    "expires": FAR_FUTURE,
                    "recipients": [
                        {
                            "final_recipient": f"rfc822; r{j}-{i}@example.net",
                            "action": "delivered",
                            "status": "2.0.0",
                        }
                        for j in range(count)
                    ],
                }
                f.write(json.dumps(record) + "\n")
        return path

    def stored(self) -> int:
        """How many messages are stored; each one must have all its recipients."""
        db = sqlite3.connect(self.db)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            cursor = db.cursor()
            found = 0
            for envid, count in self.expected.items():
                message = select_message(cursor, envid, time.time())
                if message is not None:
                    found += 1
                    self.assertEqual(len(message.recipients), count, f"half a record: {envid}")
            return found
        finally:
            db.close()

    def test_killed_inside_a_transaction(self) -> None:
        source = self.write_records()
        result = subprocess.run(
            [sys.executable, "-c", _KILL_IN_THIRD_BATCH, self.db, source],
            cwd=self.dir,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, -signal.SIGKILL, result.stderr)
        # The third batch's message rows were written and not committed: gone.
        self.assertEqual(self.stored(), 2 * importer.BATCH_SIZE)

    async def test_killed_from_outside(self) -> None:
        planted = 6 * importer.BATCH_SIZE - 1
        source = self.write_records(bad_line_after=planted)
        child = _Child()
        reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-m", "mtqpgw.cli", "import", "--store", self.db, source],
            env=_child_env(),
            path=self.dir,
        )
        reason = await child.ended
        self.assertIsNotNone(child.killed_at, child.stderr)
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertEqual(reason.signal, signal.SIGKILL)
        stored = self.stored()
        self.assertGreater(stored, 0)
        self.assertLess(stored, self.RECORDS, "the import was killed before it finished")
        self.assertEqual(stored % importer.BATCH_SIZE, 0, "whole batches only")
        # Run again: the import completes over what the killed one left.
        rerun = subprocess.run(
            [sys.executable, "-m", "mtqpgw.cli", "import", "--store", self.db, source],
            cwd=self.dir,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(rerun.returncode, 1, rerun.stderr)
        self.assertEqual(
            rerun.stdout, f"imported {self.RECORDS} records into {self.db}, 1 bad line\n"
        )
        self.assertEqual(self.stored(), self.RECORDS)
