"""Which queued engine call runs next: deficit round robin over per-tenant queues (one per worker).

Each tenant with queued calls takes a turn in rotation; a turn adds `quantum` seconds of engine time to
the tenant's deficit, and the tenant's calls run while the deficit is positive, each charged what it
actually took (so a tenant whose calls are slow, e.g. DCAP quotes, gets as much engine time as one whose
calls are fast, not as many calls). A tenant whose queue empties leaves the rotation and its deficit is
reset: credit is not saved up while idle. One tenant's wait for the engine is then bounded by one turn
of every other tenant with work, however many calls those tenants have queued.

Admission (`push`) keeps memory bounded and sends AESM_BUSY to the tenant over its share:
- a tenant already at its own limit (`tenant_limit`) is refused;
- when the whole queue (`limit`) is full, the tenant with the longest queue gives up its newest call
  (returned, to be answered AESM_BUSY) if it has more queued than the newcomer would; otherwise the
  newcomer, itself the biggest, is refused.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

from quotehelper.aesm.tenant import Tenant

T = TypeVar("T")

QUANTUM = 200e-6  # seconds of engine time per turn: ~4 software quotes, or one DCAP quote
MAX_IDLE_QUEUES = 1024  # per-tenant queue objects kept; beyond, the empty ones are dropped


class _Queue(Generic[T]):
    __slots__ = ("tenant", "items", "deficit", "in_turn", "active")

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.items: collections.deque[T] = collections.deque()
        self.deficit = 0.0
        self.in_turn = False
        self.active = False  # in the rotation


class FairQueue(Generic[T]):
    """Per-tenant FIFOs served by deficit round robin. Not thread-safe (one event loop per worker).

    `push(tenant, item)` -> (admitted, evicted item or None); `pop()` -> (tenant, item) or None;
    `charge(tenant, seconds)` after running the popped item. `tenant.queued` is kept up to date.
    """

    def __init__(self, limit: int, tenant_limit: int, quantum: float = QUANTUM) -> None:
        self.limit = limit
        self.tenant_limit = tenant_limit
        self.quantum = quantum
        self.size = 0
        # Every tenant's queue, kept while empty (a lone client's queue empties and refills on every call;
        # re-creating it each time cost more than the rest of push + pop). Inactive ones are dropped past
        # MAX_IDLE_QUEUES.
        self._queues: dict[Tenant, _Queue[T]] = {}
        self._rotation: collections.deque[_Queue[T]] = collections.deque()  # the active ones, in turn order

    def __len__(self) -> int:
        return self.size

    def push(self, tenant: Tenant, item: T) -> tuple[bool, tuple[Tenant, T] | None]:
        """Queues `item`; returns (False, None) when `tenant` is refused, (True, (victim, its item)) when
        another tenant's newest call was dropped to make room, else (True, None)."""
        q = self._queues.get(tenant)
        if q is None:
            if len(self._queues) >= MAX_IDLE_QUEUES:
                self._queues = {t: x for t, x in self._queues.items() if x.active}
            q = self._queues[tenant] = _Queue(tenant)
        mine = len(q.items)
        if mine >= self.tenant_limit:
            return False, None
        evicted = None
        if self.size >= self.limit:
            big = max(self._rotation, key=lambda x: len(x.items))
            if len(big.items) <= mine + 1:
                return False, None
            evicted = big.tenant, big.items.pop()
            big.tenant.queued -= 1
            self.size -= 1
            if not big.items:
                self._rotation.remove(big)
                self._leave(big)
        if not q.active:
            q.active = True
            self._rotation.append(q)
        q.items.append(item)
        tenant.queued += 1
        self.size += 1
        return True, evicted

    def pop(self, skip: Callable[[Tenant], bool] | None = None) -> tuple[Tenant, T] | None:
        """The next item by deficit round robin, passing over (without using their turn) the tenants
        for which `skip` is true; None when nothing else is queued."""
        rot = self._rotation
        passed = 0
        while rot:
            q = rot[0]
            if skip is not None and skip(q.tenant):
                if passed >= len(rot) - 1:
                    return None
                passed += 1
                rot.rotate(-1)
                continue
            passed = 0
            if not q.in_turn:
                q.in_turn = True
                q.deficit += self.quantum
            if q.deficit > 0:
                item = q.items.popleft()
                q.tenant.queued -= 1
                self.size -= 1
                if not q.items:
                    rot.popleft()
                    self._leave(q)
                return q.tenant, item
            q.in_turn = False  # turn over: to the back of the rotation, keeping its (negative) deficit
            rot.rotate(-1)
        return None

    def charge(self, tenant: Tenant, seconds: float) -> None:
        """Charges a popped item's run time to its tenant (nothing if the tenant left the rotation)."""
        q = self._queues.get(tenant)
        if q is not None and q.active:
            q.deficit -= seconds

    def drain(self) -> list[tuple[Tenant, T]]:
        """Removes and returns everything queued, in serving order."""
        out = []
        while True:
            x = self.pop()
            if x is None:
                return out
            out.append(x)

    @staticmethod
    def _leave(q: _Queue[T]) -> None:
        """Out of the rotation (the caller removed it): credit is not saved up while idle."""
        q.active = q.in_turn = False
        q.deficit = 0.0
