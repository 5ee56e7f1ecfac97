# -*- test-case-name: tests.test_trackcmd -*-
"""``mtqp track``: ask the MTQP server of a host where a message is, and follow it hop by hop.

The server is found as RFC 3887 section 2 says (L{mtqpgw.dns}): SRV
targets in RFC 2782 order, moving to the next on connection failure, else the
host's address on port 1038.  The answer is printed readably, raw (the MIME
body) or as JSON (interface.md section 4).  Exit statuses: 0 a report, 1 a
negative answer (-ERR, -TEMP, -BAD; also a negative greeting such as
``-TEMP/MTQP/admin`` when no SRV target took a session: the server was
reached and said no), 2 usage or connection errors.

``run(reactor, args, out, err)`` does the work on a running reactor (tests
call it); ``main(args)`` runs the reactor around it for the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet import defer, endpoints, error, task
from twisted.python.failure import Failure

from mtqpgw import wire
from mtqpgw.certifier import decode_secret
from mtqpgw.cli import EXIT_NEGATIVE, EXIT_OK, EXIT_USAGE
from mtqpgw.client import (
    ClientError,
    MTQPClientProtocol,
    TLSMode,
    TLSRequiredError,
    UnexpectedGreeting,
    connect,
)
from mtqpgw.dns import (
    MTQP_PORT,
    DiscoveryError,
    Target,
    discover,
    make_resolver,
    resolve_addresses,
)
from mtqpgw.follow import Hop, Plan, Referral, plan
from mtqpgw.report import GARBLED, answer_from_response, answer_to_json
from mtqpgw.status import Answer, Outcome, RecipientStatus, TrackingStatus, address_of
from mtqpgw.tls import TLSConfigError, client_context, load_ca_bundle
from mtqpgw.tofu import TofuCache, observation_from_info
from mtqpgw.uri import MTQPURI, URIError, check_host, is_ip_literal, split_host_port

__all__ = [
    "CONNECT_TIMEOUT",
    "EXIT_NEGATIVE",
    "EXIT_OK",
    "EXIT_USAGE",
    "TrackRequest",
    "UsageError",
    "main",
    "parse_server",
    "render_json",
    "render_text",
    "request_from_args",
    "run",
]

#: Seconds to wait for a TCP connection to one address.  Shorter than the
#: answer timeout: a dead SRV target should not hold up the next one for the
#: two minutes a chaining server may need to answer.
CONNECT_TIMEOUT = 30.0

_PROG = "mtqp track"


class UsageError(ValueError):
    """The command line does not say what to ask; ``str()`` is one line."""


@dataclass(frozen=True)
class TrackRequest:
    """What to ask and where: the host, an explicit port or None (discover), the query."""

    host: str
    port: int | None
    envid: str
    secret: str = field(repr=False)


def parse_server(text: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` (IPv6 as ``[::1]:1038`` or bare ``::1``) -> ``(host, port or None)``."""
    try:
        host, port = split_host_port(text)
        return check_host(host), port
    except ValueError as e:  # URIError is a ValueError
        raise UsageError(f"--server: {e}") from None


def request_from_args(args: argparse.Namespace) -> TrackRequest:
    """The query the command line asks for; L{UsageError} (never naming the secret) if none."""
    # argparse fills the optional positionals left to right, so with
    # --server the envid lands in ``uri`` and the secret in ``envid``.
    given = [p for p in (args.uri, args.envid, args.secret) if p is not None]
    try:
        if args.server is not None:
            if len(given) != 2:
                raise UsageError("with --server, give ENVID and SECRET (and no URI)")
            host, port = parse_server(args.server)
            if decode_secret(given[1]) is None:
                # The URI's message (about %2F) is beside the point here: the
                # usual slip is pasting secret A instead of its base64.
                # Never echo it: it is a secret.
                raise UsageError(
                    "SECRET must be the base64 mtrk-secret as sent on the wire "
                    "(base64 of secret A), not secret A itself"
                )
            uri = MTQPURI(host, port, given[0], given[1])
        else:
            if len(given) != 1:
                raise UsageError("give one mtqp:// URI, or --server HOST[:PORT] ENVID SECRET")
            uri = MTQPURI.from_text(given[0])
    except URIError as e:
        # URIError messages never quote the secret (mtqpgw.uri).
        raise UsageError(str(e)) from None
    return TrackRequest(uri.host, uri.port, uri.envid, uri.secret)


