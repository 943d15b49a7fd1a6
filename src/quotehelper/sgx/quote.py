"""DCAP ECDSA quotes v3/v4/v5 (SGX and TDX bodies), byte-exact parse and encode. No crypto.

Layout: DCAP `sgx_quote_3.h`, `sgx_quote_4.h`, `sgx_quote_5.h`. `parse_quote(x).to_bytes() == x`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace

from quotehelper.errors import FormatError
from quotehelper.sgx.binary import Reader, fixed
from quotehelper.sgx.structs import REPORT_BODY_SIZE, ReportBody

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
ATT_KEY_TYPE_ECDSA_P256 = 2
ATT_KEY_TYPE_ECDSA_P384 = 3
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
HEADER_SIZE = 48

# Certification data types.
CERT_PPID_CLEARTEXT = 1
CERT_PPID_RSA2048 = 2
CERT_PPID_RSA3072 = 3
CERT_PCK_LEAF = 4
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
CERT_PLATFORM_MANIFEST = 7

# v5 body types.
BODY_SGX = 1
BODY_TD10 = 2
BODY_TD15 = 3
BODY_TD15_EX = 4  # sgx_report2_body_v1_5_ex_t: TD 1.5 + Service-TD / migration fields (885 bytes)

# Intel QE3's fixed QE authentication data: 32 bytes 00 01 .. 1f.
INTEL_QE_AUTH_DATA = bytes(range(32))

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.S)


_HEADER = struct.Struct("<HHIHH16s20s")  # 48 bytes


@dataclass(frozen=True)
class QuoteHeader:
    """48-byte quote header. For v3 bytes 4..11 are att_key_data_0, qe_svn, pce_svn; v4+ has tee_type."""

    version: int
    att_key_type: int = ATT_KEY_TYPE_ECDSA_P256
    tee_type: int = TEE_TYPE_SGX  # v3: att_key_data_0 (0)
    qe_svn: int = 0  # v3 only; v4+ reserved
    pce_svn: int = 0  # v3 only; v4+ reserved
    qe_vendor_id: bytes = INTEL_QE_VENDOR_ID
    user_data: bytes = bytes(20)

    SIZE = HEADER_SIZE

    @classmethod
    def parse(cls, data: bytes) -> QuoteHeader:
        if len(data) < HEADER_SIZE:
            raise FormatError("quote.header", "<whole>", 0, f"needs {HEADER_SIZE} bytes, only {len(data)} left")
        version, att_key_type, tee_type, qe_svn, pce_svn, vendor, user_data = _HEADER.unpack_from(data)
        if version not in (3, 4, 5):
            raise FormatError("quote.header", "version", 0, f"unsupported quote version {version}")
        if att_key_type not in (ATT_KEY_TYPE_ECDSA_P256, ATT_KEY_TYPE_ECDSA_P384):
            raise FormatError("quote.header", "att_key_type", 2, f"unknown attestation key type {att_key_type}")
        if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
            raise FormatError("quote.header", "tee_type", 4, f"unknown TEE type {tee_type:#x}")
        if version == 3 and tee_type != TEE_TYPE_SGX:
            raise FormatError("quote.header", "tee_type", 4, "v3 quotes are SGX only (must be 0)")
        return cls(version, att_key_type, tee_type, qe_svn, pce_svn, vendor, user_data)

    def to_bytes(self) -> bytes:
        return (struct.pack("<HHIHH", self.version, self.att_key_type, self.tee_type, self.qe_svn, self.pce_svn)
                + fixed(self.qe_vendor_id, 16, "quote.header", "qe_vendor_id")
                + fixed(self.user_data, 20, "quote.header", "user_data"))

    @property
    def qe_id(self) -> bytes:
        """The 16-byte QE_ID that QE3 puts in user_data."""
        return self.user_data[:16]


_TD10_FIELDS = (("tee_tcb_svn", 16), ("mr_seam", 48), ("mr_signer_seam", 48), ("seam_attributes", 8),
                ("td_attributes", 8), ("xfam", 8), ("mr_td", 48), ("mr_config_id", 48), ("mr_owner", 48),
                ("mr_owner_config", 48), ("rt_mr0", 48), ("rt_mr1", 48), ("rt_mr2", 48), ("rt_mr3", 48),
                ("report_data", 64))
_TD15_EXTRA = (("tee_tcb_svn2", 16), ("mr_service_td", 48))
# Intel's sgx_quote_5.h order; names as dcap-qvl's TdReport15Ex. vmid is one byte.
_TD15_EX_EXTRA = (("vmid", 1), ("td_id", 32), ("dev_info", 48), ("init_service_td_hash", 48),
                  ("init_service_td_attributes", 8), ("init_cpu_svn", 16), ("init_tee_tcb_svn", 16),
                  ("init_tee_fmspc", 12), ("cur_service_td_hash", 48), ("cur_service_td_attributes", 8))
_TD_VERSIONS = {"1.0": _TD10_FIELDS, "1.5": _TD10_FIELDS + _TD15_EXTRA,
                "1.5ex": _TD10_FIELDS + _TD15_EXTRA + _TD15_EX_EXTRA}
TD_BODY_VERSIONS = {BODY_TD10: "1.0", BODY_TD15: "1.5", BODY_TD15_EX: "1.5ex"}


@dataclass(frozen=True)
class TdReport:
    """TDX TD report body: 1.0 (584 bytes), 1.5 (648 bytes) or 1.5ex (885 bytes, v5 body type 4). Fields are
    raw bytes, as in the spec."""

    fields: dict[str, bytes]
    version: str = "1.0"

    @classmethod
    def layout(cls, version: str) -> tuple[tuple[str, int], ...]:
        return _TD_VERSIONS[version]

    @classmethod
    def size(cls, version: str) -> int:
        return sum(n for _, n in cls.layout(version))

    @classmethod
    def parse(cls, data: bytes, version: str, base: int = 0) -> TdReport:
        r = Reader(data, f"td_report_{version}", base)
        return cls({name: r.take(n, name) for name, n in cls.layout(version)}, version)

    def to_bytes(self) -> bytes:
        return b"".join(fixed(self.fields[name], n, f"td_report_{self.version}", name)
                        for name, n in self.layout(self.version))

    @property
    def report_data(self) -> bytes:
        return self.fields["report_data"]


@dataclass(frozen=True)
class RawBody:
    """A v5 body of a type this library does not model (e.g. body type 4); kept byte-exact."""

    raw: bytes

    def to_bytes(self) -> bytes:
        return self.raw


Body = ReportBody | TdReport | RawBody


@dataclass(frozen=True)
class PpidCertInfo:
    """Certification data types 1-3: PPID (clear or RSA-OAEP encrypted), CPUSVN, PCE ISVSVN, PCE ID."""

    ppid: bytes
    cpu_svn: bytes
    pce_svn: int
    pce_id: int | None  # Intel's own sample quote omits it (34-byte type 1)


@dataclass(frozen=True)
class CertificationData:
    """Certification data: u16 type, u32 size, data. Type 6 nests a QeReportCertData."""

    type: int
    data: bytes

    def to_bytes(self) -> bytes:
        return struct.pack("<HI", self.type, len(self.data)) + self.data

    @classmethod
    def read(cls, r: Reader) -> CertificationData:
        start = r.pos
        ctype = r.u16("certification_data_type")
        if not 1 <= ctype <= CERT_PLATFORM_MANIFEST:
            raise FormatError(r.structure, "certification_data_type", start, f"unknown type {ctype}")
        size_off = r.pos
        size = r.u32("certification_data_size")
        if size > r.remaining():
            raise FormatError(r.structure, "certification_data_size", size_off,
                              f"declares {size} bytes, only {r.remaining()} follow")
        data = r.take(size, "certification_data")
        cd = cls(ctype, data)
        if ctype == CERT_QE_REPORT:
            QeReportCertData.parse(data, base_structure=f"{r.structure}.qe_report_certification_data",
                                   base=r.pos - size)
        return cd

    @property
    def qe_report_cert_data(self) -> QeReportCertData:
        if self.type != CERT_QE_REPORT:
            raise FormatError("certification_data", "type", 0, f"type {self.type} has no nested QE report")
        return QeReportCertData.parse(self.data)

    def pck_chain_pem(self) -> list[bytes]:
        """The PEM certificates of a type-5 chain (leaf first). Tolerates the trailing NUL or its absence."""
        if self.type == CERT_QE_REPORT:
            return self.qe_report_cert_data.certification_data.pck_chain_pem()
        if self.type not in (CERT_PCK_CHAIN, CERT_PCK_LEAF):
            raise FormatError("certification_data", "type", 0, f"type {self.type} carries no PCK certificates")
        body = self.data.rstrip(b"\0")
        certs = _PEM_CERT.findall(body)
        if not certs:
            raise FormatError("certification_data", "data", 0, "no PEM certificate found")
        return certs

    def ppid_cert_info(self) -> PpidCertInfo:
        sizes = {CERT_PPID_CLEARTEXT: 16, CERT_PPID_RSA2048: 256, CERT_PPID_RSA3072: 384}
        if self.type not in sizes:
            raise FormatError("certification_data", "type", 0, f"type {self.type} is not a PPID type")
        n = sizes[self.type]
        r = Reader(self.data, f"certification_data_type_{self.type}")
        ppid, cpu_svn, pce_svn = r.take(n, "ppid"), r.take(16, "cpu_svn"), r.u16("pce_svn")
        pce_id = r.u16("pce_id") if r.remaining() else None
        if r.remaining():
            raise r.error("<end>", f"{r.remaining()} unexpected bytes")
        return PpidCertInfo(ppid, cpu_svn, pce_svn, pce_id)


@dataclass(frozen=True)
class QeReportCertData:
    """QE report, its PCK signature, QE auth data and certification data: v3 signature tail and type 6."""

    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData
    # The bytes it was parsed from (empty when built in code; `replace` empties it): the QE report's
    # signature is checked over them, and a platform's quotes share them (see parse_quote's memo)
    raw: bytes = field(default=b"", init=False, compare=False, repr=False)

    @classmethod
    def read(cls, r: Reader) -> QeReportCertData:
        start = r.pos
        qe_report = ReportBody.parse(r.take(REPORT_BODY_SIZE, "qe_report"))
        sig = r.take(64, "qe_report_signature")
        auth_off = r.pos
        auth_len = r.u16("qe_auth_data_size")
        if auth_len > r.remaining():
            raise FormatError(r.structure, "qe_auth_data_size", auth_off,
                              f"declares {auth_len} bytes, only {r.remaining()} follow")
        auth = r.take(auth_len, "qe_auth_data")
        out = cls(qe_report, sig, auth, CertificationData.read(r))
        object.__setattr__(out, "raw", r.data[start:r.pos])
        return out

    def qe_report_bytes(self) -> bytes:
        """The 384 bytes the PCK signature covers: as received when parsed, else encoded."""
        return self.raw[:REPORT_BODY_SIZE] if self.raw else self.qe_report.to_bytes()

    @classmethod
    def parse(cls, data: bytes, base_structure: str = "qe_report_certification_data",
              base: int = 0) -> QeReportCertData:
        r = Reader(data if base == 0 else bytes(base) + data, base_structure, base)
        out = cls.read(r)
        if r.remaining():
            raise r.error("<end>", f"{r.remaining()} unexpected bytes after the certification data")
        return out

    def to_bytes(self) -> bytes:
        s = "qe_report_certification_data"
        return (self.qe_report.to_bytes() + fixed(self.qe_report_signature, 64, s, "qe_report_signature")
                + struct.pack("<H", len(self.qe_auth_data)) + self.qe_auth_data
                + self.certification_data.to_bytes())


@dataclass(frozen=True)
class EcdsaSignatureData:
    """Quote signature data: ISV signature, attestation key, then (v3) the QE part or (v4/v5) type-6 data."""

    isv_signature: bytes
    attest_pub_key: bytes
    qe: QeReportCertData

    def to_bytes(self, version: int) -> bytes:
        head = (fixed(self.isv_signature, 64, "quote.signature_data", "isv_signature")
                + fixed(self.attest_pub_key, 64, "quote.signature_data", "attest_pub_key"))
        if version == 3:
            return head + self.qe.to_bytes()
        return head + CertificationData(CERT_QE_REPORT, self.qe.to_bytes()).to_bytes()


@dataclass(frozen=True)
class Quote:
    """A DCAP ECDSA-P256 quote. `body_type` is only on the wire for v5."""

    header: QuoteHeader
    body: Body
    signature: EcdsaSignatureData
    body_type: int = BODY_SGX
    _trailing: bytes = field(default=b"", repr=False)
    # Header (+ v5 body descriptor) + body exactly as received; empty when built in code or changed
    # with `replace` (an init=False field is not copied), so an edited quote re-encodes its fields
    _signed: bytes = field(default=b"", init=False, compare=False, repr=False)

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def is_sgx(self) -> bool:
        return self.header.tee_type == TEE_TYPE_SGX

    @property
    def report_body(self) -> ReportBody:
        if not isinstance(self.body, ReportBody):
            raise FormatError("quote", "body", HEADER_SIZE, "not an SGX enclave report body")
        return self.body

    @property
    def certification_data(self) -> CertificationData:
        return self.signature.qe.certification_data

    def signed_bytes(self) -> bytes:
        """The region the ISV signature covers: header (+ v5 body descriptor) + body."""
        if self._signed and not isinstance(self.body, TdReport):  # a TdReport's fields dict can be edited in place
            return self._signed
        body = self.body.to_bytes()
        if self.version == 5:
            return self.header.to_bytes() + struct.pack("<HI", self.body_type, len(body)) + body
        return self.header.to_bytes() + body

    def to_bytes(self, with_trailing: bool = True) -> bytes:
        sig = self.signature.to_bytes(self.version)
        out = self.signed_bytes() + struct.pack("<I", len(sig)) + sig
        return out + self._trailing if with_trailing else out

    def with_signature(self, **changes: object) -> Quote:
        return replace(self, signature=replace(self.signature, **changes))  # type: ignore[arg-type]


def _parse_body(r: Reader, header: QuoteHeader) -> tuple[int, Body]:
    if header.version == 5:
        body_type = r.u16("body_type")
        size_off = r.pos
        body_size = r.u32("body_size")
        expected = {BODY_SGX: REPORT_BODY_SIZE, **{t: TdReport.size(v) for t, v in TD_BODY_VERSIONS.items()}}
        if body_type in expected and body_size != expected[body_type]:
            raise FormatError("quote", "body_size", size_off,
                              f"body type {body_type} is {expected[body_type]} bytes, header says {body_size}")
        if body_type == BODY_SGX and header.tee_type != TEE_TYPE_SGX:
            raise FormatError("quote", "body_type", size_off - 2, "SGX body in a TDX quote")
    else:
        body_type = BODY_SGX if header.tee_type == TEE_TYPE_SGX else BODY_TD10
        body_size = REPORT_BODY_SIZE if body_type == BODY_SGX else TdReport.size("1.0")
    start = r.pos
    raw = r.take(body_size, "body")
    if body_type == BODY_SGX:
        return body_type, ReportBody.parse(raw, "quote.body")
    if body_type in TD_BODY_VERSIONS:
        return body_type, TdReport.parse(bytes(start) + raw, TD_BODY_VERSIONS[body_type], start)
    return body_type, RawBody(raw)


def parse_quote(data: bytes, allow_trailing: bool = False) -> Quote:
    """Parses a quote. Trailing bytes after `signature_data_len` (e.g. AESM's zero padding) are an error
    unless `allow_trailing`; they are then kept so the quote still re-encodes byte-identically."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise FormatError("quote", "header", len(data), f"quote is {len(data)} bytes, header alone needs 48")
    header = QuoteHeader.parse(data[:HEADER_SIZE])
    r = Reader(data, "quote", HEADER_SIZE)
    body_type, body = _parse_body(r, header)
    len_off = r.pos
    sig_len = r.u32("signature_data_len")
    if sig_len > r.remaining():
        raise FormatError("quote", "signature_data_len", len_off,
                          f"declares {sig_len} bytes, only {r.remaining()} follow (truncated quote?)")
    end = r.pos + sig_len
    sr = Reader(data, "quote.signature_data", r.pos, end)
    isv_sig = sr.take(64, "isv_signature")
    att_key = sr.take(64, "attest_pub_key")
    # The QE part (QE report, its signature, auth data, PCK chain: ~4 KB) is the same in every quote of a
    # platform until its attestation key changes: parsed once, then found by its bytes
    sr_start = sr.pos
    tail = (header.version == 3, data[sr_start:end])  # v3 holds the QE part bare, v4/v5 inside type 6
    qe = _QE_PARTS.get(tail)
    if qe is None:
        if header.version == 3:
            qe = QeReportCertData.read(sr)
        else:
            cert_off = sr.pos
            outer = CertificationData.read(sr)
            if outer.type != CERT_QE_REPORT:
                raise FormatError("quote.signature_data", "certification_data_type", cert_off,
                                  f"v{header.version} quotes need type 6, found {outer.type}")
            qe = QeReportCertData.parse(outer.data)
        if sr.remaining():
            raise sr.error("<end>", f"signature_data_len leaves {sr.remaining()} unparsed bytes")
        if end - sr_start <= _QE_PART_MEMO_MAX:  # a real one is ~4 KB: no room for crafted megabytes
            if len(_QE_PARTS) >= 256:
                _QE_PARTS.clear()
            _QE_PARTS[tail] = qe
    trailing = data[end:]
    if trailing and not allow_trailing:
        raise FormatError("quote", "<end>", end, f"{len(trailing)} bytes after the signature data")
    q = Quote(header, body, EcdsaSignatureData(isv_sig, att_key, qe), body_type, trailing)
    object.__setattr__(q, "_signed", data[:len_off])
    return q


_QE_PARTS: dict[tuple[bool, bytes], QeReportCertData] = {}  # successful parses only; immutable values
_QE_PART_MEMO_MAX = 16 << 10


def quote_length(data: bytes) -> int:
    """The real length of a (possibly zero-padded) v3/v4 quote buffer, from signature_data_len."""
    q = parse_quote(data, allow_trailing=True)
    return len(q.to_bytes(with_trailing=False))
