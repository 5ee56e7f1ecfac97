"""The benchmark's own MTQP load generators (asyncio, 127.0.0.1 only).

Unlike ``../shared/bench/load.py``, every answer is checked: a TRACK counts
as done only when it is a ``+OK+`` answer (holding the envelope id asked
for, where the server is a real one), so a run whose answers are all
``-ERR/noinfo`` cannot pass for fast.  Responses are split on whole
buffers with ``bytes.find`` rather than line by line, which keeps the
generator cheap enough to drive the raw ceilings.

- L{closed_loop}: C connections, each sending its TRACKs W at a time
  (pipelined) and waiting for the W answers before the next window.
- L{paced}: a fixed rate over a few connections for a given time (the soak).
- L{timing_probe}: one connection, two kinds of TRACK interleaved, each
  answer timed.
- L{hold_idle}: many connections that only read the greeting and then sit.

Every loop is bounded by a count, and every wait by a timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bench.common import HOST, percentile

# No single answer may take longer than this; a run that stalls fails.
ANSWER_TIMEOUT = 30.0
QUIT = b"QUIT\r\n"


class Responses:
    """Whole MTQP responses from a stream: a status line, plus data and ``.`` for ``+OK+``."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = b""

    def _split(self) -> bytes | None:
        buf = self.buf
        eol = buf.find(b"\r\n")
        if eol < 0:
            return None
        if buf.startswith(b"+OK+"):
            # Dot-stuffing guarantees "\r\n.\r\n" occurs only as the terminator.
            end = buf.find(b"\r\n.\r\n", eol)
            if end < 0:
                return None
            end += 5
        else:
            end = eol + 2
        self.buf = buf[end:]
        return buf[:end]

    async def next(self, timeout: float = ANSWER_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            response = self._split()
            if response is not None:
                return response
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete response in time")
            data = await asyncio.wait_for(self.reader.read(1 << 18), left)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buf += data


async def _connect(port: int) -> tuple[Responses, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), ANSWER_TIMEOUT)
    responses = Responses(reader)
    greeting = await responses.next()
    return responses, writer, greeting


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(QUIT)
        await asyncio.wait_for(writer.drain(), 5)
    except (OSError, TimeoutError):
        pass
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (OSError, TimeoutError):
        pass


