# -*- test-case-name: tests.test_tls -*-
"""TLS for MTQP: the server's certificates and policy, and client contexts.

Server side, L{ServerTLS} is what L{mtqpgw.server} asks through
L{IServerTLS}: whether STARTTLS is offered, which certificate answers
``STARTTLS <fqdn>``, which TRACKs need TLS first, and whether a finished
handshake is good enough.  Every certificate is loaded and its context built
once, at start-up; a file that does not load stops the start with one line.

Client side, L{client_context} (by mode: ``mtqp track``, and the
gateway's pool per inner host, L{mtqpgw.pool.tls_context_for}) and
L{client_tls_context} (by "verify or not") build connection creators for
C{transport.startTLS}; one creator serves any number of connections, and
L{client_context} hands out the same one for the same arguments.  Everything
is TLS 1.2 or later (RFC 8996).

The trade-off in opportunistic mode: with no CA file to check against, the
client encrypts but does not verify who it talks to.  That defeats passive
snooping, not an active man in the middle; against the latter ``mtqp
track`` keeps a trust-on-first-use record (L{mtqpgw.tofu}) and a gateway
should use ``tls = "required"`` with a ``cafile``.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity.exceptions import CertificateError as PatternError
from service_identity.hazmat import DNS_ID, DNSPattern
from twisted.internet import interfaces
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from zope.interface import implementer

from mtqpgw.config import ConfigError
from mtqpgw.interfaces import IServerTLS
from mtqpgw.tofu import certificate_sha256

__all__ = [
    "ACCEPTABLE_VERSIONS",
    "MIN_CIPHER_BITS",
    "ServedCertificate",
    "ServerTLS",
    "TLSConfigError",
    "certificate_sha256",
    "client_context",
    "client_tls_context",
    "inner_tls_mode",
    "load_ca_bundle",
    "load_certificate",
    "peer_certificate_sha256",
    "session_protection",
]

log = Logger()

MINIMUM_VERSION = TLSVersion.TLSv1_2
ACCEPTABLE_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})
MIN_CIPHER_BITS = 128
_MODES = ("off", "opportunistic", "required")


class TLSConfigError(ConfigError, ValueError):
    """A certificate, key or CA file that cannot be used; ``str()`` is one line naming it.

    A L{ConfigError}, so the daemon's start-up refuses it in that one line.
    """


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read the {what}: {_one_line(e.strerror)}") from None


# -- fingerprints ------------------------------------------------------------


def peer_certificate_sha256(transport: Any) -> str | None:
    """The fingerprint of the certificate the peer presented on ``transport``, if any."""
    try:
        handle = transport.getHandle()
        cert = handle.get_peer_certificate(as_cryptography=True)
    except Exception:
        return None
    return certificate_sha256(cert)


# -- server certificates -----------------------------------------------------


@dataclass(frozen=True, eq=False)
class ServedCertificate:
    """One loaded certificate: its names (dNSName patterns, lower case) and its context."""

    cert_path: str
    names: tuple[str, ...]
    sha256: str
    options: CertificateOptions

    def matches_wildcard(self, service_id: DNS_ID) -> bool:
        return any(
            "*" in name and service_id.verify(DNSPattern.from_bytes(name.encode("ascii")))
            for name in self.names
        )


def _dns_names(cert: x509.Certificate, cert_path: str) -> tuple[str, ...]:
    # RFC 3887 section 6 names subjectAltName dNSName; the subject CN is not used.
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        values: list[str] = []
    except ValueError as e:
        raise TLSConfigError(f"{cert_path}: unreadable extensions: {_one_line(e)}") from None
    else:
        values = san.value.get_values_for_type(x509.DNSName)
    names: list[str] = []
    for value in values:
        try:
            # A dNSName is IA5 (ASCII); IDNs appear as A-labels.
            pattern = DNSPattern.from_bytes(value.encode("ascii"))
        except (PatternError, UnicodeError) as e:
            log.warn(
                "{path}: ignoring subjectAltName {name!r}: {why}",
                path=cert_path,
                name=value,
                why=_one_line(e),
            )
            continue
        name = pattern.pattern.decode("ascii").rstrip(".")
        if name not in names:
            names.append(name)
    return tuple(names)


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_certificate(cert_path: str, key_path: str) -> ServedCertificate:
    """Load a PEM certificate (leaf first, then any intermediates) and its unencrypted key.

    The TLS context is built here, once.  Raises L{TLSConfigError} naming the
    file for anything unusable: unreadable, not PEM, encrypted or mismatched
    key, no dNSName to serve.
    """
    cert_data = _read(cert_path, "certificate")
    key_data = _read(key_path, "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TLSConfigError(f"{cert_path}: not a PEM certificate") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"{key_path}: the private key is encrypted; give an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"{key_path}: not a PEM private key") from None
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(f"{key_path}: the private key does not belong to {cert_path}")
    names = _dns_names(leaf, cert_path)
    if not names:
        raise TLSConfigError(
            f"{cert_path}: the certificate has no subjectAltName dNSName to serve"
        )
    try:
        options = CertificateOptions(
            privateKey=key,
            certificate=leaf,
            extraCertChain=chain[1:],
            raiseMinimumTo=MINIMUM_VERSION,
        )
        options.getContext()  # built now and cached: never per connection
    except (SSL.Error, TypeError, ValueError) as e:
        raise TLSConfigError(f"{cert_path}: cannot be used for TLS: {_one_line(e)}") from None
    served = ServedCertificate(
        cert_path=cert_path,
        names=names,
        sha256=certificate_sha256(leaf) or "",
        options=options,
    )
    _warn_if_not_current(leaf, cert_path)
    return served


def _warn_if_not_current(cert: x509.Certificate, cert_path: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        log.warn(
            "{path}: the certificate expired on {when}; clients that verify will refuse it",
            path=cert_path,
            when=cert.not_valid_after_utc.isoformat(),
        )
    elif cert.not_valid_before_utc > now:
        log.warn(
            "{path}: the certificate is not valid before {when}",
            path=cert_path,
            when=cert.not_valid_before_utc.isoformat(),
        )


def _normalise_domain(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def session_protection(transport: Any) -> tuple[str | None, int | None]:
    """``(protocol version name, cipher bits)`` of a TLS transport, Nones if unknown."""
    try:
        handle = transport.getHandle()
        return handle.get_protocol_version_name(), handle.get_cipher_bits()
    except Exception:
        return None, None


@implementer(IServerTLS)
class ServerTLS:
    """The server's certificates (one context each) and its TLS policy.

    ``required`` is False, True (every TRACK needs TLS first), or a sequence
    of envelope-id domains that do (each covering its subdomains).
    """

    def __init__(
        self,
        certificates: Sequence[ServedCertificate] = (),
        required: bool | Iterable[str] = False,
        min_cipher_bits: int = MIN_CIPHER_BITS,
    ) -> None:
        self.certificates = tuple(certificates)
        if isinstance(required, bool):
            self.required: bool | tuple[str, ...] = required
        else:
            self.required = tuple(_normalise_domain(d) for d in required if d.strip(". "))
        self.min_cipher_bits = min_cipher_bits
        self._exact: dict[str, ServedCertificate] = {}
        for served in self.certificates:
            for name in served.names:
                if "*" in name:
                    continue
                if name in self._exact:
                    log.warn(
                        "{name} is served by {first}; ignoring it in {second}",
                        name=name,
                        first=self._exact[name].cert_path,
                        second=served.cert_path,
                    )
                    continue
                self._exact[name] = served

    @classmethod
    def from_files(
        cls, pairs: Iterable[tuple[str, str]], required: bool | Iterable[str] = False
    ) -> ServerTLS:
        """Load each ``(cert_path, key_path)``; raises L{TLSConfigError} on the first bad one."""
        return cls([load_certificate(cert, key) for cert, key in pairs], required)

    @classmethod
    def from_config(cls, tls_config: Any) -> ServerTLS:
        """From a config.TLSConfig (``.certificates`` pairs, ``.required``)."""
        pairs = []
        for entry in getattr(tls_config, "certificates", ()) or ():
            if isinstance(entry, tuple | list):
                cert, key = entry
            else:
                cert, key = entry.cert, entry.key
            pairs.append((str(cert), str(key)))
        required = getattr(tls_config, "required", False)
        if required is None:
            required = False
        loaded = []
        for index, (cert, key) in enumerate(pairs):
            try:
                loaded.append(load_certificate(cert, key))
            except TLSConfigError as e:
                raise TLSConfigError(e.message, f"tls.certificates[{index}]") from None
        served = cls(loaded, required)
        for one in served.certificates:
            log.info(
                "TLS certificate {path} serves {names}",
                path=one.cert_path,
                names=", ".join(one.names),
            )
        return served

    # -- IServerTLS ------------------------------------------------------------

    @property
    def offered(self) -> bool:
        return bool(self.certificates)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name served, in load order (wildcards as written)."""
        return tuple(n for c in self.certificates for n in c.names)

    def options(self) -> list[str]:
        if not self.offered:
            return []
        return ["STARTTLS required" if self.required else "STARTTLS"]

    def certificate_for(self, domain: str) -> ServedCertificate | None:
        """The certificate that names ``domain``: exact names first, then wildcards."""
        wanted = _normalise_domain(domain)
        if not wanted:
            return None
        exact = self._exact.get(wanted)
        if exact is not None:
            return exact
        try:
            service_id = DNS_ID(wanted)
        except (ValueError, UnicodeError, ImportError):
            return None
        for served in self.certificates:
            if served.matches_wildcard(service_id):
                return served
        return None

    def context_for(self, domain: str) -> CertificateOptions | None:
        served = self.certificate_for(domain)
        return None if served is None else served.options

    def required_for(self, envid: str) -> bool:
        if isinstance(self.required, bool):
            return self.required
        _, at, domain = envid.rpartition("@")
        if not at:
            return False
        domain = _normalise_domain(domain)
        return any(domain == d or domain.endswith("." + d) for d in self.required)

    def session_acceptable(self, transport: Any) -> bool:
        version, bits = session_protection(transport)
        acceptable = version in ACCEPTABLE_VERSIONS and (bits or 0) >= self.min_cipher_bits
        if not acceptable:
            log.warn(
                "TLS session below policy: {version}, {bits} cipher bits",
                version=version,
                bits=bits,
            )
        return acceptable