def _check_options(args: argparse.Namespace) -> None:
    if args.tls_name is not None:
        if args.tls == "off":
            raise UsageError(
                "--tls-name names the server for STARTTLS; it has no use with --tls off"
            )
        if not wire.can_name_for_starttls(args.tls_name):
            raise UsageError(f"--tls-name: {args.tls_name} is not a fully qualified domain name")
    if args.timeout is None or not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if args.follow and args.max_hops < 1:
        raise UsageError("--max-hops must be at least 1")
    if args.follow and args.raw:
        raise UsageError("--raw prints one server's answer as received; it cannot --follow")


def _server_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _why(exc: BaseException, timeout: float) -> str:
    """One phrase for why a connection or session failed."""
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, error.TimeoutError | error.TCPTimedOutError):
        return "connection timed out"
    if isinstance(exc, error.NoRouteError):
        return "no route to host"
    if isinstance(exc, defer.TimeoutError):
        return f"no answer within {timeout:g} seconds"
    if isinstance(exc, ClientError | DiscoveryError):
        return str(exc)
    if isinstance(exc, error.ConnectError) and exc.osError:
        return _first_line(str(exc.osError)) or "could not connect"
    return _first_line(str(exc)) or type(exc).__name__


_NAME_HINT = "give the server's domain name with --tls-name NAME"


def _check_tls_name_needed(request: TrackRequest, args: argparse.Namespace) -> None:
    """--tls required to an address with no --tls-name: say so before connecting.

    Only when the host is the server (an IP literal, or a port given: no SRV
    look-up); a one-label name's SRV targets may well be domain names.
    """
    if args.tls != "required" or args.tls_name is not None:
        return
    if request.port is None and not is_ip_literal(request.host):
        return
    if not wire.can_name_for_starttls(request.host):
        raise UsageError(
            f"--tls required: STARTTLS needs the server's domain name and {request.host} "
            f"is not one; {_NAME_HINT}"
        )


def _greeting_answer(exc: BaseException) -> Answer | None:
    """The negative answer a refusing greeting gives (``-TEMP/MTQP/admin``), else None.

    The "MTQP" of the greeting only says which protocol is speaking; it is
    not a reason, so it is dropped (interface.md's ``reason`` lists codes
    like ``admin``).
    """
    if not isinstance(exc, UnexpectedGreeting) or exc.response is None:
        return None
    response = exc.response
    if response.is_positive:
        return None  # a positive greeting that is not MTQP: not a server's answer
    reasons = tuple(r for r in response.reasons if r != "mtqp")
    if response.indicator is wire.Indicator.TEMP:
        return Answer.temp(reasons, response.text)
    if response.indicator is wire.Indicator.BAD:
        return Answer(Outcome.BAD, reasons=reasons, text=response.text)
    # -ERR in a greeting is a refusal of the session, whatever its reason.
    return Answer.error(reasons, response.text)


@dataclass
class _Asked:
    """One hop's result, with the raw response kept for --raw."""

    hop: Hop
    response: wire.Response | None = None


