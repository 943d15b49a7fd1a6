"""The simulated PCE and QE3: attestation key, its certification by the PCK key, and quote generation.

Follows DCAP QE3 (aesm-protocol.md §5, §6): the attestation key is an ECDSA-P256 key made on the first
init_quote, sealed under the QE's seal key; the QE report targeted at the PCE carries
SHA-256(att_pub ‖ auth data) ‖ 0×32 and is signed by the PCK key inside the PCE; each quote checks the app
REPORT's MAC with the QE's own report key, then signs header ‖ body with the attestation key.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC

from quotehelper.errors import FormatError
from quotehelper.platform.engine import QuoteError, QuoteErrorCode
from quotehelper.platform.sim.cpu import EnclaveIdentity, SimCpu
from quotehelper.platform.sim.store import PlatformStoreError, read_private, write_atomic
from quotehelper.sgx.quote import (
    CERT_PCK_CHAIN,
    HEADER_SIZE,
    INTEL_QE_AUTH_DATA,
    CertificationData,
    EcdsaSignatureData,
    QeReportCertData,
    Quote,
    QuoteHeader,
)
from quotehelper.sgx.structs import (
    ALG_ECDSA_P256,
    DEFAULT_ECDSA_ATT_KEY_ID,
    FLAG_INITTED,
    FLAG_MODE64BIT,
    FLAG_PROVISION_KEY,
    INTEL_QE3_MRSIGNER,
    QE_REPORT_INFO_SIZE,
    REPORT_BODY_SIZE,
    REPORT_SIZE,
    AttKeyId,
    Attributes,
    QeReportInfo,
    Report,
    ReportBody,
    TargetInfo,
)

# Intel-shaped identities of the architectural enclaves (the MRENCLAVEs are ours: no real build exists).
QE3_MRENCLAVE = hashlib.sha256(b"quotehelper simulated QE3").digest()
PCE_MRENCLAVE = hashlib.sha256(b"quotehelper simulated PCE").digest()
QE3_PROD_ID = 1
PCE_PROD_ID = 2
AE_ATTRIBUTES = Attributes(FLAG_INITTED | FLAG_MODE64BIT | FLAG_PROVISION_KEY, 0x7)  # flags 0x15

_SEAL_LABEL = b"quotehelper QE3 attestation key"
_SEAL_MAGIC = b"QHAK1"


def qe3_identity(isv_svn: int) -> EnclaveIdentity:
    return EnclaveIdentity(mr_enclave=QE3_MRENCLAVE, mr_signer=INTEL_QE3_MRSIGNER, isv_prod_id=QE3_PROD_ID,
                           isv_svn=isv_svn, attributes=AE_ATTRIBUTES)


def pce_identity(isv_svn: int) -> EnclaveIdentity:
    return EnclaveIdentity(mr_enclave=PCE_MRENCLAVE, mr_signer=INTEL_QE3_MRSIGNER, isv_prod_id=PCE_PROD_ID,
                           isv_svn=isv_svn, attributes=AE_ATTRIBUTES)


# Built once: constructing ECDSA(SHA256()) per signature costs ~1-2 us on the quote hot path.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 as SGX quotes carry it: r ‖ s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public_key_xy(key: ec.EllipticCurvePublicKey) -> bytes:
    n = key.public_numbers()
    return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def _size(value: object) -> str:
    return f"{len(value)}" if isinstance(value, bytes | bytearray) else f"a {type(value).__name__}"


def check_att_key_id(att_key_id: object) -> None:
    """QE3's key-id rules: ECDSA-P256 only (else UNSUPPORTED_ATT_KEY_ID); id/version 0, a 32-byte
    MRSIGNER equal to Intel's QE3 signer and prod_id 1 (else INVALID_PARAMETER, as sgx_ql_init_quote
    does); any other field differing from Intel's default key id is unsupported."""
    if not isinstance(att_key_id, AttKeyId):
        raise QuoteError(QuoteErrorCode.INVALID_PARAMETER, "att_key_id must be an sgx_att_key_id_ext_t")
    if att_key_id.algorithm_id != ALG_ECDSA_P256:
        raise QuoteError(QuoteErrorCode.UNSUPPORTED_ATT_KEY_ID,
                         f"algorithm_id {att_key_id.algorithm_id} is not supported (only 2 = ECDSA-P256)")
    if (att_key_id.id, att_key_id.version, att_key_id.mrsigner_length) != (0, 0, 32) \
            or att_key_id.mrsigner != INTEL_QE3_MRSIGNER + bytes(16) or att_key_id.prod_id != QE3_PROD_ID:
        raise QuoteError(QuoteErrorCode.INVALID_PARAMETER,
                         "att_key_id does not name Intel's QE3 (id 0, version 0, 32-byte Intel QE3 MRSIGNER, "
                         "prod_id 1)")
    if att_key_id.base_bytes() != DEFAULT_ECDSA_ATT_KEY_ID.base_bytes():
        raise QuoteError(QuoteErrorCode.UNSUPPORTED_ATT_KEY_ID,
                         "att_key_id has a non-default extended_prod_id/config_id/family_id")


