"""Tests for mtqpgw.importer: the JSON Lines record parser and ``mtqp import``."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sqlite3
import sys
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw import cli, importer
from mtqpgw.certifier import certifier_for
from mtqpgw.importer import DEFAULT_EXPIRY, ImportLineError, main, parse_line
from mtqpgw.status import Action, RecipientStatus
from mtqpgw.store import SQLiteWriter, StoredMessage, select_message

NOW = 1_800_000_000.0
CERTIFIER = certifier_for(b"abcdefgh\n")
SECRET = "correct horse battery staple"


def record(**changes: Any) -> dict[str, Any]:
    """A valid import object (the example of interface.md section 3, current dates)."""
    obj: dict[str, Any] = {
        "envid": "12345-20010101@example.com",
        "certifier": CERTIFIER,
        "arrival_date": "Mon, 30 Nov 2026 15:15:15 -0500",
        "received_from_mta": "dns; client.example.net",
        "expires": "2026-12-30T00:00:00Z",
        "recipients": [
            {
                "original_recipient": "rfc822; user1@example1.com",
                "final_recipient": "rfc822; user1@example1.com",
                "action": "relayed",
                "status": "2.1.9",
                "remote_mta": "dns; smtp.corp.example.com",
                "last_attempt_date": "Mon, 30 Nov 2026 19:15:03 -0500",
                "will_retry_until": None,
                "diagnostic_code": None,
            }
        ],
    }
    return _changed(obj, changes)


_DROP = object()


def _changed(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``changes`` applied; a value of ``_DROP`` removes its key."""
    for key, value in changes.items():
        if value is _DROP:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def line(**changes: Any) -> str:
    return json.dumps(record(**changes))


def rcpt(**changes: Any) -> dict[str, Any]:
    return _changed(dict(record()["recipients"][0]), changes)


