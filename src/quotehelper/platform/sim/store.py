"""Files of the simulated platform and PKI: atomic, idempotent creation; 0700 directories, 0600 secrets.

Several processes (service workers, CLI calls) may create or read the same directory at once. A directory
is populated under a temporary name and renamed into place (first writer wins, the others find it);
files are written to a temporary name and hard-linked (create-once) or renamed (replace) into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.errors import QuoteHelperError

DIR_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class PlatformStoreError(QuoteHelperError):
    """A platform or PKI directory that is missing, unreadable or corrupt."""


def ensure_dir(path: Path) -> None:
    """Creates `path` and missing parents with 0700 (existing directories are left as they are)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask


def _is_populated(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except FileNotFoundError:
        return False


def atomic_create_dir(final: Path, populate: Callable[[Path], None]) -> bool:
    """Creates directory `final` filled by `populate(tmp_dir)` all at once. Returns False (and leaves the
    existing directory alone) if `final` already has content, or another process won the race."""
    final = Path(final)
    if _is_populated(final):
        return False
    ensure_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, DIR_MODE)
        populate(tmp)
        try:
            os.rename(tmp, final)  # replaces a missing or empty `final` atomically
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: Path, data: bytes, *, private: bool = False, replace: bool = False) -> bool:
    """Writes `data` to `path` all at once (mode 0600 if private). Without `replace`, an existing file wins
    and False is returned; with it, the file is replaced."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, SECRET_MODE if private else PUBLIC_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_private(path: Path) -> bytes:
    """Reads a secret, refusing one that others can read (like ssh does with keys)."""
    path = Path(path)
    st = path.stat()
    if st.st_mode & 0o077:
        raise PlatformStoreError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); expected 0600")
    return path.read_bytes()


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the platform and PKI directories are 0700 and their key files 0600."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key
