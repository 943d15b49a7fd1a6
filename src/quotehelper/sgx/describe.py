"""A plain-dict view of a quote (for `quotehelper inspect` and JSON output). Reads; checks nothing."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from quotehelper.errors import FormatError
from quotehelper.sgx.pck import SGX_EXTENSION_OID, SGX_TYPE_NAMES, PckExtension
from quotehelper.sgx.quote import CERT_QE_REPORT, Quote, RawBody, TdReport
from quotehelper.sgx.structs import ReportBody

TEE_NAMES = {0: "SGX", 0x81: "TDX"}


def report_body_dict(b: ReportBody) -> dict[str, Any]:
    return {
        "mr_enclave": b.mr_enclave.hex(), "mr_signer": b.mr_signer.hex(),
        "isv_prod_id": b.isv_prod_id, "isv_svn": b.isv_svn,
        "attributes": {"flags": f"{b.attributes.flags:#018x}", "xfrm": f"{b.attributes.xfrm:#018x}",
                       "debug": b.attributes.debug},
        "misc_select": f"{b.misc_select:#010x}", "cpu_svn": b.cpu_svn.hex(),
        "config_svn": b.config_svn, "config_id": b.config_id.hex(),
        "isv_ext_prod_id": b.isv_ext_prod_id.hex(), "isv_family_id": b.isv_family_id.hex(),
        "report_data": b.report_data.hex(),
    }


def pck_extension_of(cert_pem: bytes) -> PckExtension:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound as e:
        raise FormatError("pck_certificate", SGX_EXTENSION_OID, 0, "no SGX extension") from e
    return PckExtension.parse(ext.value.value)


def pck_extension_dict(p: PckExtension) -> dict[str, Any]:
    out: dict[str, Any] = {
        "fmspc": p.fmspc.hex().upper(), "pce_id": p.pce_id.hex().upper(), "ppid": p.ppid.hex(),
        "tcb_components": list(p.tcb_components), "pcesvn": p.pcesvn, "cpusvn": p.cpusvn.hex(),
        "sgx_type": SGX_TYPE_NAMES.get(p.sgx_type, str(p.sgx_type)),
        "ca": "platform" if p.is_platform_ca else "processor",
    }
    if p.platform_instance_id is not None:
        out["platform_instance_id"] = p.platform_instance_id.hex()
    if p.configuration is not None:
        c = p.configuration
        out["configuration"] = {"dynamic_platform": c.dynamic_platform, "cached_keys": c.cached_keys,
                                "smt_enabled": c.smt_enabled}
    return out


def quote_dict(q: Quote) -> dict[str, Any]:
    h = q.header
    header: dict[str, Any] = {
        "version": h.version, "att_key_type": h.att_key_type, "tee_type": TEE_NAMES.get(h.tee_type, hex(h.tee_type)),
        "qe_vendor_id": h.qe_vendor_id.hex(), "user_data": h.user_data.hex(), "qe_id": h.qe_id.hex(),
    }
    if h.version == 3:
        header.update(qe_svn=h.qe_svn, pce_svn=h.pce_svn)
    if isinstance(q.body, ReportBody):
        body: dict[str, Any] = {"type": "sgx_enclave_report", **report_body_dict(q.body)}
    elif isinstance(q.body, TdReport):
        body = {"type": f"td_report_{q.body.version}", **{k: v.hex() for k, v in q.body.fields.items()}}
    else:
        assert isinstance(q.body, RawBody)
        body = {"type": f"unknown_body_type_{q.body_type}", "size": len(q.body.raw), "raw": q.body.raw.hex()}
    s = q.signature
    cd = s.qe.certification_data
    cert: dict[str, Any] = {"type": cd.type, "size": len(cd.data)}
    chain_holder = cd.qe_report_cert_data.certification_data if cd.type == CERT_QE_REPORT else cd
    try:  # a damaged chain is shown as such; the rest of the quote is still worth printing
        if chain_holder.type in (4, 5):
            pems = chain_holder.pck_chain_pem()
            cert["pck_chain_subjects"] = [x509.load_pem_x509_certificate(p).subject.rfc4514_string() for p in pems]
            cert["trailing_nul"] = chain_holder.data.endswith(b"\0")
            cert["pck_extension"] = pck_extension_dict(pck_extension_of(pems[0]))
        elif chain_holder.type in (1, 2, 3):
            info = chain_holder.ppid_cert_info()
            cert["ppid_cert_info"] = {"ppid": info.ppid.hex(), "cpu_svn": info.cpu_svn.hex(), "pce_svn": info.pce_svn,
                                      "pce_id": None if info.pce_id is None else f"{info.pce_id:04X}"}
    except (ValueError, IndexError) as e:  # FormatError is a ValueError; so is cryptography's parse error
        cert["error"] = str(e) if isinstance(e, FormatError) else f"unreadable certificate data ({type(e).__name__})"
    return {
        "size": len(q.to_bytes()), "header": header, "body": body,
        "signature_data": {
            "isv_signature": s.isv_signature.hex(), "attest_pub_key": s.attest_pub_key.hex(),
            "qe_report": report_body_dict(s.qe.qe_report), "qe_report_signature": s.qe.qe_report_signature.hex(),
            "qe_auth_data": s.qe.qe_auth_data.hex(), "certification_data": cert,
        },
    }
