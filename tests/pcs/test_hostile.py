"""What a hostile or broken collateral service or quote can do to the client, and must not: the review's
findings, each with its right value (a named error, exit 2, nothing cached, no request it chose)."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web
from click.testing import CliRunner

from quotehelper.cli import main
from quotehelper.pcs import CollateralCache, CollateralClient, PcsCode, PcsError, PcsOptions
from quotehelper.platform.sim import SimPlatform
from quotehelper.platform.sim.tcbeval import recover
from quotehelper.verify import Verifier
from tests.conftest import TESTDATA
from tests.pcs.conftest import Faults, ServerThread, counting, fault_proxy
from tests.pcs.test_client import client


def test_a_body_arriving_in_pieces_is_read_whole(proxied) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route = "split", "/tcb"
    f = client(env, proxy.url).fetch(env.quote)
    assert faults.hits == 1 and env.verifier().verify(env.quote, f.collateral).valid


def test_tdx_collateral_is_checked_and_nothing_unverified_is_cached(sim_env, tmp_path) -> None:
    """A TDX quote (real, Intel-signed) against a service answering with collateral of another root."""
    faults = Faults(mode="rewritten", rewrite=lambda p: p.replace("/tdx/", "/sgx/").replace(
        "fmspc=00806F050000", "fmspc=00906ED50000"))
    proxy = ServerThread(fault_proxy(sim_env.url, faults))
    cache = CollateralCache(tmp_path / "c")
    try:
        quote = (TESTDATA / "zkdcap/quote_tdx_00806f050000.dat").read_bytes()
        with pytest.raises(PcsError) as e:
            CollateralClient(PcsOptions(base_url=proxy.url), cache=cache).fetch(quote)  # Intel's root
        assert e.value.code is PcsCode.VERIFICATION_FAILED and "ROOT_NOT_TRUSTED" in e.value.message
        assert cache.keys() == []
    finally:
        proxy.stop()


def test_a_quote_cannot_choose_where_the_root_crl_is_fetched(sim_env, tmp_path) -> None:
    evil_log: list[str] = []
    evil = ServerThread(counting(web.Application(), evil_log))
    try:
        bad = SimPlatform.create(tmp_path / "evil" / "p", pcs_url=evil.url + "/internal-service")
        faults = Faults(mode="status", route="/rootcacrl", status=500)  # force the distribution-point fallback
        proxy = ServerThread(fault_proxy(sim_env.url, faults))
        try:
            with pytest.raises(PcsError):
                client(sim_env, proxy.url).fetch(bad.quote(b"evil"))  # trusts the good root only
        finally:
            proxy.stop()
        assert evil_log == []
    finally:
        evil.stop()


def test_a_pck_crl_of_the_other_ca_is_refused_and_not_cached(proxied, tmp_path) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route, faults.rewrite = "rewritten", "/pckcrl", lambda p: p.replace("ca=processor", "ca=platform")
    cache = CollateralCache(tmp_path / "c")
    with pytest.raises(PcsError) as e:
        client(env, proxy.url, cache).fetch(env.quote)
    assert e.value.code is PcsCode.VERIFICATION_FAILED and "not the processor CA" in e.value.message
    assert cache.keys() == []


def test_an_older_evaluation_never_replaces_a_newer_cached_one(proxied, tmp_path) -> None:
    env, proxy, faults = proxied
    now = [time.time()]
    cache = CollateralCache(tmp_path / "c")

    def status() -> tuple[str, tuple[str, ...]]:
        c = CollateralClient(PcsOptions(base_url=proxy.url, timeout_s=3), cache=cache, verifier=env.verifier(),
                             clock=lambda: now[0])
        f = c.fetch(env.quote)
        return env.verifier().verify(env.quote, f.collateral, now=now[0]).status, f.warnings

    recover(env.platform.pki_dir)
    assert status()[0] == "OutOfDate"  # evaluation 18 cached
    # a lagging replica: answers standard with evaluation 17
    faults.mode, faults.route = "rewritten", "/tcb"
    faults.rewrite = lambda p: p.replace("update=standard", "tcbEvaluationDataNumber=17")
    now[0] += 3700
    st, warnings = status()
    assert st == "OutOfDate" and any("older one than the cached copy" in w for w in warnings)


def test_redirects_are_not_followed_and_the_api_key_stays(proxied) -> None:
    env, proxy, faults = proxied
    other = Faults()
    elsewhere = ServerThread(fault_proxy(env.url, other))
    try:
        faults.mode, faults.route, faults.location = "redirect", "/tcb", elsewhere.url + "/sgx/certification/v4/tcb"
        with pytest.raises(PcsError) as e:
            client(env, proxy.url, api_key="SECRET").fetch(env.quote)
        assert e.value.code is PcsCode.HTTP_ERROR and "redirect" in e.value.message
        assert other.seen_headers == []
    finally:
        elsewhere.stop()


@pytest.mark.parametrize("value", ["0", "Thu, 01 Jan 1970 00:00:00 GMT", "²"])
def test_retry_after_zero_past_or_odd_does_not_hammer(proxied, value) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route, faults.extra_headers = "headers_only", "/tcb", {"Retry-After": value}
    faults.body = None
    faults.mode = "status"
    faults.status = 429

    async def _never(*_a):  # noqa: ANN202
        raise AssertionError

    app_faults = faults
    app_faults.extra_headers = {"Retry-After": value}
    with pytest.raises(PcsError) as e:
        client(env, proxy.url, timeout_s=2).fetch(env.quote)
    assert e.value.code in (PcsCode.UNAVAILABLE, PcsCode.TIMEOUT)
    assert faults.hits <= 25  # backoff of at least 0.2 s (full jitter), not thousands in 2 s


def test_hostile_bodies_and_headers_are_named(proxied) -> None:
    env, proxy, faults = proxied
    faults.mode, faults.route = "replace_body", "/qe/identity"
    faults.body = lambda _: b'{"enclaveIdentity":' + b"[" * 20000 + b"]" * 20000 + b',"signature":"00"}'
    with pytest.raises(PcsError) as e:
        client(env, proxy.url).fetch(env.quote)
    assert e.value.code is PcsCode.BAD_RESPONSE
    faults.mode, faults.extra_headers = "headers_only", {"X-Big": "a" * 20000}
    with pytest.raises(PcsError) as e:
        client(env, proxy.url).fetch(env.quote)
    assert e.value.code is PcsCode.BAD_RESPONSE


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999", "ftp://x"])
def test_bad_service_urls_exit_2(sim_env, tmp_path, url) -> None:
    q = tmp_path / "q.bin"
    q.write_bytes(sim_env.quote)
    r = CliRunner().invoke(main, ["verify", str(q), "--pccs-url", url])
    assert r.exit_code == 2 and "BAD_OPTION" in r.output and "Traceback" not in r.output


def test_batch_counts_damaged_quotes_as_invalid_when_fetching(sim_env, tmp_path) -> None:
    d = tmp_path / "quotes"
    d.mkdir()
    (d / "good.bin").write_bytes(sim_env.quote)
    (d / "truncated.bin").write_bytes(sim_env.quote[:600])
    root = tmp_path / "root.pem"
    root.write_bytes(sim_env.platform.root_ca_pem())
    r = CliRunner().invoke(main, ["verify", "--batch", str(d), "--pccs-url", sim_env.url, "--root-ca", str(root)])
    rows = {json.loads(x)["file"].rsplit("/", 1)[1]: json.loads(x) for x in r.stdout.splitlines()}
    assert r.exit_code == 1 and rows["good.bin"]["valid"] and not rows["truncated.bin"]["valid"]
    assert "1 accepted" in r.stderr and "1 invalid" in r.stderr


def test_single_damaged_quote_is_invalid_not_a_fetch_error(sim_env, tmp_path) -> None:
    q = tmp_path / "q.bin"
    q.write_bytes(sim_env.quote[:600])
    r = CliRunner().invoke(main, ["verify", str(q), "--pccs-url", sim_env.url])
    assert r.exit_code == 1 and "QUOTE_MALFORMED" in r.output


def test_conflicting_options_are_refused(sim_env, tmp_path) -> None:
    q = tmp_path / "q.bin"
    q.write_bytes(sim_env.quote)
    coll = tmp_path / "c.json"
    coll.write_text(sim_env.platform.collateral().to_dcap_qvl_json())
    r = CliRunner().invoke(main, ["verify", str(q), "--collateral", str(coll), "--pccs-url", sim_env.url])
    assert r.exit_code == 2 and "--collateral reads files" in r.output
    r = CliRunner().invoke(main, ["verify", str(q), "--collateral", str(coll), "--jobs", "2"])
    assert r.exit_code == 2 and "--jobs goes with --batch" in r.output


def test_pcs_serve_refuses_non_ascii_digits(sim_env) -> None:
    from tests.pcs.test_sim_pcs import _get

    url = sim_env.url + "/sgx/certification/v4/tcb?fmspc=00906ED50000&tcbEvaluationDataNumber=%C2%B2"
    assert _get(url)[0] == 400
    assert _get(sim_env.url + "/sgx/certification/v4/qe/identity?tcbEvaluationDataNumber=%D9%A1%D9%A7")[0] == 400
    _ = Verifier
