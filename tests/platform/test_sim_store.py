"""Platform and PKI directories: permissions, idempotent and race-safe creation, errors on bad state."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quotehelper.platform.sim import (
    PlatformStoreError,
    SimConfigError,
    SimPki,
    SimPlatform,
    default_platform_dir,
)
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_permissions_and_key_separation(tmp_path: Path) -> None:
    plat = SimPlatform.create(tmp_path / "a" / "platform")  # PKI defaults to the sibling "pki"
    plat.engine().init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    pki_dir = tmp_path / "a" / "pki"
    assert plat.pki_dir == pki_dir
    for d in (plat.platform_dir, pki_dir, tmp_path / "a"):
        assert _mode(d) == 0o700, d
    for secret in ("cpu.secret", "pck.key.pem", "attestation_key.sealed"):
        assert _mode(plat.platform_dir / secret) == 0o600, secret
    pki_keys = sorted(pki_dir.glob("*.key.pem"))
    assert [k.name for k in pki_keys] == ["platform_ca.key.pem", "processor_ca.key.pem", "root_ca.key.pem",
                                          "tcb_signing.key.pem"]
    assert all(_mode(k) == 0o600 for k in pki_keys)
    # No PKI private key ends up in the platform directory.
    plat_bytes = b"".join(p.read_bytes() for p in plat.platform_dir.iterdir())
    for k in pki_keys:
        body = b"".join(k.read_bytes().splitlines()[1:-1])
        assert body not in plat_bytes.replace(b"\n", b"")
    assert not list(plat.platform_dir.glob(".*tmp*")) and not list(tmp_path.glob("a/.*tmp*"))


def test_create_is_idempotent(tmp_path: Path, sim_pki: SimPki) -> None:
    first = SimPlatform.create(tmp_path / "p", pki_dir=sim_pki.pki_dir, tcb_status="OutOfDate")
    files = {p.name: p.read_bytes() for p in first.platform_dir.iterdir()}
    second = SimPlatform.create(tmp_path / "p", pki_dir=sim_pki.pki_dir, tcb_status="UpToDate")
    assert second.tcb_status == "OutOfDate"  # opened, not replaced
    assert {p.name: p.read_bytes() for p in second.platform_dir.iterdir()} == files
    assert SimPki.load_or_create(sim_pki.pki_dir).root_ca_der() == sim_pki.root_ca_der()


def test_concurrent_create_yields_one_platform(tmp_path: Path, sim_pki: SimPki) -> None:
    out: list[SimPlatform] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        out.append(SimPlatform.create(tmp_path / "race", pki_dir=sim_pki.pki_dir))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and len({p.cpu.to_bytes() for p in out}) == 1
    assert len({p.pck_chain_pem for p in out}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]


def test_concurrent_pki_creation(tmp_path: Path) -> None:
    out: list[SimPki] = []
    threads = [threading.Thread(target=lambda: out.append(SimPki.load_or_create(tmp_path / "pki")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.root_ca_der() for p in out}) == 1


def test_open_errors(tmp_path: Path, platform: SimPlatform) -> None:
    with pytest.raises(PlatformStoreError, match="no simulated platform"):
        SimPlatform.open(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in platform.platform_dir.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
            (broken / f.name).chmod(0o600)
    (broken / "cpu.secret").write_bytes(b"short")
    with pytest.raises(PlatformStoreError, match="corrupt"):
        SimPlatform.open(broken)
    (broken / "cpu.secret").write_bytes(platform.cpu.to_bytes())
    (broken / "cpu.secret").chmod(0o644)
    with pytest.raises(PlatformStoreError, match="readable by others"):
        SimPlatform.open(broken)
    with pytest.raises(PlatformStoreError):
        SimPki.load(tmp_path / "nopki")


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match="TCB status"):
        SimPlatform.create(tmp_path / "x", tcb_status="Fine")
    with pytest.raises(SimConfigError, match="FMSPC"):
        SimPlatform.create(tmp_path / "x", fmspc=b"\x00")
    with pytest.raises(SimConfigError, match="CA"):
        SimPlatform.create(tmp_path / "x", ca="core")
    assert not (tmp_path / "x").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SimConfigError, match="not a simulated platform"):
        SimPlatform.create(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert SimPlatform.create(tmp_path / "empty").tcb_status == "UpToDate"  # an empty directory is fine


def test_fmspc_and_status_recorded(tmp_path: Path, sim_pki: SimPki) -> None:
    plat = SimPlatform.create(tmp_path / "f", pki_dir=sim_pki.pki_dir, fmspc=bytes.fromhex("00A067110000"),
                              tcb_status="SWHardeningNeeded")
    reopened = SimPlatform.open(plat.platform_dir)
    assert reopened.fmspc == bytes.fromhex("00A067110000") and reopened.tcb_status == "SWHardeningNeeded"
    assert reopened.collateral().tcb_info["fmspc"] == "00A067110000"


def test_default_platform_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUOTEHELPER_PLATFORM", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_platform_dir() == tmp_path / "xdg" / "quotehelper" / "platform"
    monkeypatch.setenv("QUOTEHELPER_PLATFORM", str(tmp_path / "env"))
    assert default_platform_dir() == tmp_path / "env"


def test_platform_and_pki_moved_together(tmp_path: Path) -> None:
    plat = SimPlatform.create(tmp_path / "host" / "platform")
    root = plat.root_ca_der()
    (tmp_path / "host").rename(tmp_path / "mounted")
    moved = SimPlatform.open(tmp_path / "mounted" / "platform")
    assert moved.pki_dir == tmp_path / "mounted" / "pki"
    assert moved.root_ca_der() == root and moved.collateral().tcb_info["fmspc"] == "00906ED50000"


def test_opening_a_platform_to_quote_loads_no_certificate_builders(tmp_path: Path) -> None:
    """What each worker of the service does: open the platform, make its QE. The PKI and collateral
    builders (X.509, asn1crypto) stay unloaded: ~3 MB less per worker."""
    from quotehelper.platform.sim import SimPlatform

    plat = SimPlatform.create(tmp_path / "p")
    code = ("import sys\nfrom quotehelper.aesm.workers import EngineSpec\n"
            f"e = EngineSpec('quotehelper.platform.sim:SimPlatform.open', ({str(plat.platform_dir)!r},), "
            "then='engine')()\ne.get_quote\n"
            "print(sorted(m for m in sys.modules if m.startswith(('asn1crypto', 'cryptography.x509', "
            "'quotehelper.platform.sim.pki', 'quotehelper.platform.sim.collateral'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_default_qe_svn_is_up_to_date() -> None:
    from quotehelper.platform.sim.collateral import QE_UP_TO_DATE_ISVSVN
    from quotehelper.platform.sim.platform import DEFAULT_QE_SVN

    assert DEFAULT_QE_SVN >= QE_UP_TO_DATE_ISVSVN
