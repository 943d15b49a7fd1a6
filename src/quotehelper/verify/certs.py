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

    __slots__ = ("x509", "_der", "_key", "_key_id", "_bc", "_ku", "_not_before", "_not_after")

    def __init__(self, cert: x509.Certificate, der: bytes | None = None) -> None:
        self.x509 = cert
        self._der = der if der is not None else _UNSET
        self._key = self._key_id = self._bc = self._ku = self._not_before = self._not_after = _UNSET

    def __repr__(self) -> str:
        return f"Cert({self.x509.subject.rfc4514_string()})"

    @property
    def der(self) -> bytes:
        d = self._der
        if d is _UNSET:
            d = self._der = self.x509.public_bytes(_DER)
        return d  # type: ignore[no-any-return]

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

    def precompute(self) -> Cert:
        """Every fact now (for process-wide constants, so no thread ever computes them lazily)."""
        _ = (self.der, self.key, self.basic_constraints, self.key_usage, self.not_before, self.not_after)
        if isinstance(self.key, ec.EllipticCurvePublicKey):
            _ = self.key_id
        return self


# Process-wide constants: Intel's root and published intermediates, by DER and by signature value.
_KNOWN_BY_DER: dict[bytes, Cert] = {}
_KNOWN_BY_SIGNATURE: dict[bytes, Cert] = {}


def register(cert: Cert) -> Cert:
    """Makes a pinned certificate's precomputed object the one every loader hands out for its DER."""
    cert.precompute()
    _KNOWN_BY_DER.setdefault(cert.der, cert)
    _KNOWN_BY_SIGNATURE.setdefault(cert.x509.signature, cert)
    return _KNOWN_BY_DER[cert.der]


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
