"""The hard budget: reservations before calls, settlement after, sliding hour/day windows.

The cap must hold over every window, for any interleaving of concurrent calls."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadow.budget import NANO, Budget, to_nano
from shadow.client import ModelClient
from shadow.config import ModelConfig
from shadow.http import HttpResponse


def max_window_spend(charges: list[tuple[float, int]], span: float) -> int:
    """The largest total charged in any window (t - span, t] (the max is at a charge time)."""
    best = 0
    for t, _ in charges:
        best = max(best, sum(n for u, n in charges if t - span < u <= t))
    return best


def test_reserve_settle_and_release() -> None:
    b = Budget(usd_per_hour=1.0)
    r = b.try_reserve(0.6)
    assert r and b.left_usd("hour") == pytest.approx(0.4)
    assert b.try_reserve(0.5) is False  # only the outstanding reservation is in the way
    b.settle(r, 0.1)  # type: ignore[arg-type]
    assert b.spent_usd("hour") == pytest.approx(0.1) and b.reserved == 0
    assert b.try_reserve(0.95) is None  # settled spend leaves no room: exhausted
    b.settle(r, 0.5)  # type: ignore[arg-type]  # settling twice changes nothing
    assert b.spent_usd("hour") == pytest.approx(0.1)


def test_windows_slide() -> None:
    now = [0.0]
    b = Budget(usd_per_hour=1.0, usd_per_day=1.5, clock=lambda: now[0])
    b.settle(b.try_reserve(1.0), 1.0)  # type: ignore[arg-type]
    assert b.try_reserve(0.01) is None
    now[0] = 3600.0  # the charge leaves the hour window; the day still holds it
    r = b.try_reserve(0.5)
    assert r and b.try_reserve(0.01) is False
    b.settle(r, 0.5)  # type: ignore[arg-type]
    assert b.try_reserve(0.01) is None  # the day cap is reached
    now[0] = 86400.0
    assert b.spent_usd("day") == pytest.approx(0.5) and b.try_reserve(0.4)


def test_zero_cap_lets_only_free_calls_through_and_inf_is_no_cap() -> None:
    b = Budget(usd_per_hour=0.0)
    assert b.try_reserve(0.0) and b.try_reserve(1e-9) is None
    u = Budget()
    assert not u.limited and u.left_usd("day") == math.inf and u.try_reserve(1e9)


def test_seed_from_stored_spend() -> None:
    now = [100_000.0]
    b = Budget(usd_per_hour=1.0, usd_per_day=2.0, clock=lambda: now[0])
    b.seed([(10.0, 0.5), (7200.0, 1.0), (90_000.0, 5.0)])  # the last is older than a day
    assert b.spent_usd("hour") == pytest.approx(0.5)
    assert b.spent_usd("day") == pytest.approx(1.5)
    assert b.try_reserve(0.6) is None and b.try_reserve(0.4)


def test_an_overrun_is_charged_in_full() -> None:
    b = Budget(usd_per_hour=1.0)
    r = b.try_reserve(0.1)
    b.settle(r, 0.3)  # type: ignore[arg-type]
    assert b.overruns == 1 and b.spent_usd("hour") == pytest.approx(0.3)


def test_integer_accounting_never_drifts() -> None:
    b = Budget(usd_per_hour=1.0)
    for _ in range(10):
        b.settle(b.try_reserve(0.1), 0.1)  # type: ignore[arg-type]
    # 0.1 is not exact in binary; nano-dollars rounded up keep the sum exact and on the safe side.
    assert b.windows["hour"].total == 10 * to_nano(0.1) >= NANO


# -- property: any interleaving of reserve / settle / time passing ---------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.floats(0, 0.5)),
    st.tuples(st.just("settle"), st.floats(0, 1)),  # actual as a share of the reservation
    st.tuples(st.just("wait"), st.floats(0, 5000)),
), max_size=120)


@given(ops, st.floats(0.05, 2.0), st.floats(0.1, 5.0))
@settings(max_examples=300, deadline=None)
def test_cap_holds_over_every_sliding_window(seq: list[tuple[str, float]], hour_cap: float,
                                             day_cap: float) -> None:
    now = [0.0]
    b = Budget(usd_per_hour=hour_cap, usd_per_day=day_cap, clock=lambda: now[0])
    open_: list[Any] = []
    charges: list[tuple[float, int]] = []
    for op, x in seq:
        if op == "reserve":
            r = b.try_reserve(x)
            if r:
                open_.append(r)
        elif op == "settle" and open_:
            r = open_.pop(int(x * 1000) % len(open_))
            actual = r.usd * x  # a provider that honours max_tokens: actual <= reserved
            b.settle(r, actual)
            charges.append((now[0], to_nano(actual)))
        else:
            now[0] += x
        assert b.reserved == sum(r.nano for r in open_)
    assert max_window_spend(charges, 3600) <= math.floor(hour_cap * NANO)
    assert max_window_spend(charges, 86400) <= math.floor(day_cap * NANO)


# -- property: many concurrent calls through the real client path ----------------------------

calls = st.lists(st.tuples(
    st.integers(1, 4000),     # prompt length (chars)
    st.integers(1, 2000),     # max_tokens asked by production
    st.floats(0, 1),          # share of max_tokens actually produced
    st.floats(0, 1),          # share of the prompt bound actually billed
    st.booleans(),            # the answer carries usage
    st.floats(0, 0.02),       # latency
), min_size=1, max_size=150)


@given(calls, st.floats(0.0005, 0.02))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_concurrent_calls_never_overshoot_the_cap(spec: list[tuple[Any, ...]], cap: float) -> None:
    by_prompt = {f"p{i}-" + "x" * n: s for i, (n, *s) in enumerate(spec)}

    class FakeHttp:
        """A fake transport: this tests the budget's arithmetic under concurrency, not HTTP."""

        async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                       timeout: float, *, ca_bundle: str | None = None) -> HttpResponse:
            return await handler(body)

        async def aclose(self) -> None:
            pass

    async def handler(content: bytes) -> HttpResponse:
        body = orjson.loads(content)
        mt, out_share, in_share, with_usage, latency = by_prompt[body["messages"][0]["content"]]
        await asyncio.sleep(latency)
        out: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": "y" * 3}}]}
        if with_usage:
            # Billed prompt tokens never exceed the body size (byte-level BPE); output <= max_tokens.
            out["usage"] = {"prompt_tokens": int(len(content) * in_share),
                            "completion_tokens": int(body["max_tokens"] * out_share)}
        return HttpResponse(200, {}, orjson.dumps(out))

    async def go() -> tuple[Budget, list[Any]]:
        budget = Budget(usd_per_hour=cap)
        cfg = ModelConfig(name="m", base_url="http://model.test/v1", input_per_mtok=0.5,
                          cached_input_per_mtok=0.25, output_per_mtok=4.0, max_tokens=1500)
        client = ModelClient(cfg, FakeHttp(), budget=budget)
        prompts = list(by_prompt)
        random.Random(len(prompts)).shuffle(prompts)
        results = await asyncio.gather(*(
            client.complete([{"role": "user", "content": p}],
                            {"max_tokens": by_prompt[p][0]}) for p in prompts))
        return budget, list(results)

    budget, results = asyncio.run(go())
    spent = sum(r.spend_usd for r in results)
    assert spent <= cap + 1e-12
    assert budget.spent_usd("hour") <= cap and budget.reserved == 0 and budget.overruns == 0
    assert {r.outcome for r in results} <= {"ok", "budget"}
    for r in results:
        if r.outcome == "ok":
            assert r.cost_usd == pytest.approx(r.spend_usd)
        else:
            assert r.spend_usd == 0 and "budget exhausted" in (r.error or "")


