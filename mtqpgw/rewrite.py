# -*- test-case-name: tests.test_rewrite -*-
"""Hiding inner host names: the ``[[rewrite]]`` rules applied to tracking-status parts.

Sans-I/O: pure functions over the frozen model of ``mtqpgw.status``.  Runs
last in the chain (design.md, "Chaining", rule 6), part by part: two parts
that end up with the same Reporting-MTA stay two parts (seed example 12).

A rule is any object with ``match``, ``replace`` and ``addresses``
attributes (``mtqpgw.config.RewriteRule``).  ``match`` is a glob on host
names, where ``*`` is any run of characters, dots included, and ``?`` any one
character (``"*.corp.example.com"`` matches ``a.b.corp.example.com`` but not
``corp.example.com`` itself: list both to hide both), or ``"re:"`` and a
Python regular expression that must match the whole name.  Both are
case-insensitive, and see a name without its trailing dot, and an address
literal without its brackets and ``IPv6:`` tag, so ``"10.0.0.*"`` or
``"re:10\\..*"`` hides ``[10.0.0.5]``.  The first rule that matches a name
decides what happens to it.

Addresses have many spellings (review M1).  A rule that is a plain IP
address (``"2001:db8::5"``, ``"[10.0.0.5]"``) compares by address, so it
hides ``[IPv6:2001:DB8:0:0:0:0:0:5]`` and ``2001:0db8::0005`` alike; globs
and regular expressions see an address both as written and in its canonical
spelling (``str(ipaddress.ip_address(...))``).  An IPv6 address that
carries an IPv4 one (mapped ``::ffff:``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``, IPv4-compatible ``::a.b.c.d``) is also matched as that
IPv4 address, and a dotted quad with leading zeros is read as decimal.
Networks (``10.0.0.0/8``) are not rules: write the glob ``10.*``.  A
reverse-DNS name of a whole address (``5.0.0.10.in-addr.arpa``, the 32
nibbles of an ``ip6.arpa`` name) is matched as that address too, and the
whole name is replaced.

What is rewritten:

- every MTA-name field (Reporting-MTA, Received-From-MTA, DSN-Gateway,
  Remote-MTA): the name after ``type;`` when a rule matches it whole
  (``"dns; smtp.corp.example.com"`` -> ``"dns; example.com"``,
  ``"dns; [10.0.0.5]"`` -> ``"dns; example.com"``), else the host names in it
  as in free text;
- every host name and IP address in free text: Diagnostic-Code after its
  ``type;``, the comment of Status (``"4.4.1 (No answer from
  mx1.corp.example.com)"``) and the values of extension fields (``X-...``,
  per message and per recipient), because a name hidden in one field and
  shown in the next is not hidden.  A bracketed literal keeps its brackets
  (``"[10.0.0.5]"`` -> ``"[example.com]"``) so the sentence keeps its shape;
- the domain of recipient addresses in Original-Recipient and
  Final-Recipient only under a rule with ``addresses`` true: there the
  address is the recipient's, which the client gave and needs back, and a
  mail domain is not a host.  A percent-hack hop in their local part
  (``rfc822; jdoe%mx7.corp.example.com@example.com``) is rewritten whatever
  ``addresses`` says: it is the inner MTA's name, put there by the relay, not
  the client's data (in free text ``%`` ends a token, so there it is a name
  like any other).

Free text has no addresses, only tokens.  ``Q1@mx7.corp.example.com`` in a
Diagnostic-Code is a queue id or a Message-ID far more often than a
recipient, and a run such as ``host=mx7.corp.example.com/10.9.9.9@x`` is
shaped like a local part: treating either as an address would leave the
inner names in it for any outside client to read.  So ``@``, ``/``, ``=``
and every other character that cannot be part of a host name end a token,
and every token is looked at, before and after an ``@`` alike; the
``addresses`` flag does not apply to free text.  The property this keeps:
after rewriting, no token that a rule matches is left in any free-text
field.

A token is a run of letters, digits, ``-``, ``_``, ``.`` and ``:``.  An IPv4
or IPv6 address is a candidate whole (so ``10.0.0.5:25`` hides the address
and keeps the port); otherwise ``:`` splits the run and each piece, less
leading and trailing dots and hyphens, is a candidate when it holds a
letter or is an IPv4 address; ``550`` and ``5.1.1`` never are.  Any
candidate a rule matches is replaced, single labels included, so a rule
must match only host names (``"re:.*"`` would eat every word).  A
candidate no rule matches whole may still hold a name with text glued on
(``mx1.corp.example.com_backup``, ``-relay``, ``.Retry``,
``queue.mx1.corp.example.com42``): its label-bounded spans are tried, and a
span a rule matches is replaced, the rest kept (``example.com_backup``); see
``Rewriter._spans`` for what a span is and what the search may cost.  A candidate
longer than 255 characters is no host name and is not matched whole, which
bounds the cost of a rule, but a name inside it is found by the span search
(at most 255 characters a span, a fixed budget of spans a token), so a long
run of text glued around an inner name does not hide it from the rules.  A
regular expression with nested repetition (``"re:(a+)+b"``) is still the
administrator's to avoid.

Never rewritten: Original-Envelope-Id (the client's own key), Action, dates,
field names, and the local parts of Original-Recipient and Final-Recipient
(but for their ``%host`` hops).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from mtqpgw.config import compile_match, match_subject
from mtqpgw.status import Answer, RecipientStatus, TrackingStatus

__all__ = ["Rewriter", "RuleLike"]


class RuleLike(Protocol):
    """What ``Rewriter`` needs of a rule: ``mtqpgw.config.RewriteRule`` has it."""

    @property
    def match(self) -> str: ...

    @property
    def replace(self) -> str: ...

    @property
    def addresses(self) -> bool: ...


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Rule:
    source: str
    pattern: re.Pattern[str]
    replace: str
    addresses: bool
    # A rule written as a plain IP address compares by address, so that any
    # spelling of it matches (review M1: "2001:0DB8:0:0::5" is 2001:db8::5).
    address: _Address | None = None
    # A glob's text before its first and after its last wildcard (all of it
    # when it has none), lower-cased: a name it matches starts and ends so,
    # which rules out most spans of a token without running the pattern.
    # None for a regular expression, which promises nothing.
    head: str | None = None
    tail: str | None = None


_MAX_NAME = 255
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_LETTER = re.compile(r"[A-Za-z]")
_SPACE = re.compile(r"\s")
# Leading and trailing dots and hyphens of a piece are punctuation, not name.
_PIECE = re.compile(r"([.-]*)(.*?)([.-]*)", re.DOTALL)

# A token of free text: a run of host-name characters, colons too for IPv6.
# Everything else, "@" "/" "=" and brackets included, ends a token: there
# are no addresses in free text (see the module docstring).  A bracketed
# literal is its inside, so "[10.0.0.5]" keeps its brackets.
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]+")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
# The domain of a recipient field's address: "rfc822; u@[10.0.0.5]",
# "rfc822; <u@mx.example.com> ".
_ADDRESS_DOMAIN = re.compile(r"@(\[[^\[\]\s]*\]|[^@\s<>\[\]]+)>?\s*\Z")
# A percent-hack hop in a recipient's local part: "jdoe%mx7.corp.example.com@x".
_PERCENT_HOST = re.compile(r"%(\[[^\[\]\s]*\]|[A-Za-z0-9_.:-]+)")
# Tokens whose rewriting is remembered (a report repeats its host names);
# past this many the memory starts again, so it stays bounded.
_MEMO_SIZE = 4096
# The characters that end a label inside a token, where a span of it may
# start or end ("mx1.corp.example.com_backup"); see Rewriter._spans.
_SEPARATORS = frozenset("._-")
_DOTTED_QUAD = re.compile(r"[0-9]\.[0-9]+\.[0-9]+\.[0-9]")
# Where a span may start: the start of a token or after a separator.
_LABEL_START = re.compile(r"(?<![^._-])[^._-]")
# Where it may end, before a separator or where a letter meets a digit;
# the end of the token is added by hand, as "\Z" would match at the end
# of a search's bounds too.
_LABEL_END = re.compile(r"(?<=[^._-])(?=[._-])|(?<=[0-9])(?=[A-Za-z])|(?<=[A-Za-z])(?=[0-9])")
_DOTTED_QUAD_TAIL = re.compile(r"(?<![0-9])[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\Z")
# What one token may cost in Rewriter._spans: spans looked at, and spans
# matched against the rules (each a fullmatch on at most _MAX_NAME
# characters).  A real name with text glued on needs a handful.
_SPAN_PAIRS = 1024
_SPAN_TRIES = 32


def _cut_ok(text: str, separator: int) -> bool:
    """Whether a span may begin after, or end before, the separator at ``text[separator]``.

    Not inside a dotted number: "192.168.10.5" has no span "10.5", and
    "10.0.0.5.25" no span "10.0.0.5".
    """
    return not (
        text[separator] == "."
        and 0 < separator < len(text) - 1
        and text[separator - 1].isdigit()
        and text[separator + 1].isdigit()
    )


# What, besides the rules' own runs, the fast path must look at when a rule
# may match an address written in another spelling: any token with a colon
# (IPv6 in any spelling, IPv4 mapped into or embedded in IPv6, hex forms)
# any dotted quad (leading zeros), and any reverse-DNS name (nibbles hold no
# colon, and may hold no dotted quad either; ".arpa" alone costs the search
# less than "in-addr.arpa" and "ip6.arpa" as two alternatives).  A dotted
# quad has octets of at most 3 digits, as _IPV4 reads them: "[0-9]+", tried
# at every digit of a long run, would cost the run's length each time.
_ADDRESS_NEEDLES = (":", r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", r"\.arpa")
# Glob characters of a rule that may match an address: hex digits, "." and
# ":" and the wildcards ("10.0.0.*", "2001:db8::*", "*").
_ADDRESS_GLOB = frozenset("0123456789abcdef.:*?")


def _may_match_address(rule: _Rule) -> bool:
    if rule.address is not None:
        return True
    return set(_subject(rule.source)) <= _ADDRESS_GLOB


def _needles(rules: Iterable[_Rule]) -> re.Pattern[str] | None:
    """A pattern that finds, in any text, every token that a rule could match; None if none can.

    Only for globs: a name a glob matches holds the glob's longest run
    without ``*`` or ``?``, and that run is made of token characters, so a
    token that holds none of the rules' runs is matched by no rule and
    needs no look (review M5: free text is most of an answer, and most of
    its tokens are no host names).  A regular expression promises nothing
    of the kind, and neither does a glob with no such run: then None, and
    every token is looked at.
    """
    alternatives = _needle_alternatives(rules)
    if alternatives is None:
        return None
    # ASCII case folding only: a token is ASCII, and Unicode folding would
    # find a run in a Kelvin sign, outside any token.
    return re.compile("|".join(alternatives), re.IGNORECASE | re.ASCII)


def _longest_run(rule: _Rule) -> str:
    """A glob's longest text without ``*`` or ``?``, lower case: any name it matches holds it."""
    return max(re.split(r"[*?]", _subject(rule.source)), key=len)


