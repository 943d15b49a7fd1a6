"""The PCCS HTTP API (aiohttp): Intel PCCS's routes under /sgx/certification/v3|v4 and /tdx/certification/v4,
answered as Intel's PCCS answers QCNL and verifiers (collateral-service.md §1): bodies byte-exact as
received, issuer chains URL-encoded as received, `pckcrl` as hex text unless `encoding=der`, `rootcacrl`
as hex, a `Request-ID` on every answer, plain-text errors with Intel's status codes; plus `pckcerts`,
`tcbevaluationdatanumbers` and `tcbEvaluationDataNumber`, which Intel's lacks, and /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from quotehelper.pccs.service import TEXT, Pccs, PccsHttpError, Spec
from quotehelper.pccs.transfer import import_collateral
from quotehelper.verify.items import ItemRejected

log = logging.getLogger("quotehelper.pccs")
PCCS_KEY: web.AppKey[Pccs] = web.AppKey("pccs", Pccs)
_HEX = re.compile(r"[0-9A-Fa-f]*")
MAX_BODY = 64 * 1024 * 1024  # a platformcollateral import of many platforms


def _hex(req: web.Request, name: str, size: int | None, required: bool = True, max_len: int = 0) -> str | None:
    v = req.query.get(name)
    if v is None or v == "":
        if required:
            raise PccsHttpError(400, f"{name} is required")
        return None
    if not _HEX.fullmatch(v) or (size is not None and len(v) != size) or (max_len and len(v) > max_len):
        raise PccsHttpError(400, f"{name} must be {size or 'hex'} hex digits")
    return v.upper()


def _update(req: web.Request) -> tuple[str, int | None]:
    update = req.query.get("update", "standard").lower()
    if update not in ("standard", "early"):
        raise PccsHttpError(400, "update must be standard or early")
    n = req.query.get("tcbEvaluationDataNumber")
    if n is None:
        return update, None
    if not re.fullmatch(r"[0-9]{1,9}", n):  # ASCII digits (isdigit() takes "²")
        raise PccsHttpError(400, "tcbEvaluationDataNumber must be a non-negative integer")
    return update, int(n)


def _version(req: web.Request) -> int:
    return int(req.match_info["version"])


def _auth(req: web.Request, which: str) -> None:
    pccs = req.app[PCCS_KEY]
    expected = pccs.o.admin_token_hash if which == "admin" else pccs.o.user_token_hash
    token = req.headers.get(f"{which}-token", "")
    got = hashlib.sha512(token.encode("utf-8", "surrogateescape")).hexdigest()
    if not expected or not token or not hmac.compare_digest(got, expected):
        raise PccsHttpError(401)


def _ok(req: web.Request, body: bytes | str, content_type: str, headers: dict[str, str] | None = None,
        max_age: float | None = None) -> web.Response:
    h = dict(headers or {})
    if max_age is not None and max_age > 0:
        # QCNL and Azure's client keep an answer this long: never longer than this PCCS waits before it
        # looks for a newer one, or a TCB recovery it picks up would not reach the nodes for a month.
        cap = req.app[PCCS_KEY].o.refresh_interval_s
        h["Cache-Control"] = f"max-age={int(min(max_age, cap))}"
    return web.Response(body=body.encode() if isinstance(body, str) else body, content_type=None,
                        headers={"Content-Type": content_type, **h})


def _row_response(req: web.Request, row, content_type: str, header: str | None) -> web.Response:  # noqa: ANN001
    pccs = req.app[PCCS_KEY]
    headers = {header: row.chain} if header and row.chain else {}
    if header == "TCB-Info-Issuer-Chain" and row.chain:
        headers["SGX-TCB-Info-Issuer-Chain"] = row.chain  # both names are harmless (v3 and v4 clients)
    return _ok(req, row.body, content_type, headers, row.not_after - pccs.clock())


# ---- collateral ---------------------------------------------------------------------------------------
async def tcb(req: web.Request) -> web.Response:
    tee = req.match_info["tee"]
    fmspc = _hex(req, "fmspc", 12)
    update, n = _update(req)
    row = await req.app[PCCS_KEY].item(Spec("tcb", tee, _version(req), fmspc or "", update, n))
    return _row_response(req, row, "application/json", "TCB-Info-Issuer-Chain" if _version(req) >= 4
                         else "SGX-TCB-Info-Issuer-Chain")


async def identity(req: web.Request) -> web.Response:
    tee, which = req.match_info["tee"], req.match_info["which"]
    if which == "qve" and tee != "sgx":
        raise PccsHttpError(404)
    update, n = _update(req)
    row = await req.app[PCCS_KEY].item(Spec("identity", tee, _version(req), which, update, n))
    return _row_response(req, row, "application/json", "SGX-Enclave-Identity-Issuer-Chain")


async def evalnums(req: web.Request) -> web.Response:
    row = await req.app[PCCS_KEY].item(Spec("evalnums", req.match_info["tee"], _version(req)))
    return _row_response(req, row, "application/json", "TCB-Evaluation-Data-Numbers-Issuer-Chain")


async def pckcrl(req: web.Request) -> web.Response:
    ca = req.query.get("ca", "").lower()
    if ca not in ("processor", "platform"):
        raise PccsHttpError(400, "ca must be processor or platform")
    encoding = req.query.get("encoding", "").lower()
    if encoding not in ("", "der", "pem"):
        raise PccsHttpError(400, "encoding must be der")
    pccs = req.app[PCCS_KEY]
    row = await pccs.item(Spec("pckcrl", "sgx", _version(req), ca))
    headers = {"SGX-PCK-CRL-Issuer-Chain": row.chain or ""}
    age = row.not_after - pccs.clock()
    if encoding == "der":
        return _ok(req, row.body, "application/pkix-crl", headers, age)
    if encoding == "pem":
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return _ok(req, x509.load_der_x509_crl(row.body).public_bytes(Encoding.PEM), "application/x-pem-file",
                   headers, age)
    return _ok(req, row.body.hex(), "application/x-pem-file", headers, age)  # hex text, as Intel's PCCS


async def rootcacrl(req: web.Request) -> web.Response:
    pccs = req.app[PCCS_KEY]
    row = await pccs.item(Spec("rootcacrl"))
    return _ok(req, row.body.hex(), "application/pkix-crl", None, row.not_after - pccs.clock())


async def crl(req: web.Request) -> web.Response:
    """`crl?uri=`: only the trusted root's CRL distribution point (anything else would make this server
    fetch arbitrary URLs); answered in DER from the stored root CA CRL."""
    pccs = req.app[PCCS_KEY]
    uri = req.query.get("uri", "")
    row = await pccs.item(Spec("rootcacrl"))
    if not uri or len(uri) > 2048 or (row.url != uri and not _is_root_cdp(pccs, uri)):
        raise PccsHttpError(400, "uri must be the root CA's CRL distribution point")
    return _ok(req, row.body, "application/pkix-crl")


def _is_root_cdp(pccs: Pccs, uri: str) -> bool:
    from cryptography import x509

    for root in pccs.checker.roots:
        try:
            cdp = root.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            continue
        if any(str(n.value).lower() == uri.lower() for dp in cdp for n in dp.full_name or []):
            return True
    return False


# ---- PCK certificates ---------------------------------------------------------------------------------
async def pckcert(req: web.Request) -> web.Response:
    qeid = _hex(req, "qeid", None, max_len=260)
    cpusvn, pcesvn, pceid = _hex(req, "cpusvn", 32), _hex(req, "pcesvn", 4), _hex(req, "pceid", 4)
    enc = _hex(req, "encrypted_ppid", 768, required=False)
    r = await req.app[PCCS_KEY].pckcert(qeid or "", pceid or "", cpusvn or "", pcesvn or "", enc)
    return _ok(req, r["cert"], "application/x-pem-file", {
        "SGX-TCBm": r["tcbm"], "SGX-FMSPC": r["fmspc"], "SGX-PCK-Certificate-CA-Type": r["ca"].upper(),
        "SGX-PCK-Certificate-Issuer-Chain": r["chain"]})


async def pckcerts(req: web.Request) -> web.Response:
    """All of a platform's certificates (with its PPID in each): the user token, as PCS asks an API key."""
    _auth(req, "user")
    pccs = req.app[PCCS_KEY]
    enc = _hex(req, "encrypted_ppid", 768, required=False)
    qeid = _hex(req, "qeid", None, required=False, max_len=260)
    pceid = _hex(req, "pceid", 4)
    platform = (pccs.platforms.by_enc_ppid(enc) if enc else None) or (
        pccs.platforms.get(qeid, pceid or "") if qeid else None)
    if platform is None:
        if pccs.o.mode != "LAZY" or not enc or not qeid:
            raise PccsHttpError(461 if pccs.o.mode != "LAZY" else 404, "an unknown platform needs qeid and "
                                "encrypted_ppid")
        platform = await pccs._fetch_certs({"qe_id": qeid or "", "pce_id": pceid, "enc_ppid": enc})
    from quotehelper.pccs.selection import PckCandidate

    rows = []
    for tcbm, pem in pccs.platforms.certs(platform["qe_id"], platform["pce_id"]):
        c = PckCandidate.from_pem(pem)
        tcb = {f"sgxtcbcomp{i + 1:02d}svn": v for i, v in enumerate(c.ext.cpusvn)}
        rows.append({"tcb": {**tcb, "pcesvn": c.ext.pcesvn}, "tcbm": tcbm, "cert": urllib.parse.quote(pem, safe="")})
    return _ok(req, json.dumps(rows), "application/json", {
        "SGX-FMSPC": platform["fmspc"], "SGX-PCK-Certificate-CA-Type": platform["ca"].upper(),
        "SGX-PCK-Certificate-Issuer-Chain": pccs.platforms.chain(platform["ca"]) or ""})


