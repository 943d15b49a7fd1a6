"""The service socket's life cycle, with the standard library only (the supervisor process imports
nothing heavier): atomic creation, never taking over a live server, unlink only if still ours."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from quotehelper.errors import QuoteHelperError

DEFAULT_SOCKET = "/var/run/aesmd/aesm.socket"
DEFAULT_SOCKET_MODE = 0o666  # any local user may connect, like AESM's 0777 (x is meaningless on sockets)
SUN_PATH_MAX = 107


class SocketInUse(QuoteHelperError):
    """Another live server owns the socket path; we refuse to hijack it."""


def _probe_live(path: str) -> bool:
    """True if something accepts connections on `path` (ours, or a real aesmd)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        if e.errno == errno.EAGAIN:  # backlog full: definitely alive
            return True
        raise
    finally:
        s.close()


def bind_atomically(path: str, mode: int, backlog: int,
                    take_over: bool = False) -> tuple[socket.socket, int, int]:
    """Binds a listening socket at `path`; returns (socket, lock fd or -1, socket inode).

    Bound under a temporary name, chmod-ed, then renamed over `path`, so clients never see a socket
    file with the wrong mode or a moment with no socket at all when a stale one is replaced.

    `take_over`: when another quotehelper service holds `<path>.lock`, replace its socket instead of
    refusing (a zero-gap update: new connections reach us from the rename on, the old service answers
    what it already accepted). The lock is then not ours yet (-1): see ServiceSocket.claim_lock. A
    live server that does not hold the lock (aesmd) is never replaced, take_over or not.
    """
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise QuoteHelperError(f"socket path is {len(path)} bytes, the limit is {SUN_PATH_MAX}: {path}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        lock_fd = _lock(path + ".lock")
    except SocketInUse:
        if not take_over:
            raise
        lock_fd = -1  # a quotehelper service holds it: its socket is the one we replace
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise QuoteHelperError(f"{path} exists and is not a socket; refusing to replace it")
            if lock_fd >= 0 and _probe_live(path):
                raise SocketInUse(f"a live server is listening on {path} (aesmd?); refusing to take it over")
        tmp = f"{path}.{os.getpid()}~"
        if len(os.fsencode(tmp)) > SUN_PATH_MAX:
            tmp = os.path.join(parent, f".q{os.getpid()}~")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            os.chmod(tmp, mode)
            sock.listen(backlog)
            os.replace(tmp, path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        sock.setblocking(False)
        return sock, lock_fd, os.stat(path).st_ino
    except BaseException:
        if lock_fd >= 0:
            os.close(lock_fd)
        raise


def _lock(lock_path: str) -> int:
    """flock on `lock_path`, created if missing. The owner unlinks the file on exit (while holding the
    lock), so a lock taken on a file that is no longer at the path is retried on the new one."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SocketInUse(f"another quotehelper service holds {lock_path}") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous owner removed it between our open and flock: take the new one


class ServiceSocket:
    """The listening socket at `path`, owned for the life of the service (see bind_atomically)."""

    def __init__(self, path: str | Path, mode: int = DEFAULT_SOCKET_MODE, backlog: int = 1024,
                 take_over: bool = False) -> None:
        self.path = str(path)
        self.mode = mode
        self.sock, self._lock_fd, self._ino = bind_atomically(self.path, mode, backlog, take_over)

    @property
    def holds_lock(self) -> bool:
        return self._lock_fd >= 0

    def claim_lock(self) -> bool:
        """After a take-over: takes `<path>.lock` once the previous service has exited (it removes the file
        then), so the next update can take over from us. True once held."""
        if self._lock_fd < 0:
            try:
                self._lock_fd = _lock(self.path + ".lock")
            except SocketInUse:
                return False
        return True

    def replaced(self) -> bool:
        """True when the path no longer names our socket (a newer service took it over, or it was removed)."""
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def unlink(self) -> None:
        """Removes the path if it still names our socket (a successor may have replaced it)."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        self.sock.close()
        if self._lock_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + ".lock")  # still locked: a waiter re-checks the path (see _lock)
            os.close(self._lock_fd)
            self._lock_fd = -1
