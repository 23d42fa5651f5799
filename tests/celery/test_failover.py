"""Celery survives the death of its broker node (CI-sized; the full size is
``benchmarks/celery_failover.py``).

Two nodes on one database, a producer and two prefork workers (-c 2) on a broker_url
listing both, acks_late + reject_on_worker_lost, confirmed publishes, tasks counted in
Redis. The node everyone uses is SIGKILLed (or SIGTERMed, or the database crashes) and
comes back a few seconds later. No accepted task may be lost and no worker may exit;
the longest gap in execution is printed, not asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import failover

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not failover.redis_available(), reason="no Redis on 127.0.0.1:6379"),
]

TASKS, DURATION, FAULT_AT, REPAIR_AFTER = 600, 8.0, 3.0, 3.0


def check(report: failover.Report) -> None:
    print(f"\n{failover.TABLE_HEAD}\n{report.row()}\n{report.summary()}")
    problems = []
    if report.lost:
        problems.append(f"{report.lost} accepted tasks never ran: {report.lost_sample}")
    if report.worker_exits:
        problems.append(f"{report.worker_exits} worker(s) exited")
    if report.accepted < TASKS * 0.9:
        problems.append(f"only {report.accepted} of {TASKS} tasks accepted")
    if problems:
        for name, text in report.logs.items():
            print(f"\n--- worker {name}:\n{text[-6000:]}")
    assert not problems, problems


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def pair(database_url: str, workdir: Path) -> Iterator[list[failover.Node]]:
    with failover.node_pair(database_url, workdir) as nodes:
        yield nodes


@pytest.mark.parametrize("fault", ["sigkill", "sigterm"])
def test_node_fault_loses_no_task_and_no_worker(pair, workdir, fault):
    report = failover.run(
        [n.url for n in pair],
        failover.node_fault(fault, pair[0]),
        workdir,
        tasks=TASKS,
        duration=DURATION,
        fault_at=FAULT_AT,
        repair_after=REPAIR_AFTER,
    )
    check(report)
    if fault == "sigkill":
        assert "is gone (its database session ended)" in pair[1].log()


def test_database_crash_loses_no_task_and_no_worker(workdir):
    with failover.private_postgres() as (embedded, url):
        with failover.node_pair(url, workdir) as nodes:
            report = failover.run(
                [n.url for n in nodes],
                failover.database_fault(embedded),
                workdir,
                tasks=TASKS,
                duration=DURATION,
                fault_at=FAULT_AT,
                repair_after=REPAIR_AFTER,
            )
            logs = [n.log() for n in nodes]
    check(report)
    for text in logs:
        assert "fenced" not in text
        # Quiet outage logs: one line when the database is lost, one when it is back.
        assert text.count("lost the database") == 1, text[-3000:]
        assert text.count("database back after") == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert "failed" not in text, text[-3000:]
