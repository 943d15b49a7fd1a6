"""FairQueue (deficit round robin over per-tenant queues), without sockets: turn order, engine-time
fairness with unequal call costs, the per-tenant and total limits, and who gets AESM_BUSY."""

from __future__ import annotations

import collections

from quotehelper.aesm.scheduler import FairQueue
from quotehelper.aesm.tenant import Tenant


def tenants(*names: str) -> list[Tenant]:
    return [Tenant(n, n) for n in names]


def run(q: FairQueue[int], cost: dict[Tenant, float], n: int) -> list[Tenant]:
    """Pops n items, charging each its tenant's cost; returns who ran, in order."""
    order = []
    for _ in range(n):
        nxt = q.pop()
        assert nxt is not None
        order.append(nxt[0])
        q.charge(nxt[0], cost[nxt[0]])
    return order


def test_a_newcomer_waits_one_turn_not_the_whole_flood() -> None:
    flood, polite = tenants("flood", "polite")
    q: FairQueue[int] = FairQueue(limit=1000, tenant_limit=1000, quantum=100e-6)
    for i in range(500):
        assert q.push(flood, i) == (True, None)
    cost = {flood: 50e-6, polite: 50e-6}
    run(q, cost, 3)  # the flood is mid-turn
    assert q.push(polite, 0) == (True, None)
    order = run(q, cost, 4)
    assert polite in order  # within one flood turn (2 calls at 50 us per 100 us quantum), not after 497
    assert (flood.queued, polite.queued, len(q)) == (494, 0, 494)


def test_engine_time_is_shared_not_call_counts() -> None:
    slow, fast = tenants("slow", "fast")
    q: FairQueue[int] = FairQueue(limit=10_000, tenant_limit=10_000, quantum=100e-6)
    for i in range(3000):
        q.push(slow, i)
        q.push(fast, i)
    cost = {slow: 400e-6, fast: 40e-6}
    counts = collections.Counter(run(q, cost, 1100))
    time_slow, time_fast = counts[slow] * cost[slow], counts[fast] * cost[fast]
    assert 0.8 < time_slow / time_fast < 1.25  # equal engine time; 10x as many fast calls
    assert counts[fast] > 5 * counts[slow]


def test_idle_tenants_save_no_credit() -> None:
    a, b = tenants("a", "b")
    q: FairQueue[int] = FairQueue(limit=100, tenant_limit=100, quantum=100e-6)
    q.push(a, 0)
    run(q, {a: 1e-6}, 1)  # a's queue emptied: it leaves the rotation, its deficit is dropped
    for i in range(10):
        q.push(a, i)
        q.push(b, i)
    order = run(q, {a: 100e-6, b: 100e-6}, 10)
    assert collections.Counter(order) == {a: 5, b: 5}  # strict alternation, no saved-up burst for a


def test_tenant_limit_refuses_only_that_tenant() -> None:
    a, b = tenants("a", "b")
    q: FairQueue[int] = FairQueue(limit=100, tenant_limit=3)
    assert [q.push(a, i)[0] for i in range(5)] == [True, True, True, False, False]
    assert q.push(b, 0) == (True, None)


def test_full_queue_busies_the_biggest_tenant() -> None:
    flood, polite, third = tenants("flood", "polite", "third")
    q: FairQueue[str] = FairQueue(limit=4, tenant_limit=4)
    for i in range(4):
        q.push(flood, f"f{i}")
    assert q.push(polite, "p0") == (True, (flood, "f3"))  # the flood's newest call makes room
    assert q.push(polite, "p1") == (True, (flood, "f2"))
    assert q.push(third, "t0") == (True, (flood, "f1"))  # flood 2 -> 1 vs third 0 -> 1: still bigger
    assert q.push(third, "t1") == (False, None)  # nobody has more than third would: third is refused
    assert (flood.queued, polite.queued, third.queued, len(q)) == (1, 2, 1, 4)
    served = []
    while (x := q.pop()) is not None:
        served.append(x[1])
        q.charge(x[0], 1e-6)
    assert sorted(served) == ["f0", "p0", "p1", "t0"]


def test_drain_empties_everything() -> None:
    a, b = tenants("a", "b")
    q: FairQueue[int] = FairQueue(limit=10, tenant_limit=10)
    for i in range(3):
        q.push(a, i)
        q.push(b, i)
    assert len(q.drain()) == 6 and len(q) == 0 and a.queued == b.queued == 0 and q.pop() is None


def test_pop_passes_over_skipped_tenants_without_using_their_turn() -> None:
    a, b, c = tenants("a", "b", "c")
    q: FairQueue[int] = FairQueue(limit=100, tenant_limit=100, quantum=1.0)
    for i in range(3):
        for t in (a, b, c):
            q.push(t, i)
    held = {a, c}
    got = [q.pop(lambda t: t in held) for _ in range(4)]
    assert [x[0] if x else None for x in got] == [b, b, b, None]  # only b's; then nothing poppable
    assert q.size == 6 and a.queued == 3 and c.queued == 3
    assert q.pop(lambda t: True) is None  # everything skipped: None, not a loop
    rest = [q.pop()[0].key for _ in range(6)]  # type: ignore[index]
    assert sorted(rest) == ["a"] * 3 + ["c"] * 3 and q.pop() is None


def test_a_skip_neither_costs_the_skipped_their_turn_nor_strands_a_tenant_out_of_credit() -> None:
    h1, light, h2 = tenants("h1", "light", "h2")
    q: FairQueue[int] = FairQueue(limit=100, tenant_limit=100, quantum=1e-6)
    for t in (h1, light, h2):
        for i in range(3):
            q.push(t, i)
    assert q.pop()[0] is h1  # type: ignore[index]
    q.charge(h1, 1.0)
    rot = {x.tenant: x for x in q._rotation}
    before = {t: (rot[t].deficit, rot[t].in_turn) for t in (h1, h2)}
    got = q.pop(lambda t: t is not light)  # light has no credit yet: its turn gives it some
    assert got is not None and got[0] is light
    q.charge(light, 1.0)  # now out of credit, between two skipped tenants
    got = q.pop(lambda t: t is not light)  # not None: its next turn comes round
    assert got is not None and got[0] is light
    assert {t: (rot[t].deficit, rot[t].in_turn) for t in (h1, h2)} == before  # skipped: untouched
