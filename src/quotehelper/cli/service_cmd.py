"""`quotehelper serve`, `quotehelper quote`, `quotehelper demo`: the quote service and its client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from quotehelper.aesm.client import SgxError, provider_from_env
from quotehelper.aesm.launch import ServiceProcess
from quotehelper.aesm.metrics import parse_addr
from quotehelper.aesm.options import MAX_ANTICIPATION, TENANT_MODES, ServeOptions, ServeOptionsError
from quotehelper.aesm.service import QuoteService, exec_args
from quotehelper.aesm.sockets import DEFAULT_SOCKET, DEFAULT_SOCKET_MODE
from quotehelper.aesm.workers import EngineSpec
from quotehelper.cli import common, main
from quotehelper.errors import QuoteHelperError
from quotehelper.platform.sim import TCB_STATUSES, SimPlatform, default_platform_dir
from quotehelper.sgx.quote import parse_quote
from quotehelper.verify import TrustAnchor, Verifier, VerifyOptions


def sim_engine_spec(platform_dir: Path) -> EngineSpec:
    return EngineSpec("quotehelper.platform.sim:SimPlatform.open", (str(Path(platform_dir).absolute()),),
                      then="engine")


def _octal(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode like 666") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter("mode must be between 000 and 777")
    return mode


def _metrics_addr(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return None
    try:
        parse_addr(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


# --allow-*/--deny-* of `serve`: (verb, what, type, metavar); namespace/pod rules need the pod's name.
_ACCESS_OPTIONS = [("allow", "uid", int, "UID"), ("allow", "gid", int, "GID"), ("allow", "namespace", str, "NS"),
                   ("deny", "uid", int, "UID"), ("deny", "gid", int, "GID"), ("deny", "namespace", str, "NS"),
                   ("deny", "pod", str, "NS/NAME|UID")]


def _tenant_options(f: Callable) -> Callable:
    """`serve`'s tenant options (aesm/tenant.py, aesm/scheduler.py); defaults are ServeOptions'."""
    for decorator in reversed([
        click.option("--tenant-by", type=click.Choice(TENANT_MODES), default=None,
                     help="Who a tenant is: pod = the client's Kubernetes pod, from its cgroup (needs hostPID; "
                          "else its container, else its uid); uid = the client's uid; none = everyone is one "
                          f"tenant, no fairness [default: {ServeOptions.tenant_by}]."),
        click.option("--tenant-max-connections", type=click.IntRange(1), default=None,
                     help="Connections one tenant may hold per worker; its further ones are closed at once "
                          "[default: half of --max-connections]."),
        click.option("--tenant-queue-limit", type=click.IntRange(1), default=None,
                     help="Engine calls one tenant may have queued per worker; beyond it that tenant gets "
                          "AESM_BUSY [default: --queue-limit; a full queue makes room for a tenant with fewer queued]."),
        *(click.option(f"--{verb}-{what}", f"{verb}_{what}s", type=kind, metavar=meta, multiple=True, default=(),
                       help=(f"Serve only these {what}s (repeatable; with several allow options: any of them)."
                             if verb == "allow" else f"Answer these {what}s AESM_SERVICE_UNAVAILABLE (repeatable)."))
          for verb, what, kind, meta in _ACCESS_OPTIONS),
        click.option("--pods-log-dir", type=click.Path(), default=None,
                     help="kubelet's pod log directory, whose <namespace>_<name>_<uid> entries name pods "
                          f"(mount it read-only) [default: {ServeOptions.pods_log_dir}]."),
        click.option("--anticipation", type=click.FloatRange(0, MAX_ANTICIPATION), default=None, metavar="SECONDS",
                     help="After a light tenant (under a quarter of a worker's recent connections) is answered, "
                          "heavier tenants wait this long for its next step, in every worker; at most half "
                          f"the time in all; 0 = never [default: {ServeOptions.anticipation}]."),
        click.option("--metrics-tenants", type=click.IntRange(0), default=None,
                     help="Tenants with their own metrics label (the busiest); the rest are counted as "
                          f"\"other\" [default: {ServeOptions.metrics_tenants}]."),
    ]):
        f = decorator(f)
    return f


@main.command("serve")
@common.socket_option("Unix socket to serve the AESM protocol on.", default=DEFAULT_SOCKET)
@common.platform_option()
@click.option("--engine", type=click.Choice(["sim", "dcap"]), default="sim", show_default=True,
              help="sim: the software platform; dcap: Intel's DCAP quoting library (SGX hardware).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Quoting worker processes [default: the CPUs the service may use (affinity, cgroup "
                   "CPU limit), at most 4].")
@click.option("--queue-limit", type=click.IntRange(1), default=None,
              help="Engine calls queued per worker (~2 KB each); when full, the tenant with the most queued "
                   f"gets AESM_BUSY [default: {ServeOptions.queue_limit}].")
@click.option("--max-connections", type=click.IntRange(1), default=None,
              help="Connections one worker holds open (waiting for a request, the engine or the client) "
                   f"[default: {ServeOptions.max_connections}].")
@_tenant_options
@click.option("--socket-mode", default=f"{DEFAULT_SOCKET_MODE:o}", show_default=True, callback=_octal,
              help="Permissions of the socket file (octal). Anyone who can write it can get quotes.")
@click.option("--read-timeout", type=click.FloatRange(0.01), default=5.0, show_default=True,
              help="Seconds a client has to send its whole request before it is dropped.")
@click.option("--metrics-addr", default=None, metavar="HOST:PORT", envvar="QUOTEHELPER_METRICS_ADDR",
              callback=_metrics_addr,
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port; "
                   "env QUOTEHELPER_METRICS_ADDR) [default: off].")
@click.option("--take-over", is_flag=True,
              help="If another quotehelper service is serving on the socket, replace its socket instead of "
                   "refusing: new connections come here at once, the old service answers what it already "
                   "accepted and exits on its SIGTERM (a zero-gap update). aesmd is never replaced.")
@common.logging_options()  # -v: every lifecycle event
def serve_cmd(socket_path: str, platform_dir: Path | None, engine: str, workers: int | None,
              queue_limit: int | None, max_connections: int | None, socket_mode: int, read_timeout: float,
              metrics_addr: str | None, take_over: bool, verbose: int, **tenancy: object) -> None:
    """Serve quotes on an AESM-compatible socket until SIGTERM (then drain and remove the socket)."""
    if engine == "sim":
        platform_dir = platform_dir or default_platform_dir()
        try:
            SimPlatform.open(platform_dir)
        except QuoteHelperError as e:
            raise click.ClickException(str(e)) from e
        spec = sim_engine_spec(platform_dir)
    else:
        spec = EngineSpec("quotehelper.platform.dcap_ql:DcapQlEngine")
    try:
        spec().supported_att_key_ids()  # fail here, clearly, rather than in every worker
    except (QuoteHelperError, OSError) as e:
        raise click.ClickException(f"cannot open the {engine} engine: {e}") from e
    # The software QE keeps its attestation key for the process lifetime: InitQuoteEx/GetQuoteSizeEx
    # answers can be memoised. DCAP may re-certify, so not there.
    given = {"queue_limit": queue_limit, "max_connections": max_connections, **tenancy}
    try:
        cfg = ServeOptions(read_timeout=read_timeout, memo=engine == "sim",
                           **{k: v for k, v in given.items() if v is not None and v != ()})  # type: ignore[arg-type]
    except ServeOptionsError as e:
        raise click.UsageError(str(e)) from e
    if sys.platform.startswith("linux"):
        # Become the lean supervisor process (same pid, so SIGTERM from systemd/kubelet reaches it).
        sys.stdout.flush()
        sys.stderr.flush()
        args = exec_args(socket_path, spec, mode=socket_mode, workers=workers, config=cfg, verbose=verbose,
                         metrics_addr=metrics_addr, take_over=take_over)
        os.execv(sys.executable, args)
    service = QuoteService(socket_path, spec, mode=socket_mode, workers=workers, config=cfg,
                           metrics_addr=parse_addr(metrics_addr) if metrics_addr else None, take_over=take_over)
    try:
        asyncio.run(service.run())
    except QuoteHelperError as e:
        raise click.ClickException(str(e)) from e


@main.command("quote")
@common.platform_option("Software platform the simulated app enclave runs on [default: $QUOTEHELPER_PLATFORM, "
                        "else $XDG_DATA_HOME/quotehelper/platform].")
@common.socket_option("Quote through the service on this socket (implies out-of-process).", default=None)
@click.option("--report-data", type=common.HexBytes(max_size=64), default="", help="Up to 64 bytes hex, zero-padded.")
@common.output_option("Quote file (binary)", required=True)
@common.timeout_option("to keep retrying transient failures (service restarting, busy)", 30.0,
                       aliases=("--deadline",))
@common.logging_options()
def quote_cmd(platform_dir: Path | None, socket_path: str | None, report_data: bytes, output: str,
              timeout: float) -> None:
    """A simulated app enclave gets a quote through the client library.

    Out-of-process (the AESM socket) when SGX_AESM_ADDR is set or --socket is given, else in-process.
    """
    data, deadline = report_data, timeout
    try:
        plat = SimPlatform.open(platform_dir or default_platform_dir())
        env = dict(os.environ)
        if socket_path:
            env.setdefault("SGX_AESM_ADDR", "1")
        provider = provider_from_env(plat.engine, socket_path=socket_path, env=env, deadline=deadline)
        enclave = plat.enclave()
        quote = provider.get_quote_for(lambda ti: enclave.report(ti, data))
    except (QuoteHelperError, SgxError) as e:
        raise click.ClickException(str(e)) from e
    common.write_output(output, quote, f"byte quote ({provider.mode})")


_PROGRESS = {"err": False}  # `demo --json`: progress lines go to stderr, stdout carries only the JSON


def _say(message: str) -> None:
    click.echo(message, err=_PROGRESS["err"])


DEMO_ENCLAVES = ("payments", "key-broker", "ml-inference", "ledger", "identity", "analytics")


def _demo_one(plat: SimPlatform, socket_path: str, name: str, rounds: int, verifier: Verifier,
              halfway: threading.Barrier, updated: threading.Event, collateral_client: Any) -> dict:
    """One simulated app enclave: `rounds` quotes through the client library, each verified twice (with
    collateral from the collateral client's cache), plus as many as it can make while the service is
    being replaced."""
    try:
        return _demo_enclave(plat, socket_path, name, rounds, verifier, halfway, updated, collateral_client)
    except BaseException:
        halfway.abort()  # let the others and the main thread stop waiting for us
        raise


def _demo_enclave(plat: SimPlatform, socket_path: str, name: str, rounds: int, verifier: Verifier,
                  halfway: threading.Barrier, updated: threading.Event, collateral_client: Any) -> dict:
    try:
        import dcap_qvl  # independent cross-check (test extra; `make demo` installs it)
    except ImportError:
        dcap_qvl = None
    enclave = plat.enclave(mr_enclave=hashlib.sha256(name.encode()).digest())
    provider = provider_from_env(socket_path=socket_path, env={"SGX_AESM_ADDR": ""}, deadline=30.0)
    latencies: list[float] = []
    fetch_ms: list[float] = []
    during: list[float] = []  # the quotes made while the service was being replaced
    status, size, agree = "?", 0, "n/a"

    def schedule() -> Iterator[tuple[int, bool]]:
        yield from ((i, False) for i in range(rounds // 2))
        halfway.wait()  # every enclave is mid-run when the service is replaced...
        n = rounds // 2
        while not updated.is_set():  # ...and keeps quoting throughout the update
            yield n, True
            n += 1
        yield from ((i, False) for i in range(n, n + rounds - rounds // 2))

    for i, in_update in schedule():
        report_data = hashlib.sha256(f"{name} nonce {i} {time.time_ns()}".encode()).digest()
        t0 = time.perf_counter()
        quote = provider.get_quote_for(lambda ti, data=report_data: enclave.report(ti, data))
        latencies.append((time.perf_counter() - t0) * 1000)
        if in_update:
            during.append(latencies[-1])
        t0 = time.perf_counter()
        collateral = collateral_client.fetch(quote).collateral  # from the cache the cold fetch filled
        fetch_ms.append((time.perf_counter() - t0) * 1000)
        verdict = verifier.verify(quote, collateral)
        if not verdict.accepted:
            raise QuoteHelperError(f"{name}: quote rejected: {verdict.error or verdict.failed_rules}")
        q = parse_quote(quote)
        if q.report_body.report_data[:32] != report_data or q.report_body.mr_enclave != enclave.identity.mr_enclave:
            raise QuoteHelperError(f"{name}: the quote does not carry this enclave's identity and data")
        if dcap_qvl is not None:
            qvl_coll = dcap_qvl.QuoteCollateralV3.from_json(collateral.to_dcap_qvl_json())
            ref = dcap_qvl.verify_with_root_ca(quote, qvl_coll, plat.root_ca_der(), int(time.time()))
            if ref.status != verdict.status or sorted(ref.advisory_ids) != sorted(verdict.advisory_ids):
                raise QuoteHelperError(f"{name}: dcap-qvl says {ref.status} {ref.advisory_ids}, "
                                       f"quotehelper says {verdict.status} {verdict.advisory_ids}")
            agree = "yes"
        status, size = verdict.status, len(quote)
    latencies.sort()
    return {"name": name, "mrenclave": enclave.identity.mr_enclave.hex()[:16], "size": size, "status": status,
            "agree": agree, "p50": latencies[len(latencies) // 2], "max": latencies[-1], "rounds": len(latencies),
            "during": len(during), "max_during": max(during, default=0.0), "retries": dict(provider.retry_reasons),
            "fetch_ms": sorted(fetch_ms)[len(fetch_ms) // 2]}


class _DemoPcs:
    """The simulated Intel PCS on a loopback port (its own thread and event loop) and a collateral client
    with a verified cache in front of it; the first (cold) fetch is timed."""

    def __init__(self, plat: SimPlatform, tmp: Path, verifier: Verifier) -> None:
        from quotehelper.pcs import CollateralCache, CollateralClient, PcsOptions
        from quotehelper.pcs.serve import start_server

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.url = asyncio.run_coroutine_threadsafe(
            start_server(plat.pki_dir, "127.0.0.1", 0), self.loop).result(30)
        self.client = CollateralClient(PcsOptions(base_url=self.url), cache=CollateralCache(tmp / "collateral"),
                                       verifier=verifier)
        t0 = time.perf_counter()
        fetched = self.client.fetch(plat.quote(b"collateral warm-up"))
        self.cold_ms = (time.perf_counter() - t0) * 1000
        _say(f"simulated Intel PCS at {self.url}: collateral for FMSPC {fetched.fmspc} fetched, verified "
                   f"and cached in {self.cold_ms:.1f} ms")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _demo_update(update: str, svc: ServiceProcess, start: Callable[[], ServiceProcess],
                 codes: list[int]) -> ServiceProcess:
    """Replaces the service as `update` says; returns the one serving afterwards."""
    if update == "take-over":
        _say("rolling update while the enclaves keep asking: a new service takes the socket over ...")
        old, svc = svc, start()
        _say(f"... then SIGTERM to the old pid {old.pid} (it answers what it had accepted, leaves the "
                   "new socket alone)")
        codes.append(old.stop())
    elif update == "restart":
        _say(f"restart while the enclaves keep asking: SIGTERM to pid {svc.pid} (drains, removes its "
                   "socket), then a new service")
        codes.append(svc.stop())
        svc = start()
    return svc


DEMO_UPDATES = {
    "take-over": "while the service is replaced halfway by a rolling update as the DaemonSet does it (take-over: "
                 "a new service takes the socket over, then the old one gets SIGTERM and drains)",
    "restart": "while the service is restarted halfway (SIGTERM, it drains and removes its socket, then a new "
               "one starts: the clients retry through the gap)",
    "none": "from one service that runs throughout (no update)",
}

DEMO_LEGEND = (
    ("quotes", "quotes the enclave got: {before} before the update, `during` while it ran, {after} after"),
    ("during", "quotes it got while the service was being replaced (the update took {took:.2f} s)"),
    ("bytes", "size of its quote (ECDSA P-256, PCK certificate chain included)"),
    ("TCB status", "quotehelper's verdict under the platform's test root, with collateral fetched over HTTP from\n"
                   "the simulated Intel PCS (`quotehelper pcs serve`) through the verified collateral cache"),
    ("dcap-qvl", "yes: dcap-qvl, verifying the same quote independently, gave the same status and advisories\n"
                 "(n/a: dcap-qvl is not installed; `make demo` installs it)"),
    ("p50/max ms", "time of one whole quote as the enclave sees it (InitQuoteEx, GetQuoteSizeEx, GetQuoteEx over\n"
                   "the socket, retries included); `upd max`: the slowest one during the update. The enclaves\n"
                   "are threads of this one Python process, which also verifies every quote twice, so these\n"
                   "times include waiting for its GIL: bench/quote_service.py measures the service itself"),
    ("retries", "the client library's retries, by reason (none expected with take-over)"),
)

DEMO_NEXT = (
    ("quotehelper demo --update {other}", "the same across {other_what}"),
    ("make test", "the test suite; `make image image-test`: the container image"),
    ('README.md, section "Deploy"', "on Kubernetes (deploy/: kustomize overlays)"),
    ("by hand, with a new platform directory P, a socket path S and an output directory T:", ""),
    ("  quotehelper sim init --platform P", ""),
    ("  quotehelper serve --platform P --socket S &", ""),
    ("  quotehelper quote --platform P --socket S --report-data 00ff -o q.bin", ""),
    ("  quotehelper sim export --platform P --out T", ""),
    ("  quotehelper verify q.bin --collateral T/collateral.json --root-ca T/root_ca.pem", ""),
    ("  quotehelper pcs serve --pki P/../pki &     (then, collateral over HTTP:)", ""),
    ("  quotehelper verify q.bin --pccs-url http://127.0.0.1:8082 --root-ca T/root_ca.pem --cache C", ""),
)


def _two_columns(rows: Iterable[tuple[str, str]], width: int) -> str:
    """`key  text` lines, the text's continuation lines indented under it."""
    return "\n".join(f"  {key:<{width}}  " + text.replace("\n", "\n" + " " * (width + 4)) if text else f"  {key}"
                     for key, text in rows)


@main.command("demo")
@click.option("--enclaves", type=click.IntRange(1, len(DEMO_ENCLAVES)), default=4, show_default=True)
@click.option("--rounds", type=click.IntRange(2, 1000), default=6, show_default=True,
              help="Quotes per enclave outside the update: half before it, half after; each enclave also "
                   "quotes for as long as the update takes.")
@click.option("--tcb-status", type=click.Choice(TCB_STATUSES), default="UpToDate", show_default=True,
              help="TCB status of the fresh platform.")
@click.option("--update", type=click.Choice(["take-over", "restart", "none"]), default="take-over",
              show_default=True,
              help="How the service is replaced halfway: take-over (the DaemonSet's way: the new service takes "
                   "the socket over, then the old one gets SIGTERM; no gap), restart (SIGTERM, then a new "
                   "service: the clients ride through the gap with retries), or none.")
@common.json_option
@common.logging_options()
def demo_cmd(enclaves: int, rounds: int, tcb_status: str, update: str, as_json: bool) -> None:
    """N simulated app enclaves quote concurrently through the client library while the quote service is
    replaced (as a DaemonSet rolling update does); every quote is verified. A fresh software platform on a
    temporary socket: no SGX hardware, no network. --json: the per-enclave results as JSON on stdout."""
    _PROGRESS["err"] = as_json
    names = DEMO_ENCLAVES[:enclaves]
    before, after = rounds // 2, rounds - rounds // 2
    _say(textwrap.fill(
        f"quotehelper demo: {len(names)} simulated app enclaves get quotes concurrently through the client library "
        f"(as libsgx-quote-ex does, over the AESM socket) {DEMO_UPDATES[update]}. Each makes "
        + (f"{before} quotes, then keeps quoting for as long as the update takes, then makes {after} more"
           if update != "none" else f"{rounds} quotes")
        + "; every quote is verified by quotehelper under the platform's test root and cross-checked with "
        "dcap-qvl. Software SGX platform: no SGX hardware, nothing from the network.",
        width=108, break_on_hyphens=False) + "\n")
    with tempfile.TemporaryDirectory(prefix="qh-demo-") as tmp:
        _say(f"creating a software SGX platform (TCB {tcb_status}) and its test PKI in {tmp} ...")
        try:
            plat = SimPlatform.create(Path(tmp) / "platform", tcb_status=tcb_status)
        except QuoteHelperError as e:
            raise click.ClickException(str(e)) from e
        verifier = Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der(), "test root"),)))
        pcs = _DemoPcs(plat, Path(tmp), verifier)
        sock = str(Path(tmp) / "aesm.socket")
        log_path = Path(tmp) / "service.log"
        halfway = threading.Barrier(len(names) + 1)
        updated = threading.Event()
        took = None
        with log_path.open("wb") as log:
            def start() -> ServiceProcess:
                t0 = time.perf_counter()
                svc = ServiceProcess(sock, plat.platform_dir, stderr=log.fileno(),
                                     extra=["--take-over"] if update == "take-over" else None)
                try:
                    svc.start()
                except QuoteHelperError as e:
                    raise click.ClickException(f"the service did not start: {e}\n{log_path.read_text()}") from e
                _say(f"quote service pid {svc.pid} answering on {sock} (ready in {time.perf_counter() - t0:.2f}s)")
                return svc

            svc = start()
            _say(f"{len(names)} enclaves quoting: {', '.join(names)}")
            codes = []
            try:
                with concurrent.futures.ThreadPoolExecutor(len(names)) as ex:
                    futures = [ex.submit(_demo_one, plat, sock, n, rounds, verifier, halfway, updated, pcs.client)
                               for n in names]
                    if update == "none":
                        updated.set()  # nobody quotes "during" an update
                    try:
                        halfway.wait(timeout=120)
                    except threading.BrokenBarrierError:
                        update = "none"  # an enclave failed; its error is raised below
                    t0 = time.perf_counter()
                    try:
                        svc = _demo_update(update, svc, start, codes)
                    finally:
                        updated.set()
                    took = time.perf_counter() - t0 if update != "none" else None
                    try:
                        rows = [f.result() for f in futures]
                    except (QuoteHelperError, SgxError, ValueError, threading.BrokenBarrierError) as e:
                        raise click.ClickException(f"demo failed: {e}") from e
            finally:
                codes.append(svc.stop())
                pcs.stop()
        if any(codes):
            raise click.ClickException(f"the service exited with {codes}:\n{log_path.read_text()}")
        cached = sorted(r["fetch_ms"] for r in rows)[len(rows) // 2]
        collateral_line = (f"Collateral (PCK CRL, TCB info, QE identity, root CA CRL) came over HTTP from the "
                           f"simulated Intel PCS at {pcs.url}: the cold fetch (verified, then cached) took "
                           f"{pcs.cold_ms:.1f} ms; from the cache it took {cached:.2f} ms per quote (median).")
        if as_json:
            click.echo(json.dumps({"update": update, "update_seconds": took, "enclaves": rows,
                                   "collateral": {"pcs_url": pcs.url, "cold_ms": pcs.cold_ms,
                                                  "cached_ms_median": cached}}, indent=1))
            return
        _demo_report(rows, update, before, after, took, collateral_line)


def _demo_report(rows: list[dict], update: str, before: int, after: int, took: float | None,
                 collateral_line: str = "") -> None:
    click.echo(f"\n{'enclave':<14} {'mrenclave':<17} {'quotes':>6} {'during':>6} {'bytes':>6} {'TCB status':<12} "
               f"{'dcap-qvl':<8} {'p50 ms':>7} {'max ms':>7} {'upd max':>7}  retries")
    click.echo("-" * 108)
    for r in rows:
        retries = ", ".join(f"{k} x{v}" for k, v in r["retries"].items()) or "-"
        upd_max = f"{r['max_during']:>7.1f}" if r["during"] else f"{'-':>7}"
        click.echo(f"{r['name']:<14} {r['mrenclave']:<17} {r['rounds']:>6} {r['during']:>6} {r['size']:>6} "
                   f"{r['status']:<12} {r['agree']:<8} {r['p50']:>7.1f} {r['max']:>7.1f} {upd_max}  {retries}")
    legend = [(k, t.format(before=before, after=after, took=took)) for k, t in DEMO_LEGEND
              if took is not None or k != "during"]
    if took is None:
        legend[0] = ("quotes", "quotes the enclave got (no update: `during` and `upd max` stay empty)")
    click.echo("\n" + _two_columns(legend, 10))
    total = sum(r["rounds"] for r in rows)
    during = sum(r["during"] for r in rows)
    across = {"take-over": f", {during} of them during one rolling update (take-over) of the service,",
              "restart": f", {during} of them during one restart of the service,", "none": ","}[update]
    click.echo(f"\n{total} quotes{across} all verified, none failed at the application; the service "
               "stopped with SIGTERM and removed its socket.")
    click.echo(textwrap.fill(collateral_line, width=108) + "\n")
    other = "restart" if update != "restart" else "take-over"
    other_what = {"restart": "a plain restart: the enclaves retry through the gap",
                  "take-over": "a rolling update (take-over): no gap, no retries"}[other]
    click.echo("next:\n" + _two_columns([(k.format(other=other), t.format(other_what=other_what))
                                         for k, t in DEMO_NEXT], 35))
