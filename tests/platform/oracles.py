"""Run a quote through both reference verifiers: PyPI dcap-qvl and Intel's QVL (sgx-dcap-quote-verify)."""

from __future__ import annotations

import datetime as dt

import dcap_qvl
import sgx_dcap_quote_verify as intel_qvl

from quotehelper.platform.sim import Collateral
from quotehelper.sgx.quote import parse_quote

# dcap-qvl status name → Intel QVL quote status.
INTEL_STATUS = {
    "UpToDate": "STATUS_OK",
    "SWHardeningNeeded": "STATUS_TCB_SW_HARDENING_NEEDED",
    "ConfigurationNeeded": "STATUS_TCB_CONFIGURATION_NEEDED",
    "ConfigurationAndSWHardeningNeeded": "STATUS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED",
    "OutOfDate": "STATUS_TCB_OUT_OF_DATE",
    "OutOfDateConfigurationNeeded": "STATUS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED",
    "Revoked": "STATUS_TCB_REVOKED",
}


def dcap_qvl_verify(quote: bytes, coll: Collateral, root_der: bytes, now: dt.datetime):
    return dcap_qvl.verify_with_root_ca(quote, dcap_qvl.QuoteCollateralV3.from_json(coll.to_dcap_qvl_json()),
                                        root_der, int(now.timestamp()))


def intel_verify(quote: bytes, coll: Collateral, root_pem: bytes, now: dt.datetime):
    chain = parse_quote(quote).certification_data.pck_chain_pem()
    return intel_qvl.verify(root_pem.decode(), chain[0].decode(), b"".join(chain[1:]).decode(),
                            coll.root_ca_crl_pem(), coll.pck_crl_pem(), coll.tcb_info_body(),
                            coll.tcb_info_issuer_chain, quote, coll.qe_identity_body(),
                            now.astimezone(dt.UTC).replace(tzinfo=None))
