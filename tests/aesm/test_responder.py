"""AesmResponder's reply table (keyed by the raw request bytes): what it may keep, what it must not, and
its bound; with the real sim engine, counted by a thin delegating wrapper."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.anticipate import Anticipation
from quotehelper.aesm.handlers import Dispatcher
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.responder import AesmResponder
from quotehelper.aesm.tenant import Tenant
from quotehelper.platform.engine import QuotingEngine
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID

KID = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()


class Counting:
    """Delegates to a real engine and counts the calls that reach it."""

    def __init__(self, engine: QuotingEngine) -> None:
        self.engine = engine
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.engine, name)
        if name in ("init_quote", "quote_size", "get_quote"):
            def counted(*a: object) -> object:
                self.calls += 1
                return attr(*a)
            return counted
        return attr


def ask(responder: AesmResponder, req: pb.Request) -> pb.Response:
    async def go() -> bytes:
        out = responder(req.SerializeToString())
        if isinstance(out, asyncio.Future):
            out = await out
        assert isinstance(out, bytes)
        return out
    return pb.Response.FromString(asyncio.run(go())[4:])


def size_req(timeout: int = 15000) -> pb.Request:
    req = pb.Request()
    req.getQuoteSizeExReq.att_key_id = KID
    req.getQuoteSizeExReq.timeout = timeout
    return req


def init_req(timeout: int = 15000, b_pub: bool = True) -> pb.Request:
    req = pb.Request()
    req.initQuoteExReq.att_key_id = KID
    req.initQuoteExReq.b_pub_key_id = b_pub
    req.initQuoteExReq.buf_size = 32
    req.initQuoteExReq.timeout = timeout
    return req


def responder(plat: SimPlatform, memo: bool) -> tuple[AesmResponder, Counting]:
    eng = Counting(plat.engine())
    return AesmResponder(Dispatcher([DEFAULT_ECDSA_ATT_KEY_ID]), eng, ServeOptions(memo=memo)), eng  # type: ignore[arg-type]


def test_failures_are_never_kept_and_successes_are_with_memo(tmp_path: Path) -> None:
    r, eng = responder(SimPlatform.create(tmp_path / "p"), memo=True)
    assert ask(r, size_req()).getQuoteSizeExRes.errorCode == 42  # no key yet
    assert ask(r, size_req()).getQuoteSizeExRes.errorCode == 42  # asked the engine again
    assert eng.calls == 2
    first = ask(r, init_req())
    assert first.initQuoteExRes.errorCode == 0 and len(first.initQuoteExRes.pub_key_id) == 32
    size = ask(r, size_req()).getQuoteSizeExRes
    assert size.errorCode == 0 and size.quote_size > 1000
    calls = eng.calls
    assert ask(r, init_req()) == first and ask(r, size_req()).getQuoteSizeExRes == size
    assert eng.calls == calls  # both answered from the table


def test_without_memo_engine_calls_always_reach_the_engine(tmp_path: Path) -> None:
    r, eng = responder(SimPlatform.create(tmp_path / "p"), memo=False)
    for _ in range(3):
        assert ask(r, init_req()).initQuoteExRes.errorCode == 0
    assert eng.calls == 3
    probe = ask(r, init_req(b_pub=False)).initQuoteExRes  # inline: kept even without memo, no engine
    assert (probe.errorCode, probe.target_info, eng.calls) == (0, bytes(512), 3)


def test_table_is_bounded_and_answers_stay_right(tmp_path: Path) -> None:
    r, eng = responder(SimPlatform.create(tmp_path / "p"), memo=True)
    ask(r, init_req())
    for t in range(3 * AesmResponder.MEMO_LIMIT):  # distinct payloads (timeout differs), same answer
        res = ask(r, init_req(timeout=t, b_pub=False)).initQuoteExRes
        assert (res.errorCode, res.pub_key_id_size) == (0, 32)
        assert len(r._replies) <= AesmResponder.MEMO_LIMIT
    assert ask(r, size_req(timeout=1)).getQuoteSizeExRes.errorCode == 0  # evicted or not: still right


def test_a_drain_turn_is_short_while_tenants_mix(tmp_path: Path) -> None:
    """32 engine calls per loop turn for one tenant; 4 once another tenant called within the last second
    (between turns replies go out and new connections are read: a polite quote does not wait out a
    flood's 32-call batch at each step)."""
    from quotehelper.aesm.tenant import Tenant

    r, eng = responder(SimPlatform.create(tmp_path / "p"), memo=False)
    a, b = Tenant("a", "a"), Tenant("b", "b")

    async def one_turn(who: list[Tenant]) -> int:
        futs = [r(size_req().SerializeToString(), t) for t in who]
        before = eng.calls
        r._drain()  # the turn the loop would run next
        ran = eng.calls - before
        await asyncio.gather(*[f for f in futs if isinstance(f, asyncio.Future)])
        return ran

    assert asyncio.run(one_turn([a] * 40)) == AesmResponder.BATCH
    assert asyncio.run(one_turn([a] * 39 + [b])) == AesmResponder.SHARED_BATCH


def test_with_tenants_mixing_and_nothing_queued_a_call_runs_at_once(tmp_path: Path) -> None:
    """What the queue would run next runs in the request's own turn (no two extra loop turns); a lone
    tenant's calls still go through the queue."""
    from quotehelper.aesm.tenant import Tenant

    r, eng = responder(SimPlatform.create(tmp_path / "p"), memo=False)
    a, b = Tenant("a", "a"), Tenant("b", "b")

    async def go() -> tuple[object, object]:
        lone = r(size_req().SerializeToString(), a)
        if isinstance(lone, asyncio.Future):
            await lone
        return lone, r(size_req().SerializeToString(), b)

    lone, mixed = asyncio.run(go())
    assert isinstance(lone, asyncio.Future) and isinstance(mixed, bytes)
    assert pb.Response.FromString(mixed[4:]).getQuoteSizeExRes.errorCode == 42  # the engine's own answer
    assert eng.calls == 2


def test_at_most_one_call_runs_in_its_own_turn_per_loop_turn(tmp_path: Path) -> None:
    from quotehelper.aesm.tenant import Tenant

    r, eng = responder(SimPlatform.create(tmp_path / "p"), memo=False)
    a, b = Tenant("a", "a"), Tenant("b", "b")

    async def go() -> list[object]:
        first = r(size_req().SerializeToString(), a)
        if isinstance(first, asyncio.Future):
            await first
        out = [r(size_req().SerializeToString(), t) for t in (b, a, b)]  # one loop turn
        await asyncio.gather(*[f for f in out if isinstance(f, asyncio.Future)])
        return out

    out = asyncio.run(go())
    assert [isinstance(x, bytes) for x in out] == [True, False, False]


def test_no_call_runs_in_its_own_turn_before_a_drain_turns_replies_are_out(tmp_path: Path) -> None:
    """A turn that ran queued calls has their replies still to write (next turn): a request arriving in it
    queues behind them instead of running its engine call first."""
    from quotehelper.aesm.tenant import Tenant

    r, _ = responder(SimPlatform.create(tmp_path / "p"), memo=False)
    a, b = Tenant("a", "a"), Tenant("b", "b")

    async def go() -> object:
        queued = [r(size_req().SerializeToString(), t) for t in (a, b)]  # tenants mix; both queued
        await asyncio.sleep(0)  # the drain turn: queue emptied, replies set, their callbacks next turn
        late = r(size_req().SerializeToString(), a)
        await asyncio.gather(*[f for f in [*queued, late] if isinstance(f, asyncio.Future)])
        return late

    assert isinstance(asyncio.run(go()), asyncio.Future)


def held_responder(tmp_path: Path, **opts: int) -> tuple[AesmResponder, Counting, Anticipation, Tenant, Tenant]:
    from quotehelper.aesm.anticipate import Anticipation
    from quotehelper.aesm.tenant import Tenant

    ant = Anticipation(0.02)
    eng = Counting(SimPlatform.create(tmp_path / "p").engine())
    r = AesmResponder(Dispatcher([DEFAULT_ECDSA_ATT_KEY_ID]), eng, ServeOptions(**opts), ant)  # type: ignore[arg-type]
    heavy, light = Tenant("h", "h"), Tenant("l", "l")
    now = time.monotonic()
    for _ in range(40):
        ant.seen(heavy, now)
    ant.seen(light, now)
    return r, eng, ant, heavy, light


def test_during_a_hold_a_light_tenants_call_runs_at_once_and_heavy_ones_wait_for_its_end(tmp_path: Path) -> None:
    """anticipate.py in the responder: with no hold a light tenant's call queues behind the heavy one's like
    anyone's; during a hold it runs in its own turn (one per turn: the next ones queue, and run before the
    heavy tenant's), and the heavy tenant's queued and new calls run once the hold is over."""
    r, eng, ant, heavy, light = held_responder(tmp_path)
    req = size_req().SerializeToString()

    async def go() -> None:
        first = [r(req, heavy) for _ in range(5)] + [r(req, light)]
        assert all(isinstance(f, asyncio.Future) for f in first)  # no hold: the light one queues too
        await asyncio.gather(*first)
        await asyncio.sleep(0)  # the turn after the replies: a new request arrives
        ran = eng.calls
        now = time.monotonic()
        ant.favour(light, now)
        futs = [r(req, heavy) for _ in range(5)]  # during the hold: queued
        await asyncio.sleep(0)  # a drain turn: nothing it may run
        assert eng.calls == ran and all(isinstance(f, asyncio.Future) and not f.done() for f in futs)
        assert r._parked is not None and not r._ran_now  # parked on a timer (no spinning), turn not claimed
        out = r(req, light)
        assert isinstance(out, bytes) and eng.calls == ran + 1  # at once, ahead of the heavy ones
        again = r(req, light)  # the same turn: queued, but ahead of the heavy tenant's calls
        late = r(req, heavy)  # heavy, mixing, during a hold: queued too
        assert isinstance(again, asyncio.Future) and isinstance(late, asyncio.Future)
        await asyncio.wait_for(again, 1.0)
        assert eng.calls == ran + 2 and not late.done() and not any(f.done() for f in futs)
        await asyncio.sleep(0)
        assert r(req, light) == out and eng.calls == ran + 3  # a later turn: inline again
        await asyncio.sleep(0.005)  # several loop turns, inside the 20 ms hold
        assert not late.done() and not any(f.done() for f in futs)
        replies = await asyncio.wait_for(asyncio.gather(*futs, late), 1.0)
        assert time.monotonic() >= now + 0.02 and eng.calls == 15
        assert replies == [out] * 6  # the same request, the same engine answer

    asyncio.run(go())
