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

Who is light: a tenant that brought at least one and fewer than 1/`SHARE` of the connections this worker
accepted in the last two `EPOCH`s, counted only while tenants mix (TenantMix). A lone tenant is never
light, nor one this worker has not seen lately, nor a denied one; a tenant with a fair share of a busy
service is not light. A hold starts only when a light tenant's reply has gone out.

Bounded for the whole service, not per worker: holds spend a token bucket shared by the workers, filled
at `BUDGET` seconds per second up to `BURST` seconds, so over any stretch of time heavy tenants are held
at most ~`BUDGET` of it (they keep half the service: a fair share against the light ones together), and
at most `BURST / (1 - BUDGET)` = 40 ms in one go. A polite client quoting every 20 ms needs ~25 % (its
quote plus one span, per quote).

The shared state (hold deadline, bucket level, bucket time: three doubles, CLOCK_MONOTONIC) lives in a
memfd the supervisor creates and every worker maps. Spending from the bucket takes a POSIX record lock
on it (non-blocking: a worker that finds it taken skips that extension rather than stall its loop behind
a preempted holder); reading the deadline takes none.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the supervisor imports this module for shared_hold_fd and stays light
    from quotehelper.aesm.tenant import Tenant

_STATE = struct.Struct("=3d")  # hold until, bucket level (s), bucket time; time.monotonic == loop.time

EPOCH = 0.05  # seconds; lightness looks at the last two
SHARE = 4  # light: under 1/SHARE of the connections accepted lately
BUDGET = 0.5  # of the time, at most, heavy tenants are held (all workers together): they keep half
BURST = 0.02  # seconds: the bucket's size, so at most BURST / (1 - BUDGET) = 40 ms held in one go
_INITIAL = _STATE.pack(0.0, BURST, float("-inf"))  # no hold, a full bucket


def shared_hold_fd() -> int:
    """A memfd for the workers' shared hold (the supervisor passes it to each worker it starts).
    Raises OSError where memfd_create is unavailable (the caller then gives each worker its own)."""
    fd = os.memfd_create("quotehelper-hold", os.MFD_CLOEXEC)
    os.pwrite(fd, _INITIAL, 0)
    return fd


class Anticipation:
    """One worker's side of the hold: `span` seconds (> 0); `fd` from `shared_hold_fd()`, or None for a
    hold of this process only. Times are the caller's `now` (time.monotonic / loop.time)."""

    def __init__(self, span: float, fd: int | None = None) -> None:
        self.span = span
        self._fd = fd
        self._map = mmap.mmap(-1 if fd is None else fd, _STATE.size)
        if fd is None:
            self._map[:] = _INITIAL
        self._cur: dict[Tenant, int] = {}  # connections accepted per tenant, this epoch and the one before
        self._prev: dict[Tenant, int] = {}
        self._cur_total = self._prev_total = 0
        self._epoch_at = float("-inf")
        self._off = False  # released: this worker no longer honours holds (it is stopping)
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
        if tenant.denied:
            return False
        mine = self._cur.get(tenant, 0) + self._prev.get(tenant, 0)
        return mine > 0 and mine * SHARE < self._cur_total + self._prev_total

    def until(self, now: float) -> float:
        """When the current hold ends, or 0.0 when none is on."""
        if self._off:
            return 0.0
        until = _STATE.unpack_from(self._map)[0]
        return until if until > now else 0.0

    def waits(self, tenant: Tenant, now: float) -> bool:
        """Whether `tenant` must wait now: a hold is on and it is not light."""
        return bool(self.until(now)) and not self.light(tenant)

    def favour(self, tenant: Tenant, now: float) -> None:
        """A reply to `tenant` went out: if it is light, hold the heavy ones until `now + span`, as far as
        the shared bucket allows."""
        if self._off or not self.light(tenant):
            return
        if self._fd is None:
            self._spend(now)
            return
        try:  # the bucket is read, spent and written back: one worker at a time
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another worker is extending the hold right now: that will do
            return
        try:
            self._spend(now)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _spend(self, now: float) -> None:
        until, level, at = _STATE.unpack_from(self._map)
        level = min(BURST, level + (now - at) * BUDGET) if now > at else level
        start = max(until, now)
        end = min(now + self.span, start + level)
        gain = end - start
        if gain <= 0:
            return
        self.held += gain
        _STATE.pack_into(self._map, 0, end, level - gain, max(now, at))

    def release(self) -> None:
        """Ends the hold, for every worker (the next light reply starts another), and this worker honours
        no more: it is stopping and must answer everyone."""
        self._off = True
        until, level, at = _STATE.unpack_from(self._map)
        _STATE.pack_into(self._map, 0, 0.0, level, at)
