"""The simulated CPU: root secret, owner epoch, CPUSVN, KEYID; EREPORT and EGETKEY(REPORT/SEAL).

Report keys use the exact derivation of the SGX SDK simulation mode (aesm-protocol.md §6.3): a 192-byte
derivation buffer MACed with AES-128-CMAC under the root secret. With the SDK constants
(`SimCpu.sdk_compatible()`), reports made by SDK simulation-mode enclaves verify here and vice versa.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from quotehelper.sgx.structs import (
    FLAG_INITTED,
    FLAG_MODE64BIT,
    KEYNAME_REPORT,
    KEYNAME_SEAL,
    KEYPOLICY_MRSIGNER,
    Attributes,
    Report,
    ReportBody,
    TargetInfo,
)

# SGX SDK simulation-mode constants (linux-sgx sdk/simulation, aesm-protocol.md §6.3).
SDK_BASE_REPORT_KEY = bytes.fromhex("ff00" * 8)
SDK_OWNER_EPOCH = b"THISISOWNEREPOCH"
SDK_CPUSVN = bytes.fromhex("4820f3376ae6b2f2034d3b7a4b48a778")
SDK_KEY_ID = SDK_BASE_REPORT_KEY + bytes(16)

# CPUSVN of non-SDK simulated platforms: shaped like a real one (component bytes, rest zero).
DEFAULT_CPUSVN = bytes.fromhex("0b0b0202ff0100000000000000000000")

DERIVATION_DATA_SIZE = 192


def cmac(key: bytes, data: bytes) -> bytes:
    """AES-128-CMAC, the MAC of EREPORT and the KDF of EGETKEY."""
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


@dataclass(frozen=True)
class EnclaveIdentity:
    """The SECS values of one enclave: what EREPORT reports and EGETKEY derives keys from."""

    mr_enclave: bytes = bytes(32)
    mr_signer: bytes = bytes(32)
    isv_prod_id: int = 0
    isv_svn: int = 0
    attributes: Attributes = field(default_factory=lambda: Attributes(FLAG_INITTED | FLAG_MODE64BIT, 0x3))
    misc_select: int = 0
    config_id: bytes = bytes(64)
    config_svn: int = 0
    isv_ext_prod_id: bytes = bytes(16)
    isv_family_id: bytes = bytes(16)

    def __post_init__(self) -> None:
        for name, size in (("mr_enclave", 32), ("mr_signer", 32), ("config_id", 64),
                           ("isv_ext_prod_id", 16), ("isv_family_id", 16)):
            if len(getattr(self, name)) != size:
                raise ValueError(f"{name} must be {size} bytes, got {len(getattr(self, name))}")
        for name, limit in (("isv_prod_id", 0xFFFF), ("isv_svn", 0xFFFF), ("config_svn", 0xFFFF),
                            ("misc_select", 0xFFFFFFFF)):
            if not 0 <= getattr(self, name) <= limit:
                raise ValueError(f"{name} must be in 0..{limit}")

    def target_info(self) -> TargetInfo:
        """What another enclave needs to make a report this enclave can verify."""
        cached = self.__dict__.get("_target_info")  # immutable: build once
        if cached is None:
            cached = TargetInfo(mr_enclave=self.mr_enclave, attributes=self.attributes, config_svn=self.config_svn,
                                misc_select=self.misc_select, config_id=self.config_id)
            object.__setattr__(self, "_target_info", cached)
        return cached


def report_derivation_data(target: TargetInfo, owner_epoch: bytes, cpu_svn: bytes, key_id: bytes) -> bytes:
    """The 192-byte REPORT-key derivation buffer of the SDK simulation (`dd_report` in deriv.h)."""
    out = bytearray(DERIVATION_DATA_SIZE)
    struct.pack_into("<H", out, 0, KEYNAME_REPORT)
    out[8:24] = target.attributes.to_bytes()
    struct.pack_into("<I", out, 24, target.misc_select)
    out[28:44] = owner_epoch
    out[44:76] = target.mr_enclave
    out[76:92] = cpu_svn
    struct.pack_into("<H", out, 92, target.config_svn)
    out[94:158] = target.config_id
    out[158:190] = key_id
    return bytes(out)


class SimCpu:
    """One simulated package: fused root secret, owner epoch, CPUSVN and the boot-time report KEYID."""

    def __init__(self, root_secret: bytes, owner_epoch: bytes, cpu_svn: bytes, key_id: bytes) -> None:
        for name, value, size in (("root_secret", root_secret, 16), ("owner_epoch", owner_epoch, 16),
                                  ("cpu_svn", cpu_svn, 16), ("key_id", key_id, 32)):
            if len(value) != size:
                raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
        self.root_secret = bytes(root_secret)
        self.owner_epoch = bytes(owner_epoch)
        self.cpu_svn = bytes(cpu_svn)
        self.key_id = bytes(key_id)
        # Report keys depend only on (target, key_id): cache them so the QE's hot path derives once.
        self._report_key = functools.lru_cache(maxsize=256)(self._derive_report_key)

    @classmethod
    def sdk_compatible(cls) -> SimCpu:
        return cls(SDK_BASE_REPORT_KEY, SDK_OWNER_EPOCH, SDK_CPUSVN, SDK_KEY_ID)

    @classmethod
    def random(cls, cpu_svn: bytes = DEFAULT_CPUSVN) -> SimCpu:
        return cls(os.urandom(16), os.urandom(16), cpu_svn, os.urandom(32))

    # Persisted as 80 bytes: secret ‖ epoch ‖ cpusvn ‖ keyid.
    def to_bytes(self) -> bytes:
        return self.root_secret + self.owner_epoch + self.cpu_svn + self.key_id

    @classmethod
    def from_bytes(cls, data: bytes) -> SimCpu:
        if len(data) != 80:
            raise ValueError(f"CPU state must be 80 bytes, got {len(data)}")
        return cls(data[:16], data[16:32], data[32:48], data[48:80])

    @property
    def is_sdk_compatible(self) -> bool:
        return self.to_bytes() == SimCpu.sdk_compatible().to_bytes()

    def _derive_report_key(self, target: TargetInfo, key_id: bytes) -> bytes:
        return cmac(self.root_secret, report_derivation_data(target, self.owner_epoch, self.cpu_svn, key_id))

    def report_key(self, target: TargetInfo, key_id: bytes) -> bytes:
        """The REPORT key of `target` for `key_id` (what EGETKEY(REPORT) returns inside the target)."""
        return self._report_key(target, bytes(key_id))

    def ereport(self, enclave: EnclaveIdentity, target: TargetInfo, report_data: bytes) -> Report:
        """EREPORT executed by `enclave`: its identity, MACed with the target's report key."""
        if len(report_data) != 64:
            raise ValueError(f"report_data must be 64 bytes, got {len(report_data)}")
        body = ReportBody(cpu_svn=self.cpu_svn, misc_select=enclave.misc_select,
                          isv_ext_prod_id=enclave.isv_ext_prod_id, attributes=enclave.attributes,
                          mr_enclave=enclave.mr_enclave, mr_signer=enclave.mr_signer, config_id=enclave.config_id,
                          isv_prod_id=enclave.isv_prod_id, isv_svn=enclave.isv_svn, config_svn=enclave.config_svn,
                          isv_family_id=enclave.isv_family_id, report_data=bytes(report_data))
        mac = cmac(self.report_key(target, self.key_id), body.to_bytes())
        return Report(body, self.key_id, mac)

    def report_cmac(self, target: TargetInfo, key_id: bytes) -> CMAC:
        """A CMAC keyed with `target`'s report key, to `copy()` per report (skips the AES key schedule)."""
        return CMAC(algorithms.AES(self.report_key(target, key_id)))

    def verify_report_mac(self, enclave: EnclaveIdentity, report: bytes) -> bool:
        """What sgx_verify_report does inside `enclave`: EGETKEY(REPORT, report.key_id) + CMAC compare."""
        if len(report) != Report.SIZE:
            return False
        key = self.report_key(enclave.target_info(), report[384:416])
        return hmac.compare_digest(cmac(key, report[:384]), report[416:432])

    def seal_key(self, enclave: EnclaveIdentity, label: bytes = b"") -> bytes:
        """EGETKEY(SEAL, policy MRSIGNER) for `enclave`: a 16-byte key bound to the root secret and the
        signer/product/SVN, as the QE uses to seal its attestation key. `label` separates uses."""
        dd = bytearray(DERIVATION_DATA_SIZE)
        struct.pack_into("<HH", dd, 0, KEYNAME_SEAL, KEYPOLICY_MRSIGNER)
        dd[8:24] = enclave.attributes.to_bytes()
        dd[28:44] = self.owner_epoch
        dd[44:76] = enclave.mr_signer
        dd[76:92] = self.cpu_svn
        struct.pack_into("<HH", dd, 92, enclave.isv_prod_id, enclave.isv_svn)
        return cmac(self.root_secret, bytes(dd) + label)
