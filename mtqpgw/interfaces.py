"""The seams between the server and what answers for it: trackers and TLS policy."""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IServerTLS", "ITracker"]


class ITracker(Interface):
    """Something that answers a TRACK: the local store, or the chaining gateway."""

    def track(envid: str, secret: str, secure: bool = False):  # type: ignore[no-untyped-def]
        """Return a Deferred firing with an L{mtqpgw.status.Answer}.

        ``secret`` is the base64 mtrk-secret as sent; it must never be logged
        or stored.  ``secure`` says the client's own session is protected by
        TLS (a chaining tracker then asks for TLS towards its inner hosts, RFC
        3887 section 11).  Unknown envelope id and wrong secret must give the
        same Answer.  Cancelling the Deferred stops the work.
        """


class IServerTLS(Interface):
    """The server's TLS policy and certificates, as the protocol needs them."""

    offered = Attribute("True when at least one certificate loaded (STARTTLS is listed).")

    def options() -> list[str]:  # type: ignore[misc]
        """Greeting option lines before TLS: ``["STARTTLS"]`` or ``["STARTTLS required"]``."""

    def context_for(domain: str):  # type: ignore[no-untyped-def]
        """A Twisted TLS context factory for ``STARTTLS <domain>``, or None (bad-fqdn)."""

    def required_for(envid: str) -> bool:  # type: ignore[misc]
        """Whether a TRACK for ``envid`` needs TLS first (``tls.required``)."""

    def session_acceptable(transport) -> bool:  # type: ignore[no-untyped-def]
        """After the handshake: whether the negotiated protection meets the policy."""
