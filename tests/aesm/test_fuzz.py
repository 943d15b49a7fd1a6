"""Mutation fuzzing of the AESM request path, seeded (reproducible): real libsgx-quote-ex frames with bits
flipped, spans replaced, cut or repeated. Whatever arrives, the responder never raises, and it either
closes unanswered (exactly when AESM would: not a Request, or no call set) or answers with one
sub-message, the one matching the call AESM would act on, carrying an errorCode. Through the real
server, a barrage of such frames leaves a well-behaved client quoting."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.client import OutOfProcessProvider
from quotehelper.aesm.framing import encode_frame
from quotehelper.aesm.handlers import BadFrame, Dispatcher, parse_request, selected_call
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.responder import AesmResponder
from quotehelper.platform.sim import SimPlatform
from tests.aesm.conftest import ThreadedService
from tests.aesm.test_wire import IDS_REQ, INIT_REQ, NUM_REQ, PROBE_REQ, SIZE_REQ, get_quote_req, select_req

SEED = 20261127
CASES = 4000


def _seeds(platform: SimPlatform) -> list[bytes]:
    """Payloads (no length prefix) of every call the quote-ex family makes, as libsgx-quote-ex frames them."""
    report = platform.enclave().report(platform.engine().target_info(), b"fuzz").to_bytes()
    kid_list = bytes(8) + INIT_REQ[17:17 + 256]  # header (id 0, version 0, 0 entries) + one key id...
    kid_list = kid_list[:4] + (1).to_bytes(4, "little") + kid_list[8:]  # ...with num = 1
    frames = [NUM_REQ, IDS_REQ, PROBE_REQ, INIT_REQ, SIZE_REQ, get_quote_req(report, 8192), select_req(kid_list)]
    return [f[4:] for f in frames]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip bits
            j = min(i, len(b) - 1)
            b[j] ^= 1 << rng.randrange(8)
        elif op == 1:  # replace a span with random bytes
            n = rng.randint(1, 8)
            b[i:i + n] = rng.randbytes(n)
        elif op == 2:  # cut
            b = b[:i] if rng.random() < 0.5 else b[:i] + b[i + rng.randint(1, 32):]
        elif op == 3:  # repeat a span (duplicated fields, overlong lengths)
            n = rng.randint(1, 16)
            b[i:i] = b[i:i + n]
        else:  # a byte that matters to protobuf: a tag, a varint continuation, a wire type
            if b:
                b[min(i, len(b) - 1)] = rng.choice([0x00, 0x08, 0x0A, 0x12, 0x7A, 0x80, 0xFF, 0x8A, 0x48])
    return bytes(b)


def _expected_call(payload: bytes) -> str | None:
    try:
        return selected_call(parse_request(payload))
    except BadFrame:
        return None


def test_mutated_frames_get_aesm_answers_and_never_crash_the_responder(platform: SimPlatform) -> None:
    engine = platform.engine()
    responder = AesmResponder(Dispatcher(engine.supported_att_key_ids()), engine,
                              ServeOptions(queue_limit=CASES, tenant_queue_limit=CASES, memo=True))
    rng = random.Random(SEED)
    seeds = _seeds(platform)
    outcomes: Counter[str] = Counter()

    async def run() -> None:
        for n in range(CASES):
            payload = _mutate(rng, rng.choice(seeds))
            out = responder(payload)
            if isinstance(out, asyncio.Future):
                out = await out
            call = _expected_call(payload)
            if out is None:
                # Closed unanswered only where AESM closes too; a request it would answer is answered.
                assert call is None, (n, payload.hex())
                outcomes["closed"] += 1
                continue
            assert call is not None, (n, payload.hex())
            assert int.from_bytes(out[:4], "little") == len(out) - 4
            res = pb.Response.FromString(out[4:])
            fields = res.ListFields()
            assert len(fields) == 1, (n, payload.hex(), res)
            (field, sub), = fields
            assert field.number == pb.Request.DESCRIPTOR.fields_by_name[call].number, (n, payload.hex())
            assert sub.HasField("errorCode")
            outcomes[f"{call}:{sub.errorCode}"] += 1

    asyncio.run(run())
    # The mutations reached every call and many answers, not only the parser's rejections.
    assert outcomes["closed"] > CASES // 20
    answered = {k.split(":")[0] for k in outcomes if k != "closed"}
    assert {"initQuoteExReq", "getQuoteSizeExReq", "getQuoteExReq", "selectAttKeyIDReq"} <= answered
    assert sum(v for k, v in outcomes.items() if k.startswith("getQuoteExReq:") and not k.endswith(":0")) > 0
    assert responder.queued == 0


@pytest.fixture
def service(platform: SimPlatform, tmp_path: Path):  # type: ignore[no-untyped-def]
    svc = ThreadedService(str(tmp_path / "aesm.socket"), platform, workers=1, read_timeout=0.5).start()
    yield svc
    svc.stop()


def test_barrage_of_mutated_frames_leaves_a_good_client_quoting(service: ThreadedService,
                                                                   platform: SimPlatform) -> None:
    rng = random.Random(SEED + 1)
    seeds = _seeds(platform)
    frames = [encode_frame(_mutate(rng, rng.choice(seeds))) for _ in range(400)]
    stop = threading.Event()

    def barrage() -> None:
        for f in frames:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(service.sock)
                s.sendall(f)
                s.shutdown(socket.SHUT_WR)  # no more bytes: a cut frame is closed, not waited for
                while s.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                s.close()
        stop.set()

    t = threading.Thread(target=barrage, daemon=True)
    t.start()
    provider = OutOfProcessProvider(service.sock, deadline=30.0)
    enclave = platform.enclave()
    quotes = 0
    while not stop.is_set() or quotes < 5:
        provider.get_quote(enclave.report(provider.target_info(), f"good {quotes}".encode()))
        quotes += 1
    t.join(30)
    assert provider.retries == 0  # nothing the barrage did reached the good client
    assert service.supervisor.restarts == 0  # no worker died