@dataclass
class LoadResult:
    """What a load run measured; ``rate`` counts positive answers only."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    sample_failure: bytes = b""
    # CPU time per positive answer of the processes serving the load, by name (us).
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    def check(self, response: bytes, envid: bytes | None, require: Sequence[bytes] = ()) -> None:
        """Count ``response``: positive only if ``+OK+`` naming ``envid`` and holding ``require``."""
        if (
            response.startswith(b"+OK+ ")
            and (envid is None or envid in response)
            and all(text in response for text in require)
        ):
            self.ok += 1
        else:
            self.failed += 1
            if not self.sample_failure:
                self.sample_failure = response[:300]

    def summary(self) -> str:
        return (
            f"{self.rate:,.0f} TRACK/s ({self.ok} +OK+, {self.failed} failed, "
            f"{self.seconds:.2f}s; p50 {self.p(0.5) * 1e3:.2f} ms, p99 {self.p(0.99) * 1e3:.2f} ms)"
        )


def _envid_of(line: bytes) -> bytes:
    # "TRACK <envid> secret\r\n" -> b"envid"
    return line[line.index(b"<") + 1 : line.index(b">")]


async def closed_loop(
    port: int,
    lines_per_connection: Sequence[Sequence[bytes]],
    window: int,
    check_envid: bool = True,
    require: Sequence[bytes] = (),
    timeout: float = 600.0,
) -> LoadResult:
    """Each connection sends its lines ``window`` at a time; latencies are per window.

    With ``check_envid`` an answer must name the envelope id asked for (a raw
    ceiling answers one canned id, so it is not checked there); ``require``
    lists further octets every answer must hold.
    """
    result = LoadResult()
    connections = [await _connect(port) for _ in lines_per_connection]

    async def run(responses: Responses, writer: asyncio.StreamWriter, lines: Sequence[bytes]):
        for start in range(0, len(lines), window):
            chunk = lines[start : start + window]
            started = time.perf_counter()
            writer.write(b"".join(chunk))
            result.sent += len(chunk)
            for line in chunk:
                envid = _envid_of(line) if check_envid else None
                result.check(await responses.next(), envid, require)
            result.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    run(responses, writer, lines)
                    for (responses, writer, _), lines in zip(
                        connections, lines_per_connection, strict=True
                    )
                )
            ),
            timeout,
        )
    finally:
        result.seconds = time.perf_counter() - started
        for _, writer, _ in connections:
            await _close(writer)
    return result


@dataclass
class PacedResult(LoadResult):
    """A paced run: also how far the sender fell behind its schedule."""

    planned: int = 0
    max_send_lag: float = 0.0


async def paced(
    port: int,
    rate: float,
    seconds: float,
    connections: int,
    line_for: Callable[[int], bytes],
    require: Sequence[bytes] = (),
    progress: Callable[[float, PacedResult], None] | None = None,
) -> PacedResult:
    """Send ``rate`` TRACK/s in total, spread evenly over ``connections``, for ``seconds``.

    Open loop: each TRACK goes at its scheduled time whether or not earlier
    answers have come (MTQP answers in order, so a slow answer shows up as
    latency, not as a lower rate).  Every answer must be ``+OK+`` with the
    envelope id asked for; a missing answer is a failure.
    """
    result = PacedResult()
    per_connection = int(rate * seconds) // connections
    result.planned = per_connection * connections
    interval = connections / rate
    opened = [await _connect(port) for _ in range(connections)]
    t0 = time.perf_counter() + 0.2

    async def one(index: int, responses: Responses, writer: asyncio.StreamWriter) -> None:
        sent_at: list[float] = []
        envids: list[bytes] = []
        # Stagger the connections so the total rate is even, not bursty.
        offset = index * interval / connections

        async def send() -> None:
            for n in range(per_connection):
                due = t0 + offset + n * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    result.max_send_lag = max(result.max_send_lag, -delay)
                line = line_for(n * connections + index)
                envids.append(_envid_of(line))
                sent_at.append(time.perf_counter())
                writer.write(line)
                result.sent += 1

        async def receive() -> None:
            for n in range(per_connection):
                try:
                    response = await responses.next()
                except (TimeoutError, ConnectionError) as e:
                    result.failed += per_connection - n
                    result.sample_failure = result.sample_failure or repr(e).encode()
                    return
                result.latencies.append(time.perf_counter() - sent_at[n])
                result.check(response, envids[n], require)

        await asyncio.gather(send(), receive())

    async def report() -> None:
        if progress is None:
            return
        for _ in range(int(seconds // 30) + 1):
            await asyncio.sleep(30)
            result.seconds = time.perf_counter() - t0
            progress(result.seconds, result)

    started = time.perf_counter()
    reporter = asyncio.ensure_future(report())
    try:
        await asyncio.wait_for(
            asyncio.gather(*(one(i, r, w) for i, (r, w, _) in enumerate(opened))),
            seconds + 2 * ANSWER_TIMEOUT + 60,
        )
    finally:
        reporter.cancel()
        result.seconds = time.perf_counter() - max(started, t0)
        for _, writer, _ in opened:
            await _close(writer)
    return result


@dataclass
class TimingResult:
    """Answer times of two kinds of TRACK, measured interleaved on one connection."""

    first: list[float] = field(default_factory=list)
    second: list[float] = field(default_factory=list)
    first_answers: set[bytes] = field(default_factory=set)
    second_answers: set[bytes] = field(default_factory=set)


async def timing_probe(
    port: int,
    first: Callable[[int], bytes],
    second: Callable[[int], bytes],
    tries: int,
    warmup: int = 200,
    seed: int = 7,
) -> TimingResult:
    """``tries`` of each kind, in pairs whose order is random, one TRACK in flight at a time."""
    rng = random.Random(seed)
    responses, writer, _ = await _connect(port)
    result = TimingResult()
    try:
        for n in range(warmup):
            writer.write((first if n % 2 else second)(n))
            await responses.next()
        for n in range(tries):
            order = [(first, result.first, result.first_answers)]
            order.append((second, result.second, result.second_answers))
            rng.shuffle(order)
            for make, times, answers in order:
                line = make(warmup + n)
                started = time.perf_counter()
                writer.write(line)
                answer = await responses.next()
                times.append(time.perf_counter() - started)
                answers.add(answer)
    finally:
        await _close(writer)
    return result


@dataclass
class IdleResult:
    greeted: int = 0
    refused: int = 0
    errors: int = 0


async def hold_idle(
    port: int,
    count: int,
    while_held: Callable[[IdleResult], Awaitable[None]],
    concurrency: int = 100,
    settle: float = 2.0,
) -> IdleResult:
    """Open ``count`` connections that read their greeting and sit; run ``while_held``; close."""
    result = IdleResult()
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(concurrency)

    async def open_one() -> None:
        # The semaphore keeps connects within the listen backlog, so none
        # waits out a SYN retry.
        async with gate:
            try:
                responses, writer, greeting = await _connect(port)
            except (OSError, TimeoutError):
                result.errors += 1
                return
            del responses
            writers.append(writer)
            if greeting.startswith(b"+OK"):
                result.greeted += 1
            else:
                result.refused += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(count))), 600)
        await asyncio.sleep(settle)
        await while_held(result)
    finally:
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.5)
    return result