# ---- PCCS's own routes --------------------------------------------------------------------------------
async def _json_body(req: web.Request) -> object:
    try:
        raw = await req.read()
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise PccsHttpError(400, f"the body is not JSON: {e}") from e


async def post_platforms(req: web.Request) -> web.Response:
    _auth(req, "user")
    body = await _json_body(req)
    if not isinstance(body, dict):
        raise PccsHttpError(400, "the body must be a JSON object")
    p = {k: body.get(k) for k in ("qe_id", "pce_id", "cpu_svn", "pce_svn", "enc_ppid", "platform_manifest")}
    if p["platform_manifest"]:
        raise PccsHttpError(400, "platform manifests (multi-package platforms) are not supported")
    p["platform_manifest"] = None
    for k, size in (("qe_id", None), ("pce_id", 4), ("cpu_svn", 32), ("pce_svn", 4), ("enc_ppid", 768)):
        v = p[k]
        if not isinstance(v, str) or not _HEX.fullmatch(v) or not v or (size and len(v) != size) or len(v) > 768 \
                or (k == "qe_id" and len(v) > 260):
            raise PccsHttpError(400, f"{k} must be {size or ''} hex digits")
        p[k] = v.upper()
    await req.app[PCCS_KEY].register(p)
    return _ok(req, "Operation successful.", "text/plain")


