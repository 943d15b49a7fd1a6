"""The PCCS's services: collateral and PCK certificates from the store, filled from the upstream by the
caching mode, checked before they are stored; registration, offline import, refresh.

Caching modes (Intel's semantics, collateral-service.md §2.1): LAZY fetches what is missing from the
upstream on a request; REQ answers a miss with 404 (collateral) or 461 (unknown platform) and fetches
when a platform registers; OFFLINE never talks to an upstream: registration only queues, collateral
comes from `PUT /platformcollateral`. Whatever is fetched or imported passes ItemChecker first; an item
whose refresh fails is served while it is valid (and counted as stale in the metrics), never after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from quotehelper.pccs.config import PccsOptions
from quotehelper.pccs.metrics import PccsMetrics
from quotehelper.pccs.selection import PckCandidate, SelectionError, select_pck
from quotehelper.pccs.store import CollateralDao, PlatformDao, RegistrationDao, Row
from quotehelper.pcs.errors import PcsCode, PcsError
from quotehelper.pcs.http import AiohttpGetter, Getter, Response, get_with_retry
from quotehelper.pcs.urls import Endpoints
from quotehelper.verify.items import Checked, ItemChecker, ItemRejected, utcnow

log = logging.getLogger("quotehelper.pccs")

TEXT = {400: "Invalid request parameters.", 401: "Authentication failed.", 404: "No cache data for this platform.",
        460: "Integrity of the collateral cannot be verified.", 461: "The platform was not found in the cache.",
        500: "Internal error occurred.", 502: "Unable to retrieve the collateral from the Intel SGX PCS.",
        503: "The server is unable to process the request."}
_CHAINS = {"tcb": ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
           "identity": ("SGX-Enclave-Identity-Issuer-Chain", "SGX-QE-Identity-Issuer-Chain"),
           "pckcrl": ("SGX-PCK-CRL-Issuer-Chain",),
           "evalnums": ("TCB-Evaluation-Data-Numbers-Issuer-Chain",)}
MEMO_S = 1.0
_IDENTITY_IDS = {("qe", "sgx"): "QE", ("qve", "sgx"): "QVE", ("qe", "tdx"): "TD_QE"}


def _azure_pckcert(r: Response) -> Response:
    """Azure's {"pckCert", "sgx-Pck-Certificate-Issuer-Chain", "sgx-Tcbm"} as a PCS-shaped answer; the
    FMSPC and CA type come from the certificate itself."""
    from quotehelper.pccs.selection import PckCandidate

    d = json.loads(r.body)
    pem = str(d["pckCert"])
    cand = PckCandidate.from_pem(pem)
    issuer = x509.load_pem_x509_certificate(pem.encode()).issuer.rfc4514_string()
    headers = {"SGX-TCBm": str(d.get("sgx-Tcbm") or cand.tcbm), "SGX-FMSPC": cand.ext.fmspc.hex().upper(),
               "SGX-PCK-Certificate-CA-Type": "PLATFORM" if "Platform" in issuer else "PROCESSOR",
               "SGX-PCK-Certificate-Issuer-Chain": str(d.get("sgx-Pck-Certificate-Issuer-Chain") or "")}
    return Response(r.url, r.status, headers, pem.encode())


class PccsHttpError(Exception):
    def __init__(self, status: int, detail: str = "") -> None:
        self.status, self.detail = status, detail
        super().__init__(f"{status}: {detail or TEXT.get(status, '')}")


@dataclass(frozen=True)
class Spec:
    """One collateral item as asked for; `key` names it in the store."""

    kind: str                        # tcb | identity | pckcrl | rootcacrl | evalnums
    tee: str = "sgx"
    version: int = 4
    subject: str = ""                # FMSPC (tcb), qe|qve (identity), CA type (pckcrl)
    update: str = "standard"
    evaluation_number: int | None = None

    @property
    def key(self) -> str:
        ev = "-" if self.evaluation_number is None else str(self.evaluation_number)
        return "|".join((self.kind, self.tee, str(self.version), self.subject, self.update, ev))

    @classmethod
    def from_key(cls, key: str) -> Spec:
        kind, tee, version, subject, update, ev = key.split("|")
        return cls(kind, tee, int(version), subject, update, None if ev == "-" else int(ev))

    @property
    def what(self) -> str:
        return {"tcb": f"TCB info for FMSPC {self.subject}", "identity": f"{self.subject.upper()} identity",
                "pckcrl": f"PCK CRL of the {self.subject} CA", "rootcacrl": "root CA CRL",
                "evalnums": "TCB evaluation data numbers"}[self.kind]


class Pccs:
    def __init__(self, options: PccsOptions, engine, *, roots=(), getter: Getter | None = None,  # noqa: ANN001
                 clock=time.time, metrics: PccsMetrics | None = None) -> None:
        self.o = options
        self.collateral = CollateralDao(engine)
        self.platforms = PlatformDao(engine)
        self.registrations = RegistrationDao(engine)
        self.upstream = Endpoints.parse(options.uri)
        self.checker = ItemChecker(tuple(roots))
        self.clock = clock
        self.metrics = metrics or PccsMetrics(self.collateral)
        self._getter = getter
        # Answers read from the store, kept MEMO_S seconds: a storm of nodes asks for the same few items.
        # This replica's own writes replace them at once; another replica's show within MEMO_S.
        self._memo: dict[object, tuple[float, object]] = {}
        self._reads: dict[object, asyncio.Future] = {}

    # ---- upstream ----------------------------------------------------------------------------------
    def _ep(self, version: int) -> Endpoints:
        return dataclasses.replace(self.upstream, version=version)

    async def _get(self, url: str, what: str, kind: str, headers: Mapping[str, str] | None = None) -> Response:
        if self.o.mode == "OFFLINE":
            raise PccsHttpError(404, "OFFLINE mode: nothing is fetched")
        if self._getter is None:
            self._getter = AiohttpGetter(ca_bundle=self.o.upstream_ca_bundle, insecure=self.o.upstream_insecure)
        t0 = time.perf_counter()
        try:
            r = await get_with_retry(self._getter, url, what=what, deadline=time.monotonic() + self.o.upstream_timeout_s,
                                     headers=headers)
        except PcsError as e:
            self.metrics.upstream_error(kind, e.code.value)
            raise
        finally:
            self.metrics.upstream_latency(kind, time.perf_counter() - t0)
        if not 200 <= r.status < 300:
            self.metrics.upstream_error(kind, str(r.status))
            code = PcsCode.NOT_FOUND if r.status in (404, 461) else PcsCode.HTTP_ERROR
            raise PcsError(code, f"no {what} at {url}: {r.status}", {"url": url, "status": r.status})
        return r

    async def close(self) -> None:
        if self._getter is not None:
            await self._getter.close()

    # ---- collateral --------------------------------------------------------------------------------
    def _memo_get(self, key: object) -> object | None:
        hit = self._memo.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def _memo_put(self, key: object, value: object) -> None:
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = (time.monotonic() + MEMO_S, value)

    async def item(self, spec: Spec, *, fetch: bool | None = None) -> Row:
        """The stored item, else (LAZY, or `fetch=True` for registration/refresh) fetched, checked and
        stored. PccsHttpError 404 on a miss that may not be fetched, 503 when the upstream fails."""
        now = self.clock()
        row = self._memo_get(spec.key)
        if row is None or not now < row.not_after:  # type: ignore[attr-defined]
            row = await self._once(("row", spec.key), lambda: asyncio.to_thread(self.collateral.get, spec.key))
            if row is not None:
                self._memo_put(spec.key, row)
        if row is not None and now < row.not_after:
            self.metrics.cache(spec.kind, "hit")
            return row
        self.metrics.cache(spec.kind, "miss")
        may_fetch = self.o.mode == "LAZY" if fetch is None else fetch and self.o.mode != "OFFLINE"
        if not may_fetch:
            raise PccsHttpError(404, f"{spec.what} is not cached")
        try:
            return await self._coalesced(spec)
        except PcsError as e:
            if e.code is PcsCode.NOT_FOUND:
                raise PccsHttpError(404, e.message) from e
            raise PccsHttpError(503, e.message) from e
        except ItemRejected as e:
            raise PccsHttpError(502, f"the upstream's {e}") from e

    async def _coalesced(self, spec: Spec) -> Row:
        """One upstream fetch per item however many requests miss it at once."""
        return await self._once(("fetch", spec.key), lambda: self._fetch_and_store(spec))  # type: ignore[return-value]

    async def _root_crl(self) -> bytes:
        return (await self.item(Spec("rootcacrl"), fetch=True)).body

    async def _fetch_and_store(self, spec: Spec) -> Row:
        now = self.clock()
        when = utcnow(now)
        ep = self._ep(spec.version)
        if spec.kind == "rootcacrl":
            body, url = await self._fetch_root_crl(ep)
            der, checked = self.checker.root_crl(body, when)
            row = Row(spec.key, spec.kind, der, None, url, now, checked.not_after, None)
        elif spec.kind == "pckcrl":
            url = ep.pckcrl(spec.subject)
            r = await self._get(url, spec.what, spec.kind)
            chain = r.header(*_CHAINS["pckcrl"]) or ""
            der, checked = self.checker.pck_crl(r.body, chain, spec.subject, await self._root_crl(), when)
            row = Row(spec.key, spec.kind, der, chain, url, now, checked.not_after, None)
        else:
            url, member, expect = self._signed_target(spec, ep)
            r = await self._get(url, spec.what, spec.kind)
            chain = r.header(*_CHAINS[spec.kind]) or ""
            checked = self.checker.signed_json(r.body, chain, member, await self._root_crl(), when, what=spec.what,
                                               expect=expect)
            row = Row(spec.key, spec.kind, r.body, chain, url, now, checked.not_after, checked.evaluation_number)
            await self._noticed(spec, checked)
        await asyncio.to_thread(self.collateral.put, row, tee=spec.tee, version=spec.version, subject=spec.subject,
                                update_type=spec.update)
        self._memo.pop(spec.key, None)
        return row

    def _signed_target(self, spec: Spec, ep: Endpoints) -> tuple[str, str, dict]:
        expect: dict = {}
        if spec.evaluation_number is not None:
            expect["tcbEvaluationDataNumber"] = spec.evaluation_number
        if spec.kind == "tcb":
            if spec.version >= 4:
                expect["id"] = spec.tee.upper()
            expect["version"] = 2 if spec.version == 3 else 3  # API v3 serves tcbInfo v2, API v4 tcbInfo v3
            expect["fmspc"] = spec.subject
            return ep.tcb(spec.tee, bytes.fromhex(spec.subject), spec.update, spec.evaluation_number), "tcbInfo", expect
        if spec.kind == "identity":
            expect["id"] = _IDENTITY_IDS[(spec.subject, spec.tee)]
            url = (ep.qve_identity(spec.update) if spec.subject == "qve" else
                   ep.qe_identity(spec.tee, spec.update, spec.evaluation_number))
            return url, "enclaveIdentity", expect
        return ep.tcb_evaluation_data_numbers(spec.tee), "tcbEvaluationDataNumbers", {"id": spec.tee.upper()}

    async def _fetch_root_crl(self, ep: Endpoints) -> tuple[bytes, str]:
        if ep.kind != "pcs":
            try:
                r = await self._get(ep.rootcacrl(), "root CA CRL", "rootcacrl")
                return r.body, ep.rootcacrl()
            except PcsError as e:
                if e.code is not PcsCode.NOT_FOUND and e.detail.get("status") not in (400, 405):
                    raise
        for root in self.checker.roots:  # the CRL distribution point of the trusted root
            try:
                cdp = root.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            except x509.ExtensionNotFound:
                continue
            for dp in cdp:
                for name in dp.full_name or []:
                    r = await self._get(str(name.value), "root CA CRL", "rootcacrl")
                    return r.body, str(name.value)
        raise PcsError(PcsCode.NOT_FOUND, "no root CA CRL: the upstream has no rootcacrl and the root no CDP")

    async def _noticed(self, spec: Spec, checked: Checked) -> None:
        """A TCB info of a later evaluation than the one stored: a TCB recovery. The platforms of that FMSPC
        get their PCK certificates again (new TCB levels bring new certificates) at once."""
        if spec.kind != "tcb" or checked.evaluation_number is None:
            return
        old = self.collateral.get(spec.key)
        if old is None or old.evaluation_number is None or checked.evaluation_number <= old.evaluation_number:
            return
        log.info("TCB evaluation %s for FMSPC %s (was %s): refetching PCK certificates", checked.evaluation_number,
                 spec.subject, old.evaluation_number)
        self.metrics.recoveries.inc()
        asyncio.get_running_loop().create_task(self._refresh_certs_quietly([spec.subject]))

    # ---- PCK certificates --------------------------------------------------------------------------
    async def pckcert(self, qe_id: str, pce_id: str, cpu_svn: str, pce_svn: str, enc_ppid: str | None) -> dict:
        """The best certificate for the raw TCB (selection.py) with what its headers need."""
        memo_key = ("pckcert", qe_id, pce_id, cpu_svn, pce_svn)
        hit = self._memo_get(memo_key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        answer = await self._once(memo_key, lambda: self._pckcert(qe_id, pce_id, cpu_svn, pce_svn, enc_ppid))
        self._memo_put(memo_key, answer)
        return answer

    async def _once(self, key: object, make) -> object:  # noqa: ANN001 - a coroutine factory
        """One `await make()` for every concurrent caller with the same key (a storm of nodes misses the
        same few answers at the same instant: one database read or upstream fetch, not a thousand)."""
        fut = self._reads.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._reads[key] = fut
        try:
            value = await make()
            fut.set_result(value)
            return value
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            del self._reads[key]

    async def _pckcert(self, qe_id: str, pce_id: str, cpu_svn: str, pce_svn: str, enc_ppid: str | None) -> dict:
        platform = await asyncio.to_thread(self.platforms.get, qe_id, pce_id)
        if platform is None:
            if self.o.mode != "LAZY":
                raise PccsHttpError(461)
            if not enc_ppid or not enc_ppid.strip("0"):
                raise PccsHttpError(404, "unknown platform and no encrypted PPID to ask the upstream with")
            platform = await self._fetch_certs({"qe_id": qe_id, "pce_id": pce_id, "enc_ppid": enc_ppid,
                                                "cpu_svn": cpu_svn, "pce_svn": pce_svn})
        tcbm = await asyncio.to_thread(self.platforms.selected, qe_id, pce_id, cpu_svn, pce_svn)
        certs = dict(await asyncio.to_thread(self.platforms.certs, qe_id, pce_id))
        if tcbm is None or tcbm not in certs:
            tcbm = await self._select(platform, cpu_svn, pce_svn, certs)
            await asyncio.to_thread(self.platforms.remember, qe_id, pce_id, cpu_svn, pce_svn, tcbm)
        chain = await asyncio.to_thread(self.platforms.chain, platform["ca"])
        return {"cert": certs[tcbm], "tcbm": tcbm, "fmspc": platform["fmspc"], "ca": platform["ca"],
                "chain": chain or ""}

    async def _select(self, platform: dict, cpu_svn: str, pce_svn: str, certs: dict[str, str]) -> str:
        tcb = None
        for update in ("early", "standard"):  # as Intel's: the early TCB info when cached
            try:
                row = await self.item(Spec("tcb", "sgx", 4, platform["fmspc"], update),
                                      fetch=self.o.mode != "OFFLINE" and update == "standard")
                tcb = json.loads(row.body)["tcbInfo"]
                break
            except PccsHttpError:
                continue
        if tcb is None:
            raise PccsHttpError(404, f"no TCB info for FMSPC {platform['fmspc']}")
        try:
            best = select_pck(bytes.fromhex(cpu_svn), int.from_bytes(bytes.fromhex(pce_svn), "little"),
                              bytes.fromhex(platform["pce_id"])[::-1], tcb,
                              [PckCandidate.from_pem(p) for p in certs.values()])
        except SelectionError as e:
            raise PccsHttpError(404, str(e)) from e
        return best.tcbm

    async def _fetch_certs(self, p: dict, *, allow_new_ppid: bool = False) -> dict:
        """The platform's PCK certificates from the upstream (pckcerts; an upstream PCCS has only pckcert),
        checked (chain to the root, not revoked) and stored with the platform."""
        ep = self._ep(4)
        headers = {"Ocp-Apim-Subscription-Key": self.o.api_key} if self.o.api_key else {}
        pceid = int.from_bytes(bytes.fromhex(p["pce_id"]), "little")
        try:
            r = await self._get(ep.pckcerts(encrypted_ppid=bytes.fromhex(p["enc_ppid"]), pceid=pceid),
                                "PCK certificates", "pckcerts", headers)
            rows = [x for x in json.loads(r.body) if x.get("cert") not in (None, "Not available")]
            certs = [(x["tcbm"].upper(), urllib.parse.unquote(x["cert"])) for x in rows]
        except PcsError as e:
            if not p.get("cpu_svn") or e.detail.get("status") not in (400, 404, 405):
                raise PccsHttpError(404 if e.code is PcsCode.NOT_FOUND else 502, e.message) from e
            url = ep.pckcert(cpusvn=bytes.fromhex(p["cpu_svn"]), pcesvn=int.from_bytes(bytes.fromhex(p["pce_svn"]),
                             "little"), pceid=pceid, encrypted_ppid=bytes.fromhex(p["enc_ppid"]),
                             qeid=bytes.fromhex(p["qe_id"]))
            try:
                r = await self._get(url, "PCK certificate", "pckcert", headers)
            except PcsError as e2:
                raise PccsHttpError(404 if e2.code is PcsCode.NOT_FOUND else 502, e2.message) from e2
            certs = [((r.header("SGX-TCBm") or "").upper(), r.body.decode("ascii", "replace"))]
            if r.body.lstrip().startswith(b"{"):  # Azure's pckcert answer is JSON (collateral-service.md §4.3)
                r = _azure_pckcert(r)
                certs = [((r.header("SGX-TCBm") or "").upper(), r.body.decode("ascii", "replace"))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PccsHttpError(502, f"the upstream's pckcerts answer is malformed: {e}") from e
        fmspc, ca = (r.header("SGX-FMSPC") or "").upper(), (r.header("SGX-PCK-Certificate-CA-Type") or "").lower()
        chain = r.header("SGX-PCK-Certificate-Issuer-Chain") or ""
        if not certs or len(fmspc) != 12 or ca not in ("processor", "platform"):
            raise PccsHttpError(502, "the upstream's PCK certificate answer lacks certificates, SGX-FMSPC or the CA type")
        now = utcnow(self.clock())
        try:
            pck_crl = (await self.item(Spec("pckcrl", subject=ca), fetch=True)).body
            self.checker.pck_certs([pem for _, pem in certs], chain, await self._root_crl(), pck_crl, now)
            for tcbm, pem in certs:
                cand = PckCandidate.from_pem(pem)
                if cand.tcbm != tcbm or cand.ext.fmspc.hex().upper() != fmspc:
                    raise ItemRejected("PCK certificates", "a certificate's TCB or FMSPC is not what PCS said")
        except (ItemRejected, SelectionError) as e:
            raise PccsHttpError(502, f"the upstream's {e}") from e
        platform = {"qe_id": p["qe_id"], "pce_id": p["pce_id"], "enc_ppid": p.get("enc_ppid"),
                    "platform_manifest": p.get("platform_manifest"), "cpu_svn": p.get("cpu_svn"),
                    "pce_svn": p.get("pce_svn"), "fmspc": fmspc, "ca": ca}
        new_ppid = PckCandidate.from_pem(certs[0][1]).ext.ppid
        stored = await asyncio.to_thread(self.platforms.certs, p["qe_id"], p["pce_id"])
        if stored and PckCandidate.from_pem(stored[0][1]).ext.ppid != new_ppid and not allow_new_ppid:
            # Another machine's certificates under this QE ID would make its quotes unverifiable: a request
            # (no token needed in LAZY) must not be able to do that.
            raise PccsHttpError(400, f"QE ID {p['qe_id']} is registered with another PPID's certificates; only an "
                                "admin refresh replaces them")
        await asyncio.to_thread(self.platforms.store_certs, platform, certs, chain)
        self._memo = {k: v for k, v in self._memo.items() if not (isinstance(k, tuple) and k[0] == "pckcert")}
        return platform

    # ---- registration, refresh ---------------------------------------------------------------------
    async def register(self, p: dict) -> None:
        """POST /platforms: LAZY and REQ fetch the certificates and the platform's collateral now; OFFLINE
        only queues (the admin exports the queue, fetches elsewhere, imports)."""
        if self.o.mode == "OFFLINE":
            self.registrations.add(p, 0)
            return
        if self.o.mode == "REQ":
            self.registrations.add(p, 0)
        platform = await self._fetch_certs(p)
        for spec in self.specs_for(platform["fmspc"], platform["ca"]):
            await self.item(spec, fetch=True)
        self.registrations.mark(p["qe_id"], p["pce_id"], 9)

    @staticmethod
    def specs_for(fmspc: str, ca: str) -> list[Spec]:
        return [Spec("tcb", "sgx", 4, fmspc, "standard"), Spec("tcb", "sgx", 4, fmspc, "early"),
                Spec("identity", "sgx", 4, "qe", "standard"), Spec("identity", "sgx", 4, "qve", "standard"),
                Spec("pckcrl", subject=ca), Spec("rootcacrl")]

    def due(self, now: float) -> list[Spec]:
        """Items to fetch again: within refresh_ahead_s of their nextUpdate, or older than refresh_interval_s
        (both jittered by up to 10%, so replicas and items spread out)."""
        o, out = self.o, []
        for key, fetched_at, not_after in self.collateral.all_keys():
            jitter = 1 - random.random() * 0.1
            if now >= not_after - o.refresh_ahead_s * (2 - jitter) or now - fetched_at >= o.refresh_interval_s * jitter:
                out.append(Spec.from_key(key))
        return out

    async def refresh(self, *, certs: bool = False, fmspcs: list[str] | None = None) -> dict:
        """GET/POST /refresh: every stored item (or, with certs, the PCK certificates of the registered
        platforms) fetched again now. Returns counts; raises PccsHttpError(503) in OFFLINE mode."""
        if self.o.mode == "OFFLINE":
            raise PccsHttpError(503, "OFFLINE mode: refresh is disabled")
        if certs:
            return {"platforms": await self._refresh_certs(fmspcs)}
        specs = [Spec.from_key(k) for k, _, _ in self.collateral.all_keys()]
        return await self._refresh_specs(sorted(specs, key=lambda s: s.kind != "rootcacrl"))

    async def refresh_due(self) -> dict:
        if self.o.mode == "OFFLINE":
            return {}
        return await self._refresh_specs(sorted(self.due(self.clock()), key=lambda s: s.kind != "rootcacrl"))

    async def _refresh_specs(self, specs: list[Spec]) -> dict:
        done = failed = 0
        for spec in specs:
            try:
                await self._coalesced(spec)
                done += 1
            except (PcsError, ItemRejected, PccsHttpError) as e:
                failed += 1
                self.metrics.refresh_failed(spec.kind)
                log.warning("refresh of %s failed, the stored copy is served while valid: %s", spec.what, e)
        return {"refreshed": done, "failed": failed}

    async def _refresh_certs(self, fmspcs: list[str] | None) -> int:
        """Refetches every registered platform's certificates (one failing platform does not stop the
        others: it keeps its stored set and is logged)."""
        n = 0
        for p in await asyncio.to_thread(self.platforms.all, fmspcs):
            if not p.get("enc_ppid"):
                continue
            try:
                await self._fetch_certs(p, allow_new_ppid=True)
                n += 1
            except (PccsHttpError, PcsError) as e:
                self.metrics.refresh_failed("pckcerts")
                log.warning("PCK certificate refresh of platform %s failed: %s", p["qe_id"], e)
        return n

    async def _refresh_certs_quietly(self, fmspcs: list[str]) -> None:
        try:
            await self._refresh_certs(fmspcs)
        except (PccsHttpError, PcsError) as e:
            log.warning("PCK certificate refresh for %s failed: %s", fmspcs, e)
