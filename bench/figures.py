"""The figures of issue 7, each measured with its raw ceiling in the same run.

Each ``figure_*`` function starts what it needs (the daemon under twistd,
the raw ceilings of ``../shared/bench``), measures, stops everything it
started, and returns L{Row}s for the results table.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import common, loadgen, storegen
from bench.common import HOST, Children


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    ours: str
    ceiling: str = "-"
    ratio: str = "-"
    target: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    """Sizes and knobs; the defaults are the issue's figures."""

    messages: int = 1_000_000
    connections: int = 10
    tracks: int = 3000
    window: int = 4
    gateway_messages: int = 100_000
    gateway_tracks: int = 300
    soak_seconds: float = 60.0
    soak_rate: float = 500.0
    soak_connections: int = 5
    idle_connections: int = 10_000
    lookups: int = 20_000
    import_records: int = 100_000
    tries: int = 2000
    # Alternated runs of the ceiling and ours per throughput figure; best of each.
    rounds: int = 3
    profile_dir: Path | None = None
    profile_seconds: float = 10.0


class Bench:
    """One benchmark run: a work directory for configs and logs, and the settings."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.shared = common.shared_bench_dir()

    # -- starting things ------------------------------------------------------

    def _config(
        self, name: str, port: int, store: Path, chain: Sequence[tuple[str, int]] = ()
    ) -> Path:
        """A daemon config on ``port`` with limits high enough for the benchmark's own load."""
        lines = [
            "[server]",
            f'listen = "tcp:{port}:interface={HOST}"',
            f'hostname = "{name}"',
            # 10,000 idle connections from one address, and one connection
            # carrying every TRACK of a long run.
            "max_connections = 20000",
            "max_connections_per_address = 20000",
            "max_commands = 100000000",
            # The load comes from 127.0.0.1 and the timing check sends
            # thousands of failing TRACKs on purpose.
            'throttle_exempt = ["127.0.0.0/8"]',
            "",
            "[store]",
            f'path = "{store}"',
        ]
        if chain:
            lines += ["", "[chain]", 'report = "hops"']
            for inner_name, inner_port in chain:
                lines += [
                    "",
                    "[[chain.inner]]",
                    f'name = "{inner_name}"',
                    f'host = "{HOST}"',
                    f"port = {inner_port}",
                    'tls = "off"',
                ]
        path = self.workdir / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_daemon(
        self,
        children: Children,
        name: str,
        store: Path,
        chain: Sequence[tuple[str, int]] = (),
    ) -> tuple[subprocess.Popen[bytes], int]:
        """``twistd -n mtqpgw`` on a free port; returns once it greets."""
        port = common.free_port()
        config = self._config(name, port, store, chain)
        argv = common.twistd_command() + [
            "-n",
            "--pidfile=",
            f"--logfile={self.workdir / (name + '.log')}",
            "mtqpgw",
            "--config",
            str(config),
        ]
        proc = children.start(name, argv)
        common.wait_for_greeting(port, proc)
        return proc, port

    def start_raw(
        self, children: Children, script: str, name: str, *upstreams: int
    ) -> tuple[subprocess.Popen[bytes], int]:
        """A raw ceiling from the shared bench directory on a free port."""
        path = self.shared / script
        if not path.exists():
            raise SystemExit(f"{path} not found: set MTQPGW_SHARED_BENCH or --shared-bench")
        port = common.free_port()
        argv = [sys.executable, str(path), str(port), *map(str, upstreams)]
        proc = children.start(name, argv, cwd=self.shared)
        common.wait_for_greeting(port, proc)
        return proc, port

    def profile(self, children: Children, name: str, pid: int) -> subprocess.Popen[bytes] | None:
        """With --profile DIR: py-spy samples ``pid`` while the load runs (collapsed stacks)."""
        directory = self.settings.profile_dir
        if directory is None:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        argv = [
            str(spy) if spy.exists() else "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(self.settings.profile_seconds)),
            "--rate",
            "997",
            "--format",
            "raw",
            "--output",
            str(directory / f"{name}.folded"),
        ]
        return children.start(f"py-spy-{name}", argv)

    # -- the load --------------------------------------------------------------

    def _sample_lines(self, messages: int, per_connection: int, seed: int) -> list[list[bytes]]:
        rng = random.Random(seed)
        return [
            [common.track_line(rng.randrange(messages)) for _ in range(per_connection)]
            for _ in range(self.settings.connections)
        ]

    def _compare(
        self,
        ceiling_port: int,
        our_port: int,
        lines: list[list[bytes]],
        window: int,
        require: Sequence[bytes] = (),
        ceiling_pids: dict[str, int] | None = None,
        our_pids: dict[str, int] | None = None,
    ) -> tuple[loadgen.LoadResult, loadgen.LoadResult]:
        """The best of ``rounds`` runs of the same load on the ceiling and on ours, alternated.

        Both are running all along (an idle one costs nothing), so a burst of
        load from elsewhere on this shared machine hits one round of either,
        not a whole figure.  A warm-up first fills caches, the first sessions
        of a pool and the allocator.
        """
        warm = _warm_up_lines(lines, window)
        _load(ceiling_port, warm, window, False)
        _load(our_port, warm, window, True, require)
        ceilings, ours = [], []
        for _ in range(self.settings.rounds):
            ceilings.append(_load(ceiling_port, lines, window, False, pids=ceiling_pids))
            ours.append(_load(our_port, lines, window, True, require, pids=our_pids))
        best = (max(ceilings, key=lambda r: r.rate), max(ours, key=lambda r: r.rate))
        rounds = ", ".join(
            f"{c.rate:,.0f}/{o.rate:,.0f}" for c, o in zip(ceilings, ours, strict=True)
        )
        print(f"  rounds (ceiling/ours TRACK/s): {rounds}", flush=True)
        for what, results in (("ceiling", ceilings), ("ours", ours)):
            if results[0].cpu_us:
                per_round = "; ".join(_cpu_text(r.cpu_us) for r in results)
                print(f"  CPU per TRACK ({what}, each round): {per_round}", flush=True)
        return best

    @staticmethod
    def _must_be_positive(result: loadgen.LoadResult, what: str) -> None:
        """Stop unless every answer was positive; else print ``result`` as ``what``."""
        if result.failed or not result.ok:
            raise SystemExit(
                f"{what}: {result.failed} answers were not +OK+ for the envelope id asked, "
                f"e.g. {result.sample_failure!r}"
            )
        print(f"  {what}: {result.summary()}", flush=True)

    # -- figures -----------------------------------------------------------------

    def figure_server(self) -> list[Row]:
        s = self.settings
        store = storegen.cached_store("plain", s.messages)
        lines = self._sample_lines(s.messages, s.tracks, seed=1)
        with Children(self.workdir) as children:
            raw, raw_port = self.start_raw(children, "raw_server.py", "raw-server")
            proc, port = self.start_daemon(children, "server", store)
            spy = self.profile(children, "server", proc.pid)
            ceiling, ours = self._compare(
                raw_port,
                port,
                lines,
                s.window,
                ceiling_pids={"raw_server": raw.pid},
                our_pids={"server": proc.pid},
            )
            if spy is not None:
                spy.wait(s.profile_seconds + 30)
            floor = self._floor(children, store, lines, s.window)
        self._must_be_positive(ceiling, "raw_server")
        self._must_be_positive(ours, "mtqpgw server")
        self._must_be_positive(floor, "floor_server")
        print(
            f"  floor (raw_server plus the store look-up): {floor.rate / ceiling.rate:.2f} "
            "x raw_server",
            flush=True,
        )
        ratio = ours.rate / ceiling.rate
        return [
            Row(
                f"direct server, {s.messages:,} messages, {s.connections} connections, "
                f"pipelined {s.window} deep",
                f"{ours.rate:,.0f} TRACK/s",
                f"{ceiling.rate:,.0f} TRACK/s (raw_server)",
                f"{ratio:.2f}",
                ">= 0.5 x raw_server",
                ratio >= 0.5,
                {
                    "ours": _result_dict(ours),
                    "ceiling": _result_dict(ceiling),
                    "floor": _result_dict(floor),
                },
            )
        ]

    def _floor(
        self, children: Children, store: Path, lines: list[list[bytes]], window: int
    ) -> loadgen.LoadResult:
        """The best of ``rounds`` runs against bench/floor_server.py: raw_server plus the look-up.

        Run after the comparison, so it does not share its minutes.  It
        answers raw_server's canned report, so envelope ids are not checked;
        an unknown id would get ``-ERR`` and count as failed.
        """
        port = common.free_port()
        argv = [sys.executable, "-m", "bench.floor_server", str(port), str(store)]
        proc = children.start("floor-server", argv, cwd=common.REPO)
        common.wait_for_greeting(port, proc)
        _load(port, _warm_up_lines(lines, window), window, False)
        runs = [
            _load(port, lines, window, False, pids={"floor_server": proc.pid})
            for _ in range(self.settings.rounds)
        ]
        print(
            "  floor rounds (TRACK/s, CPU per TRACK): "
            + "; ".join(f"{r.rate:,.0f}, {_cpu_text(r.cpu_us)}" for r in runs),
            flush=True,
        )
        return max(runs, key=lambda r: r.rate)

    def _gateway_stores(self) -> tuple[Path, Path, Path]:
        n = self.settings.gateway_messages
        return (
            storegen.cached_store("gateway", n),
            storegen.cached_store("inner-a", n),
            storegen.cached_store("inner-b", n),
        )

    def _start_gateway(
        self, children: Children
    ) -> tuple[int, int, int, subprocess.Popen[bytes], dict[str, int]]:
        """Two inner servers and a gateway in front: ports, the gateway, every pid by role."""
        gateway_store, store_a, store_b = self._gateway_stores()
        inner_a, port_a = self.start_daemon(children, common.INNER_NAMES[0], store_a)
        inner_b, port_b = self.start_daemon(children, common.INNER_NAMES[1], store_b)
        proc, port = self.start_daemon(
            children,
            "gateway.bench.test",
            gateway_store,
            chain=[(common.INNER_NAMES[0], port_a), (common.INNER_NAMES[1], port_b)],
        )
        pids = {"gateway": proc.pid, "inner-a": inner_a.pid, "inner-b": inner_b.pid}
        return port, port_a, port_b, proc, pids

    # Every gateway answer must hold a part from each inner host.
    _INNER_PARTS = tuple(f"Reporting-MTA: dns; {name}".encode() for name in common.INNER_NAMES)

    def figure_gateway(self) -> list[Row]:
        s = self.settings
        lines = self._sample_lines(s.gateway_messages, s.gateway_tracks, seed=2)
        with Children(self.workdir) as children:
            raw_a, up_a = self.start_raw(children, "raw_server.py", "raw-inner-a")
            raw_b, up_b = self.start_raw(children, "raw_server.py", "raw-inner-b")
            relay, raw_port = self.start_raw(children, "raw_relay.py", "raw-relay", up_a, up_b)
            port, _, _, proc, pids = self._start_gateway(children)
            spy = self.profile(children, "gateway", proc.pid)
            ceiling, ours = self._compare(
                raw_port,
                port,
                lines,
                1,
                self._INNER_PARTS,
                ceiling_pids={"raw_relay": relay.pid, "inner-a": raw_a.pid, "inner-b": raw_b.pid},
                our_pids=pids,
            )
            if spy is not None:
                spy.wait(s.profile_seconds + 30)
        self._must_be_positive(ceiling, "raw_relay")
        self._must_be_positive(ours, "mtqpgw gateway")
        ratio = ours.rate / ceiling.rate
        return [
            Row(
                f"gateway, two inner servers, {s.connections} connections",
                f"{ours.rate:,.0f} TRACK/s",
                f"{ceiling.rate:,.0f} TRACK/s (raw_relay)",
                f"{ratio:.2f}",
                ">= 0.5 x raw_relay",
                ratio >= 0.5,
                {"ours": _result_dict(ours), "ceiling": _result_dict(ceiling)},
            )
        ]

    def figure_soak(self) -> list[Row]:
        s = self.settings
        messages = s.gateway_messages
        with Children(self.workdir) as children:
            port, port_a, port_b, _, _ = self._start_gateway(children)
            inner_ports = (port_a, port_b)
            time_wait_before = common.time_wait_count(inner_ports)
            seen: set[tuple[str, str]] = set()
            rng = random.Random(3)
            picks = [rng.randrange(messages) for _ in range(messages)]

            def line_for(n: int) -> bytes:
                return common.track_line(picks[n % messages])

            def progress(elapsed: float, result: loadgen.PacedResult) -> None:
                print(
                    f"  soak {elapsed:5.0f}s: {result.ok} +OK+, {result.failed} failed, "
                    f"{len(seen)} inner connections seen",
                    flush=True,
                )

            async def soak() -> loadgen.PacedResult:
                load = asyncio.ensure_future(
                    loadgen.paced(
                        port,
                        s.soak_rate,
                        s.soak_seconds,
                        s.soak_connections,
                        line_for,
                        self._INNER_PARTS,
                        progress,
                    )
                )
                # Pooled sessions live for seconds at least; sampling the
                # established connections twice a second sees each of them.
                for _ in range(int(s.soak_seconds * 2) + 600):
                    if load.done():
                        break
                    seen.update(await asyncio.to_thread(common.established_to, inner_ports))
                    await asyncio.sleep(0.5)
                return await load

            result = asyncio.run(soak())
            time_wait_after = common.time_wait_count(inner_ports)
            time_wait_all = common.time_wait_count()
        print(f"  soak: {result.summary()}", flush=True)
        achieved = result.ok / s.soak_seconds
        met = (
            result.failed == 0
            and result.ok == result.planned
            # The ~28,000 ephemeral ports: far from used up.
            and time_wait_after < 1000
        )
        return [
            Row(
                f"gateway at {s.soak_rate:g} TRACK/s for {s.soak_seconds:g} s "
                f"({s.soak_connections} client connections)",
                f"{result.ok:,} of {result.planned:,} +OK+, {result.failed} failed; "
                f"{len(seen)} inner connections opened; inner TIME_WAIT "
                f"{time_wait_before} -> {time_wait_after}",
                "-",
                "-",
                "no failed query, no ephemeral-port exhaustion",
                met,
                {
                    "result": _result_dict(result),
                    "planned": result.planned,
                    "achieved_rate": achieved,
                    "max_send_lag_s": result.max_send_lag,
                    "inner_connections_seen": len(seen),
                    "inner_time_wait_before": time_wait_before,
                    "inner_time_wait_after": time_wait_after,
                    "all_time_wait_after": time_wait_all,
                },
            )
        ]

    def figure_idle(self) -> list[Row]:
        s = self.settings
        store = storegen.cached_store("plain", min(s.messages, 100_000))
        with Children(self.workdir) as children:
            proc, port = self.start_daemon(children, "idle-server", store)
            # Some real work first, so that what is measured is connections,
            # not the first TRACK's imports and caches.
            lines = [[common.track_line(i) for i in range(200)]]
            asyncio.run(loadgen.closed_loop(port, lines, 4))
            time.sleep(1.0)
            before = common.vm_rss_kib(proc.pid)
            after: list[int] = []

            async def measure(_: loadgen.IdleResult) -> None:
                after.append(common.vm_rss_kib(proc.pid))

            held = asyncio.run(loadgen.hold_idle(port, s.idle_connections, measure))
        growth = (after[0] - before) / max(held.greeted, 1)
        print(
            f"  idle: {held.greeted} greeted, {held.refused} refused, {held.errors} errors; "
            f"VmRSS {before} KiB -> {after[0]} KiB",
            flush=True,
        )
        return [
            Row(
                f"{s.idle_connections:,} idle connections",
                f"{growth:.1f} KiB per connection (VmRSS {before:,} -> {after[0]:,} KiB, "
                f"{held.greeted:,} greeted)",
                "-",
                "-",
                "< 20 KiB per connection",
                growth < 20 and held.greeted == s.idle_connections,
                {
                    "rss_before_kib": before,
                    "rss_after_kib": after[0],
                    "greeted": held.greeted,
                    "refused": held.refused,
                    "errors": held.errors,
                    "kib_per_connection": growth,
                },
            )
        ]

    def figure_lookup(self) -> list[Row]:
        s = self.settings
        store = storegen.cached_store("plain", s.messages)
        out = subprocess.run(
            [sys.executable, "-m", "bench.lookup", str(store), str(s.messages), str(s.lookups)],
            cwd=common.REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        ).stdout
        stats = json.loads(out)
        daemon, pool, direct = stats["store"], stats["pool"], stats["sql"]
        print(f"  lookup: {stats}", flush=True)
        return [
            Row(
                f"store lookup at {s.messages:,} messages (SQLiteStore.lookup, "
                f"{s.lookups:,} random ids)",
                f"p99 {daemon['p99_ms']:.3f} ms (p50 {daemon['p50_ms']:.3f} ms, "
                f"max {daemon['max_ms']:.2f} ms)",
                f"bare SQL p99 {direct['p99_ms']:.3f} ms; via the adbapi thread "
                f"p99 {pool['p99_ms']:.3f} ms",
                "-",
                "p99 < 2 ms",
                daemon["p99_ms"] < 2.0,
                stats,
            )
        ]

    # Runs ``mtqp import`` (the cli's main) and prints how long main took, so
    # that the figure is the import itself, interpreter start-up apart.
    _IMPORT = (
        "import sys, time\n"
        "from mtqpgw.cli import main\n"
        "started = time.perf_counter()\n"
        "code = main(sys.argv[1:])\n"
        "print(f'import-seconds {time.perf_counter() - started:.6f}')\n"
        "sys.exit(code)\n"
    )

    def figure_import(self) -> list[Row]:
        s = self.settings
        source = storegen.cached_jsonl(s.import_records)
        target = self.workdir / "import.sqlite3"
        runs = []
        for _ in range(s.rounds):
            common.remove_sqlite(target)
            started = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    self._IMPORT,
                    "import",
                    "--store",
                    str(target),
                    str(source),
                ],
                cwd=common.REPO,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            wall = time.perf_counter() - started
            # "imported 100000 records into PATH, 0 bad lines" (importer.main)
            found = re.search(r"imported (\d+) records? into .*, (\d+) bad lines?", done.stdout)
            inside = re.search(r"import-seconds ([0-9.]+)", done.stdout)
            if (
                done.returncode != 0
                or found is None
                or inside is None
                or int(found[1]) != s.import_records
            ):
                raise SystemExit(f"mtqp import failed: {done.stdout} {done.stderr}")
            runs.append((float(inside[1]), wall))
        seconds, wall = min(runs)
        rate = s.import_records / seconds
        print(
            "  import: "
            + ", ".join(
                f"{s.import_records / a:,.0f} ({s.import_records / b:,.0f})" for a, b in runs
            )
            + " records/s (with process start)",
            flush=True,
        )
        return [
            Row(
                f"mtqp import of {s.import_records:,} records (JSON Lines into a new store; "
                f"best of {s.rounds})",
                f"{rate:,.0f} records/s ({s.import_records / wall:,.0f} with process start)",
                "-",
                "-",
                ">= 20,000 records/s",
                rate >= 20_000,
                {"runs_seconds_main_wall": runs, "records": s.import_records},
            )
        ]

    def figure_timing(self) -> list[Row]:
        s = self.settings
        store = storegen.cached_store("plain", s.messages)
        spread = max(s.messages - 1, 1)

        def pick(n: int) -> int:
            return (n * 7919) % spread

        unknown: Callable[[int], bytes] = lambda n: common.unknown_track_line(pick(n))  # noqa: E731
        wrong: Callable[[int], bytes] = lambda n: common.wrong_secret_track_line(pick(n))  # noqa: E731
        with Children(self.workdir) as children:
            _, port = self.start_daemon(children, "timing-server", store)
            result = asyncio.run(loadgen.timing_probe(port, unknown, wrong, s.tries))
        med_u, med_w = common.percentile(result.first, 0.5), common.percentile(result.second, 0.5)
        p90_u, p90_w = common.percentile(result.first, 0.9), common.percentile(result.second, 0.9)
        identical = (
            result.first_answers == result.second_answers and len(result.first_answers) == 1
        )
        spread_pct = abs(med_u - med_w) / min(med_u, med_w) * 100
        print(
            f"  timing: unknown median {med_u * 1e6:.0f} us p90 {p90_u * 1e6:.0f} us; "
            f"wrong secret median {med_w * 1e6:.0f} us p90 {p90_w * 1e6:.0f} us; "
            f"answers identical: {identical} {sorted(result.first_answers | result.second_answers)}",
            flush=True,
        )
        return [
            Row(
                f"unknown envid vs wrong secret ({s.tries:,} each, interleaved, one connection)",
                f"median {med_u * 1e6:.0f} vs {med_w * 1e6:.0f} us "
                f"(p90 {p90_u * 1e6:.0f} vs {p90_w * 1e6:.0f} us)",
                "-",
                f"{spread_pct:.1f}% apart",
                "same time class, same answer",
                identical and spread_pct < 10,
                {
                    "unknown_median_us": med_u * 1e6,
                    "unknown_p90_us": p90_u * 1e6,
                    "wrong_median_us": med_w * 1e6,
                    "wrong_p90_us": p90_w * 1e6,
                    "answers_identical": identical,
                    "answers": sorted(a.decode("ascii", "replace") for a in result.first_answers),
                },
            )
        ]


