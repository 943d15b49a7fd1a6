"""Zero-gap updates: `serve --take-over` replaces a running quotehelper service's socket while clients
keep quoting; the old service answers what it accepted and exits on SIGTERM without touching the new
socket; the new one then owns the lock, so the next update can take over from it. A live server that
is not quotehelper (aesmd) is never replaced."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

import pytest

from quotehelper.aesm.launch import ServiceProcess, wait_for_socket
from quotehelper.aesm.sockets import ServiceSocket, SocketInUse
from quotehelper.platform.sim import SimPlatform
from tests.aesm.conftest import QuotingClients


def _lock_is_held(path: str) -> bool:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def _wait(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_five_take_overs_under_sixteen_clients_with_no_gap(platform: SimPlatform, tmp_path: Path) -> None:
    sock = str(tmp_path / "aesm.socket")
    old = ServiceProcess(sock, platform.platform_dir, workers=1, extra=["--take-over"]).start()
    clients = QuotingClients(sock, platform, 16).start()
    try:
        for _ in range(5):
            time.sleep(0.3)
            ino = os.stat(sock).st_ino
            # The orchestrator's surge: the new service starts while the old one still serves...
            new = ServiceProcess(sock, platform.platform_dir, workers=1, extra=["--take-over"]).start()
            assert os.stat(sock).st_ino != ino  # the path now names the new socket
            time.sleep(0.2)
            assert old.proc is not None and old.proc.poll() is None  # ...the old one is still up
            assert old.stop() == 0  # ...until its SIGTERM: it drains and exits
            assert os.path.exists(sock)  # and leaves the new service's socket alone
            _wait(lambda: _lock_is_held(sock))  # the new service claims the lock the old one released
            old = new
        time.sleep(0.3)
    finally:
        clients.stop()
        old.stop()
    clients.check()  # nothing lost or duplicated
    # No gap: not one connection refused, reset or answered with an error across the five updates.
    assert clients.retries == 0, clients.retry_reasons
    assert not os.path.exists(sock) and not os.path.exists(sock + ".lock")


def test_without_take_over_a_running_service_is_not_replaced(platform: SimPlatform, tmp_path: Path) -> None:
    sock = str(tmp_path / "aesm.socket")
    with ServiceProcess(sock, platform.platform_dir, workers=1):
        ino = os.stat(sock).st_ino
        with pytest.raises(SocketInUse) as e:
            ServiceSocket(sock)
        assert str(e.value) == (f"another quotehelper service is serving {sock}; start this one with --take-over "
                                "to replace it without a gap")  # the socket the user gave, and the way out
        assert os.stat(sock).st_ino == ino


def test_take_over_never_replaces_a_server_that_is_not_quotehelper(tmp_path: Path) -> None:
    path = str(tmp_path / "aesm.socket")
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # e.g. Intel's aesmd: no lock held
    foreign.bind(path)
    foreign.listen(1)
    try:
        with pytest.raises(SocketInUse, match="live server"):
            ServiceSocket(path, take_over=True)
        wait_for_socket(path, timeout=1, probe=None)  # still the foreign server's
    finally:
        foreign.close()


def test_socket_appears_at_the_path_only_when_published(tmp_path: Path) -> None:
    path = str(tmp_path / "aesm.socket")
    s = ServiceSocket(path, publish=False)
    try:
        assert not os.path.exists(path)  # listening, but clients cannot reach it yet
        (tmp_name,) = [p for p in os.listdir(tmp_path) if p.endswith("~")]
        wait_for_socket(str(tmp_path / tmp_name), timeout=1, probe=None)
        s.publish()
        wait_for_socket(path, timeout=1, probe=None)
        assert not os.path.exists(tmp_path / tmp_name)
    finally:
        s.close()
    assert os.listdir(tmp_path) == []  # socket, temporary name and lock file all gone


def test_temporaries_of_a_service_that_died_starting_are_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "aesm.socket")
    old = time.time() - 3600
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path + ".4242.deadbeef~")  # bound an hour ago, never published, its process gone
    stale.close()
    os.utime(path + ".4242.deadbeef~", (old, old))
    starting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    starting.bind(path + ".4343.feedface~")  # another service still starting: bound, not listening yet
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path + ".4444.cafef00d~")  # an old one something listens on
    live.listen(1)
    os.utime(path + ".4444.cafef00d~", (old, old))
    try:
        with contextlib.closing(ServiceSocket(path)):
            names = set(os.listdir(tmp_path))
            assert "aesm.socket.4242.deadbeef~" not in names
            assert {"aesm.socket.4343.feedface~", "aesm.socket.4444.cafef00d~"} <= names
    finally:
        starting.close()
        live.close()
