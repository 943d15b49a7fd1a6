"""The anticipatory hold (aesm/anticipate.py): who is light, who waits, the budget, and the hold shared by
worker processes through a memfd (a real second process)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import subprocess
import sys
import time

import pytest

from quotehelper.aesm import anticipate
from quotehelper.aesm.anticipate import BUDGET, BURST, EPOCH, Anticipation, shared_hold_fd
from quotehelper.aesm.tenant import Tenant

SPAN = 0.004


def crowd(ant: Anticipation, now: float, **counts: int) -> dict[str, Tenant]:
    tenants = {k: Tenant(k, k) for k in counts}
    for k, n in counts.items():
        for _ in range(n):
            ant.seen(tenants[k], now)
    return tenants


def test_light_is_under_a_quarter_of_the_recent_connections() -> None:
    ant = Anticipation(SPAN)
    t = crowd(ant, 10.0, flood=300, polite=3, half=99)
    assert ant.light(t["polite"]) and not ant.light(t["flood"])
    assert ant.light(t["half"])  # 99 of 402: under a quarter
    ant.seen(t["half"], 10.0)
    ant.seen(t["half"], 10.0)
    assert not ant.light(t["half"])  # 101 of 404: a quarter is not light
    assert not ant.light(Tenant("unseen", "unseen"))  # not counted lately (e.g. alone until now): not light
    assert not ant.light(Tenant("d", "d", denied=True))
    alone = Anticipation(SPAN)
    assert not alone.light(crowd(alone, 10.0, only=5)["only"])  # a lone tenant never holds the others


def test_lightness_looks_at_the_last_two_epochs_only() -> None:
    ant = Anticipation(SPAN)
    t = crowd(ant, 10.0, flood=100, polite=40)  # polite not light: 40 of 140
    assert not ant.light(t["polite"])
    for _ in range(100):
        ant.seen(t["flood"], 10.0 + EPOCH)  # next epoch: 40 of 240
    assert ant.light(t["polite"])
    ant.seen(t["flood"], 10.0 + 3.5 * EPOCH)  # after two epochs with nothing the past is forgotten:
    ant.seen(t["polite"], 10.0 + 3.5 * EPOCH)  # 1 of 2 (with the past it would be 41 of 242: light)
    assert not ant.light(t["flood"]) and not ant.light(t["polite"])


def test_a_light_tenants_answer_makes_only_heavy_tenants_wait_for_span() -> None:
    ant = Anticipation(SPAN)
    t = crowd(ant, 10.0, flood=300, polite=1)
    assert not ant.waits(t["flood"], 10.0)  # no hold yet
    ant.favour(t["flood"], 10.0)  # heavy: gives no hold
    assert ant.until(10.0) == 0.0
    ant.favour(t["polite"], 10.0)
    assert ant.until(10.0) == pytest.approx(10.0 + SPAN)
    assert ant.waits(t["flood"], 10.001) and not ant.waits(t["polite"], 10.001)
    assert not ant.waits(t["flood"], 10.0 + SPAN + 1e-6)  # over
    ant.favour(t["polite"], 10.002)
    ant.release()
    assert not ant.waits(t["flood"], 10.002)
    denied = Tenant("d", "d", denied=True)
    ant.seen(denied, 10.002)
    ant.favour(denied, 10.002)  # denied tenants are nobody's priority
    assert ant.until(10.002) == 0.0


def hold_profile(ants: list[Anticipation], polite: Tenant, seconds: float, every: float = 0.0005) -> tuple[float, float]:
    """A light tenant answered every `every` seconds, by the workers in turn: (fraction of the time held,
    longest continuous hold), from the hold deadlines themselves."""
    longest = 0.0
    start: float | None = None
    end = 0.0
    now, i = 1000.0, 0
    while now < 1000.0 + seconds:
        if start is not None and not ants[0].until(now):  # the hold ended at `end`
            longest = max(longest, end - start)
            start = None
        ants[i % len(ants)].favour(polite, now)
        i += 1
        until = ants[0].until(now)
        if until:
            start = now if start is None else start
            end = until
        now += every
    return sum(a.held for a in ants) / seconds, longest


def test_heavy_tenants_are_held_at_most_the_budget_however_many_workers_hold() -> None:
    """The bucket is shared: with 1, 2 or 4 workers favouring a light tenant every 0.5 ms for 2 s, heavy
    tenants are held ~BUDGET of the time (not BUDGET per worker) and at most 40 ms in one go."""
    fd = shared_hold_fd()
    try:
        for workers in (1, 2, 4):
            os.pwrite(fd, anticipate._INITIAL, 0)
            ants = [Anticipation(SPAN, fd) for _ in range(workers)]
            polite = Tenant("p", "p")
            for a in ants:
                crowd(a, 1000.0, flood=100)
                a.seen(polite, 1000.0)
                a._epoch_at = 1e9  # the epoch never rolls in this synthetic run: the counts above stay
            share, longest = hold_profile(ants, polite, 2.0)
            assert BUDGET * 0.9 <= share <= BUDGET + BURST / 2.0 + 0.01, (workers, share)
            assert longest <= BURST / (1 - BUDGET) + 0.001, (workers, longest)
            for a in ants:
                a.close()
    finally:
        os.close(fd)


def test_a_hold_is_cut_to_what_is_left_in_the_bucket() -> None:
    ant = Anticipation(0.02)
    t = crowd(ant, 0.0, flood=100, polite=1)
    ant.favour(t["polite"], 0.0)  # a full bucket (20 ms): all of it
    assert ant.until(0.0) == pytest.approx(0.02)
    ant.favour(t["polite"], 0.010)  # to 0.030: 10 ms more; the bucket has refilled 0.5 * 10 = 5: to 0.025
    assert ant.until(0.0) == pytest.approx(0.025)
    ant.favour(t["polite"], 0.020)  # to 0.040: 15 ms more; refilled 5: to 0.030
    assert ant.until(0.0) == pytest.approx(0.030)
    assert ant.held == pytest.approx(0.030)


def test_the_hold_is_shared_by_processes_through_the_memfd() -> None:
    fd = shared_hold_fd()
    try:
        mine = Anticipation(SPAN, fd)
        t = crowd(mine, 0.0, flood=100)
        child = (f"import time; from quotehelper.aesm.anticipate import Anticipation; "
                 f"from quotehelper.aesm.tenant import Tenant; a = Anticipation({SPAN}, {fd}); "
                 "f, p = Tenant('f', 'f'), Tenant('p', 'p'); now = time.monotonic(); "
                 "[a.seen(f, now) for _ in range(100)]; a.seen(p, now); a.favour(p, now); print(now)")
        out = subprocess.run([sys.executable, "-c", child], pass_fds=(fd,), capture_output=True, text=True,
                             check=True)
        given = float(out.stdout)
        assert mine.until(given) == pytest.approx(given + SPAN)  # the child's hold, seen here
        assert mine.waits(t["flood"], given)
        mine.close()
    finally:
        os.close(fd)


def test_constants_are_what_the_docs_say() -> None:
    # README and --help quote these
    assert (anticipate.SHARE, anticipate.BUDGET, anticipate.BURST) == (4, 0.5, 0.02)




def test_the_cli_refuses_an_anticipation_out_of_range(tmp_path: object) -> None:
    from click.testing import CliRunner

    from quotehelper.cli import main

    r = CliRunner().invoke(main, ["serve", "--anticipation", "0.5", "--socket", "/nonexistent/x.socket"])
    assert r.exit_code == 2 and "--anticipation" in r.output and "Traceback" not in r.output


def _hammer(fd: int, seconds: float, out: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    ant = Anticipation(0.01, fd)
    t = crowd(ant, time.monotonic(), flood=100, polite=1)
    ant._epoch_at = 1e12  # the counts stay current
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        ant.favour(t["polite"], now)
    out.put(ant.held)


def test_workers_spending_at_once_never_spend_more_than_the_bucket_holds() -> None:
    """Four processes extending the hold as fast as they can for a second: what they spend together is
    what the bucket allows (its size plus BUDGET of the time), because spending is done under a lock
    (without it a stale write gives back spent time: 78-98 % held in the reviewer's runs)."""
    fd = shared_hold_fd()
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        t0 = time.monotonic()
        procs = [ctx.Process(target=_hammer, args=(fd, 1.0, out)) for _ in range(4)]
        for p in procs:
            p.start()
        spent = sum(out.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(30)
        elapsed = time.monotonic() - t0
        assert 0.3 < spent <= BURST + BUDGET * elapsed + 1e-6
    finally:
        os.close(fd)


def test_a_released_worker_neither_honours_nor_starts_holds() -> None:
    fd = shared_hold_fd()
    try:
        mine, other = Anticipation(SPAN, fd), Anticipation(SPAN, fd)
        t = crowd(mine, 1000.0, flood=100, polite=1)
        for k, n in (("flood", 100), ("polite", 1)):
            for _ in range(n):
                other.seen(t[k], 1000.0)
        mine.release()
        mine.favour(t["polite"], 1000.0)
        assert not other.until(1000.0)  # started none
        other.favour(t["polite"], 1000.0)
        assert other.until(1000.0) and not mine.until(1000.0) and not mine.waits(t["flood"], 1000.0)
    finally:
        os.close(fd)


def test_without_memfd_each_worker_holds_on_its_own(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from quotehelper.aesm import workers

    def no_memfd() -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(workers, "shared_hold_fd", no_memfd)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listen:
        sup = workers.WorkerSupervisor(workers.EngineSpec("x:y"), listen, 1)
        assert sup.hold_fd is None and "each worker keeps its own" in caplog.text
