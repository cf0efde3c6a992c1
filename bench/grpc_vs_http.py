"""The gateway's CPU per sync request to a KServe v2 backend over gRPC vs over HTTP, in one run.

One real ``render-gateway serve`` process (embedded default stores) with two backends on the SAME
fixed-response backend (``bench/fixed_backend.py``, which serves both transports from one
process): ``type = "http"`` (``endpoint = "http://…"``, binary-tensor ``infer``) and
``type = "grpc"`` (``endpoint = "grpc://…"``, ``ModelInfer``), both ``streaming = false``,
chosen per request with ``?backend=``. Rounds alternate the transports (the order flips every
round, so drift in the machine's load falls on both); each round is N sync requests at a fixed
concurrency from this process (aiohttp, keep-alive). Per round and transport: the gateway's
utime + stime (all threads, /proc) over the window / requests, the fixed backend's the same
way, requests/s and p50/p99 latency. The report gives each transport's medians over the rounds
and the ratio grpc/http. The backend's per-route counters check that every request of a round
reached the backend over the transport it was meant for.

Everything binds 127.0.0.1 on free ports, lives in a temporary directory, and is stopped on
exit, errors included.

    python bench/grpc_vs_http.py [--rounds 4] [--requests 1000] [--warmup 200] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# A sibling script (bench/ is sys.path[0] when this file runs): its process, gateway and load
# helpers are the ones every gateway benchmark uses.
from gateway_overhead import (
    BENCH,
    JSON,
    SYNC_BODY,
    Processes,
    Run,
    backend_stats,
    connector,
    create_key,
    drive,
    free_port,
    gateway_config,
    measured,
    poster,
    prepare_gateway,
    start_gateway,
    wait_for,
)

TRANSPORTS = ("http", "grpc")
ROUTE = "/image/sd/tiny/t2i"


@dataclass
class Round:
    transport: str
    run: Run
    reached: dict[str, int]  # backend counters that moved in the window

    @property
    def gateway_ms(self) -> float:
        return self.run.per_request_ms(self.run.server_cpu)

    @property
    def backend_ms(self) -> float:
        return self.run.per_request_ms(self.run.backend_cpu)


async def run_all(args: argparse.Namespace, procs: Processes, root: Path) -> list[Round]:
    http_port, grpc_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{http_port}"
    backend = procs.start(
        "fixed-backend",
        [sys.executable, str(BENCH / "fixed_backend.py"), "--port", str(http_port),
         "--grpc-port", str(grpc_port)],
    )  # fmt: skip
    config = gateway_config(
        [
            {"id": "fixed-http", "endpoint": backend_url, "type": "http", "streaming": False},
            {"id": "fixed-grpc", "endpoint": f"grpc://127.0.0.1:{grpc_port}", "type": "grpc",
             "streaming": False},
        ]
    )  # fmt: skip
    data_dir, config_path = prepare_gateway(root, "gateway", config)
    key = await asyncio.to_thread(create_key, config_path, data_dir)
    async with aiohttp.ClientSession() as session:
        # gRPC listens before HTTP does: HTTP ready means the gateway's first probes find both.
        await wait_for(session, backend_url + "/v2/health/ready", 200,
                       lambda: procs.check("fixed-backend", backend))  # fmt: skip
        gateway = start_gateway(procs, "gateway", config_path, data_dir, key)
        await wait_for(session, gateway.url + "/ready", 200,
                       lambda: procs.check("gateway", gateway.process))  # fmt: skip

    headers = {**JSON, **gateway.auth}
    sends = {t: poster(f"{gateway.url}{ROUTE}?backend={t}", SYNC_BODY, headers) for t in TRANSPORTS}
    sessions = {t: aiohttp.ClientSession(connector=connector(args.concurrency)) for t in TRANSPORTS}
    rounds: list[Round] = []
    try:
        async with aiohttp.ClientSession() as stats_session:
            for transport in TRANSPORTS:
                warm = await drive(
                    sessions[transport], args.warmup, args.concurrency, sends[transport], keep=True
                )
                bad = {s: c for s, c in warm.statuses.items() if s != 200}
                if bad:
                    raise RuntimeError(
                        f"{transport}: warm-up answered {bad}: {warm.bodies[0][:300]!r}"
                    )
                if not warm.bodies[-1].startswith(b"\x89PNG"):
                    raise RuntimeError(f"{transport}: the answer is not the backend's PNG")
            for number in range(args.rounds):
                order = TRANSPORTS if number % 2 == 0 else TRANSPORTS[::-1]
                for transport in order:
                    before = await backend_stats(stats_session, backend_url)
                    run = await measured(
                        sessions[transport], args.requests, args.concurrency, sends[transport],
                        gateway.process.pid, backend.pid,
                    )  # fmt: skip
                    after = await backend_stats(stats_session, backend_url)
                    moved = {k: v - before.get(k, 0) for k, v in after.items()}
                    reached = {
                        k: v for k, v in moved.items() if v and k not in ("connections", "requests")
                    }
                    rounds.append(Round(transport, run, reached))
                    procs.check("gateway", gateway.process)
                    procs.check("fixed-backend", backend)
    finally:
        for session in sessions.values():
            await session.close()
    return rounds


def check_routing(rounds: list[Round], requests: int) -> list[str]:
    """Each round's requests reached the backend's infer over its own transport, and only those
    (stats lookups between rounds count too: those are listed, not failed)."""
    problems = []
    for number, one in enumerate(rounds):
        infers = one.reached.get(f"{one.transport}_infer", 0)
        other = next(t for t in TRANSPORTS if t != one.transport)
        stray = one.reached.get(f"{other}_infer", 0)
        bad = sum(c for s, c in one.run.statuses.items() if s != 200)
        if infers != requests or stray or bad:
            problems.append(
                f"round {number // 2 + 1} {one.transport}: {infers} infers over "
                f"{one.transport}, {stray} over {other}, {bad} non-200"
            )
    return problems


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    print(
        f"\nsync requests through one gateway to one fixed backend: {args.rounds} rounds x "
        f"{args.requests} requests per transport (after {args.warmup} warm-up each), "
        f"concurrency {args.concurrency}, transports alternating"
    )
    header = (
        f"{'round':>5} {'transport':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'gateway':>8} {'backend':>8}  other backend calls"
    )
    print(header)
    print(f"{'':>5} {'':>9} {'':>8} {'':>8} {'':>8} {'CPU ms':>8} {'CPU ms':>8}")
    for number, one in enumerate(rounds):
        extra = {k: v for k, v in one.reached.items() if not k.endswith("_infer")}
        print(
            f"{number // 2 + 1:>5} {one.transport:>9} {one.run.rate:8.0f} "
            f"{one.run.pct(0.5):8.2f} {one.run.pct(0.99):8.2f} {one.gateway_ms:8.3f} "
            f"{one.backend_ms:8.3f}  {extra or '-'}"
        )
    medians: dict[str, dict[str, float]] = {}
    for transport in TRANSPORTS:
        mine = [r for r in rounds if r.transport == transport]
        medians[transport] = {
            "req/s": statistics.median(r.run.rate for r in mine),
            "p50 ms": statistics.median(r.run.pct(0.5) for r in mine),
            "p99 ms": statistics.median(r.run.pct(0.99) for r in mine),
            "gateway CPU ms/req": statistics.median(r.gateway_ms for r in mine),
            "backend CPU ms/req": statistics.median(r.backend_ms for r in mine),
        }
    print(f"\nmedians over the rounds   {'http':>9} {'grpc':>9} {'grpc/http':>10}")
    for name in medians["http"]:
        http, grpc = medians["http"][name], medians["grpc"][name]
        print(f"  {name:22} {http:9.3f} {grpc:9.3f} {grpc / http:10.2f}")
    per_round = [
        b.gateway_ms / a.gateway_ms
        for a, b in (
            sorted(rounds[i : i + 2], key=lambda r: r.transport != "http")
            for i in range(0, len(rounds), 2)
        )
    ]
    print(
        "  gateway CPU grpc/http per round: "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + f"  (median {statistics.median(per_round):.2f})"
    )
    print(
        "  CPU ms/req: utime+stime of that process over the round's window / requests; "
        "'other backend calls': metadata/statistics reads the backend saw in the window"
    )
    problems = check_routing(rounds, args.requests)
    if problems:
        raise RuntimeError("requests did not go where they were sent: " + "; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per transport")
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if min(args.rounds, args.requests, args.warmup, args.concurrency) < 1:
        parser.error("rounds, requests, warm-up and concurrency must be at least 1")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; load average before: {load}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grpc-vs-http-") as scratch:
        root = Path(scratch)
        procs = Processes(root)
        try:
            try:
                import uvloop
            except ImportError:
                rounds = asyncio.run(run_all(args, procs, root))
            else:
                rounds = uvloop.run(run_all(args, procs, root))
        finally:
            procs.stop_all()
    report(rounds, args)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntotal {time.monotonic() - started:.0f} s; load average after: {load}")


if __name__ == "__main__":
    main()
