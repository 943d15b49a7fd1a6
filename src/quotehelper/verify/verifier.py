"""Orchestration: collateral -> chains and CRLs -> signatures and bindings -> TCB -> policy -> verdict.

Speed: verified collateral (root CRL, PCK CRL + chain, TCB info and QE identity with their chains and
signatures) is cached under the collateral's content hash and the trust anchor, together with the
window of instants at which all of it is valid; a verified PCK chain is cached the same way under the
hash of its bytes. A quote from a known platform family then costs its two ECDSA signature checks
(QE report, ISV report) plus parsing. Outside the window everything is re-checked, so the precise
error (e.g. CRL_EXPIRED) is still reported.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.errors import FormatError
from quotehelper.inputs import InputTypeError, QuoteLike, TimeLike, as_quote_bytes, as_utc
from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension
from quotehelper.sgx.quote import CERT_PCK_CHAIN
from quotehelper.verify import quote_checks as qc
from quotehelper.verify.certs import Cert, wrap
from quotehelper.verify.chain import ChainChecker, Window, cn, load_pem_chain
from quotehelper.verify.collateral import Collateral
from quotehelper.verify.errors import ErrorCode, Kind, VerificationError
from quotehelper.verify.policy import Policy
from quotehelper.verify.tcb import QeIdentity, TcbInfo, check_dates, converge, merge_advisories
from quotehelper.verify.trust import TrustAnchor, select_anchor
from quotehelper.verify.verdict import EnclaveIdentity, Verdict

_SGX_OID = x509.ObjectIdentifier(SGX_EXTENSION_OID)
_PERMISSIVE = Policy.permissive()  # immutable
K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size, self.data = size, OrderedDict[K, V]()

    def get(self, key: K) -> V | None:
        v = self.data.get(key)
        if v is not None:
            with contextlib.suppress(KeyError):  # evicted by another thread meanwhile; the value is still good
                self.data.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            try:
                self.data.popitem(last=False)
            except KeyError:
                break


@dataclass(frozen=True)
class VerifyOptions:
    """Everything a verification depends on besides the quote.

    `now`: unix seconds (int/float) or an aware datetime, stored as an aware UTC datetime; None = the
    current time at each call. A naive datetime raises InputError (see quotehelper.inputs.as_utc).
    """

    trusted_roots: tuple[TrustAnchor, ...] = ()   # empty = Intel's production root (pinned)
    now: datetime | None = None
    check_revocation: bool = True
    pinned_intermediates: bool = True             # trust Intel's pinned intermediates' root signatures
    collateral: Collateral | None = None
    policy: Policy | None = None                  # None = Policy.permissive()

    def __post_init__(self) -> None:
        if self.now is not None:
            object.__setattr__(self, "now", as_utc(self.now, "now"))
        roots = self.trusted_roots
        if isinstance(roots, TrustAnchor):
            roots = (roots,)
        if not isinstance(roots, tuple | list) or not all(isinstance(r, TrustAnchor) for r in roots):
            raise InputTypeError("trusted_roots", "expected TrustAnchor objects (TrustAnchor.from_file(path))")
        object.__setattr__(self, "trusted_roots", tuple(roots))
        if self.collateral is not None:
            _check_collateral_type(self.collateral)
        if self.policy is not None and not isinstance(self.policy, Policy):
            raise InputTypeError("policy", f"expected a Policy (Policy.load(path)), got {type(self.policy).__name__}")


@dataclass
class VerifiedCollateral:
    anchor: TrustAnchor
    tcb_info: TcbInfo
    qe_identity: QeIdentity
    window: Window
    oldest_issue: datetime
    verified: set[tuple[bytes, bytes]] = field(default_factory=set)
    crls: dict[bytes, x509.CertificateRevocationList] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifiedPck:
    leaf_key: ec.EllipticCurvePublicKey
    ext: PckExtension
    ca_type: str
    window: Window


def _within(w: Window, now: datetime) -> bool:
    return w.not_before is not None and w.not_after is not None and w.not_before <= now < w.not_after


def _check_collateral_type(coll: object) -> None:
    # A str or dict here is a caller's mistake, not a bad input to report in a verdict.
    if not isinstance(coll, Collateral) and not callable(getattr(coll, "to_dcap_qvl_json", None)):
        raise InputTypeError("collateral", f"expected a Collateral, got {type(coll).__name__} (use "
                             "Collateral.from_dcap_qvl_json(text) or load_collateral(path))")


class Verifier:
    """Reusable and cheap to keep: holds the trust anchors and the verified-collateral cache."""

    def __init__(self, options: VerifyOptions | None = None, cache_size: int = 64) -> None:
        self.options = options or VerifyOptions()
        self.roots = self.options.trusted_roots or (TrustAnchor.intel(),)
        self._collateral_cache: _Lru[tuple[bytes, str, bool], VerifiedCollateral] = _Lru(cache_size)
        self._pck_cache: _Lru[tuple[bytes, bytes, str], VerifiedPck] = _Lru(cache_size * 64)
        self._qe_verified: set[tuple[bytes, bytes, bytes]] = set()  # (PCK chain hash, QE report, its signature)
        self._att_keys: dict[bytes, ec.EllipticCurvePublicKey] = {}  # attestation keys by their 64 raw bytes

    def verify(self, quote: QuoteLike, collateral: Collateral | None = None, *, now: TimeLike | None = None,
               policy: Policy | None = None) -> Verdict:
        """Verify one quote (bytes, or hex text) at `now` (unix seconds or an aware datetime; default: the
        options' `now`, else the current time).

        Never raises for a bad quote or bad collateral: the verdict carries the error (`Verdict.exit_code()`
        maps it to 1 invalid / 2 unusable input). Raises InputTypeError / InputError for arguments of the
        wrong type (collateral given as str or dict, a naive datetime, hex text that is not hex): those are
        the caller's bugs, not verdicts.
        """
        raw = as_quote_bytes(quote)
        coll = collateral if collateral is not None else self.options.collateral
        if coll is not None:
            _check_collateral_type(coll)
        if policy is not None and not isinstance(policy, Policy):
            raise InputTypeError("policy", f"expected a Policy, got {type(policy).__name__}")
        when = as_utc(now, "now") if now is not None else self.options.now or datetime.now(UTC)
        facts: dict[str, Any] = {}
        try:
            if coll is None:
                raise VerificationError(ErrorCode.COLLATERAL_MALFORMED, "no collateral given")
            if not isinstance(coll, Collateral):  # e.g. the software platform's own collateral object
                to_json = getattr(coll, "to_dcap_qvl_json", None)
                if to_json is None:
                    raise VerificationError(ErrorCode.COLLATERAL_MALFORMED, f"not collateral: {type(coll).__name__}")
                coll = Collateral.from_dcap_qvl_json(to_json())
            verdict, oldest = self._verify(raw, coll, when, facts)
        except VerificationError as e:
            return Verdict(valid=False, error=e, **facts)
        except (ValueError, TypeError, FormatError, UnsupportedAlgorithm, x509.DuplicateExtension) as e:  # safety net: a lazily parsed field that is corrupt
            err = VerificationError(ErrorCode.QUOTE_MALFORMED, f"unparseable input: {e}", {"exception": type(e).__name__})
            return Verdict(valid=False, error=err, **facts)
        pol = policy or self.options.policy
        rules = (pol or _PERMISSIVE).evaluate(verdict, when, oldest)
        # The verdict has not left this method yet: fill in its policy fields instead of copying all
        # twenty fields with dataclasses.replace.
        object.__setattr__(verdict, "policy", tuple(rules))
        object.__setattr__(verdict, "policy_applied", pol is not None)
        return verdict

    def verify_collateral(self, collateral: Collateral, *, now: datetime | None = None) -> VerifiedCollateral:
        """Checks collateral on its own, as a cache does before storing it: root CA CRL, PCK CRL and its
        issuer chain, TCB info and QE identity (chains, signatures over the exact bytes, dates), under
        the trust anchor its PCK CRL chain ends in. Raises VerificationError; the result is cached by
        content hash like a quote's collateral."""
        when = as_utc(now, "now") if now is not None else self.options.now or datetime.now(UTC)
        chain = load_pem_chain(collateral.pck_crl_issuer_chain, "pck_crl_issuer_chain")
        anchor, _ = select_anchor(chain, self.roots, "pck_crl_issuer")
        return self._verify_collateral(collateral, anchor, when)

    # ---- steps ------------------------------------------------------------------------------------
    def _verify(self, raw: bytes, coll: Collateral, now: datetime,
                facts: dict[str, Any]) -> tuple[Verdict, datetime]:
        q = qc.load_quote(raw)
        body = q.report_body
        facts.update(quote_version=q.version, enclave=EnclaveIdentity.of(body))
        cd = q.certification_data
        chain_src = cd.data if cd.type == CERT_PCK_CHAIN else (coll.pck_certificate_chain or b"")
        chain_key = hashlib.sha256(chain_src).digest()
        vc, pck = self._cached(chain_key, coll, now)
        if pck is None:
            certs = qc.load_chain(qc.pck_chain_ders(q, coll.pck_certificate_chain))
            anchor, _ = select_anchor(certs, self.roots, "pck")
            if vc is None or vc.anchor is not anchor:
                vc = self._verify_collateral(coll, anchor, now)
            pck = self._verify_pck(certs, vc, now)
            self._pck_cache.put((chain_key, coll.content_hash, anchor.sha256), pck)
        ext = pck.ext
        facts.update(fmspc=ext.fmspc.hex().upper(), pce_id=ext.pce_id.hex().upper(), ppid=ext.ppid.hex(),
                     ca_type=pck.ca_type)
        assert vc is not None
        # A platform's QE report (it binds the QE's attestation key) and its PCK signature are the same in
        # every quote until the key changes: verified once per (PCK chain, report, signature), like chains.
        qe = q.signature.qe
        qe_memo = (chain_key, qe.qe_report_bytes(), qe.qe_report_signature)
        if qe_memo not in self._qe_verified:
            qc.check_qe_report_signature(q, pck.leaf_key)
            if len(self._qe_verified) > 4096:
                self._qe_verified.clear()
            self._qe_verified.add(qe_memo)
        qc.check_qe_binding(q)
        qe_level = vc.qe_identity.match(qe.qe_report)
        att = self._att_keys.get(q.signature.attest_pub_key)
        if att is None:
            att = qc.attestation_key(q)
            if len(self._att_keys) > 4096:
                self._att_keys.clear()
            self._att_keys[q.signature.attest_pub_key] = att
        qc.check_isv_signature(q, att)
        level = vc.tcb_info.match(ext)
        status = converge(level.status, qe_level.status)
        if status == "Revoked":
            raise VerificationError(ErrorCode.TCB_REVOKED, "TCB status is Revoked", {"platform": level.status,
                                                                                     "qe": qe_level.status})
        window = Window(vc.window.not_before, vc.window.not_after)
        window.add(pck.window.not_before, pck.window.not_after)
        return Verdict(
            valid=True, status=status, platform_status=level.status, qe_status=qe_level.status,
            advisory_ids=tuple(merge_advisories(level.advisory_ids, qe_level.advisory_ids)), tcb_level=level,
            tcb_date=level.tcb_date, collateral_not_before=window.not_before, collateral_not_after=window.not_after,
            tcb_evaluation_data_number=vc.tcb_info.evaluation_data_number, **facts), vc.oldest_issue

    def _cached(self, chain_key: bytes, coll: Collateral,
                now: datetime) -> tuple[VerifiedCollateral | None, VerifiedPck | None]:
        for anchor in self.roots:
            vc = self._collateral_cache.get((coll.content_hash, anchor.sha256, self.options.check_revocation))
            if vc is None or not _within(vc.window, now):
                continue
            pck = self._pck_cache.get((chain_key, coll.content_hash, anchor.sha256))
            return vc, (pck if pck is not None and _within(pck.window, now) else None)
        return None, None

    def _verify_collateral(self, coll: Collateral, anchor: TrustAnchor, now: datetime) -> VerifiedCollateral:
        key = (coll.content_hash, anchor.sha256, self.options.check_revocation)
        cached = self._collateral_cache.get(key)
        if cached is not None and _within(cached.window, now):
            return cached
        ck = ChainChecker(anchor, now, self.options.check_revocation, self.options.pinned_intermediates)
        root_crl = ck.add_crl(coll.root_ca_crl, anchor, "root CA CRL")
        if root_crl.get_revoked_certificate_by_serial_number(anchor.cert.serial_number) is not None:
            raise VerificationError(ErrorCode.CERT_REVOKED, "the root CA CRL revokes the root itself",
                                    {"chain": "root"}, Kind.COLLATERAL)
        crl_chain = load_pem_chain(coll.pck_crl_issuer_chain, "pck_crl_issuer_chain")
        pck_ca = ck.check_chain(crl_chain, "pck_crl_issuer_chain", leaf_is_ca=True)
        pck_crl = ck.add_crl(coll.pck_crl, pck_ca, "PCK CRL")
        tcb_signer = ck.check_chain(load_pem_chain(coll.tcb_info_issuer_chain, "tcb_info_issuer_chain"),
                                    "tcb_info_issuer_chain")
        self._check_signed(tcb_signer, coll.tcb_info, coll.tcb_info_signature, "TCB info",
                           ErrorCode.TCB_INFO_SIGNATURE_INVALID)
        if coll.qe_identity_issuer_chain == coll.tcb_info_issuer_chain:
            qe_signer = tcb_signer
        else:
            qe_signer = ck.check_chain(load_pem_chain(coll.qe_identity_issuer_chain, "qe_identity_issuer_chain"),
                                       "qe_identity_issuer_chain")
        self._check_signed(qe_signer, coll.qe_identity, coll.qe_identity_signature, "QE identity",
                           ErrorCode.QE_IDENTITY_SIGNATURE_INVALID)
        tcb = TcbInfo.parse(coll.tcb_info)
        check_dates(tcb.issue_date, tcb.next_update, now, "TCB info", ErrorCode.TCB_INFO_EXPIRED,
                    ErrorCode.TCB_INFO_NOT_YET_VALID)
        qe = QeIdentity.parse(coll.qe_identity)
        check_dates(qe.issue_date, qe.next_update, now, "QE identity", ErrorCode.QE_IDENTITY_EXPIRED,
                    ErrorCode.QE_IDENTITY_NOT_YET_VALID)
        ck.window.add(tcb.issue_date, tcb.next_update)
        ck.window.add(qe.issue_date, qe.next_update)
        # Collateral age: the monthly items (the root CA CRL is issued about once a year, so it is left out).
        oldest = min(tcb.issue_date, qe.issue_date, pck_crl.last_update_utc)
        vc = VerifiedCollateral(anchor, tcb, qe, ck.window, oldest, verified=ck.verified, crls=ck.crls)
        self._collateral_cache.put(key, vc)
        return vc

    @staticmethod
    def _check_signed(signer: Cert | x509.Certificate, data: bytes, sig: bytes, what: str, code: ErrorCode) -> None:
        signer = wrap(signer)
        key = signer.key
        if not isinstance(key, ec.EllipticCurvePublicKey) or not qc.raw_signature_valid(key, sig, data):
            raise VerificationError(code, f"{what} signature does not verify with {cn(signer)}'s key over the exact "
                                    "signed bytes", {"signer": signer.x509.subject.rfc4514_string()})

    def _verify_pck(self, certs: list[Cert], vc: VerifiedCollateral, now: datetime) -> VerifiedPck:
        ck = ChainChecker(vc.anchor, now, self.options.check_revocation, self.options.pinned_intermediates,
                          verified=vc.verified, crls=vc.crls)
        leaf_cert = ck.check_chain(certs, "pck", Kind.QUOTE)
        leaf = leaf_cert.x509
        try:
            der = leaf.extensions.get_extension_for_oid(_SGX_OID).value
            ext = PckExtension.parse(der.value)  # type: ignore[attr-defined]
        except (x509.ExtensionNotFound, FormatError) as e:
            raise VerificationError(ErrorCode.PCK_EXTENSION_MALFORMED, f"PCK certificate SGX extension: {e}",
                                    {"subject": leaf.subject.rfc4514_string()}) from e
        key = leaf_cert.key
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError(ErrorCode.PCK_CHAIN_MALFORMED, "PCK key is not ECDSA", {"chain": "pck"})
        # The CA that signed the leaf (its name is precomputed for Intel's pinned CAs; reading the
        # leaf's own issuer field would build x509.Name objects for every quote)
        issuer = cn(certs[1] if len(certs) > 1 else vc.anchor.info)
        ca_type = "platform" if "Platform" in issuer or ext.is_platform_ca else "processor"
        return VerifiedPck(key, ext, ca_type, ck.window)


def verify_quote(quote: QuoteLike, collateral: Collateral, **options: Any) -> Verdict:
    """One-shot convenience: `verify_quote(q, c, now=..., trusted_roots=(...), policy=...)`."""
    return Verifier(VerifyOptions(**options)).verify(quote, collateral)


def verify(raw_quote: QuoteLike, collateral: Collateral, now: TimeLike, *,
           root_ca: TrustAnchor | None = None, policy: Policy | None = None) -> Verdict:
    """dcap-qvl's shape, `verify(raw_quote, quote_collateral, now_secs)`, returning a Verdict.

    `raw_quote`: bytes or hex text; `collateral`: a Collateral (`load_collateral(path)`,
    `Collateral.from_dcap_qvl_json(text)`); `now`: unix seconds or an aware datetime. `root_ca`
    replaces Intel's production root (a test PKI). Unlike dcap-qvl it does not raise for an invalid
    quote: check `verdict.valid` / `verdict.accepted`. Raises InputTypeError / InputError for arguments
    of the wrong type. Follows Intel's DCAP quote verification (docs: dcap-verification.md).
    """
    return Verifier(VerifyOptions(trusted_roots=(root_ca,) if root_ca else ())).verify(
        raw_quote, collateral, now=now, policy=policy)



