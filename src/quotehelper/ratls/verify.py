"""Judging a peer's RA-TLS certificate: formats -> bindings -> nonce -> quote -> policy -> self-signature.

Bindings, per producer:
- DICE evidence (2.23.133.5.4.9; every current producer): the quote's report data must be
  SHA-256(claims-buffer) || 32 zeros, then the claims' `pubkey-hash` (sha-256/384/512) must equal the
  hash of the certificate's DER SubjectPublicKeyInfo.
- Gramine legacy (1.2.840.113741.1337.6, also in its mis-encoded form): report data =
  SHA-256(SPKI) || 32 zeros.
- Intel SGX SDK / Open Enclave legacy (1.2.840.113741.1.13.1): the SDK puts the DICE quote there again,
  so its report data is the claims hash (accepted only beside DICE evidence); Open Enclave's own
  certificates bind SHA-256(public key PEM + NUL) in the first 32 bytes; SHA-256(SPKI) || 32 zeros
  is accepted too.
Every distinct quote in the certificate is verified, and all must come from the same enclave.
CA-signed RA-TLS certificates are not chain-checked here (the TLS stack's job); self-signed ones must
verify with their own key.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.errors import FormatError
from quotehelper.inputs import TimeLike, as_utc
from quotehelper.ratls import formats as f
from quotehelper.ratls.collateral import CollateralSource
from quotehelper.ratls.errors import RatlsCode, RatlsError
from quotehelper.ratls.options import RatlsOptions
from quotehelper.sgx.quote import parse_quote
from quotehelper.verify import Collateral, Verdict, VerificationError, Verifier
from quotehelper.verify.verdict import EnclaveIdentity, iso

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


@dataclass(frozen=True)
class PeerVerdict:
    """`ok`: every check passed and the policy accepts the peer; else `error` names the reason.
    `identity` is the verified enclave (MRENCLAVE, MRSIGNER, ...); `verdict` the quote's full verdict."""

    error: RatlsError | None = None
    formats: tuple[str, ...] = ()            # "dice", "gramine-legacy", "intel-legacy"
    identity: EnclaveIdentity | None = None
    verdict: Verdict | None = None
    nonce: bytes | None = None
    collateral_from: str | None = None       # "endorsements" | "source"
    subject: str | None = None
    spki_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.code.value

    def summary(self) -> str:
        if self.error is not None:
            return f"REFUSED {self.error.code.value}: {self.error.message}"
        assert self.identity is not None and self.verdict is not None
        return (f"OK {'+'.join(self.formats)} MRENCLAVE {self.identity.mr_enclave.hex()} "
                f"MRSIGNER {self.identity.mr_signer.hex()} TCB {self.verdict.status}")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "code": self.code, "error": self.error.to_dict() if self.error else None,
                "formats": list(self.formats), "subject": self.subject, "spki_sha256": self.spki_sha256,
                "nonce": self.nonce.hex() if self.nonce is not None else None,
                "collateral_from": self.collateral_from,
                "identity": self.identity.to_dict() if self.identity else None,
                "verdict": self.verdict.to_dict() if self.verdict else None, **self.extra}


@dataclass(frozen=True)
class _Found:
    fmt: str
    quote: bytes
    claims: f.Claims | None = None


def _report_data(quote: bytes, fmt: str) -> bytes:
    try:
        return parse_quote(quote, allow_trailing=True).report_body.report_data
    except (FormatError, ValueError) as e:
        raise RatlsError(RatlsCode.QUOTE_INVALID, f"{fmt} quote does not parse: {e}",
                         {"verify_code": "QUOTE_MALFORMED", "format": fmt}) from e


