"""A simulated Intel PCS (API v4) for the software platform's test PKI: `quotehelper pcs serve`.

Speaks PCS v4 as Intel does (dcap-verification.md §4, collateral-service.md §7(3)):
    GET /sgx/certification/v4/pckcert?{encrypted_ppid|qeid}&cpusvn&pcesvn&pceid   (QCNL's form: upper hex,
        PCESVN/PCE-ID as little-endian bytes) -> PCK leaf PEM; SGX-PCK-Certificate-Issuer-Chain, SGX-TCBm,
        SGX-FMSPC, SGX-PCK-Certificate-CA-Type
    GET .../pckcerts?encrypted_ppid&pceid     (Ocp-Apim-Subscription-Key required) -> [{tcb, tcbm, cert}]
    GET .../pckcrl?ca=processor|platform[&encoding=der|pem]  (PEM by default, as PCS) + SGX-PCK-CRL-Issuer-Chain
    GET .../tcb?fmspc[&update=standard|early | &tcbEvaluationDataNumber=N] + TCB-Info-Issuer-Chain
    GET .../qe/identity, .../qve/identity  [same selectors] + SGX-Enclave-Identity-Issuer-Chain
    GET .../tcbevaluationdatanumbers + TCB-Evaluation-Data-Numbers-Issuer-Chain
    GET <root CDP path> (/IntelSGXRootCA.der): the root CA CRL in DER, where the test root's CDP points
    GET .../rootcacrl: the same CRL as hex text, as a PCCS serves it (Intel's PCS has no such route;
        clients such as dcap-qvl try it first on a non-Intel URL)
Every answer carries Request-ID; errors are 400 (with Error-Code / Error-Message), 401 and 404 as PCS.
The /tdx/ paths answer 404: the software platform is SGX only.

Bodies are issued from the PKI's keys and cached for an hour (a real PCS re-issues about daily); a
change of the TCB state (registration, recovery) re-issues at once.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from quotehelper.platform.sim import collateral as simcoll
from quotehelper.platform.sim import tcbeval
from quotehelper.platform.sim.pki import CA_TYPES, ROOT_CRL_PATH, SimPki

_HEX = re.compile(r"[0-9A-Fa-f]+")
REISSUE_S = 3600


def _enc(pem: bytes | str) -> str:
    """URL-encoded PEM, as Intel's PCS sends issuer chains (%20 %0A %2B %2F %3D)."""
    return urllib.parse.quote(pem if isinstance(pem, str) else pem.decode(), safe="")


class PcsHttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> PcsHttpError:
    return PcsHttpError(400, "InvalidRequestSyntax", message)


def _hex_param(req: web.Request, name: str, size: int, required: bool = True) -> str | None:
    v = req.query.get(name)
    if v is None:
        if required:
            raise _bad(f"{name} is required")
        return None
    if len(v) != size or not _HEX.fullmatch(v):
        raise _bad(f"{name} must be {size} hex digits")
    return v.upper()


def _update(req: web.Request) -> tuple[str, int | None]:
    update = req.query.get("update", "standard").lower()
    if update not in ("standard", "early"):
        raise _bad("update must be standard or early")
    n = req.query.get("tcbEvaluationDataNumber")
    if n is not None:
        if "update" in req.query:
            raise _bad("tcbEvaluationDataNumber and update are mutually exclusive")
        if not re.fullmatch(r"[0-9]{1,9}", n):  # ASCII digits (isdigit() takes "²")
            raise _bad("tcbEvaluationDataNumber must be a non-negative integer")
        return update, int(n)
    return update, None


def _tcb_fields(cpusvn: bytes, pcesvn: int) -> dict:
    d = {f"sgxtcbcomp{i + 1:02d}svn": c for i, c in enumerate(cpusvn)}
    d["pcesvn"] = pcesvn
    return d


@dataclass(frozen=True)
class SimPcsConfig:
    pki_dir: Path
    api_key: str | None = None  # pckcerts needs a key header; when set it must be this one
    platforms: tuple[Path, ...] = ()