def _needle_alternatives(rules: Iterable[_Rule]) -> list[str] | None:
    """The alternatives of ``_needles``: the rules' runs, then address shapes; None for none."""
    runs = set()
    extra: set[str] = set()
    for rule in rules:
        if rule.source[:3].lower() == "re:":
            return None
        run = _longest_run(rule)
        if not run:
            return None
        runs.add(run)
        if _may_match_address(rule):
            # The rule's run is one spelling of an address; other spellings
            # hold other text, so every token that may be an address is seen,
            # reverse-DNS names included (their nibbles hold no colon).
            extra.update(_ADDRESS_NEEDLES)
    if not runs:
        return None
    ordered = sorted(runs, key=len, reverse=True)
    return [*map(re.escape, ordered), *sorted(extra)]


def _is_ip(text: str) -> bool:
    if _IPV4.fullmatch(text):
        return True
    if ":" not in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_address(subject: str) -> _Address | None:
    """The address ``subject`` (a rule's subject form) writes, in any spelling; None if none.

    IPv6 in any case, with or without leading zeros or "::"; IPv4 dotted
    quads, leading zeros read as decimal ("10.0.0.005" is 10.0.0.5), as
    MTAs that pad them mean.
    """
    if _IPV4.fullmatch(subject):
        octets = [int(octet) for octet in subject.split(".")]
        if all(octet <= 255 for octet in octets):
            return ipaddress.IPv4Address(bytes(octets))
        return None
    if ":" not in subject:
        return None
    try:
        return ipaddress.IPv6Address(subject)
    except ValueError:
        return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped, 6to4, NAT64 or IPv4-compatible."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    value = int(address)
    if address in _NAT64 or (value >> 32 == 0 and value >= 1 << 24):
        # ::10.0.0.5 (deprecated IPv4-compatible); not ::1 and its kin.
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


