"""Shared inputs and oracles for the verifier tests: testdata cases, dcap-qvl and Intel QVL calls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from quotehelper.verify import Collateral, TrustAnchor, Verdict, Verifier, VerifyOptions, load_collateral
from quotehelper.verify import quote_checks as qc
from tests.conftest import TESTDATA

INTEL_ROOT_PEM = (TESTDATA / "intel-root/Intel_SGX_Root_CA.pem").read_bytes()


@dataclass(frozen=True)
class Case:
    """One row of a folder README: quote, collateral, "now", optional test root, expected result."""

    id: str
    quote: str
    collateral: str
    now: int
    status: str
    advisories: tuple[str, ...]
    root: str | None = None
    dcap_can_parse: bool = True  # dcap-qvl cannot read TCB info v2

    def quote_bytes(self) -> bytes:
        return (TESTDATA / self.quote).read_bytes()

    def load(self) -> Collateral:
        return load_collateral(TESTDATA / self.collateral)

    def anchors(self) -> tuple[TrustAnchor, ...]:
        return (TrustAnchor.from_file(TESTDATA / self.root),) if self.root else ()

    def root_der(self) -> bytes:
        path = TESTDATA / (self.root or "intel-root/Intel_SGX_Root_CA.der")
        return TrustAnchor.from_file(path).der

    def when(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def verify(self, now: int | None = None, quote: bytes | None = None) -> Verdict:
        v = Verifier(VerifyOptions(trusted_roots=self.anchors()))
        t = datetime.fromtimestamp(self.now if now is None else now, UTC)
        return v.verify(self.quote_bytes() if quote is None else quote, self.load(), now=t)


A = "automata-dcap-attestation/"
ZK_COLL = "zkdcap/dcap_qvl_collateral_sgx_00906ED50000.json"
EVAL18 = ("INTEL-SA-01079", "INTEL-SA-01103", "INTEL-SA-00657", "INTEL-SA-00767", "INTEL-SA-00615")

POSITIVE = [
    Case("phala", "phala-dcap-qvl/sgx_quote", "phala-dcap-qvl/sgx_quote_collateral.json", 1751624924,
         "ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289", "INTEL-SA-00615")),
    Case("zkdcap", "zkdcap/quote_sgx_v3_00906ED50000.dat", ZK_COLL, 1737458686, "SWHardeningNeeded",
         ("INTEL-SA-00334", "INTEL-SA-00615")),
    Case("tlsn-quote9", "dstack-teekit/sampleQuotes/sgx-tlsn-quote9.dat", ZK_COLL, 1739486044,
         "SWHardeningNeeded", ("INTEL-SA-00334", "INTEL-SA-00615")),
    Case("tlsn-quotedev", "dstack-teekit/sampleQuotes/sgx-tlsn-quotedev.dat", ZK_COLL, 1739507219,
         "SWHardeningNeeded", ("INTEL-SA-00334", "INTEL-SA-00615")),
    Case("automata-aug2025", A + "quote_sgx_v3_00606A000000.dat", A + "dcap_qvl_collateral_sgx_00606A000000.json",
         1755236700, "SWHardeningNeeded", ("INTEL-SA-00615",)),
    Case("automata-eval17", A + "quote_sgx_v3_00606A000000.dat",
         A + "dcap_qvl_collateral_sgx_00606A000000_eval17_fortanix_june2025.json", 1750000000,
         "SWHardeningNeeded", ("INTEL-SA-00615",)),
    Case("automata-eval18", A + "quote_sgx_v3_00606A000000.dat",
         A + "dcap_qvl_collateral_sgx_00606A000000_eval18_fortanix_june2025.json", 1750000000, "OutOfDate", EVAL18),
    Case("automata-eval19", A + "quote_sgx_v3_00606A000000.dat",
         A + "dcap_qvl_collateral_sgx_00606A000000_eval19_fortanix_june2025.json", 1750000000, "OutOfDate",
         EVAL18[:4] + ("INTEL-SA-01153", "INTEL-SA-00615")),
    Case("automata-tcbinfo-v2", A + "quote_sgx_v3_00606A000000.dat",
         A + "dcap_qvl_collateral_sgx_00606A000000_0625_tcbinfo_v2.json", 1749095100, "SWHardeningNeeded", (),
         dcap_can_parse=False),
    Case("custom-pki", "custom-pki-selftest/quote.bin", "custom-pki-selftest/collateral.json", 1768435200,
         "SWHardeningNeeded", ("INTEL-SA-00615",), root="custom-pki-selftest/root_ca.der"),
    Case("intel-qvl-sample", "intel-qvl-sampledata/quote.dat", "intel-qvl-sampledata", 1756684800, "UpToDate", (),
         root="intel-qvl-sampledata/trustedRootCaCert.pem", dcap_can_parse=False),
]
CASES = {c.id: c for c in POSITIVE}


def dcap_verify(case: Case, quote: bytes | None = None, now: int | None = None) -> dcap_qvl.VerifiedReport:
    coll = dcap_qvl.QuoteCollateralV3.from_json(case.load().to_dcap_qvl_json())
    return dcap_qvl.verify_with_root_ca(quote or case.quote_bytes(), coll, case.root_der(),
                                        case.now if now is None else now)


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _crl_pem(der: bytes) -> str:
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM).decode()


def intel_qvl_verify(case: Case, quote: bytes | None = None):  # noqa: ANN201 - the binding's own type
    """Intel's QVL (PyPI sgx-dcap-quote-verify-python) on the same inputs; ~15 ms per call."""
    import sgx_dcap_quote_verify as qvl

    coll = case.load()
    raw = quote or case.quote_bytes()
    ders = qc.pck_chain_ders(qc.load_quote(raw), coll.pck_certificate_chain)
    return qvl.verify(
        trusted_root_ca_certificate=_pem(case.root_der()), pck_certificate=_pem(ders[0]),
        pck_signing_chain="".join(_pem(d) for d in ders[1:]), root_ca_crl=_crl_pem(coll.root_ca_crl),
        intermediate_ca_crl=_crl_pem(coll.pck_crl),
        tcb_info='{"tcbInfo":' + coll.tcb_info.decode() + ',"signature":"' + coll.tcb_info_signature.hex() + '"}',
        tcb_signing_chain=coll.tcb_info_issuer_chain.decode(), quote=raw,
        qe_identity='{"enclaveIdentity":' + coll.qe_identity.decode() + ',"signature":"'
                    + coll.qe_identity_signature.hex() + '"}',
        expiration_date=case.when())


# Intel QVL status name for each TCB status.
QVL_STATUS = {"UpToDate": "STATUS_OK", "SWHardeningNeeded": "STATUS_TCB_SW_HARDENING_NEEDED",
              "ConfigurationNeeded": "STATUS_TCB_CONFIGURATION_NEEDED",
              "ConfigurationAndSWHardeningNeeded": "STATUS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED",
              "OutOfDate": "STATUS_TCB_OUT_OF_DATE",
              "OutOfDateConfigurationNeeded": "STATUS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED"}


def path(rel: str) -> Path:
    return TESTDATA / rel
