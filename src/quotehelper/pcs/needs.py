"""What collateral a quote needs: TEE, FMSPC, PCK CA type, and the PCK chain or the PPID fields.

Read from the quote alone, without crypto: the PCK leaf in certification data type 5 (or type 6 with a
nested type 5, v4/v5 quotes) gives FMSPC and, by its issuer's common name, the CA (Intel's CNs are
`Intel SGX PCK Processor CA` / `Intel SGX PCK Platform CA`). Types 1-3 carry the PPID fields the
`pckcert` request takes instead; FMSPC and CA then come from that answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

from quotehelper.errors import FormatError
from quotehelper.pcs.errors import PcsCode, PcsError
from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension
from quotehelper.sgx.quote import (
    CERT_PCK_CHAIN,
    CERT_PCK_LEAF,
    CERT_PPID_CLEARTEXT,
    CERT_PPID_RSA3072,
    CERT_QE_REPORT,
    TEE_TYPE_TDX,
    CertificationData,
    PpidCertInfo,
    parse_quote,
)


@dataclass(frozen=True)
class Needs:
    tee: str                          # "sgx" or "tdx": the path of TCB info and QE identity
    fmspc: bytes | None               # None until a pckcert answer says (certification data types 1-3)
    ca: str | None                    # "processor" or "platform"
    pck_chain: bytes | None = None    # PEM leaf first, from the quote (types 4-6)
    ppid: PpidCertInfo | None = None  # types 1-3
    qe_id: bytes | None = None


def ca_type_of(issuer_cn: str) -> str:
    if "Platform" in issuer_cn:
        return "platform"
    if "Processor" in issuer_cn:
        return "processor"
    raise PcsError(PcsCode.UNSUPPORTED_QUOTE, f"PCK certificate issuer {issuer_cn!r} names neither the Processor "
                   "nor the Platform CA", {"issuer": issuer_cn})


@lru_cache(maxsize=256)
def _from_leaf(leaf_pem: bytes) -> tuple[bytes, str]:
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
        pck = PckExtension.parse(ext.value)  # type: ignore[attr-defined]
        cn = leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except (ValueError, x509.ExtensionNotFound, FormatError) as e:
        raise PcsError(PcsCode.UNSUPPORTED_QUOTE, f"the quote's PCK certificate is unreadable: {e}") from e
    return pck.fmspc, ca_type_of(str(cn[0].value) if cn else "")


_MEMO: dict[bytes, Needs] = {}


def _v3_cert_data(quote: bytes) -> bytes | None:
    """The certification data of an SGX v3 quote by offset (header 48, body 384, signature data: ISV
    signature 64, attestation key 64, QE report 384 + signature 64, auth data u16 + n), without parsing."""
    if len(quote) < 1020 or quote[0:2] != b"\x03\x00":
        return None
    off = 1014 + int.from_bytes(quote[1012:1014], "little")
    size = int.from_bytes(quote[off + 2:off + 6], "little")
    end = off + 6 + size
    return quote[off:end] if end <= len(quote) else None


def needs_for(quote: bytes) -> Needs:
    """Raises PcsError(UNSUPPORTED_QUOTE) for bytes that are not a quote or carry no usable certification data.
    Memoised by the certification data of v3 quotes (the same for every quote of a platform): a quote
    whose other bytes are damaged still gets its platform's needs, and is refused by the verifier."""
    cd = _v3_cert_data(quote)
    if cd is not None:
        hit = _MEMO.get(cd)
        if hit is not None:
            return hit
    needs = _needs_for(quote)
    if cd is not None:
        if len(_MEMO) > 1024:
            _MEMO.clear()
        _MEMO[cd] = needs
    return needs


def _needs_for(quote: bytes) -> Needs:
    try:
        q = parse_quote(quote, allow_trailing=True)
        cd: CertificationData = q.certification_data
        if cd.type == CERT_QE_REPORT:
            cd = cd.qe_report_cert_data.certification_data
        tee = "tdx" if q.header.tee_type == TEE_TYPE_TDX else "sgx"
        if cd.type in (CERT_PCK_CHAIN, CERT_PCK_LEAF):
            certs = cd.pck_chain_pem()
            fmspc, ca = _from_leaf(certs[0])
            return Needs(tee, fmspc, ca, pck_chain=b"".join(certs) if cd.type == CERT_PCK_CHAIN else None,
                         qe_id=q.header.qe_id)
        if CERT_PPID_CLEARTEXT <= cd.type <= CERT_PPID_RSA3072:
            return Needs(tee, None, None, ppid=cd.ppid_cert_info(), qe_id=q.header.qe_id)
    except FormatError as e:
        raise PcsError(PcsCode.UNSUPPORTED_QUOTE, f"not a readable quote: {e}") from e
    raise PcsError(PcsCode.UNSUPPORTED_QUOTE, f"certification data type {cd.type} names no PCK certificate",
                   {"cert_data_type": cd.type})

