"""The collateral client against the simulated PCS through a fault-injecting proxy: every fault is a named
error (exit 2 from the CLI), nothing bad is ever cached, and a later good answer is used; the cache,
its refresh and offline mode; a TCB recovery end to end."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time

import pytest
from click.testing import CliRunner

from quotehelper.cli import main
from quotehelper.pcs import CollateralCache, CollateralClient, PcsCode, PcsError, PcsOptions
from quotehelper.platform.sim import SimPlatform
from quotehelper.platform.sim.tcbeval import recover
from tests.pcs.conftest import Faults, ServerThread, fault_proxy


def client(env, url: str, cache=None, **options) -> CollateralClient:
    return CollateralClient(PcsOptions(base_url=url, **options), cache=cache, verifier=env.verifier())


def test_fetch_gets_what_the_quote_needs_and_it_verifies(sim_env) -> None:
    f = client(sim_env, sim_env.url).fetch(sim_env.quote)
    v = sim_env.verifier().verify(sim_env.quote, f.collateral)
    assert v.valid and v.status == "UpToDate" and f.fmspc == "00906ED50000" and f.ca == "processor"
    assert set(f.sources.values()) == {"network"} and f.tcb_evaluation_data_number == 17
    assert sorted(sim_env.requests) == sorted([
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der",
        "/sgx/certification/v4/tcb?fmspc=00906ED50000&update=standard",
        "/sgx/certification/v4/qe/identity?update=standard", "/sgx/certification/v4/rootcacrl"])


def test_platform_ca_quote_fetches_the_platform_crl(make_sim_env) -> None:
    env = make_sim_env(ca="platform")
    f = client(env, env.url).fetch(env.quote)
    assert f.ca == "platform" and "ca=platform" in f.urls["pck_crl"]
    assert env.verifier().verify(env.quote, f.collateral).valid


def test_server_down_is_unavailable_within_the_deadline(sim_env, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cache = CollateralCache(tmp_path / "cache")
    start = time.monotonic()
    with pytest.raises(PcsError) as e:
        client(sim_env, f"http://127.0.0.1:{port}", cache, timeout_s=1.0).fetch(sim_env.quote)
    assert e.value.code is PcsCode.UNAVAILABLE and f"127.0.0.1:{port}" in e.value.message
    assert time.monotonic() - start < 30  # bounded by the deadline, not hanging
    assert cache.keys() == []


def test_unknown_fmspc_names_the_fmspc_the_url_and_404(tmp_path, sim_env) -> None:
    other = SimPlatform.create(tmp_path / "elsewhere-pki" / "p", fmspc=bytes.fromhex("00606A000000"))
    q = other.quote(b"x")
    with pytest.raises(PcsError) as e:
        CollateralClient(PcsOptions(base_url=sim_env.url)).fetch(q)
    assert e.value.code is PcsCode.NOT_FOUND and e.value.detail["status"] == 404
    assert e.value.message.startswith("no TCB info for FMSPC 00606A000000 at http://127.0.0.1:")
    assert e.value.message.endswith(": 404")


def test_503_then_success_is_retried(proxied, tmp_path) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route, faults.times, faults.status = "status", "/tcb", 2, 503
    f = client(env, proxy.url, CollateralCache(tmp_path / "c")).fetch(env.quote)
    assert faults.hits == 2 and f.sources["tcb_info"] == "network"


def test_429_with_retry_after_is_honoured(proxied) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route, faults.times, faults.delay_s = "retry_after", "/qe/identity", 1, 1
    start = time.monotonic()
    client(env, proxy.url).fetch(env.quote)
    assert faults.hits == 1 and time.monotonic() - start >= 1.0  # waited as told (a lower bound, not a timing)


def test_429_retry_after_past_the_deadline_fails_at_once(proxied) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route, faults.delay_s = "retry_after", "/qe/identity", 3600
    with pytest.raises(PcsError) as e:
        client(env, proxy.url, timeout_s=2).fetch(env.quote)
    assert e.value.code is PcsCode.UNAVAILABLE and "Retry-After 3600 s is past the deadline" in e.value.message


def _cli(env, url: str, cache) -> tuple[int, str]:
    root = env.platform.platform_dir.parent / "root.pem"
    root.write_bytes(env.platform.root_ca_pem())
    qfile = env.platform.platform_dir.parent / "q.bin"
    qfile.write_bytes(env.quote)
    r = CliRunner().invoke(main, ["verify", str(qfile), "--pccs-url", url, "--root-ca", str(root),
                                  "--cache", str(cache), "--timeout", "3"])
    return r.exit_code, r.output


def _bad_signature(body: bytes) -> bytes:
    d = json.loads(body)
    sig = d["signature"]
    d["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    return ('{"tcbInfo":' + json.dumps(d["tcbInfo"], separators=(",", ":")) + ',"signature":"' + d["signature"]
            + '"}').encode()


def _expired_tcb_info(env):
    from quotehelper.platform.sim.collateral import signed_body, tcb_info, tcb_levels

    ev_levels = tcb_levels(env.platform.cpu.cpu_svn, int(env.platform.config["pce_svn"]), "UpToDate", [])
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    body = signed_body(env.platform.pki, "tcbInfo", tcb_info(fmspc=env.platform.fmspc, pce_id=bytes(2),
                                                             levels=ev_levels, now=old)).encode()
    return lambda _: body


def _other_fmspc(env):
    from quotehelper.platform.sim.collateral import signed_body, tcb_info, tcb_levels

    levels = tcb_levels(env.platform.cpu.cpu_svn, int(env.platform.config["pce_svn"]), "UpToDate", [])
    body = signed_body(env.platform.pki, "tcbInfo", tcb_info(fmspc=bytes.fromhex("00A067110000"), pce_id=bytes(2),
                                                             levels=levels, now=dt.datetime.now(dt.UTC))).encode()
    return lambda _: body


FAULTS = {
    "truncated body": (dict(mode="truncate", route="/tcb"), PcsCode.UNAVAILABLE, "body truncated"),
    "bad signature": (dict(mode="replace_body", route="/tcb", body=_bad_signature), PcsCode.VERIFICATION_FAILED,
                      "TCB_INFO_SIGNATURE_INVALID"),
    "not JSON": (dict(mode="replace_body", route="/qe/identity", body=lambda b: b[:-7]), PcsCode.BAD_RESPONSE,
                 "QE identity from http://"),
    "no issuer chain header": (dict(mode="replace_headers", route="/pckcrl",
                                    headers=lambda h: {k: v for k, v in h.items() if "Chain" not in k}),
                               PcsCode.BAD_RESPONSE, "lacks the SGX-PCK-CRL-Issuer-Chain header"),
    "slower than the deadline": (dict(mode="slow", route="/rootcacrl", delay_s=6), PcsCode.TIMEOUT, "rootcacrl"),
    "500": (dict(mode="status", route="/pckcrl", status=500), PcsCode.HTTP_ERROR, "HTTP 500"),
}


@pytest.mark.parametrize("name", [*FAULTS, "expired TCB info", "TCB info of another FMSPC"])
def test_fault_is_named_nothing_is_cached_and_a_later_good_answer_is_used(proxied, tmp_path, name) -> None:
    env, proxy, faults = proxied
    if name == "expired TCB info":
        setup, code, text = dict(mode="replace_body", route="/tcb", body=_expired_tcb_info(env)), \
            PcsCode.VERIFICATION_FAILED, "TCB_INFO_EXPIRED"
    elif name == "TCB info of another FMSPC":
        setup, code, text = dict(mode="replace_body", route="/tcb", body=_other_fmspc(env)), \
            PcsCode.VERIFICATION_FAILED, "TCB_INFO_MISMATCH: fmspc is '00A067110000', asked for '00906ED50000'"
    else:
        setup, code, text = FAULTS[name]
    for k, v in setup.items():
        setattr(faults, k, v)
    cache = CollateralCache(tmp_path / "cache")
    with pytest.raises(PcsError) as e:
        client(env, proxy.url, cache, timeout_s=3).fetch(env.quote)
    assert e.value.code is code and text in e.value.message, e.value.message
    assert cache.keys() == []  # nothing, not even the good items of the same bundle
    faults.hits = 0
    exit_code, out = _cli(env, proxy.url, tmp_path / "cache")
    assert exit_code == 2 and f"error: {code.value}" in out and "Traceback" not in out
    faults.mode = "pass"
    f = client(env, proxy.url, cache).fetch(env.quote)
    assert set(f.sources.values()) == {"network"} and len(cache.keys()) == 4
    assert _cli(env, proxy.url, tmp_path / "cache")[0] == 0


def test_cache_serves_while_valid_refreshes_when_due_and_keeps_the_copy_if_refresh_fails(proxied, tmp_path) -> None:
    env, proxy, faults = proxied
    now = [time.time()]
    cache = CollateralCache(tmp_path / "cache")

    def c(**kw) -> CollateralClient:
        return CollateralClient(PcsOptions(base_url=proxy.url, timeout_s=2, **kw), cache=cache,
                                verifier=env.verifier(), clock=lambda: now[0])

    assert set(c().fetch(env.quote).sources.values()) == {"network"}
    n = len(env.requests)
    assert set(c().fetch(env.quote).sources.values()) == {"cache"} and len(env.requests) == n
    now[0] += 3601  # past refresh_after (1 h): fetched again
    assert set(c().fetch(env.quote).sources.values()) == {"network"}
    now[0] += 3601
    faults.mode, faults.status = "status", 503  # service down: the valid cached copies are used, and said so
    f = c().fetch(env.quote)
    assert set(f.sources.values()) == {"cache (refresh failed: UNAVAILABLE)"} and len(f.warnings) == 4
    assert env.verifier().verify(env.quote, f.collateral).valid
    now[0] += 40 * 86400  # past every nextUpdate: nothing valid is left to serve
    with pytest.raises(PcsError) as e:
        c().fetch(env.quote)
    assert e.value.code is PcsCode.UNAVAILABLE


def test_offline_uses_only_the_cache(sim_env, tmp_path) -> None:
    cache = CollateralCache(tmp_path / "cache")
    with pytest.raises(PcsError) as e:
        client(sim_env, sim_env.url, cache, offline=True).fetch(sim_env.quote)
    assert e.value.code is PcsCode.NOT_CACHED and "offline" in e.value.message
    client(sim_env, sim_env.url, cache).fetch(sim_env.quote)
    n = len(sim_env.requests)
    f = client(sim_env, "http://192.0.2.1:1", cache, offline=True).fetch(sim_env.quote)  # never contacted
    assert set(f.sources.values()) == {"cache"} and len(sim_env.requests) == n


def test_tcb_recovery_end_to_end(sim_env, tmp_path) -> None:
    now = [time.time()]
    cache = CollateralCache(tmp_path / "cache")

    def verdict(**kw):
        c = CollateralClient(PcsOptions(base_url=sim_env.url, **kw), cache=cache, verifier=sim_env.verifier(),
                             clock=lambda: now[0])
        return sim_env.verifier().verify(sim_env.quote, c.fetch(sim_env.quote).collateral, now=now[0])

    assert verdict().status == "UpToDate"
    assert recover(sim_env.platform.pki_dir) == 18
    assert verdict().status == "UpToDate"  # the cached evaluation 17, not yet due for a refresh
    now[0] += 3601
    v = verdict()
    assert (v.status, v.advisory_ids, v.tcb_evaluation_data_number) == ("OutOfDate", ("INTEL-SA-01153",), 18)
    old = verdict(tcb_evaluation_data_number=17)
    assert (old.status, old.tcb_evaluation_data_number) == ("UpToDate", 17)


def test_update_early_sees_a_recovery_before_standard(sim_env) -> None:
    recover(sim_env.platform.pki_dir, early_only=True)

    def status(update: str) -> str:
        coll = client(sim_env, sim_env.url, update=update).fetch(sim_env.quote).collateral
        return sim_env.verifier().verify(sim_env.quote, coll).status

    assert (status("standard"), status("early")) == ("UpToDate", "OutOfDate")


def test_self_signed_pccs_refused_without_the_ca_bundle_accepted_with_it(sim_env, tmp_path) -> None:
    import ssl

    from quotehelper.pcs.simserver import SimPcsConfig, make_app
    from tests.pcs.tls import self_signed

    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = ServerThread(make_app(SimPcsConfig(sim_env.platform.pki_dir)), ctx)
    try:
        with pytest.raises(PcsError) as e:
            client(sim_env, server.url).fetch(sim_env.quote)
        assert e.value.code is PcsCode.TLS_UNTRUSTED and "--ca-bundle" in e.value.message
        assert client(sim_env, server.url, ca_bundle=str(cert)).fetch(sim_env.quote).collateral
        assert client(sim_env, server.url, insecure=True).fetch(sim_env.quote).collateral
    finally:
        server.stop()


def test_batch_fetches_once_per_fmspc_and_ca(sim_env, tmp_path) -> None:
    qdir = tmp_path / "quotes"
    qdir.mkdir()
    for i in range(5):
        (qdir / f"q{i}.bin").write_bytes(sim_env.platform.quote(bytes([i]) * 64))
    (tmp_path / "root.pem").write_bytes(sim_env.platform.root_ca_pem())
    r = CliRunner().invoke(main, ["verify", "--batch", str(qdir), "--pccs-url", sim_env.url, "--root-ca",
                                  str(tmp_path / "root.pem"), "--jobs", "2"])
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 0 and len(lines) == 5 and all(x["valid"] for x in lines)
    assert len(sim_env.requests) == 4


def test_root_crl_from_the_roots_distribution_point_when_the_service_has_no_rootcacrl(tmp_path) -> None:
    from quotehelper.pcs.simserver import SimPcsConfig, make_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plat = SimPlatform.create(tmp_path / "p", pcs_url=f"http://127.0.0.1:{port}")  # the CDPs name this server
    log: list[str] = []
    from tests.pcs.conftest import counting

    pcs = ServerThread(counting(make_app(SimPcsConfig(plat.pki_dir)), log), port=port)
    faults = Faults(mode="status", route="/rootcacrl", status=404)  # an Intel-PCS-like service: no such route
    proxy = ServerThread(fault_proxy(pcs.url, faults))
    try:
        from quotehelper.verify import TrustAnchor, Verifier, VerifyOptions

        v = Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),)))
        f = CollateralClient(PcsOptions(base_url=proxy.url), verifier=v).fetch(plat.quote(b"cdp"))
        assert f.urls["root_ca_crl"] == f"http://127.0.0.1:{port}/IntelSGXRootCA.der"
        assert "/IntelSGXRootCA.der" in log and v.verify(plat.quote(b"cdp"), f.collateral).valid
    finally:
        proxy.stop()
        pcs.stop()


def test_collateral_fetch_writes_what_verify_and_dcap_qvl_read(sim_env, tmp_path) -> None:
    import dcap_qvl

    q = tmp_path / "q.bin"
    q.write_bytes(sim_env.quote)
    root = tmp_path / "root.pem"
    root.write_bytes(sim_env.platform.root_ca_pem())
    r = CliRunner().invoke(main, ["collateral", "fetch", str(q), "--pccs-url", sim_env.url, "--root-ca", str(root),
                                  "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["verify", str(q), "--collateral", str(tmp_path / "out" / "pcs"), "--root-ca",
                                  str(root)])
    assert r.exit_code == 0 and "OK UpToDate" in r.output
    r = CliRunner().invoke(main, ["collateral", "fetch", str(q), "--pccs-url", sim_env.url, "--root-ca", str(root),
                                  "-o", "-"])
    coll = dcap_qvl.QuoteCollateralV3.from_json(r.stdout)
    got = dcap_qvl.verify_with_root_ca(sim_env.quote, coll, sim_env.platform.root_ca_der(), int(time.time()))
    assert got.status == "UpToDate"
