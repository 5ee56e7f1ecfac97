# -*- test-case-name: tests.test_pool -*-
"""A pool of reusable MTQP client sessions towards the gateway's inner hosts.

One fresh TCP connection per inner query leaves a socket in TIME_WAIT for a
minute; at a few hundred TRACKs a second that exhausts the ephemeral ports
(``bench/README.md``).  An MTQP session takes any number of TRACKs, so the
pool keeps sessions open between queries::

    pool = SessionPool(reactor)
    d = pool.track(inner_host, "12345-20010101@example.com", "YWJjZGVmZ2gK")
    # d fires with an mtqpgw.status.Answer; cancelling it aborts that session

Rules:

- Sessions are kept per *pool key*: the inner host's name, address, port and
  the TLS mode the session is set up with.  A query from a client inside TLS
  (``secure=True``) towards a host configured ``tls = "off"`` asks for
  STARTTLS when offered (``"opportunistic"``), so it never shares a session
  with plain queries; hosts configured ``"opportunistic"`` or ``"required"``
  get the same sessions either way, because those are set up the same way.
- One TRACK at a time per session (no pipelining across clients: one slow
  answer must not hold up another client's).  At most ``max_per_host``
  sessions per key, connecting ones included; further queries wait in a
  FIFO queue of at most ``max_waiting``, beyond which they fail at once.
- A session that fails in any way (garbage, over-long line, lost connection,
  cancelled) is aborted, never reused.  A negative answer (``-ERR``,
  ``-TEMP``) is an answer: the session goes back to the pool.
- Idle sessions are closed (QUIT) after ``idle_timeout`` seconds, well under
  the 600-second minimum autologout of RFC 3887 section 2.5, and retired
  after ``max_uses`` TRACKs or ``max_age`` seconds, below an inner server's
  default ``max_commands`` and ``max_connection_time``, so the gateway never
  runs into those limits in the middle of a query.
- ``service`` is an IService: stopping it closes every idle session, fails
  the waiting queries and closes busy sessions as their answers come in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtqpgw.status import Answer
from mtqpgw.tls import client_context, inner_tls_mode

__all__ = [
    "PoolClosed",
    "PoolFull",
    "PoolKey",
    "SessionPool",
    "effective_tls",
]

log = Logger()

DEFAULT_PORT = 1038
#: Caps on one inner answer.  An answer is parsed, merged, rewritten and
#: serialised on the reactor thread, so its size is a stall of every other
#: session of the gateway, not only memory (review M5): one answer of
#: 3 MB held them all for 1.1 s.  A real one is far smaller: a message to
#: 1,000 recipients (Postfix's default limit), every field present with a
#: Diagnostic-Code sentence, is a report of ~370 KiB and ~9,000 lines; one
#: with the usual fields ~200 KiB.  512 KiB keeps that with room and bounds
#: the work.  Lines are cheap next to octets (10,000 short lines parse in
#: ~20 ms), and 1,000 recipients need ~9,000 of them, so the line cap stays
#: at 10,000.  chain.py caps what one TRACK takes from all its inner hosts.
DEFAULT_MAX_LINES = 10_000
DEFAULT_MAX_OCTETS = 512 * 1024

#: A connector makes one ready session for (inner host, TLS mode).
Connector = Callable[[Any, str], "defer.Deferred[Any]"]


class PoolFull(Exception):
    """Too many queries are already waiting for a session to this inner host."""


class PoolClosed(Exception):
    """The pool was closed (the service stopped); no new query is started."""


@dataclass(frozen=True)
class PoolKey:
    """What decides how a session is set up; sessions are shared only within one key."""

    name: str
    host: str
    port: int
    tls: str

    def __str__(self) -> str:
        return f"{self.name} ({self.host}:{self.port}, tls {self.tls})"


def effective_tls(inner: Any, secure: bool = False) -> str:
    """The TLS mode towards ``inner`` for a query from a client whose session is (not) TLS.

    RFC 3887 section 11 leaves the judgement to the implementation; this
    gateway keeps the outside client's level at the next hop as far as the
    inner host allows: ``secure=True`` turns ``"off"`` into
    ``"opportunistic"``.  ``"required"`` is never weakened
    (``mtqpgw.tls.inner_tls_mode``).
    """
    return inner_tls_mode(getattr(inner, "tls", None) or "off", secure)


def key_for(inner: Any, secure: bool = False) -> PoolKey:
    name = str(inner.name).rstrip(".").lower()
    host = getattr(inner, "host", None) or name
    port = getattr(inner, "port", None) or DEFAULT_PORT
    return PoolKey(name, str(host), int(port), effective_tls(inner, secure))


def tls_context_for(inner: Any, mode: str) -> Any:
    """A client TLS context (connection creator) for STARTTLS towards ``inner`` in ``mode``.

    ``mode`` is the effective one (``effective_tls``); ``mtqpgw.tls.client_context``
    verifies the inner host's certificate against ``name`` (with ``cafile``,
    else the platform's trust) for ``"required"``, and for ``"opportunistic"``
    when a ``cafile`` is given; otherwise it encrypts only.  A bad ``cafile``
    raises, which fails the query for that host only.
    """
    cafile = getattr(inner, "cafile", None)
    return client_context(str(inner.name), str(cafile) if cafile else None, mode)


class _Slot:
    """One session in the pool, with its bookkeeping."""

    def __init__(self, session: Any, born: float) -> None:
        self.session = session
        self.born = born
        self.uses = 0
        # The idle timer and when the session last went idle.  The timer is
        # not moved at each use (a cancel and a callLater per inner query):
        # when it fires on a session used since, it sets itself again for
        # the rest of that session's idle time.
        self.timer: Any = None
        self.idle_since = born
        self.gone = False  # closed or aborted; no longer counted


class _Waiter:
    """A query queued for a session: first in the queue, then perhaps connecting."""

    def __init__(self) -> None:
        self.connecting: defer.Deferred[_Slot] | None = None
        self.deferred: defer.Deferred[_Slot] = defer.Deferred(self._cancel)
        self.on_cancel: Callable[[_Waiter], None] | None = None

    def _cancel(self, _: defer.Deferred[_Slot]) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.on_cancel is not None:
            self.on_cancel(self)


class _HostPool:
    """The sessions of one pool key."""

    def __init__(self, pool: SessionPool, key: PoolKey, inner: Any) -> None:
        self.pool = pool
        self.key = key
        self.inner = inner
        self.idle: list[_Slot] = []
        self.busy: set[_Slot] = set()
        self.open = 0  # connecting + busy + idle
        self.waiters: deque[_Waiter] = deque()

    # -- getting a session -------------------------------------------------

    def take_idle(self) -> _Slot | None:
        """An idle session that may be used, now busy; None when there is none."""
        while self.idle:
            # Most recently used first: the others idle out when load drops.
            slot = self.idle.pop()
            if self._usable(slot):
                self.busy.add(slot)
                return slot
            self._discard(slot, graceful=True)
        return None

    def acquire(self) -> defer.Deferred[_Slot]:
        slot = self.take_idle()
        if slot is not None:
            return defer.succeed(slot)
        if self.open < self.pool.max_per_host:
            return self._connect()
        if len(self.waiters) >= self.pool.max_waiting:
            return defer.fail(PoolFull(f"too many queries waiting for {self.key.name}"))
        waiter = _Waiter()
        waiter.on_cancel = self.waiters.remove
        self.waiters.append(waiter)
        return waiter.deferred

    def _connect(self) -> defer.Deferred[_Slot]:
        self.open += 1
        try:
            connecting = self.pool.connector(self.inner, self.key.tls)
        except Exception:
            connecting = defer.fail()

        def connected(session: Any) -> _Slot:
            slot = _Slot(session, self.pool.clock.seconds())
            self.busy.add(slot)
            closed = getattr(session, "closed", None)
            if isinstance(closed, defer.Deferred):
                closed.addBoth(self._session_closed, slot)
            return slot

        def failed(failure: Failure) -> Failure:
            self.open -= 1
            self._wake()
            return failure

        return connecting.addCallbacks(connected, failed)

    def _usable(self, slot: _Slot) -> bool:
        pool = self.pool
        return (
            not slot.gone
            and not pool.closing
            and bool(getattr(slot.session, "idle", True))
            and slot.uses < pool.max_uses
            and pool.clock.seconds() - slot.born < pool.max_age
        )

    def _wake(self) -> None:
        """Start a connection for the first waiter when there is room again."""
        while self.waiters and self.open < self.pool.max_per_host:
            waiter = self.waiters.popleft()
            waiter.connecting = self._connect()
            waiter.connecting.chainDeferred(waiter.deferred)

    # -- giving it back ----------------------------------------------------

    def release(self, slot: _Slot, reusable: bool) -> None:
        self.busy.discard(slot)
        slot.uses += 1
        if slot.gone:
            return
        if not reusable or not self._usable(slot):
            self._discard(slot, graceful=reusable)
            return
        if self.waiters:
            waiter = self.waiters.popleft()
            self.busy.add(slot)
            waiter.deferred.callback(slot)
            return
        slot.idle_since = self.pool.clock.seconds()
        if slot.timer is None:
            slot.timer = self.pool.clock.callLater(self.pool.idle_timeout, self._expire, slot)
        self.idle.append(slot)

    def _expire(self, slot: _Slot) -> None:
        slot.timer = None
        if slot.gone or slot not in self.idle:
            # Busy now: release() sets the timer again.
            return
        left = slot.idle_since + self.pool.idle_timeout - self.pool.clock.seconds()
        if left > 0:
            # Used since the timer was set: idle for less than idle_timeout.
            slot.timer = self.pool.clock.callLater(left, self._expire, slot)
            return
        self.idle.remove(slot)
        self._discard(slot, graceful=True)

    def _stop_timer(self, slot: _Slot) -> None:
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None

    def _discard(self, slot: _Slot, graceful: bool) -> None:
        """Stop counting ``slot`` and close its session: QUIT when healthy, else abort."""
        if slot.gone:
            return
        self._forget(slot)
        session = slot.session
        if graceful and getattr(session, "idle", False):
            session.quit()
        else:
            _abort(session)
        self._wake()

    def _forget(self, slot: _Slot) -> None:
        """Stop counting ``slot`` (not yet gone) and stop its idle timer."""
        slot.gone = True
        self.open -= 1
        self._stop_timer(slot)

    def _session_closed(self, _: object, slot: _Slot) -> None:
        # The inner host closed the session (autologout, restart): forget it.
        if slot in self.idle:
            self.idle.remove(slot)
        if not slot.gone:
            self._forget(slot)
            self._wake()

    # -- shutting down -----------------------------------------------------

    def close(self) -> list[Any]:
        """Fail the waiters and close the idle sessions; returns the sessions being closed."""
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            waiter.deferred.errback(PoolClosed("the gateway is shutting down"))
        idle, self.idle = self.idle, []
        for slot in idle:
            self._discard(slot, graceful=True)
        return [slot.session for slot in idle]


def _abort(session: Any) -> None:
    transport = getattr(session, "transport", None)
    if transport is not None:
        transport.abortConnection()


class _PoolService(service.Service):
    """Closes the pool's sessions when the daemon stops."""

    def __init__(self, pool: SessionPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.closing = False

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.pool.close()


class SessionPool:
    """Reusable MTQP sessions per inner host (see the module docstring for the rules)."""

    def __init__(
        self,
        reactor: Any = None,
        connector: Connector | None = None,
        *,
        max_per_host: int = 8,
        max_waiting: int = 1000,
        idle_timeout: float = 60.0,
        max_uses: int = 1000,
        max_age: float = 1200.0,
        connect_timeout: float = 30.0,
        close_timeout: float = 5.0,
        max_lines: int = DEFAULT_MAX_LINES,
        max_octets: int = DEFAULT_MAX_OCTETS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = reactor
        self.connector: Connector = connector or self._connect
        self.max_per_host = max_per_host
        self.max_waiting = max_waiting
        self.idle_timeout = idle_timeout
        self.max_uses = max_uses
        self.max_age = max_age
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_lines = max_lines
        self.max_octets = max_octets
        self.closing = False
        self._hosts: dict[PoolKey, _HostPool] = {}
        self.service: service.IService = _PoolService(self)

    def track(
        self, inner: Any, envid: str, secret: str, secure: bool = False
    ) -> defer.Deferred[Answer]:
        """TRACK ``envid`` at ``inner`` over a pooled session; fires with the L{Answer}.

        Fails with the client's error for anything that is not an answer.
        Cancelling the Deferred, whether the query is waiting for a session,
        connecting or waiting for its answer, aborts that session.
        """
        if self.closing:
            return defer.fail(PoolClosed("the gateway is shutting down"))
        host = self._host_pool(inner, secure)

        def ask(slot: _Slot) -> defer.Deferred[Answer]:
            try:
                asked = slot.session.track(envid, secret)
            except Exception:
                asked = defer.fail()

            def done(result: Answer | Failure) -> Answer | Failure:
                host.release(slot, reusable=not isinstance(result, Failure))
                return result

            return asked.addBoth(done)

        # Under load a session is nearly always idle: no Deferred to wait for it.
        slot = host.take_idle()
        if slot is not None:
            return ask(slot)
        return host.acquire().addCallback(ask)

    def _host_pool(self, inner: Any, secure: bool) -> _HostPool:
        key = key_for(inner, secure)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _HostPool(self, key, inner)
        return host

    def _connect(self, inner: Any, mode: str) -> defer.Deferred[Any]:
        """The default connector: TCP (and STARTTLS as ``mode`` says) with the client's caps."""
        from mtqpgw.client import ClientError, connect

        key = key_for(inner)
        context = None
        if mode != "off":
            context = tls_context_for(inner, mode)
            if context is None:
                if mode == "required":
                    return defer.fail(
                        ClientError(f"no TLS client context for {key.name}, and TLS is required")
                    )
                # Opportunistic without a context is plain: better an answer
                # in the clear than none, as "opportunistic" promises.
                mode = "off"
        endpoint = endpoints.HostnameEndpoint(
            self.reactor, key.host, key.port, timeout=self.connect_timeout
        )
        return connect(
            self.reactor,
            endpoint,
            mode,
            key.name if mode != "off" else None,
            context,
            self.max_lines,
            self.max_octets,
        )

    # -- inspection (tests, metrics) ------------------------------------------

    def stats(self, inner: Any, secure: bool = False) -> dict[str, int]:
        """``open``, ``idle``, ``busy`` and ``waiting`` counts for one pool key."""
        host = self._hosts.get(key_for(inner, secure))
        if host is None:
            return {"open": 0, "idle": 0, "busy": 0, "waiting": 0}
        return {
            "open": host.open,
            "idle": len(host.idle),
            "busy": len(host.busy),
            "waiting": len(host.waiters),
        }

    # -- shutting down -------------------------------------------------------

    def close(self) -> defer.Deferred[None]:
        """Close idle sessions, fail waiters, stop pooling; fires when the idle ones closed.

        Sessions that do not close within ``close_timeout`` seconds are aborted.
        """
        self.closing = True
        sessions: list[Any] = []
        for host in self._hosts.values():
            sessions.extend(host.close())
        sessions = [
            session
            for session in sessions
            if isinstance(getattr(session, "closed", None), defer.Deferred)
            and not session.closed.called
        ]
        waits = [_when_fired(session.closed) for session in sessions]
        if not waits:
            return defer.succeed(None)

        done: defer.Deferred[None] = defer.Deferred()

        def too_slow() -> None:
            for session in sessions:
                if not session.closed.called:
                    _abort(session)
            if not done.called:
                done.callback(None)

        timer = self.clock.callLater(self.close_timeout, too_slow)

        def all_closed(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        defer.DeferredList(waits, consumeErrors=True).addCallback(all_closed)
        return done


def _when_fired(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A new Deferred that fires (with None) when ``d`` does, leaving ``d`` as it was."""
    observer: defer.Deferred[None] = defer.Deferred()

    def fired(result: Any) -> Any:
        observer.callback(None)
        return result

    d.addBoth(fired)
    return observer