async def get_platforms(req: web.Request) -> web.Response:
    _auth(req, "admin")
    pccs = req.app[PCCS_KEY]
    source = req.query.get("source", "reg")
    if source in ("reg", "reg_na"):
        rows = pccs.registrations.take(0 if source == "reg" else 1)
    elif source.startswith("[") and source.endswith("]"):
        fmspcs = [f.strip().upper() for f in source[1:-1].split(",") if f.strip()]
        rows = pccs.platforms.all(fmspcs or None)
    else:
        raise PccsHttpError(400, "source must be reg, reg_na or [FMSPC,...]")
    keys = ("qe_id", "pce_id", "cpu_svn", "pce_svn", "enc_ppid", "platform_manifest")
    out = [{k: r.get(k) or "" for k in keys} for r in rows]
    return _ok(req, json.dumps(out), "application/json", {"platform-count": str(len(out))})


async def put_platformcollateral(req: web.Request) -> web.Response:
    _auth(req, "admin")
    doc = await _json_body(req)
    try:
        await import_collateral(req.app[PCCS_KEY], doc)
    except ItemRejected as e:
        raise PccsHttpError(460 if "different root" in e.reason else 400, str(e)) from e
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a document of the wrong shape
        raise PccsHttpError(400, f"platformcollateral does not follow the schema: {type(e).__name__}: {e}") from e
    return _ok(req, "Operation successful.", "text/plain")


