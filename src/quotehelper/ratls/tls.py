"""TLS for Python services with RA-TLS peers, on pyOpenSSL.

Why pyOpenSSL and not the standard `ssl` module: `ssl` has no verify callback, so a server cannot ask
for a client certificate without OpenSSL chain-verifying it, and a self-signed RA-TLS certificate
then fails the handshake: mutual RA-TLS is impossible on `ssl`. pyOpenSSL's `set_verify` callback
runs our `RatlsVerifier` on the peer's certificate *inside* the handshake: a refused peer gets a TLS
alert and the handshake never completes, so no application data can be sent to it (nor read from it).
The TLS key-possession proof (CertificateVerify) is OpenSSL's; the certificate's key binding, quote
and policy are ours; there is no hostname check (the peer's identity is its enclave, which the policy
names). Session resumption and tickets are off: every connection is a full handshake whose peer
certificate is judged again.

Sockets are driven non-blocking with select(), so every call has a deadline (pyOpenSSL does not
honour socket timeouts).
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto

from quotehelper.ratls.cert import Credentials
from quotehelper.ratls.errors import RatlsCode, RatlsError
from quotehelper.ratls.verify import PeerVerdict, RatlsVerifier


@dataclass
class _State:
    verifier: RatlsVerifier | None
    nonce: bytes | None
    verdict: PeerVerdict | None = None


def _verify_callback(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    # OpenSSL calls this per chain element and per chain error (a self-signed leaf is one); the leaf
    # (depth 0) carries the evidence and decides; a CA-signed RA-TLS chain's upper elements pass.
    if depth != 0:
        return True
    state: _State = conn.get_app_data()
    if state.verdict is None:
        assert state.verifier is not None
        try:
            state.verdict = state.verifier.verify(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert),
                                                  nonce=state.nonce)
        except Exception as e:  # never let an exception escape into OpenSSL's C callback
            state.verdict = PeerVerdict(error=RatlsError(RatlsCode.HANDSHAKE_FAILED, f"verifier raised: {e!r}"))
    return state.verdict.ok


def _context(method_side: str, credentials: Credentials | None, peer_verifier: RatlsVerifier | None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if credentials is not None:
        ctx.use_certificate(x509.load_der_x509_certificate(credentials.cert_der))
        ctx.use_privatekey(credentials.key)
        ctx.check_privatekey()
    if peer_verifier is None:
        ctx.set_verify(SSL.VERIFY_NONE)
    else:
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if method_side == "server" else 0)
        ctx.set_verify(mode, _verify_callback)
    return ctx


def server_context(credentials: Credentials, peer_verifier: RatlsVerifier | None = None) -> SSL.Context:
    """Presents `credentials`; with `peer_verifier` the client must present an RA-TLS certificate it
    accepts (mutual RA-TLS); without, clients are not asked for one (one-way)."""
    return _context("server", credentials, peer_verifier)


def client_context(peer_verifier: RatlsVerifier, credentials: Credentials | None = None) -> SSL.Context:
    """Judges the server's RA-TLS certificate with `peer_verifier`; presents `credentials` if given
    (mutual RA-TLS; a server asking for a client certificate refuses a client without)."""
    return _context("client", credentials, peer_verifier)


class RatlsConnection:
    """An established TLS connection whose peer (if it was judged) is `peer` (an ok PeerVerdict).
    I/O calls take `timeout` seconds (default: the one given at connect/accept)."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket, peer: PeerVerdict | None, timeout: float) -> None:
        self._conn, self._sock, self.peer, self.timeout = conn, sock, peer, timeout

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        view, end = memoryview(data), _deadline(timeout or self.timeout)
        while view:
            try:
                n = _io(self._conn, self._sock, lambda v=view: self._conn.send(v), end)
            except SSL.Error as e:
                raise _refused(e) from e
            view = view[n:]

    def recv(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """Up to n bytes; b"" when the peer closed the connection."""
        try:
            return _io(self._conn, self._sock, lambda: self._conn.recv(n), _deadline(timeout or self.timeout))
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return b""
        except SSL.Error as e:
            raise _refused(e) from e

    def recv_line(self, limit: int = 65536, timeout: float | None = None) -> bytes:
        """Bytes up to and including b"\\n" (or until the peer closes, or `limit`)."""
        buf = bytearray()
        end = _deadline(timeout or self.timeout)
        while b"\n" not in buf and len(buf) < limit:
            chunk = self.recv(limit - len(buf), max(end - time.monotonic(), 0.001))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        finally:
            self._sock.close()

    def __enter__(self) -> RatlsConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _refused(e: SSL.Error) -> RatlsError:
    # In TLS 1.3 a client finishes its handshake before the server has judged the client's certificate;
    # a refusal then arrives as an alert on the first read or write.
    return RatlsError(RatlsCode.REFUSED_BY_PEER, f"the peer ended the connection: {e}")


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # A 5 KB RA-TLS certificate flight goes out in several writes; with Nagle the last one waits
        # for the peer's delayed ACK (40 ms on Linux): mutual RA-TLS went from 20 to ~70 handshakes/s.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


def _io(conn: SSL.Connection, sock: socket.socket, op: Any, end: float) -> Any:
    while True:
        try:
            return op()
        except SSL.WantReadError:
            want = ([sock], [])
        except SSL.WantWriteError:
            want = ([], [sock])
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS operation timed out")
        select.select(*want, [], remaining)


def _handshake(sock: socket.socket, context: SSL.Context, state: _State, timeout: float, *,
               server: bool) -> RatlsConnection:
    _tune(sock)
    conn = SSL.Connection(context, sock)
    conn.set_app_data(state)
    if server:
        conn.set_accept_state()
    else:
        conn.set_connect_state()
    try:
        _io(conn, sock, conn.do_handshake, _deadline(timeout))
    except (SSL.Error, OSError) as e:
        sock.close()
        v = state.verdict
        if v is not None and v.error is not None:  # our verifier refused the peer: say why
            raise RatlsError(v.error.code, f"peer refused: {v.error.message}", v.error.detail) from e
        raise RatlsError(RatlsCode.HANDSHAKE_FAILED, f"TLS handshake failed: {e}") from e
    if state.verifier is not None and state.verdict is None:  # belt and braces: never unjudged
        sock.close()
        raise RatlsError(RatlsCode.PEER_NO_CERTIFICATE, "the peer presented no certificate")
    return RatlsConnection(conn, sock, state.verdict, timeout)


def connect(address: tuple[str, int], context: SSL.Context, peer_verifier: RatlsVerifier | None = None, *,
            nonce: bytes | None = None, timeout: float = 10.0) -> RatlsConnection:
    """TCP connect + handshake. `peer_verifier` must be the one `context` was made with (it is called
    from the handshake). Raises RatlsError (the peer's refusal code, or HANDSHAKE_FAILED) or OSError."""
    return _handshake(socket.create_connection(address, timeout=timeout), context, _State(peer_verifier, nonce),
                      timeout, server=False)


def accept(listener: socket.socket, context: SSL.Context, peer_verifier: RatlsVerifier | None = None, *,
           nonce: bytes | None = None, timeout: float = 10.0) -> RatlsConnection:
    """Accepts one TCP connection from `listener` (blocking) and runs the server handshake.
    Raises RatlsError as `connect` does; the refused client's socket is closed."""
    sock, _ = listener.accept()
    return _handshake(sock, context, _State(peer_verifier, nonce), timeout, server=True)
