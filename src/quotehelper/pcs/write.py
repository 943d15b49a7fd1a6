"""Writing fetched collateral where the verifier and dcap-qvl read it."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from quotehelper.pcs.client import Fetched


def write_collateral_dir(fetched: Fetched, out_dir: Path) -> list[Path]:
    """`out_dir/collateral.json` (dcap-qvl QuoteCollateralV3) and `out_dir/pcs/`: the PCS-response folder
    `load_collateral` reads (bodies as received, CRLs in DER, issuer-chain headers URL-encoded in files
    named after them). Returns the files written."""
    c = fetched.collateral
    tcb_body = b'{"tcbInfo":' + c.tcb_info + b',"signature":"' + c.tcb_info_signature.hex().encode() + b'"}'
    qe_body = (b'{"enclaveIdentity":' + c.qe_identity + b',"signature":"' + c.qe_identity_signature.hex().encode()
               + b'"}')

    def enc(pem: bytes) -> bytes:
        return urllib.parse.quote(pem.decode(), safe="").encode()

    files = {
        "collateral.json": c.to_dcap_qvl_json().encode(),
        "pcs/tcb_info.json": tcb_body, "pcs/qe_identity.json": qe_body,
        "pcs/pckcrl.der": c.pck_crl, "pcs/rootcrl.der": c.root_ca_crl,
        "pcs/TCB-Info-Issuer-Chain.txt": enc(c.tcb_info_issuer_chain),
        "pcs/SGX-Enclave-Identity-Issuer-Chain.txt": enc(c.qe_identity_issuer_chain),
        "pcs/SGX-PCK-CRL-Issuer-Chain.txt": enc(c.pck_crl_issuer_chain),
        "pcs/sources.json": json.dumps({"fmspc": fetched.fmspc, "ca": fetched.ca, "urls": fetched.urls,
                                        "tcbEvaluationDataNumber": fetched.tcb_evaluation_data_number},
                                       indent=1).encode(),
    }
    if c.pck_certificate_chain:
        files["pcs/pck_cert_chain.pem"] = c.pck_certificate_chain
    out = []
    for name, data in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        out.append(path)
    return out
