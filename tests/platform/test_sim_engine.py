"""The simulated QE3 engine: QuotingEngine behaviour, quote contents, errors, qe_report_info, key life."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from quotehelper.platform.engine import QuoteError, QuoteErrorCode
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension
from quotehelper.sgx.quote import INTEL_QE_AUTH_DATA, INTEL_QE_VENDOR_ID, parse_quote
from quotehelper.sgx.structs import (
    ALG_ECDSA_P384,
    DEFAULT_ECDSA_ATT_KEY_ID,
    INTEL_QE3_DEBUG_MRSIGNER,
    INTEL_QE3_MRSIGNER,
    AttKeyId,
    QeReportInfo,
    Report,
    TargetInfo,
)

KEY = DEFAULT_ECDSA_ATT_KEY_ID


def _verify_raw(pub: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> None:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub.verify(der, data, ec.ECDSA(hashes.SHA256()))


def _xy_key(xy: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)


def _code(excinfo: pytest.ExceptionInfo[QuoteError]) -> QuoteErrorCode:
    return excinfo.value.code


@pytest.fixture()
def fresh(make_platform, tmp_path: Path, sim_pki) -> SimPlatform:
    return SimPlatform.create(tmp_path / "plat", pki_dir=sim_pki.pki_dir)


def test_not_initialized_before_init_quote(fresh: SimPlatform) -> None:
    eng = fresh.engine()
    assert eng.supported_att_key_ids() == [KEY]
    with pytest.raises(QuoteError) as e:
        eng.quote_size(KEY)
    assert _code(e) is QuoteErrorCode.ATT_KEY_NOT_INITIALIZED
    app = fresh.enclave()
    with pytest.raises(QuoteError) as e:
        eng.get_quote(app.report(eng.target_info()).to_bytes(), KEY)
    assert _code(e) is QuoteErrorCode.ATT_KEY_NOT_INITIALIZED
    assert not (fresh.platform_dir / "attestation_key.sealed").exists()


def test_quote_contents(platform: SimPlatform) -> None:
    eng = platform.engine()
    qe_target, pub_key_id = eng.init_quote(KEY)
    assert qe_target.mr_enclave != bytes(32) and qe_target.attributes.flags == 0x15
    app = platform.enclave(mr_enclave=b"\x01" * 32, mr_signer=b"\x02" * 32, isv_prod_id=7, isv_svn=3)
    report = app.report(qe_target, b"nonce-123")
    quote, info = eng.get_quote(report.to_bytes(), KEY)
    assert info is None
    assert eng.quote_size(KEY) == len(quote)
    q = parse_quote(quote)
    assert q.to_bytes() == quote and len(quote) == 1052 + len(q.certification_data.data)
    h = q.header
    assert (h.version, h.att_key_type, h.tee_type, h.qe_svn, h.pce_svn) == (3, 2, 0, 8, 13)
    assert h.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert h.user_data == platform.qe_id + bytes(4)
    assert q.report_body.to_bytes() == report.body.to_bytes()  # the app report body verbatim
    sig = q.signature
    qe = sig.qe
    assert (qe.qe_report.mr_signer, qe.qe_report.isv_prod_id, qe.qe_report.misc_select) == (INTEL_QE3_MRSIGNER, 1, 0)
    assert qe.qe_report.attributes.flags == 0x15 and qe.qe_report.isv_svn == 8
    assert qe.qe_auth_data == INTEL_QE_AUTH_DATA
    assert qe.qe_report.report_data == hashlib.sha256(sig.attest_pub_key + INTEL_QE_AUTH_DATA).digest() + bytes(32)
    assert pub_key_id == qe.qe_report.report_data[:32]
    # Type 5: PEM leaf ‖ CA ‖ root, NUL-terminated.
    cd = qe.certification_data
    assert cd.type == 5 and cd.data.endswith(b"-----END CERTIFICATE-----\n\0")
    chain = [x509.load_pem_x509_certificate(c) for c in cd.pck_chain_pem()]
    assert len(chain) == 3 and "SGX PCK Certificate" in chain[0].subject.rfc4514_string()
    assert chain[2].public_bytes(Encoding.DER) == platform.root_ca_der()
    ext = PckExtension.parse(chain[0].extensions.get_extension_for_oid(
        x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value)
    assert ext.fmspc == platform.fmspc and ext.cpusvn == q.report_body.cpu_svn and ext.pcesvn == 13
    # Signatures: QE report by the PCK key, header ‖ body by the attestation key.
    _verify_raw(chain[0].public_key(), qe.qe_report_signature, qe.qe_report.to_bytes())
    _verify_raw(_xy_key(sig.attest_pub_key), sig.isv_signature, quote[:432])


def test_invalid_report_mac_and_other_target(platform: SimPlatform) -> None:
    eng = platform.engine()
    qe_target, _ = eng.init_quote(KEY)
    app = platform.enclave()
    good = app.report(qe_target, b"a").to_bytes()
    eng.get_quote(good, KEY)  # sanity
    bad_mac = good[:416] + bytes([good[416] ^ 0x80]) + good[417:]
    with pytest.raises(QuoteError) as e:
        eng.get_quote(bad_mac, KEY)
    assert _code(e) is QuoteErrorCode.INVALID_REPORT
    tampered = bytearray(good)
    tampered[320] ^= 1  # report_data changed after EREPORT
    with pytest.raises(QuoteError) as e:
        eng.get_quote(bytes(tampered), KEY)
    assert _code(e) is QuoteErrorCode.INVALID_REPORT
    # A report made for another enclave (here: the app itself) fails the same way.
    other = app.report(app.target_info(), b"a").to_bytes()
    with pytest.raises(QuoteError) as e:
        eng.get_quote(other, KEY)
    assert _code(e) is QuoteErrorCode.INVALID_REPORT
    # So does a report targeted at a QE with different attributes (target info not the QE's).
    wrong_attr = replace(qe_target, attributes=replace(qe_target.attributes, xfrm=0x3))
    with pytest.raises(QuoteError) as e:
        eng.get_quote(app.report(wrong_attr, b"a").to_bytes(), KEY)
    assert _code(e) is QuoteErrorCode.INVALID_REPORT


def test_report_from_another_platform_is_invalid(platform: SimPlatform, make_platform) -> None:
    other = make_platform("other-machine")
    qe_target, _ = platform.engine().init_quote(KEY)
    foreign = other.enclave().report(qe_target, b"x").to_bytes()
    with pytest.raises(QuoteError) as e:
        platform.engine().get_quote(foreign, KEY)
    assert _code(e) is QuoteErrorCode.INVALID_REPORT


def test_bad_sizes_and_key_ids(platform: SimPlatform) -> None:
    eng = platform.engine()
    qe_target, _ = eng.init_quote(KEY)
    good = platform.enclave().report(qe_target).to_bytes()
    for bad in (good[:431], good + b"\0", b"", None, 432):
        with pytest.raises(QuoteError) as e:
            eng.get_quote(bad, KEY)
        assert _code(e) is QuoteErrorCode.INVALID_PARAMETER
    for info in (bytes(959), bytes(961), "x" * 960):
        with pytest.raises(QuoteError) as e:
            eng.get_quote(good, KEY, info)
        assert _code(e) is QuoteErrorCode.INVALID_PARAMETER
    unsupported = [replace(KEY, algorithm_id=ALG_ECDSA_P384), replace(KEY, algorithm_id=0),
                   replace(KEY, config_id=b"\x01" + bytes(63))]
    invalid = [replace(KEY, mrsigner=INTEL_QE3_DEBUG_MRSIGNER + bytes(16)), replace(KEY, prod_id=2),
               replace(KEY, mrsigner_length=48), replace(KEY, version=1), replace(KEY, id=1)]
    for key_id, code in [(k, QuoteErrorCode.UNSUPPORTED_ATT_KEY_ID) for k in unsupported] + \
                        [(k, QuoteErrorCode.INVALID_PARAMETER) for k in invalid] + \
                        [(KEY.to_bytes(), QuoteErrorCode.INVALID_PARAMETER)]:
        for call in (lambda k: eng.init_quote(k), lambda k: eng.quote_size(k), lambda k: eng.get_quote(good, k)):
            with pytest.raises(QuoteError) as e:
                call(key_id)
            assert _code(e) is code, key_id
    # spid and att_key_type are outside the 158 compared bytes: still the default key.
    assert eng.init_quote(AttKeyId.parse(KEY.to_bytes()[:158] + b"\x05" * 98))[0] == qe_target


def test_qe_report_info(platform: SimPlatform) -> None:
    eng = platform.engine()
    qe_target, _ = eng.init_quote(KEY)
    app = platform.enclave(mr_enclave=b"\x33" * 32, config_svn=4, config_id=b"\x44" * 64)
    nonce = bytes(range(16))
    info_in = QeReportInfo(nonce, app.target_info()).to_bytes()
    quote, info_out = eng.get_quote(app.report(qe_target, b"q").to_bytes(), KEY, info_in)
    assert info_out is not None and len(info_out) == 960 and info_out[:528] == info_in[:528]
    qe_report = Report.parse(info_out[528:])
    assert qe_report.body.report_data == hashlib.sha256(nonce + quote).digest() + bytes(32)
    assert qe_report.body.mr_enclave == qe_target.mr_enclave
    assert app.verify_report(qe_report)  # the app enclave can check the QE's report
    assert not platform.enclave().verify_report(qe_report)  # nobody else can
    parsed = QeReportInfo.parse(info_out)
    assert parsed.qe_report == qe_report and parsed.app_enclave_target_info == app.target_info()


def test_key_persists_across_reopen_and_processes_agree(fresh: SimPlatform) -> None:
    _, pk1 = fresh.engine().init_quote(KEY)
    sealed = (fresh.platform_dir / "attestation_key.sealed").read_bytes()
    again = SimPlatform.open(fresh.platform_dir).engine()
    assert again.quote_size(KEY) == fresh.engine().quote_size(KEY)  # no 42 after a restart
    assert again.init_quote(KEY)[1] == pk1
    assert (fresh.platform_dir / "attestation_key.sealed").read_bytes() == sealed
    # The sealed blob does not contain the key in the clear and is bound to this platform's secret.
    assert b"PRIVATE KEY" not in sealed


def test_concurrent_first_init_gives_one_key(make_platform, sim_pki, tmp_path: Path) -> None:
    plat_dir = tmp_path / "race"
    SimPlatform.create(plat_dir, pki_dir=sim_pki.pki_dir)
    engines = [SimPlatform.open(plat_dir).engine() for _ in range(4)]
    results: list[bytes] = []
    barrier = threading.Barrier(len(engines))

    def run(eng) -> None:
        barrier.wait()
        results.append(eng.init_quote(KEY)[1])

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert SimPlatform.open(plat_dir).engine().init_quote(KEY)[1] == results[0]


def test_corrupt_sealed_key_is_reported(fresh: SimPlatform) -> None:
    fresh.engine().init_quote(KEY)
    path = fresh.platform_dir / "attestation_key.sealed"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(QuoteError) as e:
        SimPlatform.open(fresh.platform_dir).engine().quote_size(KEY)
    assert _code(e) is QuoteErrorCode.ATT_KEY_CERT_DATA_INVALID


def test_quote_convenience_and_target_info_type(platform: SimPlatform) -> None:
    enc = platform.enclave(isv_svn=5)
    q = parse_quote(platform.quote(b"hi", enc))
    assert q.report_body.isv_svn == 5 and q.report_body.report_data == b"hi".ljust(64, b"\0")
    assert isinstance(platform.engine().target_info(), TargetInfo)


def _init_in_child(plat_dir: str, barrier, queue) -> None:  # runs in a forked worker process
    eng = SimPlatform.open(Path(plat_dir)).engine()
    barrier.wait(timeout=20)
    queue.put(eng.init_quote(KEY)[1])


def test_worker_processes_racing_on_first_init_share_one_key(sim_pki, tmp_path: Path) -> None:
    import multiprocessing

    plat = SimPlatform.create(tmp_path / "procs", pki_dir=sim_pki.pki_dir)
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_init_in_child, args=(str(plat.platform_dir), barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    ids = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(ids)) == 1
    assert plat.engine().init_quote(KEY)[1] == ids[0]
