"""A refresh storm against `quotehelper pccs serve` with a warm cache, on SQLite and on PostgreSQL, next to
a bare endpoint of the same server stack (aiohttp, one route returning a fixed body) in the same run.

N clients (simulated nodes, default 1000) each ask, concurrently, what a node asks a PCCS: pckcert (QCNL's
request shape), tcb, qe/identity, pckcrl and rootcacrl, one after the other, --rounds times. The load
generator is a separate process (aiohttp, one connection per client). Reported per target: requests/s,
p50/p99 per request, errors, server RSS. Targets: 0 errors; p99 <= 50 ms on SQLite; >= 0.5 x the bare
endpoint's requests/s.

Usage: .venv/bin/python bench/pccs.py [--clients 1000] [--rounds 2] [--pg-url postgresql+psycopg://...]
(without --pg-url: $QUOTEHELPER_TEST_PG_URL, else PostgreSQL is skipped and said so)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

BIN = Path(sys.executable).parent
LOADGEN = r"""
import asyncio, json, sys, time, aiohttp
urls, clients, rounds = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lat, errors = [], [0]
async def client(session, start):
    await start.wait()
    for _ in range(rounds):
        for u in urls:
            t0 = time.perf_counter()
            try:
                async with session.get(u) as r:
                    await r.read()
                    if r.status != 200:
                        errors[0] += 1
            except Exception:
                errors[0] += 1
            lat.append(time.perf_counter() - t0)
async def main():
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        start = asyncio.Event()
        tasks = [asyncio.create_task(client(s, start)) for _ in range(clients)]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter(); start.set()
        await asyncio.gather(*tasks)
        took = time.perf_counter() - t0
    lat.sort()
    print(json.dumps({"n": len(lat), "s": took, "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)],
                      "errors": errors[0]}))
asyncio.run(main())
"""
BARE = r"""
import sys
from aiohttp import web
body = b"x" * 2048
async def h(req): return web.Response(body=body, content_type="application/json")
app = web.Application(); app.router.add_get("/{tail:.*}", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True), access_log=None,
            backlog=2048)  # as pccs serve's listening socket
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def storm(urls: list[str], clients: int, rounds: int) -> dict:
    out = subprocess.run([sys.executable, "-c", LOADGEN, json.dumps(urls), str(clients), str(rounds)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pg-url", default=os.environ.get("QUOTEHELPER_TEST_PG_URL"))
    args = ap.parse_args()
    from quotehelper.platform.sim import SimPlatform
    from quotehelper.platform.sim.tcbeval import encrypted_ppid

    tmp = Path(tempfile.mkdtemp(prefix="qh-bench-pccs-"))
    procs: list[subprocess.Popen] = []
    try:
        pcs_port = free_port()
        plat = SimPlatform.create(tmp / "p", pcs_url=f"http://127.0.0.1:{pcs_port}")
        procs.append(subprocess.Popen([str(BIN / "quotehelper"), "pcs", "serve", "--pki", str(plat.pki_dir),
                                       "--listen", f"127.0.0.1:{pcs_port}"], stdout=subprocess.DEVNULL))
        wait_port(pcs_port)
        q = urllib.parse.urlencode({
            "qeid": plat.qe_id.hex().upper(),
            "encrypted_ppid": encrypted_ppid(bytes.fromhex(plat.config["ppid"])).hex().upper(),
            "cpusvn": plat.cpu.cpu_svn.hex().upper(),
            "pcesvn": int(plat.config["pce_svn"]).to_bytes(2, "little").hex().upper(), "pceid": "0000"})
        paths = [f"pckcert?{q}", "tcb?fmspc=00906ED50000", "qe/identity", "pckcrl?ca=processor", "rootcacrl"]
        results = {}
        bare_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], stdout=subprocess.DEVNULL))
        wait_port(bare_port)
        backends = [("sqlite", {"DB_CONFIG": "sqlite", "sqlite": {"options": {"storage": str(tmp / "pck.db")}}})]
        if args.pg_url:
            backends.append(("postgres", {"DB_CONFIG": "postgres", "postgres": {"url": _fresh_pg(args.pg_url)}}))
        else:
            print("PostgreSQL: no --pg-url and no $QUOTEHELPER_TEST_PG_URL: skipped")
        for name, db in backends:
            port = free_port()
            conf = tmp / f"{name}.json"
            conf.write_text(json.dumps({"HTTPS_PORT": port, "uri": f"http://127.0.0.1:{pcs_port}/sgx/certification/v4/",
                                        "ApiKey": "k", "CachingFillMode": "LAZY", "plain_http": True,
                                        "trusted_root": str(plat.pki_dir / "root_ca.pem"), "LogLevel": "warn",
                                        "AdminTokenHash": hashlib.sha512(b"a").hexdigest(), **db}))
            p = subprocess.Popen([str(BIN / "quotehelper"), "pccs", "serve", "--config", str(conf)],
                                 stdout=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port)
            base = f"http://127.0.0.1:{port}/sgx/certification/v4/"
            storm([base + u for u in paths], 1, 1)  # warm the cache
            results[name] = storm([base + u for u in paths], args.clients, args.rounds)
            results[name]["rss"] = rss_mb(p.pid)
            results["bare " + name] = storm([f"http://127.0.0.1:{bare_port}/{u}" for u in paths], args.clients,
                                            args.rounds)  # measured right after, same conditions
        print(f"{args.clients} clients x {args.rounds} rounds x 5 requests (pckcert, tcb, qe/identity, pckcrl, "
              "rootcacrl), warm cache")
        print(f"{'target':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MB':>7}")
        for name, r in results.items():
            print(f"{name:<16} {r['n'] / r['s']:>8.0f} {r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f} "
                  f"{r['errors']:>7} {r.get('rss', 0):>7.0f}")
        floor = {name: args.clients / (r["n"] / r["s"]) * 1000 for name, r in results.items()}
        print(f"(closed loop: {args.clients} clients each waiting for its answer, so the mean latency is about "
              f"clients / (req/s) whatever the server does: {', '.join(f'{k} {v:.0f} ms' for k, v in floor.items())})")
        for name, _ in backends:
            ratio = (results[name]["n"] / results[name]["s"]) / (results["bare " + name]["n"] / results["bare " + name]["s"])
            print(f"{name}: {ratio:.2f} x the bare endpoint's requests/s (target >= 0.5)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh_pg(admin_url: str) -> str:
    from sqlalchemy import create_engine, text

    name = "qh_bench_" + os.urandom(4).hex()
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


if __name__ == "__main__":
    main()
