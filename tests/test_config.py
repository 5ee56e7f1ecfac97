"""Tests for mtqpgw.config: the TOML configuration and its validation."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import tomllib
from datetime import UTC, date, datetime, time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mtqpgw.config import (
    ChainConfig,
    Config,
    ConfigError,
    InnerHost,
    RewriteRule,
    ServerConfig,
    StoreConfig,
    TLSConfig,
    check_files,
    compile_match,
    default_config,
    load_config,
    parse_config,
)

BASE = "/srv/mtqpgw"
EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "mtqpgw.toml"
)
# A commented-out setting in the example: "# key = ..." or "# [table]".
_DISABLED = re.compile(r"# (?=\[|[a-z_]+ = )")


def parse(text: str, **kwargs: Any) -> Config:
    return parse_config(tomllib.loads(text), BASE, **kwargs)


class DefaultTests(SynchronousTestCase):
    def test_every_default(self) -> None:
        config = parse("")
        s = config.server
        self.assertEqual(s.listen, ("tcp:1038",))
        self.assertEqual(s.hostname, "localhost")
        self.assertEqual(s.unknown_message, "noinfo")
        self.assertEqual(s.idle_timeout, 600)
        self.assertEqual(s.max_connections, 1000)
        self.assertEqual(s.max_connections_per_address, 20)
        self.assertEqual(s.max_commands, 10000)
        self.assertEqual(s.max_bad_commands, 20)
        self.assertEqual(s.max_connection_time, 3600)
        self.assertEqual(s.max_failed_tracks, 10)
        self.assertEqual(s.failed_track_window, 600)
        self.assertEqual(s.throttle_exempt, ())
        self.assertEqual(config.store.path, "/srv/mtqpgw/mtqpgw.sqlite3")
        self.assertEqual(config.tls, TLSConfig(certificates=(), required=False))
        self.assertIsNone(config.chain)
        self.assertEqual(config.rewrite, ())
        self.assertIsNone(config.source)

    def test_dataclass_defaults_match(self) -> None:
        # The dataclasses' own defaults are the documented ones too.
        self.assertEqual(parse("").server, ServerConfig())
        self.assertEqual(ChainConfig(), ChainConfig(110, "hops", True, 4, ()))
        self.assertEqual(InnerHost("a", "a"), InnerHost("a", "a", 1038, "opportunistic", None))
        self.assertEqual(StoreConfig().path, "mtqpgw.sqlite3")

    def test_default_config(self) -> None:
        config = default_config(base_dir="/var/lib/x")
        self.assertEqual(config, parse_config({}, "/var/lib/x"))
        self.assertEqual(config.store.path, "/var/lib/x/mtqpgw.sqlite3")
        self.assertEqual(default_config().store.path, os.path.join(os.getcwd(), "mtqpgw.sqlite3"))
        self.assertEqual(default_config("Mail.Example.COM").server.hostname, "mail.example.com")

    def test_default_hostname(self) -> None:
        self.assertEqual(parse("", default_hostname="gw.example").server.hostname, "gw.example")
        config = parse('[server]\nhostname = "mtqp.example.com"', default_hostname="gw.example")
        self.assertEqual(config.server.hostname, "mtqp.example.com")
        with self.assertRaises(ConfigError) as caught:
            default_config("not a name")
        self.assertTrue(str(caught.exception).startswith("server.hostname: the default host name"))
        self.assertIn("set server.hostname", str(caught.exception))

    def test_chain_defaults(self) -> None:
        chain = parse('[[chain.inner]]\nname = "Smtp.Corp.Example.com"').chain
        self.assertEqual(
            chain,
            ChainConfig(
                deadline=110,
                report="hops",
                fanout=True,
                max_depth=4,
                inner=(InnerHost("smtp.corp.example.com", "smtp.corp.example.com"),),
            ),
        )

    def test_empty_chain_is_no_chain(self) -> None:
        self.assertIsNone(parse("[chain]").chain)

    def test_rewrite_defaults(self) -> None:
        (rule,) = parse('[[rewrite]]\nmatch = "*.corp"\nreplace = "example.com"').rewrite
        self.assertEqual(rule, RewriteRule("*.corp", "example.com", False))


class ValueTests(SynchronousTestCase):
    def test_full_file(self) -> None:
        config = parse(
            """
            [server]
            listen = ["tcp:1038", "tcp6:1039:interface=\\\\:\\\\:", "1040"]
            hostname = "MTQP.example.com"
            unknown_message = "opaque"
            idle_timeout = 900.5
            max_connections = 5
            max_connections_per_address = 2
            max_commands = 3
            max_bad_commands = 4
            max_connection_time = 60
            max_failed_tracks = 6
            failed_track_window = 7
            throttle_exempt = ["10.0.0.1", "2001:db8::/32"]
            [store]
            path = ":memory:"
            [tls]
            certificates = [{cert = "c.pem", key = "/k.pem"}, {cert = "c2.pem", key = "k2.pem"}]
            required = ["Example.COM", "example.com", "b.example."]
            [chain]
            deadline = 119.5
            report = "combined"
            fanout = false
            max_depth = 1
            [[chain.inner]]
            name = "a.corp"
            host = "10.0.0.5"
            port = 1
            tls = "required"
            cafile = "ca/inner.pem"
            [[chain.inner]]
            name = "b.corp"
            host = "::1"
            port = 65535
            tls = "off"
            [[rewrite]]
            match = "re:.*\\\\.corp"
            replace = "example.com"
            addresses = true
            """
        )
        s = config.server
        self.assertEqual(s.listen, ("tcp:1038", "tcp6:1039:interface=\\:\\:", "tcp:1040"))
        self.assertEqual(s.hostname, "mtqp.example.com")
        self.assertEqual(s.unknown_message, "opaque")
        self.assertEqual(s.idle_timeout, 900.5)
        self.assertEqual(
            (s.max_connections, s.max_connections_per_address, s.max_commands),
            (5, 2, 3),
        )
        self.assertEqual((s.max_bad_commands, s.max_failed_tracks), (4, 6))
        self.assertEqual((s.max_connection_time, s.failed_track_window), (60, 7))
        self.assertEqual(
            s.throttle_exempt,
            (ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("2001:db8::/32")),
        )
        self.assertEqual(config.store.path, ":memory:")
        self.assertEqual(
            config.tls.certificates,
            (("/srv/mtqpgw/c.pem", "/k.pem"), ("/srv/mtqpgw/c2.pem", "/srv/mtqpgw/k2.pem")),
        )
        self.assertEqual(config.tls.required, ("example.com", "b.example"))
        chain = config.chain
        assert chain is not None
        self.assertEqual(
            (chain.deadline, chain.report, chain.fanout, chain.max_depth),
            (119.5, "combined", False, 1),
        )
        self.assertEqual(
            chain.inner,
            (
                InnerHost("a.corp", "10.0.0.5", 1, "required", "/srv/mtqpgw/ca/inner.pem"),
                InnerHost("b.corp", "::1", 65535, "off", None),
            ),
        )
        self.assertIs(chain.find("A.CORP."), chain.inner[0])
        self.assertIsNone(chain.find("c.corp"))
        self.assertEqual(config.rewrite, (RewriteRule("re:.*\\.corp", "example.com", True),))

    def test_listen_string(self) -> None:
        self.assertEqual(parse('[server]\nlisten = "tcp:0"').server.listen, ("tcp:0",))

    def test_listen_forms(self) -> None:
        for description in [
            "tcp:1038:interface=127.0.0.1:backlog=5",
            "tcp:port=1038",
            "tcp6:1038",
            "unix:/run/mtqp.sock:mode=600",
            "unix:@abstract",
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:name=mtqp",
        ]:
            with self.subTest(description=description):
                config = parse_config({"server": {"listen": description}}, BASE)
                self.assertEqual(config.server.listen, (description,))

    def test_listen_relative_paths(self) -> None:
        # Paths inside endpoint strings are paths in the file, resolved the same way.
        config = parse_config({"server": {"listen": ["unix:mtqp.sock:mode=600"]}}, BASE)
        self.assertEqual(config.server.listen, ("unix:address=/srv/mtqpgw/mtqp.sock:mode=600",))

    def test_admin_down_file(self) -> None:
        self.assertIsNone(parse_config({}, BASE).server.admin_down_file)
        config = parse_config({"server": {"admin_down_file": "run/down"}}, BASE)
        self.assertEqual(config.server.admin_down_file, "/srv/mtqpgw/run/down")

    def test_tls_required_forms(self) -> None:
        cert = '[tls]\ncertificates = [{cert = "c", key = "k"}]\n'
        self.assertIs(parse(cert + "required = true").tls.required, True)
        self.assertIs(parse(cert + "required = false").tls.required, False)
        self.assertIs(parse(cert + "required = []").tls.required, False)
        self.assertIs(parse("[tls]\nrequired = false").tls.required, False)
        self.assertIs(parse("[tls]\nrequired = []").tls.required, False)

    def test_inner_cafile_with_opportunistic(self) -> None:
        # interface.md's example pairs them: the cafile verifies when TLS is used.
        chain = parse(
            '[[chain.inner]]\nname = "a"\ntls = "opportunistic"\ncafile = "/ca.pem"'
        ).chain
        assert chain is not None
        self.assertEqual(chain.inner[0].cafile, "/ca.pem")

    def test_integers_for_seconds(self) -> None:
        config = parse(
            "[server]\nidle_timeout = 600\n[chain]\ndeadline = 5\n[[chain.inner]]\nname = 'a'"
        )
        self.assertEqual(config.server.idle_timeout, 600.0)
        self.assertEqual(config.chain.deadline if config.chain else None, 5.0)

    def test_frozen(self) -> None:
        config = parse("")
        self.assertRaises(AttributeError, setattr, config, "source", "x")
        self.assertRaises(AttributeError, setattr, config.server, "hostname", "x")


class PathTests(SynchronousTestCase):
    def test_relative_paths_resolved_against_base(self) -> None:
        config = parse(
            """
            [store]
            path = "../data/./store.db"
            [tls]
            certificates = [{cert = "certs/c.pem", key = "/abs/k.pem"}]
            [[chain.inner]]
            name = "a.corp.example.com"
            tls = "required"
            cafile = "ca.pem"
            """
        )
        self.assertEqual(config.store.path, "/srv/data/store.db")
        self.assertEqual(config.tls.certificates, (("/srv/mtqpgw/certs/c.pem", "/abs/k.pem"),))
        assert config.chain is not None
        self.assertEqual(config.chain.inner[0].cafile, "/srv/mtqpgw/ca.pem")

    def test_memory_store_kept(self) -> None:
        self.assertEqual(parse('[store]\npath = ":memory:"').store.path, ":memory:")

    def test_relative_base_dir_made_absolute(self) -> None:
        config = parse_config({}, "conf")
        self.assertEqual(config.store.path, os.path.join(os.getcwd(), "conf", "mtqpgw.sqlite3"))


# (TOML text, the exact one-line message)
ERRORS = [
    # top level
    ("[sever]", 'sever: unknown key (did you mean "server"?)'),
    ("listen = 1", "listen: unknown key"),
    ('"a b" = 1', '"a b": unknown key'),
    ('"a\\nb" = 1', '"a\\nb": unknown key'),
    ("server = 3", "server: must be a table, got 3"),
    ("store = []", "store: must be a table, got an array"),
    ('tls = "x"', 'tls: must be a table, got "x"'),
    ("chain = true", "chain: must be a table, got true"),
    ("[rewrite]", "rewrite: must be an array of tables ([[rewrite]]), got a table"),
    ("rewrite = [1]", "rewrite[0]: must be a table, got 1"),
    # [server]
    (
        "[server]\nidle_timout = 600",
        'server.idle_timout: unknown key (did you mean "idle_timeout"?)',
    ),
    (
        "[server]\nlisten = 1038",
        "server.listen: must be an endpoint string or an array of them, got 1038",
    ),
    ("[server]\nlisten = []", "server.listen: must name at least one endpoint"),
    ('[server]\nlisten = ["tcp:1038", 5]', "server.listen[1]: must be a string, got 5"),
    (
        '[server]\nlisten = "TCP:1038"',
        'server.listen: "TCP:1038" is not a Twisted server endpoint: it must start with an '
        "endpoint type (tcp, tcp6, unix, systemd) or be a port number",
    ),
    (
        '[server]\nlisten = ""',
        'server.listen: "" is not a Twisted server endpoint: it must start with an '
        "endpoint type (tcp, tcp6, unix, systemd) or be a port number",
    ),
    (
        '[server]\nlisten = "port=1038"',
        'server.listen: "port=1038" is not a Twisted server endpoint: it must start with an '
        "endpoint type (tcp, tcp6, unix, systemd) or be a port number",
    ),
    (
        '[server]\nlisten = "tcp:abc"',
        'server.listen: "tcp:abc" is not a Twisted server endpoint: the port must be a number '
        'from 0 to 65535, got "abc"',
    ),
    (
        '[server]\nlisten = "tcp:65536"',
        'server.listen: "tcp:65536" is not a Twisted server endpoint: the port must be a number '
        'from 0 to 65535, got "65536"',
    ),
    (
        '[server]\nlisten = "99999"',
        'server.listen: "99999" is not a Twisted server endpoint: the port must be a number '
        'from 0 to 65535, got "99999"',
    ),
    (
        '[server]\nlisten = "tcp"',
        'server.listen: "tcp" is not a Twisted server endpoint: tcp endpoints need a port '
        "parameter",
    ),
    (
        '[server]\nlisten = "tcp:1038:bogus=1"',
        'server.listen: "tcp:1038:bogus=1" is not a Twisted server endpoint: tcp endpoints have '
        'no parameter "bogus"',
    ),
    (
        '[server]\nlisten = "tcp:1038:port=1039"',
        'server.listen: "tcp:1038:port=1039" is not a Twisted server endpoint: the port '
        "parameter is given twice",
    ),
    (
        '[server]\nlisten = "tcp:1:a:5:x"',
        'server.listen: "tcp:1:a:5:x" is not a Twisted server endpoint: too many parameters for '
        "a tcp endpoint",
    ),
    (
        '[server]\nlisten = "tcp:1038:backlog=lots"',
        'server.listen: "tcp:1038:backlog=lots" is not a Twisted server endpoint: the backlog '
        'must be a number, got "lots"',
    ),
    (
        # Implicit TLS is not MTQP (review m1): STARTTLS is how MTQP gets TLS.
        '[server]\nlisten = "ssl:1038:privateKey=k.pem"',
        "server.listen: ssl: endpoints are not MTQP; listen on tcp: and configure [tls] "
        "certificates for STARTTLS",
    ),
    (
        '[server]\nlisten = "unix:"',
        'server.listen: "unix:" is not a Twisted server endpoint: unix endpoints need a '
        "address parameter",
    ),
    (
        '[server]\nlisten = "systemd:domain=INET"',
        'server.listen: "systemd:domain=INET" is not a Twisted server endpoint: a systemd '
        "endpoint needs an index or a name",
    ),
    (
        '[server]\nlisten = "systemd:domain=INET:index=first"',
        'server.listen: "systemd:domain=INET:index=first" is not a Twisted server endpoint: the '
        'index must be a number, got "first"',
    ),
    (
        "[server]\nlisten = 'tcp:1038\\'",
        'server.listen: "tcp:1038\\\\" is not a Twisted server endpoint: it ends with a lone '
        "backslash",
    ),
    ("[server]\nhostname = 5", "server.hostname: must be a string, got 5"),
    (
        '[server]\nhostname = "10.0.0.1"',
        'server.hostname: must be a host name, not an IP address, got "10.0.0.1"',
    ),
    (
        '[server]\nhostname = "bad host"',
        'server.hostname: "bad host" is not a valid host name (dot-separated labels of ASCII '
        'letters, digits, "-" and "_", at most 63 characters each)',
    ),
    ('[server]\nhostname = ""', "server.hostname: the host is empty"),
    (
        '[server]\nunknown_message = "silent"',
        'server.unknown_message: must be one of "noinfo", "opaque", got "silent"',
    ),
    (
        '[server]\nunknown_message = "NOINFO"',
        'server.unknown_message: must be one of "noinfo", "opaque", got "NOINFO"',
    ),
    (
        "[server]\nidle_timeout = 60",
        "server.idle_timeout: must be at least 600 seconds (RFC 3887 section 2.5), got 60",
    ),
    (
        "[server]\nidle_timeout = 599.9",
        "server.idle_timeout: must be at least 600 seconds (RFC 3887 section 2.5), got 599.9",
    ),
    (
        "[server]\nidle_timeout = -1",
        "server.idle_timeout: must be at least 600 seconds (RFC 3887 section 2.5), got -1",
    ),
    (
        "[server]\nidle_timeout = true",
        "server.idle_timeout: must be a number of seconds, got true",
    ),
    (
        '[server]\nidle_timeout = "600"',
        'server.idle_timeout: must be a number of seconds, got "600"',
    ),
    (
        "[server]\nidle_timeout = inf",
        "server.idle_timeout: must be a finite number of seconds, got inf",
    ),
    (
        "[server]\nidle_timeout = nan",
        "server.idle_timeout: must be a finite number of seconds, got nan",
    ),
    ("[server]\nmax_connections = 0", "server.max_connections: must be at least 1, got 0"),
    ("[server]\nmax_connections = -5", "server.max_connections: must be at least 1, got -5"),
    ("[server]\nmax_connections = 1.5", "server.max_connections: must be an integer, got 1.5"),
    ("[server]\nmax_connections = 10.0", "server.max_connections: must be an integer, got 10.0"),
    ('[server]\nmax_connections = "10"', 'server.max_connections: must be an integer, got "10"'),
    ("[server]\nmax_connections = true", "server.max_connections: must be an integer, got true"),
    (
        "[server]\nmax_connections_per_address = 0",
        "server.max_connections_per_address: must be at least 1, got 0",
    ),
    ("[server]\nmax_commands = 0", "server.max_commands: must be at least 1, got 0"),
    ("[server]\nmax_bad_commands = 0", "server.max_bad_commands: must be at least 1, got 0"),
    ("[server]\nmax_failed_tracks = 0", "server.max_failed_tracks: must be at least 1, got 0"),
    (
        "[server]\nmax_connection_time = 0",
        "server.max_connection_time: must be more than 0 seconds, got 0",
    ),
    (
        "[server]\nfailed_track_window = -1.5",
        "server.failed_track_window: must be more than 0 seconds, got -1.5",
    ),
    (
        "[server]\nfailed_track_window = 1979-05-27",
        "server.failed_track_window: must be a number of seconds, got a date/time",
    ),
    (
        '[server]\nthrottle_exempt = "10.0.0.1"',
        'server.throttle_exempt: must be an array, got "10.0.0.1"',
    ),
    (
        "[server]\nthrottle_exempt = [10]",
        "server.throttle_exempt[0]: must be an IP address or network string, got 10",
    ),
    (
        '[server]\nthrottle_exempt = ["10.0.0.1", "nonsense"]',
        'server.throttle_exempt[1]: "nonsense" is not an IP address or network',
    ),
    (
        '[server]\nthrottle_exempt = ["10.0.0.5/24"]',
        'server.throttle_exempt[0]: "10.0.0.5/24" has host bits set (did you mean "10.0.0.0/24"?)',
    ),
    # [store]
    ('[store]\nfile = "x"', "store.file: unknown key"),
    ('[store]\npath = ""', "store.path: must not be empty"),
    ("[store]\npath = 1", "store.path: must be a string, got 1"),
    ('[store]\npath = "a\\u0000b"', "store.path: must not contain a NUL character"),
    # [tls]
    ("[tls]\nrequire = true", 'tls.require: unknown key (did you mean "required"?)'),
    ('[tls]\ncertificates = "c.pem"', 'tls.certificates: must be an array, got "c.pem"'),
    ('[tls]\ncertificates = ["c.pem"]', 'tls.certificates[0]: must be a table, got "c.pem"'),
    (
        '[tls]\ncertificates = [{cert = "c.pem"}]',
        "tls.certificates[0].key: missing (each certificate needs both cert and key)",
    ),
    (
        '[tls]\ncertificates = [{cert = "c", key = "k"}, {key = "k.pem"}]',
        "tls.certificates[1].cert: missing (each certificate needs both cert and key)",
    ),
    (
        '[tls]\ncertificates = [{cert = "c.pem", key = "k.pem", chain = "x"}]',
        "tls.certificates[0].chain: unknown key",
    ),
    (
        '[tls]\ncertificates = [{cert = 1, key = "k"}]',
        "tls.certificates[0].cert: must be a string, got 1",
    ),
    (
        '[tls]\ncertificates = [{cert = "", key = "k"}]',
        "tls.certificates[0].cert: must not be empty",
    ),
    (
        "[tls]\nrequired = true",
        "tls.required: TLS cannot be required without a certificate in tls.certificates",
    ),
    (
        '[tls]\nrequired = ["example.com"]',
        "tls.required: TLS cannot be required without a certificate in tls.certificates",
    ),
    (
        '[tls]\nrequired = "yes"',
        'tls.required: must be true, false or an array of domains, got "yes"',
    ),
    ("[tls]\nrequired = 1", "tls.required: must be true, false or an array of domains, got 1"),
    ("[tls]\nrequired = [true]", "tls.required[0]: must be a domain string, got true"),
    (
        '[tls]\nrequired = ["10.0.0.1"]',
        'tls.required[0]: must be a host name, not an IP address, got "10.0.0.1"',
    ),
    # [chain]
    ("[chain]\ndeadlines = 5", 'chain.deadlines: unknown key (did you mean "deadline"?)'),
    (
        "[chain]\nfanout = true",
        "chain.inner: [chain] is set but names no inner host: add a [[chain.inner]] or remove "
        "[chain]",
    ),
    (
        "[chain]\ninner = []",
        "chain.inner: [chain] is set but names no inner host: add a [[chain.inner]] or remove "
        "[chain]",
    ),
    ("[chain]\ninner = {name = 'a'}", "chain.inner: must be an array, got a table"),
    (
        "[chain]\ndeadline = 120",
        "chain.deadline: must be more than 0 and less than 120 seconds "
        "(RFC 3887 section 2.4), got 120",
    ),
    (
        "[chain]\ndeadline = 0",
        "chain.deadline: must be more than 0 and less than 120 seconds "
        "(RFC 3887 section 2.4), got 0",
    ),
    (
        "[chain]\ndeadline = -0.5",
        "chain.deadline: must be more than 0 and less than 120 seconds "
        "(RFC 3887 section 2.4), got -0.5",
    ),
    ("[chain]\ndeadline = false", "chain.deadline: must be a number of seconds, got false"),
    ('[chain]\nreport = "flat"', 'chain.report: must be one of "hops", "combined", got "flat"'),
    ('[chain]\nfanout = "yes"', 'chain.fanout: must be true or false, got "yes"'),
    ("[chain]\nfanout = 1", "chain.fanout: must be true or false, got 1"),
    ("[chain]\nmax_depth = 0", "chain.max_depth: must be at least 1, got 0"),
    ("[chain]\nmax_depth = true", "chain.max_depth: must be an integer, got true"),
    # [[chain.inner]]
    (
        "[[chain.inner]]\nname = 'a'\nhots = 'b'",
        'chain.inner[0].hots: unknown key (did you mean "host"?)',
    ),
    (
        "[[chain.inner]]\nhost = 'a'",
        "chain.inner[0].name: missing (every [[chain.inner]] needs a name)",
    ),
    ("[[chain.inner]]\nname = 1", "chain.inner[0].name: must be a string, got 1"),
    (
        "[[chain.inner]]\nname = 'a_b!'",
        'chain.inner[0].name: "a_b!" is not a valid host name (dot-separated labels of ASCII '
        'letters, digits, "-" and "_", at most 63 characters each)',
    ),
    (
        "[[chain.inner]]\nname = 'a'\nhost = '10.0.0.256'",
        'chain.inner[0].host: "10.0.0.256" is not a valid IPv4 address',
    ),
    ("[[chain.inner]]\nname = 'a'\nport = 0", "chain.inner[0].port: must be at least 1, got 0"),
    (
        "[[chain.inner]]\nname = 'a'\nport = 70000",
        "chain.inner[0].port: must be at most 65535, got 70000",
    ),
    (
        "[[chain.inner]]\nname = 'a'\nport = '1038'",
        'chain.inner[0].port: must be an integer, got "1038"',
    ),
    (
        "[[chain.inner]]\nname = 'a'\nport = true",
        "chain.inner[0].port: must be an integer, got true",
    ),
    (
        "[[chain.inner]]\nname = 'a'\n[[chain.inner]]\nname = 'b'\ntls = 'tsl'",
        'chain.inner[1].tls: must be one of "off", "opportunistic", "required", got "tsl"',
    ),
    ("[[chain.inner]]\nname = 'a'\ntls = true", "chain.inner[0].tls: must be a string, got true"),
    # STARTTLS names an FQDN and the certificate is checked against it (review M3).
    (
        "[[chain.inner]]\nname = 'hub'\ntls = 'required'",
        'chain.inner[0].name: tls = "required" needs a fully qualified domain name, got "hub"',
    ),
    (
        "[[chain.inner]]\nname = '10.0.0.5'\ntls = 'required'",
        'chain.inner[0].name: tls = "required" needs a fully qualified domain name, '
        'got "10.0.0.5"',
    ),
    (
        "[[chain.inner]]\nname = 'a'\ntls = 'off'\ncafile = 'ca.pem'",
        'chain.inner[0].cafile: cannot be used with tls = "off": set tls to "opportunistic" or '
        '"required"',
    ),
    ("[[chain.inner]]\nname = 'a'\ncafile = ''", "chain.inner[0].cafile: must not be empty"),
    (
        "[[chain.inner]]\nname = 'a'\n[[chain.inner]]\nname = 'A.'",
        'chain.inner[1].name: "a" is already the name of chain.inner[0]',
    ),
    # [[rewrite]]
    (
        "[[rewrite]]\nmatch = '*'\nreplace = 'x'\naddress = true",
        'rewrite[0].address: unknown key (did you mean "addresses"?)',
    ),
    (
        "[[rewrite]]\nmatch = '*'",
        "rewrite[0].replace: missing (each [[rewrite]] needs match and replace)",
    ),
    (
        "[[rewrite]]\nreplace = 'x'",
        "rewrite[0].match: missing (each [[rewrite]] needs match and replace)",
    ),
    ("[[rewrite]]\nmatch = 1\nreplace = 'x'", "rewrite[0].match: must be a string, got 1"),
    (
        "[[rewrite]]\nmatch = 're:('\nreplace = 'x'",
        "rewrite[0].match: bad regular expression: missing ), unterminated subpattern at position 0",
    ),
    (
        "[[rewrite]]\nmatch = 're:'\nreplace = 'x'",
        'rewrite[0].match: the regular expression after "re:" is empty',
    ),
    (
        "[[rewrite]]\nmatch = 'a b'\nreplace = 'x'",
        'rewrite[0].match: "a b" is not a host-name glob (letters, digits, "-", "_", ".", ":", '
        '"*" and "?"); write "re:..." for a regular expression',
    ),
    (
        "[[rewrite]]\nmatch = ''\nreplace = 'x'",
        'rewrite[0].match: "" is not a host-name glob (letters, digits, "-", "_", ".", ":", '
        '"*" and "?"); write "re:..." for a regular expression',
    ),
    ("[[rewrite]]\nmatch = '[]'\nreplace = 'x'", 'rewrite[0].match: "[]" matches no host name'),
    (
        "[[rewrite]]\nmatch = '*'\nreplace = 'x y'",
        'rewrite[0].replace: "x y" is not a valid host name (dot-separated labels of ASCII '
        'letters, digits, "-" and "_", at most 63 characters each)',
    ),
    (
        "[[rewrite]]\nmatch = '*'\nreplace = 'x'\naddresses = 1",
        "rewrite[0].addresses: must be true or false, got 1",
    ),
    (
        "[[rewrite]]\nmatch = '*'\nreplace = 'x'\n"
        "[[rewrite]]\nmatch = '*'\nreplace = 'x'\naddresses = 'yes'",
        'rewrite[1].addresses: must be true or false, got "yes"',
    ),
]


class ErrorTests(SynchronousTestCase):
    def test_errors(self) -> None:
        for text, message in ERRORS:
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as caught:
                    parse(text)
                self.assertEqual(str(caught.exception), message)
                self.assertEqual(len(str(caught.exception).splitlines()), 1)

    def test_error_names_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse("[chain]\nreport = 'flat'")
        self.assertEqual(caught.exception.key, "chain.report")
        self.assertEqual(caught.exception.message, 'must be one of "hops", "combined", got "flat"')

    def test_unknown_key_at_every_level(self) -> None:
        valid = {
            "server": {},
            "store": {},
            "tls": {"certificates": [{"cert": "c", "key": "k"}]},
            "chain": {"inner": [{"name": "a"}]},
            "rewrite": [{"match": "*", "replace": "x"}],
        }
        places = {
            "bogus": lambda d: d,
            "server.bogus": lambda d: d["server"],
            "store.bogus": lambda d: d["store"],
            "tls.bogus": lambda d: d["tls"],
            "tls.certificates[0].bogus": lambda d: d["tls"]["certificates"][0],
            "chain.bogus": lambda d: d["chain"],
            "chain.inner[0].bogus": lambda d: d["chain"]["inner"][0],
            "rewrite[0].bogus": lambda d: d["rewrite"][0],
        }
        parse_config(valid, BASE)
        for key, where in places.items():
            with self.subTest(key=key):
                data = copy.deepcopy(valid)
                where(data)["bogus"] = 1
                with self.assertRaises(ConfigError) as caught:
                    parse_config(data, BASE)
                self.assertEqual(str(caught.exception), f"{key}: unknown key")

    def test_bool_is_not_a_number(self) -> None:
        for section, key in [
            ("server", "idle_timeout"),
            ("server", "max_connections"),
            ("server", "max_connections_per_address"),
            ("server", "max_commands"),
            ("server", "max_bad_commands"),
            ("server", "max_connection_time"),
            ("server", "max_failed_tracks"),
            ("server", "failed_track_window"),
            ("chain", "deadline"),
            ("chain", "max_depth"),
        ]:
            for value in (True, False):
                with self.subTest(key=key, value=value):
                    with self.assertRaises(ConfigError) as caught:
                        parse_config({section: {key: value}}, BASE)
                    self.assertTrue(str(caught.exception).startswith(f"{section}.{key}: must be"))
                    self.assertTrue(str(caught.exception).endswith(f"got {str(value).lower()}"))
        with self.assertRaises(ConfigError):
            parse_config({"chain": {"inner": [{"name": "a", "port": True}]}}, BASE)

    def test_not_a_dict(self) -> None:
        for data in (None, [], "x", 3):
            with self.subTest(data=data):
                with self.assertRaises(ConfigError) as caught:
                    parse_config(data, BASE)
                self.assertTrue(str(caught.exception).startswith("must be a table"))

    def test_unknown_key_order(self) -> None:
        # Unknown keys are reported before bad values: a typo explains the most.
        with self.assertRaises(ConfigError) as caught:
            parse("[server]\nidle_timeout = 1\nidle_timout = 600")
        self.assertEqual(caught.exception.key, "server.idle_timout")


class RewriteRuleTests(SynchronousTestCase):
    def test_glob(self) -> None:
        rule = RewriteRule("*.corp.example.com", "example.com")
        self.assertTrue(rule.matches("smtp.corp.example.com"))
        self.assertTrue(rule.matches("A.B.CORP.Example.com."))
        self.assertFalse(rule.matches("corp.example.com"))
        self.assertFalse(rule.matches("smtp.corp.example.com.evil"))
        self.assertFalse(rule.matches("smtpxcorp.example.com"))

    def test_glob_star_may_be_empty_and_question_mark(self) -> None:
        self.assertTrue(RewriteRule("smtp*.corp", "x").matches("smtp.corp"))
        self.assertTrue(RewriteRule("mx?.corp", "x").matches("mx1.corp"))
        self.assertFalse(RewriteRule("mx?.corp", "x").matches("mx.corp"))

    def test_glob_on_addresses(self) -> None:
        self.assertTrue(RewriteRule("10.0.0.*", "x").matches("[10.0.0.5]"))
        self.assertTrue(RewriteRule("2001:db8::*", "x").matches("[IPv6:2001:DB8::1]"))

    def test_regex(self) -> None:
        rule = RewriteRule("re:(smtp|mx)[0-9]*\\.corp", "example.com")
        self.assertTrue(rule.matches("SMTP.corp"))
        self.assertTrue(rule.matches("mx12.corp"))
        self.assertFalse(rule.matches("mx12.corp.example"), "fullmatch, not search")
        self.assertTrue(RewriteRule("RE:a.*", "x").matches("abc"))

    def test_bad_pattern_raises_value_error(self) -> None:
        self.assertRaises(ValueError, RewriteRule, "re:[", "x")
        self.assertRaises(ValueError, compile_match, "a/b")

    def test_equality_ignores_compiled_pattern(self) -> None:
        self.assertEqual(RewriteRule("*", "x"), RewriteRule("*", "x"))
        self.assertEqual(hash(RewriteRule("*", "x")), hash(RewriteRule("*", "x")))
        self.assertNotIn("pattern", repr(RewriteRule("*", "x")))


class LoadTests(SynchronousTestCase):
    def refused(self, path: str) -> ConfigError:
        """The ConfigError load_config(path) raises."""
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        return caught.exception

    def write(self, text: str | bytes, name: str = "mtqpgw.toml") -> FilePath:
        directory = FilePath(self.mktemp())
        directory.makedirs()
        path = directory.child(name)
        path.setContent(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def test_load(self) -> None:
        path = self.write(
            '[server]\nhostname = "mtqp.example.com"\n[store]\npath = "db/x.sqlite3"\n'
        )
        path.sibling("db").makedirs()
        config = load_config(path.path)
        self.assertEqual(config.server.hostname, "mtqp.example.com")
        self.assertEqual(config.store.path, path.sibling("db").child("x.sqlite3").path)
        self.assertEqual(config.source, os.path.abspath(path.path))

    def test_load_relative_path(self) -> None:
        path = self.write("")
        relative = os.path.relpath(path.path)
        config = load_config(relative)
        self.assertEqual(config.store.path, path.sibling("mtqpgw.sqlite3").path)

    def test_default_hostname(self) -> None:
        path = self.write("")
        self.assertEqual(
            load_config(path.path, default_hostname="gw.example").server.hostname, "gw.example"
        )
        self.assertEqual(load_config(path.path).server.hostname, "localhost")

    def test_missing_file(self) -> None:
        missing = os.path.join(self.mktemp(), "nope.toml")
        error = self.refused(missing)
        self.assertEqual(str(error), "cannot read the file: No such file or directory")
        self.assertEqual(error.path, os.path.abspath(missing))

    def test_directory(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        error = self.refused(directory)
        self.assertEqual(str(error), "cannot read the file: Is a directory")

    def test_syntax_error(self) -> None:
        path = self.write('[server]\nhostname = "a"\nidle_timeout = = 5\n')
        error = self.refused(path.path)
        self.assertEqual(str(error), "line 3, column 16: TOML syntax error: invalid value")
        self.assertEqual(error.line, 3)
        self.assertEqual(error.path, path.path)

    def test_syntax_error_at_end(self) -> None:
        path = self.write("[server]\nhostname = ")
        error = self.refused(path.path)
        self.assertEqual(str(error), "TOML syntax error at the end of the file: invalid value")

    def test_not_utf8(self) -> None:
        path = self.write(b'[server]\nhostname = "\xff"\n')
        error = self.refused(path.path)
        self.assertEqual(len(str(error).splitlines()), 1)
        self.assertIn("UTF-8", str(error))

    def test_huge_integer(self) -> None:
        path = self.write("[server]\nmax_commands = " + "9" * 5000 + "\n")
        error = self.refused(path.path)
        self.assertTrue(str(error).startswith("cannot parse the file: "))

    def test_validation_error_carries_path(self) -> None:
        path = self.write("[server]\nidle_timeout = 60\n")
        error = self.refused(path.path)
        self.assertEqual(
            str(error),
            "server.idle_timeout: must be at least 600 seconds (RFC 3887 section 2.5), got 60",
        )
        self.assertEqual(error.path, path.path)

    def test_files_must_exist(self) -> None:
        path = self.write('[tls]\ncertificates = [{cert = "c.pem", key = "k.pem"}]\n')
        error = self.refused(path.path)
        cert = path.sibling("c.pem")
        self.assertEqual(str(error), f"tls.certificates[0].cert: no such file: {cert.path}")
        cert.setContent(b"")
        error = self.refused(path.path)
        self.assertEqual(error.key, "tls.certificates[0].key")
        path.sibling("k.pem").makedirs()
        error = self.refused(path.path)
        self.assertEqual(
            str(error),
            f"tls.certificates[0].key: not a readable file: {path.sibling('k.pem').path}",
        )
        # Without the check, the same file parses.
        self.assertEqual(load_config(path.path, check=False).tls.certificates[0][0], cert.path)

    def test_cafile_must_exist(self) -> None:
        path = self.write(
            "[[chain.inner]]\nname = 'a.corp.example.com'\ntls = 'required'\ncafile = 'ca.pem'\n"
        )
        error = self.refused(path.path)
        self.assertEqual(error.key, "chain.inner[0].cafile")
        path.sibling("ca.pem").setContent(b"")
        load_config(path.path)

    def test_store_directory_must_exist(self) -> None:
        path = self.write('[store]\npath = "nowhere/x.sqlite3"\n')
        error = self.refused(path.path)
        self.assertEqual(
            str(error),
            f"store.path: the directory does not exist: {path.sibling('nowhere').path}",
        )
        path.sibling("nowhere").makedirs()
        load_config(path.path)
        path.sibling("nowhere").child("x.sqlite3").makedirs()
        error = self.refused(path.path)
        self.assertTrue(str(error).startswith("store.path: is a directory"))

    def test_admin_down_file_directory_may_be_missing(self) -> None:
        # /run/mtqpgw is gone after a reboot until something makes it again:
        # that must not stop the daemon; no file means "up".
        path = self.write('[server]\nadmin_down_file = "run/down"\n')
        self.assertEqual(
            load_config(path.path).server.admin_down_file, path.sibling("run").child("down").path
        )

    def test_unix_socket_directory_must_exist(self) -> None:
        path = self.write('[server]\nlisten = "unix:run/mtqp.sock"\n')
        error = self.refused(path.path)
        self.assertEqual(
            str(error),
            f"server.listen: the socket's directory does not exist: {path.sibling('run').path}",
        )
        path.sibling("run").makedirs()
        load_config(path.path)

    def test_check_files_memory_store(self) -> None:
        check_files(parse('[store]\npath = ":memory:"'))


INTERFACE_EXAMPLE = """
[server]
listen = "tcp:1038"
hostname = "mtqp.example.com"
unknown_message = "noinfo"
idle_timeout = 600
max_connections = 1000
max_connections_per_address = 20
max_commands = 10000
max_bad_commands = 20
max_connection_time = 3600
max_failed_tracks = 10
failed_track_window = 600
throttle_exempt = []