_IN_ADDR = ".in-addr.arpa"
_IP6 = ".ip6.arpa"
_HEX_DIGITS = frozenset("0123456789abcdef")


def _reverse_address(subject: str) -> _Address | None:
    """The address a reverse-DNS name (lower case) is for; None for anything else.

    Only a whole address: ``5.0.0.10.in-addr.arpa`` and the 32 nibbles of
    ``....ip6.arpa``.  A shorter one (``10.in-addr.arpa``) names a network's
    zone, which rules, written for hosts, are not asked about.
    """
    if subject.endswith(_IN_ADDR):
        labels = subject[: -len(_IN_ADDR)].split(".")
        if len(labels) != 4 or not all(label.isdigit() and len(label) <= 3 for label in labels):
            return None
        return _parse_address(".".join(reversed(labels)))
    if subject.endswith(_IP6):
        labels = subject[: -len(_IP6)].split(".")
        if len(labels) != 32 or not all(
            len(label) == 1 and label in _HEX_DIGITS for label in labels
        ):
            return None
        return ipaddress.IPv6Address(int("".join(reversed(labels)), 16))
    return None


def _without_ipv6_tag(text: str) -> str:
    return text[5:] if text[:5].lower() == "ipv6:" else text


def _subject(name: str) -> str:
    """The form of a name that rules are matched against (lower-cased for the cache)."""
    return match_subject(name).lower()


