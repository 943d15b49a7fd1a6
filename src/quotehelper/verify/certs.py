"""Certificates as the chain rules read them: an `x509.Certificate` plus the facts the checks need
(validity dates, public key, key id, BasicConstraints, KeyUsage, DER), each computed at most once.

Why: `cryptography` recomputes or re-wraps these on every call (a public key object ~12 us, the
extension list ~8 us, DER ~12 us, hashing or comparing two equal certificates ~4 us each), and one
verification touches the same certificate up to a dozen times. Intel's pinned certificates (root and
published intermediates) are process-wide constants: `register` precomputes their facts once, and the
loaders below hand out that same object whenever a chain carries one byte-for-byte. That is parsing,
not trust: whether a chain may skip a signature is decided by the trust anchor (trust.py, chain.py),
and validity, constraints and revocation are still checked against every verification's own `now`
and CRLs.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_UNSET: Any = object()
_DER = serialization.Encoding.DER
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint


class Cert:
    """One certificate and its lazily computed facts. Identity semantics (`is`, default hash): the
    same object means the same certificate; different objects may still hold equal DER."""

    __slots__ = ("x509", "_der", "_key", "_key_id", "_bc", "_ku", "_not_before", "_not_after", "_cn", "_subject")

    def __init__(self, cert: x509.Certificate, der: bytes | None = None) -> None:
        self.x509 = cert
        self._der = der if der is not None else _UNSET
        self._key = self._key_id = self._bc = self._ku = self._not_before = self._not_after = self._cn = _UNSET
        self._subject = _UNSET

    def __repr__(self) -> str:
        return f"Cert({self.x509.subject.rfc4514_string()})"

    @property
    def der(self) -> bytes:
        d = self._der
        if d is _UNSET:
            d = self._der = self.x509.public_bytes(_DER)
        return d  # type: ignore[no-any-return]

    @property
    def subject(self) -> x509.Name:
        n = self._subject
        if n is _UNSET:
            n = self._subject = self.x509.subject
        return n  # type: ignore[no-any-return]

    @property
    def key(self) -> Any:
        """The subject public key (any type; callers check it is EC)."""
        k = self._key
        if k is _UNSET:
            k = self._key = self.x509.public_key()
        return k

    @property
    def key_id(self) -> bytes:
        """The uncompressed EC point: how CRLs are matched to their issuer."""
        k = self._key_id
        if k is _UNSET:
            key = self.key
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError("certificate key is not ECDSA")
            k = self._key_id = key.public_bytes(_X962, _UNCOMPRESSED)
        return k  # type: ignore[no-any-return]

    @property
    def basic_constraints(self) -> x509.BasicConstraints | None:
        bc = self._bc
        if bc is _UNSET:
            try:
                bc = self.x509.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            self._bc = bc
        return bc  # type: ignore[no-any-return]

    @property
    def key_usage(self) -> x509.KeyUsage | None:
        ku = self._ku
        if ku is _UNSET:
            try:
                ku = self.x509.extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                ku = None
            self._ku = ku
        return ku  # type: ignore[no-any-return]

    @property
    def not_before(self) -> datetime:
        t = self._not_before
        if t is _UNSET:
            t = self._not_before = self.x509.not_valid_before_utc
        return t  # type: ignore[no-any-return]

    @property
    def not_after(self) -> datetime:
        t = self._not_after
        if t is _UNSET:
            t = self._not_after = self.x509.not_valid_after_utc
        return t  # type: ignore[no-any-return]

    @property
    def common_name(self) -> str:
        """The subject's CN (or the whole subject when it has none)."""
        n = self._cn
        if n is _UNSET:
            name = self.x509.subject
            attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            n = self._cn = str(attrs[0].value) if attrs else name.rfc4514_string()
        return n  # type: ignore[no-any-return]

    def precompute(self) -> Cert:
        """Every fact now (for process-wide constants, so no thread ever computes them lazily)."""
        _ = (self.der, self.key, self.basic_constraints, self.key_usage, self.not_before, self.not_after,
             self.common_name)
        if isinstance(self.key, ec.EllipticCurvePublicKey):
            _ = self.key_id
        return self


# Process-wide constants: Intel's root and published intermediates, by DER, by signature value and by
# canonical base64 (PEM bodies without line breaks: how PCS and QE3 write them).
_KNOWN_BY_DER: dict[bytes, Cert] = {}
_KNOWN_BY_SIGNATURE: dict[bytes, Cert] = {}
_KNOWN_BY_B64: dict[bytes, Cert] = {}
_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def register(cert: Cert) -> Cert:
    """Makes a pinned certificate's precomputed object the one every loader hands out for its DER."""
    cert.precompute()
    known = _KNOWN_BY_DER.setdefault(cert.der, cert)
    _KNOWN_BY_SIGNATURE.setdefault(known.x509.signature, known)
    _KNOWN_BY_B64.setdefault(binascii.b2a_base64(known.der, newline=False), known)
    return known


def known_b64(b64: bytes) -> Cert | None:
    """The registered certificate whose DER has exactly this canonical base64 text (no line breaks)."""
    return _KNOWN_BY_B64.get(b64)


def load_known_pem(pem: bytes) -> list[Cert] | None:
    """A PEM chain made only of registered certificates, without decoding or parsing anything: every
    block's body (line breaks removed) must be the canonical base64 of a registered DER, and the text
    must hold no other PEM block, so cryptography's loader would return exactly these certificates.
    None = not that case; use the loader."""
    parts = pem.split(_END)  # (str methods: a lazy regex over the text costs more than the rest)
    if len(parts) < 2 or pem.count(b"-----BEGIN") != len(parts) - 1:
        return None
    out = []
    for part in parts[:-1]:
        _, sep, body = part.partition(_BEGIN)
        known = _KNOWN_BY_B64.get(body.replace(b"\r", b"").replace(b"\n", b"")) if sep else None
        if known is None:
            return None
        out.append(known)
    return out


def wrap(cert: x509.Certificate | Cert) -> Cert:
    """A parsed certificate -> its `Cert`: the registered constant if byte-identical, else a new one.
    The signature value picks the candidate; full equality (`==` compares the whole certificate)
    decides."""
    if isinstance(cert, Cert):
        return cert
    known = _KNOWN_BY_SIGNATURE.get(cert.signature)
    if known is not None and (known.x509 is cert or known.x509 == cert):
        return known
    return Cert(cert)


def from_der(der: bytes) -> Cert:
    """DER -> `Cert` (the registered constant for known DER, without parsing). Raises ValueError."""
    known = _KNOWN_BY_DER.get(der)
    if known is not None:
        return known
    return Cert(x509.load_der_x509_certificate(der), der)