def _result_dict(result: loadgen.LoadResult) -> dict[str, Any]:
    data = asdict(result)
    data.pop("latencies")
    data["sample_failure"] = result.sample_failure.decode("ascii", "replace")
    data["rate"] = result.rate
    data["p50_ms"] = result.p(0.5) * 1e3
    data["p99_ms"] = result.p(0.99) * 1e3
    return data


def _warm_up_lines(lines: list[list[bytes]], window: int) -> list[list[bytes]]:
    """A tenth of each connection's lines (a window at least): fills caches, pools, allocator."""
    return [chunk[: max(window, len(chunk) // 10)] for chunk in lines]


def _load(
    port: int,
    lines: list[list[bytes]],
    window: int,
    check_envid: bool,
    require: Sequence[bytes] = (),
    pids: dict[str, int] | None = None,
) -> loadgen.LoadResult:
    """One L{loadgen.closed_loop} run, with the CPU time each of ``pids`` spent, in us per TRACK.

    CPU time per TRACK moves much less than TRACK/s on a shared machine:
    it does not count the time a process waited for a CPU.
    """
    # The load generator too: it shares the two CPUs with what it loads.
    watched = {**pids, "load generator": os.getpid()} if pids else {}
    before = {name: common.cpu_seconds(pid) for name, pid in watched.items()}
    result = asyncio.run(loadgen.closed_loop(port, lines, window, check_envid, require))
    per = 1e6 / result.ok if result.ok else 0.0
    for name, pid in watched.items():
        user, system = common.cpu_seconds(pid)
        result.cpu_us[name] = (user - before[name][0] + system - before[name][1]) * per
        result.cpu_us[name + " (system)"] = (system - before[name][1]) * per
    return result


def _cpu_text(cpu_us: dict[str, float]) -> str:
    return ", ".join(
        f"{name} {us:.0f} us ({cpu_us[name + ' (system)']:.0f} in the kernel)"
        for name, us in cpu_us.items()
        if not name.endswith(" (system)")
    )
