"""Tests for the ``mtqp`` front: certifier, check-config and usage errors."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from mtqpgw import cli
from tests.certs import issue


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(argv))
        except SystemExit as e:  # argparse's own exits
            status = int(e.code or 0)
    return status, out.getvalue(), err.getvalue()


class CertifierTests(SynchronousTestCase):
    def test_plain_secret(self) -> None:
        status, out, err = run("certifier", "abcdefgh")
        expected = base64.b64encode(hashlib.sha1(b"abcdefgh").digest()).decode()
        self.assertEqual((status, out, err), (0, expected + "\n", ""))

    def test_base64_secret(self) -> None:
        # The seed's mtrk-secret is base64 of "abcdefgh" and a newline
        # (spec/seed-defects.md): hash the octets it decodes to.
        status, out, _ = run("certifier", "--base64", "YWJjZGVmZ2gK")
        expected = base64.b64encode(hashlib.sha1(b"abcdefgh\n").digest()).decode()
        self.assertEqual((status, out.strip()), (0, expected))

    def test_empty_secret_refused(self) -> None:
        status, out, err = run("certifier", "")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("empty", err)

    def test_version(self) -> None:
        from mtqpgw import __version__

        status, out, _ = run("--version")
        self.assertEqual((status, out.strip()), (0, f"mtqp (mtqpgw) {__version__}"))

    def test_bad_base64(self) -> None:
        status, out, err = run("certifier", "--base64", "not*base64")
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertNotIn("not*base64", err, "the secret is not echoed")


class CheckConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "mtqpgw.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_ok(self) -> None:
        path = self.write('[server]\nhostname = "mtqp.example.com"\n[store]\npath = "s.sqlite3"\n')
        self.assertEqual(run("check-config", path), (0, "ok\n", ""))
        store = os.path.join(os.path.dirname(path), "s.sqlite3")
        self.assertFalse(os.path.exists(store), "checking creates no store")

    def test_shipped_example(self) -> None:
        example = os.path.join(os.path.dirname(os.path.dirname(__file__)), "etc", "mtqpgw.toml")
        status, out, _ = run("check-config", example)
        self.assertEqual((status, out), (0, "ok\n"))

    def test_bad_value_one_line(self) -> None:
        path = self.write("[server]\nidle_timeout = 60\n")
        status, out, err = run("check-config", path)
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("server.idle_timeout", err)

    def test_certificate_that_does_not_load(self) -> None:
        # The daemon loads every certificate at start; check-config must too
        # (review m4): a file that exists but is not PEM is refused here.
        good = issue(["mtqp.example.com"])
        path = self.write(
            f"[tls]\ncertificates = [{{cert = 'garbage.pem', key = '{good.key}'}}]\n"
        )
        with open(os.path.join(os.path.dirname(path), "garbage.pem"), "w") as f:
            f.write("this is not a certificate\n")
        status, _, err = run("check-config", path)
        self.assertEqual(status, 1)
        self.assertIn("tls.certificates[0]", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_loadable_certificate(self) -> None:
        good = issue(["mtqp.example.com"])
        path = self.write(
            f"[tls]\ncertificates = [{{cert = '{good.cert}', key = '{good.key}'}}]\n"
        )
        self.assertEqual(run("check-config", path)[:2], (0, "ok\n"))

    def test_store_that_cannot_open(self) -> None:
        path = self.write('[store]\npath = "store"\n')
        os.makedirs(os.path.join(os.path.dirname(path), "store"))
        status, _, err = run("check-config", path)
        self.assertEqual(status, 1)
        self.assertIn("store", err)

    def test_foreign_database(self) -> None:
        path = self.write('[store]\npath = "other.db"\n')
        with open(os.path.join(os.path.dirname(path), "other.db"), "wb") as f:
            f.write(b"not a database at all, just bytes" * 100)
        status, _, err = run("check-config", path)
        self.assertEqual(status, 1)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_existing_store_left_untouched(self) -> None:
        # check-config looks; it neither migrates nor switches journal mode
        # (re-review finding 10).
        import sqlite3

        from mtqpgw.store import SQLiteWriter

        path = self.write('[store]\npath = "s.sqlite3"\n')
        store = os.path.join(os.path.dirname(path), "s.sqlite3")
        SQLiteWriter(store).close()
        db = sqlite3.connect(store)
        db.execute("PRAGMA journal_mode = DELETE")
        db.close()
        with open(store, "rb") as f:
            before = f.read()
        self.assertEqual(run("check-config", path)[:2], (0, "ok\n"))
        with open(store, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertFalse(os.path.exists(store + "-wal"))

    def test_newer_schema_refused(self) -> None:
        import sqlite3

        path = self.write('[store]\npath = "s.sqlite3"\n')
        db = sqlite3.connect(os.path.join(os.path.dirname(path), "s.sqlite3"))
        db.execute("PRAGMA user_version = 99")
        db.close()
        status, _, err = run("check-config", path)
        self.assertEqual(status, 1)
        self.assertIn("schema version 99", err)

    def test_missing_file(self) -> None:
        status, _, err = run("check-config", "/nonexistent/mtqpgw.toml")
        self.assertEqual(status, 1)
        self.assertIn("/nonexistent/mtqpgw.toml", err)


class ForgetServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        from mtqpgw.tofu import Observation, TofuCache

        cache_home = os.path.abspath(self.mktemp())
        self.patch(os, "environ", {**os.environ, "XDG_CACHE_HOME": cache_home})
        cache = TofuCache()
        cache.remember("mtqp.example.com", 1038, Observation(True, "ab" * 32))
        cache.remember("mtqp.example.com", 2038, Observation(True, "cd" * 32))

    def test_forget_one_port(self) -> None:
        status, out, _ = run("forget-server", "mtqp.example.com:1038")
        self.assertEqual(status, 0)
        self.assertIn("forgot mtqp.example.com:1038", out)
        self.assertEqual(run("forget-server", "mtqp.example.com:1038")[0], 1, "already gone")

    def test_forget_every_port(self) -> None:
        status, out, _ = run("forget-server", "mtqp.example.com")
        self.assertEqual((status, out.count("forgot")), (0, 2))

    def test_bad_argument(self) -> None:
        self.assertEqual(run("forget-server", "mtqp.example.com:99999")[0], 2)


class UsageTests(SynchronousTestCase):
    def test_no_command(self) -> None:
        self.assertEqual(run()[0], 2)

    def test_unknown_command(self) -> None:
        status, _, err = run("frobnicate")
        self.assertEqual(status, 2)
        self.assertIn("frobnicate", err)
