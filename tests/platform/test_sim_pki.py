"""The simulated PKI has the shape Intel's QVL demands (aesm-protocol.md §7.1, dcap-verification.md §2)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from quotehelper.platform.engine import QuoteError, QuoteErrorCode
from quotehelper.platform.sim import SimPki, SimPlatform
from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID

NOW = dt.datetime.now(dt.UTC)


def _ext(cert: x509.Certificate | x509.CertificateRevocationList, oid: x509.ObjectIdentifier) -> x509.Extension:
    return cert.extensions.get_extension_for_oid(oid)


def _check_cert(cert: x509.Certificate, cn_part: str, ca_pathlen: int | None) -> None:
    names = [a.oid for a in cert.subject]
    assert names == [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.LOCALITY_NAME,
                     NameOID.STATE_OR_PROVINCE_NAME, NameOID.COUNTRY_NAME]
    assert cn_part in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"  # ecdsa-with-SHA256
    for oid in (ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
                ExtensionOID.CRL_DISTRIBUTION_POINTS):
        _ext(cert, oid)
    ku, bc = _ext(cert, ExtensionOID.KEY_USAGE), _ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert ku.critical and bc.critical
    assert bc.value.ca == (ca_pathlen is not None) and bc.value.path_length == ca_pathlen
    if ca_pathlen is None:
        assert ku.value.digital_signature and ku.value.content_commitment and not ku.value.key_cert_sign
    else:
        assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature


def test_certificate_shapes(sim_pki: SimPki, make_platform) -> None:
    _check_cert(sim_pki.root_cert, "SGX Root CA", 1)
    assert sim_pki.root_cert.subject == sim_pki.root_cert.issuer
    _check_cert(sim_pki.ca_cert("processor"), "SGX PCK Processor CA", 0)
    _check_cert(sim_pki.ca_cert("platform"), "SGX PCK Platform CA", 0)
    _check_cert(sim_pki.tcb_signing_cert, "SGX TCB Signing", None)
    for cert in (sim_pki.ca_cert("processor"), sim_pki.ca_cert("platform"), sim_pki.tcb_signing_cert):
        cert.verify_directly_issued_by(sim_pki.root_cert)
    proc = make_platform("default")
    plat = make_platform("platform-ca", ca="platform")
    _check_cert(proc.pck_cert, "SGX PCK Certificate", None)
    proc.pck_cert.verify_directly_issued_by(sim_pki.ca_cert("processor"))
    plat.pck_cert.verify_directly_issued_by(sim_pki.ca_cert("platform"))
    assert "ca=processor" in _ext(proc.pck_cert, ExtensionOID.CRL_DISTRIBUTION_POINTS).value[0].full_name[0].value
    ext_p = PckExtension.parse(_ext(proc.pck_cert, x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value)
    ext_s = PckExtension.parse(_ext(plat.pck_cert, x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value)
    assert not _ext(proc.pck_cert, x509.ObjectIdentifier(SGX_EXTENSION_OID)).critical
    assert (ext_p.sgx_type, ext_p.is_platform_ca, ext_p.fmspc, ext_p.pce_id) == (0, False, proc.fmspc, b"\0\0")
    assert ext_p.tcb_components == tuple(proc.cpu.cpu_svn) and ext_p.cpusvn == proc.cpu.cpu_svn
    assert ext_s.sgx_type == 1 and ext_s.is_platform_ca and ext_s.configuration is not None
    assert proc.pck_cert.not_valid_before_utc <= NOW <= proc.pck_cert.not_valid_after_utc


def test_crls(sim_pki: SimPki, make_platform) -> None:
    root_crl = x509.load_der_x509_crl(sim_pki.root_crl_der(NOW))
    assert root_crl.is_signature_valid(sim_pki.root_cert.public_key())
    for ca in ("processor", "platform"):
        crl = x509.load_der_x509_crl(sim_pki.pck_crl_der(ca, NOW))
        assert crl.issuer == sim_pki.ca_cert(ca).subject
        assert crl.is_signature_valid(sim_pki.ca_cert(ca).public_key())
        for c in (crl, root_crl):
            _ext(c, ExtensionOID.CRL_NUMBER)
            _ext(c, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
        assert abs(crl.next_update_utc - NOW - dt.timedelta(days=30)) < dt.timedelta(seconds=1)
    # Collateral texts: TCB info v3 for this FMSPC/PCE, QE identity v2 for Intel's QE3.
    plat = make_platform("default")
    coll = plat.collateral(NOW)
    info, qe = coll.tcb_info, coll.qe_identity
    assert (info["id"], info["version"], info["tcbType"], info["fmspc"], info["pceId"]) == \
        ("SGX", 3, 0, plat.fmspc.hex().upper(), "0000")
    assert (qe["id"], qe["version"], qe["isvprodid"]) == ("QE", 2, 1)
    assert qe["mrsigner"] == "8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF"
    assert qe["attributesMask"] == "FBFFFFFFFFFFFFFF0000000000000000" and qe["miscselectMask"] == "FFFFFFFF"
    assert "\n" not in coll.tcb_info_json and ": " not in coll.tcb_info_json
    assert coll.pck_crl_issuer_chain.count("BEGIN CERTIFICATE") == 2


@pytest.mark.parametrize("status", ["UpToDate", "OutOfDate", "Revoked"])
def test_levels_newest_first_and_platform_lands_on_status(status: str) -> None:
    from quotehelper.platform.sim.collateral import tcb_levels

    comps = bytes(range(16))
    levels = tcb_levels(comps, 13, status, [])
    keys = [(tuple(c["svn"] for c in lv["tcb"]["sgxtcbcomponents"]), lv["tcb"]["pcesvn"]) for lv in levels]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    first_match = next(lv for lv, (c, p) in zip(levels, keys, strict=True)
                       if p <= 13 and all(a <= b for a, b in zip(c, comps, strict=True)))
    assert first_match["tcbStatus"] == status
    assert levels[0]["tcbStatus"] == "UpToDate"


def test_sealed_key_is_bound_to_its_platform(tmp_path, sim_pki: SimPki) -> None:
    a = SimPlatform.create(tmp_path / "a", pki_dir=sim_pki.pki_dir)
    b = SimPlatform.create(tmp_path / "b", pki_dir=sim_pki.pki_dir)
    a.engine().init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    blob = (a.platform_dir / "attestation_key.sealed").read_bytes()
    (b.platform_dir / "attestation_key.sealed").write_bytes(blob)
    (b.platform_dir / "attestation_key.sealed").chmod(0o600)
    with pytest.raises(QuoteError) as e:
        SimPlatform.open(b.platform_dir).engine().quote_size(DEFAULT_ECDSA_ATT_KEY_ID)
    assert e.value.code is QuoteErrorCode.ATT_KEY_CERT_DATA_INVALID
