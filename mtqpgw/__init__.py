"""mtqpgw: a Message Tracking Query Protocol (RFC 3887) server, gateway and client."""

__version__ = "0.1.0"
