# -*- test-case-name: tests.test_tls -*-
"""Test certificates: a private CA and leaf certificates, generated with ``cryptography``.

Nothing here touches the network.  Keys are EC P-256 (fast to make), the CA
is made once per process and the files live in one temporary directory that
is removed at exit.  Typical use::

    from tests import certs
    a = certs.issue(["mtqp.example.com"])          # CertFiles: .cert, .key
    wild = certs.issue(["*.example.net"])
    ca_pem = certs.default_ca().cert_path           # trust for clients
    rogue = certs.new_authority("Rogue CA").issue(["mtqp.example.com"])

Leaf certificates are cached by their arguments, so asking twice for the same
names costs nothing.  ``issue(..., via_intermediate=True)`` writes a chain
file (leaf, then the intermediate) as a real deployment would.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Authority",
    "CertFiles",
    "default_ca",
    "expired",
    "issue",
    "new_authority",
    "scratch_dir",
]

_ONE_DAY = datetime.timedelta(days=1)
_counter = itertools.count(1)
_scratch: str | None = None


def scratch_dir() -> str:
    """The per-process directory the files go to (created on first use, removed at exit)."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="mtqpgw-certs-")
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


@dataclass(frozen=True)
class CertFiles:
    """A leaf certificate on disk: ``cert`` (PEM, leaf first, then any chain) and ``key``."""

    cert: str
    key: str
    names: tuple[str, ...]
    certificate: x509.Certificate
    authority: Authority

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the leaf's DER encoding (what a TOFU cache remembers)."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()

    @property
    def pair(self) -> tuple[str, str]:
        """``(cert_path, key_path)``, the shape config.TLSConfig.certificates holds."""
        return (self.cert, self.key)


@dataclass(eq=False)
class Authority:
    """A CA that can issue leaf certificates; ``cert_path`` is its PEM for trust stores."""

    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    cert_path: str
    _issued: dict[tuple[object, ...], CertFiles] = field(default_factory=dict, repr=False)
    _intermediate: Authority | None = field(default=None, repr=False)
    parent: Authority | None = None

    @classmethod
    def create(cls, name: str, parent: Authority | None = None) -> Authority:
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer = parent.certificate.subject if parent is not None else subject
        signing_key = parent.key if parent is not None else key
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + 3650 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(signing_key, hashes.SHA256())
        )
        path = os.path.join(scratch_dir(), f"ca-{next(_counter)}.pem")
        _write(path, _pem_cert(cert))
        return cls(name=name, key=key, certificate=cert, cert_path=path, parent=parent)

    def intermediate(self) -> Authority:
        """An intermediate CA under this one (made once)."""
        if self._intermediate is None:
            self._intermediate = Authority.create(f"{self.name} Intermediate", parent=self)
        return self._intermediate

    def issue(
        self,
        names: Iterable[str],
        *,
        expired: bool = False,
        via_intermediate: bool = False,
        ip_addresses: Iterable[str] = (),
        common_name: str | None = None,
    ) -> CertFiles:
        """A leaf for the dNSName ``names`` (wildcards allowed), written to disk.

        ``expired`` makes one whose validity ended yesterday; ``common_name``
        puts a CN in the subject (to show it is not used for matching).
        """
        names = tuple(names)
        ips = tuple(ip_addresses)
        cache_key = (names, expired, via_intermediate, ips, common_name)
        cached = self._issued.get(cache_key)
        if cached is not None:
            return cached
        signer = self.intermediate() if via_intermediate else self
        key = _new_key()
        now = _now()
        if expired:
            not_before, not_after = now - 30 * _ONE_DAY, now - _ONE_DAY
        else:
            not_before, not_after = now - _ONE_DAY, now + 365 * _ONE_DAY
        cn = common_name or "mtqpgw test leaf"
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ip_address(ip)) for ip in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(signer.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(signer.key, hashes.SHA256())
        stem = os.path.join(scratch_dir(), f"leaf-{next(_counter)}")
        chain = _pem_cert(cert)
        if via_intermediate:
            chain += _pem_cert(signer.certificate)
        files = CertFiles(
            cert=_write(stem + ".crt", chain),
            key=_write(stem + ".key", _pem_key(key)),
            names=names,
            certificate=cert,
            authority=self,
        )
        self._issued[cache_key] = files
        return files


_default_ca: Authority | None = None


def default_ca() -> Authority:
    """The process-wide test CA (made on first use)."""
    global _default_ca
    if _default_ca is None:
        _default_ca = Authority.create("mtqpgw Test CA")
    return _default_ca


def new_authority(name: str = "Another Test CA") -> Authority:
    """A fresh CA nobody trusts (for wrong-certificate tests)."""
    return Authority.create(name)


def issue(names: Iterable[str], **kwargs: object) -> CertFiles:
    """A leaf from the default CA: see L{Authority.issue}."""
    return default_ca().issue(names, **kwargs)  # type: ignore[arg-type]


def expired(names: Iterable[str]) -> CertFiles:
    """A leaf from the default CA whose validity has ended."""
    return default_ca().issue(names, expired=True)
