# -*- test-case-name: tests.test_cli -*-
"""The ``mtqp`` command: an argparse front whose sub-commands live in their own modules.

Exit statuses: 0 success, 1 a negative answer or bad input lines, 2 usage or
connection errors.  Errors a user can meet are one readable line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # noqa: D401 - argparse hook
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from mtqpgw import __version__

    parser = _Parser(prog="mtqp", description="Message Tracking Query Protocol client and tools.")
    parser.add_argument("--version", action="version", version=f"mtqp (mtqpgw) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    track = sub.add_parser("track", help="ask an MTQP server where a message is")
    track.add_argument("uri", nargs="?", help="mtqp://host[:port]/track/<envid>/<secret>")
    track.add_argument("envid", nargs="?", help="envelope id (with --server)")
    track.add_argument("secret", nargs="?", help="base64 mtrk-secret as sent on the wire")
    track.add_argument("--server", metavar="HOST[:PORT]", help="server to ask")
    track.add_argument(
        "--tls", choices=("off", "opportunistic", "required"), default="opportunistic"
    )
    track.add_argument("--cafile", help="trust these CA certificates (PEM) for TLS")
    track.add_argument(
        "--tls-name",
        metavar="NAME",
        help="the server's domain name, to ask STARTTLS for and check its certificate "
        "against, when it differs from the host connected to (e.g. --server 127.0.0.1:PORT)",
    )
    track.add_argument("--dns-server", metavar="IP[:PORT]", help="send DNS look-ups here")
    output = track.add_mutually_exclusive_group()
    output.add_argument("--raw", action="store_true", help="print the MIME body as received")
    output.add_argument("--json", action="store_true", help="print JSON")
    track.add_argument("--follow", action="store_true", help="follow the message hop by hop")
    track.add_argument("--max-hops", type=int, default=8, metavar="N")
    track.add_argument(
        "--timeout",
        type=float,
        default=150.0,
        metavar="SECONDS",
        help="wait this long for an answer (default 150; RFC 3887 asks for at least 120)",
    )
    track.set_defaults(module="mtqpgw.trackcmd")

    imp = sub.add_parser("import", help="load tracking records (JSON Lines) into a store")
    where = imp.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="PATH", help="use the store this config names")
    where.add_argument("--store", metavar="PATH", help="SQLite store file")
    imp.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines files; - is stdin")
    imp.set_defaults(module="mtqpgw.importer")

    cert = sub.add_parser("certifier", help="print base64(SHA1(SECRET)), the MTRK= value")
    cert.add_argument("secret", metavar="SECRET")
    cert.add_argument("--base64", action="store_true", help="SECRET is base64 of the octets")
    cert.set_defaults(handler=_certifier)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", metavar="PATH")
    check.set_defaults(handler=_check_config)

    forget = sub.add_parser(
        "forget-server",
        help="forget what mtqp track remembered of a server (after a known certificate change)",
    )
    forget.add_argument("server", metavar="HOST[:PORT]", help="a bare HOST forgets every port")
    forget.set_defaults(handler=_forget_server)

    demo = sub.add_parser("demo", help="run a gateway and two inner servers on loopback")
    demo.add_argument("--port", type=int, default=0, help="gateway port (default: any free)")
    demo.set_defaults(module="mtqpgw.demo")
    return parser


def _certifier(args: argparse.Namespace) -> int:
    from mtqpgw.certifier import certifier_for, decode_secret

    if args.base64:
        octets = decode_secret(args.secret)
        if octets is None:
            print("mtqp: SECRET is not valid base64", file=sys.stderr)
            return EXIT_USAGE
    else:
        octets = args.secret.encode("utf-8")
    if not octets:
        # SHA1 of nothing is a certifier anyone can match: no message should carry it.
        print("mtqp: SECRET must not be empty", file=sys.stderr)
        return EXIT_USAGE
    print(certifier_for(octets))
    return EXIT_OK


def _forget_server(args: argparse.Namespace) -> int:
    from mtqpgw.tofu import default_cache_path, forget_server

    try:
        removed = forget_server(args.server)
    except ValueError as e:
        print(f"mtqp forget-server: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not removed:
        print(f"mtqp forget-server: nothing remembered of {args.server}", file=sys.stderr)
        return EXIT_NEGATIVE
    for key in removed:
        print(f"forgot {key} (in {default_cache_path()})")
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    import socket

    from mtqpgw.config import ConfigError, load_config
    from mtqpgw.store import StoreError
    from mtqpgw.tap import preflight

    # The daemon's own checks: keys and values, files, certificates, store.
    try:
        preflight(load_config(args.path, default_hostname=socket.getfqdn()), create_store=False)
    except (ConfigError, StoreError) as e:
        print(f"{args.path}: {e}", file=sys.stderr)
        return EXIT_NEGATIVE
    print("ok")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        handler = importlib.import_module(args.module).main
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
