"""Checks on the quote itself: header, PCK chain bytes, QE report signature, QE report-data binding,
ISV signature. Formats come from quotehelper.sgx; only the crypto and the comparisons live here.
"""

from __future__ import annotations

import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from quotehelper.errors import FormatError
from quotehelper.sgx.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_PCK_CHAIN,
    CERT_PCK_LEAF,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_SGX,
    Quote,
    parse_quote,
)
from quotehelper.sgx.structs import ReportBody
from quotehelper.verify.certs import Cert, from_der, known_b64
from quotehelper.verify.errors import ErrorCode, Kind, VerificationError

_SHA256 = ec.ECDSA(hashes.SHA256())
_BEGIN = b"-----BEGIN CERTIFICATE-----\n"
_END = b"-----END CERTIFICATE-----"


def load_quote(data: bytes) -> Quote:
    """Parses an SGX ECDSA-P256 quote v3/v4/v5. Zero padding after the signature data is tolerated.

    NOT_A_QUOTE (exit 2, unusable input) when the bytes are shorter than a header or neither the version
    (3/4/5) nor the attestation key type (2/3) is one a quote carries: a text file, a certificate, zeros.
    One wrong header field is a damaged quote instead (QUOTE_MALFORMED / QUOTE_UNSUPPORTED, exit 1)."""
    if len(data) < 48:
        raise VerificationError(ErrorCode.NOT_A_QUOTE, f"{len(data)} bytes: not a quote (a quote header alone "
                                "is 48 bytes)", {"size": len(data)})
    version, akt = int.from_bytes(data[0:2], "little"), int.from_bytes(data[2:4], "little")
    if version not in (3, 4, 5) and akt not in (2, 3):
        raise VerificationError(ErrorCode.NOT_A_QUOTE, "not a quote: no SGX/TDX quote header (version "
                                f"{version}, attestation key type {akt})", {"field": "header.version"})
    try:
        q = parse_quote(data, allow_trailing=True)
    except FormatError as e:
        raise VerificationError(ErrorCode.QUOTE_MALFORMED, str(e), {"structure": e.structure, "field": e.field,
                                                                    "offset": e.offset}) from e
    h = q.header
    if h.tee_type != TEE_TYPE_SGX or not isinstance(q.body, ReportBody):
        raise VerificationError(ErrorCode.QUOTE_UNSUPPORTED, "only SGX enclave quotes are verified (this one is "
                                f"TEE type {h.tee_type:#x}, body type {q.body_type})", {"field": "header.tee_type"})
    if h.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise VerificationError(ErrorCode.QUOTE_UNSUPPORTED, f"attestation key type {h.att_key_type} (only "
                                "ECDSA-256-with-P-256 = 2)", {"field": "header.att_key_type"})
    if h.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise VerificationError(ErrorCode.QE_VENDOR_UNKNOWN, f"QE vendor {h.qe_vendor_id.hex()} is not Intel's "
                                f"({INTEL_QE_VENDOR_ID.hex()})", {"field": "header.qe_vendor_id"})
    if q._trailing.strip(b"\0"):
        raise VerificationError(ErrorCode.QUOTE_MALFORMED, f"{len(q._trailing)} non-zero bytes after the "
                                "signature data", {"field": "<end>"})
    return q


