"""Byte-exact parse/encode of real quotes, and precise errors on malformed ones."""

from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from quotehelper.cli import main
from quotehelper.errors import FormatError
from quotehelper.sgx.describe import pck_extension_of
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import (
    DEFAULT_ECDSA_ATT_KEY_ID,
    AttKeyId,
    AttKeyIdList,
    KeyRequest,
    QeReportInfo,
    Report,
    ReportBody,
    TargetInfo,
)

# (file, version, v5 body type, certification type, trailing padding bytes)
REAL_QUOTES = [
    ("phala-dcap-qvl/sgx_quote", 3, 1, 5, 0),
    ("zkdcap/quote_sgx_v3_00906ED50000.dat", 3, 1, 5, 0),
    ("automata-dcap-attestation/quote_sgx_v3_00606A000000.dat", 3, 1, 5, 0),
    ("custom-pki-selftest/quote.bin", 3, 1, 5, 0),
    ("intel-qvl-sampledata/quote.dat", 3, 1, 1, 0),
    ("mobilecoin-attestation/hw_quote.dat", 3, 1, 5, 0),
    ("mobilecoin-sgx/hw_quote.dat", 3, 1, 5, 0),
    ("fortanix-rust-sgx-pcs/quote.bin", 3, 1, 5, 0),
    ("dstack-teekit/sampleQuotes/sgx-occlum.dat", 3, 1, 5, 0),
    ("dstack-teekit/sampleQuotes/sgx-chinenyeokafor.dat", 3, 1, 5, 0),
    ("dstack-teekit/sampleQuotes/sgx-tlsn-quote9.dat", 3, 1, 5, 0),
    ("dstack-teekit/sampleQuotes/sgx-tlsn-quotedev.dat", 3, 1, 5, 0),
    ("phala-dcap-qvl/tdx_quote", 4, 2, 6, 70),
    ("phala-dcap-qvl/tdx_quote_outdated", 5, 3, 6, 0),
    ("phala-dcap-qvl/tdx_quote_td15ex", 5, 4, 6, 0),
    ("zkdcap/quote_v4.dat", 4, 2, 6, 0),
    ("go-tdx-guest/quote_v5_sample.dat", 5, 3, 6, 0),
    ("go-tdx-guest/tdx_prod_quote_SPR_E4.dat", 4, 2, 6, 39),
]


@pytest.mark.parametrize(("name", "version", "body_type", "cert_type", "trailing"), REAL_QUOTES)
def test_real_quote_round_trips(testdata, name, version, body_type, cert_type, trailing):
    data = (testdata / name).read_bytes()
    q = parse_quote(data, allow_trailing=True)
    assert q.to_bytes() == data
    assert q.version == version and q.body_type == body_type
    assert q.signature.qe.certification_data.type == cert_type if version == 3 else True
    assert len(q.to_bytes(with_trailing=False)) == len(data) - trailing
    if trailing:
        with pytest.raises(FormatError, match="bytes after the signature data"):
            parse_quote(data)


def test_phala_quote_fields_match_readme(testdata):
    q = parse_quote((testdata / "phala-dcap-qvl/sgx_quote").read_bytes())
    assert q.header.qe_svn == 10 and q.header.pce_svn == 15
    assert q.report_body.report_data.rstrip(b"\0") == b"Hello, world!"
    assert q.signature.qe.qe_report.isv_prod_id == 1
    pems = q.certification_data.pck_chain_pem()
    assert len(pems) == 3 and q.certification_data.data.endswith(b"\n\0")
    ext = pck_extension_of(pems[0])
    assert ext.fmspc.hex().upper() == "00A067110000"
    assert ext.cpusvn.hex().upper() == "0B0B0202FF0100000000000000000000"
    assert ext.pcesvn == 13 and ext.sgx_type == 0 and not ext.is_platform_ca
    assert ext.tcb_components == tuple(ext.cpusvn)


def test_platform_ca_extension(testdata):
    q = parse_quote((testdata / "automata-dcap-attestation/quote_sgx_v3_00606A000000.dat").read_bytes())
    ext = pck_extension_of(q.certification_data.pck_chain_pem()[0])
    assert ext.is_platform_ca and ext.fmspc.hex().upper() == "00606A000000" and ext.sgx_type == 1
    assert ext.configuration is not None and ext.configuration.dynamic_platform is True


