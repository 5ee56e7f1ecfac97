# -*- test-case-name: tests.test_certifier -*-
"""The MTRK certifier: B = base64(SHA1(A)) (RFC 3885), and the TRACK check against it.

The secret A never leaves this module in any form but its hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

__all__ = ["certifier_for", "certifier_for_secret", "check_secret", "decode_secret"]

# base64 = *(4base64-char) [base64-terminal]  (RFC 3885 / RFC 4648 alphabet,
# padding required): the mtrk-secret on the TRACK line is strictly this.
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")

# A certifier that no secret can match: a wrong secret and an unknown
# envelope id then take the same path through check_secret.
_IMPOSSIBLE = base64.b64encode(b"\0" * 20).decode("ascii")


def decode_secret(secret_b64: str | bytes) -> bytes | None:
    """The octets of a base64 mtrk-secret, or None when it is not strict base64."""
    if isinstance(secret_b64, str):
        try:
            secret_b64 = secret_b64.encode("ascii")
        except UnicodeEncodeError:
            return None
    if not secret_b64 or not _BASE64.match(secret_b64):
        return None
    try:
        return base64.b64decode(secret_b64, validate=True)
    except (binascii.Error, ValueError):
        return None


def certifier_for(secret_octets: bytes) -> str:
    """base64(SHA1(secret_octets)): what a sender puts in ``MTRK=``."""
    return base64.b64encode(hashlib.sha1(secret_octets).digest()).decode("ascii")


def certifier_for_secret(secret_b64: str) -> str:
    """The certifier for a base64 mtrk-secret; ValueError when it is not base64."""
    octets = decode_secret(secret_b64)
    if octets is None:
        raise ValueError("the secret is not valid base64")
    return certifier_for(octets)


def check_secret(secret_b64: str, certifier: str | None) -> bool:
    """Whether the base64 mtrk-secret hashes to ``certifier``, compared in constant time.

    ``certifier`` None (no such message) still costs one hash and one
    comparison, so the two failures are not told apart by time.
    """
    octets = decode_secret(secret_b64)
    candidate = certifier_for(octets if octets is not None else b"")
    expected = certifier if certifier else _IMPOSSIBLE
    matched = hmac.compare_digest(candidate.encode("ascii"), expected.encode("ascii", "replace"))
    return matched and octets is not None and certifier is not None
