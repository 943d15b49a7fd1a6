"""Mutual RA-TLS handshakes/s with a warm collateral cache, next to plain mutual TLS with the same key
type, in the same run.

Both use pyOpenSSL through `quotehelper.ratls.tls` (accept/connect, non-blocking with select). One
connection = TCP connect + full TLS handshake (no resumption: RA-TLS turns it off so every peer is
judged) + a 5-byte request and reply + close. The server runs in a child process (its own GIL), the
client in this one, one connection at a time; the two variants alternate in rounds.
  RA-TLS : both sides present an RA-TLS certificate (P-256, DICE evidence, simulated SGX quote) and
           judge the other's with RatlsVerifier (bindings, quote, policy on MRENCLAVE); collateral from
           a StaticCollateral source, so after the first connection the Verifier's cache is warm.
  plain  : both sides present a P-256 certificate issued by a throwaway CA and OpenSSL verifies the
           chain (VERIFY_PEER, CA in the store): ordinary mutual TLS.
Also printed: RatlsVerifier.verify alone (warm) per certificate, the part RA-TLS adds on each side.

Usage: .venv/bin/python bench/ratls.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from quotehelper.platform.sim import SimPlatform
from quotehelper.ratls import (
    Credentials,
    RatlsOptions,
    RatlsVerifier,
    StaticCollateral,
    make_certificate,
    platform_quoter,
    tls,
)
from quotehelper.verify import Policy, TrustAnchor, Verifier, VerifyOptions

MR_SERVER, MR_CLIENT = b"\x5e" * 32, b"\xc1" * 32


def _ra_tls_side(plat: SimPlatform, me: bytes, peer: bytes) -> tuple[Credentials, RatlsVerifier]:
    creds = make_certificate(platform_quoter(plat, plat.enclave(mr_enclave=me)))
    verifier = RatlsVerifier(RatlsOptions(policy=Policy(mr_enclave=(peer,))),
                             verifier=Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),))),
                             collateral=StaticCollateral(plat.collateral()))
    return creds, verifier


def _plain_pki() -> tuple[x509.Certificate, Credentials, Credentials]:
    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(signer, hashes.SHA256()))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("bench CA", ca_key, "bench CA", ca_key, True)
    out = []
    for name in ("server", "client"):
        k = ec.generate_private_key(ec.SECP256R1())
        out.append(Credentials(k, cert(name, k, "bench CA", ca_key, False).public_bytes(serialization.Encoding.DER)))
    return ca, out[0], out[1]


def _plain_context(creds: Credentials, ca: x509.Certificate, server: bool) -> SSL.Context:
    ctx = tls.server_context(creds) if server else SSL.Context(SSL.TLS_METHOD)
    if not server:
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.use_certificate(x509.load_der_x509_certificate(creds.cert_der))
        ctx.use_privatekey(creds.key)
    ca_file = Path(tempfile.mkdtemp(prefix="qh-bench-ca-")) / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ctx.load_verify_locations(str(ca_file))
    ctx.set_verify(SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server else 0))
    return ctx


def _serve(listener: socket.socket, ctx: SSL.Context, verifier: RatlsVerifier | None) -> None:
    while True:
        try:
            with tls.accept(listener, ctx, verifier, timeout=10) as conn:
                conn.sendall(conn.recv(5))
        except Exception as e:  # a refused or broken connection must not stop the bench server
            print(f"server: {e}", file=sys.stderr)


def _client_loop(addr: tuple[str, int], ctx: SSL.Context, verifier: RatlsVerifier | None,
                 seconds: float) -> tuple[int, float, float]:
    n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        with tls.connect(addr, ctx, verifier, timeout=10) as conn:
            conn.sendall(b"ping!")
            if conn.recv(5) != b"ping!":
                raise RuntimeError("echo mismatch")
        n += 1
    wall = time.perf_counter() - t0
    return n, wall, time.process_time() - cpu0


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="client time per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    plat = SimPlatform.create(Path(tempfile.mkdtemp(prefix="qh-bench-ratls-")) / "platform")
    s_creds, s_verifier = _ra_tls_side(plat, MR_SERVER, MR_CLIENT)
    c_creds, c_verifier = _ra_tls_side(plat, MR_CLIENT, MR_SERVER)
    ca, ps_creds, pc_creds = _plain_pki()
    variants = {
        "RA-TLS mutual": (tls.server_context(s_creds, s_verifier), s_verifier,
                          tls.client_context(c_verifier, c_creds), c_verifier),
        "plain TLS mutual": (_plain_context(ps_creds, ca, True), None, _plain_context(pc_creds, ca, False), None),
    }
    procs, addrs, pids = [], {}, {}
    for name, (sctx, sver, _, _) in variants.items():
        listener = socket.create_server(("127.0.0.1", 0))
        addrs[name] = listener.getsockname()[:2]
        p = mp.get_context("fork").Process(target=_serve, args=(listener, sctx, sver), daemon=True)
        p.start()
        procs.append(p)
        pids[name] = p.pid
        listener.close()
    try:
        for name, (_, _, cctx, cver) in variants.items():  # warm-up: caches, imports, first handshakes
            _client_loop(addrs[name], cctx, cver, 0.3)
        rates: dict[str, list[float]] = {k: [] for k in variants}
        cpu_us: dict[str, list[float]] = {k: [] for k in variants}
        server_us: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (_, _, cctx, cver) in variants.items():
                before = _proc_cpu(pids[name])
                n, wall, cpu = _client_loop(addrs[name], cctx, cver, args.seconds)
                rates[name].append(n / wall)
                cpu_us[name].append(cpu / n * 1e6)
                server_us[name].append((_proc_cpu(pids[name]) - before) / n * 1e6)
    finally:
        for p in procs:
            p.terminate()
            p.join(5)
    t0, k = time.perf_counter(), 200
    for _ in range(k):
        ok = c_verifier.verify(s_creds.cert_der)
    verify_us = (time.perf_counter() - t0) / k * 1e6
    assert ok.ok, ok.summary()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; key type P-256 (ECDSA), "
          f"OpenSSL via pyOpenSSL; {args.rounds} rounds x {args.seconds:.1f} s per variant, alternating")
    print(f"{'':18s} {'handshakes/s (median)':>22s} {'rounds':>20s} {'CPU us/conn: client':>20s} {'server':>7s}"
          f" {'CPU-bound conn/s per core':>26s}")
    cpu_rate = {}
    for name in variants:
        c, s = statistics.median(cpu_us[name]), statistics.median(server_us[name])
        cpu_rate[name] = 1e6 / (c + s)
        print(f"{name:18s} {statistics.median(rates[name]):22.0f} {' '.join(f'{r:.0f}' for r in rates[name]):>20s} "
              f"{c:20.0f} {s:7.0f} {cpu_rate[name]:26.0f}")
    ratio = statistics.median(rates["RA-TLS mutual"]) / statistics.median(rates["plain TLS mutual"])
    print(f"RA-TLS / plain: {ratio:.2f} (wall clock), {cpu_rate['RA-TLS mutual'] / cpu_rate['plain TLS mutual']:.2f} "
          f"(CPU per connection, both sides); RatlsVerifier.verify alone (warm cache): {verify_us:.0f} us per "
          f"certificate, once on each side; RA-TLS certificate {len(s_creds.cert_der)} B vs plain "
          f"{len(ps_creds.cert_der)} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