def test_the_journal_leases_room_ahead_of_use_and_gives_back_the_rest() -> None:
    leases: list[int] = []

    async def journal(nano: int) -> None:
        leases.append(nano)

    async def go() -> None:
        b = Budget(usd_per_hour=1.0, usd_per_day=5.0, journal=journal)
        assert b.lease_nano == to_nano(0.01)  # 1% of the smaller cap
        rs = []
        for _ in range(10):
            rs.append(await b.reserve(0.001))
            assert b.leased >= b.used  # room is journaled before a reservation is granted
        assert leases[0] == to_nano(0.01) and len(leases) <= 2  # the next chunk, ahead of need
        r = await b.reserve(0.001)
        assert b.leased >= b.used and len(leases) <= 3
        for x in [*rs, r]:
            assert x is not None
            b.settle(x, 0.0004)
        big = await b.reserve(0.05)  # more than a chunk: leased whole, before it is granted
        assert big is not None and b.leased >= b.used
        b.settle(big, 0.0)
        await b.release()
        # What stays leased is exactly what was charged: 11 x $0.0004.
        assert sum(leases) == b.used == 11 * to_nano(0.0004) and leases[-1] < 0

    asyncio.run(go())


def test_a_lease_that_cannot_be_written_refuses_the_call() -> None:
    async def broken(nano: int) -> None:
        raise OSError("disk full")

    async def go() -> None:
        b = Budget(usd_per_hour=1.0, journal=broken)
        assert await b.reserve(0.001) is None
        assert b.used == 0 and b.reserved == 0 and b.left_usd("hour") == pytest.approx(1.0)

    asyncio.run(go())


