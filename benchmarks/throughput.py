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
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RAWBENCH = HERE.parent.parent / "shared" / "bench" / "rawbench.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"cavalcade did not listen on {port}")


def cavalcade_cmd() -> list[str]:
    exe = shutil.which("cavalcade", path=str(Path(sys.executable).parent)) or shutil.which(
        "cavalcade"
    )
    return [exe] if exe else [sys.executable, "-m", "cavalcade.cli"]


def fresh_database(server_url: str) -> str:
    """CREATE DATABASE on the given server; returns the new database's URL."""
    import asyncio

    import asyncpg

    name = "cavalcade_bench_" + uuid.uuid4().hex[:8]

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


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
    ap.add_argument(
        "--database-url",
        default=os.environ.get("CAVALCADE_TEST_DATABASE_URL"),
        help="a PostgreSQL server where a fresh database may be created "
        "(default: the embedded PostgreSQL in a temporary data dir)",
    )
    args = ap.parse_args()
    if not args.rawbench.exists():
        raise SystemExit(f"rawbench not found at {args.rawbench} (use --rawbench)")

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="cavalcade-bench-")
    cmd = cavalcade_cmd()
    if args.database_url:
        db = fresh_database(args.database_url)
        subprocess.run(
            [*cmd, "db", "upgrade", "--database-url", db], check=True, capture_output=True
        )
        serve = [*cmd, "serve", "--port", str(port), "--database-url", db]
        where = "external PostgreSQL"
    else:
        serve = [*cmd, "serve", "--port", str(port), "--data-dir", tmp]
        where = "embedded PostgreSQL"
    log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115
    node = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        cav_url = f"amqp://guest:guest@127.0.0.1:{port}/"
        extra = ["--size", str(args.size)]
        results: dict[str, list[dict]] = {"cavalcade": [], "rabbitmq": []}
        for r in range(args.rounds):
            results["cavalcade"].append(rawbench(args.rawbench, cav_url, args.n, False, extra))
            results["rabbitmq"].append(
                rawbench(args.rawbench, args.rabbitmq_url, args.n, not args.classic, extra)
            )
            print(
                f"round {r + 1}: cavalcade {results['cavalcade'][-1]['rate']:.0f} msg/s, "
                f"rabbitmq {results['rabbitmq'][-1]['rate']:.0f} msg/s",
                flush=True,
            )
        med = {k: statistics.median(x["rate"] for x in v) for k, v in results.items()}
        p99 = {k: statistics.median(x["p99_ms"] for x in v) for k, v in results.items()}
        kind = "classic" if args.classic else "quorum"
        print(
            json.dumps(
                {
                    "messages": args.n,
                    "size": args.size,
                    "rounds": args.rounds,
                    "cavalcade_on": where,
                    "rabbitmq_queue": kind,
                    "cavalcade_rate": round(med["cavalcade"]),
                    "rabbitmq_rate": round(med["rabbitmq"]),
                    "ratio": round(med["cavalcade"] / med["rabbitmq"], 3),
                    "cavalcade_p99_ms": p99["cavalcade"],
                    "rabbitmq_p99_ms": p99["rabbitmq"],
                }
            )
        )
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
