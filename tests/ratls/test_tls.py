"""Attested TLS: mutual and one-way handshakes on real sockets, refusals before any application data,
and two of our processes attesting each other with quotes from a real quote-service socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotehelper.aesm.launch import ServiceProcess
from quotehelper.ratls import RatlsError, RatlsOptions, make_certificate, platform_quoter, tls
from tests.ratls.helpers import MR_CLIENT, MR_OTHER, MR_SERVER


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.create_server(("127.0.0.1", 0))
    yield s
    s.close()


class Server:
    """tls.accept in a thread; records what it received and how the handshake ended."""

    def __init__(self, listener: socket.socket, ctx, verifier, reply: bytes = b"pong\n",
                 nonce: bytes | None = None) -> None:
        self.received: list[bytes] = []
        self.error: BaseException | None = None
        self.peer = None
        self.nonce = nonce
        self._args = (listener, ctx, verifier, reply)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        listener, ctx, verifier, reply = self._args
        try:
            with tls.accept(listener, ctx, verifier, nonce=self.nonce, timeout=20) as conn:
                self.peer = conn.peer
                self.received.append(conn.recv_line())
                conn.sendall(reply)
        except BaseException as e:
            self.error = e

    def join(self) -> Server:
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self


@pytest.fixture
def creds(plat):
    def make(mr_enclave: bytes, **options: object):
        return make_certificate(platform_quoter(plat, plat.enclave(mr_enclave=mr_enclave)),
                                RatlsOptions(**options))  # type: ignore[arg-type]
    return make


def _addr(s: socket.socket) -> tuple[str, int]:
    return s.getsockname()[:2]


@pytest.mark.parametrize("server_options", [{}, {"curve": "P-384", "legacy_extension": "gramine"}],
                         ids=["p256", "p384-gramine-legacy"])
def test_mutual_attestation_then_a_message(listener, creds, peer_verifier, server_options):
    s_verifier, c_verifier = peer_verifier(MR_CLIENT), peer_verifier(MR_SERVER)
    server = Server(listener, tls.server_context(creds(MR_SERVER, **server_options), s_verifier), s_verifier)
    with tls.connect(_addr(listener), tls.client_context(c_verifier, creds(MR_CLIENT)), c_verifier) as conn:
        assert conn.peer.ok and conn.peer.identity.mr_enclave == MR_SERVER
        conn.sendall(b"ping\n")
        assert conn.recv_line() == b"pong\n"
    server.join()
    assert server.error is None and server.received == [b"ping\n"]
    assert server.peer.ok and server.peer.identity.mr_enclave == MR_CLIENT


def test_one_way_server_does_not_ask_for_a_client_certificate(listener, creds, peer_verifier):
    c_verifier = peer_verifier(MR_SERVER)
    server = Server(listener, tls.server_context(creds(MR_SERVER)), None)
    with tls.connect(_addr(listener), tls.client_context(c_verifier), c_verifier) as conn:
        conn.sendall(b"anonymous\n")
        assert conn.recv_line() == b"pong\n"
    assert server.join().peer is None and server.received == [b"anonymous\n"]


def test_a_mutual_server_refuses_a_client_without_a_certificate(listener, creds, peer_verifier):
    s_verifier, c_verifier = peer_verifier(MR_CLIENT), peer_verifier(MR_SERVER)
    server = Server(listener, tls.server_context(creds(MR_SERVER), s_verifier), s_verifier)
    with pytest.raises(RatlsError), tls.connect(_addr(listener), tls.client_context(c_verifier), c_verifier) as conn:
        conn.sendall(b"ping\n")
        conn.recv_line()
    server.join()
    assert isinstance(server.error, RatlsError) and server.received == []


def test_client_refuses_a_server_outside_its_policy_before_any_data(listener, creds, peer_verifier):
    s_verifier, c_verifier = peer_verifier(MR_CLIENT), peer_verifier(MR_OTHER)
    server = Server(listener, tls.server_context(creds(MR_SERVER), s_verifier), s_verifier)
    with pytest.raises(RatlsError) as refused:
        tls.connect(_addr(listener), tls.client_context(c_verifier, creds(MR_CLIENT)), c_verifier)
    assert refused.value.code.value == "POLICY_REJECTED"  # judged inside the handshake: no connection to write to
    server.join()
    assert isinstance(server.error, RatlsError) and server.received == []


def test_server_refuses_a_client_outside_its_policy_and_sends_it_nothing(listener, creds, peer_verifier):
    s_verifier, c_verifier = peer_verifier(MR_OTHER), peer_verifier(MR_SERVER)
    server = Server(listener, tls.server_context(creds(MR_SERVER), s_verifier), s_verifier)
    got: list[bytes] = []
    # TLS 1.3: the client's handshake ends before the server judges it; the refusal is the alert that
    # answers its first read. It never receives application data.
    ctx = tls.client_context(c_verifier, creds(MR_CLIENT))
    with pytest.raises(RatlsError) as client_side, tls.connect(_addr(listener), ctx, c_verifier) as conn:
        conn.sendall(b"secret\n")
        got.append(conn.recv_line())
    assert client_side.value.code.value == "REFUSED_BY_PEER" and got == []
    server.join()
    assert isinstance(server.error, RatlsError) and server.error.code.value == "POLICY_REJECTED"
    assert server.received == []  # the server never read the client's bytes


def test_a_replayed_client_certificate_is_refused_when_the_server_requires_its_nonce(plat, listener, creds,
                                                                                    peer_verifier):
    """Pre-session freshness: the server hands each client a nonce (out of band here) and accepts only
    a certificate carrying it; the certificate of an earlier session is refused before any data."""
    s_verifier, c_verifier = peer_verifier(MR_CLIENT, require_nonce=True), peer_verifier(MR_SERVER)
    ctx = tls.server_context(creds(MR_SERVER), s_verifier)
    enclave = plat.enclave(mr_enclave=MR_CLIENT)
    first = make_certificate(platform_quoter(plat, enclave), nonce=b"session-1")
    for nonce, expect_ok in ((b"session-1", True), (b"session-2", False)):
        server = Server(listener, ctx, s_verifier, nonce=nonce)
        try:
            with tls.connect(_addr(listener), tls.client_context(c_verifier, first), c_verifier) as conn:
                conn.sendall(b"ping\n")
                conn.recv_line()
        except RatlsError:
            pass
        server.join()
        if expect_ok:
            assert server.error is None and server.received == [b"ping\n"]
        else:
            assert server.error.code.value == "NONCE_MISMATCH" and server.received == []


# ---- two processes, quotes through the node's quote service ----------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "quotehelper.cli", "ratls", *args]


@pytest.fixture(scope="module")
def quote_service(plat, tmp_path_factory) -> Iterator[str]:
    sock = str(tmp_path_factory.mktemp("svc") / "aesm.socket")
    with ServiceProcess(sock, plat.platform_dir, workers=1):
        yield sock


def _policy(path: Path, mr_enclave: bytes) -> str:
    path.write_text(f'mr_enclave: ["{mr_enclave.hex()}"]\n')  # quoted: YAML reads all-digit hex as a number
    return str(path)


def _serve(plat, sock: str, sim_root: Path, collateral: str, policy: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "SGX_AESM_ADDR": "1"}
    proc = subprocess.Popen(_cli("serve", "--listen", "127.0.0.1:0", "--once", "--socket", sock, "--platform",
                                 str(plat.platform_dir), "--mr-enclave", MR_SERVER.hex(), "--root-ca", str(sim_root),
                                 "--collateral", collateral, "--policy", policy, "--timeout", "30"),
                            stderr=subprocess.PIPE, text=True, env=env)
    first = proc.stderr.readline()
    assert first.startswith("listening on "), first
    return proc, int(first.rsplit(":", 1)[1])


def _connect(plat, sock: str, port: int, sim_root: Path, collateral: str, policy: str,
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "SGX_AESM_ADDR": "1"}
    return subprocess.run(_cli("connect", f"127.0.0.1:{port}", "--socket", sock, "--platform",
                               str(plat.platform_dir), "--mr-enclave", MR_CLIENT.hex(), "--root-ca", str(sim_root),
                               "--collateral", collateral, "--policy", policy, "--message", "ping from client",
                               "--timeout", "30"), capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def two_processes(plat, quote_service, sim_root, tmp_path) -> Callable:
    collateral = tmp_path / "collateral.json"
    collateral.write_text(plat.collateral().to_dcap_qvl_json())

    def run(server_trusts: bytes, client_trusts: bytes) -> tuple[subprocess.CompletedProcess, int, str]:
        server, port = _serve(plat, quote_service, sim_root, str(collateral),
                              _policy(tmp_path / "server-policy.yaml", server_trusts))
        client = _connect(plat, quote_service, port, sim_root, str(collateral),
                          _policy(tmp_path / "client-policy.yaml", client_trusts))
        err = server.stderr.read()
        return client, server.wait(60), err
    return run


def test_two_processes_attest_each_other_through_the_quote_service(two_processes):
    client, server_rc, server_log = two_processes(MR_CLIENT, MR_SERVER)
    assert client.returncode == 0 and server_rc == 0, (client.stderr, server_log)
    assert client.stdout.strip() == "server got: ping from client"
    assert f"MRENCLAVE {MR_SERVER.hex()}" in client.stderr and f"MRENCLAVE {MR_CLIENT.hex()}" in server_log


def test_a_client_outside_the_servers_policy_is_refused_before_data_flows(two_processes):
    client, server_rc, server_log = two_processes(MR_OTHER, MR_SERVER)
    assert server_rc == 3 and "POLICY_REJECTED" in server_log and "received:" not in server_log
    assert client.returncode != 0 and client.stdout == "" and "REFUSED_BY_PEER" in client.stderr