@pytest.mark.parametrize("name", ["phala-dcap-qvl/sgx_quote", "automata-dcap-attestation/quote_sgx_v3_00606A000000.dat",
                                  "phala-dcap-qvl/tdx_quote"])
def test_pck_extension_rebuilds_byte_identical(testdata, name):
    from cryptography import x509

    from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension
    q = parse_quote((testdata / name).read_bytes(), allow_trailing=True)
    cert = x509.load_pem_x509_certificate(q.certification_data.pck_chain_pem()[0])
    der = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value
    assert PckExtension.parse(der).to_der() == der


def test_mobilecoin_chain_without_trailing_nul(testdata):
    q = parse_quote((testdata / "mobilecoin-sgx/hw_quote.dat").read_bytes())
    assert not q.certification_data.data.endswith(b"\0")
    assert len(q.certification_data.pck_chain_pem()) == 3


def test_cert_type_1_ppid(testdata):
    q = parse_quote((testdata / "intel-qvl-sampledata/quote.dat").read_bytes())
    info = q.certification_data.ppid_cert_info()
    assert len(info.ppid) == 16 and len(info.cpu_svn) == 16


# --- malformed input: one error type naming structure, field and offset -------------------------

@pytest.fixture
def sgx_quote(testdata) -> bytes:
    return (testdata / "phala-dcap-qvl/sgx_quote").read_bytes()


def test_truncated_quote_names_signature_data_len(sgx_quote):
    with pytest.raises(FormatError) as e:
        parse_quote(sgx_quote[:2000])
    assert e.value.field == "signature_data_len" and e.value.offset == 432 and "truncated" in str(e.value)


def test_truncated_header(sgx_quote):
    with pytest.raises(FormatError) as e:
        parse_quote(sgx_quote[:20])
    assert e.value.structure == "quote" and "48" in str(e.value)


def test_unknown_version_and_key_type(sgx_quote):
    with pytest.raises(FormatError) as e:
        parse_quote(struct.pack("<H", 7) + sgx_quote[2:])
    assert (e.value.field, e.value.offset) == ("version", 0)
    with pytest.raises(FormatError) as e:
        parse_quote(sgx_quote[:2] + struct.pack("<H", 9) + sgx_quote[4:])
    assert (e.value.field, e.value.offset) == ("att_key_type", 2)


def test_inconsistent_auth_data_length(sgx_quote):
    bad = bytearray(sgx_quote)
    struct.pack_into("<H", bad, 1012, 60000)
    with pytest.raises(FormatError) as e:
        parse_quote(bytes(bad))
    assert e.value.field == "qe_auth_data_size" and e.value.offset == 1012


def test_inconsistent_cert_data_size(sgx_quote):
    bad = bytearray(sgx_quote)
    struct.pack_into("<I", bad, 1048, 3549)
    with pytest.raises(FormatError) as e:
        parse_quote(bytes(bad))
    assert e.value.field == "certification_data_size" and e.value.offset == 1048


def test_unknown_cert_type(sgx_quote):
    bad = bytearray(sgx_quote)
    struct.pack_into("<H", bad, 1046, 42)
    with pytest.raises(FormatError) as e:
        parse_quote(bytes(bad))
    assert e.value.field == "certification_data_type" and e.value.offset == 1046


def test_v4_requires_type_6(testdata):
    data = bytearray((testdata / "zkdcap/quote_v4.dat").read_bytes())
    off = 48 + 584 + 4 + 128
    struct.pack_into("<H", data, off, 5)
    with pytest.raises(FormatError, match="need type 6"):
        parse_quote(bytes(data))


# --- fixed-size structures -----------------------------------------------------------------------

def test_structure_sizes_and_round_trip():
    ti = TargetInfo(mr_enclave=b"\x11" * 32, config_svn=3, misc_select=1)
    assert len(ti.to_bytes()) == 512 and TargetInfo.parse(ti.to_bytes()) == ti
    body = ReportBody(report_data=b"\x42" * 64, isv_prod_id=7, isv_svn=9)
    rep = Report(body, b"\x01" * 32, b"\x02" * 16)
    assert len(rep.to_bytes()) == 432 and Report.parse(rep.to_bytes()) == rep
    kr = KeyRequest(key_name=3, key_id=b"\x05" * 32)
    assert len(kr.to_bytes()) == 512 and KeyRequest.parse(kr.to_bytes()) == kr
    qri = QeReportInfo(b"\x09" * 16, ti, rep)
    assert len(qri.to_bytes()) == 960 and QeReportInfo.parse(qri.to_bytes()) == qri
    assert len(DEFAULT_ECDSA_ATT_KEY_ID.base_bytes()) == 158


