"""Tests for mtqpgw.certifier."""

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.certifier import certifier_for, certifier_for_secret, check_secret, decode_secret


class CertifierTests(SynchronousTestCase):
    def test_certifier_is_base64_of_sha1(self) -> None:
        # Seed defect (spec/seed-defects.md, section 4.1): the seed's hash B is
        # wrong for both "abcdefgh" and "abcdefgh\n"; compute, never hard-code.
        octets = base64.b64decode("YWJjZGVmZ2gK")
        self.assertEqual(octets, b"abcdefgh\n")
        expected = base64.b64encode(hashlib.sha1(b"abcdefgh\n").digest()).decode()
        self.assertEqual(certifier_for(octets), expected)
        self.assertEqual(certifier_for_secret("YWJjZGVmZ2gK"), expected)
        self.assertNotEqual(
            hashlib.sha1(octets).hexdigest(), "734ba8b31975d0dbae4d6e249f4e8da270796c94"
        )

    def test_known_vector(self) -> None:
        # SHA1("abc") from FIPS 180: a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d
        self.assertEqual(
            certifier_for(b"abc"),
            base64.b64encode(bytes.fromhex("a9993e364706816aba3e25717850c26c9cd0d89d")).decode(),
        )

    def test_check(self) -> None:
        cert = certifier_for(b"abcdefgh\n")
        self.assertTrue(check_secret("YWJjZGVmZ2gK", cert))
        self.assertFalse(check_secret("YWJjZGVmZ2g=", cert))
        self.assertFalse(check_secret("not base64!", cert))
        self.assertFalse(check_secret("YWJjZGVmZ2gK", None))
        self.assertFalse(check_secret("", certifier_for(b"")))

    def test_decode_strict(self) -> None:
        self.assertEqual(decode_secret("QUJD"), b"ABC")
        self.assertEqual(decode_secret("QUI="), b"AB")
        for bad in ("QUJ", "QU=D", "QUJD\n", "QUJ*", "", "é"):
            self.assertIsNone(decode_secret(bad), bad)
        self.assertRaises(ValueError, certifier_for_secret, "QUJ")

    @given(st.binary(max_size=64))
    def test_round_trip(self, octets: bytes) -> None:
        encoded = base64.b64encode(octets).decode()
        if octets:
            self.assertTrue(check_secret(encoded, certifier_for(octets)))
        self.assertEqual(decode_secret(encoded), octets if octets else None)

    @given(st.text(max_size=40))
    def test_never_raises(self, text: str) -> None:
        self.assertIn(check_secret(text, certifier_for(b"x")), (True, False))
