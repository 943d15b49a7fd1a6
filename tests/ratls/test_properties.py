"""Property tests (Hypothesis, derandomized): the CBOR formats round-trip, and whatever bytes a peer
presents as its certificate, the answer is a PeerVerdict carrying a named RatlsCode, never another
exception (the TLS verify callback must not be reached by one)."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotehelper.ratls import RatlsCode, RatlsError, make_certificate, platform_quoter
from quotehelper.ratls import formats as f

SETTINGS = {"derandomize": True, "deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=60, **SETTINGS)
@given(spki=st.binary(min_size=1, max_size=200), hash_name=st.sampled_from(["sha-256", "sha-384", "sha-512"]),
       nonce=st.none() | st.binary(max_size=64))
def test_claims_round_trip(spki, hash_name, nonce):
    claims = f.decode_claims(f.encode_claims(spki, hash_name, nonce))
    assert claims.hash_name == hash_name and claims.pubkey_hash == f.spki_hash(spki, hash_name)
    assert claims.nonce == nonce and claims.other == ()


@settings(max_examples=10, **SETTINGS)
@given(quote=st.binary(max_size=64), claims=st.binary(max_size=64))
def test_evidence_round_trip(quote, claims):
    assert f.decode_evidence(f.encode_evidence(quote, claims)) == (quote, claims)


def test_endorsements_round_trip(sim_collateral):
    back = f.decode_endorsements(f.encode_endorsements(sim_collateral))
    for field in dataclasses.fields(back):
        if field.compare:  # PEM chains come back without their trailing newline (PCS header decoding)
            mine, theirs = getattr(sim_collateral, field.name), getattr(back, field.name)
            assert (mine.strip() if field.name.endswith("chain") and mine else mine) == theirs, field.name


cbor_values = st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=16) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=150, **SETTINGS)
@given(value=cbor_values, tag=st.sampled_from([None, 60000, 60001, 1]))
def test_any_cbor_in_the_evidence_is_a_named_refusal(value, tag):
    data = cbor2.dumps(value if tag is None else cbor2.CBORTag(tag, value))
    try:
        quote, claims = f.decode_evidence(data)
        f.decode_claims(claims)
    except RatlsError as e:
        assert e.code in RatlsCode


@pytest.fixture(scope="module")
def our_cert(plat, sim_collateral) -> bytes:
    return make_certificate(platform_quoter(plat), collateral=sim_collateral).cert_der


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_any_changed_certificate_gets_a_named_verdict(our_cert, peer_verifier, data):
    der = bytearray(our_cert)
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(der)))
    result = peer_verifier().verify(bytes(der[:cut]))
    assert result.ok or RatlsCode(result.code) in RatlsCode
