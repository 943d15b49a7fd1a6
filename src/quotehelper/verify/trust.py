"""Trust anchors: Intel's production SGX Root CA (built in, pinned by SHA-256) or an explicit test root.

A chain is trusted only if its self-signed top certificate is byte-identical to a trusted anchor (or,
when the chain omits the root, if its top certificate is signed by the anchor). Roots that copy Intel's
name but not its key (Intel's QVL sample PKI, the pre-production PKI) are therefore refused by
default; they are accepted only when passed explicitly (`--root-ca FILE`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.inputs import PathLike, as_path
from quotehelper.verify.certs import Cert, register
from quotehelper.verify.errors import ErrorCode, VerificationError

INTEL_SGX_ROOT_CA_SHA256 = "44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3"
INTEL_SGX_ROOT_CA_NAME = "CN=Intel SGX Root CA,O=Intel Corporation,L=Santa Clara,ST=CA,C=US"

# Roots seen in public test data that reuse Intel's name; named so the error says what they are.
KNOWN_NON_PRODUCTION_ROOTS = {
    "842A5BCB64BA3F7D755036CE1BB85778B3481A5DD75F4731C381B8EEA658AA0D": "Intel QVL sample-data test root (SGX)",
    "BF85A53FC08F84CB1F73A4F75F48AF566E30AC040699BA0EC1B8D593C05B56FC": "Intel QVL sample-data test root (TDX)",
    "FC64F8076D79A4FEE9D1D473D74C89EB8D8FD55C5ABAFEABEBA7366D20429404": "Intel pre-production SGX root",
}


# Intel's published intermediates (issued by the root above): PCK Processor CA, PCK Platform CA and
# both issues of the TCB Signing certificate. Their signatures by the root never change, so a chain
# carrying one byte-for-byte need not re-verify it (tests/verify checks each against the root).
INTEL_INTERMEDIATES_SHA256 = frozenset({
    "13B2DCCEF8FC4EC977EE5249743B0F758EBD1E28D768B2E1E12BC348ADAA09FB",  # PCK Processor CA
    "22EB770DCA215B607B5CCFC21A672B1DA5CC660B1AD0365020567979EDCAA0E1",  # PCK Platform CA
    "EC37D98107BFB7DAB6FF8DE4D4DDA6FDE30A6F50B0D7B03EEFB5652F1E652969",  # TCB Signing 2018-05-21
    "C0575E76D0303B61D09CDE8CBDB70DB34A74F38318300D7C0E6BA8CF4BF45AEA",  # TCB Signing 2025-05-06
})


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


@dataclass(eq=False)
class TrustAnchor:
    cert: x509.Certificate
    der: bytes
    sha256: str
    builtin: bool = False
    known_issued: frozenset[x509.Certificate] = frozenset()  # pinned certificates this root signed

    @cached_property
    def info(self) -> Cert:
        """The anchor's certificate with its facts computed (the registered constant for Intel's root)."""
        return register(Cert(self.cert, self.der)) if self.builtin else Cert(self.cert, self.der).precompute()

    @cached_property
    def pinned(self) -> frozenset[Cert]:
        """`known_issued` as the objects the certificate loaders hand out (compared by identity)."""
        return frozenset(register(Cert(c)) for c in self.known_issued)

    @cached_property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.info.key
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "root CA") -> TrustAnchor:
        """A root certificate in DER or PEM (a test root for a test PKI)."""
        try:
            cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN")
                    else x509.load_der_x509_certificate(data))
        except ValueError as e:  # the library's own text (an ASN.1 ParseError dump) helps nobody
            raise VerificationError(ErrorCode.ROOT_CA_MALFORMED, f"{source}: not an X.509 certificate (DER or "
                                    "PEM)") from e
        if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            raise VerificationError(ErrorCode.ROOT_CA_MALFORMED, f"{source}: root key is not ECDSA")
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(cert, der, hashlib.sha256(der).hexdigest().upper())

    @classmethod
    def from_file(cls, path: PathLike) -> TrustAnchor:
        """A root certificate file (DER or PEM); `path` is a str or os.PathLike.

        Raises VerificationError(ROOT_CA_MALFORMED) for an unreadable file or one that is not an ECDSA
        X.509 certificate, InputTypeError for a path of another type."""
        path = as_path(path, "root CA path")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise VerificationError(ErrorCode.ROOT_CA_MALFORMED, f"cannot read {path}: {e.strerror or e}") from e
        return cls.from_bytes(data, str(path))

    @classmethod
    def intel(cls) -> TrustAnchor:
        return _intel_root()


@cache
def _intel_root() -> TrustAnchor:
    der = resources.files("quotehelper.verify").joinpath("data/Intel_SGX_Root_CA.der").read_bytes()
    anchor = TrustAnchor.from_bytes(der, "built-in Intel SGX Root CA")
    if anchor.sha256 != INTEL_SGX_ROOT_CA_SHA256:  # the packaged file was altered: refuse to run
        raise RuntimeError(f"built-in Intel SGX Root CA has SHA-256 {anchor.sha256}, pinned {INTEL_SGX_ROOT_CA_SHA256}")
    pem = resources.files("quotehelper.verify").joinpath("data/intel_intermediates.pem").read_bytes()
    known = frozenset(x509.load_pem_x509_certificates(pem))
    if {fingerprint(c) for c in known} != INTEL_INTERMEDIATES_SHA256:
        raise RuntimeError("built-in Intel intermediates do not match their pinned SHA-256 fingerprints")
    for c in known:  # pinned by fingerprint, and also proven once per process to be the root's
        try:
            c.verify_directly_issued_by(anchor.cert)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise RuntimeError(f"built-in Intel intermediate {c.subject.rfc4514_string()} is not signed by the "
                               "built-in root") from e
    intel = TrustAnchor(anchor.cert, anchor.der, anchor.sha256, builtin=True, known_issued=known)
    _ = (intel.info, intel.pinned)  # register the constants now, once
    return intel


def select_anchor(chain: list[Cert], anchors: tuple[TrustAnchor, ...],
                  chain_name: str) -> tuple[TrustAnchor, list[Cert]]:
    """Picks the anchor the chain ends in; returns it and the chain without its root certificate."""
    top = chain[-1]
    for a in anchors:  # fast path: the chain carries the anchor itself (the same object, or equal DER)
        if top is a.info or top.x509 == a.cert:
            return a, chain[:-1]
    top_cert = top.x509
    if top_cert.subject == top_cert.issuer:
        fp = hashlib.sha256(top.der).hexdigest().upper()
        for a in anchors:
            if a.sha256 == fp:
                return a, chain[:-1]
        what = KNOWN_NON_PRODUCTION_ROOTS.get(fp)
        looks_intel = top_cert.subject.rfc4514_string() == INTEL_SGX_ROOT_CA_NAME
        reason = (f"root is the {what}" if what else
                  "root copies the Intel SGX Root CA name but not its key" if looks_intel else
                  "root is not a trusted anchor")
        raise VerificationError(ErrorCode.ROOT_NOT_TRUSTED, f"{chain_name} chain: {reason}", {
            "chain": chain_name, "root_subject": top_cert.subject.rfc4514_string(), "root_sha256": fp,
            "trusted_sha256": [a.sha256 for a in anchors]})
    for a in anchors:
        if top_cert.issuer == a.cert.subject:
            return a, chain
    raise VerificationError(ErrorCode.ROOT_NOT_TRUSTED, f"{chain_name} chain: top certificate's issuer is not a "
                            "trusted anchor", {"chain": chain_name, "issuer": top_cert.issuer.rfc4514_string()})
