"""Offline collateral: `PUT /platformcollateral`, the document Intel's `pccsadmin fetch` makes and `pccsadmin
put` sends (collateral-service.md §1.6), for an OFFLINE PCCS. (Making that document is pccsadmin's job;
this project does not reimplement it.)

Everything imported is checked like fetched collateral before anything is stored: the root CA CRL under
the trust anchor, PCK CRLs and certificates against their chains, TCB infos and identities by signature
(over their compact JSON, which is what Intel's PCS signs and what pccsadmin re-serialises). Issuer
chains whose roots differ are refused (Intel's 460).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from quotehelper.pccs.selection import PckCandidate, SelectionError
from quotehelper.pccs.store import Row
from quotehelper.verify.items import ItemRejected, utcnow

if TYPE_CHECKING:
    from quotehelper.pccs.service import Pccs


def _compact_body(member: str, obj: Any, what: str) -> bytes:
    if isinstance(obj, str):  # identities travel as JSON text
        try:
            obj = json.loads(obj)
        except ValueError as e:
            raise ItemRejected(what, f"not JSON: {e}") from e
    if not isinstance(obj, dict) or member not in obj or "signature" not in obj:
        raise ItemRejected(what, f"needs {member} and signature")
    return json.dumps({member: obj[member], "signature": obj["signature"]}, separators=(",", ":")).encode()


def _get(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise ItemRejected(what, f"missing {key}")
    return d[key]


async def import_collateral(pccs: Pccs, doc: Any) -> dict:
    """Checks then stores a platformcollateral document; ItemRejected names what failed."""
    from quotehelper.pccs.service import Spec

    coll = _get(doc, "collaterals", "platformcollateral")
    if coll.get("version", 4) not in (3, 4):
        raise ItemRejected("platformcollateral", "collaterals.version must be 3 or 4")
    version = int(coll.get("version", 4))
    now = pccs.clock()
    when = utcnow(now)
    certs = _get(coll, "certificates", "certificates")
    chains = {"tcb": certs.get("TCB-Info-Issuer-Chain") or certs.get("SGX-TCB-Info-Issuer-Chain"),
              "identity": certs.get("SGX-Enclave-Identity-Issuer-Chain"),
              **{ca.lower(): v for ca, v in (certs.get("SGX-PCK-Certificate-Issuer-Chain") or {}).items()}}
    roots = {urllib.parse.unquote(v).split("-----BEGIN CERTIFICATE-----")[-1] for v in chains.values() if v}
    if len(roots) > 1:
        raise ItemRejected("certificates", "the issuer chains end in different root certificates")
    rows: list[tuple[Row, Spec]] = []
    root_der, checked = pccs.checker.root_crl(bytes.fromhex(str(_get(coll, "rootcacrl", "rootcacrl"))), when)
    rspec = Spec("rootcacrl")
    rows.append((Row(rspec.key, "rootcacrl", root_der, None, "import", now, checked.not_after, None), rspec))
    crl_of: dict[str, bytes] = {}
    for ca, field in (("processor", "processorCrl"), ("platform", "platformCrl")):
        hexcrl = (coll.get("pckcacrl") or {}).get(field)
        if not hexcrl or not chains.get(ca):
            continue
        der, c = pccs.checker.pck_crl(bytes.fromhex(hexcrl), chains[ca], ca, root_der, when)
        crl_of[ca] = der
        spec = Spec("pckcrl", "sgx", version, ca)
        rows.append((Row(spec.key, "pckcrl", der, chains[ca], "import", now, c.not_after, None), spec))
    for t in coll.get("tcbinfos") or []:
        fmspc = str(_get(t, "fmspc", "tcbinfos")).upper()
        for field, tee, update in (("sgx_tcbinfo", "sgx", "standard"), ("sgx_tcbinfo_early", "sgx", "early"),
                                   ("tdx_tcbinfo", "tdx", "standard"), ("tdx_tcbinfo_early", "tdx", "early")):
            if not t.get(field):
                continue
            what = f"{field} for FMSPC {fmspc}"
            body = _compact_body("tcbInfo", t[field], what)
            expect = {"fmspc": fmspc, **({"id": tee.upper()} if version >= 4 else {})}
            c = pccs.checker.signed_json(body, chains["tcb"] or "", "tcbInfo", root_der, when, what=what, expect=expect)
            spec = Spec("tcb", tee, version, fmspc, update)
            rows.append((Row(spec.key, "tcb", body, chains["tcb"], "import", now, c.not_after, c.evaluation_number),
                         spec))
    for field, which, tee, update, ident in (
            ("qeidentity", "qe", "sgx", "standard", "QE"), ("qeidentity_early", "qe", "sgx", "early", "QE"),
            ("qveidentity", "qve", "sgx", "standard", "QVE"), ("qveidentity_early", "qve", "sgx", "early", "QVE"),
            ("tdqeidentity", "qe", "tdx", "standard", "TD_QE"), ("tdqeidentity_early", "qe", "tdx", "early", "TD_QE")):
        if not coll.get(field):
            continue
        body = _compact_body("enclaveIdentity", coll[field], field)
        c = pccs.checker.signed_json(body, chains["identity"] or chains["tcb"] or "", "enclaveIdentity", root_der,
                                     when, what=field, expect={"id": ident})
        spec = Spec("identity", tee, version, which, update)
        rows.append((Row(spec.key, "identity", body, chains["identity"] or chains["tcb"], "import", now, c.not_after,
                         c.evaluation_number), spec))
    platforms = []
    for p in coll.get("pck_certs") or []:
        pems = [urllib.parse.unquote(c["cert"]) for c in _get(p, "certs", "pck_certs")
                if c.get("cert") not in (None, "Not available")]
        if not pems:
            continue
        try:
            cands = [PckCandidate.from_pem(pem) for pem in pems]
        except SelectionError as e:
            raise ItemRejected("pck_certs", str(e)) from e
        ca = "platform" if "platform" in chains and _issuer_is(pems[0], "Platform") else "processor"
        pccs.checker.pck_certs(pems, chains.get(ca) or "", root_der, crl_of.get(ca), when)
        platforms.append(({"qe_id": str(p["qe_id"]).upper(), "pce_id": str(p["pce_id"]).upper(),
                           "enc_ppid": (p.get("enc_ppid") or "").upper() or None,
                           "platform_manifest": p.get("platform_manifest") or None, "cpu_svn": None, "pce_svn": None,
                           "fmspc": cands[0].ext.fmspc.hex().upper(), "ca": ca},
                          [(c.tcbm, c.pem) for c in cands], chains.get(ca) or ""))
    # all checked: store
    for row, spec in rows:
        pccs.collateral.put(row, tee=spec.tee, version=spec.version, subject=spec.subject, update_type=spec.update)
    for platform, certs_, chain in platforms:
        pccs.platforms.store_certs(platform, certs_, chain)
    return {"items": len(rows), "platforms": len(platforms), "at": time.time()}


def _issuer_is(pem: str, word: str) -> bool:
    from cryptography import x509

    return word in x509.load_pem_x509_certificate(pem.encode()).issuer.rfc4514_string()
