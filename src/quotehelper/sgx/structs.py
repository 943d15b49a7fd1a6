"""SGX architectural structures, byte-exact (packed, little-endian). Formats only: no crypto, no I/O.

Sizes and offsets follow linux-sgx `sgx_report.h`, `sgx_key.h`, `sgx_quote.h` and DCAP `sgx_ql_quote.h`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from quotehelper.sgx.binary import Reader, expect_len, fixed

# Attribute flag bits (sgx_attributes.h).
FLAG_INITTED = 0x1
FLAG_DEBUG = 0x2
FLAG_MODE64BIT = 0x4
FLAG_PROVISION_KEY = 0x10
FLAG_EINITTOKEN_KEY = 0x20
FLAG_KSS = 0x80
FLAG_AEX_NOTIFY = 0x400

# Key names and policies (sgx_key.h).
KEYNAME_EINITTOKEN = 0
KEYNAME_PROVISION = 1
KEYNAME_PROVISION_SEAL = 2
KEYNAME_REPORT = 3
KEYNAME_SEAL = 4
KEYPOLICY_MRENCLAVE = 0x1
KEYPOLICY_MRSIGNER = 0x2

TARGET_INFO_SIZE = 512
REPORT_BODY_SIZE = 384
REPORT_SIZE = 432
KEY_REQUEST_SIZE = 512
QE_REPORT_INFO_SIZE = 960
ATT_KEY_ID_SIZE = 158
ATT_KEY_ID_EXT_SIZE = 256
ATT_KEY_ID_LIST_HEADER_SIZE = 8

ALG_EPID_UNLINKABLE = 0
ALG_EPID_LINKABLE = 1
ALG_ECDSA_P256 = 2
ALG_ECDSA_P384 = 3

# Intel's production QE3 signer (MRSIGNER) and its debug-build counterpart.
INTEL_QE3_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
INTEL_QE3_DEBUG_MRSIGNER = bytes.fromhex("e4bd9fc2129835ba1dcca1939d57d08e88561b34740d59405972d4ba25a7e5f7")


@dataclass(frozen=True)
class Attributes:
    """sgx_attributes_t (16 bytes)."""

    flags: int = 0
    xfrm: int = 0

    SIZE = 16

    @classmethod
    def parse(cls, data: bytes) -> Attributes:
        expect_len(data, cls.SIZE, "sgx_attributes_t")
        flags, xfrm = struct.unpack("<QQ", data)
        return cls(flags, xfrm)

    def to_bytes(self) -> bytes:
        return struct.pack("<QQ", self.flags, self.xfrm)

    @property
    def debug(self) -> bool:
        return bool(self.flags & FLAG_DEBUG)


@dataclass(frozen=True)
class TargetInfo:
    """sgx_target_info_t (512 bytes): what EREPORT needs to MAC a report for a target enclave."""

    mr_enclave: bytes = bytes(32)
    attributes: Attributes = field(default_factory=Attributes)
    config_svn: int = 0
    misc_select: int = 0
    config_id: bytes = bytes(64)
    reserved1: bytes = bytes(2)
    reserved2: bytes = bytes(8)
    reserved3: bytes = bytes(384)

    SIZE = TARGET_INFO_SIZE

    @classmethod
    def parse(cls, data: bytes) -> TargetInfo:
        expect_len(data, cls.SIZE, "sgx_target_info_t")
        r = Reader(data, "sgx_target_info_t")
        mr_enclave = r.take(32, "mr_enclave")
        attributes = Attributes.parse(r.take(16, "attributes"))
        reserved1 = r.take(2, "reserved1")
        config_svn = r.u16("config_svn")
        misc_select = r.u32("misc_select")
        reserved2 = r.take(8, "reserved2")
        config_id = r.take(64, "config_id")
        reserved3 = r.take(384, "reserved3")
        return cls(mr_enclave, attributes, config_svn, misc_select, config_id, reserved1, reserved2, reserved3)

    def to_bytes(self) -> bytes:
        s = "sgx_target_info_t"
        return b"".join([
            fixed(self.mr_enclave, 32, s, "mr_enclave"),
            self.attributes.to_bytes(),
            fixed(self.reserved1, 2, s, "reserved1"),
            struct.pack("<HI", self.config_svn, self.misc_select),
            fixed(self.reserved2, 8, s, "reserved2"),
            fixed(self.config_id, 64, s, "config_id"),
            fixed(self.reserved3, 384, s, "reserved3"),
        ])


_REPORT_BODY = struct.Struct("<16sI12s16s16s32s32s32s32s64sHHH42s16s64s")  # sgx_report_body_t, 384 bytes


@dataclass(frozen=True)
class ReportBody:
    """sgx_report_body_t (384 bytes); also the body of an SGX quote and the QE report in it."""

    cpu_svn: bytes = bytes(16)
    misc_select: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    attributes: Attributes = field(default_factory=Attributes)
    mr_enclave: bytes = bytes(32)
    mr_signer: bytes = bytes(32)
    config_id: bytes = bytes(64)
    isv_prod_id: int = 0
    isv_svn: int = 0
    config_svn: int = 0
    isv_family_id: bytes = bytes(16)
    report_data: bytes = bytes(64)
    reserved1: bytes = bytes(12)
    reserved2: bytes = bytes(32)
    reserved3: bytes = bytes(32)
    reserved4: bytes = bytes(42)

    SIZE = REPORT_BODY_SIZE

    @classmethod
    def parse(cls, data: bytes, structure: str = "sgx_report_body_t", base: int = 0) -> ReportBody:
        if len(data) < base + cls.SIZE:
            r = Reader(data, structure, base, base + cls.SIZE)
            raise r.error("<whole>", f"needs {cls.SIZE} bytes, only {len(data) - base} left")
        # One unpack of the fixed layout (every quote carries two report bodies; field by field cost ~20x)
        (cpu_svn, misc_select, reserved1, isv_ext_prod_id, attrs, mr_enclave, reserved2, mr_signer, reserved3,
         config_id, isv_prod_id, isv_svn, config_svn, reserved4, isv_family_id,
         report_data) = _REPORT_BODY.unpack_from(data, base)
        attributes = Attributes.parse(attrs)
        return cls(cpu_svn, misc_select, isv_ext_prod_id, attributes, mr_enclave, mr_signer, config_id,
                   isv_prod_id, isv_svn, config_svn, isv_family_id, report_data,
                   reserved1, reserved2, reserved3, reserved4)

    def to_bytes(self) -> bytes:
        s = "sgx_report_body_t"
        return b"".join([
            fixed(self.cpu_svn, 16, s, "cpu_svn"),
            struct.pack("<I", self.misc_select),
            fixed(self.reserved1, 12, s, "reserved1"),
            fixed(self.isv_ext_prod_id, 16, s, "isv_ext_prod_id"),
            self.attributes.to_bytes(),
            fixed(self.mr_enclave, 32, s, "mr_enclave"),
            fixed(self.reserved2, 32, s, "reserved2"),
            fixed(self.mr_signer, 32, s, "mr_signer"),
            fixed(self.reserved3, 32, s, "reserved3"),
            fixed(self.config_id, 64, s, "config_id"),
            struct.pack("<HHH", self.isv_prod_id, self.isv_svn, self.config_svn),
            fixed(self.reserved4, 42, s, "reserved4"),
            fixed(self.isv_family_id, 16, s, "isv_family_id"),
            fixed(self.report_data, 64, s, "report_data"),
        ])


@dataclass(frozen=True)
class Report:
    """sgx_report_t (432 bytes): body, KEYID, and AES-CMAC over the body."""

    body: ReportBody
    key_id: bytes = bytes(32)
    mac: bytes = bytes(16)

    SIZE = REPORT_SIZE

    @classmethod
    def parse(cls, data: bytes) -> Report:
        expect_len(data, cls.SIZE, "sgx_report_t")
        return cls(ReportBody.parse(data[:384], "sgx_report_t.body"), data[384:416], data[416:432])

    def to_bytes(self) -> bytes:
        return (self.body.to_bytes() + fixed(self.key_id, 32, "sgx_report_t", "key_id")
                + fixed(self.mac, 16, "sgx_report_t", "mac"))


@dataclass(frozen=True)
class KeyRequest:
    """sgx_key_request_t (512 bytes), the EGETKEY input."""

    key_name: int
    key_policy: int = 0
    isv_svn: int = 0
    cpu_svn: bytes = bytes(16)
    attribute_mask: Attributes = field(default_factory=Attributes)
    key_id: bytes = bytes(32)
    misc_mask: int = 0
    config_svn: int = 0

    SIZE = KEY_REQUEST_SIZE

    @classmethod
    def parse(cls, data: bytes) -> KeyRequest:
        expect_len(data, cls.SIZE, "sgx_key_request_t")
        r = Reader(data, "sgx_key_request_t")
        key_name, key_policy, isv_svn, reserved1 = (r.u16("key_name"), r.u16("key_policy"),
                                                    r.u16("isv_svn"), r.u16("reserved1"))
        if reserved1:
            raise r.error("reserved1", "must be zero", 6)
        cpu_svn = r.take(16, "cpu_svn")
        mask = Attributes.parse(r.take(16, "attribute_mask"))
        key_id = r.take(32, "key_id")
        misc_mask = r.u32("misc_mask")
        config_svn = r.u16("config_svn")
        return cls(key_name, key_policy, isv_svn, cpu_svn, mask, key_id, misc_mask, config_svn)

    def to_bytes(self) -> bytes:
        s = "sgx_key_request_t"
        out = (struct.pack("<HHHH", self.key_name, self.key_policy, self.isv_svn, 0)
               + fixed(self.cpu_svn, 16, s, "cpu_svn") + self.attribute_mask.to_bytes()
               + fixed(self.key_id, 32, s, "key_id") + struct.pack("<IH", self.misc_mask, self.config_svn))
        return out + bytes(self.SIZE - len(out))


@dataclass(frozen=True)
class AttKeyId:
    """sgx_ql_att_key_id_t (158 bytes) extended to sgx_att_key_id_ext_t (256 bytes)."""

    id: int = 0
    version: int = 0
    mrsigner_length: int = 32
    mrsigner: bytes = bytes(48)
    prod_id: int = 0
    extended_prod_id: bytes = bytes(16)
    config_id: bytes = bytes(64)
    family_id: bytes = bytes(16)
    algorithm_id: int = ALG_ECDSA_P256
    spid: bytes = bytes(16)
    att_key_type: int = 0
    reserved: bytes = bytes(80)

    SIZE = ATT_KEY_ID_EXT_SIZE
    BASE_SIZE = ATT_KEY_ID_SIZE

    @classmethod
    def parse(cls, data: bytes, base: int = 0) -> AttKeyId:
        r = Reader(data, "sgx_att_key_id_ext_t", base, base + cls.SIZE)
        if len(data) < base + cls.SIZE:
            raise r.error("<whole>", f"needs {cls.SIZE} bytes, only {len(data) - base} left")
        return cls(r.u16("id"), r.u16("version"), r.u16("mrsigner_length"), r.take(48, "mrsigner"),
                   r.u32("prod_id"), r.take(16, "extended_prod_id"), r.take(64, "config_id"),
                   r.take(16, "family_id"), r.u32("algorithm_id"), r.take(16, "spid"),
                   r.u16("att_key_type"), r.take(80, "reserved"))

    def base_bytes(self) -> bytes:
        """The 158-byte sgx_ql_att_key_id_t that AESM compares against its supported list."""
        cached = self.__dict__.get("_base")  # immutable: encode once (QE3 checks it on every quote)
        if cached is None:
            cached = self._encode_base()
            object.__setattr__(self, "_base", cached)
        return cached

    def _encode_base(self) -> bytes:
        s = "sgx_ql_att_key_id_t"
        return b"".join([
            struct.pack("<HHH", self.id, self.version, self.mrsigner_length),
            fixed(self.mrsigner, 48, s, "mrsigner"),
            struct.pack("<I", self.prod_id),
            fixed(self.extended_prod_id, 16, s, "extended_prod_id"),
            fixed(self.config_id, 64, s, "config_id"),
            fixed(self.family_id, 16, s, "family_id"),
            struct.pack("<I", self.algorithm_id),
        ])

    def to_bytes(self) -> bytes:
        s = "sgx_att_key_id_ext_t"
        return (self.base_bytes() + fixed(self.spid, 16, s, "spid") + struct.pack("<H", self.att_key_type)
                + fixed(self.reserved, 80, s, "reserved"))


# Intel's default ECDSA-P256 QE3 attestation key id, the only one DCAP clients send.
DEFAULT_ECDSA_ATT_KEY_ID = AttKeyId(mrsigner=INTEL_QE3_MRSIGNER + bytes(16), prod_id=1,
                                    algorithm_id=ALG_ECDSA_P256)


@dataclass(frozen=True)
class AttKeyIdList:
    """sgx_ql_att_key_id_list_t: 8-byte header then num × 256-byte ext key ids."""

    ids: tuple[AttKeyId, ...]
    id: int = 0
    version: int = 0

    @classmethod
    def parse(cls, data: bytes) -> AttKeyIdList:
        r = Reader(data, "sgx_ql_att_key_id_list_t")
        hid, version, num = r.u16("id"), r.u16("version"), r.u32("num_att_ids")
        if len(data) != ATT_KEY_ID_LIST_HEADER_SIZE + num * ATT_KEY_ID_EXT_SIZE:
            raise r.error("num_att_ids", f"{num} ids need {8 + 256 * num} bytes, list has {len(data)}", 4)
        ids = tuple(AttKeyId.parse(data, 8 + 256 * i) for i in range(num))
        return cls(ids, hid, version)

    def to_bytes(self) -> bytes:
        return (struct.pack("<HHI", self.id, self.version, len(self.ids))
                + b"".join(k.to_bytes() for k in self.ids))


@dataclass(frozen=True)
class QeReportInfo:
    """sgx_ql_qe_report_info_t (960 bytes): nonce, app target info, and the QE's report (output)."""

    nonce: bytes
    app_enclave_target_info: TargetInfo
    qe_report: Report | None = None

    SIZE = QE_REPORT_INFO_SIZE

    @classmethod
    def parse(cls, data: bytes) -> QeReportInfo:
        expect_len(data, cls.SIZE, "sgx_qe_report_info_t")
        raw_report = data[528:960]
        report = None if raw_report == bytes(432) else Report.parse(raw_report)
        return cls(data[:16], TargetInfo.parse(data[16:528]), report)

    def to_bytes(self) -> bytes:
        report = self.qe_report.to_bytes() if self.qe_report else bytes(REPORT_SIZE)
        return (fixed(self.nonce, 16, "sgx_qe_report_info_t", "nonce")
                + self.app_enclave_target_info.to_bytes() + report)


@dataclass(frozen=True)
class PceInfo:
    """sgx_pce_info_t (4 bytes)."""

    pce_isv_svn: int
    pce_id: int

    def to_bytes(self) -> bytes:
        return struct.pack("<HH", self.pce_isv_svn, self.pce_id)

    @classmethod
    def parse(cls, data: bytes) -> PceInfo:
        expect_len(data, 4, "sgx_pce_info_t")
        return cls(*struct.unpack("<HH", data))