def test_no_cap_no_journal() -> None:
    async def journal(nano: int) -> None:
        raise AssertionError("an uncapped budget has nothing to guarantee")

    async def go() -> None:
        b = Budget(journal=journal)
        assert await b.reserve(1.0) is not None

    asyncio.run(go())


# -- property: the journal in a real DuckDB file, across random kills and clean stops ---------

life = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.floats(0.001, 0.6)),  # share of the cap
    st.tuples(st.just("fill"), st.floats(0.0005, 0.02)),   # small calls until the cap stops them
    st.tuples(st.just("settle"), st.floats(0, 1)),   # share of the reservation billed
    st.tuples(st.just("flush"), st.just(0.0)),       # settled results written to shadow_calls
    st.tuples(st.just("kill"), st.just(0.0)),        # kill -9: nothing in memory survives
    st.tuples(st.just("stop"), st.just(0.0)),        # SIGTERM: settle, flush, release
), max_size=80)


@given(life, st.floats(0.02, 1.0))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
def test_leases_never_exceed_the_cap_across_kills(tmp_path_factory: pytest.TempPathFactory,
                                                  seq: list[tuple[str, float]], cap: float) -> None:
    """Within one hour, whatever order calls, flushes, kills and stops come in: what every run
    leased (net of what clean stops gave back) stays within the cap, and so does what a
    restarted budget counts as spent; and real spend never exceeds what the journal counts."""
    from analytics.frames import results_to_frames
    from analytics.store import Store
    from shadow.results import CallResult, SampleResult

    store = Store(tmp_path_factory.mktemp("journal") / "b.duckdb")
    cap_nano = math.floor(cap * NANO)
    spent_nano = 0  # what the providers billed, over all runs

    def leased_total() -> int:
        return int(store.fetch("SELECT coalesce(sum(nano), 0) FROM budget_leases")[0][0])

    async def go() -> None:
        nonlocal spent_nano
        run = 0

        def start() -> Budget:
            nonlocal run
            run += 1
            rid = f"run-{run}"

            async def journal(nano: int) -> None:
                store.lease_budget(rid, nano)
            b = Budget(usd_per_hour=cap, journal=journal)
            b.seed(store.recent_shadow_spend())
            assert b.spent_usd("hour") <= cap + 1e-9  # a restart never shows more than the cap
            return b

        b, open_, unwritten, n = start(), [], [], 0

        def write() -> None:
            nonlocal unwritten, n
            res = []
            for usd in unwritten:
                n += 1
                res.append(SampleResult(f"s{n}", "done", calls=[CallResult(
                    "m", "a", 1, 0, 1, usd, 1.0, None, 1, "ok", "d", usd)]))
            if res:
                store.write_results(results_to_frames(res))
            unwritten = []

        for op, x in seq:
            if op == "reserve":
                try:
                    r = await asyncio.wait_for(b.reserve(x * cap), 0.05)
                except TimeoutError:
                    r = None  # waits for reservations in flight: a call that would wait
                if r is not None:
                    open_.append(r)
            elif op == "fill":
                for _ in range(400):
                    try:
                        r = await asyncio.wait_for(b.reserve(x * cap), 0.05)
                    except TimeoutError:
                        break
                    if r is None:
                        break
                    b.settle(r, r.usd)  # billed in full, settled at once, not written yet
                    spent_nano += r.nano
                    unwritten.append(r.usd)
                    await asyncio.sleep(0)  # the lease ahead runs
            elif op == "settle" and open_:
                r = open_.pop(0)
                actual = r.usd * x
                b.settle(r, actual)
                spent_nano += to_nano(actual)
                unwritten.append(to_nano(actual) / NANO)
            elif op == "flush":
                write()
            elif op == "kill":
                # Calls in flight may have been billed in full; nothing unwritten is stored.
                spent_nano += sum(r.nano for r in open_)
                b, open_, unwritten = start(), [], []
            elif op == "stop":
                for r in open_:
                    b.settle(r, r.usd)
                    spent_nano += r.nano
                    unwritten.append(r.usd)
                open_ = []
                write()
                await b.release()
                b = start()
            assert leased_total() <= cap_nano, (leased_total(), cap_nano)
            assert spent_nano <= cap_nano + len(seq)  # the hard cap (rounding: 1 nano a call)
        # What the journal (and the results) count covers what was really billed.
        b = start()
        assert to_nano(b.spent_usd("hour")) + len(seq) >= spent_nano

    try:
        asyncio.run(go())
    finally:
        store.close()


