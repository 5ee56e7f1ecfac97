# -*- test-case-name: tests.test_trackcmd -*-
"""Planning ``mtqp track --follow``: which MTA to ask next, never one twice, within a hop limit.

Sans-I/O.  The caller asks servers; this module only looks at what they
answered and says who is next::

    path = [Hop("mx.example", answer)]
    while (step := plan(path, max_hops)).ask:
        referral = step.ask[0]
        path.append(ask(referral.host))        # one hop at a time

A host counts as known, and is never asked, once it has been asked or once
some answer already carries a part reported by it (a firewall gateway that
chains answers for its inner hosts itself: those inner hosts have spoken,
and are usually unreachable from outside anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mtqpgw.merge import host_key, referrals
from mtqpgw.status import Answer, mta_name

__all__ = ["Hop", "Plan", "Referral", "plan"]


@dataclass(frozen=True)
class Hop:
    """One server asked on the path: what it answered, or why it could not be asked.

    ``host`` is the name asked (as the user gave it, or a Remote-MTA's
    name in L{mtqpgw.merge.host_key} form); ``server`` the ``host:port`` that answered
    (after SRV discovery); ``answer`` None when ``error`` says why there is
    none; ``referral`` how this hop came to be asked (None for the first);
    ``greeting`` True when ``answer`` is the server's negative greeting
    (``-TEMP/MTQP/admin``): the server was reached and said no before any
    TRACK was sent; ``tried`` the servers (``host:port``, SRV order) tried
    when none answered (empty when discovery itself failed).
    """

    host: str
    answer: Answer | None = None
    error: str | None = None
    server: str | None = None
    referral: Referral | None = None
    greeting: bool = False
    tried: tuple[str, ...] = ()


class Referral(NamedTuple):
    """A relayed/transferred recipient's Remote-MTA: where to ask next, and who said so."""

    host: str
    referrer: str  # the host of the hop whose answer named it
    recipient: str  # the recipient it was said of (Original-, else Final-Recipient)


@dataclass(frozen=True)
class Plan:
    """What to do after the hops so far.

    ``ask``: referrals to hosts not yet known, in path order (ask the first
    next); ``beyond_limit``: referrals dropped because the hop limit is
    reached; ``repeats``: referrals to hosts already asked on the path (a
    loop in the data); ``reported``: referrals to hosts not asked but whose
    own part is already in an answer, each with the host of the hop whose
    answer holds it (a gateway that answered for its inner hosts, perhaps
    under a rewritten name: "on the path" would not be true of them).  None
    of these is followed; the referral that brought a hop is none of them.
    Every referral is listed (one per recipient): group by host to show
    each name once.
    """

    ask: tuple[Referral, ...]
    beyond_limit: tuple[Referral, ...]
    repeats: tuple[Referral, ...]
    reported: tuple[tuple[Referral, str], ...] = ()


def _reporters(path: Sequence[Hop]) -> dict[str, str]:
    """Each host reporting a part in some answer -> the first hop whose answer holds it."""
    reported: dict[str, str] = {}
    for hop in path:
        if hop.answer is not None and hop.answer.ok:
            for part in hop.answer.parts:
                reporter = mta_name(part.reporting_mta)
                if reporter:
                    reported.setdefault(host_key(reporter), hop.host)
    return reported


def plan(path: Sequence[Hop], max_hops: int) -> Plan:
    """Who to ask after *path* (the hops asked so far, in order), at most *max_hops* in all.

    Referrals are collected from every answer on the path in order (part
    order, then recipient order), each host once.
    """
    asked = {hop.host for hop in path}
    reporters = _reporters(path)
    # The referrals that brought each hop: not repeats, however often the
    # same referrer names that host again (one per recipient, say).
    followed = {(hop.host, hop.referral.referrer) for hop in path if hop.referral is not None}
    fresh: list[Referral] = []
    repeats: list[Referral] = []
    reported: list[tuple[Referral, str]] = []
    queued: set[str] = set()
    for hop in path:
        if hop.answer is None or not hop.answer.ok:
            continue
        for part in hop.answer.parts:
            # referrals() gives each host in host_key form already.
            for host, block in referrals(part):
                recipient = block.original_recipient or block.final_recipient
                referral = Referral(host, hop.host, recipient)
                if (host, hop.host) in followed:
                    continue
                if host in asked:
                    repeats.append(referral)
                elif host in reporters:
                    reported.append((referral, reporters[host]))
                elif host not in queued:
                    queued.add(host)
                    fresh.append(referral)
    room = max(0, max_hops - len(path))
    return Plan(tuple(fresh[:room]), tuple(fresh[room:]), tuple(repeats), tuple(reported))
