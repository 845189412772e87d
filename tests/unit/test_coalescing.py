"""Operations that arrive together go in one batch, and each caller still gets its own outcome."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from services._runtime.coalescing import GATHER_TURNS, Coalescer


class Store:
    """Records each batch; a key in `refused` fails any batch it is in, and fails alone too."""

    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.alone: list[str] = []
        self.refused = refused
        self.release = asyncio.Event()
        self.release.set()
        self.held: set[str] = set()

    async def batch(self, items: Sequence[tuple[str, int]]) -> list[str]:
        self.batches.append([key for key, _ in items])
        if any(key in self.held for key, _ in items):
            await self.release.wait()
        await asyncio.sleep(0.001)
        if any(key in self.refused for key, _ in items):
            raise RuntimeError("refused")
        return [f"{key}={value}" for key, value in items]

    async def one(self, item: tuple[str, int]) -> str:
        key, value = item
        self.alone.append(key)
        if key in self.held:
            await self.release.wait()
        if key in self.refused:
            raise ValueError(f"{key} refused")
        return f"{key}={value}"


AT_MOST = 32


def coalescer(store: Store, **options: float) -> Coalescer[tuple[str, int], str]:
    return Coalescer(lambda item: item[0], store.batch, store.one, **options)  # type: ignore[arg-type]


async def test_one_call_on_a_quiet_coalescer_goes_alone() -> None:
    store = Store()
    assert await coalescer(store)(("a", 1)) == "a=1"
    assert store.batches == [["a"]]


async def test_calls_that_arrive_together_share_batches_and_get_their_own_results() -> None:
    store = Store()
    run = coalescer(store)
    results = await asyncio.gather(*(run((f"k{n}", n)) for n in range(50)))
    assert results == [f"k{n}={n}" for n in range(50)]
    assert len(store.batches) < 5
    assert sorted(key for batch in store.batches for key in batch) == sorted(f"k{n}" for n in range(50))


async def _arriving_one_per_turn(run: Coalescer[tuple[str, int], str], count: int, every: int = 1) -> list[str]:
    """Calls made one every `every` turns of the event loop, as a gRPC server hands them over."""
    calls = []
    for n in range(count):
        calls.append(asyncio.ensure_future(run((f"k{n}", n))))
        for _ in range(every):
            await asyncio.sleep(0)
    return await asyncio.gather(*calls)


async def test_calls_that_keep_arriving_turn_after_turn_wait_for_each_other_in_one_batch() -> None:
    store = Store()
    every = GATHER_TURNS // 2
    count = AT_MOST // every - 2
    results = await _arriving_one_per_turn(coalescer(store, gather_turns_at_most=AT_MOST), count, every=every)
    assert results == [f"k{n}={n}" for n in range(count)]
    # With a fixed few turns, the batch would have closed after two or three calls.
    assert store.batches == [[f"k{n}" for n in range(count)]]


async def test_a_batch_waits_for_late_company_only_a_bounded_number_of_turns() -> None:
    store = Store()
    await _arriving_one_per_turn(coalescer(store, gather_turns_at_most=AT_MOST), 3 * AT_MOST)
    assert len(store.batches[0]) <= AT_MOST + 1
    assert len(store.batches) >= 2


async def test_without_a_bound_of_its_own_a_batch_gathers_for_the_fixed_turns_only() -> None:
    store = Store()
    await _arriving_one_per_turn(coalescer(store), 4 * GATHER_TURNS)
    assert len(store.batches[0]) <= GATHER_TURNS + 1


async def test_a_call_followed_by_none_for_the_quiet_turns_goes_without_waiting_for_later_ones() -> None:
    store = Store()
    await _arriving_one_per_turn(coalescer(store, gather_turns_at_most=AT_MOST), 3, every=GATHER_TURNS + 2)
    assert store.batches[0] == ["k0"]


async def test_a_key_is_never_twice_in_a_batch_and_its_operations_keep_their_order() -> None:
    store = Store()
    run = coalescer(store)
    results = await asyncio.gather(*(run(("same" if n % 2 else f"k{n}", n)) for n in range(20)))
    assert results == [f"same={n}" if n % 2 else f"k{n}={n}" for n in range(20)]
    assert all(batch.count("same") <= 1 for batch in store.batches)
    assert [n for n in range(20) if n % 2] == [int(r.split("=")[1]) for r in results if r.startswith("same")]


async def test_a_failed_batch_is_run_item_by_item_so_only_the_refused_one_fails() -> None:
    store = Store(refused=frozenset({"k3"}))
    run = coalescer(store)
    results = await asyncio.gather(*(run((f"k{n}", n)) for n in range(8)), return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert [r for i, r in enumerate(results) if i != 3] == [f"k{n}={n}" for n in range(8) if n != 3]
    assert "k3" in store.alone


async def test_a_batch_past_its_bound_leaves_only_the_held_key_waiting() -> None:
    store = Store()
    store.held = {"k0"}
    store.release.clear()
    run = coalescer(store, batch_timeout=0.05)
    held = asyncio.create_task(run(("k0", 0)))
    others = [asyncio.create_task(run((f"k{n}", n))) for n in range(1, 6)]
    done, _ = await asyncio.wait(others, timeout=5)
    assert {task.result() for task in done} == {f"k{n}={n}" for n in range(1, 6)}
    assert not held.done()
    # A later operation on the held key waits for it, in order.
    after = asyncio.create_task(run(("k0", 99)))
    await asyncio.sleep(0.1)
    assert not after.done()
    store.release.set()
    assert await held == "k0=0"
    assert await after == "k0=99"


async def test_a_caller_that_stops_waiting_does_not_stop_the_batch() -> None:
    store = Store()
    run = coalescer(store)
    tasks = [asyncio.create_task(run((f"k{n}", n))) for n in range(6)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 2] == [f"k{n}={n}" for n in range(6) if n != 2]


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(lambda item: item, Store().batch, Store().one, max_batch=0)


async def test_batches_keep_to_their_limit_and_several_run_at_once() -> None:
    store = Store()
    store.held = {f"k{n}" for n in range(20)}
    store.release.clear()
    run = coalescer(store, max_batch=4, max_in_flight=3)
    calls = [asyncio.create_task(run((f"k{n}", n))) for n in range(20)]
    await asyncio.sleep(0.05)
    # Three batches of four went out together and wait; the rest wait for one of them to end.
    assert [len(batch) for batch in store.batches] == [4, 4, 4]
    store.release.set()
    assert await asyncio.gather(*calls) == [f"k{n}={n}" for n in range(20)]
    assert all(len(batch) <= 4 for batch in store.batches)


class Sessions:
    """A Coalescer session that records when it opens and closes, and which batches ran in each."""

    def __init__(self, store: Store, *, fails_to_open: bool = False) -> None:
        self.store = store
        self.fails_to_open = fails_to_open
        self.opened = 0
        self.open_now = 0
        self.batches_per_session: list[int] = []

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        if self.fails_to_open:
            raise ConnectionError("no connection to be had")
        self.opened += 1
        self.open_now += 1
        first_batch = len(self.store.batches)
        try:
            yield
        finally:
            self.open_now -= 1
            self.batches_per_session.append(len(self.store.batches) - first_batch)


async def test_batches_that_follow_each_other_share_one_session_closed_once_nothing_waits() -> None:
    store = Store()
    sessions = Sessions(store)
    run = Coalescer(lambda item: item[0], store.batch, store.one, max_batch=8, session=sessions.session)
    results = await asyncio.gather(*(run((f"k{n}", n)) for n in range(40)))
    assert results == [f"k{n}={n}" for n in range(40)]
    assert len(store.batches) >= 5
    # Callers have their answers before the flusher, finding nothing more, closes the session.
    await asyncio.sleep(0.01)
    assert sessions.batches_per_session == [len(store.batches)]
    assert sessions.open_now == 0
    # Later calls, on a quiet coalescer, open a session of their own.
    assert await run(("later", 1)) == "later=1"
    await asyncio.sleep(0.01)
    assert sessions.batches_per_session[1:] == [1]


async def test_a_failed_batch_ends_its_session_and_what_waits_gets_a_fresh_one() -> None:
    store = Store(refused=frozenset({"k2"}))
    store.held = {f"k{n}" for n in range(4)}
    store.release.clear()
    sessions = Sessions(store)
    run = Coalescer(lambda item: item[0], store.batch, store.one, max_batch=4, session=sessions.session)
    first = [asyncio.create_task(run((f"k{n}", n))) for n in range(4)]
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(run((f"k{n}", n))) for n in range(4, 8)]
    store.release.set()
    results = await asyncio.gather(*first, *later, return_exceptions=True)
    assert isinstance(results[2], ValueError)
    assert [r for i, r in enumerate(results) if i != 2] == [f"k{n}={n}" for n in range(8) if n != 2]
    # The refused batch was its session's last; the batch that waited behind it had a session of its own.
    await asyncio.sleep(0.01)
    assert sessions.batches_per_session == [1, 1]
    assert sessions.open_now == 0


async def test_without_a_session_each_item_is_run_alone_with_its_own_outcome() -> None:
    store = Store(refused=frozenset({"k1"}))
    sessions = Sessions(store, fails_to_open=True)
    run = Coalescer(lambda item: item[0], store.batch, store.one, session=sessions.session)
    results = await asyncio.gather(*(run((f"k{n}", n)) for n in range(4)), return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert [r for i, r in enumerate(results) if i != 1] == ["k0=0", "k2=2", "k3=3"]
    assert store.batches == []
    assert sorted(store.alone) == ["k0", "k1", "k2", "k3"]
