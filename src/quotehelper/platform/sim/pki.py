"""The simulated "Intel" PKI: SGX Root CA, PCK Processor/Platform CA, TCB Signing, PCK leaves and CRLs.

Shaped like Intel's (aesm-protocol.md §7.1, dcap-verification.md §2/§6) so both dcap-qvl and Intel's QVL
accept it: P-256/ECDSA-SHA256 everywhere, full DNs (CN, O, L, ST, C), SKI/AKI, CRL distribution points,
critical KeyUsage/BasicConstraints, CRLs with CRL number and AKI.

PKI directory (0700; private keys 0600, never copied into a platform directory):
    root_ca.key.pem  root_ca.pem               self-signed, CA pathlen 1
    processor_ca.key.pem  processor_ca.pem     "SGX PCK Processor CA", CA pathlen 0
    platform_ca.key.pem  platform_ca.pem       "SGX PCK Platform CA", CA pathlen 0
    tcb_signing.key.pem  tcb_signing.pem       "SGX TCB Signing", signs TCB info / QE identity
    revoked.json                               {"processor": [serial hex...], "platform": [...]}
    pcs.json                                   {"pcs_url": ...}: the base of every CRL distribution point
    tcb_evaluations.json, platforms/           the simulated PCS's state (tcbeval.py)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quotehelper.platform.sim.store import (
    PlatformStoreError,
    atomic_create_dir,
    load_private_key_pem,
    private_key_pem,
    read_private,
    write_atomic,
)
from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension

if TYPE_CHECKING:
    from quotehelper.platform.sim.platform import SimPlatform

CA_PROCESSOR = "processor"
CA_PLATFORM = "platform"
CA_TYPES = (CA_PROCESSOR, CA_PLATFORM)

_ORG = "quotehelper simulated SGX"  # the organisation tells a simulated certificate from Intel's
# Where the CRL distribution points of a new PKI point: the simulated PCS (`quotehelper pcs serve`) at
# its default address; `SimPki.load_or_create(dir, pcs_url=...)` (`sim init --pcs-url`) sets another.
DEFAULT_PCS_URL = "http://127.0.0.1:8082"
ROOT_CRL_PATH = "/IntelSGXRootCA.der"  # the path of Intel's root CDP, on the simulated PCS

# Intel's exact common names (go-tdx-guest picks the PCK CA by its CN; PCCS and QCNL compare them).
_NAMES = {
    "root_ca": "Intel SGX Root CA",
    "processor_ca": "Intel SGX PCK Processor CA",
    "platform_ca": "Intel SGX PCK Platform CA",
    "tcb_signing": "Intel SGX TCB Signing",
}
PCK_LEAF_CN = "Intel SGX PCK Certificate"

# Long-lived like Intel's (root until 2049); notBefore a day back so clock skew never matters.
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_CA_NOT_AFTER = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
PCK_VALIDITY = dt.timedelta(days=7 * 365)


def pck_crl_url(pcs_url: str, ca: str) -> str:
    return f"{pcs_url}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"


def dn(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ])


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=not cert_sign,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def build_cert(*, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
               issuer_key: ec.EllipticCurvePrivateKey, ca_pathlen: int | None, crl_url: str,
               not_before: dt.datetime, not_after: dt.datetime,
               extra: list[x509.ExtensionType] | None = None,
               sgx_extension: bytes | None = None) -> x509.Certificate:
    """One Intel-shaped certificate: CA (ca_pathlen ≥ 0) or end entity (ca_pathlen None)."""
    is_ca = ca_pathlen is not None
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
         .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
             [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
         .add_extension(_usage(cert_sign=is_ca), True)
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_pathlen if is_ca else None), True))
    for ext in extra or []:
        b = b.add_extension(ext, False)
    if sgx_extension is not None:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), sgx_extension),
                            False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


class SimPki:
    """Simulated Intel: one PKI certifies many platforms; its private keys live only in its directory."""

    def __init__(self, pki_dir: Path, cas: dict[str, _Ca]) -> None:
        self.pki_dir = Path(pki_dir)
        self._cas = cas

    # ---- creation / loading ------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, pki_dir: Path, pcs_url: str | None = None) -> SimPki:
        """`pcs_url`: where the new PKI's CRL distribution points point (ignored for an existing PKI)."""
        pki_dir = Path(pki_dir)
        if not (pki_dir / "root_ca.pem").exists():
            base = (pcs_url or DEFAULT_PCS_URL).rstrip("/")
            # first writer wins; losers load its result
            atomic_create_dir(pki_dir, lambda tmp: cls._generate_files(tmp, base))
        return cls.load(pki_dir)

    @property
    def pcs_url(self) -> str:
        try:
            return json.loads((self.pki_dir / "pcs.json").read_text())["pcs_url"]
        except (OSError, ValueError, KeyError):
            return DEFAULT_PCS_URL

    @classmethod
    def load(cls, pki_dir: Path) -> SimPki:
        pki_dir = Path(pki_dir)
        cas: dict[str, _Ca] = {}
        try:
            for name in _NAMES:
                key = load_private_key_pem(read_private(pki_dir / f"{name}.key.pem"))
                cert = x509.load_pem_x509_certificate((pki_dir / f"{name}.pem").read_bytes())
                cas[name] = _Ca(key, cert)
        except (OSError, ValueError) as e:
            raise PlatformStoreError(f"simulated PKI at {pki_dir} is missing or corrupt: {e}") from e
        return cls(pki_dir, cas)

    @staticmethod
    def _generate_files(tmp: Path, pcs_url: str) -> None:
        keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in _NAMES}
        root_name = dn(_NAMES["root_ca"])
        root_crl_url = pcs_url + ROOT_CRL_PATH
        certs = {"root_ca": build_cert(subject=root_name, public_key=keys["root_ca"].public_key(),
                                       issuer=root_name, issuer_key=keys["root_ca"], ca_pathlen=1,
                                       crl_url=root_crl_url, not_before=_EPOCH, not_after=_CA_NOT_AFTER)}
        for name, pathlen in (("processor_ca", 0), ("platform_ca", 0), ("tcb_signing", None)):
            certs[name] = build_cert(subject=dn(_NAMES[name]), public_key=keys[name].public_key(),
                                     issuer=root_name, issuer_key=keys["root_ca"], ca_pathlen=pathlen,
                                     crl_url=root_crl_url, not_before=_EPOCH, not_after=_CA_NOT_AFTER)
        write_atomic(tmp / "pcs.json", json.dumps({"pcs_url": pcs_url}).encode())
        for name in _NAMES:
            write_atomic(tmp / f"{name}.key.pem", private_key_pem(keys[name]), private=True)
            write_atomic(tmp / f"{name}.pem", _pem(certs[name]))
        write_atomic(tmp / "revoked.json", json.dumps({CA_PROCESSOR: [], CA_PLATFORM: []}).encode())

    # ---- certificates ------------------------------------------------------------------------------
    @property
    def root_cert(self) -> x509.Certificate:
        return self._cas["root_ca"].cert

    def root_ca_der(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    def root_ca_pem(self) -> bytes:
        return _pem(self.root_cert)

    def ca_cert(self, ca: str) -> x509.Certificate:
        return self._ca(ca).cert

    def _ca(self, ca: str) -> _Ca:
        if ca not in CA_TYPES:
            raise ValueError(f"PCK CA type must be one of {CA_TYPES}, got {ca!r}")
        return self._cas[f"{ca}_ca"]

    @property
    def tcb_signing_cert(self) -> x509.Certificate:
        return self._cas["tcb_signing"].cert

    @property
    def tcb_signing_key(self) -> ec.EllipticCurvePrivateKey:
        return self._cas["tcb_signing"].key

    def pck_issuer_chain_pem(self, ca: str) -> bytes:
        """PCK CA ‖ root: the SGX-PCK-CRL-Issuer-Chain (and the tail of a quote's type-5 chain)."""
        return _pem(self.ca_cert(ca)) + self.root_ca_pem()

    def tcb_issuer_chain_pem(self) -> bytes:
        """TCB Signing ‖ root: TCB-Info-Issuer-Chain and SGX-Enclave-Identity-Issuer-Chain."""
        return _pem(self.tcb_signing_cert) + self.root_ca_pem()

    def issue_pck(self, public_key: ec.EllipticCurvePublicKey, extension: PckExtension, ca: str,
                  now: dt.datetime | None = None) -> x509.Certificate:
        """A PCK leaf ("SGX PCK Certificate") carrying `extension`, issued by the Processor/Platform CA."""
        now = now or dt.datetime.now(dt.UTC)
        issuer = self._ca(ca)
        return build_cert(subject=dn(PCK_LEAF_CN), public_key=public_key, issuer=issuer.cert.subject,
                          issuer_key=issuer.key, ca_pathlen=None, crl_url=pck_crl_url(self.pcs_url, ca),
                          not_before=now - dt.timedelta(days=1), not_after=now + PCK_VALIDITY,
                          sgx_extension=extension.to_der())

    # ---- revocation --------------------------------------------------------------------------------
    def revoked_serials(self, ca: str) -> list[int]:
        self._ca(ca)
        try:
            data = json.loads((self.pki_dir / "revoked.json").read_text())
            return [int(s, 16) for s in data.get(ca, [])]
        except FileNotFoundError:
            return []
        except (ValueError, AttributeError) as e:
            raise PlatformStoreError(f"{self.pki_dir / 'revoked.json'} is corrupt: {e}") from e

    def revoke_serial(self, ca: str, serial: int) -> None:
        data = {c: [f"{s:x}" for s in self.revoked_serials(c)] for c in CA_TYPES}
        if f"{serial:x}" not in data[ca]:
            data[ca].append(f"{serial:x}")
            write_atomic(self.pki_dir / "revoked.json", json.dumps(data).encode(), replace=True)

    def revoke_pck(self, platform: SimPlatform) -> None:
        """Puts `platform`'s PCK certificate on its CA's CRL (effective in collateral issued from now on)."""
        cert = platform.pck_cert
        ca = CA_PLATFORM if cert.issuer == self.ca_cert(CA_PLATFORM).subject else CA_PROCESSOR
        self.revoke_serial(ca, cert.serial_number)

    # ---- CRLs --------------------------------------------------------------------------------------
    def _crl(self, signer: _Ca, revoked: list[int], now: dt.datetime, validity: dt.timedelta) -> bytes:
        b = (x509.CertificateRevocationListBuilder().issuer_name(signer.cert.subject)
             .last_update(now - dt.timedelta(hours=1)).next_update(now + validity)
             .add_extension(x509.CRLNumber(int(now.timestamp())), False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), False))
        for serial in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(now - dt.timedelta(hours=1)).build())
        return b.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def root_crl_der(self, now: dt.datetime) -> bytes:
        """Root CA CRL (covers the PCK CAs and the TCB signer; nothing revoked), valid a year like Intel's."""
        return self._crl(self._cas["root_ca"], [], now, dt.timedelta(days=365))

    def pck_crl_der(self, ca: str, now: dt.datetime) -> bytes:
        """PCK CRL of the Processor or Platform CA with every revoked PCK serial, valid 30 days."""
        return self._crl(self._ca(ca), self.revoked_serials(ca), now, dt.timedelta(days=30))

    def sign(self, data: bytes) -> bytes:
        """TCB Signing key over `data`: ECDSA-P256-SHA256, DER (callers convert to raw r‖s)."""
        return self.tcb_signing_key.sign(data, ec.ECDSA(hashes.SHA256()))

