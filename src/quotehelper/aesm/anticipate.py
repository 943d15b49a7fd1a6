"""Anticipatory hold: after a light tenant is answered, every worker makes the heavy tenants wait briefly.

Why: a flooding tenant's client spends a CPU of its own turning replies into new requests. On a small node
that is the CPU a polite client needs to read its reply and send its next step (InitQuoteEx, then
GetQuoteSizeEx, then GetQuoteEx, each a new connection), and the kernel's tick (4 ms at HZ=250) decides
how long it waits for it (measured with `perf sched` events: a woken polite client waited out one or two
slices of the flood generator or of the workers). Answering the flood is what keeps its client runnable.
So while a light tenant is being answered, and for `span` seconds after each of its answers, the workers
answer only light tenants: the heavy tenants' connections and engine calls wait in the service, their
clients block, and the light client finds a CPU. Anticipatory disk schedulers idle the same way for the
next request of the process they just served (Iyer and Druschel, SOSP 2001).

Who is light: a tenant that brought fewer than 1/`SHARE` of the connections this worker accepted in the
last two `EPOCH`s, counted only while tenants mix (TenantMix). A lone tenant is never held, and a tenant
with a fair share of a busy service is not light. Bounded: each worker extends the hold by at most
`BUDGET` of every `PERIOD`, so heavy tenants keep most of the service however often light ones call.

The hold is one CLOCK_MONOTONIC deadline (8 bytes) in a memfd the supervisor creates and every worker
maps, read and written without a lock: a lost update shortens one hold. Measured cost (bench/fairness.py,
2 CPUs): flood throughput 10-25 % lower while a polite tenant quotes every 20 ms, polite p99 under the
floods 1.2-1.9x alone instead of 3-5x.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the supervisor imports this module for shared_hold_fd and stays light
    from quotehelper.aesm.tenant import Tenant

_UNTIL = struct.Struct("=d")  # seconds, time.monotonic (== asyncio's loop.time): one clock for all processes

EPOCH = 0.05  # seconds; lightness looks at the last two
SHARE = 4  # light: under 1/SHARE of the connections accepted lately
PERIOD = 0.1  # seconds
BUDGET = 0.3  # of each PERIOD, the most this worker holds the heavy tenants


def shared_hold_fd() -> int:
    """A memfd for the workers' shared hold (the supervisor passes it to each worker it starts)."""
    fd = os.memfd_create("quotehelper-hold", os.MFD_CLOEXEC)
    os.ftruncate(fd, _UNTIL.size)
    return fd


class Anticipation:
    """One worker's side of the hold: `span` seconds (> 0); `fd` from `shared_hold_fd()`, or None for a
    hold of this process only. Times are the caller's `now` (time.monotonic / loop.time)."""

    def __init__(self, span: float, fd: int | None = None) -> None:
        self.span = span
        self._map = mmap.mmap(-1 if fd is None else fd, _UNTIL.size)
        self._cur: dict[Tenant, int] = {}  # connections accepted per tenant, this epoch and the one before
        self._prev: dict[Tenant, int] = {}
        self._cur_total = self._prev_total = 0
        self._epoch_at = float("-inf")
        self._period_at = float("-inf")
        self._spent = 0.0  # hold extended by this worker in the current period
        self.held = 0.0  # seconds this worker extended the hold by, in all (metrics)

    def close(self) -> None:
        self._map.close()

    def seen(self, tenant: Tenant, now: float) -> None:
        """A connection of `tenant` was accepted while tenants mix."""
        if now - self._epoch_at >= EPOCH:
            if now - self._epoch_at < 2 * EPOCH:
                self._prev, self._prev_total = self._cur, self._cur_total
            else:
                self._prev, self._prev_total = {}, 0
            self._cur, self._cur_total = {}, 0
            self._epoch_at = now
        self._cur[tenant] = self._cur.get(tenant, 0) + 1
        self._cur_total += 1

    def light(self, tenant: Tenant) -> bool:
        mine = self._cur.get(tenant, 0) + self._prev.get(tenant, 0)
        return mine * SHARE < self._cur_total + self._prev_total

    def until(self, now: float) -> float:
        """When the current hold ends, or 0.0 when none is on."""
        (until,) = _UNTIL.unpack_from(self._map)
        return until if until > now else 0.0

    def waits(self, tenant: Tenant, now: float) -> bool:
        """Whether `tenant` must wait now: a hold is on and it is not light."""
        return bool(self.until(now)) and not self.light(tenant)

    def favour(self, tenant: Tenant, now: float) -> None:
        """`tenant` is being answered: if it is light, hold the heavy ones until `now + span`, within this
        worker's budget."""
        if tenant.denied or not self.light(tenant):
            return
        if now - self._period_at >= PERIOD:
            self._period_at, self._spent = now, 0.0
        (until,) = _UNTIL.unpack_from(self._map)
        start = max(until, now)
        end = min(now + self.span, start + BUDGET * PERIOD - self._spent)  # within the budget left
        gain = end - start
        if gain <= 0:
            return
        self._spent += gain
        self.held += gain
        _UNTIL.pack_into(self._map, 0, end)

    def release(self) -> None:
        """No hold (a stopping worker must not keep the others waiting)."""
        _UNTIL.pack_into(self._map, 0, 0.0)