class Pce:
    """The Provisioning Certification Enclave: signs QE reports with the PCK private key."""

    def __init__(self, cpu: SimCpu, isv_svn: int, pck_key: ec.EllipticCurvePrivateKey) -> None:
        self.cpu = cpu
        self.identity = pce_identity(isv_svn)
        self._pck_key = pck_key

    def target_info(self) -> TargetInfo:
        return self.identity.target_info()

    def certify(self, qe_report: Report) -> bytes:
        """Like PCE's certify_enclave: the report must be MACed for the PCE and come from an enclave with
        PROVISION_KEY; returns the PCK signature (raw r‖s) over the 384-byte report body."""
        raw = qe_report.to_bytes()
        if not self.cpu.verify_report_mac(self.identity, raw):
            raise QuoteError(QuoteErrorCode.KEY_CERTIFICATION_ERROR, "QE report MAC does not verify in the PCE")
        if not qe_report.body.attributes.flags & FLAG_PROVISION_KEY:
            raise QuoteError(QuoteErrorCode.KEY_CERTIFICATION_ERROR, "enclave lacks the PROVISION_KEY attribute")
        return raw_signature(self._pck_key, raw[:384])


@dataclass(frozen=True)
class AttestationKey:
    """The QE3 attestation key and its certification (QE report to the PCE + PCK signature)."""

    private_key: ec.EllipticCurvePrivateKey
    qe_report: Report
    qe_report_signature: bytes

    @property
    def public_xy(self) -> bytes:
        return public_key_xy(self.private_key.public_key())

    @property
    def pub_key_id(self) -> bytes:
        """ECDSA_ID = SHA-256(att_pub ‖ QE auth data): what InitQuoteEx returns and report_data[:32] holds."""
        return hashlib.sha256(self.public_xy + INTEL_QE_AUTH_DATA).digest()

    def seal(self, seal_key: bytes) -> bytes:
        scalar = self.private_key.private_numbers().private_value.to_bytes(32, "big")
        nonce = os.urandom(12)
        plain = scalar + self.qe_report.to_bytes() + self.qe_report_signature
        return _SEAL_MAGIC + nonce + AESGCM(seal_key).encrypt(nonce, plain, _SEAL_MAGIC)

    @classmethod
    def unseal(cls, blob: bytes, seal_key: bytes) -> AttestationKey:
        if not blob.startswith(_SEAL_MAGIC) or len(blob) < len(_SEAL_MAGIC) + 12:
            raise ValueError("not a sealed attestation key")
        nonce = blob[len(_SEAL_MAGIC):len(_SEAL_MAGIC) + 12]
        try:
            plain = AESGCM(seal_key).decrypt(nonce, blob[len(_SEAL_MAGIC) + 12:], _SEAL_MAGIC)
        except InvalidTag as e:
            raise ValueError("sealed attestation key does not unseal on this platform") from e
        if len(plain) != 32 + REPORT_SIZE + 64:
            raise ValueError("sealed attestation key has the wrong length")
        key = ec.derive_private_key(int.from_bytes(plain[:32], "big"), ec.SECP256R1())
        return cls(key, Report.parse(plain[32:32 + REPORT_SIZE]), plain[32 + REPORT_SIZE:])