def test_room_freed_by_settlements_goes_back_to_the_journal() -> None:
    """A worst-case reservation settled far lower leaves room leased but unused: beyond two
    chunks it is given back (a negative row), keeping one chunk ahead, so a kill is charged
    little more than was spent."""
    leases: list[int] = []

    async def journal(nano: int) -> None:
        leases.append(nano)

    async def go() -> None:
        b = Budget(usd_per_hour=1.0, journal=journal)
        r = await b.reserve(0.3)
        assert r is not None and sum(leases) >= to_nano(0.3)
        b.settle(r, 0.001)
        for _ in range(5):
            await asyncio.sleep(0)  # the give-back runs
        assert leases[-1] < 0
        assert sum(leases) == b.leased == b.used + b.lease_nano
        r2 = await b.reserve(0.2)  # leased again, ahead of being granted
        assert r2 is not None and sum(leases) >= b.used
        b.settle(r2, 0.2)
        await b.release()
        assert sum(leases) == b.used == to_nano(0.001) + to_nano(0.2)

    asyncio.run(go())


def test_a_reservation_during_a_give_back_leases_its_own_room() -> None:
    """While the negative row is being written, a new reservation must not count on the room
    being given back: it waits and leases, so the journal always covers what is reserved."""
    rows: list[int] = []
    gate = asyncio.Event()

    async def journal(nano: int) -> None:
        rows.append(nano)
        if nano < 0:
            await gate.wait()

    async def go() -> None:
        b = Budget(usd_per_hour=1.0, journal=journal)
        r = await b.reserve(0.3)
        assert r is not None
        b.settle(r, 0.0)
        await asyncio.sleep(0)
        assert rows[-1] < 0  # the give-back is being written
        pending = asyncio.ensure_future(b.reserve(0.05))
        await asyncio.sleep(0.01)
        assert not pending.done()  # waits for the journal rather than spend on room given back
        gate.set()
        r2 = await pending
        assert r2 is not None and rows[-1] > 0 and sum(rows) >= b.used
        b.settle(r2, 0.05)
        await b.release()
        assert sum(rows) == b.used == to_nano(0.05)

    asyncio.run(go())


run_ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.floats(0.001, 0.3)),  # share of the cap, left in flight
    st.tuples(st.just("settle"), st.floats(0, 1)),          # share of the reservation billed
    st.tuples(st.just("flush"), st.just(0.0)),               # settled results written
), max_size=40)


