"""Verifies/s for one real SGX quote with its collateral: quotehelper cold and warm vs dcap-qvl `verify`.

Same inputs, same run; the three alternate in small batches and CPU time is counted (the machine is
shared, so this spreads other processes' load evenly):
  cold  = a fresh `Verifier` per verification (nothing cached; the collateral object is pre-loaded, as
          dcap-qvl's QuoteCollateralV3 is). Intel's intermediates are recognised by their pinned
          fingerprints (their root signatures are not recomputed); "cold, no pinning" recomputes them too.
  warm  = one `Verifier` reused (verified collateral + PCK chain cached by content hash)
  dcap  = `dcap_qvl.verify(quote, QuoteCollateralV3, now)`
  sigs  = only the 7 P-256 ECDSA checks a cold verification cannot skip (root CA CRL, PCK CRL, PCK
          leaf, TCB info, QE identity, QE report, ISV report) on pre-parsed inputs: the floor of "cold";
          cold minus sigs is everything else (parsing, chain rules, TCB matching, verdict)

Usage: .venv/bin/python bench/verify.py [--seconds 1.0] [--rounds 5] [--sample phala|zkdcap|automata]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.verify import Collateral, Verifier, VerifyOptions
from quotehelper.verify import quote_checks as qc

TESTDATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "dcap-testdata"
SAMPLES = {
    "phala": ("phala-dcap-qvl/sgx_quote", "phala-dcap-qvl/sgx_quote_collateral.json", 1751624924),
    "zkdcap": ("zkdcap/quote_sgx_v3_00906ED50000.dat", "zkdcap/dcap_qvl_collateral_sgx_00906ED50000.json",
               1737458686),
    "automata": ("automata-dcap-attestation/quote_sgx_v3_00606A000000.dat",
                 "automata-dcap-attestation/dcap_qvl_collateral_sgx_00606A000000.json", 1755236700),
}


def interleaved(fns: dict[str, Callable[[], object]], seconds: float, batch: int = 10) -> dict[str, float]:
    """Calls per CPU-second of each function, measured in alternating batches so that load from other
    processes on a shared machine hits every contender alike."""
    spent = dict.fromkeys(fns, 0.0)
    calls = dict.fromkeys(fns, 0)
    for fn in fns.values():
        fn()
    while min(spent.values()) < seconds:
        for name, fn in fns.items():
            start = time.process_time()
            for _ in range(batch):
                fn()
            spent[name] += time.process_time() - start
            calls[name] += batch
    return {name: calls[name] / spent[name] for name in fns}


def signature_checks(quote: bytes, coll: Collateral) -> Callable[[], object]:
    """The seven signature checks of a cold verification, everything else done beforehand."""
    ca, root = x509.load_pem_x509_certificates(coll.pck_crl_issuer_chain)[:2]
    signer = x509.load_pem_x509_certificates(coll.tcb_info_issuer_chain)[0]
    q = qc.load_quote(quote)
    leaf = qc.load_chain(qc.pck_chain_ders(q, coll.pck_certificate_chain))[0].x509
    keys = [c.public_key() for c in (root, ca, signer, leaf)]
    root_key, ca_key, signer_key, leaf_key = [k for k in keys if isinstance(k, ec.EllipticCurvePublicKey)]
    att_key = qc.attestation_key(q)
    root_crl, pck_crl = x509.load_der_x509_crl(coll.root_ca_crl), x509.load_der_x509_crl(coll.pck_crl)
    leaf_sig, leaf_tbs, ecdsa = leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
    qe_sig, qe_report = q.signature.qe.qe_report_signature, q.signature.qe.qe_report.to_bytes()
    isv_sig, signed = q.signature.isv_signature, q.signed_bytes()

    def run() -> None:
        ca_key.verify(leaf_sig, leaf_tbs, ecdsa)  # raises if invalid
        if not (root_crl.is_signature_valid(root_key) and pck_crl.is_signature_valid(ca_key)
                and qc.raw_signature_valid(signer_key, coll.tcb_info_signature, coll.tcb_info)
                and qc.raw_signature_valid(signer_key, coll.qe_identity_signature, coll.qe_identity)
                and qc.raw_signature_valid(leaf_key, qe_sig, qe_report)
                and qc.raw_signature_valid(att_key, isv_sig, signed)):
            raise RuntimeError("a signature of the sample does not verify")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sample", choices=sorted(SAMPLES), default="phala")
    args = ap.parse_args()
    qpath, cpath, now_s = SAMPLES[args.sample]
    quote = (TESTDATA / qpath).read_bytes()
    text = (TESTDATA / cpath).read_text()
    coll = Collateral.from_dcap_qvl_json(text)
    dcoll = dcap_qvl.QuoteCollateralV3.from_json(text)
    now = datetime.fromtimestamp(now_s, UTC)

    ours = Verifier().verify(quote, coll, now=now)
    theirs = dcap_qvl.verify(quote, dcoll, now_s)
    if not ours.valid or (ours.status, list(ours.advisory_ids)) != (theirs.status, theirs.advisory_ids):
        print(f"results differ: ours {ours.summary()} / dcap-qvl {theirs.status} {theirs.advisory_ids}")
        return 1
    print(f"sample {args.sample}: {qpath} ({len(quote)} B), now={now_s}, both say {ours.status} "
          f"{list(ours.advisory_ids)}")

    warm_v = Verifier()
    unpinned = VerifyOptions(pinned_intermediates=False)
    fns: dict[str, Callable[[], object]] = {
        "dcap-qvl verify": lambda: dcap_qvl.verify(quote, dcoll, now_s),
        "quotehelper cold": lambda: Verifier().verify(quote, coll, now=now),
        "cold, no pinning": lambda: Verifier(unpinned).verify(quote, coll, now=now),
        "quotehelper warm": lambda: warm_v.verify(quote, coll, now=now),
        "7 signatures only": signature_checks(quote, coll),
    }
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, v in interleaved(fns, args.seconds).items():
            runs[k].append(v)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{'':18s} {'verifies/s (median)':>20s} {'us/verify':>10s}   rounds (CPU time)")
    for k, v in runs.items():
        print(f"{k:18s} {med[k]:20.0f} {1e6 / med[k]:10.0f}   {' '.join(f'{x:.0f}' for x in v)}")
    base = med["dcap-qvl verify"]
    warm_ratio = med["quotehelper warm"] / base
    cold_time_ratio = base / med["quotehelper cold"]
    print(f"warm: {warm_ratio:.2f}x dcap-qvl's verifies/s (target >= 2.0x)")
    print(f"cold: {cold_time_ratio:.2f}x dcap-qvl's time per verify (target <= 1.5x); without pinned "
          f"intermediates {base / med['cold, no pinning']:.2f}x")
    cold_us, sig_us = 1e6 / med["quotehelper cold"], 1e6 / med["7 signatures only"]
    print(f"cold = {sig_us:.0f} us in the 7 signature checks ({base / med['7 signatures only']:.2f}x dcap-qvl's "
          f"time) + {cold_us - sig_us:.0f} us everything else; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
