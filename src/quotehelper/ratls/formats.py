"""RA-TLS wire formats: OIDs, the claims buffer, the evidence and endorsements CBOR, and a tolerant
X.509 reader.

Evidence (TCG DICE, OID 2.23.133.5.4.9; CCC "Interoperable RA-TLS" formats): the extension value is
the CBOR item `60000([quote, claims-buffer])`; `claims-buffer` is a byte string holding a CBOR map
`{"pubkey-hash": h'<CBOR [hash-alg-id, hash]>', ? "nonce": h'..'}` (alg 1 = sha-256, 7 = sha-384,
8 = sha-512; the hash is over the DER SubjectPublicKeyInfo). The quote's report data is
SHA-256(claims-buffer) || 32 zero bytes. Tags 60001 (TEE report) and 60002 (legacy SGX report) are
recognised and refused (no quote to verify remotely).

Endorsements (OID 2.23.133.5.4.2): `60000([version, tcb_info, tcb_issuer_chain, crl_pck_cert,
crl_pck_proc_ca, crl_issuer_chain_pck_cert, qe_id_info, qe_id_issuer_chain, ? creation_datetime])`,
Open Enclave's field order; every item but the version is a byte string. We write the PCS v4 bodies
as received (`{"tcbInfo":..,"signature":..}`), PEM chains, DER CRLs and an ISO 8601 time; we read
what Open Enclave writes too (NUL-terminated text, PEM CRLs).

Legacy: Gramine's 1.2.840.113741.1337.6 (which Gramine mis-encodes: the OID's contents are the whole
DER of that OID, so generic parsers show `0.6.9.42.840.113741.1337.6`) and Intel SDK / Open Enclave's
1.2.840.113741.1.13.1 each hold a raw quote.

The X.509 reader uses asn1crypto, not `cryptography`: Gramine's certificates carry ecdsa-with-SHA256
with a NULL parameter, which recent `cryptography` refuses to load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2
from asn1crypto import core, pem
from asn1crypto import x509 as ax509

from quotehelper.ratls.errors import RatlsCode, RatlsError
from quotehelper.verify.collateral import Collateral
from quotehelper.verify.errors import VerificationError

OID_DICE_EVIDENCE = "2.23.133.5.4.9"      # tcg-dice-conceptual-message-wrapper (tagged evidence)
OID_DICE_ENDORSEMENTS = "2.23.133.5.4.2"  # tcg-dice-endorsement-manifest
OID_INTEL_QUOTE = "1.2.840.113741.1.13.1"  # Intel SGX SDK / Open Enclave: the raw quote
OID_GRAMINE_QUOTE = "1.2.840.113741.1337.6"  # Gramine: the raw quote

TAG_TEE_QUOTE, TAG_TEE_REPORT, TAG_SGX_REPORT = 60000, 60001, 60002
ENDORSEMENTS_VERSION = 1

# hash-alg-id (IANA named information registry) -> (name, function)
HASH_ALGS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    1: ("sha-256", hashlib.sha256), 7: ("sha-384", hashlib.sha384), 8: ("sha-512", hashlib.sha512)}
HASH_IDS = {name: alg_id for alg_id, (name, _) in HASH_ALGS.items()}

# Extension OID contents (the bytes after tag and length) -> our name for it.
_KNOWN: dict[bytes, str] = {
    core.ObjectIdentifier(OID_DICE_EVIDENCE).contents: "dice-evidence",
    core.ObjectIdentifier(OID_DICE_ENDORSEMENTS).contents: "dice-endorsements",
    core.ObjectIdentifier(OID_INTEL_QUOTE).contents: "intel-quote",
    core.ObjectIdentifier(OID_GRAMINE_QUOTE).contents: "gramine-quote",
    # Gramine's mis-encoding: the full DER of its OID as the contents.
    core.ObjectIdentifier(OID_GRAMINE_QUOTE).dump(): "gramine-quote",
}
_SIG_HASHES = {"sha256_ecdsa": "sha256", "sha384_ecdsa": "sha384", "sha512_ecdsa": "sha512"}


def _bad(code: RatlsCode, message: str, **detail: Any) -> RatlsError:
    return RatlsError(code, message, detail)


# ---- claims and evidence ---------------------------------------------------------------------------

def spki_hash(spki_der: bytes, hash_name: str = "sha-256") -> bytes:
    return HASH_ALGS[HASH_IDS[hash_name]][1](spki_der).digest()


def encode_claims(spki_der: bytes, hash_name: str = "sha-256", nonce: bytes | None = None) -> bytes:
    """The claims buffer: CBOR map, text keys, byte-string values (pubkey-hash = CBOR [alg, hash])."""
    claims: dict[str, bytes] = {"pubkey-hash": cbor2.dumps([HASH_IDS[hash_name], spki_hash(spki_der, hash_name)])}
    if nonce is not None:
        claims["nonce"] = bytes(nonce)
    return cbor2.dumps(claims)


def report_data_for(claims: bytes) -> bytes:
    """The 64-byte report data binding a claims buffer: SHA-256(claims) || 32 zero bytes."""
    return hashlib.sha256(claims).digest() + bytes(32)


def encode_evidence(quote: bytes, claims: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(TAG_TEE_QUOTE, [bytes(quote), bytes(claims)]))


@dataclass(frozen=True)
class Claims:
    hash_alg: int
    pubkey_hash: bytes
    nonce: bytes | None
    other: tuple[str, ...] = ()   # names of claims a verifier ignores (e.g. rats-tls's key_0)

    @property
    def hash_name(self) -> str:
        return HASH_ALGS[self.hash_alg][0]


def _loads(data: bytes, code: RatlsCode, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError) as e:
        raise _bad(code, f"{what} is not CBOR: {e}") from e


def decode_evidence(value: bytes) -> tuple[bytes, bytes]:
    """The 2.23.133.5.4.9 value -> (quote, claims buffer)."""
    item = _loads(value, RatlsCode.EVIDENCE_MALFORMED, "evidence")
    if not isinstance(item, cbor2.CBORTag):
        raise _bad(RatlsCode.EVIDENCE_MALFORMED, "evidence is not a tagged CBOR item")
    if item.tag in (TAG_TEE_REPORT, TAG_SGX_REPORT):
        raise _bad(RatlsCode.EVIDENCE_UNSUPPORTED, f"evidence tag {item.tag} holds a report, not a quote "
                   "(local attestation only)", tag=item.tag)
    if item.tag != TAG_TEE_QUOTE:
        raise _bad(RatlsCode.EVIDENCE_UNSUPPORTED, f"unknown evidence tag {item.tag}", tag=item.tag)
    v = item.value
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, bytes) for x in v)):
        raise _bad(RatlsCode.EVIDENCE_MALFORMED, "tag 60000 must hold [quote bytes, claims bytes]")
    return v[0], v[1]


def decode_claims(buf: bytes) -> Claims:
    m = _loads(buf, RatlsCode.CLAIMS_MALFORMED, "claims buffer")
    if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
        raise _bad(RatlsCode.CLAIMS_MALFORMED, "claims buffer is not a map with text keys")
    ph = m.get("pubkey-hash")
    if ph is None:
        raise _bad(RatlsCode.CLAIMS_MALFORMED, "claims buffer has no pubkey-hash", keys=sorted(m))
    entry = _loads(ph, RatlsCode.CLAIMS_MALFORMED, "pubkey-hash") if isinstance(ph, bytes) else ph
    if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and isinstance(entry[1], bytes)):
        raise _bad(RatlsCode.CLAIMS_MALFORMED, "pubkey-hash must be a hash-entry [alg-id, hash bytes]")
    if entry[0] not in HASH_ALGS:
        raise _bad(RatlsCode.EVIDENCE_UNSUPPORTED, f"pubkey-hash algorithm {entry[0]} (supported: 1, 7, 8)",
                   hash_alg=entry[0])
    nonce = m.get("nonce")
    if nonce is not None and not isinstance(nonce, bytes):
        raise _bad(RatlsCode.CLAIMS_MALFORMED, "nonce must be a byte string")
    return Claims(entry[0], entry[1], nonce, tuple(sorted(k for k in m if k not in ("pubkey-hash", "nonce"))))


# ---- endorsements ------------------------------------------------------------------------------------

def _pcs_body(member: str, signed: bytes, signature: bytes) -> bytes:
    return b'{"' + member.encode() + b'":' + signed + b',"signature":"' + signature.hex().encode() + b'"}'


def encode_endorsements(c: Collateral, created: datetime | None = None) -> bytes:
    """Collateral -> the 2.23.133.5.4.2 value (Open Enclave's field order, PCS bodies as received)."""
    when = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    return cbor2.dumps(cbor2.CBORTag(TAG_TEE_QUOTE, [
        ENDORSEMENTS_VERSION, _pcs_body("tcbInfo", c.tcb_info, c.tcb_info_signature), c.tcb_info_issuer_chain,
        c.pck_crl, c.root_ca_crl, c.pck_crl_issuer_chain,
        _pcs_body("enclaveIdentity", c.qe_identity, c.qe_identity_signature), c.qe_identity_issuer_chain, when]))


def decode_endorsements(value: bytes) -> Collateral:
    item = _loads(value, RatlsCode.ENDORSEMENTS_MALFORMED, "endorsements")
    if not isinstance(item, cbor2.CBORTag) or item.tag != TAG_TEE_QUOTE or not isinstance(item.value, list):
        raise _bad(RatlsCode.ENDORSEMENTS_MALFORMED, "endorsements must be tag 60000 over an array")
    v = item.value
    if len(v) not in (8, 9) or type(v[0]) is not int or not all(isinstance(x, bytes) for x in v[1:]):
        raise _bad(RatlsCode.ENDORSEMENTS_MALFORMED, "endorsements: [version, 7 or 8 byte strings]",
                   entries=len(v))

    def text(b: bytes) -> bytes:  # Open Enclave NUL-terminates its strings
        return b[:-1] if b.endswith(b"\0") else b

    try:
        return Collateral.from_pcs(
            tcb_info_body=text(v[1]), tcb_info_issuer_chain=text(v[2]), pck_crl=text(v[3]),
            root_ca_crl=text(v[4]), pck_crl_issuer_chain=text(v[5]), qe_identity_body=text(v[6]),
            qe_identity_issuer_chain=text(v[7]), source="endorsements extension")
    except VerificationError as e:
        raise _bad(RatlsCode.ENDORSEMENTS_MALFORMED, f"endorsements: {e.message}", **e.detail) from e


# ---- tolerant X.509 reader -------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedCert:
    """What RA-TLS needs from a certificate, read without judging its algorithm encodings."""

    der: bytes
    tbs: bytes
    signature: bytes
    signature_hash: str | None      # "sha256" / "sha384" / "sha512"; None = not ECDSA
    spki: bytes                     # DER SubjectPublicKeyInfo, exactly as in the certificate
    subject: str
    self_issued: bool
    not_before: datetime
    not_after: datetime
    extensions: dict[str, tuple[bool, bytes]] = field(default_factory=dict)  # our name -> (critical, value)
    unknown_critical: tuple[str, ...] = ()


def load_der(data: bytes) -> bytes:
    """PEM (first CERTIFICATE block) or DER -> DER."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            _, _, der = pem.unarmor(data.strip())
        except ValueError as e:
            raise _bad(RatlsCode.CERT_MALFORMED, f"not a PEM certificate: {e}") from e
        return der
    return bytes(data)


def parse_certificate(data: bytes) -> ParsedCert:
    """PEM or DER X.509 -> ParsedCert. Raises RatlsError(CERT_MALFORMED)."""
    der = load_der(data)
    try:
        cert = ax509.Certificate.load(der, strict=True)
        tbs = cert["tbs_certificate"]
        sig_alg = cert["signature_algorithm"]["algorithm"].native
        exts: dict[str, tuple[bool, bytes]] = {}
        unknown_critical = []
        for e in tbs["extensions"]:
            oid = e["extn_id"]
            name = _KNOWN.get(oid.contents)
            critical = bool(e["critical"].native)
            if name is not None:
                exts.setdefault(name, (critical, e["extn_value"].contents))
            elif critical and oid.native not in _UNDERSTOOD_CRITICAL:
                unknown_critical.append(oid.dotted)
        validity = tbs["validity"]
        return ParsedCert(
            der=der, tbs=tbs.dump(), signature=cert["signature_value"].native,
            signature_hash=_SIG_HASHES.get(sig_alg), spki=tbs["subject_public_key_info"].dump(),
            # Byte equality: asn1crypto's RFC 5280 name comparison (string prep) costs ~1 ms per certificate.
            subject=tbs["subject"].human_friendly, self_issued=tbs["subject"].dump() == tbs["issuer"].dump(),
            not_before=_utc(validity["not_before"].native), not_after=_utc(validity["not_after"].native),
            extensions=exts, unknown_critical=tuple(unknown_critical))
    except RatlsError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise _bad(RatlsCode.CERT_MALFORMED, f"not an X.509 certificate: {e}") from e


# Critical extensions a TLS stack handles itself (RFC 5280 names as asn1crypto spells them).
_UNDERSTOOD_CRITICAL = {"basic_constraints", "key_usage", "extended_key_usage", "subject_alt_name",
                        "name_constraints", "policy_constraints", "certificate_policies"}


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
