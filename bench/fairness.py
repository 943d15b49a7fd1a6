"""A polite tenant against a flooding one, on the real service (`quotehelper serve`, 2 workers by default).

The polite tenant does one full quote (InitQuoteEx, GetQuoteSizeEx, GetQuoteEx, each on a fresh
connection, raw socket, reading the length-prefixed reply and closing as libsgx_quote_ex does) every
--interval seconds; printed: its p50/p99 per quote alone, then while
another tenant floods (bench/aesm_loadgen.c, closed loop, 64 or 512 connections, GetQuoteEx-only or
InitQuoteEx-only), with the ratio of the p99s, the flood's throughput (answered and AESM_BUSY per
second), and the connection-holding attack (3000 connections kept open, each reopened when the service
closes it: how many of the polite tenant's 40 quotes were answered).

Tenants are real processes under distinct uids (1000 polite, 2000 flood) in pod-shaped cgroup v2
directories (tests/aesm/tenants.py), so the service tells them apart as on a node; without root or a
writable cgroup v2 hierarchy they cannot be separated and the output says so. `--tenant-by none` runs the
service without fairness (one tenant), for comparison in the same run (`--compare`).

    .venv/bin/python bench/fairness.py [--quotes 400] [--interval 0.02] [--compare]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from quote_service import CLoadGen  # noqa: E402

from quotehelper.aesm.launch import ServiceProcess  # noqa: E402
from quotehelper.platform.sim import SimPlatform  # noqa: E402
from tests.aesm.tenants import PodCgroups, hold, polite, quote_frames, spawn  # noqa: E402

POLITE_UID, FLOOD_UID = 1000, 2000


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def loadgen(binary: str, path: str, frames_file: str, conns: int, seconds: float, nice: int = 0) -> dict[str, Any]:
    import json

    os.nice(nice)
    out = subprocess.run([binary, path, frames_file, str(conns), str(seconds), "0", "1"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.platform = SimPlatform.create(tmp / "platform")
        self.frames = quote_frames(self.platform)
        self.gen = CLoadGen(tmp)
        os.chmod(self.gen.binary, 0o755)
        self.pods = PodCgroups()
        self.root = os.geteuid() == 0
        self.roles: dict[str, str] = {}  # tenant metrics label -> polite / flood
        for i, f in enumerate(self.frames):
            (tmp / f"frame{i}.bin").write_bytes(f)

    def who(self, uid: int) -> dict[str, Any]:
        """spawn() arguments for a tenant; remembers its metrics label as "polite" or "flood"."""
        if not self.root:
            return {}
        role = "polite" if uid == POLITE_UID else "flood"
        if self.pods.unavailable:
            self.roles[f"uid:{uid}"] = role
            return {"uid": uid, "gid": uid}
        cgroup, pod_uid = self.pods.pod()
        self.roles[f"pod:{pod_uid}"] = role
        return {"uid": uid, "gid": uid, "cgroup": cgroup}

    def service(self, tenant_by: str) -> ServiceProcess:
        self.err = (self.tmp / "serve.err").open("wb")
        return ServiceProcess(self.tmp / "aesm.socket", self.platform.platform_dir, workers=self.args.workers,
                              extra=["--tenant-by", tenant_by, "--metrics-addr", "127.0.0.1:0",
                                     *(["--anticipation", str(self.args.anticipation)]
                                       if self.args.anticipation is not None else [])],
                              stderr=self.err.fileno())

    def queue_waits(self) -> dict[str, tuple[float, int]]:
        """Per-tenant (mean seconds, count) engine calls waited in the service's fair queue: the service's
        own share of the latency, apart from the CPUs the processes share."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        time.sleep(1.3)  # workers write their per-tenant counts once a second
        text = (self.tmp / "serve.err").read_text()
        url = text.split("metrics on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as r:
            fams = text_string_to_metric_families(r.read().decode())
        sums: dict[str, list[float]] = {}
        for fam in fams:
            if fam.name == "quotehelper_aesm_tenant_queue_wait_seconds":
                for smp in fam.samples:
                    v = sums.setdefault(smp.labels["tenant"], [0.0, 0])
                    v[0 if smp.name.endswith("_sum") else 1] += smp.value
        return {t: (s / c if c else 0.0, int(c)) for t, (s, c) in sums.items()}

    def polite_run(self, sock: str, n: int, delay: float) -> Any:
        return spawn(polite, sock, self.frames, n, self.args.interval, delay, **self.who(POLITE_UID))

    def scenario(self, tenant_by: str, kind: str, conns: int, frame: int) -> dict[str, Any]:
        n = self.args.quotes
        with self.service(tenant_by) as svc:
            sock = svc.socket_path
            attacker = None
            if kind == "flood":
                seconds = 1.0 + n * (self.args.interval + 0.01) + 2.0
                attacker = spawn(loadgen, str(self.gen.binary), sock, str(self.tmp / f"frame{frame}.bin"), conns,
                                 seconds, self.args.flood_nice, **self.who(FLOOD_UID))
            elif kind == "hold":
                n = 40
                attacker = spawn(hold, sock, conns, 1.5 + n * 0.2, **self.who(FLOOD_UID))
            p = self.polite_run(sock, n, {"alone": 0.2, "flood": 1.0, "hold": 1.5}[kind]).result(600)
            a = attacker.result(600) if attacker is not None else {}
            waits = self.queue_waits()
        self.err.close()
        return {"polite": p, "attacker": a, "n": n, "waits": waits}

    def run(self, tenant_by: str) -> None:
        call = {0: "InitQuoteEx", 2: "GetQuoteEx"}
        alone = self.scenario(tenant_by, "alone", 0, 0)
        base = pct(alone["polite"]["latency_ms"], 99)
        print(f"\n--tenant-by {tenant_by}; load average {os.getloadavg()[0]:.2f}")
        print(f"{'scenario':34} {'polite p50':>10} {'p99 ms':>8} {'p99 ratio':>9} {'errors':>7}  flood")
        self.row("polite alone", alone, base, "")
        for conns in (64, 512):
            for frame in (2, 0):
                if self.args.only and f"{conns}-{call[frame]}" not in self.args.only:
                    continue
                r = self.scenario(tenant_by, "flood", conns, frame)
                a = r["attacker"]
                rate = a["requests"] / a["elapsed"]
                busy = a["reply_errors"] / a["elapsed"]
                self.row(f"flood {conns} conns {call[frame]}", r, base,
                         f"{rate:7.0f} req/s, of which AESM_BUSY {busy:6.0f}/s, io errors {a['io_errors']}")
        if self.args.only and "hold" not in self.args.only:
            return
        r = self.scenario(tenant_by, "hold", 3000, 0)
        a = r["attacker"]
        self.row("hold 3000 connections", r, base,
                 f"held at most {a['peak_held']}, reopened {a['reopened']} (answered {r['polite']['ok']}/40)")

    def row(self, label: str, r: dict[str, Any], base: float, extra: str) -> None:
        p = r["polite"]
        lat = p["latency_ms"]
        p99 = pct(lat, 99)
        # Mean time engine calls waited in the service's fair queue, per tenant (the service's own share).
        w = ", ".join(f"{self.roles[t]} {m * 1000:.2f} ms" for t, (m, _) in sorted(r["waits"].items())
                      if t in self.roles)
        print(f"{label:34} {pct(lat, 50):10.1f} {p99:8.1f} {p99 / base:9.2f} {r['n'] - p['ok']:7d}  {extra}"
              f"{'; ' if extra else ''}queue wait {w}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quotes", type=int, default=400,
                    help="polite quotes per scenario (400: the p99 is the 4th worst, not the 2nd)")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between polite quotes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tenant-by", default="pod", help="the service's --tenant-by")
    ap.add_argument("--anticipation", type=float, default=None,
                    help="the service's --anticipation in seconds (0: off) [default: the service's]")
    ap.add_argument("--flood-nice", type=int, default=0,
                    help="nice value of the flooding process (standing in for its pod's CPU share on a node)")
    ap.add_argument("--only", nargs="*", default=[], metavar="SCENARIO",
                    help="run only these: 64-GetQuoteEx 64-InitQuoteEx 512-GetQuoteEx 512-InitQuoteEx hold")
    ap.add_argument("--compare", action="store_true", help="then run everything again with --tenant-by none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qh-fair-") as t:
        tmp = Path(t)
        tmp.chmod(0o755)  # the tenants run as other uids
        b = Bench(args, tmp)
        try:
            sep = "distinct uids, pod cgroups" if b.root and not b.pods.unavailable else (
                f"distinct uids only ({b.pods.unavailable})" if b.root else "ONE uid, NOT separable: not root")
            print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.workers} workers; "
                  f"tenants: {sep}; polite: one quote every {args.interval * 1000:.0f} ms, "
                  f"{args.quotes} per scenario; flood: {b.gen.label}; anticipation: "
                  f"{'service default' if args.anticipation is None else args.anticipation}")
            t0 = time.monotonic()
            for mode in [args.tenant_by, *(["none"] if args.compare else [])]:
                b.run(mode)
            print(f"\ntook {time.monotonic() - t0:.0f} s; targets: p99 ratio <= 2.0 everywhere, 0 polite errors, "
                  f"40/40 under the connection-holding attack")
        finally:
            b.pods.close()


if __name__ == "__main__":
    main()
