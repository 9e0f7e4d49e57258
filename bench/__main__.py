"""`make bench`: run every benchmark, print a table, write JSON under bench/results/."""

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import foundation, heartbeats, images, jobs, qemu, scheduler, tunnels

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    wanted = set(sys.argv[1:]) or {"foundation", "scheduler", "heartbeats", "tunnels"}
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
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>12}  unit")
    for row in rows:
        print(f"{row['name']:<{width}}  {row['value']:>12.2f}  {row['unit']}")
    report = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "results": rows,
    }
    path = RESULTS / f"{'-'.join(sorted(wanted))}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