def _evidence(pc: f.ParsedCert, accept_legacy_only: bool) -> list[_Found]:
    """Every evidence extension, with its binding to the key checked."""
    found: list[_Found] = []
    spki256 = hashlib.sha256(pc.spki).digest() + bytes(32)
    dice = pc.extensions.get("dice-evidence")
    if dice is not None:
        quote, claims_buf = f.decode_evidence(dice[1])
        if _report_data(quote, "dice") != f.report_data_for(claims_buf):
            raise RatlsError(RatlsCode.CLAIMS_BINDING_MISMATCH, "the quote's report data is not "
                             "SHA-256(claims-buffer) || zeros", {"format": "dice"})
        claims = f.decode_claims(claims_buf)
        if f.HASH_ALGS[claims.hash_alg][1](pc.spki).digest() != claims.pubkey_hash:
            raise RatlsError(RatlsCode.KEY_BINDING_MISMATCH, f"pubkey-hash ({claims.hash_name}) is not the hash "
                             "of the certificate's SubjectPublicKeyInfo", {"format": "dice"})
        found.append(_Found("dice", quote, claims))
    for name, fmt in (("gramine-quote", "gramine-legacy"), ("intel-quote", "intel-legacy")):
        ext = pc.extensions.get(name)
        if ext is None:
            continue
        quote = ext[1]
        if found and found[0].quote == quote:  # Intel SDK: the DICE quote again, already bound
            found.append(_Found(fmt, quote))
            continue
        rd = _report_data(quote, fmt)
        # Intel SDK beside DICE evidence: the claims hash. Gramine: the key's. Open Enclave alone: the
        # SHA-256 of the key's PEM with its terminating NUL (only the first 32 bytes are compared there).
        bound = rd == spki256 or (fmt == "intel-legacy" and (
            (dice is not None and found and rd == f.report_data_for(f.decode_evidence(dice[1])[1]))
            or rd[:32] == _oe_pem_hash(pc.spki)))
        if not bound:
            raise RatlsError(RatlsCode.KEY_BINDING_MISMATCH, f"{fmt} quote's report data binds neither the "
                             "key nor the claims", {"format": fmt})
        found.append(_Found(fmt, quote))
    if not found:
        raise RatlsError(RatlsCode.EVIDENCE_MISSING, "no RA-TLS evidence extension (2.23.133.5.4.9, "
                         "1.2.840.113741.1337.6 or 1.2.840.113741.1.13.1)")
    if dice is None and not accept_legacy_only:
        raise RatlsError(RatlsCode.EVIDENCE_MISSING, "only a legacy extension, and accept_legacy_only is off")
    return found


def _oe_pem_hash(spki: bytes) -> bytes | None:
    try:
        pem = serialization.load_der_public_key(spki).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm):
        return None  # a key that does not load binds nothing this way
    return hashlib.sha256(pem + b"\0").digest()


