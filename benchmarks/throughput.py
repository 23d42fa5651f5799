#!/usr/bin/env python3
"""Cavalcade vs RabbitMQ, side by side in one run, with ../shared/bench/rawbench.py.

Starts a Cavalcade node (on a fresh database of the PostgreSQL given, or the
embedded one in a temporary data dir), then alternates rawbench runs against
it and against RabbitMQ (quorum queue by default: both confirm only after a
durable write) and prints medians and the ratio.

    python benchmarks/throughput.py --rounds 3 -n 20000
    python benchmarks/throughput.py --database-url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent
DEFAULT_RAWBENCH = HERE.parent.parent / "shared" / "bench" / "rawbench.py"


def rawbench(rawbench_path: Path, url: str, n: int, quorum: bool, extra: list[str]) -> dict:
    cmd = [sys.executable, str(rawbench_path), "--url", url, "-n", str(n), *extra]
    if quorum:
        cmd.append("--quorum")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"rawbench failed against {url}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rawbench", type=Path, default=DEFAULT_RAWBENCH)
    ap.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--classic", action="store_true", help="RabbitMQ classic queue, not quorum")
    harness.add_database_option(ap)
    args = ap.parse_args()
    if not args.rawbench.exists():
        raise SystemExit(f"rawbench not found at {args.rawbench} (use --rawbench)")

    with (
        harness.work_dir("cavalcade-bench-") as tmp,
        harness.cavalcade_node(args.database_url, tmp) as cav_url,
    ):
        extra = ["--size", str(args.size)]
        results = harness.alternate_rounds(
            args.rounds,
            lambda: rawbench(args.rawbench, cav_url, args.n, False, extra),
            lambda: rawbench(args.rawbench, args.rabbitmq_url, args.n, not args.classic, extra),
            "msg/s",
        )
        med = harness.medians(results, "rate")
        p99 = harness.medians(results, "p99_ms")
        kind = "classic" if args.classic else "quorum"
        print(
            json.dumps(
                {
                    "messages": args.n,
                    "size": args.size,
                    "rounds": args.rounds,
                    "cavalcade_on": harness.database_label(args.database_url),
                    "rabbitmq_queue": kind,
                    "cavalcade_rate": round(med["cavalcade"]),
                    "rabbitmq_rate": round(med["rabbitmq"]),
                    "ratio": round(med["cavalcade"] / med["rabbitmq"], 3),
                    "cavalcade_p99_ms": p99["cavalcade"],
                    "rabbitmq_p99_ms": p99["rabbitmq"],
                }
            )
        )


if __name__ == "__main__":
    main()
