# -*- test-case-name: tests.test_merge -*-
"""Merging the gateway's own tracking-status part with its inner hosts' parts ([chain] report modes).

Sans-I/O: pure functions over the frozen model of ``mtqpgw.status``.  The
chain engine hands over the gateway's own part (None when the local store
has no record) and one L{HostAnswer} per inner host it asked that told
something, in path order: by depth, then in the order the hosts were asked.
An inner host that chains further may answer with parts from hosts behind
it; those stay in its L{HostAnswer}, attributed to it.

Inner hosts are not trusted to speak for one another (review M2).  Before
merging, ``screen`` drops an inner part whose Original-Envelope-Id is not the
one asked for, whose Reporting-MTA is no plain host name or address literal,
or whose Reporting-MTA names the gateway itself (its name or one of its
addresses); the chain engine logs each.

The screen reads the names as the inner hosts wrote them, before any
``[[rewrite]]``.  A rule whose replacement is the gateway's own name (seed
example 12 rewrites smtp.example3.com to example2.com, the gateway) makes
inner parts read as the gateway's afterwards: that is the operator's choice
of what to show, not an inner host's claim, so it is kept.  The parts stay
apart all the same (the gateway's own part comes first in hops mode and is
never merged with an inner one; the combined part is the gateway's), and
an inner part that names the gateway itself is refused before any rule
runs.  Then:

``hops`` (seed example 10)
    The gateway's part first, unchanged, then the parts of each inner host
    asked, host after host.  Within one host's answer, parts from the same
    Reporting-MTA (compared as ``host_key`` does: case-insensitive, no
    trailing dot) become one: the first one's per-message fields, gaps
    filled from later ones, the union of their recipients (a later block
    replaces an earlier one for the same recipient, in its place).  Parts of
    two different hosts are never merged, whatever their Reporting-MTA says,
    and a part from one host asked that names another host asked is left
    out (in both modes; ``screen`` refuses it against every configured
    inner host): a host cannot speak as another.  A part exactly equal to one already in the answer (a host
    that chains passing on the part of a host the gateway also asked) adds
    nothing and is left out; so is an inner part equal to the gateway's own.

``combined`` (seed example 11)
    One part: the gateway's per-message fields and, for each recipient, the
    block(s) from the deepest hop that knows it, where "deeper" follows the
    recipient's own route, not what a part claims: a host's blocks replace
    a recipient's blocks only when a block already taken for that recipient
    handed it on to that host (action relayed or transferred, Remote-MTA
    naming it, compared with ``host_key``), or when they are that same host's
    (an inner gateway's own deeper parts).  So a host can speak for the
    recipients routed to it and for recipients no one else reported, and
    cannot overwrite what another host said of any other.  With no local
    record (fan-out) nothing was routed: the first host asked that reports a
    recipient keeps it, and what it says it handed on decides who may
    speak after it.  The gateway's own name is never an inner reporter
    (``screen``), so the combined part, which carries it, is the gateway's.

Recipients are joined across hops by ``RecipientStatus.join_key`` (the
Original-Recipient address, else the Final-Recipient address), without angle
brackets and compared case-insensitively (``_join_form``; a display
decision, the blocks are kept as written).  In combined mode with a local
record, a host adds recipients the gateway did not know only when it (or a
host before it) was handed at least one: one handed nothing would invent
them under the gateway's Reporting-MTA.  A block with
no Original-Recipient that matches no key joins the one earlier recipient
whose Final-Recipient is its address: that is how a hop that was not given
ORCPT reports the address the previous hop handed it.  Several blocks with one
join key in one part (an alias or list expanded by one MTA) are kept
together and replaced together.  A later block replaces an earlier one for
the same recipient, as long as the rule above lets it, except that
``opaque`` ("no record here") never hides a block that says something.
Unknown Action values are kept as they came.

A recipient whose inner host did not answer has no inner block, so it keeps
the gateway's own block: "passed on, no further information" (RFC 3887
section 2.4).  Nothing here invents a block.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mtqpgw.status import Action, RecipientStatus, TrackingStatus, address_of, mta_name

__all__ = [
    "MODES",
    "HostAnswer",
    "host_key",
    "merge",
    "merge_combined",
    "merge_hops",
    "referrals",
    "reporter_name",
    "screen",
]

#: The values of ``[chain] report`` that ``merge`` accepts.
MODES = ("hops", "combined")

# Per-message fields that a later part from the same reporter may fill in
# when the earlier one lacks them.
_OPTIONAL_MESSAGE_FIELDS = ("arrival_date", "received_from_mta", "dsn_gateway")


@dataclass(frozen=True)
class HostAnswer:
    """The parts one inner host answered with: the unit within which parts may merge.

    ``host`` is the inner host the gateway asked, as ``host_key`` gives it
    (``"smtp.corp.example.com"``, ``"10.0.0.5"``); None stands for the
    gateway itself (further parts of its own store), which may replace its
    own blocks.  ``parts`` are in the order the host gave them.
    """

    host: str | None
    parts: tuple[TrackingStatus, ...]

    def __post_init__(self) -> None:
        # Any iterable of parts, any spelling of the name: one form inside.
        object.__setattr__(self, "host", None if self.host is None else host_key(self.host))
        object.__setattr__(self, "parts", tuple(self.parts))


def screen(
    parts: Iterable[TrackingStatus],
    envid: str,
    gateway: str,
    *,
    addresses: Iterable[str] = (),
    host: str | None = None,
    inner: Iterable[str] = (),
) -> tuple[list[TrackingStatus], list[tuple[TrackingStatus, str]]]:
    """Split an inner host's parts into those the gateway may use and ``(part, why)`` for the rest.

    A part is refused when its Original-Envelope-Id is not ``envid`` (both
    compared exactly, as envelope ids are case-sensitive strings, after
    removing surrounding white space and one pair of angle brackets): it is
    another message's, and the inner host checked the secret of this one
    only.

    It is refused when its Reporting-MTA's name is not a plain host name or
    address literal (``reporter_name``): comments, quotes and a trailing
    ";" are read past, but non-ASCII, control or format characters, or
    anything left after the name, make a name that could look like another
    to a reader and compare unlike it here.

    It is refused too when that name is the gateway's, whatever the type
    before the ";": ``gateway`` (its host name) or one of ``addresses`` (its
    own addresses, in any spelling ``host_key`` reads), or a loopback or
    unspecified address, which is every host's own and so the gateway's too.
    Only the gateway speaks for the gateway.  What is not covered: names and
    addresses of the gateway that it was not told (an address of a
    wildcard listener, a NAT address, a DNS alias).

    And it is refused when ``host`` (the inner host that answered) is given
    and the name is one of ``inner`` (the configured inner hosts) other than
    ``host``: the gateway asks that host itself, and one inner host does not
    speak for another (review M2).  Names the gateway does not know (hosts
    behind an inner gateway) are that host's to report.
    """
    wanted = _unbracketed(envid)
    own = {key for key in map(host_key, (gateway, *addresses)) if key}
    asker = host_key(host)
    others = {key for key in map(host_key, inner) if key and key != asker} if asker else set()
    kept: list[TrackingStatus] = []
    refused: list[tuple[TrackingStatus, str]] = []
    for part in parts:
        name = reporter_name(part.reporting_mta)
        if _unbracketed(part.original_envelope_id) != wanted:
            refused.append((part, "its Original-Envelope-Id is another message's"))
        elif name is None:
            refused.append((part, "its Reporting-MTA is not a plain host name or address"))
        elif name in own or _is_anyone(name):
            refused.append((part, "its Reporting-MTA names this gateway"))
        elif name in others:
            refused.append((part, "its Reporting-MTA names another inner host"))
        else:
            kept.append(part)
    return kept, refused


def reporter_name(field_value: str) -> str | None:
    """``host_key`` of the name in a Reporting-MTA, whatever its type; None if it is no plain name.

    ``"dns; GW.example.com. (gateway)"``, ``'dns; "gw.example.com"'`` and
    ``"x-local; gw.example.com;"`` all give ``"gw.example.com"``: RFC 822
    comments, double quotes, white space and trailing ";" are read past,
    and a field with no ";" is all name.  The name left must be one host
    name (ASCII letters, digits, ``-`` and ``_`` in dot-separated labels,
    at most 255 octets) or an address literal (``[192.0.2.1]``,
    ``[IPv6:2001:db8::1]``, or a bare address): anything else (non-ASCII,
    control or format characters such as U+200B, an empty label, a second
    word) gives None.
    """
    kind, sep, rest = field_value.partition(";")
    if not sep:
        kind, rest = "dns", field_value
    if not _MTA_TYPE.fullmatch(kind.strip(_ASCII_SPACE)):
        return None
    text = _without_comments(rest)
    if text is None:
        return None
    text = text.replace('"', "").strip(_ASCII_SPACE)
    text = _TRAILING.sub("", text)
    if not text or len(text) > 255:
        return None
    if text.startswith("[") and text.endswith("]"):
        key = host_key(text)
        return key if _is_address(key) else None
    if _HOST_NAME.fullmatch(text) or _is_address(text):
        return host_key(text)
    return None


def merge(
    mode: str,
    local: TrackingStatus | None,
    inner: Sequence[HostAnswer],
    *,
    reporting_mta: str | None = None,
) -> tuple[TrackingStatus, ...]:
    """Merge as ``[chain] report`` says: ``"hops"`` or ``"combined"``; ValueError otherwise."""
    if mode == "hops":
        return merge_hops(local, inner)
    if mode == "combined":
        return merge_combined(local, inner, reporting_mta=reporting_mta)
    raise ValueError(f"unknown report mode {mode!r}: expected one of {', '.join(MODES)}")


def merge_hops(
    local: TrackingStatus | None, inner: Sequence[HostAnswer]
) -> tuple[TrackingStatus, ...]:
    """The gateway's part first, then each inner host's parts in path order, merged per host only.

    ``merge_hops(gateway_part, [HostAnswer("smtp.example3.com",
    [inner_part])])`` gives ``(gateway_part, inner_part)`` (seed example 10).
    No inner answers give ``(local,)``; no local part and no inner part
    gives ``()`` (the caller then answers as ``unknown_message`` says).
    """
    parts: list[TrackingStatus] = [] if local is None else [local]
    seen: set[TrackingStatus] = set(parts)
    for answer in _own_parts(inner):
        for part in _merge_by_reporter(answer.parts):
            if part not in seen:
                seen.add(part)
                parts.append(part)
    return tuple(parts)


def merge_combined(
    local: TrackingStatus | None,
    inner: Sequence[HostAnswer],
    *,
    reporting_mta: str | None = None,
) -> tuple[TrackingStatus, ...]:
    """One part with the final known state of every recipient (seed example 11).

    The per-message fields are the gateway's own.  With no local part they
    are the first inner part's, except Reporting-MTA, which is
    ``reporting_mta`` when given (``"mtqp.example.com"`` or
    ``"dns; mtqp.example.com"``): the combined part is the gateway's answer,
    and an inner name should not become its reporter.  ``reporting_mta`` is
    ignored when there is a local part, whose Reporting-MTA already names the
    gateway.

    Recipients come in the gateway's order, then the new ones in order of
    first appearance.  Which host may replace a recipient's blocks: see the
    module docstring.  No inner parts give ``(local,)`` with ``local``
    itself; nothing at all gives ``()``.
    """
    inner = _own_parts(inner)
    inner_parts = [part for answer in inner for part in answer.parts]
    if local is None and not inner_parts:
        return ()
    if local is not None and not inner_parts:
        return (local,)
    roster = _Roster(
        join_by_final=True, carry_original=True, routed=True, closed=local is not None
    )
    if local is not None:
        roster.add(local.recipients, source=0, host=None)
    for index, answer in enumerate(inner, start=1):
        # The gateway's own further parts share its source: they may replace
        # its blocks.  Every inner host is a source of its own.
        source = 0 if answer.host is None else index
        for part in answer.parts:
            roster.add(part.recipients, source=source, host=answer.host)
    recipients = roster.blocks()
    if local is not None:
        if recipients == local.recipients:
            return (local,)
        return (local.evolve(recipients=recipients),)
    head = inner_parts[0]
    if reporting_mta:
        head = head.evolve(reporting_mta=_mta_field(reporting_mta))
    return (head.evolve(recipients=recipients),)


def _own_parts(inner: Sequence[HostAnswer]) -> list[HostAnswer]:
    """``inner`` less each part whose Reporting-MTA names another host asked (review M2).

    ``screen`` refuses those, and logs them, against every configured inner
    host; this keeps the rule for a caller that merges without screening,
    against the hosts in ``inner``.
    """
    asked = {answer.host for answer in inner if answer.host is not None}
    if len(asked) < 2:
        return list(inner)
    kept = []
    for answer in inner:
        others = asked - {answer.host}
        parts = tuple(p for p in answer.parts if _reporter_key(p) not in others)
        kept.append(answer if len(parts) == len(answer.parts) else HostAnswer(answer.host, parts))
    return kept


def referrals(part: TrackingStatus) -> list[tuple[str, RecipientStatus]]:
    """``(host, block)`` for each relayed or transferred recipient whose Remote-MTA names a host.

    ``host`` is ``host_key`` of the Remote-MTA's name: lower-cased, no
    trailing dot, an address literal as its bare canonical address
    (``"dns; [10.0.0.5]"`` gives ``"10.0.0.5"``), so that it compares equal
    to ``host_key`` of the configured inner host it names.  A referral with
    no Remote-MTA, or one of a type other than ``dns``, names nobody to ask
    and is left out.  Order is the part's.
    """
    found: list[tuple[str, RecipientStatus]] = []
    for block in part.recipients:
        host = _referral_host(block)
        if host:
            found.append((host, block))
    return found


def _referral_host(block: RecipientStatus) -> str:
    """``host_key`` of the host a relayed or transferred block names; ``""`` otherwise."""
    if not block.action.is_referral:
        return ""
    return host_key(mta_name(block.remote_mta))


def host_key(name: str | None) -> str:
    """The form in which two host names, or a name and an address literal, are compared.

    Lower-cased, no surrounding white space or trailing dot; an address
    literal loses its brackets and ``IPv6:`` tag and becomes the canonical
    text of its address (``"[IPv6:2001:DB8:0::5]"`` -> ``"2001:db8::5"``, an
    IPv4-mapped IPv6 address -> the IPv4 one).  Remote-MTA fields write an
    inner host configured by address as ``[10.0.0.5]`` (RFC 3464 takes the
    SMTP form), the configuration writes ``10.0.0.5``: both sides go through
    this so that they meet.  Only equality with a configured name ever leads
    to a connection, so a looser form here can never reach a host that is
    not configured.  ``""`` for nothing.
    """
    # Cached: the same few names come back at every TRACK.  Only names that
    # could be a host's: a Remote-MTA from an inner host can unfold to
    # hundreds of KiB, and the cache would keep 4,096 of those.
    if name is not None and len(name) <= _CACHED_NAME:
        return _cached_host_key(name)
    return _host_key(name)


# A DNS name is at most 253 octets; with brackets, a tag and white space,
# an address literal is far shorter.
_CACHED_NAME = 300


@functools.lru_cache(maxsize=4096)
def _cached_host_key(name: str) -> str:
    return _host_key(name)


def _host_key(name: str | None) -> str:
    text = (name or "").strip().rstrip(".").strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    if text.startswith("ipv6:"):
        text = text[5:]
    address = _address(text)
    if address is None:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# What ipaddress.ip_address can take for a str: an IPv4 address is ASCII
# digits and dots, an IPv6 one holds a colon.  Host names are neither, and
# are turned away here without the two exceptions ip_address would raise
# (the gateway compares ~20 names a TRACK).
_MAYBE_IPV4 = re.compile(r"[0-9.]+", re.ASCII)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if ":" not in text and not _MAYBE_IPV4.fullmatch(text):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _reporter_key(part: TrackingStatus) -> str:
    # A non-dns Reporting-MTA keeps its type in the key (with a ";"), so it
    # never collides with a dns name.
    name = mta_name(part.reporting_mta)
    return host_key(name) if name else " ".join(part.reporting_mta.lower().split())


# RFC 3464 mta-name-type is an atom; what is seen in the wild is letters,
# digits and "-" ("dns", "x-local").
_MTA_TYPE = re.compile(r"[A-Za-z0-9-]+", re.ASCII)
# ASCII white space only: str.strip() would also eat U+00A0 and its kin,
# and a name padded with them must be refused, not read as the bare name.
_ASCII_SPACE = " \t\r\n"
_TRAILING = re.compile(r"[ \t\r\n;]+\Z")
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?", re.ASCII)


def _without_comments(text: str) -> str | None:
    """``text`` with its RFC 822 comments ("(...)", nested, "\\" quoting) removed; None if unbalanced."""
    out: list[str] = []
    depth = 0
    escaped = False
    for char in text:
        if depth:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
        elif char == "(":
            depth = 1
            out.append(" ")  # a comment separates like white space
        elif char == ")":
            return None
        else:
            out.append(char)
    return None if depth else "".join(out)


def _is_address(text: str) -> bool:
    return _address(text) is not None


def _is_anyone(key: str) -> bool:
    """A loopback or unspecified address: every host's own, the gateway's as much as any."""
    address = _address(key)
    return address is not None and (address.is_loopback or address.is_unspecified)


def _unbracketed(text: str) -> str:
    """``text`` without surrounding white space and one pair of angle brackets."""
    text = text.strip()
    if len(text) >= 2 and text[0] == "<" and text[-1] == ">":
        text = text[1:-1].strip()
    return text


def _mta_field(name: str) -> str:
    return name if ";" in name else f"dns; {name}"


def _merge_by_reporter(parts: Iterable[TrackingStatus]) -> list[TrackingStatus]:
    """One host's parts with those of one Reporting-MTA made one, in order of first appearance.

    Linear in the parts' size (review M5): each reporter keeps one roster
    and one set of extensions that every later part of it is added to, and
    its merged part is built once, at the end.  Building a merged part per
    part, as this once did, costs the square of the recipients so far.
    """
    parts = tuple(parts)
    if len(parts) < 2:
        return list(parts)  # the usual answer: one part, nothing to merge
    groups: dict[str, _SameReporter] = {}
    order: list[_SameReporter] = []
    for part in parts:
        key = _reporter_key(part)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _SameReporter(part)
            order.append(group)
        else:
            group.add(part)
    return [group.part() for group in order]


class _SameReporter:
    """The parts of one Reporting-MTA within one host's answer, being merged into the first.

    The first part's per-message fields, gaps filled from later ones, the
    union of their extensions, and the union of their recipients (a later
    block replaces an earlier one for the same recipient, in its place).
    """

    def __init__(self, first: TrackingStatus) -> None:
        self._first = first
        self._fills: dict[str, str] = {}
        self._extensions: dict[tuple[str, str], None] = dict.fromkeys(first.extensions)
        # Two answers from one reporter describe the same records: blocks
        # are joined by key only, and none is altered.  Made when a second
        # part comes: most reporters have one.
        self._roster: _Roster | None = None
        self._merged = False

    def add(self, later: TrackingStatus) -> None:
        if later == self._first and not self._merged:
            return  # a copy adds nothing: the first part is kept as it is
        self._merged = True
        if self._roster is None:
            self._roster = _Roster(join_by_final=False, carry_original=False, routed=False)
            self._roster.add(self._first.recipients)
        for name in _OPTIONAL_MESSAGE_FIELDS:
            value = getattr(later, name)
            if value is not None and getattr(self._first, name) is None:
                self._fills.setdefault(name, value)
        self._extensions.update(dict.fromkeys(later.extensions))
        self._roster.add(later.recipients)

    def part(self) -> TrackingStatus:
        if self._roster is None:
            return self._first
        return self._first.evolve(
            extensions=tuple(self._extensions),
            recipients=self._roster.blocks(),
            **self._fills,
        )


def _says_nothing(blocks: Iterable[RecipientStatus]) -> bool:
    return all(block.action is Action.OPAQUE for block in blocks)


@dataclass
class _Slot:
    """One recipient of the merged answer: its join key and its current block(s).

    ``source`` is who gave the current blocks (0: the gateway, else one
    inner host's answer) and ``handed_to`` the hosts (``host_key``) that the
    blocks taken so far for this recipient handed it on to.
    """

    key: str | None
    blocks: tuple[RecipientStatus, ...] = ()
    source: int = 0
    handed_to: set[str] = field(default_factory=set)


class _Roster:
    """Recipients in order of first appearance, each with the blocks of the latest hop that knows it.

    ``add`` is called once per part, shallowest first.  ``routed``: a
    source may replace another source's blocks for a recipient only when
    the recipient was handed on to its host (combined mode across hosts; see
    the module docstring).  Without it (one reporter's parts), any later
    block replaces.
    """

    def __init__(
        self, *, join_by_final: bool, carry_original: bool, routed: bool, closed: bool = False
    ) -> None:
        self._join_by_final = join_by_final
        self._carry_original = carry_original
        self._routed = routed
        # closed (combined mode with a local record): the gateway knows the
        # message's recipients, so only a host it (or a host after it)
        # handed at least one recipient to may add recipients of its own; a
        # host handed nothing could only invent them.
        self._closed = closed
        self._handed: set[str] = set()
        self._slots: list[_Slot] = []
        self._by_key: dict[str, int] = {}
        # Final-Recipient address -> slots whose accepted blocks handed that
        # address on, from earlier parts only: two blocks of one part are
        # never the same recipient by this route, and an opaque block that
        # was not taken handed nothing on.
        self._by_final: dict[str, set[int]] = {}
        # A block with no address at all cannot be joined; only an identical
        # copy of it is the same recipient.
        self._unjoinable: dict[RecipientStatus, int] = {}

    def add(
        self, blocks: Iterable[RecipientStatus], source: int = 0, host: str | None = None
    ) -> None:
        # Ordered sets: a part with many blocks of one key (a big list
        # expanded) must not cost the square of them.
        groups: dict[int, dict[RecipientStatus, None]] = {}
        may_open = not self._closed or source == 0 or host in self._handed
        for block in blocks:
            index = self._find(block)
            if index is None:
                if not may_open:
                    continue
                index = self._new_slot(block)
            groups.setdefault(index, {})[block] = None
        accepted = [
            index
            for index, group in groups.items()
            if self._offer(index, tuple(group), source, host)
        ]
        for index in accepted:
            for block in self._slots[index].blocks:
                final = _join_form(address_of(block.final_recipient))
                if final:
                    self._by_final.setdefault(final, set()).add(index)

    def blocks(self) -> tuple[RecipientStatus, ...]:
        return tuple(block for slot in self._slots for block in slot.blocks)

    def _find(self, block: RecipientStatus) -> int | None:
        key = _join_form(block.join_key)
        if key is None:
            return self._unjoinable.get(block)
        index = self._by_key.get(key)
        if index is not None or not self._join_by_final:
            return index
        if address_of(block.original_recipient):
            # It names its original recipient and that one is new: joining it
            # to another by Final-Recipient would merge two recipients.
            return None
        candidates = self._by_final.get(key, set())
        # Two recipients handed on as one address: which one this is cannot
        # be told, so it stays a recipient of its own rather than a guess.
        return next(iter(candidates)) if len(candidates) == 1 else None

    def _new_slot(self, block: RecipientStatus) -> int:
        index = len(self._slots)
        key = _join_form(block.join_key)
        self._slots.append(_Slot(key))
        if key is None:
            self._unjoinable[block] = index
        else:
            self._by_key[key] = index
        return index

    def _offer(
        self, index: int, group: tuple[RecipientStatus, ...], source: int, host: str | None
    ) -> bool:
        """Let ``group`` replace the slot's blocks unless it may not or says less; True when it did."""
        slot = self._slots[index]
        if slot.blocks:
            if self._routed and source != slot.source and host not in slot.handed_to:
                # Not this host's recipient: it cannot overwrite another's word.
                return False
            if _says_nothing(group) and not _says_nothing(slot.blocks):
                return False
            if self._carry_original:
                group = self._with_original(group, slot.blocks)
        slot.blocks = group
        slot.source = source
        handed = _handed_to(group)
        slot.handed_to.update(handed)
        self._handed.update(handed)
        return True

    @staticmethod
    def _with_original(
        group: tuple[RecipientStatus, ...], earlier: tuple[RecipientStatus, ...]
    ) -> tuple[RecipientStatus, ...]:
        # A deeper hop that was not given ORCPT reports no Original-Recipient;
        # the earlier hop's tells the client which of its recipients this is.
        original = next((b.original_recipient for b in earlier if b.original_recipient), None)
        if original is None:
            return group
        return tuple(
            block if block.original_recipient else block.evolve(original_recipient=original)
            for block in group
        )


def _join_form(address: str | None) -> str | None:
    """The form in which two recipient addresses are joined: no angle brackets, one case.

    ``address_of`` keeps ``<u@x>`` as written and the local part's case,
    so ``<u2@x.com>`` and ``U2@x.com`` opened recipients of their own beside
    ``u2@x.com``.  RFC 5321 makes local parts case-sensitive, but virtually
    no MTA treats them so, and joining is a display decision: the blocks
    themselves are kept as written.
    """
    if address is None:
        return None
    return _unbracketed(address).lower() or None


def _handed_to(blocks: Iterable[RecipientStatus]) -> set[str]:
    """The hosts (``host_key``) that ``blocks`` relayed or transferred their recipient to."""
    return {host for host in map(_referral_host, blocks) if host}
