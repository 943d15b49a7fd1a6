"""The service's entry points load asyncio without the ssl module (6 MB per process it never uses),
and leave `import ssl` working for anything that needs it later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quotehelper.platform.sim import SimPlatform
from tests.aesm.conftest import ThreadedService


def test_asyncio_without_ssl_then_ssl_still_importable() -> None:
    code = ("import sys; from quotehelper.aesm.entry import import_asyncio_without_ssl as f; f(); "
            "assert 'asyncio' in sys.modules and 'ssl' not in sys.modules, sorted(sys.modules); "
            "import asyncio; asyncio.run(asyncio.sleep(0)); import ssl; print(ssl.OPENSSL_VERSION)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OpenSSL" in out.stdout


def test_running_worker_has_no_libssl(platform: SimPlatform, tmp_path: Path) -> None:
    svc = ThreadedService(str(tmp_path / "s"), platform, workers=1).start()
    try:
        (pid,) = svc.supervisor.pids()
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
        assert "_ssl." not in maps and "libssl" not in maps
        assert "_socket." in maps  # the check reads the right thing
    finally:
        svc.stop()


def test_worker_imports_stay_lean(platform: SimPlatform) -> None:
    """What a worker process loads (entry, workers, engine spec, server) pulls in no CLI, verifier or
    Kubernetes code."""
    code = ("import sys; from quotehelper.aesm.entry import import_asyncio_without_ssl as f; f(); "
            "from quotehelper.aesm.workers import EngineSpec; "
            f"EngineSpec('quotehelper.platform.sim:SimPlatform.open', ({str(platform.platform_dir)!r},), "
            "then='engine')(); "
            "from quotehelper.aesm.server import AesmResponder, AesmServer; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'grpc', 'yaml', 'ssl') "
            "or m.startswith(('quotehelper.verify', 'quotehelper.k8s', 'quotehelper.cli'))); "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
