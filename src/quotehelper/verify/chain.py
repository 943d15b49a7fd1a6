"""X.509 chains and CRLs, checked at a given `now` with `cryptography`.

Rules (dcap-qvl/webpki and Intel QVL agree on these): every certificate valid at `now`
(notBefore <= now <= notAfter); each issuer CA:TRUE with keyCertSign and a path length that allows
the chain; the leaf CA:FALSE; every non-root certificate covered by a CRL from its issuer (unknown
revocation status is a failure); CRLs signed by their issuer and current (thisUpdate <= now <
nextUpdate, nextUpdate exclusive as in dcap-qvl). A `ChainChecker` lives for one verification and
checks each distinct (certificate, issuer) signature once, so the three Intel chains sharing a root
cost one signature check per distinct certificate. Certificates travel as `certs.Cert` (facts computed
once; Intel's pinned ones precomputed per process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.verify.certs import Cert, load_known_pem, wrap
from quotehelper.verify.errors import ErrorCode, Kind, VerificationError
from quotehelper.verify.trust import TrustAnchor, select_anchor


def cn(cert: x509.Certificate | x509.Name | Cert) -> str:
    if isinstance(cert, Cert):
        return cert.common_name
    name = cert.subject if isinstance(cert, x509.Certificate) else cert
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def load_pem_chain(pem: bytes, name: str, kind: Kind = Kind.COLLATERAL) -> list[Cert]:
    known = load_known_pem(pem)  # Intel's chains as PCS serves them: nothing to decode or parse
    if known is not None:
        return known
    try:
        return [wrap(c) for c in x509.load_pem_x509_certificates(pem)]
    except ValueError as e:
        code = ErrorCode.PCK_CHAIN_MALFORMED if kind is Kind.QUOTE else ErrorCode.COLLATERAL_MALFORMED
        raise VerificationError(code, f"{name}: certificate does not parse: {e}", {"chain": name}, kind) from e


@dataclass
class Window:
    """The instants at which everything checked so far is valid."""

    not_before: datetime | None = None
    not_after: datetime | None = None

    def add(self, start: datetime | None, end: datetime | None) -> None:
        if start is not None and (self.not_before is None or start > self.not_before):
            self.not_before = start
        if end is not None and (self.not_after is None or end < self.not_after):
            self.not_after = end


@dataclass
class ChainChecker:
    anchor: TrustAnchor
    now: datetime
    check_revocation: bool = True
    use_pinned: bool = True  # trust the anchor's pinned intermediates' signatures (see trust.py)
    window: Window = field(default_factory=Window)
    # Shared between the checkers of one cached collateral: verified (certificate DER, issuer DER)
    # signatures and CRLs by issuer key.
    verified: set[tuple[bytes, bytes]] = field(default_factory=set)
    crls: dict[bytes, x509.CertificateRevocationList] = field(default_factory=dict)  # by issuer key

    # ---- CRLs ---------------------------------------------------------------------------------
    def add_crl(self, der: bytes, issuer: Cert | x509.Certificate | TrustAnchor,
                name: str) -> x509.CertificateRevocationList:
        """Parses a CRL, checks it is signed by `issuer` and current; later chain checks use it."""
        issuer_cert = issuer.info if isinstance(issuer, TrustAnchor) else wrap(issuer)
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError as e:
            raise VerificationError(ErrorCode.COLLATERAL_MALFORMED, f"{name} does not parse: {e}", {"crl": name}) from e
        key = issuer_cert.key
        assert isinstance(key, ec.EllipticCurvePublicKey)
        if not crl.is_signature_valid(key):  # (names only matter for the message)
            raise VerificationError(ErrorCode.CRL_SIGNATURE_INVALID, f"{name} is not signed by {cn(issuer_cert)}",
                                    {"crl": name, "crl_issuer": crl.issuer.rfc4514_string(),
                                     "expected_issuer": issuer_cert.x509.subject.rfc4514_string()})
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        if next_update is None or self.now >= next_update:
            raise VerificationError(ErrorCode.CRL_EXPIRED, f"{name} expired at {next_update}",
                                    {"crl": name, "next_update": str(next_update), "now": str(self.now)})
        if self.now < this_update:
            raise VerificationError(ErrorCode.CRL_NOT_YET_VALID, f"{name} is issued at {this_update}, after now",
                                    {"crl": name, "this_update": str(this_update), "now": str(self.now)})
        self.window.add(this_update, next_update)
        self.crls[issuer_cert.key_id] = crl
        return crl

    # ---- chains -------------------------------------------------------------------------------
    def check_chain(self, certs: list[Cert] | list[x509.Certificate], name: str, kind: Kind = Kind.COLLATERAL,
                    leaf_is_ca: bool = False) -> Cert:
        """Leaf-first chain ending in (or issued by) this verification's anchor; returns the leaf.
        `leaf_is_ca`: the chain ends in a CA (the PCK CRL issuer chain), so CA:TRUE is expected."""
        try:
            return self._check_chain([wrap(c) for c in certs], name, kind, leaf_is_ca)
        except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as e:  # lazily parsed fields raise here
            code = ErrorCode.PCK_CHAIN_MALFORMED if kind is Kind.QUOTE else ErrorCode.COLLATERAL_MALFORMED
            raise VerificationError(code, f"{name} chain: a certificate field does not parse: {e}",
                                    {"chain": name}, kind) from e

    def _check_chain(self, certs: list[Cert], name: str, kind: Kind, leaf_is_ca: bool) -> Cert:
        try:
            anchor, chain = select_anchor(certs, (self.anchor,), name)
        except VerificationError as e:
            e.kind = kind
            raise
        if not chain:
            raise VerificationError(ErrorCode.PCK_CHAIN_MALFORMED if kind is Kind.QUOTE
                                    else ErrorCode.COLLATERAL_MALFORMED, f"{name} chain holds only the root",
                                    {"chain": name}, kind)
        root = anchor.info
        self._check_validity(root, name, kind, len(chain))
        issuers = chain[1:] + [root]
        pinned = anchor.pinned if self.use_pinned else frozenset()
        for i, (cert, issuer) in enumerate(zip(chain, issuers, strict=True)):
            self._check_validity(cert, name, kind, i)
            # The signature: not for a pinned certificate under its anchor (identity: the loaders hand out
            # the registered object only for byte-identical DER); CA signatures are memoised by DER, as a
            # CA recurs (the PCK CA in two chains; further PCK chains under cached collateral). End-entity
            # certificates are not: the verifier caches whole verified chains.
            if not (issuer is root and cert in pinned):
                if i or leaf_is_ca:
                    memo = (cert.der, issuer.der)
                    if memo not in self.verified:
                        self._check_signature(cert, issuer, name, kind, i)
                        self.verified.add(memo)
                else:
                    self._check_signature(cert, issuer, name, kind, i)
            self._check_issuer_constraints(issuer, name, kind, i + 1, below=i)
            if i == 0:
                if leaf_is_ca:
                    self._check_issuer_constraints(cert, name, kind, 0, below=0)
                else:
                    self._check_leaf(cert, name, kind)
            if self.check_revocation:
                self._check_revocation(cert, issuer, name, kind, i)
        return chain[0]

    def _err(self, code: ErrorCode, msg: str, kind: Kind, name: str, i: int, cert: Cert,
             **extra: object) -> VerificationError:
        return VerificationError(code, f"{name} chain, certificate {i} ({cn(cert)}): {msg}",
                                 {"chain": name, "index": i, "subject": cert.x509.subject.rfc4514_string(), **extra},
                                 kind)

    def _check_validity(self, cert: Cert, name: str, kind: Kind, i: int) -> None:
        nb, na = cert.not_before, cert.not_after
        if self.now > na:
            raise self._err(ErrorCode.CERT_EXPIRED, f"expired at {na}", kind, name, i, cert, not_after=str(na))
        if self.now < nb:
            raise self._err(ErrorCode.CERT_NOT_YET_VALID, f"not valid before {nb}", kind, name, i, cert,
                            not_before=str(nb))
        self.window.add(nb, na)

    def _check_signature(self, cert: Cert, issuer: Cert, name: str, kind: Kind, i: int) -> None:
        """The issuer's key must verify the certificate, and the certificate must name that issuer
        (RFC 5280 name chaining, as Intel's QVL and dcap-qvl require: a CA key that signed a certificate
        naming another issuer is a mis-issuance, not a path)."""
        c, key = cert.x509, issuer.key
        try:
            algo = c.signature_hash_algorithm
            if not isinstance(key, ec.EllipticCurvePublicKey) or algo is None:
                raise InvalidSignature
            key.verify(c.signature, c.tbs_certificate_bytes, ec.ECDSA(algo))
        except (InvalidSignature, UnsupportedAlgorithm, ValueError) as e:
            if c.issuer != issuer.x509.subject:
                raise self._err(ErrorCode.CERT_ISSUER_MISMATCH, f"issuer {c.issuer.rfc4514_string()} is not "
                                f"{issuer.x509.subject.rfc4514_string()}", kind, name, i, cert) from e
            raise self._err(ErrorCode.CERT_SIGNATURE_INVALID, f"signature does not verify with {cn(issuer)}'s key",
                            kind, name, i, cert) from e
        if c.issuer != issuer.subject:
            raise self._err(ErrorCode.CERT_ISSUER_MISMATCH, f"names issuer {c.issuer.rfc4514_string()}, but the "
                            f"next certificate is {issuer.subject.rfc4514_string()}", kind, name, i, cert)

    def _check_issuer_constraints(self, issuer: Cert, name: str, kind: Kind, i: int, below: int) -> None:
        bc = issuer.basic_constraints
        if bc is None or not bc.ca:
            raise self._err(ErrorCode.CERT_NOT_CA, "issues certificates but is not a CA", kind, name, i, issuer)
        if bc.path_length is not None and below > bc.path_length:
            raise self._err(ErrorCode.CERT_PATH_TOO_LONG, f"path length {bc.path_length} but {below} CAs below",
                            kind, name, i, issuer)
        ku = issuer.key_usage
        if ku is not None and not ku.key_cert_sign:
            raise self._err(ErrorCode.CERT_NOT_CA, "key usage lacks keyCertSign", kind, name, i, issuer)

    def _check_leaf(self, leaf: Cert, name: str, kind: Kind) -> None:
        bc = leaf.basic_constraints
        if bc is not None and bc.ca:
            raise self._err(ErrorCode.CERT_IS_CA, "end-entity certificate is a CA", kind, name, 0, leaf)

    def _check_revocation(self, cert: Cert, issuer: Cert, name: str, kind: Kind, i: int) -> None:
        crl = self.crls.get(issuer.key_id)
        if crl is None:
            raise self._err(ErrorCode.CRL_MISSING, f"no CRL from {cn(issuer)}: revocation status unknown",
                            Kind.COLLATERAL, name, i, cert)
        serial = cert.x509.serial_number
        revoked = crl.get_revoked_certificate_by_serial_number(serial)
        if revoked is not None:
            raise self._err(ErrorCode.CERT_REVOKED, f"revoked on {revoked.revocation_date_utc}", kind, name, i,
                            cert, serial=f"{serial:X}")
