"""Builds the benchmark's tracking stores and import files, cached on disk by kind and size.

A store of a million messages is written through L{mtqpgw.store.SQLiteWriter}
(the import's batch path) in a child process, then kept in the cache
directory and reused by later runs.  Kinds:

- ``plain``: two delivered recipients per message (the direct server).
- ``gateway``: recipient 1 relayed to inner-a, recipient 2 to inner-b, so the
  gateway asks both inner hosts for every TRACK.
- ``inner-a`` / ``inner-b``: what each inner host knows (its recipient, delivered).

    python -m bench.storegen store plain 1000000 OUT.sqlite3
    python -m bench.storegen jsonl 100000 OUT.jsonl
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from bench import common

KINDS = ("plain", "gateway", "inner-a", "inner-b")
BATCH = 10_000
RECEIVED_FROM = "dns; client.example.net"


def _recipients(kind: str) -> tuple:
    from mtqpgw.status import Action, RecipientStatus

    def recipient(n: int, action: Action, remote: str) -> RecipientStatus:
        address = f"rfc822; user{n}@example{n}.com"
        return RecipientStatus(
            original_recipient=address,
            final_recipient=address,
            action=action,
            status="2.1.5" if action is Action.RELAYED else "2.0.0",
            remote_mta=remote,
            last_attempt_date=common.ATTEMPT,
        )

    # Every message of a kind has the same recipients: what varies per
    # message (envid, certifier) is all a look-up has to find.
    if kind == "plain":
        return (
            recipient(1, Action.DELIVERED, "dns; mx1.example1.com"),
            recipient(2, Action.DELIVERED, "dns; mx2.example2.com"),
        )
    if kind == "gateway":
        return (
            recipient(1, Action.RELAYED, f"dns; {common.INNER_NAMES[0]}"),
            recipient(2, Action.RELAYED, f"dns; {common.INNER_NAMES[1]}"),
        )
    if kind == "inner-a":
        return (recipient(1, Action.DELIVERED, "dns; mx1.example1.com"),)
    if kind == "inner-b":
        return (recipient(2, Action.DELIVERED, "dns; mx2.example2.com"),)
    raise ValueError(f"unknown store kind {kind!r}")


def build_store(kind: str, messages: int, out: Path) -> float:
    """Write ``messages`` records of ``kind`` to a new store at ``out``; return records/s."""
    from mtqpgw.store import SQLiteWriter, StoredMessage

    recipients = _recipients(kind)
    started = time.perf_counter()
    with SQLiteWriter(str(out)) as writer:
        for first in range(0, messages, BATCH):
            writer.upsert(
                [
                    StoredMessage(
                        envid=common.envid(i),
                        certifier=common.certifier(i),
                        expires=common.EXPIRES,
                        recipients=recipients,
                        arrival_date=common.ARRIVAL,
                        received_from_mta=RECEIVED_FROM,
                    )
                    for i in range(first, min(first + BATCH, messages))
                ]
            )
    return messages / (time.perf_counter() - started)


def jsonl_lines(messages: int) -> Iterator[str]:
    """Import lines (interface.md section 3) for messages 0 .. messages-1, as in a plain store."""
    recipients = [asdict(r) for r in _recipients("plain")]
    for recipient in recipients:
        recipient["action"] = recipient["action"].value
        del recipient["extensions"]  # none, and the import takes an object, not ()
    for i in range(messages):
        yield json.dumps(
            {
                "envid": common.envid(i),
                "certifier": common.certifier(i),
                "arrival_date": common.ARRIVAL,
                "received_from_mta": RECEIVED_FROM,
                "expires": common.EXPIRES,
                "recipients": recipients,
            }
        )


def _cached(name: str, argv_tail: list[str]) -> Path:
    """The cache file ``name``, built first by a child process when missing."""
    path = common.cache_dir() / name
    if path.exists():
        return path
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    common.remove_sqlite(partial)
    print(f"  building {path.name} (cached for later runs) ...", flush=True)
    started = time.perf_counter()
    try:
        subprocess.run(
            [sys.executable, "-m", "bench.storegen", *argv_tail, str(partial)],
            cwd=common.REPO,
            check=True,
            timeout=3600,
        )
        # The writer closed cleanly, so the WAL is checkpointed and gone:
        # the one file is the whole store.
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    print(f"  built {path.name} in {time.perf_counter() - started:.1f}s", flush=True)
    return path


def cached_store(kind: str, messages: int) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown store kind {kind!r}")
    name = f"store-v{common.DATA_VERSION}-{kind}-{messages}.sqlite3"
    return _cached(name, ["store", kind, str(messages)])


def cached_jsonl(messages: int) -> Path:
    return _cached(f"import-v{common.DATA_VERSION}-{messages}.jsonl", ["jsonl", str(messages)])


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "store":
        rate = build_store(argv[1], int(argv[2]), Path(argv[3]))
        print(f"  wrote {argv[2]} {argv[1]} records at {rate:,.0f} records/s", flush=True)
        return 0
    if len(argv) == 3 and argv[0] == "jsonl":
        with open(argv[2], "w", encoding="utf-8") as f:
            for line in jsonl_lines(int(argv[1])):
                f.write(line + "\n")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
