"""payload -> reply in the worker that holds the engine: inline answers, the reply memo, the per-tenant
fair queue of engine calls (scheduler.py), and the counts the metrics flush reads."""

from __future__ import annotations

import asyncio
import functools
import logging
from time import monotonic, perf_counter

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.anticipate import Anticipation
from quotehelper.aesm.codes import AesmError, aesm_name
from quotehelper.aesm.framing import encode_frame
from quotehelper.aesm.handlers import (
    GET_QUOTE_EX,
    GET_QUOTE_SIZE_EX,
    INIT_QUOTE_EX,
    BadFrame,
    Dispatcher,
    EngineCall,
    engine_call_error,
    error_response,
    parse_request,
    run_engine_call,
    selected_call,
)
from quotehelper.aesm.metrics import CALL_LABELS, LEGACY, UNPARSEABLE, LatencyBuckets
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.scheduler import FairQueue
from quotehelper.aesm.tenant import Tenant, TenantMix
from quotehelper.platform.engine import QuotingEngine

log = logging.getLogger(__name__)

# What a responder returns for one request payload: reply bytes now, a future of them, or None (close).
Reply = bytes | asyncio.Future[bytes] | None
ANYONE = Tenant("all", "all")  # the tenant of callers that do not say (tests, the in-process path)
DENIED_LOG_INTERVAL = 10.0  # seconds between log lines about one denied tenant
_SUCCESS = "AESM_SUCCESS"


