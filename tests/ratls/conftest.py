"""Fixtures: a software platform with two enclave identities, its trust anchor and collateral, and
verifiers for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from quotehelper.aesm import client as aesm_client
from quotehelper.platform.sim import SimPlatform
from quotehelper.ratls import RatlsOptions, RatlsVerifier, StaticCollateral
from quotehelper.ratls.collateral import as_collateral
from quotehelper.verify import Collateral, Policy, TrustAnchor, Verifier, VerifyOptions


@pytest.fixture(scope="session")
def plat(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    p = SimPlatform.create(tmp_path_factory.mktemp("ratls") / "platform")
    p.engine().init_quote(p.engine().supported_att_key_ids()[0])
    return p


@pytest.fixture(scope="session")
def sim_collateral(plat: SimPlatform) -> Collateral:
    return as_collateral(plat.collateral())


@pytest.fixture(scope="session")
def sim_root(plat: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "root_ca.pem"
    path.write_bytes(plat.root_ca_pem())
    return path


@pytest.fixture(scope="session")
def dcap_verifier(plat: SimPlatform) -> Verifier:
    return Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),)))


@pytest.fixture
def peer_verifier(dcap_verifier: Verifier, sim_collateral: Collateral):
    """peer_verifier(mr_enclave=..., **options) -> RatlsVerifier on the simulated root + collateral."""
    def make(*mr_enclaves: bytes, **options: object) -> RatlsVerifier:
        policy = Policy(mr_enclave=tuple(mr_enclaves)) if mr_enclaves else None
        return RatlsVerifier(RatlsOptions(policy=policy, **options), verifier=dcap_verifier,  # type: ignore[arg-type]
                             collateral=StaticCollateral(sim_collateral))
    return make


@pytest.fixture(autouse=True)
def _fresh_client_mode() -> Iterator[None]:
    aesm_client.reset_process_mode()  # each test is its own "app" (one quoting mode per process)
    yield
    aesm_client.reset_process_mode()
