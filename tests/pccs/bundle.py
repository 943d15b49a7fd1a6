"""A platformcollateral document as Intel's `pccsadmin fetch` makes it, built from the simulated PCS over
HTTP (for the OFFLINE tests)."""

from __future__ import annotations

import json
import urllib.request

from quotehelper.platform.sim import SimPlatform
from quotehelper.platform.sim.tcbeval import encrypted_ppid


def _get(url: str, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return dict(r.headers), r.read()


def platformcollateral(pcs_url: str, plat: SimPlatform) -> dict:
    base = pcs_url + "/sgx/certification/v4/"
    enc = encrypted_ppid(bytes.fromhex(plat.config["ppid"])).hex().upper()
    h, certs = _get(base + f"pckcerts?encrypted_ppid={enc}&pceid=0000", {"Ocp-Apim-Subscription-Key": "k"})
    fmspc = h["SGX-FMSPC"]
    th, tcb = _get(base + f"tcb?fmspc={fmspc}")
    th_early, tcb_early = _get(base + f"tcb?fmspc={fmspc}&update=early")
    qh, qe = _get(base + "qe/identity")
    _, qve = _get(base + "qve/identity")
    ph, pck_crl = _get(base + "pckcrl?ca=processor&encoding=der")
    _, root_crl_hex = _get(base + "rootcacrl")
    return {"platforms": [{"qe_id": plat.qe_id.hex().upper(), "pce_id": "0000"}],
            "collaterals": {
                "version": 4,
                "pck_certs": [{"qe_id": plat.qe_id.hex().upper(), "pce_id": "0000", "enc_ppid": enc,
                               "platform_manifest": "", "certs": json.loads(certs)}],
                "tcbinfos": [{"fmspc": fmspc, "sgx_tcbinfo": json.loads(tcb), "sgx_tcbinfo_early": json.loads(tcb_early)}],
                "pckcacrl": {"processorCrl": pck_crl.hex()},
                "qeidentity": qe.decode(), "qveidentity": qve.decode(),
                "certificates": {"SGX-PCK-Certificate-Issuer-Chain": {"PROCESSOR": h["SGX-PCK-Certificate-Issuer-Chain"]},
                                 "TCB-Info-Issuer-Chain": th["TCB-Info-Issuer-Chain"],
                                 "SGX-Enclave-Identity-Issuer-Chain": qh["SGX-Enclave-Identity-Issuer-Chain"]},
                "rootcacrl": root_crl_hex.decode()}}
