"""``python -m bench [FIGURE] [options]``: measure mtqpgw against the raw Twisted ceilings.

Figures: server, gateway, soak, idle, lookup, import, timing, or all (the
default).  Each prints its measurement and the matching ceiling from the same
run; at the end a table with the ratio, the target and whether it was met.
Everything runs on 127.0.0.1 and stops by itself; child processes are
stopped on the way out, also on errors and Ctrl-C.

Quick run:   python -m bench all --messages 100000 --seconds 20 --idle-connections 2000
The record:  python -m bench all --seconds 300 --json bench-results.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench import common
from bench.figures import Bench, Row, Settings

FIGURES = ("server", "gateway", "soak", "idle", "lookup", "import", "timing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("figure", nargs="?", default="all", choices=(*FIGURES, "all"))
    d = Settings()  # the defaults, kept in one place
    size = parser.add_argument_group("sizes (defaults are the issue's figures)")
    size.add_argument(
        "--messages", type=int, default=d.messages, help="store size (server, lookup, timing)"
    )
    size.add_argument(
        "--connections",
        type=int,
        default=None,
        help=f"client connections: load (server, gateway: {d.connections}), "
        f"soak ({d.soak_connections}), idle ({d.idle_connections})",
    )
    size.add_argument(
        "--tracks", type=int, default=d.tracks, help="TRACKs per connection (server)"
    )
    size.add_argument("--window", type=int, default=d.window, help="pipelining depth (server)")
    size.add_argument(
        "--gateway-messages", type=int, default=d.gateway_messages, help="gateway store size"
    )
    size.add_argument(
        "--gateway-tracks",
        type=int,
        default=d.gateway_tracks,
        help="TRACKs per connection (gateway)",
    )
    size.add_argument(
        "--seconds", type=float, default=d.soak_seconds, help="soak duration (the record: 300)"
    )
    size.add_argument("--rate", type=float, default=d.soak_rate, help="soak TRACK/s")
    size.add_argument(
        "--idle-connections", type=int, default=d.idle_connections, help="idle figure, in all"
    )
    size.add_argument("--lookups", type=int, default=d.lookups, help="look-ups timed (lookup)")
    size.add_argument(
        "--records", type=int, default=d.import_records, help="records imported (import)"
    )
    size.add_argument("--tries", type=int, default=d.tries, help="TRACKs of each kind (timing)")
    size.add_argument(
        "--rounds",
        type=int,
        default=d.rounds,
        help="alternated ceiling/ours runs (server, gateway)",
    )
    where = parser.add_argument_group("where")
    where.add_argument(
        "--shared-bench",
        type=Path,
        default=None,
        help="the raw ceilings' directory (default ../shared/bench, or $MTQPGW_SHARED_BENCH)",
    )
    where.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="built stores and import files (default bench/.cache, or $MTQPGW_BENCH_CACHE)",
    )
    where.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs)"
    )
    where.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    where.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="server and gateway: py-spy samples the daemon into DIR (collapsed stacks)",
    )
    where.add_argument("--profile-seconds", type=float, default=d.profile_seconds)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(
        messages=args.messages,
        tracks=args.tracks,
        window=args.window,
        gateway_messages=args.gateway_messages,
        gateway_tracks=args.gateway_tracks,
        soak_seconds=args.seconds,
        soak_rate=args.rate,
        idle_connections=args.idle_connections,
        lookups=args.lookups,
        import_records=args.records,
        tries=args.tries,
        rounds=args.rounds,
        profile_dir=args.profile,
        profile_seconds=args.profile_seconds,
    )
    # --connections means what the one figure asked for counts.
    if args.connections is not None:
        if args.figure == "soak":
            s.soak_connections = args.connections
        elif args.figure == "idle":
            s.idle_connections = args.connections
        else:
            s.connections = args.connections
    return s


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[Row]) -> str:
    lines = [
        "| figure | ours | ceiling (same run) | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            "| "
            + " | ".join(
                _cell(x) for x in (row.figure, row.ours, row.ceiling, row.ratio, row.target, met)
            )
            + " |"
        )
    return "\n".join(lines)


def machine_note() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                "unknown CPU",
            )
    except OSError:
        model = "unknown CPU"
    import twisted

    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"Twisted {twisted.__version__}, {platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.shared_bench is not None:
        os.environ["MTQPGW_SHARED_BENCH"] = str(args.shared_bench.resolve())
    if args.cache is not None:
        os.environ["MTQPGW_BENCH_CACHE"] = str(args.cache.resolve())
    # The idle figure holds thousands of client sockets in this process.
    common.raise_fd_limit()
    # Child processes (storegen, lookup, the import) import bench from here.
    os.chdir(common.REPO)
    settings = settings_from(args)
    figures = FIGURES if args.figure == "all" else (args.figure,)
    workdir = Path(tempfile.mkdtemp(prefix="mtqpgw-bench-"))
    bench = Bench(workdir, settings)
    rows: list[Row] = []
    started = datetime.datetime.now(datetime.UTC)
    print(f"mtqpgw benchmark {started:%Y-%m-%d %H:%M} UTC; {machine_note()}", flush=True)
    print(f"work directory {workdir}", flush=True)
    try:
        for name in figures:
            print(f"== {name}", flush=True)
            rows += getattr(bench, f"figure_{name}")()
    finally:
        if rows:
            print()
            print(table(rows))
        if args.json is not None and rows:
            args.json.write_text(
                json.dumps(
                    {
                        "date": started.isoformat(timespec="seconds"),
                        "machine": machine_note(),
                        "argv": sys.argv[1:] if argv is None else argv,
                        "rows": [asdict(row) for row in rows],
                    },
                    indent=2,
                    default=str,
                )
                + "\n"
            )
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
