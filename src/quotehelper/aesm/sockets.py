"""The service socket's life cycle, with the standard library only (the supervisor process imports
nothing heavier): atomic creation, never taking over a live server, unlink only if still ours."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import socket
import stat
import time
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


def bind_unpublished(path: str, mode: int, backlog: int,
                     take_over: bool = False) -> tuple[socket.socket, int, str]:
    """A listening socket for `path`, bound under a temporary name beside it and chmod-ed; returns
    (socket, lock fd or -1, temporary path). `publish` renames it over `path`: clients never see a
    socket file with the wrong mode, nor a moment with no socket when a stale one is replaced, and the
    caller can start serving before it publishes.

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
        lock_fd = _lock(path)
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
        _remove_stale_temporaries(path)
        # Unique even between two containers' pid 1 sharing the directory.
        tag = f"{os.getpid()}.{os.urandom(4).hex()}~"
        tmp = f"{path}.{tag}"
        if len(os.fsencode(tmp)) > SUN_PATH_MAX:
            tmp = os.path.join(parent, f".q{tag}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            os.chmod(tmp, mode)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        sock.setblocking(False)
        return sock, lock_fd, tmp
    except BaseException:
        if lock_fd >= 0:
            os.close(lock_fd)
        raise


STALE_TEMPORARY_AGE = 60.0  # seconds; a service bound its temporary socket this long ago and never published


def _remove_stale_temporaries(path: str) -> None:
    """Temporary sockets a service left when it died before publishing: old enough and nothing listening.
    A younger one may belong to a service still starting (bound, not yet listening) and is left alone."""
    parent, name = os.path.split(os.path.abspath(path))
    for p in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + ".*~")) + \
            glob.glob(os.path.join(glob.escape(parent), ".q*~")):
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISSOCK(st.st_mode) and time.time() - st.st_mtime > STALE_TEMPORARY_AGE \
                    and not _probe_live(p):
                os.unlink(p)


def publish(tmp: str, path: str) -> int:
    """Renames a socket from bind_unpublished over `path` (atomically); returns its inode."""
    os.replace(tmp, path)
    return os.stat(path).st_ino


def _open_lock(path: str, lock_path: str) -> int:
    # O_NOFOLLOW: a link planted at <socket>.lock must not make a root service create or lock a file
    # elsewhere; anything but a regular file there is refused, as a non-socket at the socket path is.
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise QuoteHelperError(f"cannot serve {path}: its lock file {lock_path} is a symbolic link; "
                                   "refusing to follow it (remove it)") from None
        raise QuoteHelperError(f"cannot serve {path}: cannot open its lock file {lock_path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise QuoteHelperError(f"cannot serve {path}: its lock file {lock_path} exists and is not a regular file; "
                               "refusing to use it")
    return fd


def _lock(path: str) -> int:
    """flock on `<path>.lock` (for the socket `path`), created if missing, never through a symbolic link.
    The owner unlinks the file on exit (while holding the lock), so a lock taken on a file that is no
    longer at the path is retried on the new one."""
    lock_path = path + ".lock"
    while True:
        fd = _open_lock(path, lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SocketInUse(f"another quotehelper service is serving {path}; start this one with --take-over "
                              "to replace it without a gap") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous owner removed it between our open and flock: take the new one


class ServiceSocket:
    """The listening socket at `path`, owned for the life of the service (see bind_unpublished).

    With `publish=False` it listens under its temporary name until `publish()`, so a service can start
    its workers first and appear at the path only once it can answer (a take-over then switches new
    clients straight to ready workers)."""

    def __init__(self, path: str | Path, mode: int = DEFAULT_SOCKET_MODE, backlog: int = 1024,
                 take_over: bool = False, publish: bool = True) -> None:
        self.path = str(path)
        self.mode = mode
        self.sock, self._lock_fd, tmp = bind_unpublished(self.path, mode, backlog, take_over)
        self._tmp: str | None = tmp
        self._ino: int | None = None
        if publish:
            try:
                self.publish()
            except BaseException:
                self.close()
                raise

    def publish(self) -> None:
        if self._tmp is not None:
            self._ino = publish(self._tmp, self.path)
            self._tmp = None

    @property
    def holds_lock(self) -> bool:
        return self._lock_fd >= 0

    def claim_lock(self) -> bool:
        """After a take-over: takes `<path>.lock` once the previous service has exited (it removes the file
        then), so the next update can take over from us. True once held."""
        if self._lock_fd < 0:
            try:
                self._lock_fd = _lock(self.path)
            except SocketInUse:
                return False
        return True

    def replaced(self) -> bool:
        """True when the path no longer names our socket (a newer service took it over, or it was removed)."""
        if self._ino is None:
            return False  # not published yet
        try:
            return os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def unlink(self) -> None:
        """Removes the path if it still names our socket (a successor may have replaced it)."""
        if self._tmp is not None:  # never published: only the temporary name is ours
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            self._tmp = None
            return
        if self._ino is None:
            return
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