def _compile(rule: RuleLike) -> _Rule:
    match, replacement = rule.match, rule.replace
    if not isinstance(match, str) or not match.strip():
        raise ValueError(f"rewrite rule match {match!r} is empty")
    if (
        not isinstance(replacement, str)
        or not replacement
        or ";" in replacement
        or any(ch.isspace() for ch in replacement)
    ):
        raise ValueError(
            f"rewrite rule {match!r}: replace {replacement!r} is not a host name "
            "(empty, or holds white space or ';')"
        )
    try:
        # One reading of a match for the whole project: config.py checks the
        # file with the same function.
        pattern = compile_match(match)
    except ValueError as exc:
        raise ValueError(f"rewrite rule {match!r}: {exc}") from None
    address = head = tail = None
    if match[:3].lower() != "re:":
        subject = _subject(match)
        address = _parse_address(subject)
        if isinstance(address, ipaddress.IPv6Address):
            # A rule written for ::ffff:10.0.0.5 hides 10.0.0.5 in any form.
            address = _embedded_ipv4(address) or address
        literals = re.split(r"[*?]", subject)
        head, tail = literals[0], literals[-1]
    addresses = bool(getattr(rule, "addresses", False))
    return _Rule(match, pattern, replacement, addresses, address, head, tail)


class Rewriter:
    """Rewrites inner host names in answers, as a list of ``[[rewrite]]`` rules says.

    ``Rewriter([RewriteRule("*.corp.example.com", "example.com", False)])
    .host("Smtp.Corp.Example.com")`` is ``"example.com"``.  With no rules it
    gives back what it is given.  Raises ValueError for a bad rule (an
    invalid regular expression, an empty match or replacement).
    """

    def __init__(self, rules: Iterable[RuleLike] = ()) -> None:
        self._rules = tuple(_compile(rule) for rule in rules)
        self._needles = _needles(self._rules)
        self._address_rules = any(_may_match_address(rule) for rule in self._rules)
        # The texts after which a span may end with no separator, a letter
        # meeting a digit ("com|42", "arpa|42"): the rules' own text (lower
        # case) and, for addresses, the reverse-DNS suffix.  Only with
        # needles: a regular expression has no text to end on.
        self._glue_after: tuple[str, ...] = ()
        if self._needles is not None:
            texts = {_longest_run(rule) for rule in self._rules}
            if self._address_rules:
                texts.add(".arpa")
            self._glue_after = tuple(sorted(texts))
        self._memo: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Rewriter({[rule.source for rule in self._rules]!r})"

    def host(self, name: str) -> str:
        """The first matching rule's replacement for a host name, or ``name`` unchanged."""
        rule = self._rule_for(name)
        return name if rule is None else rule.replace

    def answer(self, answer: Answer) -> Answer:
        """A positive answer with every part rewritten; a negative one as it is."""
        if not answer.ok or not self._rules:
            return answer
        parts = tuple(self.part(part) for part in answer.parts)
        return answer if parts == answer.parts else replace(answer, parts=parts)

    def part(self, ts: TrackingStatus) -> TrackingStatus:
        """One tracking-status part with its inner names hidden; the same object if none were found."""
        if not self._rules:
            return ts
        rewritten = ts.evolve(
            reporting_mta=self._mta(ts.reporting_mta),
            received_from_mta=self._mta(ts.received_from_mta),
            dsn_gateway=self._mta(ts.dsn_gateway),
            extensions=self._extensions(ts.extensions),
            recipients=tuple(self._recipient(block) for block in ts.recipients),
        )
        return ts if rewritten == ts else rewritten

    def _recipient(self, block: RecipientStatus) -> RecipientStatus:
        return block.evolve(
            original_recipient=self._address(block.original_recipient),
            final_recipient=self._address(block.final_recipient),
            status=self._text(block.status),
            remote_mta=self._mta(block.remote_mta),
            diagnostic_code=self._diagnostic(block.diagnostic_code),
            extensions=self._extensions(block.extensions),
        )

    def _rule_for(self, name: str) -> _Rule | None:
        subject = _subject(name)
        # Nothing longer is a host name (RFC 1035: 253), and the cap bounds
        # what a glob with several "*" or an admin's regex costs per token.
        if not subject or len(subject) > _MAX_NAME:
            return None
        address = _parse_address(subject)
        # An address is matched as written and in its canonical spelling
        # (review M1): "2001:0DB8:0::5" as "2001:db8::5", for globs too.
        canonical = str(address) if address is not None else subject
        for rule in self._rules:
            if rule.address is not None:
                if address is not None and address == rule.address:
                    return rule
            elif rule.pattern.fullmatch(subject) or (
                canonical != subject and rule.pattern.fullmatch(canonical)
            ):
                return rule
        # ::ffff:10.0.0.5 is 10.0.0.5 (and so are its 6to4, NAT64 and
        # IPv4-compatible forms): a rule written for the one hides the other.
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                return self._rule_for(str(embedded))
        # 5.0.0.10.in-addr.arpa names 10.0.0.5 as plainly as "[10.0.0.5]"
        # does, so a rule for the address hides the whole name.
        reverse = _reverse_address(subject)
        if reverse is not None:
            return self._rule_for(str(reverse))
        return None

    def _extensions(self, fields: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((name, self._text(value)) for name, value in fields)

    def _mta(self, value: str | None) -> str | None:
        if not value:
            return value
        kind, sep, name = value.partition(";")
        if not sep:
            kind, name = "", value
        core = name.strip()
        # A glob's "*" spans white space, so only a single token is a name.
        rule = None if _SPACE.search(core) else self._rule_for(core)
        if rule is None:
            return kind + sep + self._text(name)
        # Keep the white space around the name exactly as it came.
        start = name.index(core)
        return kind + sep + name[:start] + rule.replace + name[start + len(core) :]

    def _diagnostic(self, value: str | None) -> str | None:
        if not value:
            return value
        # The diagnostic-type ("smtp", "x-unix") is a name space, not a host.
        kind, sep, text = value.partition(";")
        if not sep:
            return self._text(value)
        return kind + sep + self._text(text)

    def _address(self, value: str | None) -> str | None:
        """Original-/Final-Recipient: ``%host`` hops always, the domain only under ``addresses``."""
        if not value:
            return value
        # The domain after the last "@", an address literal or a name, with
        # the ">" and white space that may close the field kept as they are.
        found = _ADDRESS_DOMAIN.search(value)
        local_end = len(value) if found is None else found.start(1)
        # "jdoe%mx7.corp.example.com@example.com": the host after "%" is the
        # inner MTA that relays by the percent hack, written there by it, not
        # the client's data, so it is hidden whatever ``addresses`` says.
        local = value[:local_end]
        if "%" in local:
            local = _PERCENT_HOST.sub(self._percent_host, local)
        if found is None:
            return local
        rule = self._rule_for(found.group(1))
        if rule is None or not rule.addresses:
            return local + value[local_end:]
        return local + rule.replace + value[found.end(1) :]

    def _percent_host(self, hop: re.Match[str]) -> str:
        rule = self._rule_for(hop.group(1))
        return hop.group() if rule is None else "%" + rule.replace

    def _text(self, text: str | None) -> str | None:
        """Free text with every host name and address that a rule matches replaced."""
        if not text:
            return text
        needles = self._needles
        # An address in another spelling ("::ffff:a00:5" for 10.0.0.5) holds
        # none of its rule's text: _needles then finds every token with a
        # colon or a dotted quad as well.
        if needles is None:
            return self._every_token(text)
        pieces: list[str] = []
        done = 0  # text[:done] is in pieces
        for hit in needles.finditer(text):
            if hit.start() < done:
                continue  # in a token already rewritten
            start = hit.start()
            while start > done and text[start - 1] in _TOKEN_CHARS:
                start -= 1
            token = _TOKEN.match(text, start)
            assert token is not None  # text[start] is a token character
            pieces.append(text[done:start])
            pieces.append(self._word(token.group()))
            done = token.end()
        if not pieces:
            return text
        pieces.append(text[done:])
        return "".join(pieces)

    def _every_token(self, text: str) -> str:
        """``_text`` looking at every token: what the needles only make faster."""
        return _TOKEN.sub(lambda m: self._word(m.group()), text)

    def _word(self, word: str) -> str:
        memo = self._memo
        done = memo.get(word)
        if done is None:
            done = self._rewrite_word(word)
            if len(word) <= _MAX_NAME:
                if len(memo) >= _MEMO_SIZE:
                    memo.clear()
                memo[word] = done
        return done

    def _rewrite_word(self, word: str) -> str:
        # Dots and hyphens around a token are punctuation ("at 10.0.0.5.",
        # "..mx1.corp.example.com"), and so is a colon after an address
        # ("from 2001:db8::5: refused"), unless it belongs to it ("2001:db8::").
        lead = len(word) - len(word.lstrip(".-"))
        body = word[lead:]
        for core in (body.rstrip("."), body.rstrip(".:-")):
            if core and _is_ip(_without_ipv6_tag(core)):
                rule = self._rule_for(core)
                if rule is None:
                    return word
                return word[:lead] + rule.replace + body[len(core) :]
        # Not an address: colons separate names from ports and the like.
        return ":".join(self._piece(piece) for piece in word.split(":"))

    def _piece(self, piece: str) -> str:
        match = _PIECE.fullmatch(piece)
        assert match is not None  # the pattern matches every string
        lead, core, trail = match.groups()
        if _IPV4.fullmatch(core):
            # An address is hidden whole or not at all: no span of
            # "192.168.10.5" is an address of its own.
            rule = self._rule_for(core)
            return piece if rule is None else lead + rule.replace + trail
        whole = _LETTER.search(core) is not None
        if whole:
            rule = self._rule_for(core)
            if rule is not None:
                return lead + rule.replace + trail
        elif not _DOTTED_QUAD.search(core):
            return piece  # "550", "5.1.1": no name, and no address glued to anything
        # A token longer than a name (255) is never matched whole (see
        # _rule_for), but it may hold one: its spans, at most 255 long, are
        # searched like any other's, at a cost _spans bounds.
        spans = self._spans(core, whole)
        return piece if spans is None else lead + spans + trail

    def _spans(self, core: str, whole_tried: bool) -> str | None:
        """``core`` with each label-bounded span that a rule matches replaced; None if none is.

        For a name with text glued on (``mx1.corp.example.com_backup``,
        ``-relay``, ``.Retry``, ``queue.mx1.corp.example.com42``), which no
        rule matches whole.  A span starts at the start of ``core`` or after
        a ``.``, ``_`` or ``-``, and ends at the end of ``core``, before one
        of those, or where a needle (a rule's text) ends and a letter meets a
        digit (``com|42``); never between two letters, since
        ``mx.example.community`` is another name than ``mx.example.com``, nor
        inside a number (``10.0.0.5|5``, ``192.168.|10.5``), since a part of
        an address is no address.  Spans are tried leftmost first, then
        longest first, so the most of a name is hidden
        (``queue.mx1.corp.example.com`` rather than its tail); text after a
        hidden span is searched the same way.  A span longer than a host
        name (255) is not tried.

        The work per token is bounded whatever its length: at most
        ``_SPAN_PAIRS`` spans are looked at (cheap string tests: a glob's
        head and tail, or the shape of an address) and ``_SPAN_TRIES`` of
        them matched against the rules.  A token that uses up either budget
        while it still holds a rule's text is hidden whole (fail closed: a
        hostile token must not buy a leak with its length); with regular
        expressions, which have no text to look for, the search just stops,
        so a name far into a long token may survive a ``re:`` rule (and
        ``com|42`` is no end for one): globs are the rules to hide with.
        """
        n = len(core)
        low = core.lower()
        needles = self._needles
        pieces: list[str] = []
        done = 0  # core[:done] is in pieces
        pairs = tries = 0
        cursor = 0  # no span starts before it
        # Starts and ends are found by regular expressions from the cursor
        # on, not listed for the whole token: only the 255 characters before
        # a rule's text can start a span of it, and a long token's other
        # labels cost nothing.
        while cursor < n:
            hit_start = -1
            if needles is not None:
                hit = needles.search(low, cursor)
                if hit is None:
                    break  # no rule's text in the rest: nothing to hide
                hit_start = hit.start()
                cursor = max(cursor, hit_start - _MAX_NAME + 1)
            found = _LABEL_START.search(core, cursor)
            if found is None or (needles is not None and found.start() > hit_start):
                if found is None:
                    break
                cursor = found.start()  # past that rule's text: look for the next
                continue
            start = found.start()
            cursor = start + 1
            if start > 0 and not _cut_ok(core, start - 1):
                continue
            pairs += 1
            ends = self._ends(core, low, max(start, hit_start) + 1, min(n, start + _MAX_NAME))
            for end in reversed(ends):
                if whole_tried and start == 0 and end == n:
                    continue
                pairs += 1
                if pairs > _SPAN_PAIRS or tries >= _SPAN_TRIES:
                    return self._fail_closed(core, pieces, done)
                if not self._may_fit(low[start:end]):
                    continue
                tries += 1
                rule = self._rule_for(core[start:end])
                if rule is not None:
                    pieces += (core[done:start], rule.replace)
                    done = cursor = end
                    break
            if pairs > _SPAN_PAIRS:
                return self._fail_closed(core, pieces, done)
        if not pieces:
            return None
        pieces.append(core[done:])
        return "".join(pieces)

    def _ends(self, core: str, low: str, first: int, last: int) -> list[int]:
        """Where a span may end, from ``first`` to ``last`` (both included), in ascending order."""
        ends = []
        for found in _LABEL_END.finditer(core, first, last + 1):
            end = found.start()
            if core[end] in _SEPARATORS:
                if _cut_ok(core, end):
                    ends.append(end)
            elif self._glued_end(core, low, end):
                ends.append(end)
        if first <= len(core) <= last:
            ends.append(len(core))
        return ends

    def _glued_end(self, core: str, low: str, end: int) -> bool:
        """Whether a span may end inside a label, at ``core[end]``: where a letter meets a digit
        and a rule's text, or an address, ends.

        "queue.mx1.corp.example.com42", "5.0.0.10.in-addr.arpa42",
        "host-10.0.0.5abc"; not "mx.example.com|munity", another name.
        """
        if core[end - 1].isdigit() == core[end].isdigit():
            return False
        if any(low.endswith(text, 0, end) for text in self._glue_after):
            return True
        # At most "255.255.255.255" back, so the look costs little.
        return (
            self._address_rules
            and _DOTTED_QUAD_TAIL.search(low, max(0, end - 16), end) is not None
        )

    def _fail_closed(self, core: str, pieces: list[str], done: int) -> str | None:
        """What ``_spans`` gives when its budget runs out: the rest hidden if it holds a rule's text."""
        if self._needles is None or not self._needles.search(core, done):
            if not pieces:
                return None
            return "".join([*pieces, core[done:]])
        # The separator after the last hidden span stays ("example.com_...").
        rest = core[done:]
        kept = len(rest) - len(rest.lstrip("._-"))
        return "".join([*pieces, rest[:kept], self._rules[0].replace])

    def _may_fit(self, span: str) -> bool:
        """Whether a rule may match ``span`` (lower case), on its head and tail or its shape."""
        for rule in self._rules:
            if rule.head is None or rule.tail is None:
                return True  # a regular expression: only trying it tells
            if (
                len(span) >= len(rule.head) + len(rule.tail)
                and span.startswith(rule.head)
                and span.endswith(rule.tail)
            ):
                return True
        # Another spelling of an address holds no rule's text ("10.0.0.005",
        # "5.0.0.10.in-addr.arpa").
        return self._address_rules and (
            _IPV4.fullmatch(span) is not None or span.endswith((_IN_ADDR, _IP6))
        )
