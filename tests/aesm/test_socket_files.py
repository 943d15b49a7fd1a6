"""Issue 11: `<socket>.lock` is opened without following links and checked like the socket itself; every
error names the socket the user gave."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quotehelper.aesm.sockets import ServiceSocket
from quotehelper.errors import QuoteHelperError


def test_a_dangling_link_at_the_lock_path_is_refused_and_not_followed(tmp_path: Path) -> None:
    """Why: a dangling link at <socket>.lock made the root service create a file at the link's target."""
    sock = tmp_path / "aesm.socket"
    target = tmp_path / "elsewhere" / "planted"
    target.parent.mkdir()
    os.symlink(target, str(sock) + ".lock")
    with pytest.raises(QuoteHelperError) as e:
        ServiceSocket(sock)
    assert str(e.value) == (f"cannot serve {sock}: its lock file {sock}.lock is a symbolic link; refusing to "
                            "follow it (remove it)")
    assert not target.exists() and not sock.exists()


def test_a_link_to_an_existing_file_is_refused_too(tmp_path: Path) -> None:
    sock = tmp_path / "aesm.socket"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.symlink(victim, str(sock) + ".lock")
    with pytest.raises(QuoteHelperError, match="is a symbolic link"):
        ServiceSocket(sock)
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_lock_path_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    sock = tmp_path / "aesm.socket"
    lock = str(sock) + ".lock"
    os.mkdir(lock) if kind == "directory" else os.mkfifo(lock)
    with pytest.raises(QuoteHelperError) as e:
        ServiceSocket(sock)
    assert str(e.value).startswith(f"cannot serve {sock}: ")


def test_a_regular_lock_file_left_behind_is_reused(tmp_path: Path) -> None:
    sock = tmp_path / "aesm.socket"
    Path(str(sock) + ".lock").write_text("")
    s = ServiceSocket(sock)
    try:
        assert s.holds_lock and sock.is_socket()
    finally:
        s.close()
    assert not Path(str(sock) + ".lock").exists()
