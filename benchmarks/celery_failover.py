#!/usr/bin/env python3
"""Celery through the death of its broker node, full size (the CI-sized version is
``tests/celery/test_failover.py``; both run ``tests/celery/failover.py``).

Per row: two Cavalcade nodes on one database, a producer and two ``celery worker -P
prefork -c 2`` on a ``broker_url`` listing both (all start on the first node),
``task_acks_late`` + ``task_reject_on_worker_lost``, confirmed publishes; N tasks over D
seconds, each counting itself in Redis (127.0.0.1:6379, a unique key prefix). At
``--fault-at`` seconds the first node is SIGTERMed or SIGKILLed and restarted
``--node-back`` seconds later, or the PostgreSQL the nodes use (a private embedded
cluster) is crashed with ``pg_ctl stop -m immediate`` and started ``--db-back`` seconds
later. No supervisor restarts anything. Prints the table of the issue, then one JSON
line per row.

    python benchmarks/celery_failover.py
    python benchmarks/celery_failover.py -n 2000 --duration 10 --faults sigkill
    python benchmarks/celery_failover.py --database-url postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack

import harness

from tests.celery import failover

LABELS = {
    "none": "none",
    "sigterm": "SIGTERM (graceful)",
    "sigkill": "SIGKILL, no supervisor",
    "pgcrash": "PostgreSQL crashed",
}


def one_row(fault: str, args: argparse.Namespace) -> failover.Report:
    with ExitStack() as stack:
        tmp = stack.enter_context(harness.work_dir(f"cavalcade-failover-{fault}-"))
        if fault == "pgcrash":
            embedded, db = stack.enter_context(failover.private_postgres())
        else:
            server = args.database_url or stack.enter_context(harness.embedded_server(tmp / "data"))
            db = stack.enter_context(harness.temporary_database(server))
        nodes = stack.enter_context(failover.node_pair(db, tmp))
        if fault == "none":
            injected = None
        elif fault == "pgcrash":
            injected = failover.database_fault(embedded)
        else:
            injected = failover.node_fault(fault, nodes[0])
        report = failover.run(
            [n.url for n in nodes],
            injected,
            tmp,
            tasks=args.n,
            duration=args.duration,
            fault_at=args.fault_at,
            repair_after=args.db_back if fault == "pgcrash" else args.node_back,
            drain_timeout=args.drain_timeout,
        )
        report.fault = LABELS[fault]
        if fault == "pgcrash":
            report.fault += f", back after {args.db_back:g} s"
        if args.show_logs:
            for n in nodes:
                print(f"--- node {n.port}:\n{n.log()[-4000:]}")
        return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="tasks per row")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds to send them over")
    ap.add_argument("--faults", default="none,sigterm,sigkill,pgcrash")
    ap.add_argument("--fault-at", type=float, default=20.0)
    ap.add_argument("--node-back", type=float, default=5.0, help="restart the node after")
    ap.add_argument("--db-back", type=float, default=10.0, help="start PostgreSQL after")
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    ap.add_argument("--show-logs", action="store_true")
    harness.add_database_option(ap, "an embedded PostgreSQL in a temporary folder")
    args = ap.parse_args()
    if not failover.redis_available():
        raise SystemExit(f"no Redis at {failover.REDIS_URL}")
    reports = []
    for fault in args.faults.split(","):
        report = one_row(fault, args)
        reports.append(report)
        print(json.dumps(report.summary()), flush=True)
    print()
    print(failover.TABLE_HEAD)
    for report in reports:
        print(report.row())


if __name__ == "__main__":
    main()
