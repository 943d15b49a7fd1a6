"""The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1): DER parse and build.

A SEQUENCE of SEQUENCE{OID, value}; see DCAP PccsAdminTool `pckcert.py` and QVL `PckCertificate.cpp`.
Formats only: takes and returns DER bytes; callers pull the extension out of the certificate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from quotehelper.errors import FormatError

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_P = SGX_EXTENSION_OID

SGX_TYPE_STANDARD = 0
SGX_TYPE_SCALABLE = 1
SGX_TYPE_SCALABLE_WITH_INTEGRITY = 2
SGX_TYPE_NAMES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}


@functools.cache
def _asn1() -> tuple[Any, type, type, type]:
    """asn1crypto and the extension's schema, loaded on first use: parsing walks the DER itself, so only
    building (and naming a new OID) needs them, and a process that only quotes never loads them."""
    from asn1crypto import core

    class _EnumInt(core.Integer):
        """ENUMERATED read as a plain integer (asn1crypto's Enumerated wants a name map)."""

        tag = 10

    class _Entry(core.Sequence):
        _fields = [("oid", core.ObjectIdentifier), ("value", core.Any)]

    class _Entries(core.SequenceOf):
        _child_spec = _Entry

    return core, _EnumInt, _Entry, _Entries


_OIDS: dict[bytes, str] = {}  # DER OID contents -> dotted form; the extension uses ~30 fixed OIDs

def _oid(contents: bytes) -> str:
    s = _OIDS.get(contents)
    if s is None:
        if len(contents) >= 128:
            raise ValueError("OID too long")
        s = _asn1()[0].ObjectIdentifier.load(b"\x06" + bytes([len(contents)]) + contents).dotted
        if len(_OIDS) < 256:
            _OIDS[contents] = s
    return s


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One DER TLV at `pos`: (identifier octet, value start, value end). Definite, minimal lengths only."""
    if pos + 2 > end:
        raise ValueError("truncated TLV")
    tag, n = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("high-tag-number form")
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 0 < k <= 3 or pos + k > end or data[pos] == 0:
            raise ValueError("bad DER length")
        n = int.from_bytes(data[pos:pos + k], "big")
        if n < 0x80:
            raise ValueError("non-minimal DER length")
        pos += k
    if pos + n > end:
        raise ValueError("value runs past its container")
    return tag, pos, pos + n


def _entries(data: bytes, start: int, end: int) -> dict[str, tuple[int, int, int, int]]:
    """SEQUENCE OF SEQUENCE {OID, value} contents -> {dotted OID: (value tag, TLV start, value start, end)}."""
    out = {}
    pos = start
    while pos < end:
        tag, s, e = _tlv(data, pos, end)
        if tag != 0x30:
            raise ValueError("entry is not a SEQUENCE")
        otag, os_, oe = _tlv(data, s, e)
        if otag != 0x06:
            raise ValueError("entry does not start with an OID")
        vtag, vs, ve = _tlv(data, oe, e)
        if ve != e:
            raise ValueError("entry has more than (OID, value)")
        out[_oid(data[os_:oe])] = (vtag, oe, vs, ve)
        pos = e
    return out


@dataclass(frozen=True)
class PckConfiguration:
    """Platform-CA leaves only: .7.1 dynamicPlatform, .7.2 cachedKeys, .7.3 SMTEnabled (each optional)."""

    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


@dataclass(frozen=True)
class PckExtension:
    ppid: bytes
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs (.2.1 .. .2.16)
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int = SGX_TYPE_STANDARD
    platform_instance_id: bytes | None = None
    configuration: PckConfiguration | None = None
    extra: dict[str, bytes] = field(default_factory=dict)  # unknown OIDs, DER of their value

    @property
    def is_platform_ca(self) -> bool:
        return self.platform_instance_id is not None

    @classmethod
    def parse(cls, der: bytes) -> PckExtension:
        """Walks the DER directly (a verifier parses one per quote; asn1crypto's object model cost ~8x more)."""
        try:
            tag, s, e = _tlv(der, 0, len(der))
            if tag != 0x30 or e != len(der):
                raise ValueError("not a single SEQUENCE")
            items = _entries(der, s, e)
        except ValueError as err:
            raise FormatError("pck_sgx_extension", "<whole>", 0, f"not a DER SEQUENCE of (OID, value): {err}") from err

        def need(d, oid, what="required entry missing"):
            if oid not in d:
                raise FormatError("pck_sgx_extension", oid, 0, what)
            return d.pop(oid)

        def value(entry, oid, want_tag, what):
            tag, _t, vs, ve = entry
            if tag != want_tag or (want_tag in (0x02, 0x0A, 0x01) and vs == ve):
                raise FormatError("pck_sgx_extension", oid, 0, f"not {what}")
            return der[vs:ve]

        def octets(suffix, size):
            oid = f"{_P}.{suffix}"
            v = value(need(items, oid), oid, 0x04, "an OCTET STRING")
            if len(v) != size:
                raise FormatError("pck_sgx_extension", oid, 0, f"{len(v)} bytes, expected {size}")
            return v

        def integer(d, oid, what, want_tag=0x02, name="an INTEGER"):
            return int.from_bytes(value(need(d, oid, what), oid, want_tag, name), "big", signed=True)

        ppid = octets("1", 16)
        def nested(entry, oid, what):
            try:
                if entry[0] != 0x30:
                    raise ValueError("not a SEQUENCE")
                return _entries(der, entry[2], entry[3])
            except ValueError as err:
                raise FormatError("pck_sgx_extension", oid, 0, f"bad {what}: {err}") from err

        tcb = nested(need(items, f"{_P}.2"), f"{_P}.2", "TCB sequence")
        comps = [integer(tcb, f"{_P}.2.{i}", "TCB component missing") for i in range(1, 17)]
        if f"{_P}.2.17" not in tcb or f"{_P}.2.18" not in tcb:
            raise FormatError("pck_sgx_extension", f"{_P}.2", 0, "PCESVN or CPUSVN missing")
        pcesvn = integer(tcb, f"{_P}.2.17", "")
        cpusvn = value(tcb[f"{_P}.2.18"], f"{_P}.2.18", 0x04, "an OCTET STRING")
        pce_id = octets("3", 2)
        fmspc = octets("4", 6)
        sgx_type = integer(items, f"{_P}.5", "required entry missing", 0x0A, "ENUMERATED (SGX Type)")
        pii = octets("6", 16) if f"{_P}.6" in items else None
        config = None
        if f"{_P}.7" in items:
            conf_items = nested(items.pop(f"{_P}.7"), f"{_P}.7", "configuration")
            conf = {}
            for oid, ent in conf_items.items():
                b = value(ent, oid, 0x01, "a BOOLEAN")
                if len(b) != 1:
                    raise FormatError("pck_sgx_extension", oid, 0, "not a BOOLEAN")
                conf[oid] = b != b"\x00"
            config = PckConfiguration(conf.get(f"{_P}.7.1"), conf.get(f"{_P}.7.2"), conf.get(f"{_P}.7.3"))
        extra = {oid: der[t:ve] for oid, (_tag, t, _vs, ve) in items.items()}
        return cls(ppid, tuple(comps), pcesvn, cpusvn, pce_id, fmspc, sgx_type, pii, config, extra)

    def to_der(self) -> bytes:
        if len(self.tcb_components) != 16:
            raise FormatError("pck_sgx_extension", f"{_P}.2", 0, "needs exactly 16 TCB components")
        core, _EnumInt, _Entry, _Entries = _asn1()

        def entry(oid: str, value: Any) -> Any:
            return _Entry({"oid": oid, "value": core.Any(value)})

        tcb = [entry(f"{_P}.2.{i + 1}", core.Integer(c)) for i, c in enumerate(self.tcb_components)]
        tcb.append(entry(f"{_P}.2.17", core.Integer(self.pcesvn)))
        tcb.append(entry(f"{_P}.2.18", core.OctetString(self.cpusvn)))
        out = [
            entry(f"{_P}.1", core.OctetString(self.ppid)),
            entry(f"{_P}.2", _Entries(tcb)),
            entry(f"{_P}.3", core.OctetString(self.pce_id)),
            entry(f"{_P}.4", core.OctetString(self.fmspc)),
            entry(f"{_P}.5", _EnumInt(self.sgx_type)),
        ]
        if self.platform_instance_id is not None:
            out.append(entry(f"{_P}.6", core.OctetString(self.platform_instance_id)))
        if self.configuration is not None:
            c = self.configuration
            conf = [entry(f"{_P}.7.{i}", core.Boolean(v))
                    for i, v in ((1, c.dynamic_platform), (2, c.cached_keys), (3, c.smt_enabled)) if v is not None]
            out.append(entry(f"{_P}.7", _Entries(conf)))
        return _Entries(out).dump(force=True)

