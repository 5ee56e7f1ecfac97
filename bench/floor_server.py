"""A floor for the server figure: raw_server.py plus the store look-up, nothing else.

    python -m bench.floor_server PORT STORE

For each ``TRACK <envid> ...`` line it runs the daemon's own look-up
(``mtqpgw.store.select_message`` on a query-only SQLite connection, as
``SQLiteStore`` does on the reactor thread) and writes ``raw_server.py``'s
canned answer; it parses, checks, builds and logs nothing else.  No MTQP
server that consults its store per TRACK in this process can be faster, so
this bounds the direct-server ratio from above.  Not part of the product.
"""

from __future__ import annotations

import sqlite3
import sys
import time

from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver

from mtqpgw.store import select_message

# raw_server.py's answer, octet for octet.
BODY = (
    b"\r\n".join(
        [
            b"+OK+ Tracking information follows",
            b"Content-Type: multipart/related; boundary=%%%%; type=tracking-status",
            b"",
            b"--%%%%",
            b"Content-Type: message/tracking-status",
            b"",
            b"Original-Envelope-Id: 12345-20010101@example.com",
            b"Reporting-MTA: dns; example2.com",
            b"Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500",
            b"",
            b"Original-Recipient: rfc822; user1@example1.com",
            b"Final-Recipient: rfc822; user1@example1.com",
            b"Action: delivered",
            b"Status: 2.5.0",
            b"",
            b"--%%%%--",
            b".",
        ]
    )
    + b"\r\n"
)


class Floor(LineReceiver):
    def connectionMade(self) -> None:
        self.transport.write(b"+OK/MTQP ready\r\n")

    def lineReceived(self, line: bytes) -> None:
        if line[:5].upper() == b"TRACK":
            envid = line[line.find(b"<") + 1 : line.find(b">")].decode("ascii")
            found = select_message(self.factory.cursor, envid, time.time())
            self.transport.write(BODY if found is not None else b"-ERR/noinfo\r\n")
        elif line.upper() == b"QUIT":
            self.transport.write(b"+OK bye\r\n")
            self.transport.loseConnection()
        else:
            self.transport.write(b"-BAD unknown\r\n")


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    connection = sqlite3.connect(path, timeout=0)
    connection.execute("PRAGMA query_only = ON")
    factory = protocol.ServerFactory()
    factory.protocol = Floor
    factory.cursor = connection.cursor()  # type: ignore[attr-defined]
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
