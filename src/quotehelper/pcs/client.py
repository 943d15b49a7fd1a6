"""The collateral client: what verifying one quote needs, from Intel's PCS, a PCCS, Azure THIM or ours.

`CollateralClient(options, cache=..., verifier=...).fetch(quote)` returns verified collateral: the PCK
CRL of the CA that issued the quote's PCK certificate, TCB info for its FMSPC (SGX or TDX path), the
QE identity, the root CA CRL (PCCS's `rootcacrl`, else the root certificate's CRL distribution point),
and their issuer chains (both header spellings, API v3 and v4). CRLs may come as DER, PEM or PCCS's hex
text. Items are fetched concurrently, retried on connection errors, 503 and 429 within the deadline,
verified as a bundle under the trust anchor (signatures, chains, dates, FMSPC, evaluation number)
and only then cached. A cached item is used while valid; after `refresh_after_s` (or within
`refresh_margin_s` of its nextUpdate) it is fetched again, and the cached one is kept if that fails.

Reference: collateral-service.md §1.3, §5, §7(2); dcap-verification.md §4.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509

from quotehelper.pcs.cache import CollateralCache, Item
from quotehelper.pcs.errors import PcsCode, PcsError
from quotehelper.pcs.http import AiohttpGetter, Getter, Response, get_with_retry
from quotehelper.pcs.needs import Needs, ca_type_of, needs_for
from quotehelper.pcs.urls import INTEL_PCS_URL, UPDATE_TYPES, Endpoints
from quotehelper.verify.chain import load_pem_chain
from quotehelper.verify.collateral import Collateral, crl_to_der, decode_issuer_chain, split_pem_chain
from quotehelper.verify.errors import VerificationError
from quotehelper.verify.items import ItemChecker, ItemRejected
from quotehelper.verify.verifier import Verifier, VerifyOptions

ITEMS = ("pck_crl", "tcb_info", "qe_identity", "root_ca_crl")
_WHAT = {"pck_crl": "PCK CRL", "tcb_info": "TCB info", "qe_identity": "QE identity",
         "root_ca_crl": "root CA CRL", "pck_cert": "PCK certificate"}
_CHAIN_HEADERS = {
    "pck_crl": ("SGX-PCK-CRL-Issuer-Chain",),
    "tcb_info": ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
    "qe_identity": ("SGX-Enclave-Identity-Issuer-Chain", "SGX-QE-Identity-Issuer-Chain"),
    "pck_cert": ("SGX-PCK-Certificate-Issuer-Chain", "PCS-Certificate-Issuer-Chain"),
}


@dataclass(frozen=True)
class PcsOptions:
    """How to reach a collateral service. Times in seconds."""

    base_url: str = INTEL_PCS_URL
    update: str = "standard"                       # PCS `update=`: standard | early
    tcb_evaluation_data_number: int | None = None  # a specific TCB evaluation (PCS and ours; PCCS ignores it)
    timeout_s: float = 30.0                        # deadline for one fetch, retries included
    ca_bundle: str | None = None                   # PEM file of CAs trusted for the service's TLS certificate
    insecure: bool = False                         # no TLS verification (a test PCCS with a self-signed cert)
    api_key: str | None = None                     # Ocp-Apim-Subscription-Key, sent on pckcert requests
    offline: bool = False                          # use only the cache; never the network
    refresh_after_s: float = 3600.0                # re-fetch cached items older than this...
    refresh_margin_s: float = 86400.0              # ...or this close to their nextUpdate

    def __post_init__(self) -> None:
        if self.update not in UPDATE_TYPES:
            raise PcsError(PcsCode.BAD_OPTION, f"update must be one of {', '.join(UPDATE_TYPES)}, got {self.update!r}")
        if not self.timeout_s > 0:
            raise PcsError(PcsCode.BAD_OPTION, f"timeout must be > 0 seconds, got {self.timeout_s}")
        n = self.tcb_evaluation_data_number
        if n is not None and not 0 <= n < 2**31:
            raise PcsError(PcsCode.BAD_OPTION, f"tcbEvaluationDataNumber must be 0..2^31-1, got {n}")
        Endpoints.parse(self.base_url)  # validates the URL


@dataclass(frozen=True)
class Fetched:
    """Verified collateral for one quote, and where each item came from ("network", "cache", or
    "cache (refresh failed: ...)")."""

    collateral: Collateral
    sources: dict[str, str]
    urls: dict[str, str]
    fmspc: str
    ca: str
    tcb_evaluation_data_number: int | None
    warnings: tuple[str, ...] = ()


@dataclass
class _Plan:
    needs: Needs
    keys: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)
    getter: Getter | None = None


def _http_error(r: Response, what: str) -> PcsError:
    detail = {"url": r.url, "status": r.status, "what": what}
    for h in ("Error-Code", "Error-Message", "Request-ID"):
        if r.header(h):
            detail[h.lower().replace("-", "_")] = r.header(h)
    text = r.body[:200].decode("utf-8", "replace").strip()
    if text:
        detail["body"] = text
    if r.status == 404:
        return PcsError(PcsCode.NOT_FOUND, f"no {what} at {r.url}: 404", detail)
    if r.status == 461:
        return PcsError(PcsCode.NOT_FOUND, f"no {what} at {r.url}: 461 (platform not registered with the PCCS)",
                        detail)
    if r.status == 401:
        return PcsError(PcsCode.UNAUTHORIZED, f"{what} at {r.url}: 401 (API key or token refused)", detail)
    if r.status == 400:
        return PcsError(PcsCode.BAD_REQUEST, f"{what} at {r.url}: 400 (parameters refused)", detail)
    if 300 <= r.status < 400:
        detail["location"] = r.header("Location") or ""
        return PcsError(PcsCode.HTTP_ERROR, f"{what} at {r.url}: {r.status} redirect to {detail['location']!r} not "
                        "followed (give the service's own URL)", detail)
    return PcsError(PcsCode.HTTP_ERROR, f"{what} at {r.url}: HTTP {r.status}", detail)


def _not_after_json(body: bytes, member: str, what: str, url: str) -> tuple[float, int | None]:
    """(nextUpdate as unix seconds, tcbEvaluationDataNumber) of a PCS body."""
    try:
        d = json.loads(body)[member]
        n = d.get("tcbEvaluationDataNumber")
        return (datetime.fromisoformat(d["nextUpdate"].replace("Z", "+00:00")).timestamp(),
                n if isinstance(n, int) and not isinstance(n, bool) else None)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise PcsError(PcsCode.BAD_RESPONSE, f"{what} from {url} is not a PCS body with {member}.nextUpdate: "
                       f"{type(e).__name__}: {e}", {"url": url, "what": what}) from e


def _crl_not_after(der: bytes, what: str, url: str) -> float:
    try:
        nu = x509.load_der_x509_crl(der).next_update_utc
    except ValueError as e:
        raise PcsError(PcsCode.BAD_RESPONSE, f"{what} from {url} does not parse: {e}", {"url": url, "what": what}) from e
    if nu is None:
        raise PcsError(PcsCode.BAD_RESPONSE, f"{what} from {url} has no nextUpdate", {"url": url, "what": what})
    return nu.timestamp()


def _anchor_tag(verifier: Verifier) -> str:
    return hashlib.sha256(",".join(sorted(a.sha256 for a in verifier.roots)).encode()).hexdigest()[:16]


class CollateralClient:
    """Reusable (keeps its HTTP connections, its verifier's cache and the optional node cache)."""

    def __init__(self, options: PcsOptions | None = None, *, cache: CollateralCache | None = None,
                 verifier: Verifier | None = None, getter: Getter | None = None,
                 clock=time.time) -> None:
        self.options = options or PcsOptions()
        self.endpoints = Endpoints.parse(self.options.base_url)
        self.cache = cache
        self.verifier = verifier or Verifier(VerifyOptions())
        self._getter = getter
        self._clock = clock
        self._tag = _anchor_tag(self.verifier)
        self._items = ItemChecker(self.verifier.roots)
        self._memo: dict[tuple, Fetched] = {}  # cache rows -> their verified, assembled collateral
        self._recent: dict[tuple, tuple[float, float, Fetched]] = {}  # (TEE, FMSPC, CA) -> (until, due, it)

    # ---- public ------------------------------------------------------------------------------------
    def fetch(self, quote: bytes, *, now: float | None = None) -> Fetched:
        """Synchronous `fetch_async`; thread-safe. A quote whose collateral is all in the cache and not due
        for a refresh is answered without an event loop (the common case on a node). Must not be called
        from a running event loop."""
        now = self._clock() if now is None else now
        needs = needs_for(quote)
        if needs.fmspc is not None and self.cache is not None:
            hit = self._from_cache(needs, now)
            if hit is not None:
                return hit
        return asyncio.run(self._fetch_with_own_getter(quote, now))

    async def _fetch_with_own_getter(self, quote: bytes, now: float) -> Fetched:
        # One aiohttp session per call: a session belongs to one event loop, and each sync call has its own.
        getter = self._getter or AiohttpGetter(ca_bundle=self.options.ca_bundle, insecure=self.options.insecure)
        try:
            return await self._fetch(quote, now, getter)
        finally:
            if self._getter is None:
                await getter.close()

    def _from_cache(self, needs: Needs, now: float) -> Fetched | None:
        assert self.cache is not None
        recent = self._recent.get((needs.tee, needs.fmspc, needs.ca))
        # The same bundle again within a second: no database read (another process's refresh of the shared
        # cache shows at most a second later; nothing is used past its nextUpdate or its refresh time).
        if recent is not None and time.monotonic() < recent[0] and now < recent[1]:
            return recent[2]
        keys = self._keys(needs)
        versions = self.cache.versions(keys.values(), now)  # metadata only: the bodies are read on a miss
        if len(versions) != len(keys):
            return None
        if not self.options.offline and any(self._due_at(*versions[k], now) for k in keys.values()):
            return None
        memo_key = tuple((k, versions[k][0]) for k in keys.values())
        hit = self._memo.get(memo_key)
        if hit is None:
            rows = self.cache.get(keys.values(), now)
            if len(rows) != len(keys):
                return None
            items = {n: rows[k] for n, k in keys.items()}
            memo_key = tuple((i.key, i.fetched_at) for i in items.values())
            coll, ev = self._check(items, _Plan(needs, keys), now)
            hit = Fetched(coll, dict.fromkeys(ITEMS, "cache"), {n: items[n].url for n in ITEMS},
                          needs.fmspc.hex().upper(), needs.ca, ev)
            if len(self._memo) > 64:
                self._memo.clear()
            self._memo[memo_key] = hit
        o = self.options
        until = min(min(v[1] - o.refresh_margin_s, v[0] + o.refresh_after_s) for v in versions.values())
        if len(self._recent) > 64:
            self._recent.clear()
        self._recent[(needs.tee, needs.fmspc, needs.ca)] = (time.monotonic() + 1.0, until, hit)
        return hit

    async def aclose(self) -> None:
        if self._getter is not None:
            await self._getter.close()

    async def fetch_async(self, quote: bytes, *, now: float | None = None) -> Fetched:
        """Raises PcsError with the URL, status and item for every failure; never returns unverified
        collateral for an SGX quote. Uses one aiohttp session for the client's life (one event loop)."""
        if self._getter is None:
            self._getter = AiohttpGetter(ca_bundle=self.options.ca_bundle, insecure=self.options.insecure)
        return await self._fetch(quote, self._clock() if now is None else now, self._getter)

    def _keys(self, needs: Needs) -> dict[str, str]:
        assert needs.fmspc is not None
        opt = self.options
        ev = "-" if opt.tcb_evaluation_data_number is None else str(opt.tcb_evaluation_data_number)
        return {
            "pck_crl": f"pck_crl/{needs.ca}@{self._tag}",
            "tcb_info": f"tcb_info/{needs.tee}/{needs.fmspc.hex().upper()}/{opt.update}/{ev}@{self._tag}",
            "qe_identity": f"qe_identity/{needs.tee}/{opt.update}/{ev}@{self._tag}",
            "root_ca_crl": f"root_ca_crl@{self._tag}",
        }

    async def _fetch(self, quote: bytes, now: float, getter: Getter) -> Fetched:
        deadline = time.monotonic() + self.options.timeout_s
        needs = needs_for(quote)
        plan = _Plan(needs, {}, getter=getter)
        opt = self.options
        if needs.fmspc is None:
            needs = plan.needs = await self._pck_cert(needs, plan, deadline)
        assert needs.fmspc is not None and needs.ca is not None
        plan.keys = self._keys(needs)
        cached = self.cache.get(plan.keys.values(), now) if self.cache else {}
        have = {name: cached[k] for name, k in plan.keys.items() if k in cached}
        if opt.offline:
            missing = [n for n in ITEMS if n not in have]
            if missing:
                raise PcsError(PcsCode.NOT_CACHED, f"offline and the cache holds no valid {_WHAT[missing[0]]} for "
                               f"FMSPC {needs.fmspc.hex().upper()} ({needs.ca} CA)",
                               {"missing": missing, "cache": str(self.cache.path) if self.cache else None})
            due: list[str] = []
        else:
            due = [n for n in ITEMS if n not in have or self._due(have[n], now)]
        fresh, failures = await self._fetch_items(due, plan, have, now, deadline)
        warnings = []
        # TCB info first: its 404 names the FMSPC, the usual cause (a platform the service does not know)
        for name, err in sorted(failures.items(), key=lambda kv: ("tcb_info", "qe_identity", "pck_crl",
                                                                   "root_ca_crl").index(kv[0])):
            if name not in have:
                raise err
            warnings.append(f"{_WHAT[name]}: refresh failed, using the cached copy ({err.message})")
        sources = {n: "network" if n in fresh else "cache" if n not in failures else
                   f"cache (refresh failed: {failures[n].code.value})" for n in ITEMS}
        for n in list(fresh):  # never move backwards: a lagging replica or cache upstream serves older items
            old = have.get(n)
            if old is not None and ((fresh[n].evaluation_number or -1) < (old.evaluation_number or -1) or (
                    fresh[n].evaluation_number == old.evaluation_number and fresh[n].not_after < old.not_after)):
                warnings.append(f"{_WHAT[n]}: the service answered an older one than the cached copy; kept the copy")
                sources[n] = "cache (older answer refused)"
                del fresh[n]
        chosen = {n: fresh.get(n) or have[n] for n in ITEMS}
        try:
            coll, ev_number = self._check(chosen, plan, now)
        except PcsError as e:
            if not fresh or not all(n in have for n in fresh):
                raise
            coll, ev_number = self._check({n: have[n] for n in ITEMS}, plan, now)  # the verified cached copies
            warnings.append(f"fetched collateral refused, using the cached copy ({e.message})")
            sources = dict.fromkeys(ITEMS, "cache (refresh refused)")
            fresh = {}
        if self.cache is not None and fresh and coll is not None:
            self.cache.put(fresh.values())
        urls = {n: chosen[n].url for n in ITEMS}
        urls.update(plan.urls)
        return Fetched(coll, sources, urls, needs.fmspc.hex().upper(), needs.ca, ev_number, tuple(warnings))

    # ---- steps -------------------------------------------------------------------------------------
    def _due(self, item: Item, now: float) -> bool:
        return self._due_at(item.fetched_at, item.not_after, now)

    def _due_at(self, fetched_at: float, not_after: float, now: float) -> bool:
        o = self.options
        return now - fetched_at >= o.refresh_after_s or not_after - now <= o.refresh_margin_s

    async def _get(self, plan: _Plan, url: str, what: str, deadline: float,
                   headers: Mapping[str, str] | None = None) -> Response:
        assert plan.getter is not None
        r = await get_with_retry(plan.getter, url, what=what, deadline=deadline, headers=headers)
        if not 200 <= r.status < 300:
            raise _http_error(r, what)
        return r

    async def _pck_cert(self, needs: Needs, plan: _Plan, deadline: float) -> Needs:
        """Certification data types 1-3: the PCK certificate for the raw TCB, with FMSPC and CA from PCS's
        headers (the chain header holds the CA and the root)."""
        if self.options.offline:
            raise PcsError(PcsCode.NOT_CACHED, "offline: a quote with certification data type 1-3 needs its PCK "
                           "certificate from the service")
        p = needs.ppid
        assert p is not None
        url = self.endpoints.pckcert(cpusvn=p.cpu_svn, pcesvn=p.pce_svn, pceid=p.pce_id or 0,
                                     encrypted_ppid=p.ppid if len(p.ppid) == 384 else None, qeid=needs.qe_id)
        plan.urls["pck_cert"] = url
        headers = {"Ocp-Apim-Subscription-Key": self.options.api_key} if self.options.api_key else {}
        r = await self._get(plan, url, "PCK certificate for this platform", deadline, headers)
        leaf = r.body.strip()
        chain_hdr = r.header(*_CHAIN_HEADERS["pck_cert"])
        fmspc_hdr, ca_hdr = r.header("SGX-FMSPC"), r.header("SGX-PCK-Certificate-CA-Type")
        try:
            if b"-----BEGIN CERTIFICATE-----" not in leaf or not chain_hdr:
                raise ValueError("needs a PEM body and the SGX-PCK-Certificate-Issuer-Chain header")
            chain = leaf + b"\n" + decode_issuer_chain(chain_hdr)
            split_pem_chain(chain, "pck_cert")
            issuer = x509.load_pem_x509_certificate(leaf).issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            ca = (ca_hdr or "").lower() if (ca_hdr or "").lower() in ("processor", "platform") else \
                ca_type_of(str(issuer[0].value) if issuer else "")
            fmspc = bytes.fromhex(fmspc_hdr or "")
            if len(fmspc) != 6:
                raise ValueError(f"SGX-FMSPC header {fmspc_hdr!r} is not 12 hex digits")
        except (ValueError, VerificationError) as e:
            raise PcsError(PcsCode.BAD_RESPONSE, f"PCK certificate answer from {url} is unusable: {e}",
                           {"url": url, "what": "PCK certificate"}) from e
        return Needs(needs.tee, fmspc, ca, pck_chain=chain, ppid=p, qe_id=needs.qe_id)

    async def _fetch_items(self, due: list[str], plan: _Plan, have: dict[str, Item], now: float,
                           deadline: float) -> tuple[dict[str, Item], dict[str, PcsError]]:
        if not due:
            return {}, {}
        results = await asyncio.gather(*(self._fetch_one(n, plan, have, now, deadline) for n in due),
                                       return_exceptions=True)
        fresh: dict[str, Item] = {}
        failures: dict[str, PcsError] = {}
        for name, res in zip(due, results, strict=True):
            if isinstance(res, PcsError):
                failures[name] = res
            elif isinstance(res, BaseException):
                raise res
            else:
                fresh[name] = res
        # The root CA CRL's distribution point is in the root certificate: known from the quote's PCK
        # chain, or from the TCB-info chain just fetched.
        fatal = any(n not in have for n in failures if n != "root_ca_crl")  # the fetch fails anyway
        if "root_ca_crl" in failures and failures["root_ca_crl"].detail.get("fallback") and not fatal:
            root = self._root_cert()
            del failures["root_ca_crl"]
            try:
                fresh["root_ca_crl"] = await self._root_crl_from_cdp(root, plan, now, deadline)
            except PcsError as e:
                failures["root_ca_crl"] = e
        return fresh, failures

    async def _fetch_one(self, name: str, plan: _Plan, have: dict[str, Item], now: float, deadline: float) -> Item:
        ep, o, n = self.endpoints, self.options, plan.needs
        assert n.fmspc is not None and n.ca is not None
        if name == "root_ca_crl":
            if ep.kind == "pcs":
                raise PcsError(PcsCode.NOT_FOUND, "Intel PCS serves the root CA CRL at the root's CDP",
                               {"fallback": True})
            url = ep.rootcacrl()
            try:
                r = await self._get(plan, url, _WHAT[name], deadline)
            except PcsError as e:
                if e.code in (PcsCode.NOT_FOUND, PcsCode.BAD_REQUEST, PcsCode.HTTP_ERROR):
                    raise PcsError(e.code, e.message, {**e.detail, "fallback": True}) from e
                raise
            return self._crl_item(name, plan.keys[name], r, now)
        if name == "pck_crl":
            r = await self._get(plan, ep.pckcrl(n.ca), f"PCK CRL of the {n.ca} CA", deadline)
            return self._crl_item(name, plan.keys[name], r, now)
        if name == "tcb_info":
            what = f"TCB info for FMSPC {n.fmspc.hex().upper()}"
            url = ep.tcb(n.tee, n.fmspc, o.update, o.tcb_evaluation_data_number)
            r = await self._get(plan, url, what, deadline)
            return self._json_item(name, plan.keys[name], r, "tcbInfo", what, now)
        url = ep.qe_identity(n.tee, o.update, o.tcb_evaluation_data_number)
        r = await self._get(plan, url, "QE identity", deadline)
        return self._json_item(name, plan.keys[name], r, "enclaveIdentity", "QE identity", now)

    def _chain(self, name: str, r: Response, what: str) -> bytes:
        value = r.header(*_CHAIN_HEADERS[name])
        if not value:
            raise PcsError(PcsCode.BAD_RESPONSE, f"{what} from {r.url} lacks the {_CHAIN_HEADERS[name][0]} header",
                           {"url": r.url, "what": what})
        try:
            return decode_issuer_chain(value)
        except VerificationError as e:
            raise PcsError(PcsCode.BAD_RESPONSE, f"{what} from {r.url}: issuer-chain header: {e.message}",
                           {"url": r.url, "what": what}) from e

    def _json_item(self, name: str, key: str, r: Response, member: str, what: str, now: float) -> Item:
        chain = self._chain(name, r, what)
        not_after, ev = _not_after_json(r.body, member, what, r.url)
        return Item(key, r.body, chain, r.url, now, not_after, ev)

    def _crl_item(self, name: str, key: str, r: Response, now: float) -> Item:
        what = _WHAT[name]
        try:
            der = crl_to_der(r.body, what)
        except VerificationError as e:
            raise PcsError(PcsCode.BAD_RESPONSE, f"{what} from {r.url}: {e.message}", {"url": r.url, "what": what}) from e
        chain = self._chain(name, r, what) if name == "pck_crl" else None
        return Item(key, der, chain, r.url, now, _crl_not_after(der, what, r.url))

    def _root_cert(self) -> x509.Certificate:
        """The trust anchor: its CRL distribution point is where its CRL is (never a root a quote or an
        answer carries: that would let them choose what this client fetches)."""
        for anchor in self.verifier.roots:
            try:
                anchor.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
                return anchor.cert
            except x509.ExtensionNotFound:
                continue
        raise PcsError(PcsCode.BAD_RESPONSE, "the trusted root names no CRL distribution point, and the service "
                       "has no rootcacrl route")

    async def _root_crl_from_cdp(self, root: x509.Certificate, plan: _Plan, now: float, deadline: float) -> Item:
        try:
            cdp = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            url = next(str(n.value) for dp in cdp for n in (dp.full_name or [])
                       if isinstance(n, x509.UniformResourceIdentifier))
        except (x509.ExtensionNotFound, StopIteration) as e:
            raise PcsError(PcsCode.BAD_RESPONSE, "the root certificate names no CRL distribution point, and the "
                           "service has no rootcacrl route") from e
        r = await self._get(plan, url, "root CA CRL (from the root's CRL distribution point)", deadline)
        return self._crl_item("root_ca_crl", plan.keys["root_ca_crl"], r, now)

    def _check(self, items: dict[str, Item], plan: _Plan, now: float) -> tuple[Collateral, int | None]:
        """Checks the bundle under the trust anchor before anything is cached, and that it is what the
        quote needs: the PCK CRL of the quote's CA, TCB info for its TEE and FMSPC (and the evaluation
        asked for), the QE identity of its TEE. SGX: the verifier's own collateral check (chains, CRLs,
        exact-bytes signatures, dates, every field parsed); TDX: each item on its own (verify.items).
        PcsError(BAD_RESPONSE / VERIFICATION_FAILED) naming the item and its URL."""
        n = plan.needs
        assert n.fmspc is not None and n.ca is not None
        when = datetime.fromtimestamp(now, UTC)
        if n.tee != "sgx":
            self._check_items(items, n, when)
        try:
            coll = Collateral.from_pcs(
                tcb_info_body=items["tcb_info"].body, tcb_info_issuer_chain=items["tcb_info"].chain or b"",
                qe_identity_body=items["qe_identity"].body, qe_identity_issuer_chain=items["qe_identity"].chain,
                pck_crl=items["pck_crl"].body, pck_crl_issuer_chain=items["pck_crl"].chain or b"",
                root_ca_crl=items["root_ca_crl"].body,
                pck_certificate_chain=n.pck_chain if plan.needs.ppid is not None else None,
                source=self.options.base_url)
        except VerificationError as e:
            bad = _blame(e, items)
            raise PcsError(PcsCode.BAD_RESPONSE, f"{_WHAT[bad]} from {items[bad].url}: {e.message}",
                           {"url": items[bad].url, "what": _WHAT[bad], "reason": e.code.value}) from e
        if n.tee != "sgx":
            ev = items["tcb_info"].evaluation_number
            return coll, ev
        try:
            vc = self.verifier.verify_collateral(coll, now=when)
            ca_cn = load_pem_chain(coll.pck_crl_issuer_chain, "pck_crl_issuer_chain")[0].common_name
        except VerificationError as e:
            bad = _blame(e, items)
            raise PcsError(PcsCode.VERIFICATION_FAILED, f"{_WHAT[bad]} from {items[bad].url} fails verification: "
                           f"{e.code.value}: {e.message}",
                           {"url": items[bad].url, "what": _WHAT[bad], "reason": e.code.value}) from e
        want = self.options.tcb_evaluation_data_number
        problems = [
            ("pck_crl", f"PCK_CRL_CA_MISMATCH: issued by {ca_cn}, not the {n.ca} CA", n.ca not in ca_cn.lower()),
            ("tcb_info", f"TCB_INFO_MISMATCH: fmspc is {vc.tcb_info.fmspc.hex().upper()!r}, asked for "
                         f"{n.fmspc.hex().upper()!r}", vc.tcb_info.fmspc != n.fmspc),
            ("tcb_info", f"EVALUATION_NUMBER_MISMATCH: tcbEvaluationDataNumber {vc.tcb_info.evaluation_data_number}, "
                         f"asked for {want}", want is not None and vc.tcb_info.evaluation_data_number != want),
            ("qe_identity", f"EVALUATION_NUMBER_MISMATCH: tcbEvaluationDataNumber "
                            f"{vc.qe_identity.evaluation_data_number}, asked for {want}",
             want is not None and vc.qe_identity.evaluation_data_number != want),
            ("qe_identity", f"QE_IDENTITY_MISMATCH: id {vc.qe_identity.id!r}, asked for 'QE'", vc.qe_identity.id != "QE"),
        ]
        for name, reason, bad_ in problems:
            if bad_:
                raise PcsError(PcsCode.VERIFICATION_FAILED, f"{_WHAT[name]} from {items[name].url} fails "
                               f"verification: {reason}", {"url": items[name].url, "what": _WHAT[name],
                                                           "reason": reason.split(":")[0]})
        return coll, vc.tcb_info.evaluation_data_number

    def _check_items(self, items: dict[str, Item], n: Needs, when: datetime) -> None:
        """Each item on its own under the anchor (for TDX, whose collateral the verifier does not check)."""
        assert n.fmspc is not None and n.ca is not None
        want = self.options.tcb_evaluation_data_number
        ev_expect = {} if want is None else {"tcbEvaluationDataNumber": want}
        name = "root_ca_crl"
        try:
            root_der, _ = self._items.root_crl(items[name].body, when)
            name = "pck_crl"
            self._items.pck_crl(items[name].body, items[name].chain or b"", n.ca, root_der, when)
            name = "tcb_info"
            self._items.signed_json(items[name].body, items[name].chain or b"", "tcbInfo", root_der, when,
                                    what=f"TCB info for FMSPC {n.fmspc.hex().upper()}",
                                    expect={"fmspc": n.fmspc.hex().upper(), "id": n.tee.upper(), **ev_expect})
            name = "qe_identity"
            self._items.signed_json(items[name].body, items[name].chain or b"", "enclaveIdentity", root_der, when,
                                    what="QE identity", expect={"id": "TD_QE" if n.tee == "tdx" else "QE", **ev_expect})
        except ItemRejected as e:
            raise PcsError(PcsCode.VERIFICATION_FAILED, f"{_WHAT[name]} from {items[name].url} fails verification: "
                           f"{e.reason}", {"url": items[name].url, "what": _WHAT[name], "reason": e.reason}) from e


def _blame(e: VerificationError, items: dict[str, Item]) -> str:
    """Which item a bundle-level verification error is about."""
    code, d = e.code.value, e.detail
    text = " ".join(str(v) for v in d.values()) + " " + e.message
    if code.startswith("TCB_INFO") or "tcb_info" in text:
        return "tcb_info"
    if code.startswith("QE_IDENTITY") or "qe_identity" in text:
        return "qe_identity"
    if "root CA CRL" in text or d.get("chain") == "root":
        return "root_ca_crl"
    return "pck_crl"


def fetch_collateral(quote: bytes, base_url: str = INTEL_PCS_URL, *, cache: CollateralCache | None = None,
                     verifier: Verifier | None = None, **options) -> Collateral:
    """One-shot: verified collateral for `quote` from the service at `base_url` (PcsOptions fields as
    keyword arguments). Raises PcsError."""
    client = CollateralClient(PcsOptions(base_url=base_url, **options), cache=cache, verifier=verifier)
    return client.fetch(quote).collateral
