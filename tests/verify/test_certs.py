"""Certificate objects: Intel's pinned certificates are shared, precomputed constants, handed out only for
byte-identical input; a tampered copy is a new object whose signature is checked."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from quotehelper.verify import ErrorCode, TrustAnchor, Verifier
from quotehelper.verify.certs import Cert, from_der, wrap
from tests.conftest import TESTDATA
from tests.verify.helpers import CASES

PCK_CA_PEM = (TESTDATA / "intel-root/Intel_SGX_PCK_Processor_CA.pem").read_bytes()
DER = serialization.Encoding.DER


def test_pinned_certificates_are_shared_and_precomputed() -> None:
    anchor = TrustAnchor.intel()
    ca = x509.load_pem_x509_certificate(PCK_CA_PEM)
    der = ca.public_bytes(DER)
    shared = wrap(ca)
    assert shared in anchor.pinned and from_der(der) is shared and wrap(anchor.cert) is anchor.info
    fresh = Cert(x509.load_der_x509_certificate(der))  # the same facts, computed from scratch
    assert shared.der == der and shared.key_id == fresh.key_id
    assert (shared.basic_constraints, shared.key_usage) == (fresh.basic_constraints, fresh.key_usage)
    assert (shared.not_before, shared.not_after) == (fresh.not_before, fresh.not_after)


def test_tampered_copy_of_a_pinned_certificate_is_not_trusted() -> None:
    """Same signature value, one byte of the signed part changed: not the pinned object, and the chain
    fails on the signature (not skipped because the root signature of the real one is pinned)."""
    der = x509.load_pem_x509_certificate(PCK_CA_PEM).public_bytes(DER)
    at = der.index(b"Intel SGX PCK Processor CA")
    bad_der = der[:at] + b"X" + der[at + 1:]
    bad = x509.load_der_x509_certificate(bad_der)
    assert bad.signature == x509.load_der_x509_certificate(der).signature
    assert wrap(bad) not in TrustAnchor.intel().pinned and from_der(bad_der) not in TrustAnchor.intel().pinned

    case = CASES["phala"]
    coll = case.load()
    root_pem = x509.load_pem_x509_certificates(coll.pck_crl_issuer_chain)[-1].public_bytes(serialization.Encoding.PEM)
    chain = bad.public_bytes(serialization.Encoding.PEM) + root_pem
    tampered = type(coll)(**{**{k: v for k, v in coll.__dict__.items() if k != "content_hash"},
                             "pck_crl_issuer_chain": chain})
    v = Verifier().verify(case.quote_bytes(), tampered, now=case.when())
    assert v.error.code is ErrorCode.CERT_SIGNATURE_INVALID
    assert v.error.detail["chain"] == "pck_crl_issuer_chain" and v.error.detail["index"] == 0


def test_known_pem_chain_is_what_cryptography_loads() -> None:
    """Intel's chains as PCS serves them come back as the registered objects without parsing; anything
    else (another PEM block, a changed or re-wrapped body, an unknown certificate) goes to the loader."""
    from quotehelper.verify.certs import load_known_pem

    pem = CASES["phala"].load().tcb_info_issuer_chain
    known = load_known_pem(pem)
    assert known is not None and len(known) == 2
    assert known == [wrap(c) for c in x509.load_pem_x509_certificates(pem)]
    assert load_known_pem(pem.replace(b"\n", b"\r\n")) == known
    key = b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"
    sim_leaf = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    lines = pem.split(b"\n")
    rewrapped = b"\n".join(lines[:2] + [lines[2] + lines[3]] + lines[4:])  # same base64, other line breaks
    assert load_known_pem(rewrapped) == known  # the same DER either way
    for other in (pem + key, sim_leaf + pem, pem.replace(b"\nMII", b"\n MII", 1),
                  pem.replace(b"-----END CERTIFICATE-----", b"-----END X509 CERTIFICATE-----", 1)):
        assert load_known_pem(other) is None
    flipped = bytearray(pem)
    flipped[100] ^= 0x01
    assert load_known_pem(bytes(flipped)) is None


def test_certificate_naming_another_issuer_is_rejected_even_if_signed() -> None:
    """Name chaining (RFC 5280 §6.1): the CA's key signed it, but it names a different issuer."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from quotehelper.verify import VerificationError
    from quotehelper.verify.chain import ChainChecker

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, issuer: str, key, signer, ca: bool) -> x509.Certificate:
        now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                          crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
        return b.sign(signer, hashes.SHA256())

    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = cert("Test SGX Root CA", "Test SGX Root CA", root_key, root_key, ca=True)
    anchor = TrustAnchor.from_bytes(root.public_bytes(serialization.Encoding.DER), "test root")
    when = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    good = cert("Test SGX PCK Certificate", "Test SGX Root CA", leaf_key, root_key, ca=False)
    ChainChecker(anchor, when, check_revocation=False).check_chain([good, root], "pck")
    misnamed = cert("Test SGX PCK Certificate", "Some Other CA", leaf_key, root_key, ca=False)
    with pytest.raises(VerificationError) as e:
        ChainChecker(anchor, when, check_revocation=False).check_chain([misnamed, root], "pck")
    assert e.value.code is ErrorCode.CERT_ISSUER_MISMATCH and "Some Other CA" in str(e.value)