def strict_pem_chain(data: bytes, name: str = "pck") -> list[bytes]:
    """DER certificates of a type-5 certification data blob, accepting only the exact form QE3 writes:
    PEM blocks with '\\n' line ends, canonical base64, '\\n' between blocks, then zero padding (QE3 writes
    one NUL; quotes in the field carry more, and zeros after the chain are padding, as dcap-qvl and Intel's
    QVL read them). Anything else is refused, so every changed byte of the chain is detected (PEM
    decoders ignore some bits and whitespace)."""
    body = data.rstrip(b"\0")

    def bad(why: str) -> VerificationError:
        return VerificationError(ErrorCode.PCK_CHAIN_MALFORMED, f"{name} certificate chain: {why}", {"chain": name})

    out = []
    parts = body.split(_END)
    if parts[-1].strip(b"\n"):
        raise bad("unexpected bytes after the last certificate")
    for i, part in enumerate(parts[:-1]):
        head, sep, b64 = part.lstrip(b"\n").partition(_BEGIN)
        if head or not sep:
            raise bad(f"certificate {i} does not start with {_BEGIN!r}")
        b64 = b64.replace(b"\n", b"")
        known = known_b64(b64)  # Intel's PCK CA and root: the registered DER, nothing to decode
        if known is not None:
            out.append(known.der)
            continue
        try:
            der = binascii.a2b_base64(b64, strict_mode=True)
        except (binascii.Error, ValueError) as e:
            raise bad(f"bad base64 in certificate {i}") from e
        if binascii.b2a_base64(der, newline=False) != b64:
            raise bad(f"certificate {i} is not canonically base64-encoded")
        out.append(der)
    if not out:
        raise bad("no certificate")
    return out


def pck_chain_ders(q: Quote, collateral_chain: bytes | None) -> list[bytes]:
    """The PCK chain: from the quote (type 5), else from the collateral (types 1-4, as dcap-qvl)."""
    cd = q.certification_data
    if cd.type == CERT_PCK_CHAIN:
        return strict_pem_chain(cd.data)
    if collateral_chain:
        return strict_pem_chain(collateral_chain.strip() + b"\n", "collateral pck")
    what = "only the PCK leaf" if cd.type == CERT_PCK_LEAF else "no PCK certificate"
    raise VerificationError(ErrorCode.CERT_DATA_UNSUPPORTED, f"certification data type {cd.type} carries {what}; "
                            "give the PCK certificate chain in the collateral", {"cert_data_type": cd.type})


def load_chain(ders: list[bytes], name: str = "pck") -> list[Cert]:
    try:
        return [from_der(d) for d in ders]
    except ValueError as e:
        raise VerificationError(ErrorCode.PCK_CHAIN_MALFORMED, f"{name} certificate does not parse: {e}",
                                {"chain": name}, Kind.QUOTE) from e


def raw_signature_valid(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> bool:
    """ECDSA-P256-SHA256 with a 64-byte r||s signature."""
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not r or not s:
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, _SHA256)
        return True
    except InvalidSignature:
        return False


def attestation_key(q: Quote) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + q.signature.attest_pub_key)
    except ValueError as e:
        raise VerificationError(ErrorCode.ATTESTATION_KEY_INVALID, "attestation key is not a P-256 point",
                                {"field": "signature_data.attest_pub_key"}) from e


def check_qe_report_signature(q: Quote, pck_key: ec.EllipticCurvePublicKey) -> None:
    qe = q.signature.qe
    if not raw_signature_valid(pck_key, qe.qe_report_signature, qe.qe_report_bytes()):
        raise VerificationError(ErrorCode.QE_REPORT_SIGNATURE_INVALID, "QE report signature does not verify with the "
                                "PCK certificate's key", {"field": "signature_data.qe_report_signature"})


def check_qe_binding(q: Quote) -> None:
    """QE report data = SHA-256(attestation key || QE auth data) || 32 zero bytes (any auth-data length)."""
    qe = q.signature.qe
    want = hashlib.sha256(q.signature.attest_pub_key + qe.qe_auth_data).digest()
    rd = qe.qe_report.report_data
    if rd[:32] != want or any(rd[32:]):
        raise VerificationError(ErrorCode.QE_REPORT_DATA_MISMATCH, "QE report data does not bind the attestation "
                                "key and QE auth data", {"field": "qe_report.report_data", "expected": want.hex(),
                                                         "found": rd.hex()})


def check_isv_signature(q: Quote, att_key: ec.EllipticCurvePublicKey) -> None:
    if not raw_signature_valid(att_key, q.signature.isv_signature, q.signed_bytes()):
        raise VerificationError(ErrorCode.ISV_SIGNATURE_INVALID, "ISV enclave report signature does not verify with "
                                "the attestation key", {"field": "signature_data.isv_signature"})
