"""Our certificates through RatlsVerifier on the software platform: identity, nonce freshness,
endorsements for offline verification, and the named refusals."""

from __future__ import annotations

import datetime as dt

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quotehelper.ratls import (
    RatlsCode,
    RatlsError,
    RatlsOptions,
    RatlsVerifier,
    make_certificate,
    platform_quoter,
)
from quotehelper.ratls import formats as f
from quotehelper.sgx.structs import FLAG_DEBUG, FLAG_INITTED, FLAG_MODE64BIT, Attributes
from tests.ratls.helpers import MR_CLIENT, MR_OTHER, MR_SERVER, independent_parts


def test_identity_and_policy_on_mrenclave(plat, peer_verifier):
    creds = make_certificate(platform_quoter(plat, plat.enclave(mr_enclave=MR_SERVER)))
    ok = peer_verifier(MR_SERVER).verify(creds.cert_der)
    assert ok.ok, ok.summary()
    assert ok.identity.mr_enclave == MR_SERVER and ok.formats == ("dice",) and ok.verdict.status == "UpToDate"
    assert ok.to_dict()["identity"]["mr_enclave"] == MR_SERVER.hex()
    refused = peer_verifier(MR_CLIENT, MR_OTHER).verify(creds.cert_der)
    assert refused.code == "POLICY_REJECTED" and refused.error.detail["rules"][0]["rule"] == "mr_enclave"


def test_a_replayed_certificate_is_refused_when_a_nonce_is_required(plat, peer_verifier):
    quoter = platform_quoter(plat, plat.enclave(mr_enclave=MR_CLIENT))
    first = make_certificate(quoter, nonce=b"challenge-1")
    verifier = peer_verifier(MR_CLIENT, require_nonce=True)
    assert verifier.verify(first.cert_der, nonce=b"challenge-1").ok
    replayed = verifier.verify(first.cert_der, nonce=b"challenge-2")  # the same certificate, a new challenge
    assert replayed.code == "NONCE_MISMATCH"
    assert verifier.verify(make_certificate(quoter).cert_der, nonce=b"challenge-2").code == "NONCE_MISSING"
    assert verifier.verify(first.cert_der).code == "OPTIONS_INVALID"  # required, but nothing to compare with
    # Not required and not given: a nonce in the certificate is just reported.
    assert peer_verifier(MR_CLIENT).verify(first.cert_der).nonce == b"challenge-1"


def test_debug_enclaves_are_refused_unless_the_policy_allows_them(plat, peer_verifier):
    debug = plat.enclave(attributes=Attributes(FLAG_INITTED | FLAG_MODE64BIT | FLAG_DEBUG, 0x3))
    creds = make_certificate(platform_quoter(plat, debug))
    result = peer_verifier().verify(creds.cert_der)
    assert result.code == "POLICY_REJECTED" and result.identity.debug


def test_endorsements_let_a_peer_verify_offline(plat, dcap_verifier, sim_collateral):
    creds = make_certificate(platform_quoter(plat), collateral=sim_collateral)
    offline = RatlsVerifier(verifier=dcap_verifier)  # no collateral source at all
    result = offline.verify(creds.cert_der)
    assert result.ok and result.collateral_from == "endorsements"
    ignored = RatlsVerifier(RatlsOptions(use_endorsements=False), verifier=dcap_verifier).verify(creds.cert_der)
    assert ignored.code == "COLLATERAL_UNAVAILABLE"
    # Stapled collateral is checked like any other: a changed TCB-info signature is refused.
    tcb_sig = sim_collateral.tcb_info_signature.hex().encode()
    at = creds.cert_der.index(tcb_sig) + 3
    digit = b"0" if creds.cert_der[at:at + 1] != b"0" else b"1"  # still hex: the signature, not the JSON, is bad
    result = offline.verify(creds.cert_der[:at] + digit + creds.cert_der[at + 1:])
    assert result.code == "QUOTE_INVALID" and result.error.detail["verify_code"] == "TCB_INFO_SIGNATURE_INVALID"