@given(run_ops, st.lists(st.floats(0, 1), min_size=40, max_size=40), st.floats(0.05, 1.0))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
def test_a_kill_is_charged_what_it_may_have_paid_and_little_more(
        tmp_path_factory: pytest.TempPathFactory, seq: list[tuple[str, float]],
        billed: list[float], cap: float) -> None:
    """One run, killed after random calls and writes; a call in flight at the kill was billed
    some share of its worst case (any share: the provider may finish a call whose client is
    gone). The restarted budget charges the killed run at least what it paid and no row
    records, and beyond that at most two lease chunks plus, for the calls in flight, their worst
    case minus what they were billed (docs/architecture.md, "How conservative")."""
    from analytics.frames import results_to_frames
    from analytics.store import Store
    from shadow.results import CallResult, SampleResult

    store = Store(tmp_path_factory.mktemp("kill") / "k.duckdb")

    async def go() -> None:
        async def journal(nano: int) -> None:
            store.lease_budget("killed", nano)

        b = Budget(usd_per_hour=cap, journal=journal)
        open_: list[Any] = []
        unwritten: list[float] = []
        n = 0
        for op, x in seq:
            if op == "reserve":
                try:
                    r = await asyncio.wait_for(b.reserve(x * cap), 0.05)
                except TimeoutError:
                    r = None
                if r is not None:
                    open_.append(r)
            elif op == "settle" and open_:
                r = open_.pop(0)
                b.settle(r, r.usd * x)
                unwritten.append(to_nano(r.usd * x) / NANO)
            elif op == "flush" and unwritten:
                res = []
                for usd in unwritten:
                    n += 1
                    res.append(SampleResult(f"s{n}", "done", calls=[CallResult(
                        "m", "a", 1, 0, 1, usd, 1.0, None, 1, "ok", "d", usd)]))
                store.write_results(results_to_frames(res))
                unwritten = []
            for _ in range(3):
                await asyncio.sleep(0)  # leases ahead and give-backs in flight are written
        # kill -9: what the calls in flight were billed, and what no row records.
        in_flight_paid = sum(to_nano(r.usd * y) for r, y in zip(open_, billed, strict=False))
        slack = sum(r.nano - to_nano(r.usd * y) for r, y in zip(open_, billed, strict=False))
        unrecorded = sum(to_nano(u) for u in unwritten) + in_flight_paid
        written = store.fetch("SELECT coalesce(sum(spend_usd), 0) FROM shadow_calls")[0][0]
        charged = to_nano(sum(u for _, u in store.recent_shadow_spend()) - float(written))
        rounding = len(seq) + 2
        assert charged + rounding >= unrecorded
        assert charged <= unrecorded + 2 * b.lease_nano + slack + rounding

    try:
        asyncio.run(go())
    finally:
        store.close()


def test_charges_are_kept_in_bounded_entries_never_expiring_early() -> None:
    """20 charges a second for two hours: each window keeps at most ~3,600 entries (the day
    window held one per call before), and what a window counts is never less than the exact
    sum of the charges in it, nor more than that plus the charges of one grain before it."""
    now = [0.0]
    b = Budget(usd_per_hour=1e6, usd_per_day=1e6, clock=lambda: now[0])
    rnd = random.Random(7)
    charges: list[tuple[float, int]] = []
    for step in range(2 * 3600 * 20):
        now[0] = step / 20 + rnd.random() / 40
        r = b.try_reserve(1e-6)
        assert r
        nano = rnd.randint(1, 1000)
        b.settle(r, nano / NANO)  # type: ignore[arg-type]
        charges.append((now[0], to_nano(nano / NANO)))  # as the budget rounds it
        if step % 9973 == 0 or step == 2 * 3600 * 20 - 1:
            for name, span in (("hour", 3600.0), ("day", 86400.0)):
                counted = to_nano(b.spent_usd(name))
                exact = sum(n for t, n in charges if t > now[0] - span)
                grain = span / 3600
                late = sum(n for t, n in charges if now[0] - span - grain < t <= now[0] - span)
                assert exact <= counted <= exact + late
    assert all(len(w.entries) <= 3601 for w in b.windows.values())


def test_an_instances_share_of_the_caps() -> None:
    """Instances of one consumer group split the caps by the partitions each owns."""
    b = Budget(usd_per_hour=1.0, usd_per_day=10.0)
    b.set_share(1 / 4)  # one partition of four
    assert b.left_usd("hour") == pytest.approx(0.25) and b.left_usd("day") == pytest.approx(2.5)
    r = b.try_reserve(0.2)
    assert r
    b.settle(r, 0.2)  # type: ignore[arg-type]
    assert b.try_reserve(0.1) is None  # past this instance's quarter, not the whole cap
    b.set_share(3 / 4)  # a rebalance gave it three
    assert b.left_usd("hour") == pytest.approx(0.55)
    assert b.cap_usd("hour") == pytest.approx(0.75) and Budget().cap_usd("day") == math.inf
    b.set_share(0.0)  # none: it pays for nothing more, spend already made stays counted
    assert b.try_reserve(0.01) is None and b.spent_usd("hour") == pytest.approx(0.2)
    assert b.cap_usd("hour") == 0.0  # a cap of nothing, not no cap


def test_a_larger_share_wakes_a_waiting_call() -> None:
    async def main() -> None:
        b = Budget(usd_per_hour=1.0)
        b.set_share(0.5)
        held = b.try_reserve(0.4)
        assert held
        waiting = asyncio.ensure_future(b.reserve(0.3))  # room only once the share grows
        await asyncio.sleep(0.01)
        assert not waiting.done()
        b.set_share(1.0)
        got = await asyncio.wait_for(waiting, 1.0)
        assert got is not None and got.nano == to_nano(0.3)

    asyncio.run(main())
