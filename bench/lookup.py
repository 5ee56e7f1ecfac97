"""Store look-up latency, run in a child process against a built store.

Times, for envelope ids spread over the whole store, one look-up in flight
at a time on a running reactor:

- ``store``: ``SQLiteStore.lookup`` exactly as the daemon calls it (the
  query-only connection on the reactor thread, for a file store, and the
  secret checked against the certifier as ``LocalTracker`` has it checked);
- ``pool``: the same SQL through the adbapi thread, the path of ``":memory:"``
  and of a look-up the reader could not do;
- ``sql``: the bare SQL (``select_message``) on a plain connection.

Prints one JSON object.

    python -m bench.lookup STORE MESSAGES LOOKUPS
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from functools import partial
from typing import Any

from bench import common


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "count": len(times),
        "p50_ms": common.percentile(times, 0.5) * 1e3,
        "p99_ms": common.percentile(times, 0.99) * 1e3,
        "max_ms": max(times) * 1e3,
    }


def _synchronous(path: str, indexes: list[int]) -> dict[str, float]:
    from mtqpgw.store import select_message

    connection = sqlite3.connect(path)
    cursor = connection.cursor()
    times = []
    now = time.time()
    for i in indexes:
        started = time.perf_counter()
        message = select_message(cursor, common.envid(i), now)
        times.append(time.perf_counter() - started)
        if message is None:
            raise SystemExit(f"message {i} missing from {path}")
    connection.close()
    return _summary(times)


async def _through_store(
    reactor: Any, path: str, indexes: list[int]
) -> tuple[dict[str, float], dict[str, float]]:
    from mtqpgw.certifier import check_secret
    from mtqpgw.store import SQLiteStore, select_message

    store = SQLiteStore(path, reactor=reactor)
    await store.start()
    by_lookup, by_pool = [], []
    try:
        for i in indexes:
            accept = partial(check_secret, common.wire_secret(i))
            started = time.perf_counter()
            message = await store.lookup(common.envid(i), accept)
            by_lookup.append(time.perf_counter() - started)
            if message is None:
                raise SystemExit(f"message {i} missing from {path}")
        for i in indexes:
            started = time.perf_counter()
            # The pool path, as lookup takes it when the reader cannot.
            await store._run(select_message, common.envid(i), reactor.seconds())
            by_pool.append(time.perf_counter() - started)
    finally:
        await store.stop()
    return _summary(by_lookup), _summary(by_pool)


def main(argv: list[str]) -> None:
    from twisted.internet import defer, task

    path, messages, lookups = argv[0], int(argv[1]), int(argv[2])
    rng = random.Random(11)
    indexes = [rng.randrange(messages) for _ in range(lookups)]
    results: dict[str, Any] = {}

    def run(reactor: Any) -> defer.Deferred[None]:
        async def both() -> None:
            results["store"], results["pool"] = await _through_store(reactor, path, indexes)

        return defer.Deferred.fromCoroutine(both())

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    # A fresh sample, so that what the first pass (the figure) warmed in the
    # page cache does not flatter the bare SQL.
    results["sql"] = _synchronous(path, [rng.randrange(messages) for _ in indexes])
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