async def refresh(req: web.Request) -> web.Response:
    _auth(req, "admin")
    kind = req.query.get("type")
    if kind not in (None, "certs"):
        raise PccsHttpError(400, "type must be certs")
    fmspcs = [f.upper() for f in req.query.get("fmspc", "").split(",") if f] or None
    result = await req.app[PCCS_KEY].refresh(certs=kind == "certs", fmspcs=fmspcs)
    return _ok(req, json.dumps(result), "application/json")


async def metrics(req: web.Request) -> web.Response:
    return web.Response(body=generate_latest(req.app[PCCS_KEY].metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---- middleware ---------------------------------------------------------------------------------------
@web.middleware
async def _frame(req: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    rid = req.headers.get("Request-ID") or uuid.uuid4().hex
    route = req.match_info.route.resource.canonical if req.match_info.route.resource else "unknown"
    try:
        resp = await handler(req)
    except PccsHttpError as e:
        resp = web.Response(text=TEXT.get(e.status, "Error."), status=e.status, content_type="text/plain")
        if e.status >= 500:
            log.warning("%s %s: %s", e.status, req.path, e.detail)  # upstream details stay in the log
        elif e.detail:
            resp.headers["Error-Message"] = e.detail[:500].replace("\n", " ")
        if e.status == 503:
            resp.headers["Retry-After"] = "30"
    except web.HTTPException as e:
        resp = web.Response(text=e.reason or "", status=e.status, content_type="text/plain")
    except Exception:
        log.exception("internal error on %s", req.path_qs)
        resp = web.Response(text=TEXT[500], status=500, content_type="text/plain")
    resp.headers["Request-ID"] = rid[:64]
    req.app[PCCS_KEY].metrics.requests.labels(route, str(resp.status)).inc()
    return resp


def make_app(pccs: Pccs) -> web.Application:
    app = web.Application(middlewares=[_frame], client_max_size=MAX_BODY)
    app[PCCS_KEY] = pccs

    async def _close(_app: web.Application) -> None:
        await pccs.close()
    app.on_cleanup.append(_close)
    v = "/{tee:sgx|tdx}/certification/v{version:3|4}"
    sgx = "/sgx/certification/v{version:3|4}"
    app.router.add_get(v + "/tcb", tcb)
    app.router.add_get(v + "/{which:qe|qve}/identity", identity)
    app.router.add_get(v + "/tcbevaluationdatanumbers", evalnums)
    app.router.add_get(sgx + "/pckcrl", pckcrl)
    app.router.add_get(sgx + "/rootcacrl", rootcacrl)
    app.router.add_get(sgx + "/crl", crl)
    app.router.add_get(sgx + "/pckcert", pckcert)
    app.router.add_get(sgx + "/pckcerts", pckcerts)
    app.router.add_post(sgx + "/platforms", post_platforms)
    app.router.add_get(sgx + "/platforms", get_platforms)
    app.router.add_put(sgx + "/platformcollateral", put_platformcollateral)
    app.router.add_get(sgx + "/refresh", refresh)
    app.router.add_post(sgx + "/refresh", refresh)
    app.router.add_get("/metrics", metrics)
    return app
