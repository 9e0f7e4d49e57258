"""`make bench`: run every benchmark, print a table, write JSON under bench/results/.

`python -m bench [NAME...] [--jobs N] [--runners M]`: the named benchmarks only; --jobs and
--runners size the runnerpools bench (a quick run: `python -m bench runnerpools --jobs 100
--runners 20`). The ui bench churns VMs for SHOAL_BENCH_UI_CHURN_SECONDS (default 600; 60 for a
quick run). Exits 1 when a row says it failed ("ok": false, e.g. leftovers after a run)."""

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    foundation,
    heartbeats,
    images,
    jobs,
    qemu,
    replicas,
    runnerpools,
    scheduler,
    tunnels,
    ui,
    warm,
    warmpool,
)

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run shoal's benchmarks.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run")
    parser.add_argument(
        "--jobs",
        type=int,
        default=runnerpools.JOBS,
        help="runnerpools: jobs queued (default %(default)s)",
    )
    parser.add_argument(
        "--runners",
        type=int,
        default=runnerpools.RUNNERS,
        help="runnerpools: the pool's maxRunners (default %(default)s)",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    wanted = set(args.names) or {
        "foundation",
        "scheduler",
        "heartbeats",
        "tunnels",
        "runnerpools",
        "ui",
        "replicas",
    }
    rows = []
    if "foundation" in wanted:
        rows += foundation.run()
    if "scheduler" in wanted:
        rows += scheduler.run()
    if "heartbeats" in wanted:
        rows += heartbeats.run()
    if "tunnels" in wanted:
        rows += tunnels.run()
    if "images" in wanted:  # not in the default set: writes 2 GiB and takes minutes
        rows += images.run()
    if "qemu" in wanted:  # not in the default set: needs QEMU and takes minutes
        rows += qemu.run()
    if "jobs" in wanted:  # not in the default set: needs QEMU and takes minutes
        rows += jobs.run()
    if "runnerpools" in wanted:
        rows += runnerpools.run(args.jobs, args.runners)
    if "ui" in wanted:  # SHOAL_BENCH_UI_CHURN_SECONDS=60 for a quick run (default 600)
        rows += ui.run()
    if "warm" in wanted:  # not in the default set: boots 20 guests, takes minutes
        rows += warm.run()
    if "replicas" in wanted:  # PostgreSQL, HAProxy and 3 replicas, ~4 minutes
        rows += replicas.run()
    if "warmpool" in wanted:  # not in the default set: boots ~40 guests, takes minutes
        rows += warmpool.run()
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>12}  unit")
    for row in rows:
        mark = "  FAILED" if row.get("ok") is False else ""
        print(f"{row['name']:<{width}}  {row['value']:>12.2f}  {row['unit']}{mark}")
    report = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "results": rows,
    }
    stem = "-".join(sorted(wanted))
    if "runnerpools" in wanted and (args.jobs, args.runners) != (
        runnerpools.JOBS,
        runnerpools.RUNNERS,
    ):  # a quick run does not overwrite the full one's figures
        stem += f"-{args.jobs}x{args.runners}"
    if "ui" in wanted and ui.churn_seconds() != ui.CHURN_SECONDS:
        stem += f"-churn{ui.churn_seconds():g}s"  # a quick run, as above
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {path}")
    failed = [row["name"] for row in rows if row.get("ok") is False]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