def test_a_certificate_from_another_root_is_refused(plat, sim_collateral, tmp_path):
    from quotehelper.platform.sim import SimPlatform

    other = SimPlatform.create(tmp_path / "elsewhere" / "platform")  # its own PKI
    creds = make_certificate(platform_quoter(other), collateral=other.collateral())
    from quotehelper.verify import TrustAnchor, Verifier, VerifyOptions
    ours = Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),)))
    result = RatlsVerifier(verifier=ours).verify(creds.cert_der)
    assert result.code == "QUOTE_INVALID" and result.error.detail["verify_code"] == "ROOT_NOT_TRUSTED"


def _self_signed(extensions: list[tuple[str, bytes, bool]], key: ec.EllipticCurvePrivateKey | None = None,
                 days: int = 1) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crafted")])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now - dt.timedelta(days=2)).not_valid_after(now + dt.timedelta(days=days)))
    for oid, value, critical in extensions:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=critical)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_crafted_certificates_are_refused_by_name(plat, peer_verifier):
    v = peer_verifier()
    quote = plat.quote(bytes(64))
    cases = {
        "EVIDENCE_MISSING": [],
        "EXTENSION_CRITICAL": [("1.3.6.1.4.1.99999.1", b"\x05\x00", True)],
        "EVIDENCE_UNSUPPORTED": [(f.OID_DICE_EVIDENCE, cbor2.dumps(cbor2.CBORTag(60002, [b"r", b"c"])), False)],
        "EVIDENCE_MALFORMED": [(f.OID_DICE_EVIDENCE, cbor2.dumps(cbor2.CBORTag(60000, [b"q"])), False)],
        "CLAIMS_BINDING_MISMATCH": [(f.OID_DICE_EVIDENCE, f.encode_evidence(quote, b"\xa0"), False)],
        "KEY_BINDING_MISMATCH": [(f.OID_GRAMINE_QUOTE, quote, False)],  # report data binds no key
    }
    for code, exts in cases.items():
        assert v.verify(_self_signed(exts)).code == code, code
    assert v.verify(b"not a certificate").code == "CERT_MALFORMED"
    expired = _self_signed([(f.OID_DICE_EVIDENCE, f.encode_evidence(quote, b"\xa0"), False)], days=-1)
    assert v.verify(expired).code == "CERT_EXPIRED"


def test_a_key_whose_quote_was_copied_into_another_certificate_is_refused(plat, peer_verifier):
    """An attacker copies a genuine certificate's evidence into a certificate for its own key."""
    genuine = independent_parts(make_certificate(platform_quoter(plat)).cert_der)
    stolen = _self_signed([(f.OID_DICE_EVIDENCE, f.encode_evidence(genuine["quote"], genuine["claims"]), False)])
    assert peer_verifier().verify(stolen).code == "KEY_BINDING_MISMATCH"


def test_options_are_checked():
    for bad in ({"curve": "P-521"}, {"pubkey_hash": "md5"}, {"legacy_extension": "oe"}, {"validity_s": 1}):
        with pytest.raises(RatlsError) as e:
            RatlsOptions(**bad)  # type: ignore[arg-type]
        assert e.value.code is RatlsCode.OPTIONS_INVALID


def test_a_quoter_that_ignores_the_report_data_is_caught(plat):
    with pytest.raises(RatlsError) as e:
        make_certificate(lambda rd: plat.quote(bytes(64)))
    assert e.value.code is RatlsCode.QUOTE_FAILED


@pytest.mark.parametrize("binding", ["oe-pem", "spki"])
def test_a_lone_intel_legacy_extension_binds_the_key_as_open_enclave_does(plat, peer_verifier, binding):
    import hashlib

    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    if binding == "oe-pem":  # mbedtls_pk_write_pubkey_pem output with its NUL, hashed; the rest not compared
        pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        rd = hashlib.sha256(pem + b"\0").digest() + b"\xee" * 32
    else:
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        rd = hashlib.sha256(der).digest() + bytes(32)
    cert = _self_signed([(f.OID_INTEL_QUOTE, plat.quote(rd), False)], key=key)
    result = peer_verifier().verify(cert)
    assert result.ok and result.formats == ("intel-legacy",), result.summary()
    assert RatlsVerifier(RatlsOptions(accept_legacy_only=False)).verify(cert).code == "EVIDENCE_MISSING"
    other = _self_signed([(f.OID_INTEL_QUOTE, plat.quote(rd), False)])  # the same quote, another key
    assert peer_verifier().verify(other).code == "KEY_BINDING_MISMATCH"