[store]
path = "mtqpgw.sqlite3"

[tls]
certificates = [ { cert = "/etc/mtqpgw/cert.pem", key = "/etc/mtqpgw/key.pem" } ]
required = false

[chain]
deadline = 110
report = "hops"
fanout = true
max_depth = 4

[[chain.inner]]
name = "smtp.corp.example.com"
host = "10.0.0.5"
port = 1038
tls = "opportunistic"
cafile = "/etc/mtqpgw/inner-ca.pem"

[[rewrite]]
match = "*.corp.example.com"
replace = "example.com"
"""


class ExampleTests(SynchronousTestCase):
    def test_interface_example(self) -> None:
        # interface.md section 2, keys and values as the contract shows them.
        config = parse(INTERFACE_EXAMPLE)
        self.assertEqual(config.server, ServerConfig(hostname="mtqp.example.com"))
        self.assertEqual(
            config.tls.certificates, (("/etc/mtqpgw/cert.pem", "/etc/mtqpgw/key.pem"),)
        )
        self.assertEqual(
            config.chain,
            ChainConfig(
                inner=(
                    InnerHost(
                        "smtp.corp.example.com",
                        "10.0.0.5",
                        1038,
                        "opportunistic",
                        "/etc/mtqpgw/inner-ca.pem",
                    ),
                )
            ),
        )
        self.assertEqual(config.rewrite, (RewriteRule("*.corp.example.com", "example.com"),))

    def test_shipped_example_loads(self) -> None:
        config = load_config(EXAMPLE)
        expected = default_config(base_dir=os.path.dirname(EXAMPLE))
        self.assertEqual(config.server, expected.server)
        self.assertEqual(config.store, expected.store)
        self.assertEqual(config.tls, expected.tls)
        self.assertIsNone(config.chain)
        self.assertEqual(config.rewrite, ())

    def test_shipped_example_commented_settings(self) -> None:
        # Every commented-out setting is valid too, once enabled.
        with open(EXAMPLE, encoding="utf-8") as f:
            text = f.read()
        enabled = "\n".join(
            _DISABLED.sub("", line, count=1) if line.startswith("# ") else line
            for line in text.splitlines()
        )
        self.assertNotEqual(enabled, text)
        config = parse_config(tomllib.loads(enabled), "/etc/mtqpgw")
        self.assertEqual(config.server.hostname, "mtqp.example.com")
        self.assertEqual(
            config.tls.certificates, (("/etc/mtqpgw/cert.pem", "/etc/mtqpgw/key.pem"),)
        )
        self.assertIsNotNone(config.chain)
        self.assertEqual(len(config.rewrite), 1)

    def test_example_mentions_every_key(self) -> None:
        with open(EXAMPLE, encoding="utf-8") as f:
            text = f.read()
        keys = list(ServerConfig.__dataclass_fields__) + ["path", "certificates", "required"]
        keys += [k for k in ChainConfig.__dataclass_fields__ if k != "inner"]
        keys += list(InnerHost.__dataclass_fields__) + ["match", "replace", "addresses"]
        for key in keys:
            with self.subTest(key=key):
                self.assertRegex(text, rf"(?m)^#? ?{key} = ")


class EndpointAgreementTests(SynchronousTestCase):
    """Our endpoint check against Twisted's own parser (an independent implementation)."""

    def test_agrees_with_twisted(self) -> None:
        from twisted.internet import endpoints
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        for description in [
            "tcp:1038",
            "tcp:port=1038:interface=127.0.0.1",
            "tcp:1038:127.0.0.1:5",
            "tcp6:1038:interface=\\:\\:1",
            "unix:/tmp/x.sock:mode=600",
            "unix:address=/tmp/x\\:y.sock",
            "tcp:1038:bogus=1",
            "tcp:abc",
            "TCP:1038",
            "tcp",
            "udp:53",
            "tcp:1:a:5:x",
        ]:
            with self.subTest(description=description):
                try:
                    endpoints.serverFromString(reactor, description)
                    twisted_ok = True
                except Exception:
                    twisted_ok = False
                try:
                    parse_config({"server": {"listen": description}}, "/")
                    ours_ok = True
                except ConfigError:
                    ours_ok = False
                self.assertEqual(ours_ok, twisted_ok)

    def test_rewritten_endpoint_parses(self) -> None:
        from twisted.internet import endpoints
        from twisted.internet.testing import MemoryReactor

        listen = parse_config(
            {"server": {"listen": "unix:a\\:b.sock:mode=600"}}, "/x:y"
        ).server.listen
        endpoint = endpoints.serverFromString(MemoryReactor(), listen[0])
        self.assertEqual(endpoint._address, "/x:y/a:b.sock")