# -- client contexts ---------------------------------------------------------


def load_ca_bundle(cafile: str) -> list[Certificate]:
    """Every certificate in a PEM CA bundle, as Twisted certificates."""
    data = _read(cafile, "CA file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{cafile}: no PEM certificate in the CA file") from None
    return [
        Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM).decode("ascii"))
        for c in certs
    ]


@implementer(interfaces.IOpenSSLClientConnectionCreator)
class _EncryptOnlyClientCreator:
    """TLS 1.2+ towards ``name`` without checking the certificate (opportunistic mode).

    It still sends SNI, so a server that picks certificates by name can, and
    the peer's certificate stays readable for the trust-on-first-use record.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._send_name = not (isIPAddress(name) or isIPv6Address(name))
        self._context = CertificateOptions(raiseMinimumTo=MINIMUM_VERSION).getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._send_name:
            try:
                connection.set_tlsext_host_name(self.name.encode("idna"))
            except UnicodeError:
                pass
        return connection


def client_tls_context(
    server_name: str, cafile: str | None = None, verify: bool = True
) -> interfaces.IOpenSSLClientConnectionCreator:
    """A client connection creator for STARTTLS towards ``server_name``.

    ``verify``: check the certificate chain (against ``cafile``, else the
    platform's trust store) and that it names ``server_name`` (service-identity
    rules).  Without ``verify`` the session is encrypted only.  Raises
    L{TLSConfigError} for an unusable ``cafile``.
    """
    if not verify:
        return _EncryptOnlyClientCreator(server_name)
    trust = trustRootFromCertificates(load_ca_bundle(cafile)) if cafile else platformTrust()
    return optionsForClientTLS(
        server_name,
        trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": MINIMUM_VERSION},
    )


def _mode_text(mode: Any) -> str:
    text = str(getattr(mode, "value", mode)).lower()
    if text not in _MODES:
        raise ValueError(f"TLS mode must be one of {', '.join(_MODES)}, not {text!r}")
    return text


def inner_tls_mode(mode: Any, secure: bool) -> str:
    """The mode to use towards an inner host: configured, raised when the client used TLS.

    RFC 3887 section 11: a gateway whose client negotiated TLS should try
    TLS at the next hop too, so ``off`` becomes ``opportunistic`` then.
    """
    text = _mode_text(mode)
    if secure and text == "off":
        return "opportunistic"
    return text


def client_context(
    name: str, cafile: str | None = None, mode: Any = "opportunistic"
) -> interfaces.IOpenSSLClientConnectionCreator | None:
    """The context for a peer called ``name`` in ``mode`` (str or client.TLSMode).

    ``off`` gives None; ``required`` verifies (``cafile`` or platform trust);
    ``opportunistic`` verifies when a ``cafile`` is given, else encrypts only.
    """
    text = _mode_text(mode)
    if text == "off":
        return None
    return _cached_client_context(name, cafile, text == "required" or cafile is not None)


# A creator holds one SSL context and may serve any number of connections, so
# the gateway's per-query calls share them instead of rebuilding each time.
@functools.lru_cache(maxsize=256)
def _cached_client_context(
    name: str, cafile: str | None, verify: bool
) -> interfaces.IOpenSSLClientConnectionCreator:
    return client_tls_context(name, cafile, verify=verify)
