# -*- test-case-name: tests.test_chain -*-
"""The chaining tracker: the firewall gateway's answer from its own store and its inner hosts.

RFC 3887 section 2.4 lets a firewall gateway gather the tracking information
of the hosts behind it and answer for them, within 2 minutes.  For one TRACK:

1. Ask the local tracker (store and certifier check).  A wrong secret and no
   record look the same from here: both are the local tracker's "unknown"
   answer (noinfo, or the opaque stand-in).
2. Targets: the configured inner hosts named (``merge.host_key`` of
   Remote-MTA: case-insensitively, an address literal such as
   ``[IPv6:2001:db8::5]`` as its bare canonical address) by the local
   recipients that were relayed or transferred; with no local record and
   ``fanout`` on, every inner host.
3. Ask them all at once through the L{SessionPool}.  An inner answer that
   refers recipients on to further *configured* inner hosts is followed, to
   ``max_depth`` inner hops, never the same host twice.  A name that is not
   configured is never contacted, whatever an answer says, and neither is
   the gateway's own name.
4. One deadline (``chain.deadline``) for the whole answer.  When it passes,
   what still runs is cancelled (those sessions are aborted) and the answer
   is built from what is known.  An inner host that failed in any way, or did
   not answer in time, costs its own part and nothing else: its recipients
   keep the gateway's block ("passed on, no further information").
5. Each inner answer is screened first (``mtqpgw.merge.screen``, review
   M2): a part about another envelope id, or one whose Reporting-MTA is no
   plain host name or names this gateway (its name, one of ``addresses``)
   or another configured inner host, is dropped and logged, and its
   referrals are not followed.
   ``mtqpgw.merge`` then builds the parts (``hops`` or ``combined``) from
   one L{HostAnswer} per inner host asked, so that one host's parts never
   merge into another's; the rewriter runs last, on every answer this
   tracker gives.
   All of that runs on the reactor thread, so what one TRACK takes from its
   inner hosts is capped (review M5): ``max_inner_octets`` and
   ``max_inner_lines`` over all of them, on top of the pool's cap on each
   answer, and ``MAX_PARTS_PER_ANSWER`` parts per answer.  Parts past a cap
   are dropped and logged, and the answer is built from what was taken.
6. Nothing known anywhere: the local tracker's own "unknown" answer, so an
   unknown envelope id and a wrong secret still answer alike.

The secret goes to the inner hosts, which check it themselves; it is never
logged.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mtqpgw.interfaces import ITracker
from mtqpgw.logtext import literal
from mtqpgw.merge import HostAnswer, host_key, merge, referrals, screen
from mtqpgw.pool import SessionPool, effective_tls
from mtqpgw.server import is_failed_lookup
from mtqpgw.status import MESSAGE_FIELDS, RECIPIENT_FIELDS, Answer, Outcome, TrackingStatus
from mtqpgw.wire import can_name_for_starttls

__all__ = [
    "CLEAR_TEXT_WARNING_INTERVAL",
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_INNER_LINES",
    "DEFAULT_MAX_INNER_OCTETS",
    "MAX_PARTS_PER_ANSWER",
    "RFC_LIMIT",
    "ChainingTracker",
    "listen_addresses",
    "part_size",
]

log = Logger()

#: RFC 3887 section 2.4: a chaining server MUST answer within 2 minutes.
RFC_LIMIT = 120.0
DEFAULT_DEADLINE = 110.0
DEFAULT_MAX_DEPTH = 4
#: What one TRACK takes from all its inner hosts together, as serialised
#: (review M5).  Merging, rewriting and serialising it holds up every other
#: session of the gateway, so it is bounded like each inner answer is in
#: pool.py (512 KiB): room for two inner hosts' full answers about a message
#: to 1,000 recipients (~370 KiB and ~9,000 lines each), no more.
DEFAULT_MAX_INNER_OCTETS = 1024 * 1024
DEFAULT_MAX_INNER_LINES = 20_000
#: The parts one inner answer may bring (review M5).  An answer has one part
#: per reporting MTA on the message's path behind that host: one for a plain
#: MTA, a handful for an inner gateway, tens for a deep tree of them (seed
#: examples: 1 or 2).  200 is far past any real path, and bounds what costs
#: per part whatever its size (screening, merging, the report's boundaries,
#: a log line per refused part) to a small multiple of one part's.
MAX_PARTS_PER_ANSWER = 200

# A part's own lines in the report (report.build_report): its delimiter,
# Content-Type, the blank line after them and the blank line after the body.
_PART_LINES, _PART_OCTETS = 4, 80

# How often, per inner host, a TLS client's secret going out in clear text
# is warned of (RFC 3887 section 11): enough to be seen, not a flood.
CLEAR_TEXT_WARNING_INTERVAL = 60.0

_UNREACHABLE = Answer.temp(
    ("unavailable",), "Tracking information is not available now; try again later"
)
_LATE = Answer.temp(
    ("unavailable",), "Tracking information not available in time; try again later"
)


def part_size(part: TrackingStatus) -> tuple[int, int]:
    """About the ``(lines, octets)`` of ``part`` in a report, as serialised (ASCII assumed).

    An estimate from the model, cheap next to serialising (within a few per
    cent; folding is guessed from the width alone): the cost of a part to
    the gateway grows with these, and they are what the per-TRACK caps count.
    """
    lines, octets = _PART_LINES, _PART_OCTETS
    fields = [(name, getattr(part, attribute)) for name, attribute in MESSAGE_FIELDS]
    fields += part.extensions
    for block in part.recipients:
        lines += 1  # the blank line before each recipient's group
        octets += 2
        fields += [
            (name, block.action.value if attribute == "action" else getattr(block, attribute))
            for name, attribute in RECIPIENT_FIELDS
        ]
        fields += block.extensions
    for name, value in fields:
        if value is not None:
            width = len(name) + len(value) + 2  # ": "
            # status.serialise_tracking_status folds at white space past 78
            # octets, elsewhere only past 998.
            fold = 78 if (" " in value or "\t" in value) else 998
            extra = (width - 1) // fold
            lines += 1 + extra
            octets += width + 2 + 3 * extra  # CRLF, and CRLF + WSP per fold
    return lines, octets


def listen_addresses(listen: Iterable[str]) -> set[str]:
    """The specific addresses in listening endpoint strings, as ``host_key`` writes them.

    ``"tcp:1038:interface=192.0.2.1"`` gives ``{"192.0.2.1"}``,
    ``"tcp6:1038:interface=2001\\:db8\\:\\:1"`` gives ``{"2001:db8::1"}``.  A
    wildcard (no interface, ``0.0.0.0``, ``::``) names no address of its
    own: which addresses it answers on would take asking the system, and
    this reads text only.  Anything that is not an address is left out.
    """
    found: set[str] = set()
    for description in listen:
        # Endpoint strings separate with ":" and quote it with "\\".
        for argument in re.split(r"(?<!\\):", description):
            name, sep, value = argument.partition("=")
            if not sep or name.strip() != "interface":
                continue
            key = host_key(value.replace("\\:", ":"))
            try:
                address = ipaddress.ip_address(key)
            except ValueError:
                continue
            if not address.is_unspecified:
                found.add(key)
    return found


def _text(value: Any, default: str) -> str:
    # Config may hold enums or strings.
    return str(getattr(value, "value", value) or default).lower()


@implementer(ITracker)
class ChainingTracker:
    """Answers TRACK for the gateway: its local tracker plus its inner MTQP hosts.

    ``chain`` is a ``config.ChainConfig`` (``deadline``, ``report``,
    ``fanout``, ``max_depth``, ``inner``: entries with ``name``, ``host``,
    ``port``, ``tls``, ``cafile``).  ``service`` closes pooled sessions when
    the daemon stops.  ``pool`` is for tests: anything with ``track(inner,
    envid, secret, secure) -> Deferred[Answer]`` and a ``service``.
    ``max_inner_octets`` and ``max_inner_lines`` cap what one TRACK takes
    from all its inner hosts together (``part_size``).  ``addresses`` are
    the gateway's own addresses (``listen_addresses(config.server.listen)``):
    an inner part whose Reporting-MTA names one of them, or ``hostname``,
    is refused as speaking for the gateway.
    """

    def __init__(
        self,
        local: ITracker,
        chain: Any,
        rewriter: Any,
        hostname: str,
        reactor: Any = None,
        pool: Any = None,
        *,
        max_inner_octets: int = DEFAULT_MAX_INNER_OCTETS,
        max_inner_lines: int = DEFAULT_MAX_INNER_LINES,
        addresses: Iterable[str] = (),
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.local = local
        self.rewriter = rewriter
        self.hostname = host_key(hostname)
        # The gateway's own addresses: an inner part reporting as one of them
        # speaks as the gateway and is refused (merge.screen).
        self.addresses = frozenset(key for key in map(host_key, addresses) if key)
        self.clock = reactor
        deadline = getattr(chain, "deadline", None)
        self.deadline = float(DEFAULT_DEADLINE if deadline is None else deadline)
        if not 0 < self.deadline < RFC_LIMIT:
            raise ValueError(
                f"chain.deadline must be above 0 and below {RFC_LIMIT:g} seconds, "
                f"not {self.deadline:g}"
            )
        self.report = _text(getattr(chain, "report", "hops"), "hops")
        self.fanout = bool(getattr(chain, "fanout", True))
        depth = getattr(chain, "max_depth", DEFAULT_MAX_DEPTH)
        self.max_depth = int(DEFAULT_MAX_DEPTH if depth is None else depth)
        self.inner: dict[str, Any] = {}
        for inner in getattr(chain, "inner", ()) or ():
            # Keyed as referrals are (host_key), so that a host configured by
            # address is found from a "dns; [10.0.0.5]" Remote-MTA.
            name = host_key(inner.name)
            if name == self.hostname:
                # Asking ourselves would loop through the pool until the deadline.
                log.warn("Inner host {name} is this gateway's own name; never asked", name=name)
                continue
            self.inner.setdefault(name, inner)
        # Inner host -> when its clear-text warning was last logged.
        self._clear_text_warned: dict[str, float] = {}
        self.max_inner_octets = max_inner_octets
        self.max_inner_lines = max_inner_lines
        self.pool = pool if pool is not None else SessionPool(reactor)
        self.service = self.pool.service

    def track(self, envid: str, secret: str, secure: bool = False) -> defer.Deferred[Answer]:
        """Fire with the gateway's L{Answer} for ``envid``, always within ``deadline`` seconds.

        Cancelling stops everything still running for it.
        """
        return _Query(self, envid, secret, secure).start()

    def warn_if_clear_text(self, name: str, inner: Any, secure: bool) -> None:
        """Warn (once a minute per host) when a TLS client's query goes on to ``inner`` in clear.

        RFC 3887 section 11: the next hop SHOULD get the same or better
        security.  STARTTLS names the server, and only a fully qualified
        domain name can be named (``wire.can_name_for_starttls``): an inner host
        named by an IP literal or one label gets the secret in clear text
        under ``opportunistic`` (and ``off``, which ``secure`` turns into
        ``opportunistic``), which client.py logs only at info level.
        ``required`` fails instead, so nothing is sent.  Name inner hosts by
        FQDN; ``host`` may still be an address.
        """
        if not secure or effective_tls(inner, secure) == "required":
            return
        if can_name_for_starttls(str(inner.name)):
            return
        now = self.clock.seconds()
        last = self._clear_text_warned.get(name)
        if last is not None and now - last < CLEAR_TEXT_WARNING_INTERVAL:
            return
        if len(self._clear_text_warned) > 4 * len(self.inner):
            self._clear_text_warned.clear()  # bounded; only configured names get here
        self._clear_text_warned[name] = now
        log.warn(
            "A TLS client's TRACK goes to inner host {name} without TLS: STARTTLS needs a "
            "fully qualified name, not {name!r}; name it by FQDN in [[chain.inner]] "
            "(host may stay an address)",
            name=str(inner.name),
        )

    def targets_for(self, parts: Iterable[TrackingStatus]) -> list[str]:
        """The configured inner hosts the referrals in ``parts`` name, in order, once each."""
        found: list[str] = []
        for part in parts:
            for host, _ in referrals(part):
                if host in self.inner and host not in found:
                    found.append(host)
        return found


class _Query:
    """One TRACK through the gateway: the local answer, the inner queries, the deadline."""

    def __init__(self, tracker: ChainingTracker, envid: str, secret: str, secure: bool) -> None:
        self.tracker = tracker
        self.envid = envid
        self.secret = secret
        self.secure = secure
        self.result: defer.Deferred[Answer] = defer.Deferred(self._cancelled)
        self.finished = False
        self.expired = False
        self.timer: Any = None
        self.local_d: defer.Deferred[Answer] | None = None
        self.local_answer: Answer | None = None
        self.local_part: TrackingStatus | None = None
        self.visited: set[str] = set()
        self.running: dict[str, defer.Deferred[Answer]] = {}
        self.pending = 0
        self.sequence = 0
        # (depth, launch order, host, parts) of each inner host that told
        # something; sorted by the first two, that is path order.
        self.results: list[tuple[int, int, str, list[TrackingStatus]]] = []
        # Inner hosts that failed (refused, reset, -TEMP, TLS...) and those
        # still silent at the deadline.
        self.failed: list[str] = []
        self.late: list[str] = []
        # What the inner parts taken so far cost (part_size), and whether
        # the per-TRACK cap was reached: then every later part is dropped.
        self.taken_lines = 0
        self.taken_octets = 0
        self.full = False
        self.started = time.monotonic()

    # -- start and stop -----------------------------------------------------

    def start(self) -> defer.Deferred[Answer]:
        tracker = self.tracker
        self.timer = tracker.clock.callLater(tracker.deadline, self._deadline_passed)
        self.local_d = defer.maybeDeferred(
            tracker.local.track, self.envid, self.secret, secure=self.secure
        )
        self.local_d.addCallbacks(self._local_answered, self._local_failed)
        return self.result

    def _cancelled(self, _: defer.Deferred[Answer]) -> None:
        # The outside client went away: stop all work for it.
        self._stop()

    def _stop(self) -> None:
        """Finished: no deadline any more, and nothing still running."""
        self.finished = True
        self._stop_timer()
        self._cancel_all()

    def _cancel_all(self) -> None:
        if self.local_d is not None:
            local, self.local_d = self.local_d, None
            local.cancel()
        for d in list(self.running.values()):
            d.cancel()

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _deadline_passed(self) -> None:
        self.timer = None
        self.expired = True
        local_late = self.local_d is not None
        if local_late:
            log.warn(
                "TRACK {envid}: the local store did not answer within {deadline:g}s",
                envid=self.envid,
                deadline=self.tracker.deadline,
            )
        # Each cancelled inner host logs itself ("no answer before the deadline").
        self._cancel_all()
        self._finish(_LATE if local_late else self._compose())

    def _finish(self, answer: Answer) -> None:
        if self.finished:
            return
        self.finished = True
        self._stop_timer()
        self._log_summary(answer)
        self.result.callback(answer)

    def _maybe_finish(self) -> None:
        if not self.finished and not self.expired and self.pending == 0:
            self._finish(self._compose())

    # -- the local answer ---------------------------------------------------

    def _local_answered(self, answer: Answer) -> None:
        self.local_d = None
        if self.finished or self.expired:
            return
        try:
            self._start_inner(answer)
        except Exception:
            # A bug must not leave the client waiting for the deadline.
            self._local_failed(Failure())

    def _start_inner(self, answer: Answer) -> None:
        self.local_answer = answer
        tracker = self.tracker
        unknown = is_failed_lookup(answer)
        if answer.outcome is Outcome.OK and answer.parts and not unknown:
            self.local_part = answer.parts[0]
            targets = tracker.targets_for(answer.parts)
        elif unknown and tracker.fanout:
            # No record here (or a wrong secret: the same thing): any inner
            # host may have seen the message.
            targets = list(tracker.inner)
        else:
            # Unknown without fan-out, or the store is unavailable.
            self._finish(tracker.rewriter.answer(answer))
            return
        self._launch(targets, depth=1)
        self._maybe_finish()

    def _local_failed(self, failure: Failure) -> Failure | None:
        self.local_d = None
        if self.finished or self.expired:
            return None
        self._stop()
        # The server answers -TEMP for a tracker that fails.
        self.result.errback(failure)
        return None

    # -- the inner hosts ----------------------------------------------------

    def _launch(self, names: Sequence[str], depth: int) -> None:
        fresh = [
            name
            for name in dict.fromkeys(names)
            if name not in self.visited and name != self.tracker.hostname
        ]
        if depth > self.tracker.max_depth:
            if fresh:
                log.info(
                    "TRACK {envid}: not following {hosts}: deeper than max_depth {depth}",
                    envid=self.envid,
                    hosts=", ".join(fresh),
                    depth=self.tracker.max_depth,
                )
            return
        # Count them all before starting any, so that one answering at once
        # does not finish the query before the others have started.
        self.visited.update(fresh)
        self.pending += len(fresh)
        for name in fresh:
            self.sequence += 1
            self._ask(name, depth, self.sequence)

    def _ask(self, name: str, depth: int, order: int) -> None:
        inner = self.tracker.inner[name]
        try:
            self.tracker.warn_if_clear_text(name, inner, self.secure)
            d = self.tracker.pool.track(inner, self.envid, self.secret, self.secure)
        except Exception:
            d = defer.fail()
        self.running[name] = d
        d.addCallbacks(
            self._inner_answered,
            self._inner_failed,
            callbackArgs=(name, depth, order),
            errbackArgs=(name,),
        )

    def _inner_answered(self, answer: Answer, name: str, depth: int, order: int) -> None:
        self.running.pop(name, None)
        self.pending -= 1
        if self.finished or self.expired:
            return
        if answer.outcome is Outcome.OK and answer.parts and not is_failed_lookup(answer):
            try:
                parts = self._take(name, self._screen(name, answer.parts))
                if parts:
                    self.results.append((depth, order, name, parts))
                self._launch(self.tracker.targets_for(parts), depth + 1)
            except Exception:
                # A bug costs this host's answer, and never the client's wait.
                log.failure(
                    "TRACK {envid}: using {host}'s answer failed", envid=self.envid, host=name
                )
        elif answer.outcome is Outcome.OK or answer.outcome is Outcome.NOINFO:
            log.debug("TRACK {envid}: {host} knows nothing", envid=self.envid, host=name)
        else:
            self.failed.append(name)
            log.warn(
                "TRACK {envid}: {host} answered {outcome} {reasons}: {text}",
                envid=self.envid,
                host=name,
                outcome=answer.outcome.value,
                reasons="/".join(answer.reasons),
                text=answer.text,
            )
        self._maybe_finish()

    def _screen(self, name: str, parts: Sequence[TrackingStatus]) -> list[TrackingStatus]:
        """The parts of ``name``'s answer the gateway may use; the others are logged and dropped."""
        if len(parts) > MAX_PARTS_PER_ANSWER:
            log.warn(
                "TRACK {envid}: dropped {count} part(s) from inner host {host}: an inner "
                "answer brings at most {limit} parts",
                envid=self.envid,
                count=len(parts) - MAX_PARTS_PER_ANSWER,
                host=name,
                limit=MAX_PARTS_PER_ANSWER,
            )
            parts = parts[:MAX_PARTS_PER_ANSWER]
        kept, refused = screen(
            parts,
            self.envid,
            self.tracker.hostname,
            addresses=self.tracker.addresses,
            host=name,
            inner=self.tracker.inner,
        )
        for part, why in refused:
            log.warn(
                "TRACK {envid}: dropped a part from inner host {host} "
                "(Reporting-MTA {reporter!r}): {why}",
                envid=self.envid,
                host=name,
                reporter=part.reporting_mta[:100],
                why=why,
            )
        return kept

    def _take(self, name: str, parts: list[TrackingStatus]) -> list[TrackingStatus]:
        """The parts that fit in what is left of the per-TRACK cap; past it, none (logged)."""
        tracker = self.tracker
        for index, part in enumerate(parts):
            if not self.full:
                lines, octets = part_size(part)
                lines += self.taken_lines
                octets += self.taken_octets
                if lines <= tracker.max_inner_lines and octets <= tracker.max_inner_octets:
                    self.taken_lines, self.taken_octets = lines, octets
                    continue
                self.full = True
            log.warn(
                "TRACK {envid}: dropped {count} part(s) from inner host {host}: one TRACK "
                "takes at most {octets} octets and {lines} lines from its inner hosts",
                envid=self.envid,
                count=len(parts) - index,
                host=name,
                octets=tracker.max_inner_octets,
                lines=tracker.max_inner_lines,
            )
            return parts[:index]
        return parts

    def _inner_failed(self, failure: Failure, name: str) -> None:
        self.running.pop(name, None)
        self.pending -= 1
        if failure.check(defer.CancelledError):
            if not self.expired:
                return  # cancelled because the client went away
            what = "no answer before the deadline"
            self.late.append(name)
        else:
            what = failure.getErrorMessage() or failure.type.__name__
            self.failed.append(name)
        log.warn(
            "TRACK {envid}: inner host {host} failed: {error}",
            envid=self.envid,
            host=name,
            error=what,
        )
        self._maybe_finish()

    # -- the answer ---------------------------------------------------------

    def _compose(self) -> Answer:
        tracker = self.tracker
        # Path order: by depth, then in the order the hosts were asked.
        inner = [
            HostAnswer(name, parts)
            for _, _, name, parts in sorted(self.results, key=lambda result: result[:2])
        ]
        assert self.local_answer is not None
        if self.local_part is None and not inner:
            if self.failed:
                # Nothing known here, and a host that might know failed:
                # "no information" would be a guess, and one the client would
                # be counted a failed TRACK for.  Whether it failed does not
                # depend on the envelope id, so this tells nothing of it.
                # (Hosts merely silent at the deadline are different: RFC
                # 3887 section 2.4 wants "no further information" then.)
                return _UNREACHABLE
            # Nothing known anywhere: the local tracker's unknown answer.
            return tracker.rewriter.answer(self.local_answer)
        # A local answer of several parts (a store that keeps hops) puts the
        # extra ones before the inner hosts', which are deeper; they are the
        # gateway's own (host None).
        if self.local_part is not None and len(self.local_answer.parts) > 1:
            inner.insert(0, HostAnswer(None, self.local_answer.parts[1:]))
        try:
            parts = merge(
                tracker.report,
                self.local_part,
                inner,
                reporting_mta=f"dns; {tracker.hostname}",
            )
        except Exception:
            log.failure("TRACK {envid}: merging the inner answers failed", envid=self.envid)
            if self.local_part is None:
                return tracker.rewriter.answer(self.local_answer)
            parts = (self.local_part,)
        return tracker.rewriter.answer(Answer.found(parts))

    def _log_summary(self, answer: Answer) -> None:
        # A partial answer is worth an operator's attention: it reads as
        # complete to the client.
        emit = log.warn if self.failed or self.late else log.info
        envid, outcome, duration = (
            self.envid,
            answer.outcome.value,
            time.monotonic() - self.started,
        )
        asked, answered = len(self.visited), len(self.results)
        failed = len(self.failed) + len(self.late)
        emit(
            literal(
                f"TRACK {envid} chained: {outcome}; {asked} inner host(s) asked, "
                f"{answered} told something, {failed} failed, in {duration:.3f}s"
            ),
            envid=envid,
            outcome=outcome,
            asked=asked,
            answered=answered,
            failed=failed,
            duration=duration,
        )
