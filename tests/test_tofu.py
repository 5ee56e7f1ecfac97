# -*- test-case-name: tests.test_tofu -*-
"""Tests for mtqpgw.tofu: the client's remembered servers and its MITM alarms."""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.tofu import (
    Observation,
    TofuCache,
    certificate_sha256,
    combine,
    compare,
    default_cache_path,
    forget_server,
    notes,
    observation_from_info,
    server_key,
)
from tests import certs

FP1 = "a" * 64
FP2 = "b" * 64


class PureLogicTests(SynchronousTestCase):
    def test_first_use_is_silent(self) -> None:
        self.assertEqual(compare("h:1038", None, Observation(False)), [])
        self.assertEqual(compare("h:1038", None, Observation(True, FP1)), [])

    def test_starttls_stripped_alarms(self) -> None:
        (warning,) = compare("h:1038", Observation(True, FP1), Observation(False))
        self.assertIn("h:1038", warning)
        self.assertIn("STARTTLS", warning)
        self.assertTrue(warning.startswith("WARNING"))

    def test_certificate_changed_alarms(self) -> None:
        (warning,) = compare("h:1038", Observation(True, FP1), Observation(True, FP2))
        self.assertIn("different TLS certificate", warning)
        self.assertIn("BB:BB", warning, "the new fingerprint is shown")

    def test_verified_certificate_change_is_a_note(self) -> None:
        """A certificate the session verified against trusted CAs is a renewal, not an alarm."""
        before, now = Observation(True, FP1), Observation(True, FP2)
        self.assertEqual(compare("h:1038", before, now, verified=True), [])
        (note,) = notes("h:1038", before, now, verified=True)
        self.assertTrue(note.startswith("note: h:1038 presented a new TLS certificate"), note)
        self.assertIn("BB:BB", note)
        self.assertEqual(notes("h:1038", before, now), [], "unverified: the alarm, no note")
        self.assertEqual(notes("h:1038", before, before, verified=True), [])
        self.assertEqual(notes("h:1038", None, now, verified=True), [], "first use")

    def test_verified_does_not_excuse_a_stripped_starttls(self) -> None:
        (warning,) = compare("h", Observation(True, FP1), Observation(False), verified=True)
        self.assertIn("STARTTLS", warning)

    def test_both_alarms_at_once_are_impossible_but_each_is_independent(self) -> None:
        self.assertEqual(compare("h", Observation(True, FP1), Observation(True, FP1)), [])
        self.assertEqual(
            compare("h", Observation(True, FP1), Observation(True, None)),
            [],
            "a session without TLS (--tls off) shows no certificate: nothing to compare",
        )
        self.assertEqual(
            compare("h", Observation(False), Observation(True, FP2)), [], "TLS newly offered"
        )

    def test_combine_is_sticky_for_starttls(self) -> None:
        self.assertEqual(combine(None, Observation(False)), Observation(False))
        self.assertEqual(
            combine(Observation(True, FP1), Observation(False)), Observation(True, FP1)
        )
        self.assertEqual(
            combine(Observation(False), Observation(True, FP2)), Observation(True, FP2)
        )

    def test_fingerprint_is_normalised_and_checked(self) -> None:
        colon = ":".join(["AB"] * 32)
        self.assertEqual(Observation(True, colon).cert_sha256, "ab" * 32)
        self.assertRaises(ValueError, Observation, True, "not hex")

    def test_server_key(self) -> None:
        self.assertEqual(server_key("MTQP.Example.COM.", 1038), "mtqp.example.com:1038")
        self.assertEqual(server_key("::1", 1038), "[::1]:1038")
        self.assertEqual(server_key("[2001:DB8::1]", 5), "[2001:db8::1]:5")

    def test_certificate_sha256_accepts_every_shape(self) -> None:
        from OpenSSL import crypto
        from twisted.internet.ssl import Certificate

        leaf = certs.issue(["tofu.example.com"])
        expected = leaf.sha256
        der = leaf.certificate.public_bytes(Encoding.DER)
        with open(leaf.cert, "rb") as f:
            twisted_cert = Certificate.loadPEM(f.read())
        self.assertEqual(certificate_sha256(leaf.certificate), expected)
        self.assertEqual(certificate_sha256(der), expected)
        self.assertEqual(certificate_sha256(twisted_cert), expected)
        self.assertEqual(
            certificate_sha256(crypto.X509.from_cryptography(leaf.certificate)), expected
        )
        self.assertIsNone(certificate_sha256(None))

    def test_observation_from_info(self) -> None:
        leaf = certs.issue(["tofu.example.com"])
        after_tls = SimpleNamespace(
            options={},
            tls=True,
            starttls_offered_before_tls=True,
            peer_certificate=leaf.certificate,
        )
        self.assertEqual(observation_from_info(after_tls), Observation(True, leaf.sha256))
        clear_offered = SimpleNamespace(
            options={"starttls": ""},
            tls=False,
            starttls_offered_before_tls=False,
            peer_certificate=None,
        )
        self.assertEqual(observation_from_info(clear_offered), Observation(True))
        clear_none = SimpleNamespace(
            options={}, tls=False, starttls_offered_before_tls=False, peer_certificate=None
        )
        self.assertEqual(observation_from_info(clear_none), Observation(False))


class CacheFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.path = os.path.join(self.dir, "sub", "servers.json")

    def test_default_path_follows_xdg(self) -> None:
        self.assertEqual(
            str(default_cache_path({"XDG_CACHE_HOME": "/x/cache"})),
            "/x/cache/mtqpgw/servers.json",
        )
        self.assertTrue(
            str(default_cache_path({"XDG_CACHE_HOME": "relative"})).endswith(
                os.path.join(".cache", "mtqpgw", "servers.json")
            ),
            "a relative XDG_CACHE_HOME is ignored, as the XDG spec says",
        )

    def test_remember_then_alarm_across_instances(self) -> None:
        first = TofuCache(self.path)
        self.assertEqual(first.observe("mtqp.example.com", 1038, Observation(True, FP1)), [])
        mode = stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode)
        self.assertEqual(mode & 0o077, 0, "the cache directory is private")
        with open(self.path) as f:
            data = json.load(f)
        self.assertEqual(
            data["servers"], {"mtqp.example.com:1038": {"starttls": True, "cert_sha256": FP1}}
        )

        second = TofuCache(self.path)
        warnings = second.observe("MTQP.example.com", 1038, Observation(False))
        self.assertEqual(len(warnings), 2)
        self.assertIn("STARTTLS", warnings[0])
        self.assertIn(self.path, warnings[1], "the alarm says how to accept the change")
        self.assertIn('the entry "mtqp.example.com:1038" (under "servers")', warnings[1])
        self.assertEqual(
            TofuCache(self.path).get("mtqp.example.com", 1038),
            Observation(True, FP1),
            "an alarm does not overwrite the remembered record",
        )
        self.assertEqual(
            len(TofuCache(self.path).observe("mtqp.example.com", 1038, Observation(True, FP2))), 2
        )
        self.assertEqual(
            TofuCache(self.path).observe("mtqp.example.com", 1039, Observation(False)),
            [],
            "another port is another server",
        )

    def test_forget_accepts_a_change(self) -> None:
        cache = TofuCache(self.path)
        cache.observe("h.example", 1038, Observation(True, FP1))
        self.assertTrue(cache.forget("h.example", 1038))
        self.assertFalse(cache.forget("h.example", 1038))
        self.assertEqual(
            TofuCache(self.path).observe("h.example", 1038, Observation(True, FP2)), []
        )
        self.assertEqual(TofuCache(self.path).get("h.example", 1038), Observation(True, FP2))

    def test_verified_renewal_replaces_the_record(self) -> None:
        TofuCache(self.path).observe("h.example", 1038, Observation(True, FP1))
        (line,) = TofuCache(self.path).observe(
            "h.example", 1038, Observation(True, FP2), verified=True
        )
        self.assertTrue(line.startswith("note: "), line)
        self.assertEqual(TofuCache(self.path).get("h.example", 1038), Observation(True, FP2))
        self.assertEqual(
            TofuCache(self.path).observe("h.example", 1038, Observation(True, FP2)),
            [],
            "the renewed certificate is the remembered one now: no alarm next time",
        )

    def test_unverified_change_keeps_alarming(self) -> None:
        TofuCache(self.path).observe("h.example", 1038, Observation(True, FP1))
        for _ in range(2):
            warnings = TofuCache(self.path).observe("h.example", 1038, Observation(True, FP2))
            self.assertTrue(warnings[0].startswith("WARNING: "))
        self.assertEqual(TofuCache(self.path).get("h.example", 1038), Observation(True, FP1))

    def test_forget_server(self) -> None:
        cache = TofuCache(self.path)
        for host, port in (("h.example", 1038), ("h.example", 2000), ("::1", 1038), ("g", 1)):
            cache.remember(host, port, Observation(True, FP1))
        self.assertEqual(forget_server("H.example:2000", self.path), ["h.example:2000"])
        self.assertEqual(forget_server("h.example:2000", self.path), [])
        self.assertEqual(forget_server("[::1]:1038", self.path), ["[::1]:1038"])
        TofuCache(self.path).remember("h.example", 2000, Observation(True, FP1))
        self.assertEqual(
            forget_server("h.example", self.path),
            ["h.example:1038", "h.example:2000"],
            "a bare host: every port of it",
        )
        self.assertEqual(TofuCache(self.path).keys(), ["g:1"])
        self.assertRaises(ValueError, forget_server, "h.example:port", self.path)

    def test_corrupt_file_is_an_empty_memory(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("{not json")
        cache = TofuCache(self.path)
        self.assertEqual(len(cache), 0)
        self.assertEqual(len(cache.problems), 1)
        cache.observe("h.example", 1038, Observation(True))
        self.assertEqual(len(TofuCache(self.path)), 1, "rewritten on the next change")

    def test_bad_entry_skipped(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            json.dump(
                {
                    "version": 1,
                    "servers": {
                        "good:1": {"starttls": True, "cert_sha256": None},
                        "bad:1": {"starttls": "yes"},
                    },
                },
                f,
            )
        cache = TofuCache(self.path)
        self.assertEqual(len(cache), 1)
        self.assertEqual(len(cache.problems), 1)

    def test_unwritable_location_is_reported_not_raised(self) -> None:
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file where a directory should be")
        cache = TofuCache(os.path.join(blocker, "servers.json"))
        self.assertEqual(cache.observe("h.example", 1038, Observation(True)), [])
        self.assertTrue(any(p.startswith("cannot write") for p in cache.problems))

    def test_nothing_secret_is_stored(self) -> None:
        cache = TofuCache(self.path)
        cache.observe("h.example", 1038, Observation(True, FP1))
        with open(self.path) as f:
            entry = json.load(f)["servers"]["h.example:1038"]
        self.assertEqual(set(entry), {"starttls", "cert_sha256"})
