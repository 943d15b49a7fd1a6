"""Signed verification collateral for a simulated platform: TCB info v3, QE identity v2, CRLs, chains.

Issued fresh on request (issueDate = now − 1 h, nextUpdate = now + 30 d) so a long-lived platform never
has stale collateral. Each signed JSON object is serialized compactly once; those exact bytes are signed
and exported (dcap-verification.md §4).

TCB levels are built so that the platform's PCK TCB (component SVNs = CPUSVN bytes, PCESVN) matches a
level with exactly the configured status: a newer UpToDate level the platform does not reach (same
components, PCESVN + 1), then the platform's level, then an older OutOfDate level.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from quotehelper.platform.sim.pki import SimPki
from quotehelper.sgx.structs import INTEL_QE3_MRSIGNER

TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked")

# Advisory IDs a level of each status carries unless the platform was configured with its own list.
DEFAULT_ADVISORIES: dict[str, list[str]] = {
    "UpToDate": [],
    "SWHardeningNeeded": ["INTEL-SA-00615"],
    "ConfigurationNeeded": ["INTEL-SA-00161"],
    "ConfigurationAndSWHardeningNeeded": ["INTEL-SA-00161", "INTEL-SA-00615"],
    "OutOfDate": ["INTEL-SA-00828", "INTEL-SA-00837"],
    "OutOfDateConfigurationNeeded": ["INTEL-SA-00161", "INTEL-SA-00837"],
    "Revoked": ["INTEL-SA-00837"],
}

TCB_EVALUATION_DATA_NUMBER = 17
QE_UP_TO_DATE_ISVSVN = 8
COLLATERAL_VALIDITY = dt.timedelta(days=30)
_TCB_DATES = ("2025-05-14T00:00:00Z", "2024-11-13T00:00:00Z", "2023-08-09T00:00:00Z")


def _time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _level(components: bytes, pcesvn: int, date: str, status: str, advisories: list[str]) -> dict:
    level: dict = {"tcb": {"sgxtcbcomponents": [{"svn": c} for c in components], "pcesvn": pcesvn},
                   "tcbDate": date, "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def tcb_levels(components: bytes, pcesvn: int, status: str, advisory_ids: list[str]) -> list[dict]:
    """Levels, newest first, under which a platform with (components, pcesvn) evaluates to `status`."""
    if status not in TCB_STATUSES:
        raise ValueError(f"TCB status must be one of {', '.join(TCB_STATUSES)}; got {status!r}")
    if len(components) != 16 or pcesvn < 1:
        raise ValueError("need 16 TCB components and PCESVN ≥ 1")
    levels = []
    if status != "UpToDate":
        levels.append(_level(components, pcesvn + 1, _TCB_DATES[0], "UpToDate", []))
    levels.append(_level(components, pcesvn, _TCB_DATES[1], status, advisory_ids))
    levels.append(_level(components, pcesvn - 1, _TCB_DATES[2], "OutOfDate", DEFAULT_ADVISORIES["OutOfDate"]))
    return levels


def tcb_info(*, fmspc: bytes, pce_id: bytes, levels: list[dict], now: dt.datetime,
             number: int = TCB_EVALUATION_DATA_NUMBER) -> dict:
    return {"id": "SGX", "version": 3, "issueDate": _time(now - dt.timedelta(hours=1)),
            "nextUpdate": _time(now + COLLATERAL_VALIDITY), "fmspc": fmspc.hex().upper(),
            "pceId": pce_id.hex().upper(), "tcbType": 0, "tcbEvaluationDataNumber": number,
            "tcbLevels": levels}


def qe_identity(now: dt.datetime, number: int = TCB_EVALUATION_DATA_NUMBER, qve: bool = False) -> dict:
    """Intel's QE3 identity shape: Intel signer, prod id 1, masks as Intel's; isvsvn ≥ 8 UpToDate.
    `qve`: the QvE's identity instead (id QVE, prod id 2), same signer and levels."""
    return {"id": "QVE" if qve else "QE", "version": 2, "issueDate": _time(now - dt.timedelta(hours=1)),
            "nextUpdate": _time(now + COLLATERAL_VALIDITY), "tcbEvaluationDataNumber": number,
            "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": INTEL_QE3_MRSIGNER.hex().upper(), "isvprodid": 2 if qve else 1,
            "tcbLevels": [
                {"tcb": {"isvsvn": QE_UP_TO_DATE_ISVSVN}, "tcbDate": _TCB_DATES[1], "tcbStatus": "UpToDate"},
                {"tcb": {"isvsvn": 6}, "tcbDate": _TCB_DATES[2], "tcbStatus": "OutOfDate",
                 "advisoryIDs": ["INTEL-SA-00615"]},
                {"tcb": {"isvsvn": 0}, "tcbDate": "2018-08-15T00:00:00Z", "tcbStatus": "OutOfDate",
                 "advisoryIDs": ["INTEL-SA-00202", "INTEL-SA-00219"]},
            ]}