class SimPcs:
    """The application state: the PKI, the TCB state in it, and issued bodies (cached per hour)."""

    def __init__(self, config: SimPcsConfig, clock=time.time) -> None:
        self.config = config
        self.pki = SimPki.load(config.pki_dir)
        self.clock = clock
        self._cache: dict[tuple, tuple[bytes, dict[str, str]]] = {}
        root_cdp = self.pki.root_cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        paths = {urllib.parse.urlsplit(str(n.value)).path for dp in root_cdp for n in dp.full_name or []}
        self.root_crl_paths = paths | {ROOT_CRL_PATH}

    def _issued(self, key: tuple, make) -> tuple[bytes, dict[str, str]]:
        now = self.clock()
        bucket = int(now // REISSUE_S)
        full = (*key, bucket, tcbeval.state_version(self.config.pki_dir), len(self.pki.revoked_serials("processor")),
                len(self.pki.revoked_serials("platform")))
        hit = self._cache.get(full)
        if hit is None:
            issued_at = dt.datetime.fromtimestamp(bucket * REISSUE_S, dt.UTC)
            hit = make(issued_at)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[full] = hit
        return hit

    # ---- collateral --------------------------------------------------------------------------------
    def tcb(self, fmspc: str, update: str, number: int | None) -> tuple[bytes, dict[str, str]]:
        try:
            ev = tcbeval.evaluation(self.config.pki_dir, fmspc, update=update, number=number)
        except tcbeval.TcbStateError as e:
            raise PcsHttpError(404, "NotFound", str(e)) from e

        def make(now: dt.datetime) -> tuple[bytes, dict[str, str]]:
            levels = [lv for p in ev.profiles for lv in simcoll.tcb_levels(p.components, p.pcesvn, p.status,
                                                                            list(p.advisories))]
            info = simcoll.tcb_info(fmspc=bytes.fromhex(fmspc), pce_id=ev.pce_id, levels=levels, now=now,
                                    number=ev.number)
            return (simcoll.signed_body(self.pki, "tcbInfo", info).encode(),
                    {"TCB-Info-Issuer-Chain": _enc(self.pki.tcb_issuer_chain_pem()),
                     "Content-Type": "application/json"})
        return self._issued(("tcb", fmspc, ev.number), make)

    def identity(self, qve: bool, update: str, number: int | None) -> tuple[bytes, dict[str, str]]:
        numbers = [n for n, _ in tcbeval.evaluation_numbers(self.config.pki_dir)] or \
            [tcbeval.FIRST_EVALUATION_NUMBER]
        if number is None:
            # the highest number any FMSPC serves for this update type
            state = tcbeval.load_state(self.config.pki_dir)["fmspcs"]
            number = max((e["early" if update == "early" else "standard"] for e in state.values()),
                         default=numbers[0])
        elif number not in numbers:
            raise PcsHttpError(404, "NotFound", f"no TCB evaluation {number}")

        def make(now: dt.datetime) -> tuple[bytes, dict[str, str]]:
            ident = simcoll.qe_identity(now, number, qve=qve)
            return (simcoll.signed_body(self.pki, "enclaveIdentity", ident).encode(),
                    {"SGX-Enclave-Identity-Issuer-Chain": _enc(self.pki.tcb_issuer_chain_pem()),
                     "Content-Type": "application/json"})
        return self._issued(("qve" if qve else "qe", number), make)

    def evaluation_numbers(self) -> tuple[bytes, dict[str, str]]:
        evs = tcbeval.evaluation_numbers(self.config.pki_dir)

        def make(now: dt.datetime) -> tuple[bytes, dict[str, str]]:
            rows = [(n, date, date) for n, date in evs]
            return (simcoll.evaluation_numbers_body(self.pki, rows, now).encode(),
                    {"TCB-Evaluation-Data-Numbers-Issuer-Chain": _enc(self.pki.tcb_issuer_chain_pem()),
                     "Content-Type": "application/json"})
        return self._issued(("evalnums",), make)

    def pck_crl(self, ca: str) -> bytes:
        return self._issued(("pckcrl", ca), lambda now: (self.pki.pck_crl_der(ca, now + dt.timedelta(hours=1)), {}))[0]

    def root_crl(self) -> bytes:
        return self._issued(("rootcrl",), lambda now: (self.pki.root_crl_der(now + dt.timedelta(hours=1)), {}))[0]

    # ---- PCK certificates --------------------------------------------------------------------------
    def platform(self, *, enc_ppid: str | None, qe_id: str | None) -> dict:
        for d in self.config.platforms:  # platforms named on the command line register on first use
            from quotehelper.platform.sim.platform import SimPlatform

            SimPlatform.open(d).register()
        self.config = SimPcsConfig(self.config.pki_dir, self.config.api_key)
        p = tcbeval.find_platform(self.config.pki_dir, encrypted_ppid_hex=enc_ppid, qe_id_hex=qe_id)
        if p is None:
            raise PcsHttpError(404, "NotFound", "no registered platform with this encrypted PPID / QE ID")
        return p

    def pck_headers(self, p: dict) -> dict[str, str]:
        chain = x509.load_pem_x509_certificates(p["pck_chain"].encode())
        issuer_chain = b"".join(c.public_bytes(Encoding.PEM) for c in chain[1:])
        return {"SGX-PCK-Certificate-Issuer-Chain": _enc(issuer_chain), "SGX-FMSPC": p["fmspc"].upper(),
                "SGX-PCK-Certificate-CA-Type": p["ca"].upper(),
                "SGX-TCBm": p["cpusvn"].upper() + int(p["pcesvn"]).to_bytes(2, "little").hex().upper()}

    def leaf_pem(self, p: dict) -> bytes:
        return x509.load_pem_x509_certificates(p["pck_chain"].encode())[0].public_bytes(Encoding.PEM)


PCS_KEY: web.AppKey[SimPcs] = web.AppKey("pcs", SimPcs)


# ---- HTTP --------------------------------------------------------------------------------------------
def _respond(req: web.Request, body: bytes | str, headers: dict[str, str] | None = None,
             content_type: str = "application/json", status: int = 200) -> web.Response:
    h = {"Request-ID": req.headers.get("Request-ID") or uuid.uuid4().hex, **(headers or {})}
    h.setdefault("Content-Type", content_type)
    return web.Response(body=body.encode() if isinstance(body, str) else body, status=status, headers=h)


@web.middleware
async def _errors(req: web.Request, handler):
    try:
        return await handler(req)
    except PcsHttpError as e:
        headers = {"Error-Code": e.code, "Error-Message": e.message} if e.status == 400 else {}
        return _respond(req, e.message if e.status != 400 else "", headers, "text/plain", e.status)


def _state(req: web.Request) -> SimPcs:
    return req.app[PCS_KEY]


async def _tcb(req: web.Request) -> web.Response:
    if req.match_info["tee"] != "sgx":
        raise PcsHttpError(404, "NotFound", "the simulated platform is SGX only")
    fmspc = _hex_param(req, "fmspc", 12)
    update, number = _update(req)
    body, headers = _state(req).tcb(fmspc or "", update, number)
    return _respond(req, body, headers)


async def _identity(req: web.Request) -> web.Response:
    if req.match_info["tee"] != "sgx":
        raise PcsHttpError(404, "NotFound", "the simulated platform is SGX only")
    update, number = _update(req)
    body, headers = _state(req).identity(req.match_info["which"] == "qve", update, number)
    return _respond(req, body, headers)


async def _evalnums(req: web.Request) -> web.Response:
    if req.match_info["tee"] != "sgx":
        raise PcsHttpError(404, "NotFound", "the simulated platform is SGX only")
    body, headers = _state(req).evaluation_numbers()
    return _respond(req, body, headers)


async def _pckcrl(req: web.Request) -> web.Response:
    ca = req.query.get("ca", "").lower()
    if ca not in CA_TYPES:
        raise _bad("ca must be processor or platform")
    encoding = req.query.get("encoding", "pem").lower()
    if encoding not in ("pem", "der"):
        raise _bad("encoding must be pem or der")
    st = _state(req)
    der = st.pck_crl(ca)
    headers = {"SGX-PCK-CRL-Issuer-Chain": _enc(st.pki.pck_issuer_chain_pem(ca))}
    if encoding == "der":
        return _respond(req, der, headers, "application/pkix-crl")
    pem = x509.load_der_x509_crl(der).public_bytes(Encoding.PEM)
    return _respond(req, pem, headers, "application/x-pem-file")


async def _rootcacrl(req: web.Request) -> web.Response:
    return _respond(req, _state(req).root_crl().hex(), None, "application/pkix-crl")


async def _pckcert(req: web.Request) -> web.Response:
    enc = _hex_param(req, "encrypted_ppid", 768, required=False)
    qeid = req.query.get("qeid")
    if enc is None and not qeid:
        raise _bad("encrypted_ppid or qeid is required")
    cpusvn = _hex_param(req, "cpusvn", 32)
    pcesvn = _hex_param(req, "pcesvn", 4)
    pceid = _hex_param(req, "pceid", 4)
    st = _state(req)
    p = st.platform(enc_ppid=enc if enc and enc.strip("0") else None, qe_id=qeid)
    if pceid != p["pce_id"].upper():
        raise PcsHttpError(404, "NotFound", "PCE-ID does not match the registered platform")
    raw_cpu, raw_pce = bytes.fromhex(cpusvn or ""), int.from_bytes(bytes.fromhex(pcesvn or ""), "little")
    cert_cpu, cert_pce = bytes.fromhex(p["cpusvn"]), int(p["pcesvn"])
    if any(a < b for a, b in zip(raw_cpu, cert_cpu, strict=True)) or raw_pce < cert_pce:
        raise PcsHttpError(404, "NotFound", "no PCK certificate for a TCB at or below the raw TCB")
    return _respond(req, st.leaf_pem(p), st.pck_headers(p), "application/x-pem-file")


async def _pckcerts(req: web.Request) -> web.Response:
    key = req.headers.get("Ocp-Apim-Subscription-Key")
    st = _state(req)
    if not key or (st.config.api_key is not None and key != st.config.api_key):
        raise PcsHttpError(401, "Unauthorized", "Ocp-Apim-Subscription-Key missing or wrong")
    enc = _hex_param(req, "encrypted_ppid", 768)
    _hex_param(req, "pceid", 4)
    p = st.platform(enc_ppid=enc, qe_id=None)
    cpusvn, pcesvn = bytes.fromhex(p["cpusvn"]), int(p["pcesvn"])
    # One certificate: the platform's own TCB level (the simulation keys one PCK per platform).
    rows = [{"tcb": _tcb_fields(cpusvn, pcesvn), "tcbm": st.pck_headers(p)["SGX-TCBm"],
             "cert": _enc(st.leaf_pem(p))}]
    headers = {k: v for k, v in st.pck_headers(p).items() if k != "SGX-TCBm"}
    return _respond(req, json.dumps(rows), headers)


async def _root_cdp(req: web.Request) -> web.Response:
    return _respond(req, _state(req).root_crl(), None, "application/pkix-crl")


def make_app(config: SimPcsConfig, clock=time.time) -> web.Application:
    app = web.Application(middlewares=[_errors])
    pcs = SimPcs(config, clock)
    app[PCS_KEY] = pcs
    base = "/{tee:sgx|tdx}/certification/v4"
    app.router.add_get(base + "/tcb", _tcb)
    app.router.add_get(base + "/{which:qe|qve}/identity", _identity)
    app.router.add_get(base + "/tcbevaluationdatanumbers", _evalnums)
    app.router.add_get("/sgx/certification/v4/pckcrl", _pckcrl)
    app.router.add_get("/sgx/certification/v4/rootcacrl", _rootcacrl)
    app.router.add_get("/sgx/certification/v4/pckcert", _pckcert)
    app.router.add_get("/sgx/certification/v4/pckcerts", _pckcerts)
    for path in sorted(pcs.root_crl_paths):
        app.router.add_get(path, _root_cdp)
    return app
