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
  mail domain is not a host.

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
must match only host names (``"re:.*"`` would eat every word).  A candidate
longer than 255 characters is no host name and is left alone; that also
bounds the cost of a rule, but a regular expression with nested repetition
(``"re:(a+)+b"``) is still the administrator's to avoid.

Never rewritten: Original-Envelope-Id (the client's own key), Action, dates,
field names, and the local parts of Original-Recipient and Final-Recipient.
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


@dataclass(frozen=True)
class _Rule:
    source: str
    pattern: re.Pattern[str]
    replace: str
    addresses: bool


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
# Tokens whose rewriting is remembered (a report repeats its host names);
# past this many the memory starts again, so it stays bounded.
_MEMO_SIZE = 4096


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
    runs = set()
    for rule in rules:
        if rule.source[:3].lower() == "re:":
            return None
        run = max(re.split(r"[*?]", match_subject(rule.source).lower()), key=len)
        if not run:
            return None
        runs.add(run)
    if not runs:
        return None
    # ASCII case folding only: a token is ASCII, and Unicode folding would
    # find a run in a Kelvin sign, outside any token.
    ordered = sorted(runs, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE | re.ASCII)


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
    return _Rule(match, pattern, replacement, bool(getattr(rule, "addresses", False)))


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
        for rule in self._rules:
            if rule.pattern.fullmatch(subject):
                return rule
        # ::ffff:10.0.0.5 is 10.0.0.5: a rule written for the one hides the other.
        if ":" in subject and _is_ip(subject):
            mapped = ipaddress.IPv6Address(subject).ipv4_mapped
            if mapped is not None:
                return self._rule_for(str(mapped))
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
        """Original-/Final-Recipient: the domain only, and only under an ``addresses`` rule."""
        if not value:
            return value
        # The domain after the last "@", an address literal or a name, with
        # the ">" and white space that may close the field kept as they are.
        found = _ADDRESS_DOMAIN.search(value)
        if found is None:
            return value
        rule = self._rule_for(found.group(1))
        if rule is None or not rule.addresses:
            return value
        return value[: found.start(1)] + rule.replace + value[found.end(1) :]

    def _text(self, text: str | None) -> str | None:
        """Free text with every host name and address that a rule matches replaced."""
        if not text:
            return text
        needles = self._needles
        # An IPv4-mapped IPv6 address in hex ("::ffff:a00:5") is matched as
        # the IPv4 one, whose text is nowhere in it: look at every token.
        if needles is None or (":" in text and "ffff" in text.lower()):
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
        if not (_LETTER.search(core) or _IPV4.fullmatch(core)):
            return piece
        rule = self._rule_for(core)
        return piece if rule is None else lead + rule.replace + trail
