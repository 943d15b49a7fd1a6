"""Issue 11: the webhook answers every body over HTTP (never a dropped connection), within its limits, and
init containers asking for EPC are wired like app containers (field case webhook-initcontainer-epc.json)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest

from quotehelper.k8s import mutate, tls, webhook
from tests.conftest import FIELD_CASES
from tests.k8s.helpers import K8S_VERSION, admission_review, plain_pod

OPT_IN = {"quotehelper.io/quote-provider": "aesm"}


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory) -> tuple[Path, tls.TlsMaterial]:
    m = tls.generate(["localhost"], ip_addresses=["127.0.0.1"])
    d = tmp_path_factory.mktemp("tls")
    m.write(d)
    return d, m


def start(tls_dir, limits: webhook.WebhookLimits | None = None,
          cfg: mutate.MutationConfig | None = None) -> webhook.WebhookServer:
    d, _ = tls_dir
    srv = webhook.make_server("127.0.0.1", 0, d / "tls.crt", d / "tls.key", cfg or mutate.MutationConfig(), limits)
    webhook.serve_in_thread(srv)
    return srv


@pytest.fixture(scope="module")
def server(tls_dir):
    srv = start(tls_dir)
    yield srv, tls_dir[1]
    srv.shutdown()
    srv.server_close()


def client_ctx(m: tls.TlsMaterial) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=m.ca_pem.decode())


def post(server, data: bytes) -> tuple[int, dict]:
    srv, m = server
    conn = http.client.HTTPSConnection("localhost", srv.server_address[1], context=client_ctx(m), timeout=20)
    conn.request("POST", "/mutate", body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def review_of(pod: dict, **request: object) -> dict:
    r = admission_review(pod)
    r["request"].update(request)
    return r


# ---- the bodies that closed the connection ---------------------------------------------------------
def test_request_kind_a_string_is_allowed_unchanged(server):
    status, answer = post(server, json.dumps(review_of(plain_pod(OPT_IN), kind="Pod")).encode())
    assert status == 200 and answer["response"]["allowed"] is True and "patch" not in answer["response"]


def test_annotations_a_string_is_not_opted_in(server):
    pod = plain_pod()
    pod["metadata"]["annotations"] = "quotehelper.io/quote-provider=aesm"
    status, answer = post(server, json.dumps(review_of(pod)).encode())
    assert status == 200 and answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}


def test_500000_deep_nesting_gets_400(server):
    body = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + b"[" * 500_000 + \
        b"]" * 500_000 + b"}"
    assert post(server, body) == (400, {"error": "body is nested deeper than 64 levels"})


def test_moderate_nesting_past_the_limit_gets_400():
    inner = "[" * 70 + "]" * 70  # parses fine with json, deeper than the webhook allows
    with pytest.raises(webhook.AdmissionError, match="nested deeper than 64"):
        webhook.parse_body(f'{{"a":{inner}}}'.encode())


def test_5000_digit_integer_gets_400(server):
    r = review_of(plain_pod(OPT_IN))
    body = json.dumps(r).encode().replace(b'"dryRun": false', b'"dryRun": ' + b"7" * 5000)
    assert b"7" * 5000 in body
    assert post(server, body) == (400, {"error": "integer of 5000 digits (max 20)"})


@pytest.mark.parametrize(("body", "error"), [
    (b"\xff\xfe{}", "body is not UTF-8 (byte 0)"),
    (b'{"a": NaN}', "NaN is not JSON"),
    (b'{"a": 1e999}', None),  # inf as a float is fine for json; the review then refuses the body
    (b"[]", "body is not a JSON object"),
], ids=["binary", "nan", "huge-float", "array"])
def test_other_hostile_bodies_get_400(server, body, error):
    status, answer = post(server, body)
    assert status == 400 and (error is None or answer["error"] == error)


def test_opted_in_pod_of_the_wrong_shape_is_denied_with_the_reason(server):
    pod = plain_pod(OPT_IN)
    pod["spec"]["containers"] = "app"
    status, answer = post(server, json.dumps(review_of(pod)).encode())
    assert status == 200 and answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {"code": 422, "message": "quotehelper: spec.containers is not a list of "
                                                                    "objects"}


def test_huge_quantity_exponent_is_denied_not_computed(server):
    pod = plain_pod(OPT_IN, limits={"sgx.intel.com/epc": "1e999999999"})
    status, answer = post(server, json.dumps(review_of(pod)).encode())
    assert status == 200 and answer["response"]["allowed"] is False
    assert "exponent out of range" in answer["response"]["status"]["message"]


def test_oversized_body_gets_413_without_being_read(tls_dir):
    srv = start(tls_dir, webhook.WebhookLimits(max_body=1000))
    try:
        status, answer = post((srv, tls_dir[1]), b"{" + b" " * 2000 + b"}")
        assert (status, answer) == (413, {"error": "body of 2002 bytes (max 1000)"})
    finally:
        srv.shutdown()
        srv.server_close()


# ---- deadline and concurrency ---------------------------------------------------------------------
def tls_connect(srv: webhook.WebhookServer, m: tls.TlsMaterial) -> ssl.SSLSocket:
    raw = socket.create_connection(srv.server_address, timeout=20)
    return client_ctx(m).wrap_socket(raw, server_hostname="localhost")


def read_status(s: ssl.SSLSocket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_slow_client_gets_408_at_the_whole_request_deadline(tls_dir):
    """Why: the 10 s timeout was per read, so one byte every 5 s held a thread forever. Now the deadline is
    for the whole request: a client that keeps trickling bytes still gets 408 and the connection closes."""
    srv = start(tls_dir, webhook.WebhookLimits(deadline=1.0))
    m = tls_dir[1]
    try:
        s = tls_connect(srv, m)
        s.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        stop = threading.Event()

        def trickle() -> None:  # one header byte at a time, well inside any per-read timeout
            while not stop.wait(0.2):
                try:
                    s.sendall(b"X")
                except OSError:
                    return

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            assert read_status(s) == 408
        finally:
            stop.set()
            t.join()
            s.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_at_the_connection_bound_the_oldest_stalled_client_makes_room(tls_dir):
    """Why: 1,000 slow clients held 1,000 threads. Now one thread serves any number of clients, open
    connections are bounded, and at the bound the oldest connection still waiting for its request is
    dropped for the new one: stalled clients cannot hold every slot against a live client."""
    srv = start(tls_dir, webhook.WebhookLimits(max_connections=8, deadline=30.0))
    m = tls_dir[1]
    before = threading.active_count()
    slow = [tls_connect(srv, m) for _ in range(8)]
    try:
        for s in slow:
            s.sendall(b"POST /mutate HTTP/1.1\r\n")  # and then nothing more
        good = tls_connect(srv, m)
        good.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_status(good) == 200
        good.close()
        slow[0].settimeout(20)
        with contextlib.suppress(ConnectionResetError):
            assert slow[0].recv(100) == b""  # the oldest stalled one was dropped for it
        assert threading.active_count() <= before  # no thread per connection
    finally:
        for s in slow:
            s.close()
        srv.shutdown()
        srv.server_close()


def test_keep_alive_serves_several_requests_on_one_connection(server):
    srv, m = server
    conn = http.client.HTTPSConnection("localhost", srv.server_address[1], context=client_ctx(m), timeout=20)
    for _ in range(3):
        conn.request("POST", "/mutate", body=json.dumps(review_of(plain_pod(OPT_IN))).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["response"]["patchType"] == "JSONPatch"
    conn.close()


def test_missing_tls_files_are_named(tmp_path, tls_dir):
    d, _ = tls_dir
    with pytest.raises(webhook.WebhookError, match=f"TLS certificate {tmp_path / 'tls.crt'} not found"):
        webhook.make_server("127.0.0.1", 0, tmp_path / "tls.crt", d / "tls.key", mutate.MutationConfig())
    with pytest.raises(webhook.WebhookError, match=f"TLS key {tmp_path / 'tls.key'} not found"):
        webhook.make_server("127.0.0.1", 0, d / "tls.crt", tmp_path / "tls.key", mutate.MutationConfig())
    (tmp_path / "tls.key").write_text("not a key\n")
    with pytest.raises(webhook.WebhookError, match="are not a usable pair"):
        webhook.make_server("127.0.0.1", 0, d / "tls.crt", tmp_path / "tls.key", mutate.MutationConfig())


# ---- field case: EPC in an init container ----------------------------------------------------------
def field_review() -> dict:
    return json.loads((FIELD_CASES / "webhook-initcontainer-epc.json").read_text())


def test_field_case_init_container_is_translated_and_wired(server):
    req = field_review()
    status, answer = post(server, json.dumps(req).encode())
    resp = answer["response"]
    assert status == 200 and resp["allowed"] and resp["uid"] == req["request"]["uid"]
    pod = req["request"]["object"]
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(resp["patch"])))
    init = patched["spec"]["initContainers"][0]
    assert init["resources"] == {"limits": {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "1",
                                            "sgx.intel.com/enclave": "1"}}
    assert init["env"] == [{"name": "SGX_AESM_ADDR", "value": "1"}]
    assert patched["spec"]["containers"] == pod["spec"]["containers"]  # asks for nothing: untouched
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    assert mutate.patch_for(patched) == []  # idempotent


def test_init_and_app_containers_both_asking_are_both_wired_with_hostpath():
    pod = field_review()["request"]["object"]
    pod["spec"]["containers"][0]["resources"] = {"limits": {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "8"}}
    cfg = mutate.MutationConfig(socket_delivery="hostPath", epc_resource="sgx.intel.com/epc")
    patched = jsonpatch.apply_patch(pod, mutate.patch_for(pod, cfg))
    init, app = patched["spec"]["initContainers"][0], patched["spec"]["containers"][0]
    assert init["resources"]["limits"] == {"sgx.intel.com/epc": "1Mi", "sgx.intel.com/enclave": "1"}
    assert app["resources"]["limits"] == {"sgx.intel.com/epc": "8Mi", "sgx.intel.com/enclave": "1"}
    for c in (init, app):
        assert c["volumeMounts"] == [{"name": "aesmd-socket", "mountPath": "/var/run/aesmd"}]
    assert patched["spec"]["volumes"] == [{"name": "aesmd-socket",
                                           "hostPath": {"path": "/var/run/aesmd", "type": "DirectoryOrCreate"}}]
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    assert mutate.patch_for(patched, cfg) == []


def test_ephemeral_containers_are_left_alone_and_do_not_break_the_mutation():
    """Ephemeral containers cannot carry resources (the API refuses them) and are never in a CREATE; a pod
    that has some (an UPDATE replayed, a hand-made object) still gets its app and init containers wired."""
    pod = field_review()["request"]["object"]
    pod["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox", "targetContainerName": "app"}]
    patched = jsonpatch.apply_patch(pod, mutate.patch_for(pod))
    assert patched["spec"]["ephemeralContainers"] == pod["spec"]["ephemeralContainers"]
    assert patched["spec"]["initContainers"][0]["env"] == [{"name": "SGX_AESM_ADDR", "value": "1"}]
    pod["spec"]["ephemeralContainers"] = "debug"
    with pytest.raises(mutate.MutationError, match="spec.ephemeralContainers is not a list of objects"):
        mutate.patch_for(pod)


def test_a_thousand_slow_clients_hold_no_threads_and_a_good_client_is_served(tls_dir):
    """Why, at its scale: 1,000 clients that connect and send a byte, then stall. The server keeps one thread,
    answers a well-behaved client meanwhile, and closes every stalled connection at its deadline."""
    srv = start(tls_dir, webhook.WebhookLimits(deadline=3.0))
    m = tls_dir[1]
    before = threading.active_count()
    slow = []
    try:
        for _ in range(1000):
            s = socket.create_connection(srv.server_address, timeout=20)
            s.sendall(b"\x16")  # the first byte of a TLS handshake record, and then nothing
            slow.append(s)
        assert threading.active_count() == before
        status, answer = post((srv, m), json.dumps(review_of(plain_pod(OPT_IN))).encode())
        assert status == 200 and answer["response"]["patchType"] == "JSONPatch"
        for s in slow:  # each one is closed by the server (handshake deadline), none is held forever
            s.settimeout(30)
            with contextlib.suppress(ConnectionResetError):  # closed with a reset: as good
                assert s.recv(100) == b""
    finally:
        for s in slow:
            s.close()
        srv.shutdown()
        srv.server_close()
