# -*- test-case-name: tests.test_tap -*-
"""``twistd mtqpgw``: options, configuration and the service tree of the daemon."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from mtqpgw.config import Config, ConfigError, default_config, load_config
from mtqpgw.server import MTQPServerFactory

__all__ = ["AdminDownFile", "Options", "build_service", "makeService", "preflight"]

log = Logger()


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run an MTQP (RFC 3887) server; with a [chain] section, the chaining "
        "firewall gateway. Without --config it runs on embedded defaults: "
        "listen tcp:1038, store ./mtqpgw.sqlite3."
    )
    optParameters = [["config", "c", None, "The TOML configuration file."]]

    def opt_version(self) -> None:
        """Display mtqpgw's version (and Twisted's) and exit."""
        from mtqpgw import __version__
        from twisted import __version__ as twisted_version

        print(f"mtqpgw {__version__} (Twisted {twisted_version})")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            if self["config"]:
                self.config = load_config(self["config"], default_hostname=socket.getfqdn())
            else:
                self.config = default_config(default_hostname=socket.getfqdn())
        except ConfigError as e:
            where = self["config"] or "built-in defaults"
            # One readable line and a non-zero exit, not twistd's usage dump.
            raise SystemExit(f"mtqpgw: {where}: {e}") from None


class AdminDownFile(service.Service):
    """Administrative-down state while ``[server] admin_down_file`` exists.

    Down: new sessions are greeted ``-TEMP/MTQP/admin`` and TRACK in open
    sessions answers ``-TEMP/admin`` (RFC 3887 sections 3 and 4).  A file,
    not a signal: twistd already gives SIGUSR1 to log rotation, and a file
    survives restarts and is visible to every operator.
    """

    interval = 2.0

    def __init__(self, factory: MTQPServerFactory, path: str, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.factory = factory
        self.path = path
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        log.info("Maintenance switch: administratively down while {path} exists", path=self.path)
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    def check(self) -> None:
        down = os.path.exists(self.path)
        if down != self.factory.admin_down:
            self.factory.admin_down = down
            log.warn(
                "Administrative state: {state} ({path} {verb})",
                state="down" if down else "up",
                path=self.path,
                verb="exists" if down else "is gone",
            )


def preflight(config: Config, create_store: bool = True) -> Any:
    """What must hold before the daemon starts; the ServerTLS, or None without certificates.

    Every certificate and key loads, and the store can be opened (created or
    migrated when ``create_store``; ``mtqp check-config`` only looks, opening
    an existing store read-only).  Raises
    ConfigError (TLSConfigError is one) or StoreError, each one line.  The
    daemon and ``mtqp check-config`` both run it, so a config that checks
    ``ok`` starts.
    """
    from mtqpgw.store import SQLiteStore, inspect_store

    tls = None
    if config.tls.certificates:
        from mtqpgw.tls import ServerTLS

        tls = ServerTLS.from_config(config.tls)
    if create_store:
        SQLiteStore(config.store.path).check()
    else:
        inspect_store(config.store.path)
    return tls


def build_service(config: Config, reactor: Any = None) -> tuple[service.MultiService, Any]:
    """The daemon's service tree and its protocol factory, from a validated config."""
    from mtqpgw.store import LocalTracker, SQLiteStore, StoreService

    if reactor is None:
        from twisted.internet import reactor
    tls = preflight(config)
    top = service.MultiService()
    store = SQLiteStore(config.store.path, reactor=reactor)
    StoreService(store).setServiceParent(top)
    tracker: Any = LocalTracker(store, config.server.hostname, config.server.unknown_message)
    if config.chain is not None and config.chain.inner:
        from mtqpgw.chain import ChainingTracker, listen_addresses
        from mtqpgw.rewrite import Rewriter

        tracker = ChainingTracker(
            tracker,
            config.chain,
            Rewriter(config.rewrite),
            config.server.hostname,
            reactor=reactor,
            # An inner part reporting as one of these is refused as well as
            # one reporting as the gateway's name.
            addresses=listen_addresses(config.server.listen),
        )
        tracker.service.setServiceParent(top)
    elif config.rewrite:
        from mtqpgw.rewrite import Rewriter

        tracker = _RewritingTracker(tracker, Rewriter(config.rewrite))
    factory = MTQPServerFactory(tracker, config.server, tls, reactor)
    for description in config.server.listen:
        _Listener(description, factory, reactor).setServiceParent(top)
    if config.server.admin_down_file is not None:
        AdminDownFile(factory, config.server.admin_down_file, reactor).setServiceParent(top)
    return top, factory


class _Listener(StreamServerEndpointService):
    """One ``listen`` endpoint; a port that cannot be had stops start-up in one line."""

    def __init__(self, description: str, factory: MTQPServerFactory, reactor: Any) -> None:
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self.description = description
        # As strports.service does: fail at start-up, not later in a log.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise SystemExit(
                f"mtqpgw: server.listen: cannot listen on {self.description}: {why}"
            ) from None


class _RewritingTracker:
    """A plain server that still hides names: rewrite rules without chaining."""

    def __init__(self, inner: Any, rewriter: Any) -> None:
        self.inner, self.rewriter = inner, rewriter

    def track(self, envid: str, secret: str, secure: bool = False) -> Any:
        return self.inner.track(envid, secret, secure=secure).addCallback(self.rewriter.answer)


def makeService(options: Options) -> service.IService:
    from mtqpgw.store import StoreError

    try:
        top, _ = build_service(options.config)
    except (StoreError, ConfigError) as e:
        raise SystemExit(f"mtqpgw: {e}") from None
    return top
