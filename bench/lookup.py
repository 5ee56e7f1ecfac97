"""Store look-up latency, run in a child process against a built store.

Times ``SQLiteStore.lookup`` exactly as the daemon calls it (through the
adbapi thread, one look-up in flight at a time, on a running reactor), for
envelope ids spread over the whole store, and for comparison the same SQL
called synchronously on a plain connection.  Prints one JSON object.

    python -m bench.lookup STORE MESSAGES LOOKUPS
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from typing import Any

from bench import common


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    n = len(ordered)
    return {
        "count": n,
        "p50_ms": ordered[n // 2] * 1e3,
        "p99_ms": ordered[min(n - 1, int(n * 0.99))] * 1e3,
        "max_ms": ordered[-1] * 1e3,
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


async def _adbapi(reactor: Any, path: str, indexes: list[int]) -> dict[str, float]:
    from mtqpgw.store import SQLiteStore

    store = SQLiteStore(path, reactor=reactor)
    await store.start()
    times = []
    try:
        for i in indexes:
            started = time.perf_counter()
            message = await store.lookup(common.envid(i))
            times.append(time.perf_counter() - started)
            if message is None:
                raise SystemExit(f"message {i} missing from {path}")
    finally:
        await store.stop()
    return _summary(times)


def main(argv: list[str]) -> None:
    from twisted.internet import defer, task

    path, messages, lookups = argv[0], int(argv[1]), int(argv[2])
    rng = random.Random(11)
    indexes = [rng.randrange(messages) for _ in range(lookups)]
    results: dict[str, Any] = {}

    def run(reactor: Any) -> defer.Deferred[None]:
        async def both() -> None:
            results["adbapi"] = await _adbapi(reactor, path, indexes)

        return defer.Deferred.fromCoroutine(both())

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    # A fresh sample, so that the page cache the first pass warmed is the
    # same for both (the first pass is the figure).
    results["synchronous"] = _synchronous(path, [rng.randrange(messages) for _ in indexes])
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
