"""Making RA-TLS certificates: key -> claims buffer -> quote over SHA-256(claims) -> X.509 extension.

The quote comes from a `Quoter`: any callable taking the 64-byte report data and returning a quote.
`provider_quoter` uses the client library (the node's quote service through its socket, or the engine
in this process, as `provider_from_env` decides); `platform_quoter` quotes in-process on a software
platform.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quotehelper.errors import QuoteHelperError
from quotehelper.inputs import TimeLike, as_utc
from quotehelper.ratls import formats as f
from quotehelper.ratls.collateral import as_collateral
from quotehelper.ratls.errors import RatlsCode, RatlsError
from quotehelper.ratls.options import RatlsOptions
from quotehelper.sgx.quote import parse_quote

if TYPE_CHECKING:
    from quotehelper.aesm.client import QuoteProvider
    from quotehelper.platform.sim import SimEnclave, SimPlatform
    from quotehelper.sgx.structs import Report, TargetInfo

Quoter = Callable[[bytes], bytes]   # 64-byte report data -> quote bytes
_CURVES = {"P-256": (ec.SECP256R1, hashes.SHA256), "P-384": (ec.SECP384R1, hashes.SHA384)}


def provider_quoter(provider: QuoteProvider, make_report: Callable[[TargetInfo, bytes], Report | bytes],
                    deadline: float = 30.0) -> Quoter:
    """Quotes through the client library: `make_report(target_info, report_data)` is the enclave's
    EREPORT (for a simulated enclave: `enclave.report`); remade once if the QE changed under it."""
    return lambda rd: provider.get_quote_for(lambda ti: make_report(ti, rd), deadline)


def platform_quoter(platform: SimPlatform, enclave: SimEnclave | None = None) -> Quoter:
    """In-process quoting on a software platform (no service)."""
    return lambda rd: platform.quote(rd, enclave)


@dataclass(frozen=True)
class Credentials:
    """A private key and its RA-TLS certificate (DER): what a TLS endpoint presents."""

    key: ec.EllipticCurvePrivateKey
    cert_der: bytes

    def cert_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.cert_der).public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def save(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        """Certificate PEM (0644) and key PEM (0600, created with that mode)."""
        Path(cert_path).write_bytes(self.cert_pem())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem())

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Credentials:
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
            der = f.load_der(Path(cert_path).read_bytes())
        except (OSError, ValueError, TypeError) as e:
            raise RatlsError(RatlsCode.CERT_MALFORMED, f"cannot load credentials: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise RatlsError(RatlsCode.CERT_MALFORMED, "RA-TLS keys are ECDSA (P-256 or P-384)")
        return cls(key, der)


def _quote(quoter: Quoter, report_data: bytes) -> bytes:
    try:
        quote = bytes(quoter(report_data))
        got = parse_quote(quote, allow_trailing=True).report_body.report_data
    except (QuoteHelperError, OSError, ValueError) as e:
        raise RatlsError(RatlsCode.QUOTE_FAILED, f"quote for the certificate key failed: {e}",
                         {"exception": type(e).__name__}) from e
    if got != report_data:  # a quoter that ignored our report data would make a certificate no one accepts
        raise RatlsError(RatlsCode.QUOTE_FAILED, "the quote does not carry the requested report data",
                         {"expected": report_data.hex(), "got": got.hex()})
    return quote


def make_certificate(quoter: Quoter, options: RatlsOptions | None = None, *,
                     key: ec.EllipticCurvePrivateKey | None = None, nonce: bytes | None = None,
                     collateral: Any = None, now: TimeLike | None = None) -> Credentials:
    """A self-signed RA-TLS certificate for `key` (default: a new key on `options.curve`).

    Extensions (all non-critical): 2.23.133.5.4.9 evidence `60000([quote, claims])`, claims =
    {"pubkey-hash": [alg, hash(SPKI)], "nonce"?}; optional legacy extension (`options.legacy_extension`);
    endorsements 2.23.133.5.4.2 when `collateral` is given (verify.Collateral, or an object with
    `to_dcap_qvl_json()`), so a peer can verify offline. `now` (unix seconds or an aware datetime; default
    the current time) starts the validity, `options.validity_s` long. Raises RatlsError(QUOTE_FAILED)."""
    opts = options or RatlsOptions()
    curve, sig_hash = _CURVES[opts.curve]
    key = key or ec.generate_private_key(curve())
    if not isinstance(key.curve, curve):
        raise RatlsError(RatlsCode.OPTIONS_INVALID, f"key is on {key.curve.name}, options say {opts.curve}")
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = f.encode_claims(spki, opts.pubkey_hash, nonce)
    quote = _quote(quoter, f.report_data_for(claims))
    t = dt.datetime.now(dt.UTC) if now is None else as_utc(now, "now")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, opts.subject_cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(t - dt.timedelta(minutes=1))
         .not_valid_after(t + dt.timedelta(seconds=opts.validity_s))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if opts.legacy_extension == "intel":  # the same quote, as the Intel SGX SDK writes it
        b = b.add_extension(_ext(f.OID_INTEL_QUOTE, quote), critical=False)
    elif opts.legacy_extension == "gramine":  # Gramine's form: its own quote over SHA-256(SPKI)
        legacy = _quote(quoter, f.spki_hash(spki, "sha-256") + bytes(32))
        b = b.add_extension(_ext(f.OID_GRAMINE_QUOTE, legacy), critical=False)
    b = b.add_extension(_ext(f.OID_DICE_EVIDENCE, f.encode_evidence(quote, claims)), critical=False)
    if collateral is not None:
        b = b.add_extension(_ext(f.OID_DICE_ENDORSEMENTS, f.encode_endorsements(as_collateral(collateral), t)),
                            critical=False)
    cert = b.sign(key, sig_hash())
    return Credentials(key, cert.public_bytes(serialization.Encoding.DER))


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
