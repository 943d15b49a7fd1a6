"""Checking one collateral item on its own, as the collateral client and the PCCS do before they store
anything (nothing that fails is ever stored or served).

Each check is the verifier's own machinery (verify.chain.ChainChecker, exact-bytes signatures) applied
to one item under the configured trust anchor: the root CA CRL must be signed by the anchor and current;
every issuer chain must end in the anchor, and its certificates must be current and not revoked by the
root CA CRL; a PCK CRL must be signed by the CA its chain names; a TCB info / enclave identity must be
signed by its chain's leaf over the exact bytes received, be current, and say what was asked for (TEE,
FMSPC, identity, evaluation number); PCK certificates must chain to the PCK CA and not be on its CRL.
Raises `ItemRejected` naming the item and the reason.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.errors import QuoteHelperError
from quotehelper.verify.chain import ChainChecker, load_pem_chain
from quotehelper.verify.collateral import crl_to_der, split_signed_body
from quotehelper.verify.errors import VerificationError
from quotehelper.verify.quote_checks import raw_signature_valid
from quotehelper.verify.trust import TrustAnchor, select_anchor


class ItemRejected(QuoteHelperError):
    def __init__(self, what: str, reason: str) -> None:
        self.what, self.reason = what, reason
        super().__init__(f"{what}: {reason}")


@dataclass(frozen=True)
class Checked:
    not_after: float               # unix seconds: nextUpdate
    evaluation_number: int | None = None
    obj: dict | None = None        # the signed JSON object (TCB info / identity)


def _pem(chain: str | bytes) -> bytes:
    text = chain.decode("ascii", "replace") if isinstance(chain, bytes) else chain
    return urllib.parse.unquote(text).encode() if "-----BEGIN%20" in text else text.encode()


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class ItemChecker:
    def __init__(self, roots: tuple[TrustAnchor, ...]) -> None:
        self.roots = roots or (TrustAnchor.intel(),)

    def _anchor_of(self, chain_pem: bytes, what: str) -> tuple[TrustAnchor, list]:
        try:
            certs = load_pem_chain(chain_pem, what)
            anchor, _ = select_anchor(certs, self.roots, what)
        except VerificationError as e:
            raise ItemRejected(what, f"{e.code.value}: {e.message}") from e
        return anchor, certs

    def _checker(self, anchor: TrustAnchor, root_crl_der: bytes | None, now: datetime) -> ChainChecker:
        ck = ChainChecker(anchor, now, check_revocation=root_crl_der is not None)
        if root_crl_der is not None:
            ck.add_crl(root_crl_der, anchor, "root CA CRL")
        return ck

    def root_crl(self, body: bytes, now: datetime) -> tuple[bytes, Checked]:
        """Returns the CRL as DER (bodies may be hex, PEM or DER) and its validity."""
        try:
            der = crl_to_der(body, "root CA CRL")
            crl = x509.load_der_x509_crl(der)
        except (VerificationError, ValueError) as e:
            raise ItemRejected("root CA CRL", f"does not parse: {e}") from e
        for anchor in self.roots:
            if crl.issuer == anchor.cert.subject:
                try:
                    ChainChecker(anchor, now, check_revocation=False).add_crl(der, anchor, "root CA CRL")
                except VerificationError as e:
                    raise ItemRejected("root CA CRL", f"{e.code.value}: {e.message}") from e
                return der, Checked(crl.next_update_utc.timestamp())  # type: ignore[union-attr]
        raise ItemRejected("root CA CRL", f"ROOT_NOT_TRUSTED: issued by {crl.issuer.rfc4514_string()}, not a trusted root")

    def pck_crl(self, body: bytes, chain: str | bytes, ca: str, root_crl_der: bytes,
                now: datetime) -> tuple[bytes, Checked]:
        what = f"PCK CRL ({ca})"
        anchor, certs = self._anchor_of(_pem(chain), what)
        try:
            der = crl_to_der(body, what)
            ck = self._checker(anchor, root_crl_der, now)
            issuer = ck.check_chain(certs, what, leaf_is_ca=True)
            ck.add_crl(der, issuer, what)
        except VerificationError as e:
            raise ItemRejected(what, f"{e.code.value}: {e.message}") from e
        if ca.lower() not in issuer.common_name.lower():
            raise ItemRejected(what, f"issued by {issuer.common_name}, not the {ca} CA")
        return der, Checked(x509.load_der_x509_crl(der).next_update_utc.timestamp())  # type: ignore[union-attr]

    def signed_json(self, body: bytes, chain: str | bytes, member: str, root_crl_der: bytes, now: datetime, *,
                    what: str, expect: dict) -> Checked:
        """`expect`: fields the signed object must have (e.g. {"fmspc": "00906ED50000", "id": "SGX"});
        the FMSPC compares case-insensitively; `tcbEvaluationDataNumber` when asked for one."""
        anchor, certs = self._anchor_of(_pem(chain), what)
        try:
            signed, sig = split_signed_body(body, member, what)
            ck = self._checker(anchor, root_crl_der, now)
            signer = ck.check_chain(certs, what)
        except VerificationError as e:
            raise ItemRejected(what, f"{e.code.value}: {e.message}") from e
        code = {"tcbInfo": "TCB_INFO", "enclaveIdentity": "QE_IDENTITY"}.get(member, "COLLATERAL")
        key = signer.key
        if not isinstance(key, ec.EllipticCurvePublicKey) or not raw_signature_valid(key, sig, signed):
            raise ItemRejected(what, f"{code}_SIGNATURE_INVALID: the signature does not verify with "
                               f"{signer.common_name}'s key")
        try:
            obj = json.loads(signed)
            issue, nxt = _ts(obj["issueDate"]), _ts(obj["nextUpdate"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ItemRejected(what, f"signed object lacks issueDate/nextUpdate: {type(e).__name__}") from e
        if now > nxt:
            raise ItemRejected(what, f"{code}_EXPIRED: nextUpdate {nxt.isoformat()} has passed")
        if now < issue:
            raise ItemRejected(what, f"{code}_NOT_YET_VALID: issued {issue.isoformat()}, after now")
        for k, v in expect.items():
            got = obj.get(k)
            if k == "fmspc" and isinstance(got, str) and isinstance(v, str):
                got, v = got.upper(), v.upper()
            if got != v:
                raise ItemRejected(what, f"{code}_MISMATCH: {k} is {got!r}, asked for {v!r}")
        n = obj.get("tcbEvaluationDataNumber")
        return Checked(nxt.timestamp(), n if isinstance(n, int) else None, obj)

    def pck_certs(self, pems: list[str], chain: str | bytes, root_crl_der: bytes, pck_crl_der: bytes | None,
                  now: datetime) -> None:
        """Every PCK certificate chains to the anchor through `chain` and is not revoked."""
        what = "PCK certificates"
        anchor, ca_certs = self._anchor_of(_pem(chain), what)
        try:
            ck = self._checker(anchor, root_crl_der, now)
            ca = ck.check_chain(ca_certs, what, leaf_is_ca=True)
            if pck_crl_der is not None:
                ck.add_crl(pck_crl_der, ca, "PCK CRL")
            else:
                ck.check_revocation = False
            for pem in pems:
                ck.check_chain(load_pem_chain(pem.encode(), what) + ca_certs, what)
        except VerificationError as e:
            raise ItemRejected(what, f"{e.code.value}: {e.message}") from e


def utcnow(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