# TOML-ish values: what tomllib can produce, nested.
_SCALARS = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.times(),
    st.sampled_from(
        [
            "tcp:1038",
            "1038",
            "unix:x",
            "re:(",
            "re:.*",
            "*.corp",
            ":memory:",
            "10.0.0.0/8",
            "off",
            "required",
            "hops",
            "opaque",
            "a.example",
        ]
    ),
)
_KEYS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "server",
            "store",
            "tls",
            "chain",
            "rewrite",
            "inner",
            "listen",
            "hostname",
            "idle_timeout",
            "name",
            "host",
            "port",
            "tls",
            "cafile",
            "match",
            "replace",
            "addresses",
            "certificates",
            "cert",
            "key",
            "required",
            "path",
            "deadline",
            "throttle_exempt",
            "max_depth",
            "report",
            "fanout",
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=5)
    ),
    max_leaves=20,
)


def _sections() -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like a config file, with random values inside, to reach deep checks."""
    server = st.dictionaries(
        st.sampled_from(list(ServerConfig.__dataclass_fields__)), _VALUES, max_size=4
    )
    inner = st.dictionaries(
        st.sampled_from(["name", "host", "port", "tls", "cafile"]), _VALUES, max_size=4
    )
    chain = st.fixed_dictionaries(
        {"inner": st.lists(inner, max_size=3)}, optional={"deadline": _VALUES, "report": _VALUES}
    )
    rule = st.dictionaries(st.sampled_from(["match", "replace", "addresses"]), _VALUES, max_size=3)
    tls = st.dictionaries(st.sampled_from(["certificates", "required"]), _VALUES, max_size=2)
    return st.fixed_dictionaries(
        {},
        optional={
            "server": server,
            "store": st.dictionaries(st.just("path"), _VALUES),
            "tls": tls,
            "chain": chain,
            "rewrite": st.lists(rule, max_size=3),
        },
    )


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.one_of(_VALUES, st.dictionaries(_KEYS, _VALUES), _sections()))
    def test_only_config_error(self, data: Any) -> None:
        try:
            config = parse_config(data, BASE)
        except ConfigError as e:
            self.assertEqual(len(str(e).splitlines()), 1, str(e))
            return
        self.assertIsInstance(config, Config)

    @settings(max_examples=50, deadline=None)
    @given(st.sampled_from([date(2020, 1, 1), time(1, 2), datetime(2020, 1, 1)]))
    def test_dates_are_described(self, value: Any) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config({"server": {"max_commands": value}}, BASE)
        self.assertEqual(
            str(caught.exception), "server.max_commands: must be an integer, got a date/time"
        )
