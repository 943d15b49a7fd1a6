"""One simulated PKI per test session, and one platform per TCB status made on first use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from quotehelper.platform.sim import SimPki, SimPlatform


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim")


@pytest.fixture(scope="session")
def sim_pki(sim_root: Path) -> SimPki:
    return SimPki.load_or_create(sim_root / "pki")


@pytest.fixture(scope="session")
def make_platform(sim_root: Path, sim_pki: SimPki) -> Callable[..., SimPlatform]:
    """make_platform(name, **create_options): a platform under the session PKI, created once per name."""
    made: dict[str, SimPlatform] = {}

    def make(name: str, **options: object) -> SimPlatform:
        if name not in made:
            made[name] = SimPlatform.create(sim_root / "platforms" / name, pki_dir=sim_pki.pki_dir, **options)
        return made[name]

    return make


@pytest.fixture(scope="session")
def platform(make_platform: Callable[..., SimPlatform]) -> SimPlatform:
    return make_platform("default")
