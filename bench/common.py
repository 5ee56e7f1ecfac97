"""Shared pieces of the benchmark: paths, the synthetic records, child processes, ports.

Everything here talks to 127.0.0.1 only.  Child processes are started through
L{Children}, a context manager that kills whatever it started on the way out,
whatever happened in between.
"""

from __future__ import annotations

import base64
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from mtqpgw.certifier import certifier_for
from mtqpgw.wire import track_line as _wire_track_line

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

# Bump when the synthetic records change, so cached stores are rebuilt.
DATA_VERSION = 1

# The synthetic records expire long after any run (2100-01-01T00:00:00Z), so
# a cached store stays valid; the benchmark never measures expiry.
EXPIRES = 4_102_444_800
ARRIVAL = "Mon, 30 Nov 2026 15:15:15 -0500"
ATTEMPT = "Mon, 30 Nov 2026 15:16:02 -0500"

# The names the gateway's records give its two inner hosts (Remote-MTA).
INNER_NAMES = ("inner-a.bench.test", "inner-b.bench.test")


def shared_bench_dir() -> Path:
    """``../shared/bench`` beside the repository, or ``$MTQPGW_SHARED_BENCH``."""
    override = os.environ.get("MTQPGW_SHARED_BENCH")
    return Path(override) if override else REPO.parent / "shared" / "bench"


def cache_dir() -> Path:
    """Where built stores and import files are kept between runs (``$MTQPGW_BENCH_CACHE``)."""
    override = os.environ.get("MTQPGW_BENCH_CACHE")
    path = Path(override) if override else REPO / "bench" / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- The synthetic messages --------------------------------------------------
#
# Message ``i`` has a fixed envelope id and secret, so that a load generator
# can ask for any message of a store built in another process (or another
# run) and know the answer must be positive.


def envid(i: int) -> str:
    return f"bench-{i:08d}@bench.example"


def secret_octets(i: int) -> bytes:
    return b"bench secret %d" % i


def wire_secret(i: int) -> str:
    """The mtrk-secret as sent in TRACK: base64 of the secret octets."""
    return base64.b64encode(secret_octets(i)).decode("ascii")


def certifier(i: int) -> str:
    return certifier_for(secret_octets(i))


def track_line(i: int) -> bytes:
    return _wire_track_line(envid(i), wire_secret(i))


def unknown_track_line(i: int) -> bytes:
    """A well-formed TRACK for an envelope id no store holds.

    The id sorts right after message ``i``'s, so its look-up descends the
    index to the same pages a known id's does (an attacker probes ids like
    real ones); ids with a prefix of their own would all meet the same few
    cached pages and look faster than they are.
    """
    return _wire_track_line(f"bench-{i:08d}x@bench.example", wire_secret(i))


def wrong_secret_track_line(i: int) -> bytes:
    """A TRACK for message ``i`` with another message's secret (same length class)."""
    return _wire_track_line(envid(i), wire_secret(i + 1))


# -- Processes and ports -------------------------------------------------------


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def remove_sqlite(path: Path) -> None:
    """Remove an SQLite file and its ``-wal`` and ``-shm`` companions, where present."""
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank below), NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def twistd_command() -> list[str]:
    """twistd from the running interpreter's environment."""
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def wait_for_greeting(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until something on ``port`` greets with ``+OK``; fail if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=2.0) as s:
                if s.recv(64).startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"nothing greeted on port {port} within {timeout:g}s ({last})")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of ``pid`` so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; the fields after it don't.
        fields = f.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of the whole line, in clock ticks.
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def vm_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Children:
    """Child processes started for one figure; all are stopped when the block ends.

    with Children(workdir) as children:
        proc = children.start("server", [...])
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.out", "ab")  # closed in stop_all
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd or self.workdir,
            # Between fork and exec: the daemon must be able to hold 10,000
            # idle connections, which the usual soft limit of 1024 is not.
            preexec_fn=raise_fd_limit,
        )
        self.procs.append((name, proc, log))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM (a clean reactor shutdown), then SIGKILL after ``timeout`` seconds."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop_all(self) -> None:
        for _, proc, log in reversed(self.procs):
            try:
                self.stop(proc)
            finally:
                log.close()
        self.procs = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def _port_filter(ports: Sequence[int]) -> list[str]:
    """An ``ss`` filter for connections with either end on one of ``ports``."""
    if not ports:
        return []
    terms = " or ".join(f"dport = :{p} or sport = :{p}" for p in ports)
    return [f"( {terms} )"]


def time_wait_count(ports: Sequence[int] = ()) -> int:
    """Sockets in TIME_WAIT (``ss -tan state time-wait``), all or those on ``ports``."""
    out = subprocess.run(
        ["ss", "-tanH", "state", "time-wait", *_port_filter(ports)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def established_to(ports: Sequence[int]) -> set[tuple[str, str]]:
    """(local, peer) address pairs of established connections towards ``ports``."""
    terms = " or ".join(f"dport = :{p}" for p in ports)
    out = subprocess.run(
        ["ss", "-tanH", "state", "established", f"( {terms} )"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    pairs = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            pairs.add((fields[-2], fields[-1]))
    return pairs