def _sign_raw(pki: SimPki, text: str) -> bytes:
    r, s = decode_dss_signature(pki.sign(text.encode()))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signed_body(pki: SimPki, member: str, obj: dict) -> str:
    """A PCS v4 body: {"<member>":<compact JSON>,"signature":"<r||s hex>"}, the signed text verbatim."""
    text = compact(obj)
    return '{"' + member + '":' + text + ',"signature":"' + _sign_raw(pki, text).hex() + '"}'


def evaluation_numbers_body(pki: SimPki, numbers: list[tuple[int, str, str]], now: dt.datetime) -> str:
    """PCS `tcbevaluationdatanumbers`: [(number, tcbRecoveryEventDate, tcbDate)], highest first."""
    return signed_body(pki, "tcbEvaluationDataNumbers", {
        "id": "SGX", "version": 1, "issueDate": _time(now - dt.timedelta(hours=1)),
        "nextUpdate": _time(now + COLLATERAL_VALIDITY),
        "tcbEvalNumbers": [{"tcbEvaluationDataNumber": n, "tcbRecoveryEventDate": rec, "tcbDate": date}
                           for n, rec, date in numbers]})


def _crl_pem(der: bytes) -> str:
    return x509.load_der_x509_crl(der).public_bytes(Encoding.PEM).decode()


@dataclass(frozen=True)
class Collateral:
    """QuoteCollateralV3 for one platform; field names follow dcap-qvl's (JSON texts as *_json)."""

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info_json: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity_json: str
    qe_identity_signature: bytes

    def to_dcap_qvl_json(self) -> str:
        """dcap-qvl's QuoteCollateralV3 JSON: CRLs and signatures hex, signed JSON texts verbatim."""
        return json.dumps({
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain, "root_ca_crl": self.root_ca_crl.hex(),
            "pck_crl": self.pck_crl.hex(), "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
            "tcb_info": self.tcb_info_json, "tcb_info_signature": self.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain, "qe_identity": self.qe_identity_json,
            "qe_identity_signature": self.qe_identity_signature.hex(),
        }, indent=1)

    # PCS v4 response bodies, exactly as Intel's service sends them (the signed text embedded verbatim).
    def tcb_info_body(self) -> str:
        return '{"tcbInfo":' + self.tcb_info_json + ',"signature":"' + self.tcb_info_signature.hex() + '"}'

    def qe_identity_body(self) -> str:
        return ('{"enclaveIdentity":' + self.qe_identity_json + ',"signature":"'
                + self.qe_identity_signature.hex() + '"}')

    def pcs_headers(self) -> dict[str, str]:
        """Issuer-chain response headers, URL-encoded PEM as PCS sends them."""
        def enc(pem: str) -> str:
            return urllib.parse.quote(pem, safe="")
        return {"TCB-Info-Issuer-Chain": enc(self.tcb_info_issuer_chain),
                "SGX-Enclave-Identity-Issuer-Chain": enc(self.qe_identity_issuer_chain),
                "SGX-PCK-CRL-Issuer-Chain": enc(self.pck_crl_issuer_chain)}

    def root_ca_crl_pem(self) -> str:
        return _crl_pem(self.root_ca_crl)

    def pck_crl_pem(self) -> str:
        return _crl_pem(self.pck_crl)

    @property
    def tcb_info(self) -> dict:
        return json.loads(self.tcb_info_json)

    @property
    def qe_identity(self) -> dict:
        return json.loads(self.qe_identity_json)


def issue_collateral(pki: SimPki, *, ca: str, fmspc: bytes, pce_id: bytes, components: bytes, pcesvn: int,
                     status: str, advisory_ids: list[str], now: dt.datetime | None = None,
                     number: int = TCB_EVALUATION_DATA_NUMBER) -> Collateral:
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    tcb_json = compact(tcb_info(fmspc=fmspc, pce_id=pce_id, levels=tcb_levels(components, pcesvn, status,
                                                                              advisory_ids), now=now, number=number))
    qe_json = compact(qe_identity(now, number))
    signer_chain = pki.tcb_issuer_chain_pem().decode()
    return Collateral(
        pck_crl_issuer_chain=pki.pck_issuer_chain_pem(ca).decode(), root_ca_crl=pki.root_crl_der(now),
        pck_crl=pki.pck_crl_der(ca, now), tcb_info_issuer_chain=signer_chain, tcb_info_json=tcb_json,
        tcb_info_signature=_sign_raw(pki, tcb_json), qe_identity_issuer_chain=signer_chain,
        qe_identity_json=qe_json, qe_identity_signature=_sign_raw(pki, qe_json))