class ParseLineTests(SynchronousTestCase):
    def assertBad(self, text: str, reason: str) -> ImportLineError:
        with self.assertRaises(ImportLineError) as caught:
            parse_line(text, NOW)
        self.assertIn(reason, str(caught.exception))
        self.assertIsInstance(caught.exception, ValueError)
        return caught.exception

    def test_contract_example(self) -> None:
        got = parse_line(line(), NOW)
        self.assertEqual(
            got,
            StoredMessage(
                envid="12345-20010101@example.com",
                certifier=CERTIFIER,
                arrival_date="Mon, 30 Nov 2026 15:15:15 -0500",
                received_from_mta="dns; client.example.net",
                expires=int(datetime(2026, 12, 30, tzinfo=UTC).timestamp()),
                recipients=(
                    RecipientStatus(
                        original_recipient="rfc822; user1@example1.com",
                        final_recipient="rfc822; user1@example1.com",
                        action=Action.RELAYED,
                        status="2.1.9",
                        remote_mta="dns; smtp.corp.example.com",
                        last_attempt_date="Mon, 30 Nov 2026 19:15:03 -0500",
                    ),
                ),
            ),
        )

    def test_angle_brackets_stripped_once(self) -> None:
        self.assertEqual(parse_line(line(envid="<a@b>"), NOW).envid, "a@b")
        self.assertBad(line(envid="<<a@b>>"), "angle brackets")
        self.assertBad(line(envid="<a@b"), "angle brackets")
        self.assertBad(line(envid="<>"), "empty")

    def test_envid_checked(self) -> None:
        self.assertBad(line(envid=""), "empty")
        self.assertBad(line(envid=_DROP), "envid is required")
        self.assertBad(line(envid=12), "envid must be a string")
        self.assertBad(line(envid="a b"), "printable")
        self.assertBad(line(envid="a\tb"), "printable")
        self.assertBad(line(envid="caf\u00e9"), "printable")
        self.assertBad(line(envid="x" * 101), "longer")
        self.assertEqual(parse_line(line(envid="x" * 100), NOW).envid, "x" * 100)

    def test_secret_is_hashed(self) -> None:
        got = parse_line(line(certifier=_DROP, secret=SECRET), NOW)
        expected = base64.b64encode(hashlib.sha1(SECRET.encode()).digest()).decode()
        self.assertEqual(got.certifier, expected)
        self.assertNotIn(SECRET, repr(got))

    def test_secret_utf8(self) -> None:
        got = parse_line(line(certifier=_DROP, secret="s\u00e9cret"), NOW)
        self.assertEqual(got.certifier, certifier_for("s\u00e9cret".encode()))

    def test_exactly_one_of_certifier_and_secret(self) -> None:
        self.assertBad(line(secret=SECRET), "exactly one")
        self.assertBad(line(certifier=_DROP), "exactly one")
        self.assertBad(line(certifier=None), "exactly one")
        self.assertBad(line(certifier=_DROP, secret=""), "secret must be")
        self.assertBad(line(certifier=_DROP, secret=5), "secret must be")

    def test_certifier_checked(self) -> None:
        for bad in ("not base64!", "YWJjZGVmZ2gK", base64.b64encode(b"x" * 21).decode(), 5, ""):
            error = self.assertBad(line(certifier=bad), "20 octets")
            if isinstance(bad, str) and bad:
                self.assertNotIn(bad, str(error))

    def test_certifier_canonical(self) -> None:
        # Strict base64 lets the two unused bits before "=" vary.
        canonical = base64.b64encode(b"\x01" * 20).decode()
        self.assertTrue(canonical.endswith("E="))
        odd = canonical[:-2] + "F="
        self.assertEqual(parse_line(line(certifier=odd), NOW).certifier, canonical)

    def test_recipients_checked(self) -> None:
        self.assertBad(line(recipients=[]), "non-empty list")
        self.assertBad(line(recipients=_DROP), "non-empty list")
        self.assertBad(line(recipients={"a": 1}), "non-empty list")
        self.assertBad(line(recipients=["x"]), "recipients[0]: must be an object")
        self.assertBad(line(recipients=[rcpt(), rcpt(action=_DROP)]), "recipients[1]: action")
        self.assertBad(line(recipients=[rcpt(status=_DROP)]), "status is required")
        self.assertBad(line(recipients=[rcpt(status="2.0")]), "RFC 3463")
        self.assertBad(line(recipients=[rcpt(status="3.0.0")]), "RFC 3463")
        self.assertBad(line(recipients=[rcpt(action="queued")]), "action must be one of")
        self.assertBad(line(recipients=[rcpt(nickname="x")]), "unknown key 'nickname'")

    def test_status_with_comment(self) -> None:
        got = parse_line(line(recipients=[rcpt(status="4.4.1 (No answer from host)")]), NOW)
        self.assertEqual(got.recipients[0].status, "4.4.1 (No answer from host)")

    def test_action_case(self) -> None:
        got = parse_line(line(recipients=[rcpt(action="Delivered")]), NOW)
        self.assertIs(got.recipients[0].action, Action.DELIVERED)

    def test_final_recipient_falls_back_to_original(self) -> None:
        got = parse_line(line(recipients=[rcpt(final_recipient=_DROP)]), NOW)
        self.assertEqual(got.recipients[0].final_recipient, "rfc822; user1@example1.com")
        self.assertBad(
            line(recipients=[rcpt(final_recipient=None, original_recipient=None)]),
            "final_recipient is required",
        )

    def test_types_added(self) -> None:
        got = parse_line(
            line(
                received_from_mta="client.example.net",
                recipients=[
                    rcpt(
                        original_recipient="a@b",
                        final_recipient="c@d",
                        remote_mta="smtp.example.com",
                        diagnostic_code="smtp; 550 no",
                    )
                ],
            ),
            NOW,
        )
        self.assertEqual(got.received_from_mta, "dns; client.example.net")
        r = got.recipients[0]
        self.assertEqual(
            (r.original_recipient, r.final_recipient, r.remote_mta, r.diagnostic_code),
            ("rfc822; a@b", "rfc822; c@d", "dns; smtp.example.com", "smtp; 550 no"),
        )
        self.assertBad(line(recipients=[rcpt(final_recipient="rfc822;")]), "type; value")

    def test_unknown_and_duplicate_keys(self) -> None:
        self.assertBad(line(arival_date="x"), "unknown key 'arival_date'")
        self.assertBad('{"envid": "a", "envid": "b"}', "duplicate key 'envid'")
        self.assertBad(line(dsn_gateway="dns; x"), "unknown key")

    def test_not_json(self) -> None:
        self.assertBad("{", "not valid JSON")
        self.assertBad("[1, 2]", "not a JSON object")
        self.assertBad('"envid"', "not a JSON object")
        self.assertBad("[" * 100000, "not valid JSON")
        self.assertBad(line(expires=float("nan")).replace("NaN", "NaN"), "not a number")

    def test_control_characters_refused(self) -> None:
        # A CR or LF in a value would inject fields into the report.
        self.assertBad(line(received_from_mta="dns; a\r\nStatus: 2.0.0"), "control")
        self.assertBad(line(recipients=[rcpt(diagnostic_code="smtp; 550\nX: y")]), "control")
        for bad in ("\x00", "\x85", "\u2028", "\x1b"):
            self.assertBad(line(received_from_mta=f"dns; a{bad}b"), "control")
        got = parse_line(line(recipients=[rcpt(diagnostic_code="smtp; 550\tno \u00e9")]), NOW)
        self.assertEqual(got.recipients[0].diagnostic_code, "smtp; 550\tno \u00e9")

    def test_null_is_absent(self) -> None:
        got = parse_line(line(received_from_mta=None, arrival_date=None, expires=None), NOW)
        self.assertIsNone(got.received_from_mta)
        self.assertIsNone(got.arrival_date)

    def test_rfc5322_dates_kept(self) -> None:
        for text in ("Mon, 30 Nov 2026 15:15:15 -0500", "30 Nov 2026 15:15 +0100"):
            got = parse_line(line(arrival_date=text), NOW)
            self.assertEqual(got.arrival_date, text)

    def test_loose_rfc5322_dates_normalised(self) -> None:
        got = parse_line(line(arrival_date="Mon, 30 Nov 2026 15:15:15 EST"), NOW)
        self.assertEqual(got.arrival_date, "Mon, 30 Nov 2026 15:15:15 -0500")
        got = parse_line(line(arrival_date="Tue, 30 Nov 2026 15:15:15 -0500"), NOW)
        self.assertEqual(got.arrival_date, "Mon, 30 Nov 2026 15:15:15 -0500")
        got = parse_line(line(arrival_date="Mon,  30 Nov 2026 15:15:15 -0000"), NOW)
        self.assertEqual(got.arrival_date, "Mon, 30 Nov 2026 15:15:15 +0000")

    def test_iso_dates_converted(self) -> None:
        cases = {
            "2026-11-30T15:15:15-05:00": "Mon, 30 Nov 2026 15:15:15 -0500",
            "2026-11-30T20:15:15Z": "Mon, 30 Nov 2026 20:15:15 +0000",
            "2026-11-30 20:15:15": "Mon, 30 Nov 2026 20:15:15 +0000",
            "2026-11-30": "Mon, 30 Nov 2026 00:00:00 +0000",
        }
        for iso, rfc in cases.items():
            got = parse_line(line(arrival_date=iso, recipients=[rcpt(last_attempt_date=iso)]), NOW)
            self.assertEqual(got.arrival_date, rfc, iso)
            self.assertEqual(got.recipients[0].last_attempt_date, rfc, iso)
            # What the report carries reads back as the same moment.
            moment = datetime.fromisoformat(iso)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            self.assertEqual(parsedate_to_datetime(got.arrival_date), moment)

    def test_bad_dates(self) -> None:
        for bad in ("yesterday", "2026-13-01", "", "32 Nov 2026 10:00 +0000", 12):
            self.assertBad(line(arrival_date=bad), "arrival_date")
        self.assertBad(line(recipients=[rcpt(will_retry_until="soon")]), "will_retry_until")

    def test_expiry(self) -> None:
        arrival = parsedate_to_datetime("Mon, 30 Nov 2026 15:15:15 -0500").timestamp()
        self.assertEqual(parse_line(line(expires=None), NOW).expires, arrival + DEFAULT_EXPIRY)
        self.assertEqual(DEFAULT_EXPIRY, 30 * 86400)
        self.assertEqual(
            parse_line(line(expires=None, arrival_date=None), NOW).expires, NOW + DEFAULT_EXPIRY
        )
        self.assertEqual(parse_line(line(expires=1_900_000_000), NOW).expires, 1_900_000_000)
        self.assertEqual(
            parse_line(line(expires="Wed, 30 Dec 2026 00:00:00 +0000"), NOW).expires,
            int(datetime(2026, 12, 30, tzinfo=UTC).timestamp()),
        )
        self.assertBad(line(expires=True), "expires")
        self.assertBad(line(expires=-1), "out of range")
        self.assertBad(line(expires="never"), "expires")

    def test_extensions(self) -> None:
        got = parse_line(
            line(
                extensions={"X-Queue-Id": "4Ab1", "X-Other": "y"},
                recipients=[rcpt(extensions={"X-Note": "z"})],
            ),
            NOW,
        )
        self.assertEqual(got.extensions, (("X-Queue-Id", "4Ab1"), ("X-Other", "y")))
        self.assertEqual(got.recipients[0].extensions, (("X-Note", "z"),))
        self.assertBad(line(extensions=["X-A"]), "must be an object")
        self.assertBad(line(extensions={"Bad Name": "x"}), "not a field name")
        self.assertBad(line(extensions={"Status": "2.0.0"}), "standard field")
        self.assertBad(line(extensions={"X-A": 1}), "must be a string")

    @settings(max_examples=300)
    @given(st.text(max_size=200))
    def test_any_text_parses_or_is_refused(self, text: str) -> None:
        try:
            parse_line(text, NOW)
        except ImportLineError:
            pass

    @settings(max_examples=300)
    @given(
        st.dictionaries(
            st.sampled_from(sorted(importer._TOP_KEYS) + ["zz"]),
            st.none()
            | st.booleans()
            | st.integers()
            | st.text(max_size=30)
            | st.lists(
                st.dictionaries(
                    st.sampled_from(sorted(importer._RECIPIENT_KEYS)),
                    st.none() | st.text(max_size=20),
                ),
                max_size=3,
            ),
        ),
        # Sixteen hex digits: no error message can contain that by chance.
        st.text(alphabet="0123456789abcdef", min_size=16, max_size=32),
    )
    def test_any_object_parses_or_is_refused(self, obj: dict[str, Any], secret: str) -> None:
        obj = dict(obj)
        obj["secret"] = secret
        obj.pop("certifier", None)
        try:
            got = parse_line(json.dumps(obj), NOW)
        except ImportLineError as e:
            self.assertNotIn(secret, str(e))
        else:
            self.assertTrue(got.recipients)
            self.assertEqual(got.certifier, certifier_for(secret.encode()))


class MainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.db = os.path.join(self.dir, "store.sqlite3")
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def write(self, name: str, *lines: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(text + "\n" for text in lines))
        return path

    def run_import(self, *files: str, store: str | None = None) -> int:
        args = argparse.Namespace(config=None, store=store or self.db, files=list(files))
        return main(args)

    def stored(self, envid: str) -> StoredMessage | None:
        connection = sqlite3.connect(self.db)
        self.addCleanup(connection.close)
        # Time 0: these tests look at what was stored, expired or not.
        return select_message(connection.cursor(), envid, 0)

    def count(self) -> int:
        with SQLiteWriter(self.db) as writer:
            return writer.count()

    def test_good_and_bad_lines(self) -> None:
        path = self.write(
            "in.jsonl",
            line(envid="one@example.com"),
            "{not json",
            "",
            line(envid="two@example.com", recipients=[]),
            line(envid="three@example.com", certifier=_DROP, secret=SECRET),
            "   ",
            line(envid="four", arrival_date="never"),
        )
        self.assertEqual(self.run_import(path), 1)
        errors = self.stderr.getvalue().splitlines()
        self.assertEqual(len(errors), 3)
        self.assertTrue(errors[0].startswith(f"{path}:2: not valid JSON"), errors[0])
        self.assertTrue(errors[1].startswith(f"{path}:4: recipients"), errors[1])
        self.assertTrue(errors[2].startswith(f"{path}:7: arrival_date"), errors[2])
        self.assertEqual(
            self.stdout.getvalue(), f"imported 2 records into {self.db}, 3 bad lines\n"
        )
        self.assertIsNotNone(self.stored("one@example.com"))
        self.assertIsNotNone(self.stored("three@example.com"))
        self.assertIsNone(self.stored("two@example.com"))
        self.assertEqual(self.count(), 2)

    def test_already_expired_warned_and_kept(self) -> None:
        # Stored (a later import may extend it) but never reported: say so.
        path = self.write("in.jsonl", line(envid="old", expires="2020-01-01T00:00:00Z"))
        self.assertEqual(self.run_import(path), 0)
        self.assertEqual(
            self.stderr.getvalue(),
            f"{path}:1: warning: already expired; it will never be reported\n",
        )
        self.assertEqual(self.count(), 1)

    def test_all_good(self) -> None:
        path = self.write("in.jsonl", line(envid="a"), line(envid="b"))
        self.assertEqual(self.run_import(path), 0)
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(
            self.stdout.getvalue(), f"imported 2 records into {self.db}, 0 bad lines\n"
        )

    def test_several_files_and_update(self) -> None:
        first = self.write("1.jsonl", line())
        update = rcpt(action="delivered", status="2.0.0", remote_mta=None)
        second = self.write(
            "2.jsonl",
            line(
                recipients=[update, rcpt(original_recipient="rfc822; x@y", final_recipient=_DROP)]
            ),
        )
        self.assertEqual(self.run_import(first, second), 0)
        got = self.stored("12345-20010101@example.com")
        assert got is not None
        self.assertEqual([r.action for r in got.recipients], [Action.DELIVERED, Action.RELAYED])
        self.assertEqual(got.recipients[1].final_recipient, "rfc822; x@y")

    def test_stdin(self) -> None:
        data = (line(envid="in@stdin") + "\n" + "nope\n").encode()
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        self.assertEqual(self.run_import("-"), 1)
        self.assertEqual(self.stderr.getvalue().splitlines()[0][:10], "<stdin>:2:")
        self.assertIsNotNone(self.stored("in@stdin"))

    def test_stdin_text_stream(self) -> None:
        self.patch(sys, "stdin", io.StringIO(line(envid="in@stdin") + "\r\n"))
        self.assertEqual(self.run_import("-"), 0)
        self.assertIsNotNone(self.stored("in@stdin"))

    def test_not_utf8_and_bom(self) -> None:
        path = os.path.join(self.dir, "bytes.jsonl")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + line(envid="bom").encode() + b"\n")
            f.write(json.dumps(record(envid="caf\u00e9"), ensure_ascii=False).encode("latin-1"))
        self.assertEqual(self.run_import(path), 1)
        self.assertEqual(self.stderr.getvalue(), f"{path}:2: not UTF-8\n")
        self.assertIsNotNone(self.stored("bom"))

    def test_secret_never_stored_or_printed(self) -> None:
        secret = "Sup3r-Secr3t-Value-0123456789"
        path = self.write(
            "in.jsonl",
            line(envid="s1", certifier=_DROP, secret=secret),
            line(envid="s2", certifier=_DROP, secret=secret, recipients=[]),
            line(envid="s3", certifier=secret),
            line(envid="s4", certifier=_DROP, secret=secret, expires="x"),
        )
        self.assertEqual(self.run_import(path), 1)
        got = self.stored("s1")
        assert got is not None
        self.assertEqual(got.certifier, certifier_for(secret.encode()))
        output = self.stdout.getvalue() + self.stderr.getvalue()
        self.assertNotIn(secret, output)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(self.db + suffix):
                with open(self.db + suffix, "rb") as f:
                    raw = f.read()
                self.assertNotIn(secret.encode(), raw)
                self.assertNotIn(base64.b64encode(secret.encode()), raw)

    def test_batches(self) -> None:
        self.patch(importer, "BATCH_SIZE", 7)
        path = self.write("in.jsonl", *(line(envid=f"m{i}") for i in range(50)))
        self.assertEqual(self.run_import(path), 0)
        self.assertEqual(self.count(), 50)

    def test_store_failure_mid_way(self) -> None:
        # The second batch fails: the first is committed, nothing of the
        # second is, and the user gets one line and status 2.
        self.patch(importer, "BATCH_SIZE", 5)
        real = SQLiteWriter.upsert
        calls = []

        def flaky(writer: SQLiteWriter, records: Any) -> int:
            calls.append(len(records))
            if len(calls) == 2:
                records = list(records[:2]) + [
                    StoredMessage(envid="bad", certifier=object(), expires=0, recipients=())  # type: ignore[arg-type]
                ]
            return real(writer, records)

        self.patch(SQLiteWriter, "upsert", flaky)
        path = self.write("in.jsonl", *(line(envid=f"m{i}") for i in range(12)))
        self.assertEqual(self.run_import(path), 2)
        self.assertEqual(self.count(), 5)
        self.assertIsNone(self.stored("m5"))
        errors = self.stderr.getvalue().splitlines()
        self.assertEqual(len(errors), 1)
        self.assertIn(self.db, errors[0])
        self.assertEqual(
            self.stdout.getvalue(), f"imported 5 records into {self.db}, 0 bad lines\n"
        )

    def test_unreadable_file(self) -> None:
        good = self.write("good.jsonl", line())
        missing = os.path.join(self.dir, "missing.jsonl")
        self.assertEqual(self.run_import(good, missing), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            f"mtqp import: cannot read {missing}: No such file or directory\n",
        )
        # Nothing imported: every file is opened before the first is read.
        self.assertFalse(os.path.exists(self.db))

    def test_directory_as_file(self) -> None:
        self.assertEqual(self.run_import(self.dir), 2)
        self.assertEqual(len(self.stderr.getvalue().splitlines()), 1)

    def test_store_cannot_be_opened(self) -> None:
        path = self.write("in.jsonl", line())
        db = os.path.join(self.dir, "no", "such", "dir", "store.sqlite3")
        self.assertEqual(self.run_import(path, store=db), 2)
        message = self.stderr.getvalue()
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn(db, message)
        self.assertEqual(self.stdout.getvalue(), "")

    def test_read_only_store(self) -> None:
        path = self.write("in.jsonl", line())
        SQLiteWriter(self.db).close()
        os.chmod(self.db, 0o444)
        self.assertEqual(self.run_import(path), 2)
        self.assertIn(self.db, self.stderr.getvalue())
        self.assertIn("read-only", self.stderr.getvalue())

    def test_default_store_path(self) -> None:
        path = os.path.abspath(self.write("in.jsonl", line()))
        here = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, here)
        args = argparse.Namespace(config=None, store=None, files=[path])
        self.assertEqual(main(args), 0)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "mtqpgw.sqlite3")))

    def test_config_store_path(self) -> None:
        try:
            import mtqpgw.config  # noqa: F401
        except ImportError:
            raise self.skipTest("mtqpgw.config is not written yet") from None
        db = os.path.join(self.dir, "from-config.sqlite3")
        config = os.path.join(self.dir, "mtqpgw.toml")
        with open(config, "w") as f:
            f.write('[store]\npath = "from-config.sqlite3"\n')
        path = self.write("in.jsonl", line())
        args = argparse.Namespace(config=config, store=None, files=[path])
        self.assertEqual(main(args), 0)
        self.assertTrue(os.path.exists(db))

    def test_through_cli(self) -> None:
        path = self.write("in.jsonl", line(), "[]")
        self.assertEqual(cli.main(["import", "--store", self.db, path]), 1)
        self.assertEqual(self.stdout.getvalue(), f"imported 1 record into {self.db}, 1 bad line\n")
        self.assertEqual(self.stderr.getvalue(), f"{path}:2: not a JSON object\n")
