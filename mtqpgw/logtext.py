"""Log lines that are formatted once, in our code, instead of by every observer.

twisted.logger keeps ``log_format`` and the event's fields apart and formats
them in each observer with a pure-Python ``string.Formatter``, at about a
microsecond a field.  For the lines written once or twice a TRACK that is a
few per cent of the gateway's time, so those are built with an f-string and
handed over as a format that formats to itself::

    log.info(literal(f"TRACK {envid} from {peer}: ..."), envid=envid, peer=peer)

The fields still go along as keys of the event, for observers (JSON logs,
tests) that read them.
"""

from __future__ import annotations

__all__ = ["literal"]


def literal(text: str) -> str:
    """``text`` as a twisted.logger format string whose output is exactly ``text``."""
    return text.replace("{", "{{").replace("}", "}}")