class _Asker:
    """Asks one host's MTQP server (discovered, first target that takes the session)."""

    def __init__(
        self,
        reactor: Any,
        clock: Any,
        resolver: Any,
        rng: Any,
        tls_mode: TLSMode,
        cafile: str | None,
        timeout: float,
        default_port: int,
        tofu: Any,
        err: IO[str],
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.resolver = resolver
        self.rng = rng
        self.tls_mode = tls_mode
        self.cafile = cafile
        self.timeout = timeout
        self.default_port = default_port
        self.tofu = tofu
        self.err = err
        # Addresses already looked up this run (by discover's fallback, or
        # for an earlier hop's target): each name is resolved once.
        self._addresses: dict[str, list[str]] = {}

    async def _addresses_of(self, host: str) -> list[str]:
        addresses = self._addresses.get(host)
        if addresses is None:
            addresses = await resolve_addresses(self.resolver, host)
            self._addresses[host] = addresses
        return addresses

    def _tls_for(
        self, host: str, tls_name: str | None, hint: bool
    ) -> tuple[TLSMode, str | None, Any, str | None]:
        """``(mode, name, context, skipped)`` for a session with *host*.

        The name asked for in STARTTLS, and that the certificate must match,
        is *tls_name* (--tls-name) if given, else the host connected to.
        ``skipped`` says why TLS is not attempted although --tls wants it:
        the name is an address or has one label, which STARTTLS cannot ask
        for (RFC 3887 section 6).  *hint*: --tls-name would apply here.
        """
        if self.tls_mode is TLSMode.OFF:
            return TLSMode.OFF, None, None, None
        name = tls_name or host
        if not wire.can_name_for_starttls(name):
            why = f"STARTTLS needs the server's domain name and {host} is not one"
            if hint:
                why += f"; {_NAME_HINT}"
            if self.tls_mode is TLSMode.REQUIRED:
                raise TLSRequiredError(f"TLS is required, but {why}")
            return TLSMode.OFF, None, None, why
        context = client_context(name, self.cafile, self.tls_mode.value)
        return self.tls_mode, name, context, None

    def _endpoint(self, address: str, port: int) -> Any:
        connect_timeout = min(CONNECT_TIMEOUT, self.timeout)
        if ":" in address:
            return endpoints.TCP6ClientEndpoint(self.reactor, address, port, connect_timeout)
        return endpoints.TCP4ClientEndpoint(self.reactor, address, port, connect_timeout)

    async def _session(
        self, target: Target, address: str, tls_name: str | None, hint: bool
    ) -> MTQPClientProtocol:
        mode, name, context, skipped = self._tls_for(target.host, tls_name, hint)
        d = connect(self.reactor, self._endpoint(address, target.port), mode, name, context)
        d.addTimeout(self.timeout, self.clock)
        proto: MTQPClientProtocol = await d
        info = proto.info
        server = _server_text(target.host, target.port)
        if skipped is not None and info is not None and wire.starttls_offered(info.options):
            # The user asked for TLS and the server offers it: going on in
            # the clear must not be silent.  (A server not offering it would
            # be in the clear anyway: nothing to say.)
            self.err.write(
                f"{_PROG}: warning: {server} offers STARTTLS but TLS was not attempted: "
                f"{skipped}\n"
            )
        if self.tofu is not None and self.tls_mode is not TLSMode.OFF:
            # Remembered under the server connected to, whatever --tls-name says.
            seen = observation_from_info(info)
            if skipped is None:
                # A certificate checked against trusted CAs (--cafile, or
                # --tls required's platform store) vouches for a renewal: the
                # cache records it with a note instead of alarming for ever.
                verified = bool(info is not None and info.tls) and (
                    mode is TLSMode.REQUIRED or self.cafile is not None
                )
                alarms = self.tofu.observe(target.host, target.port, seen, verified=verified)
            else:
                # TLS was never tried, so this session proves nothing about
                # the server's TLS: still check (a STARTTLS that vanished is
                # news), but do not record it as a normal session.
                alarms = self.tofu.check(target.host, target.port, seen)
            for warning in alarms:
                self.err.write(f"{_PROG}: {warning}\n")
        return proto

    async def ask(
        self,
        host: str,
        port: int | None,
        envid: str,
        secret: str,
        referral: Referral | None = None,
        tls_name: str | None = None,
    ) -> _Asked:
        """Discover *host*'s servers and TRACK at the first that takes a session.

        *tls_name* (--tls-name, for the host on the command line) is the name
        STARTTLS asks for at each of its targets, instead of the target's own.
        """
        try:
            targets = await discover(
                self.resolver, host, port, self.default_port, self.rng, self._addresses
            )
        except DiscoveryError as e:
            return _Asked(Hop(host, error=str(e), referral=referral))
        attempts: list[str] = []
        # The first target that greeted negatively (-TEMP/MTQP/admin): the
        # next target may be up, so it is not the end; but when none takes a
        # session, that server's answer is the outcome: it was reached and
        # said no (exit 1), which "could not reach" would misstate.  The
        # first such, in SRV order, is the most preferred server's word.
        refused: _Asked | None = None
        for target in targets:
            server = _server_text(target.host, target.port)
            try:
                addresses = await self._addresses_of(target.host)
            except DiscoveryError as e:
                attempts.append(f"{server}: {e}")
                continue
            for address in addresses:
                where = server if address == target.host else f"{server} ({address})"
                try:
                    proto = await self._session(target, address, tls_name, referral is None)
                except Exception as e:
                    # Before the session is ready nothing was asked: on to the
                    # next address or SRV target (RFC 2782 usage rules).
                    answer = _greeting_answer(e)
                    if answer is not None and refused is None:
                        hop = Hop(host, answer, server=server, referral=referral, greeting=True)
                        refused = _Asked(hop)
                    attempts.append(f"{where}: {_why(e, self.timeout)}")
                    continue
                return await self._track(proto, host, server, envid, secret, referral)
        if refused is not None:
            return refused
        if len(attempts) == 1:
            why = f"could not reach {attempts[0]}"
        else:
            why = f"could not reach an MTQP server for {host}: " + "; ".join(attempts)
        tried = tuple(_server_text(t.host, t.port) for t in targets)
        return _Asked(Hop(host, error=why, referral=referral, tried=tried))

    async def _track(
        self,
        proto: MTQPClientProtocol,
        host: str,
        server: str,
        envid: str,
        secret: str,
        referral: Referral | None,
    ) -> _Asked:
        # Once TRACK is sent this server's answer (or silence) is the hop's
        # outcome: asking another target could take another two minutes.
        d = proto.track_response(envid, secret)
        d.addTimeout(self.timeout, self.clock)
        try:
            response = await d
        except Exception as e:
            if proto.transport is not None:
                proto.transport.abortConnection()
            await proto.closed
            why = f"{server}: {_why(e, self.timeout)}"
            return _Asked(Hop(host, error=why, server=server, referral=referral))
        await proto.quit()
        answer = answer_from_response(response)
        return _Asked(Hop(host, answer=answer, server=server, referral=referral), response)


# -- output ----------------------------------------------------------------


_NEGATIVE = {
    Outcome.NOINFO: "no information about this message",
    Outcome.TEMP: "temporarily unable to answer",
    Outcome.ERROR: "refused the query",
    Outcome.BAD: "did not understand the query",
}


#: A negative greeting refuses the session itself, before any TRACK.
_REFUSED_SESSION = {
    Outcome.TEMP: "the server is temporarily unavailable",
    Outcome.ERROR: "the server refused the session",
    Outcome.BAD: "the server refused the session",
}

_ADMIN = "admin"


def _negative_text(answer: Answer, greeting: bool = False) -> str:
    """One phrase for a negative answer; *greeting* when it was the server's greeting."""
    if GARBLED in answer.reasons:
        what = "sent an answer that could not be read"
    elif answer.outcome is Outcome.TEMP and _ADMIN in answer.reasons:
        # Greeting or TRACK, -TEMP/admin says the same: down on purpose.
        what = "the server is down for administration"
    elif greeting:
        what = _REFUSED_SESSION.get(answer.outcome, "the server refused the session")
    else:
        what = _NEGATIVE.get(answer.outcome, answer.outcome.value)
    reasons = f" ({'/'.join(answer.reasons)})" if answer.reasons else ""
    text = f": {answer.text}" if answer.text else ""
    return f"{what}{reasons}{text}"


def _who(block: RecipientStatus) -> str:
    who = block.final_recipient
    original = block.original_recipient
    if original and address_of(original) != address_of(who):
        who = f"{who} (originally {original})"
    return who


def _recipient_line(block: RecipientStatus) -> str:
    # The status may carry its own comment ("4.4.1 (No answer from host)"):
    # a comma, not brackets, keeps it from nesting as "delayed (4.4.1 (...))".
    line = f"{_who(block)}: {block.action.value}, {block.status}"
    if block.remote_mta:
        line += f", next hop {block.remote_mta}"
    if block.last_attempt_date:
        line += f", last attempt {block.last_attempt_date}"
    if block.will_retry_until:
        line += f", will retry until {block.will_retry_until}"
    if block.diagnostic_code:
        line += f", {block.diagnostic_code}"
    return line


def _part_lines(part: TrackingStatus) -> list[str]:
    head = f"Reporting MTA {part.reporting_mta}"
    if part.arrival_date:
        head += f", arrived {part.arrival_date}"
    if part.received_from_mta:
        head += f" from {part.received_from_mta}"
    if part.dsn_gateway:
        head += f", via gateway {part.dsn_gateway}"
    lines = [f"  {head}"]
    lines.extend(f"    {_recipient_line(block)}" for block in part.recipients)
    lines.extend(f"    {name}: {value}" for name, value in part.extensions)
    return lines


def render_text(envid: str, path: Sequence[Hop], after: Plan | None = None) -> str:
    """The readable report: a block per reporting MTA, a line per recipient.

    With one hop and no *after* plan (no --follow) it is one server's answer;
    otherwise every hop asked is numbered, with its outcome, then the
    referrals not followed and why.
    """
    following = after is not None
    lines = [f"Message {envid}"]
    for number, hop in enumerate(path, 1):
        if following:
            title = f"Hop {number}: {hop.host}"
            if hop.server:
                title += f" at {hop.server}"
            if hop.referral is not None:
                title += f", named by {hop.referral.referrer}"
        else:
            title = f"Server {hop.server or hop.host}"
        if hop.answer is None:
            lines.append(f"{title}: did not answer: {hop.error}")
        elif not hop.answer.ok:
            lines.append(f"{title}: {_negative_text(hop.answer, hop.greeting)}")
        else:
            lines.append(f"{title}:")
            for part in hop.answer.parts:
                lines.extend(_part_lines(part))
    if after is not None:
        lines.extend(_not_followed_lines(after))
    return "\n".join(lines) + "\n"


def _not_followed(after: Plan) -> list[tuple[Referral, str, str]]:
    """Every referral not followed: ``(referral, why for humans, why for JSON)``."""
    return [
        *((ref, "already on the path", "already on the path") for ref in after.repeats),
        # Not "on the path": the host was never asked.  Its part came inside
        # another server's answer (a gateway answering for inner hosts it
        # may show under a rewritten name).
        *(
            (ref, f"already reported in {answered_by}'s answer", "already reported")
            for ref, answered_by in after.reported
        ),
        *((ref, "--max-hops reached", "max-hops") for ref in after.beyond_limit),
    ]


def _not_followed_lines(after: Plan) -> list[str]:
    """One line per host not followed, however many recipients named it."""
    by_host: dict[str, list[tuple[Referral, str]]] = {}
    for ref, why, _ in _not_followed(after):
        by_host.setdefault(ref.host, []).append((ref, why))
    lines = []
    for host, refs in by_host.items():
        ref, why = refs[0]
        others = len({r.recipient for r, _ in refs} - {ref.recipient})
        more = f" and {others} more" if others else ""
        lines.append(
            f"Not followed: {host}, named by {ref.referrer} for {ref.recipient}{more}: {why}"
        )
    return lines


def _unreachable_json(hop: Hop) -> dict[str, Any]:
    """A hop with no answer, in the negative-answer shape: status ``unreachable``.

    ``server`` is the ``host:port`` when one server was meant (a session that
    timed out, or the only target), else null (discovery failed, or several
    SRV targets: ``text`` names each).
    """
    server = hop.server
    if server is None and len(hop.tried) == 1:
        server = hop.tried[0]
    return {"status": "unreachable", "server": server, "reason": [], "text": hop.error}


def _hop_json(hop: Hop) -> dict[str, Any]:
    if hop.answer is not None:
        data = answer_to_json(hop.answer, hop.server or hop.host)
    else:
        data = _unreachable_json(hop)
    data["host"] = hop.host
    data["referred_by"] = hop.referral.referrer if hop.referral else None
    return data


def render_json(path: Sequence[Hop], after: Plan | None = None) -> dict[str, Any]:
    """The JSON of interface.md section 4 for the first hop; with --follow, the path too.

    Following adds, without changing the single-answer shape: ``hops``
    holding every part of every answer in path order, ``path`` (one object
    per server asked: its own answer's JSON, or status ``unreachable``, with
    ``host`` and ``referred_by``), and ``not_followed``.

    A first hop with no answer gives the ``unreachable`` object (with
    ``host``): a script reading stdout gets one JSON object whatever
    happened once the command line was understood.
    """
    first = path[0]
    if first.answer is None:
        data = _unreachable_json(first)
        data["host"] = first.host
    else:
        data = answer_to_json(first.answer, first.server or first.host)
    if after is None:
        return data
    if first.answer is not None and first.answer.ok:
        data["hops"] = [
            hop_part
            for hop in path
            if hop.answer is not None and hop.answer.ok
            for hop_part in answer_to_json(hop.answer, "")["hops"]
        ]
    data["path"] = [_hop_json(hop) for hop in path]
    data["not_followed"] = [
        {"host": ref.host, "referred_by": ref.referrer, "recipient": ref.recipient, "why": why}
        for ref, _, why in _not_followed(after)
    ]
    return data


def _write_raw(out: IO[Any], lines: Sequence[bytes]) -> None:
    data = b"".join(line + b"\r\n" for line in lines)
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
        buffer.flush()
    else:
        out.write(data.decode("utf-8", "surrogateescape"))


def _exit_status(answer: Answer) -> int:
    return EXIT_OK if answer.ok else EXIT_NEGATIVE


# -- the command -------------------------------------------------------------


async def _run(
    reactor: Any,
    args: argparse.Namespace,
    out: IO[Any],
    err: IO[str],
    resolver: Any,
    rng: Any,
    clock: Any,
    default_port: int,
    tofu: Any,
) -> int:
    try:
        request = request_from_args(args)
        _check_options(args)
        _check_tls_name_needed(request, args)
        if resolver is None:
            try:
                resolver = make_resolver(args.dns_server, reactor)
            except ValueError as e:
                raise UsageError(str(e)) from None
        tls_mode = TLSMode(args.tls or "opportunistic")
        if args.cafile and tls_mode is not TLSMode.OFF:
            try:
                load_ca_bundle(args.cafile)
            except TLSConfigError as e:
                raise UsageError(str(e)) from None
    except UsageError as e:
        err.write(f"{_PROG}: {e}\n")
        return EXIT_USAGE

    asker = _Asker(
        reactor,
        clock if clock is not None else reactor,
        resolver,
        rng,
        tls_mode,
        args.cafile,
        float(args.timeout),
        default_port,
        tofu,
        err,
    )
    first = await asker.ask(
        request.host, request.port, request.envid, request.secret, tls_name=args.tls_name
    )
    hop = first.hop
    if hop.answer is None:
        err.write(f"{_PROG}: {hop.error}\n")
        if args.json:
            following = plan([hop], args.max_hops) if args.follow else None
            out.write(json.dumps(render_json([hop], following), indent=2) + "\n")
        return EXIT_USAGE
    if args.raw:
        if first.response is not None and first.response.lines is not None:
            _write_raw(out, first.response.lines)
            return EXIT_OK
        err.write(f"{_PROG}: {hop.server}: {_negative_text(hop.answer, hop.greeting)}\n")
        return _exit_status(hop.answer) or EXIT_NEGATIVE

    path = [hop]
    after: Plan | None = None
    if args.follow:
        while True:
            after = plan(path, args.max_hops)
            if not after.ask:
                break
            referral = after.ask[0]
            asked = await asker.ask(
                referral.host, None, request.envid, request.secret, referral=referral
            )
            path.append(asked.hop)

    if args.json:
        out.write(json.dumps(render_json(path, after), indent=2) + "\n")
    elif hop.answer.ok:
        out.write(render_text(request.envid, path, after))
    else:
        err.write(f"{_PROG}: {hop.server}: {_negative_text(hop.answer, hop.greeting)}\n")
    if tofu is not None:
        for problem in getattr(tofu, "problems", ()):
            err.write(f"{_PROG}: warning: {problem}\n")
    return _exit_status(hop.answer)


def run(
    reactor: Any,
    args: argparse.Namespace,
    out: IO[Any],
    err: IO[str],
    *,
    resolver: Any = None,
    rng: Any = None,
    clock: Any = None,
    default_port: int = MTQP_PORT,
    tofu: Any = None,
) -> defer.Deferred[int]:
    """Do ``mtqp track`` on a running *reactor*; fire with the exit status.

    *args* is the ``track`` sub-parser's namespace.  The keywords are for
    tests and embedding: *resolver* instead of the one ``--dns-server``
    names, *rng* for SRV weights, *clock* for the answer timeouts, the
    *default_port* used without SRV records, and a *tofu* cache
    (L{mtqpgw.tofu.TofuCache}; None remembers nothing).  Never fails: an
    unexpected error is one line on *err* and status 2.
    """

    def unexpected(failure: Failure) -> int:
        err.write(f"{_PROG}: internal error: {_first_line(failure.getErrorMessage())}\n")
        return EXIT_USAGE

    d = defer.Deferred.fromCoroutine(
        _run(reactor, args, out, err, resolver, rng, clock, default_port, tofu)
    )
    return d.addErrback(unexpected)


def main(args: argparse.Namespace) -> int:
    """The ``mtqp track`` entry point: run the reactor until the query is done."""
    tofu = TofuCache() if (args.tls or "opportunistic") != "off" else None
    status: list[int] = []

    def go(reactor: Any) -> defer.Deferred[None]:
        d = run(reactor, args, sys.stdout, sys.stderr, tofu=tofu)
        d.addCallback(status.append)
        return d

    try:
        task.react(go)
    except SystemExit:
        pass
    if not status:
        # The reactor stopped before the query finished: interrupted.
        sys.stderr.write(f"{_PROG}: interrupted\n")
        return 130
    return status[0]
