"""`shoal controller status`: the controller's replicas, which one leads, and its epoch."""

from typing import Any

from shoal.cli.common import ContextOpt, connect
from shoal.cli.output import Format, OutputOpt, print_data, print_kv, print_section
from shoal.client import API


def _replica_row(replica: dict[str, Any]) -> list[str]:
    return [
        replica["replica"],
        replica["address"] or "-",
        "up" if replica["up"] else "gone",
        "yes" if replica["leader"] else "",
        f"{replica['lastSeenSecondsAgo']:.0f}s ago",
    ]


def controller_status(context: ContextOpt = None, output: OutputOpt = Format.table) -> None:
    """Show the controller's replicas (up or gone), the leader and its epoch (the fencing token
    its writes carry), as the database's clock sees them."""
    with connect(context) as target:
        status: dict[str, Any] = target.client.request("GET", f"{API}/controllerstatus")
    if output in (Format.json, Format.yaml):
        print_data(status, output)
        return
    leader = status.get("leader") or {}
    print_kv(
        [
            ("Leader", leader.get("replica") or "<none>"),
            ("Epoch", str(leader.get("epoch", 0))),
            ("Lease expires in", f"{leader.get('expiresInSeconds', 0):.0f}s"),
            ("Answered by", str(status.get("servedBy", ""))),
        ]
    )
    rows = [_replica_row(r) for r in status.get("replicas") or []]
    print_section("Replicas", ["REPLICA", "ADDRESS", "STATE", "LEADER", "LAST SEEN"], rows)