class AesmResponder:
    """payload, tenant -> reply, in the process that holds the engine.

    Calls that need no engine (key-id catalogue, SelectAttKeyID, the InitQuoteEx probe, legacy calls,
    anything failing AESM's own checks) are answered at once, so they never wait behind quotes. Engine
    calls join the tenant's queue in a `FairQueue` (deficit round robin across tenants), drained a few
    at a time per event-loop iteration (so accepts and cheap calls interleave with quoting); a tenant
    over its share of the queue gets AESM_BUSY, so memory stays bounded and others keep their turn.
    A denied tenant (`tenant.denied`) gets AESM_SERVICE_UNAVAILABLE (30) for every call, and a log line.
    During an anticipatory hold (`anticipation`, shared with the server) a light tenant's call runs in its
    own turn and the heavy tenants' queued calls wait for the hold's end.

    Replies that are a function of the request bytes alone are kept in a small table keyed by those
    bytes, so a repeated request costs one dict lookup (no protobuf parse): every inline answer (the
    dispatcher's state is fixed for its lifetime), and, when `memo` is set, successful
    InitQuoteEx/GetQuoteSizeEx answers - right for engines that keep their attestation key for the life
    of the process (the software QE), wrong for ones that may re-certify it (leave `memo` off for DCAP).
    """

    MEMO_LIMIT = 64  # entries; payloads differ only in key id and timeout. Oldest evicted first.
    MEMO_MAX_PAYLOAD = 2048  # requests above this (e.g. a long SelectAttKeyID list) are not kept
    BATCH = 32  # engine calls per event-loop iteration (32 x ~36 us: cheap calls wait at most ~1.2 ms)
    # ... while one tenant is calling. While tenants mix (TenantMix), 4: replies go out (their
    # futures' callbacks) and new connections are read only between batches, so under a GetQuoteEx flood
    # a polite quote waited out the rest of a 32-call batch at each of its steps (bench/fairness.py, 512
    # connections: polite p99 10-15x alone with 32, 1.5-2.1x with 4)
    SHARED_BATCH = 4

    def __init__(self, dispatcher: Dispatcher, engine: QuotingEngine, options: ServeOptions | None = None,
                 anticipation: Anticipation | None = None) -> None:
        options = options or ServeOptions()
        self.dispatcher = dispatcher
        self.engine = engine
        self.queue_limit = options.queue_limit
        self.memo = options.memo
        self.busy_replies = 0
        # (call, code name) -> requests since the last metrics flush; plain dict so counting costs ~0.1 us
        self.counts: dict[tuple[str, str], int] = {}
        self.quote_latency = LatencyBuckets()
        self._peak_queue = 0
        self._replies: dict[bytes, tuple[bytes, tuple[str, str]]] = {}  # payload -> (frame, counts key)
        # (engine call, future, payload, perf_counter when queued)
        self._queue: FairQueue[tuple[EngineCall, asyncio.Future[bytes], bytes, float]] = FairQueue(
            options.queue_limit, options.tenant_queue)
        self._scheduled = False
        self._ran_now = False  # an engine call ran in its request's own turn (at most one per loop turn)
        self._mix = TenantMix()  # every request, engine call or not, denied ones aside
        self._ant = anticipation  # the server's: during a hold, heavy tenants' calls wait
        self._parked: asyncio.TimerHandle | None = None  # the drain, waiting for a hold to end

    def _remember(self, payload: bytes, frame: bytes, key: tuple[str, str]) -> None:
        if len(payload) > self.MEMO_MAX_PAYLOAD:
            return
        if len(self._replies) >= self.MEMO_LIMIT:
            del self._replies[next(iter(self._replies))]
        self._replies[payload] = (frame, key)

    def _count(self, key: tuple[str, str]) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def __call__(self, payload: bytes, tenant: Tenant = ANYONE) -> Reply:
        tenant.requests += 1
        if tenant.denied:
            return self._deny(payload, tenant)
        queue = self._queue
        mix = self._mix
        if tenant is not mix.last:
            mix.seen(tenant, perf_counter())
        hit = self._replies.get(payload)
        if hit is not None:
            counts = self.counts
            key = hit[1]
            counts[key] = counts.get(key, 0) + 1
            if key[1] != _SUCCESS:
                tenant.errors += 1
            return hit[0]
        try:
            req = parse_request(payload)
        except BadFrame:
            self._count(UNPARSEABLE)
            tenant.errors += 1
            return None
        out = self.dispatcher.inline(req)
        if out is None:
            self._count(UNPARSEABLE)
            tenant.errors += 1
            return None
        if not isinstance(out, EngineCall):
            key = counts_key(out)
            self._count(key)
            if key[1] != _SUCCESS:
                tenant.errors += 1
            frame = encode_frame(out.SerializeToString())
            self._remember(payload, frame, key)
            return frame
        ant = self._ant
        if ant is not None and ant.until(monotonic()):  # a hold is on (anticipate.py)
            if not self._ran_now and not tenant.queued and ant.light(tenant):
                # A light tenant's call: heavy ones wait, so it is what the queue would run next. One per
                # loop turn, as below; the next ones queue (and are run before the heavy tenants')
                asyncio.get_running_loop().call_soon(self._next_turn)
                self._ran_now = True
                tenant.wait_count += 1
                return self._run(call=out, payload=payload, tenant=tenant)
        elif not queue.size and not self._scheduled and not self._ran_now \
                and mix.active(perf_counter()):
            # Tenants mix and no engine call waits: this one is what the queue would run next; run it now
            # rather than two loop turns later (behind whatever else those turns hold). One per loop turn:
            # the next ones queue, so a turn never runs a string of calls back to back
            asyncio.get_running_loop().call_soon(self._next_turn)
            self._ran_now = True
            tenant.wait_count += 1
            return self._run(call=out, payload=payload, tenant=tenant)
        fut = self._enqueue(tenant, out, payload)
        return self._busy(tenant, out) if fut is None else fut

    def _next_turn(self) -> None:
        self._ran_now = False

    def _run(self, call: EngineCall, payload: bytes, tenant: Tenant) -> bytes:
        try:
            return self._execute(call, payload, tenant)
        except Exception:  # the client gets an answer whatever the engine did
            log.exception("engine call %d failed", call.tag)
            self._count((_ENGINE_CALL_LABELS[call.tag], "AESM_UNEXPECTED_ERROR"))
            tenant.errors += 1
            return encode_frame(failure_response(call, AesmError.UNEXPECTED_ERROR))

    def _enqueue(self, tenant: Tenant, call: EngineCall, payload: bytes) -> asyncio.Future[bytes] | None:
        """Queues an engine call; None when the tenant is refused (over its share)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        admitted, evicted = self._queue.push(tenant, (call, fut, payload, perf_counter()))
        if not admitted:
            return None
        if evicted is not None:  # another tenant had more queued: its newest call makes room
            victim, (vcall, vfut, _, _) = evicted
            if not vfut.done():
                vfut.set_result(self._busy(victim, vcall))
        depth = len(self._queue)
        if depth > self._peak_queue:
            self._peak_queue = depth
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        elif self._parked is not None:  # the drain waits for a hold to end: this call may not have to
            self._parked.cancel()
            self._parked = None
            loop.call_soon(self._drain)
        return fut

    def _busy(self, tenant: Tenant, call: EngineCall) -> bytes:
        self.busy_replies += 1
        tenant.busy += 1
        tenant.errors += 1
        self._count((_ENGINE_CALL_LABELS[call.tag], "AESM_BUSY"))
        return encode_frame(failure_response(call, AesmError.BUSY))

    def _deny(self, payload: bytes, tenant: Tenant) -> Reply:
        """AESM_SERVICE_UNAVAILABLE in the call's own response message (what AESM answers for a call it
        has no plugin for), so clients report SGX_ERROR_SERVICE_UNAVAILABLE; unparseable: closed."""
        tenant.refused += 1
        tenant.errors += 1
        try:
            req = parse_request(payload)
        except BadFrame:
            req = None
        call = selected_call(req) if req is not None else None
        if call is None:
            self._count(UNPARSEABLE)
            return None
        res = Dispatcher.fill_defaults(call, getattr(req, call), error_response(call, AesmError.SERVICE_UNAVAILABLE))
        self._count(counts_key(res))
        now = perf_counter()
        if now - tenant.log_at >= DENIED_LOG_INTERVAL or tenant.refused == 1:
            tenant.log_at = now
            log.warning("denied %s: %s answered AESM_SERVICE_UNAVAILABLE (%d refused so far)",
                        tenant.describe(), call, tenant.refused)
        return encode_frame(res.SerializeToString())

    @property
    def queued(self) -> int:
        return len(self._queue)

    def take_peak_queue(self) -> int:
        """The deepest the engine queue got since the previous call."""
        peak, self._peak_queue = self._peak_queue, len(self._queue)
        return peak

    def _drain(self) -> None:
        queue = self._queue
        self._parked = None
        ant = self._ant
        skip = None
        until = 0.0
        if ant is not None and queue.size:
            now = monotonic()
            until = ant.until(now)
            if until:  # a light tenant is being answered: the heavy ones' calls wait for the hold's end
                skip = functools.partial(ant.waits, now=now)
        stalled = False
        try:
            batch = self.SHARED_BATCH if self._mix.active(perf_counter()) else self.BATCH
            for _ in range(batch):
                nxt = queue.pop(skip)
                if nxt is None:
                    stalled = queue.size > 0
                    break
                tenant, (call, fut, payload, queued_at) = nxt
                if fut.done():  # the client went away meanwhile
                    continue
                if not self._ran_now:
                    # This turn's engine time goes to queued calls: no call runs in its own turn until the
                    # replies computed here have gone out (their callbacks run next turn, before _next_turn)
                    self._ran_now = True
                    asyncio.get_running_loop().call_soon(self._next_turn)
                t0 = perf_counter()
                tenant.wait_sum += t0 - queued_at
                tenant.wait_count += 1
                fut.set_result(self._run(call, payload, tenant))  # never leaves a client waiting
                queue.charge(tenant, perf_counter() - t0)
        finally:
            if stalled:
                self._parked = asyncio.get_running_loop().call_at(until, self._drain)
            elif queue.size:
                asyncio.get_running_loop().call_soon(self._drain)  # let I/O in before the next batch
            else:
                self._scheduled = False

    def _execute(self, call: EngineCall, payload: bytes, tenant: Tenant) -> bytes:
        res = run_engine_call(self.engine, call, self.quote_latency.observe)
        frame = encode_frame(res.SerializeToString())
        code = getattr(res, _ENGINE_RES_FIELD[call.tag]).errorCode
        key = _engine_key(call.tag, code)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if code != AesmError.SUCCESS:
            tenant.errors += 1
        elif self.memo and call.tag != GET_QUOTE_EX and payload not in self._replies:
            self._remember(payload, frame, key)
        return frame


_ENGINE_CALL_LABELS = {INIT_QUOTE_EX: "InitQuoteEx", GET_QUOTE_SIZE_EX: "GetQuoteSizeEx", GET_QUOTE_EX: "GetQuoteEx"}
_ENGINE_RES_FIELD = {INIT_QUOTE_EX: "initQuoteExRes", GET_QUOTE_SIZE_EX: "getQuoteSizeExRes",
                     GET_QUOTE_EX: "getQuoteExRes"}


@functools.lru_cache(maxsize=256)
def _engine_key(tag: int, code: int) -> tuple[str, str]:
    # Cached: naming the code through the enum costs ~1 us, a cache hit ~0.1.
    return _ENGINE_CALL_LABELS[tag], aesm_name(code)


def counts_key(res: pb.Response) -> tuple[str, str]:
    """(call label, result code name) of a Response: the labels of the requests counter."""
    (field, sub), = res.ListFields()
    return CALL_LABELS.get(field.name, LEGACY), aesm_name(sub.errorCode)


def failure_response(call: EngineCall, code: int) -> bytes:
    """The serialized error Response for an engine call, with the fields AESM always sends."""
    return engine_call_error(call, code).SerializeToString()
