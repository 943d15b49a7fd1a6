"""The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1): DER parse and build.

A SEQUENCE of SEQUENCE{OID, value}; see DCAP PccsAdminTool `pckcert.py` and QVL `PckCertificate.cpp`.
Formats only: takes and returns DER bytes; callers pull the extension out of the certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asn1crypto import core

from quotehelper.errors import FormatError

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_P = SGX_EXTENSION_OID

SGX_TYPE_STANDARD = 0
SGX_TYPE_SCALABLE = 1
SGX_TYPE_SCALABLE_WITH_INTEGRITY = 2
SGX_TYPE_NAMES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}


class _EnumInt(core.Integer):
    """ENUMERATED read as a plain integer (asn1crypto's Enumerated wants a name map)."""

    tag = 10


class _Entry(core.Sequence):
    _fields = [("oid", core.ObjectIdentifier), ("value", core.Any)]


class _Entries(core.SequenceOf):
    _child_spec = _Entry


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
        try:
            entries = _Entries.load(der, strict=True)
            items = {e["oid"].dotted: e["value"] for e in entries}
        except (ValueError, TypeError) as e:
            raise FormatError("pck_sgx_extension", "<whole>", 0, f"not a DER SEQUENCE of (OID, value): {e}") from e

        def need(suffix: str):
            oid = f"{_P}.{suffix}"
            if oid not in items:
                raise FormatError("pck_sgx_extension", oid, 0, "required entry missing")
            return items.pop(oid)

        def octets(suffix: str, size: int) -> bytes:
            v = need(suffix)
            try:
                raw = v.parse(core.OctetString).native
            except (ValueError, TypeError) as e:
                raise FormatError("pck_sgx_extension", f"{_P}.{suffix}", 0, f"not an OCTET STRING: {e}") from e
            if len(raw) != size:
                raise FormatError("pck_sgx_extension", f"{_P}.{suffix}", 0, f"{len(raw)} bytes, expected {size}")
            return raw

        ppid = octets("1", 16)
        tcb_raw = need("2")
        try:
            tcb = {e["oid"].dotted: e["value"] for e in tcb_raw.parse(_Entries)}
        except (ValueError, TypeError) as e:
            raise FormatError("pck_sgx_extension", f"{_P}.2", 0, f"bad TCB sequence: {e}") from e
        comps = []
        for i in range(1, 17):
            oid = f"{_P}.2.{i}"
            if oid not in tcb:
                raise FormatError("pck_sgx_extension", oid, 0, "TCB component missing")
            comps.append(int(tcb[oid].parse(core.Integer).native))
        if f"{_P}.2.17" not in tcb or f"{_P}.2.18" not in tcb:
            raise FormatError("pck_sgx_extension", f"{_P}.2", 0, "PCESVN or CPUSVN missing")
        pcesvn = int(tcb[f"{_P}.2.17"].parse(core.Integer).native)
        cpusvn = tcb[f"{_P}.2.18"].parse(core.OctetString).native
        pce_id = octets("3", 2)
        fmspc = octets("4", 6)
        try:
            sgx_type = int(need("5").parse(_EnumInt).native)
        except (ValueError, TypeError) as e:
            raise FormatError("pck_sgx_extension", f"{_P}.5", 0, f"SGX Type is not ENUMERATED: {e}") from e
        pii = octets("6", 16) if f"{_P}.6" in items else None
        config = None
        if f"{_P}.7" in items:
            conf = {e["oid"].dotted: bool(e["value"].parse(core.Boolean).native)
                    for e in items.pop(f"{_P}.7").parse(_Entries)}
            config = PckConfiguration(conf.get(f"{_P}.7.1"), conf.get(f"{_P}.7.2"), conf.get(f"{_P}.7.3"))
        extra = {oid: v.dump() for oid, v in items.items()}
        return cls(ppid, tuple(comps), pcesvn, cpusvn, pce_id, fmspc, sgx_type, pii, config, extra)

    def to_der(self) -> bytes:
        if len(self.tcb_components) != 16:
            raise FormatError("pck_sgx_extension", f"{_P}.2", 0, "needs exactly 16 TCB components")

        def entry(oid: str, value: core.Asn1Value) -> _Entry:
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