def test_default_key_id_bytes_match_spec():
    kid = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()
    mrsigner = "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
    expected = bytes.fromhex("000000002000" + mrsigner) + bytes(16) + bytes.fromhex("01000000") + bytes(96) \
        + bytes.fromhex("02000000") + bytes(98)
    assert kid == expected and AttKeyId.parse(kid) == DEFAULT_ECDSA_ATT_KEY_ID


def test_key_id_list_checks_count():
    lst = AttKeyIdList((DEFAULT_ECDSA_ATT_KEY_ID,))
    raw = lst.to_bytes()
    assert len(raw) == 264 and AttKeyIdList.parse(raw) == lst
    with pytest.raises(FormatError, match="num_att_ids"):
        AttKeyIdList.parse(raw[:-1])


def test_wrong_report_length():
    with pytest.raises(FormatError) as e:
        Report.parse(bytes(431))
    assert e.value.structure == "sgx_report_t"


# --- CLI -----------------------------------------------------------------------------------------

def test_inspect_json_and_text(testdata):
    runner = CliRunner()
    res = runner.invoke(main, ["inspect", "--json", str(testdata / "automata-dcap-attestation/quote_sgx_v3_00606A000000.dat")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["signature_data"]["certification_data"]["pck_extension"]["fmspc"] == "00606A000000"
    assert d["signature_data"]["certification_data"]["pck_extension"]["ca"] == "platform"
    assert d["signature_data"]["qe_report"]["mr_signer"].startswith("8c4f5775")
    res = runner.invoke(main, ["inspect", str(testdata / "phala-dcap-qvl/sgx_quote")])
    assert res.exit_code == 0 and "00A067110000" in res.output


def test_inspect_rejects_garbage(tmp_path):
    p = tmp_path / "bad.bin"
    p.write_bytes(b"\x03\x00\x02\x00" + bytes(100))
    res = CliRunner().invoke(main, ["inspect", str(p)])
    assert res.exit_code != 0 and "not a valid quote" in res.output


def test_parsed_quote_signs_its_received_bytes_and_an_edit_re_encodes(sgx_quote):
    from dataclasses import replace

    q = parse_quote(sgx_quote)
    assert q.signed_bytes() == sgx_quote[:48 + 384]
    assert q.signature.qe.qe_report_bytes() == q.signature.qe.qe_report.to_bytes()
    edited = replace(q, body=replace(q.report_body, report_data=b"\x01" * 64))
    assert edited.signed_bytes()[48 + 320:48 + 384] == b"\x01" * 64  # not the received bytes
    assert edited.to_bytes() != sgx_quote
    qe = replace(q.signature.qe, qe_report=replace(q.signature.qe.qe_report, isv_svn=99))
    assert qe.qe_report_bytes() == qe.qe_report.to_bytes() != q.signature.qe.qe_report_bytes()


def test_shared_qe_part_is_parsed_once_and_damage_still_named(sgx_quote):
    a, b = parse_quote(sgx_quote), parse_quote(sgx_quote[:64] + b"\xff" + sgx_quote[65:])
    assert a.signature.qe is b.signature.qe  # the same platform's QE part: one parse
    bad = bytearray(sgx_quote)
    struct.pack_into("<H", bad, 1012, 60000)  # after a good parse of the same part
    with pytest.raises(FormatError) as e:
        parse_quote(bytes(bad))
    assert (e.value.field, e.value.offset) == ("qe_auth_data_size", 1012)


def test_an_oversized_qe_part_is_not_memoised(sgx_quote):
    from dataclasses import replace

    q = parse_quote(sgx_quote)
    cd = q.signature.qe.certification_data
    big = replace(q.signature.qe, certification_data=replace(cd, data=cd.data + bytes(20_000)))
    raw = replace(q, signature=replace(q.signature, qe=big)).to_bytes()
    one, two = parse_quote(raw), parse_quote(raw)
    assert one.signature.qe is not two.signature.qe and one.signature.qe == two.signature.qe
