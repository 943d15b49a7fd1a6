"""Issue 11, property tests (Hypothesis, derandomized) over AESM frames, next to the seeded mutation fuzzing
of test_fuzz.py: requests built field by field from the protobuf schema (every call, valid and hostile
values, two calls at once) and arbitrary byte streams. A frame is read or refused with FrameError; a
request is answered with exactly the sub-message of the call AESM would act on, carrying an errorCode, or
closed unanswered exactly when AESM closes; nothing else is ever raised."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.framing import MAX_FRAME, FrameError, read_frame
from quotehelper.aesm.handlers import BadFrame, Dispatcher, handle, parse_request, selected_call
from quotehelper.platform.sim import SimPlatform

CALLS = [f for f in pb.Request.DESCRIPTOR.fields if f.message_type is not None]
_U32, _U64, _BOOL, _BYTES = 13, 4, 8, 12


def ci(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def quoting(platform: SimPlatform) -> tuple[Dispatcher, object, list[bytes]]:
    engine = platform.engine()
    ids = [k.to_bytes() for k in engine.supported_att_key_ids()]
    report = platform.enclave().report(engine.target_info(), b"properties").to_bytes()
    return Dispatcher(engine.supported_att_key_ids()), engine, [report, *ids]


def _bytes_value(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    def cut(b: bytes, i: int) -> bytes:
        return b[:i % (len(b) + 1)]
    return (st.sampled_from(valid) | st.binary(max_size=600) |
            st.builds(cut, st.sampled_from(valid), st.integers(0, 2000)))


@st.composite
def requests(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    req = pb.Request()
    for call in draw(st.lists(st.sampled_from(CALLS), min_size=0, max_size=2, unique_by=lambda f: f.number)):
        sub = getattr(req, call.name)
        sub.SetInParent()
        for f in call.message_type.fields:
            if not draw(st.booleans()):
                continue
            if f.type == _BYTES:
                setattr(sub, f.name, draw(_bytes_value(valid)))
            elif f.type == _BOOL:
                setattr(sub, f.name, draw(st.booleans()))
            elif f.type == _U64:
                setattr(sub, f.name, draw(st.integers(0, 2**64 - 1)))
            else:
                setattr(sub, f.name, draw(st.sampled_from([0, 1, 8192, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)))
    return req.SerializePartialToString()  # required fields may be missing: a hostile client omits them


@ci(300)
@given(data=st.data())
def test_every_request_is_answered_as_aesm_would(quoting, data: st.DataObject) -> None:  # noqa: ANN001
    dispatcher, engine, valid = quoting
    payload = data.draw(requests(valid) | st.binary(max_size=300), label="payload")
    try:
        req = parse_request(payload)
    except BadFrame:
        return  # closed unanswered, as AESM closes on a payload that is not a Request
    res = handle(dispatcher, engine, req)
    call = selected_call(req)
    assert (res is None) == (call is None)
    if res is None:
        return
    fields = res.ListFields()
    assert len(fields) == 1
    (field, sub), = fields
    assert field.number == pb.Request.DESCRIPTOR.fields_by_name[call].number
    assert sub.HasField("errorCode")
    pb.Response.FromString(res.SerializeToString())  # and it encodes, required fields included


async def _read_all(stream: bytes, cap: int) -> list[bytes | str]:
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    out: list[bytes | str] = []
    while True:
        try:
            out.append(await read_frame(reader, cap))
        except FrameError as e:
            out.append(str(e))
            return out


@ci(300)
@given(st.lists(st.binary(max_size=40).map(lambda b: len(b).to_bytes(4, "little") + b), max_size=4),
       st.binary(max_size=12), st.sampled_from([16, 64, MAX_FRAME]))
def test_a_byte_stream_is_read_as_frames_or_refused(frames: list[bytes], tail: bytes, cap: int) -> None:
    out = asyncio.run(_read_all(b"".join(frames) + tail, cap))
    assert isinstance(out[-1], str)  # the stream always ends in FrameError (EOF mid-frame, or over the cap)
    assert all(isinstance(p, bytes) and len(p) <= cap for p in out[:-1])
    whole = [f[4:] for f in frames]
    assert out[:-1] == whole[:len(out) - 1]  # frames come out intact and in order until the first refusal
