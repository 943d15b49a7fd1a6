"""Run the quote service as a real child process (`python -m quotehelper.cli serve ...`).

Used by `quotehelper demo`, the benchmark and the restart tests: real process start-up, real SIGTERM
drain, real socket hand-over between successive processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from quotehelper.errors import QuoteHelperError

# GetSupportedAttKeyIDNum exactly as libsgx_quote_ex sends it: the cheapest real request.
_PROBE = bytes.fromhex("06000000 aa01 03 48 9875")


def wait_for_socket(path: str, timeout: float = 20.0, proc: subprocess.Popen | None = None,
                    probe: bytes | None = _PROBE) -> None:
    """Returns once the server on `path` answers `probe` (or, with probe None, accepts connections).

    Connectable is not ready: the socket listens before the workers have opened their engines.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise QuoteHelperError(f"the service exited with code {proc.returncode} before listening")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(0.1, end - time.monotonic()))
        try:
            s.connect(path)
            if probe is None:
                return
            s.sendall(probe)
            if len(s.recv(64)) > 4:
                return
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.02)
    raise QuoteHelperError(f"nothing answering on {path} after {timeout:.0f}s")


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class ServiceProcess:
    """`quotehelper serve` in a child process; a context manager that stops it with SIGTERM."""

    def __init__(self, socket_path: str | Path, platform_dir: str | Path, *, workers: int | None = None,
                 queue_limit: int | None = None, extra: list[str] | None = None,
                 stderr: int | None = subprocess.DEVNULL) -> None:
        self.socket_path = str(socket_path)
        self.args = [sys.executable, "-m", "quotehelper.cli", "serve", "--socket", self.socket_path,
                     "--platform", str(platform_dir)]
        if workers is not None:
            self.args += ["--workers", str(workers)]
        if queue_limit is not None:
            self.args += ["--queue-limit", str(queue_limit)]
        self.args += extra or []
        self.stderr = stderr
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        env = dict(os.environ)
        env.pop("SGX_AESM_ADDR", None)  # the service itself never acts as a client
        # Taking over from a running service: the old one answers on the path until ours replaces it.
        previous = _inode(self.socket_path) if "--take-over" in self.args else None
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, env=env)
        try:
            end = time.monotonic() + timeout
            while previous is not None and _inode(self.socket_path) == previous:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise QuoteHelperError(f"the service did not take over {self.socket_path} "
                                           f"(exit code {self.proc.poll()})")
                time.sleep(0.02)
            wait_for_socket(self.socket_path, max(0.1, end - time.monotonic()), self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (stop accepting, drain, unlink), then wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise QuoteHelperError(f"service pid {self.proc.pid} did not stop within {timeout}s") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