class Qe3Engine:
    """QE3 + PCE behind the QuotingEngine interface (quotehelper.platform.engine).

    Construction reads nothing; the sealed key file is read once when first needed (it may have been
    made by another process) and kept in memory, so the get_quote hot path does no file I/O.
    """

    def __init__(self, *, cpu: SimCpu, qe_svn: int, pce: Pce, qe_id: bytes, pck_chain_pem: bytes,
                 key_path: Path) -> None:
        self.cpu = cpu
        self.identity = qe3_identity(qe_svn)
        self.pce = pce
        self.qe_id = qe_id
        self.key_path = Path(key_path)
        # Type-5 certification data: PEM leaf ‖ PCK CA ‖ root, with the NUL terminator Intel's QCNL adds.
        self.cert_data = CertificationData(CERT_PCK_CHAIN, pck_chain_pem.rstrip(b"\0") + b"\0")
        self.header = QuoteHeader(version=3, qe_svn=qe_svn, pce_svn=pce.identity.isv_svn,
                                  user_data=qe_id + bytes(4))
        self._seal_key = cpu.seal_key(self.identity, _SEAL_LABEL)
        self._key: AttestationKey | None = None
        self._header_bytes = self.header.to_bytes()
        self._sig_len_field = b""
        self._after_isv_sig = b""
        self._lock = threading.Lock()
        self._report_macs: dict[bytes, CMAC] = {}
        # The last att_key_id that passed check_att_key_id (~1.5 us); the service passes one cached
        # object per distinct key id, so the hot path compares identities.
        self._checked_key_id: AttKeyId | None = None
        # The exact size, from the real encoder over a quote with placeholder signatures.
        self._quote_size = len(self._build(bytes(REPORT_BODY_SIZE), bytes(64), bytes(64),
                                           Report(ReportBody()), bytes(64)))

    # ---- QuotingEngine -----------------------------------------------------------------------------
    def supported_att_key_ids(self) -> list[AttKeyId]:
        return [DEFAULT_ECDSA_ATT_KEY_ID]

    def target_info(self) -> TargetInfo:
        return self.identity.target_info()

    def init_quote(self, att_key_id: AttKeyId) -> tuple[TargetInfo, bytes]:
        check_att_key_id(att_key_id)
        return self.target_info(), self._ensure_key().pub_key_id

    def quote_size(self, att_key_id: AttKeyId) -> int:
        check_att_key_id(att_key_id)
        self._require_key()
        return self._quote_size

    def get_quote(self, report: bytes, att_key_id: AttKeyId,
                  qe_report_info: bytes | None = None) -> tuple[bytes, bytes | None]:
        if att_key_id is not self._checked_key_id:  # AttKeyId is frozen: the same object passes again
            check_att_key_id(att_key_id)
            self._checked_key_id = att_key_id
        if not isinstance(report, bytes | bytearray) or len(report) != REPORT_SIZE:
            raise QuoteError(QuoteErrorCode.INVALID_PARAMETER, f"report must be {REPORT_SIZE} bytes, got {_size(report)}")
        info = None
        if qe_report_info is not None:
            if not isinstance(qe_report_info, bytes | bytearray) or len(qe_report_info) != QE_REPORT_INFO_SIZE:
                raise QuoteError(QuoteErrorCode.INVALID_PARAMETER,
                                 f"qe_report_info must be {QE_REPORT_INFO_SIZE} bytes, got {_size(qe_report_info)}")
            try:
                info = QeReportInfo.parse(bytes(qe_report_info))
            except FormatError as e:
                raise QuoteError(QuoteErrorCode.INVALID_PARAMETER, f"bad qe_report_info: {e}") from e
        key = self._require_key()
        report = bytes(report)
        if not self._report_mac_ok(report):
            raise QuoteError(QuoteErrorCode.INVALID_REPORT,
                             "the REPORT's MAC does not verify with the QE's report key (not made for this "
                             "QE's target info on this platform)")
        signed = self._header_bytes + report[:REPORT_BODY_SIZE]
        # Splice into the per-key template: signature_data_len ‖ ISV signature ‖ the constant rest.
        quote = signed + self._sig_len_field + raw_signature(key.private_key, signed) + self._after_isv_sig
        if info is None:
            return quote, None
        # §5.7: a report for the app enclave binding the nonce to this exact quote.
        rd = hashlib.sha256(info.nonce + quote).digest() + bytes(32)
        qe_rep = self.cpu.ereport(self.identity, info.app_enclave_target_info, rd)
        return quote, bytes(qe_report_info[:528]) + qe_rep.to_bytes()

    # ---- internals ---------------------------------------------------------------------------------
    def _report_mac_ok(self, report: bytes) -> bool:
        """sgx_verify_report inside the QE: EGETKEY(REPORT, report.key_id) + CMAC, constant-time compare.
        The keyed CMAC is kept per KEYID (a platform has one), so a quote pays only the MAC itself."""
        key_id = report[384:416]
        base = self._report_macs.get(key_id)
        if base is None:
            base = self.cpu.report_cmac(self.identity.target_info(), key_id)
            if len(self._report_macs) < 16:  # KEYIDs come from the caller: keep the table bounded
                self._report_macs[key_id] = base
        mac = base.copy()
        mac.update(report[:REPORT_BODY_SIZE])
        try:
            mac.verify(report[416:432])
        except InvalidSignature:
            return False
        return True

    def _build(self, body: bytes, isv_sig: bytes, att_pub: bytes, qe_report: Report, qe_sig: bytes) -> bytes:
        qe = QeReportCertData(qe_report.body, qe_sig, INTEL_QE_AUTH_DATA, self.cert_data)
        return Quote(self.header, ReportBody.parse(body), EcdsaSignatureData(isv_sig, att_pub, qe)).to_bytes()

    def _load_key(self) -> AttestationKey | None:
        try:
            blob = read_private(self.key_path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise QuoteError(QuoteErrorCode.UNEXPECTED, f"cannot read {self.key_path}: {e}") from e
        except PlatformStoreError as e:
            raise QuoteError(QuoteErrorCode.UNEXPECTED, str(e)) from e
        try:
            return AttestationKey.unseal(blob, self._seal_key)
        except ValueError as e:
            raise QuoteError(QuoteErrorCode.ATT_KEY_CERT_DATA_INVALID, f"{self.key_path}: {e}") from e

    def _require_key(self) -> AttestationKey:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._set_key(self._load_key())
        if self._key is None:
            raise QuoteError(QuoteErrorCode.ATT_KEY_NOT_INITIALIZED,
                             "no attestation key yet: call init_quote first")
        return self._key

    def _ensure_key(self) -> AttestationKey:
        with self._lock:
            if self._key is None:
                self._set_key(self._load_key() or self._generate_key())
        return self._require_key()

    def _set_key(self, key: AttestationKey | None) -> AttestationKey | None:
        """Keeps the key and the quote bytes that depend only on it, built once with the sgx formats; a
        quote is then header ‖ body ‖ signature_data_len ‖ ISV signature ‖ this constant rest."""
        if key is None:
            return None
        template = self._build(bytes(REPORT_BODY_SIZE), bytes(64), key.public_xy, key.qe_report,
                               key.qe_report_signature)
        signed_len = HEADER_SIZE + REPORT_BODY_SIZE
        self._sig_len_field = template[signed_len:signed_len + 4]
        self._after_isv_sig = template[signed_len + 4 + 64:]
        self._key = key  # last: lock-free readers test _key before using the fields above
        return key

    def _generate_key(self) -> AttestationKey:
        """QE3 key generation + certification; the first process to store its key wins, others load it."""
        priv = ec.generate_private_key(ec.SECP256R1())
        rd = hashlib.sha256(public_key_xy(priv.public_key()) + INTEL_QE_AUTH_DATA).digest() + bytes(32)
        qe_report = self.cpu.ereport(self.identity, self.pce.target_info(), rd)
        key = AttestationKey(priv, qe_report, self.pce.certify(qe_report))
        try:
            if write_atomic(self.key_path, key.seal(self._seal_key), private=True):
                return key
        except OSError as e:
            raise QuoteError(QuoteErrorCode.UNEXPECTED, f"cannot store the attestation key: {e}") from e
        existing = self._load_key()
        if existing is None:
            raise QuoteError(QuoteErrorCode.UNEXPECTED, f"{self.key_path} vanished while being created")
        return existing