def _check_self_signature(pc: f.ParsedCert) -> None:
    if not pc.self_issued:
        return
    try:
        key = serialization.load_der_public_key(pc.spki)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise RatlsError(RatlsCode.CERT_MALFORMED, f"public key does not load: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or pc.signature_hash is None:
        raise RatlsError(RatlsCode.CERT_MALFORMED, "RA-TLS certificates are ECDSA-signed")
    try:
        key.verify(pc.signature, pc.tbs, ec.ECDSA(_HASHES[pc.signature_hash]()))
    except InvalidSignature as e:
        raise RatlsError(RatlsCode.CERT_SIGNATURE_INVALID, "the self-signature does not verify with the "
                         "certificate's own key") from e


@dataclass(frozen=True)
class _Static:
    """What depends on the certificate's bytes alone (cached: a server presents one certificate to
    every client, a client one to every server)."""

    pc: f.ParsedCert
    found: tuple[_Found, ...] | None
    error: RatlsError | None          # a binding/format failure, raised on every use
    signature_error: RatlsError | None  # raised only after the quote checks (see _verify)
    # Decoded once: the same Collateral object keeps its content hash, so the Verifier's cache hits.
    endorsements: Collateral | RatlsError | None = None


def _fresh(e: RatlsError) -> RatlsError:
    return RatlsError(e.code, e.message, e.detail)  # a cached instance re-raised would grow its traceback


@functools.lru_cache(maxsize=256)
def _static(der: bytes, accept_legacy_only: bool) -> _Static:
    pc = f.parse_certificate(der)
    try:
        found = tuple(_evidence(pc, accept_legacy_only))
    except RatlsError as e:
        return _Static(pc, None, e, None)
    endorsements: Collateral | RatlsError | None = None
    if "dice-endorsements" in pc.extensions:
        try:
            endorsements = f.decode_endorsements(pc.extensions["dice-endorsements"][1])
        except RatlsError as e:
            endorsements = e
    try:
        _check_self_signature(pc)
    except RatlsError as e:
        return _Static(pc, found, None, e, endorsements)
    return _Static(pc, found, None, None, endorsements)


class RatlsVerifier:
    """Judges RA-TLS certificates. Collaborators: `verifier` (our DCAP `Verifier`: trust anchors and the
    verified-collateral cache; default Intel's root) and `collateral` (a CollateralSource, used when
    the certificate has no endorsements or `use_endorsements` is off). Thread-safe; keep one."""

    def __init__(self, options: RatlsOptions | None = None, *, verifier: Verifier | None = None,
                 collateral: CollateralSource | None = None) -> None:
        self.options = options or RatlsOptions()
        self.verifier = verifier or Verifier()
        self.collateral = collateral

    def verify(self, cert: bytes, *, nonce: bytes | None = None, now: TimeLike | None = None) -> PeerVerdict:
        """`cert`: PEM or DER. `nonce`: the value the peer's claims must carry (required when
        `options.require_nonce`). `now`: verification time, unix seconds or an aware datetime (default:
        the current time; a naive datetime raises InputError). Never raises for a bad certificate: the
        PeerVerdict carries the RatlsError."""
        when = datetime.now(UTC) if now is None else as_utc(now, "now")
        facts: dict[str, Any] = {}
        try:
            return self._verify(cert, nonce, when, facts)
        except RatlsError as e:
            return PeerVerdict(error=e, **facts)

    def _verify(self, cert: bytes, nonce: bytes | None, now: datetime, facts: dict[str, Any]) -> PeerVerdict:
        opts = self.options
        st = _static(f.load_der(cert), opts.accept_legacy_only)
        pc = st.pc
        facts.update(subject=pc.subject, spki_sha256=hashlib.sha256(pc.spki).hexdigest())
        if pc.unknown_critical:
            raise RatlsError(RatlsCode.EXTENSION_CRITICAL, "unknown critical extension",
                             {"oids": list(pc.unknown_critical)})
        if opts.check_cert_dates:
            if now < pc.not_before:
                raise RatlsError(RatlsCode.CERT_NOT_YET_VALID, f"valid from {iso(pc.not_before)}")
            if now > pc.not_after:
                raise RatlsError(RatlsCode.CERT_EXPIRED, f"expired {iso(pc.not_after)}")
        if st.error is not None:
            raise _fresh(st.error)
        assert st.found is not None
        found = st.found
        facts["formats"] = tuple(x.fmt for x in found)
        claims = found[0].claims
        facts["nonce"] = claims.nonce if claims else None
        if nonce is not None or opts.require_nonce:
            if nonce is None:
                raise RatlsError(RatlsCode.OPTIONS_INVALID, "require_nonce is set but no nonce was expected")
            if claims is None or claims.nonce is None:
                raise RatlsError(RatlsCode.NONCE_MISSING, "the certificate carries no nonce claim")
            if claims.nonce != nonce:
                raise RatlsError(RatlsCode.NONCE_MISMATCH, "the certificate's nonce is not the expected one "
                                 "(a replayed certificate?)", {"got": claims.nonce.hex(), "expected": nonce.hex()})
        coll, facts["collateral_from"] = self._collateral(st, found[0].quote)
        verdict: Verdict | None = None
        for quote in dict.fromkeys(x.quote for x in found):  # distinct quotes, in order
            v = self.verifier.verify(quote, coll, now=now, policy=opts.policy)
            if v.error is not None:
                raise RatlsError(RatlsCode.QUOTE_INVALID, f"quote refused: {v.error.code.value}: {v.error.message}",
                                 {"verify_code": v.error.code.value, **v.error.detail})
            if verdict is not None and _identity(verdict) != _identity(v):
                raise RatlsError(RatlsCode.EVIDENCE_INCONSISTENT, "the certificate's quotes come from "
                                 "different enclaves")
            facts.update(verdict=v, identity=v.enclave)
            if not v.accepted:
                raise RatlsError(RatlsCode.POLICY_REJECTED, "refused by policy: " + "; ".join(
                    f"{r.rule}: {r.detail}" for r in v.failed_rules),
                    {"rules": [r.to_dict() for r in v.failed_rules], "status": v.status})
            verdict = v
        # Last, so a changed quote, claims or key is reported as such (the signature covers them all).
        if st.signature_error is not None:
            raise _fresh(st.signature_error)
        return PeerVerdict(**facts)

    def _collateral(self, st: _Static, quote: bytes) -> tuple[Collateral, str]:
        if st.endorsements is not None and self.options.use_endorsements:
            if isinstance(st.endorsements, RatlsError):
                raise _fresh(st.endorsements)
            return st.endorsements, "endorsements"
        if self.collateral is not None:
            try:
                coll = self.collateral(quote)
            except (VerificationError, OSError) as e:
                raise RatlsError(RatlsCode.COLLATERAL_UNAVAILABLE, f"collateral source failed: {e}") from e
            if coll is not None:
                return coll, "source"
        raise RatlsError(RatlsCode.COLLATERAL_UNAVAILABLE, "no endorsements extension and no collateral for "
                         "this quote (give a collateral source)")


def _identity(v: Verdict) -> tuple[Any, ...]:
    e = v.enclave
    assert e is not None
    return (e.mr_enclave, e.mr_signer, e.isv_prod_id, e.isv_svn, e.attributes)
