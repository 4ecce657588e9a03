"""The batcher alone: no HTTP, no torch."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.batcher import Batcher, NotAcceptingError, QueueFullError, QueueTimeoutError


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.started: list[float] = []
        self.delay = delay
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[object]) -> list[object]:
        self.started.append(time.monotonic())
        self.batches.append(list(items))
        self.release.wait(10)
        time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError("model failed")
        return [f"out-{item}" for item in items]


def _batcher(run: Recorder, **kwargs: Any) -> Batcher:
    options = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queue": 100, "timeout_s": 10.0} | kwargs
    return Batcher(run, ThreadPoolExecutor(1), **options)  # type: ignore[arg-type]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_items_share_a_batch_and_get_their_own_results() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = _batcher(recorder, max_batch_size=32, max_delay_s=0.2)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        assert [r.value for r in results] == [f"out-{i}" for i in range(20)]
        assert recorder.batches == [list(range(20))]
        assert {r.batch_size for r in results} == {20}
        await batcher.drain()

    run(main())


def test_batches_never_exceed_the_maximum() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = _batcher(recorder, max_batch_size=4, max_delay_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        assert sorted(len(b) for b in recorder.batches) == [2, 4, 4]
        assert [r.value for r in results] == [f"out-{i}" for i in range(10)]
        await batcher.drain()

    run(main())


def test_window_is_counted_from_the_first_arrival() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = _batcher(recorder, max_delay_s=0.4)
        batcher.start()
        first_arrival = time.monotonic()
        first = asyncio.create_task(batcher.submit("a"))
        await asyncio.sleep(0.25)
        second_arrival = time.monotonic()
        second = await batcher.submit("b")
        await first
        assert recorder.batches == [["a", "b"]]
        ran_at = recorder.started[0]
        # It ran when the first item's window closed, not a full window after the second.
        assert ran_at - first_arrival >= 0.39
        assert ran_at < second_arrival + 0.4 - 0.05
        assert second.queue_seconds < 0.4 - 0.05
        await batcher.drain()

    run(main())


def test_backlog_is_taken_at_once_instead_of_one_by_one() -> None:
    """Items that piled up while the model was busy form one batch, even though the
    oldest of them is already past its window."""

    async def main() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = _batcher(recorder, max_batch_size=16, max_delay_s=0.01)
        batcher.start()
        busy = asyncio.create_task(batcher.submit("busy"))
        while not recorder.batches:
            await asyncio.sleep(0.005)
        backlog = [asyncio.create_task(batcher.submit(i)) for i in range(12)]
        await asyncio.sleep(0.1)  # well past every backlog item's window
        recorder.release.set()
        await asyncio.gather(busy, *backlog)
        assert recorder.batches[1] == list(range(12))
        await batcher.drain()

    run(main())


def test_queue_full_is_refused_without_leaking_slots() -> None:
    async def main() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = _batcher(recorder, max_batch_size=1, max_queue=3, max_delay_s=0.0)
        batcher.start()
        busy = asyncio.create_task(batcher.submit("busy"))
        while not recorder.batches:
            await asyncio.sleep(0.005)
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit("one too many")
        recorder.release.set()
        await asyncio.gather(busy, *queued)
        assert batcher.queue_depth == 0
        assert (await batcher.submit("after")).value == "out-after"
        await batcher.drain()

    run(main())


def test_items_that_waited_too_long_time_out_alone() -> None:
    async def main() -> None:
        recorder = Recorder()
        recorder.release.clear()
        batcher = _batcher(recorder, max_batch_size=1, timeout_s=0.05, max_delay_s=0.0)
        batcher.start()
        busy = asyncio.create_task(batcher.submit("busy"))
        while not recorder.batches:
            await asyncio.sleep(0.005)
        late = asyncio.create_task(batcher.submit("late"))
        await asyncio.sleep(0.15)
        recorder.release.set()
        assert (await busy).value == "out-busy"
        with pytest.raises(QueueTimeoutError):
            await late
        assert ["late"] not in recorder.batches
        await batcher.drain()

    run(main())


def test_a_failing_batch_fails_only_its_items_and_the_batcher_survives() -> None:
    async def main() -> None:
        recorder = Recorder(fail_on="bad")
        batcher = _batcher(recorder, max_delay_s=0.05)
        batcher.start()
        with pytest.raises(ValueError, match="model failed"):
            await batcher.submit("bad")
        assert (await batcher.submit("good")).value == "out-good"
        await batcher.drain()

    run(main())


def test_cancelled_callers_are_skipped() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = _batcher(recorder, max_delay_s=0.1)
        batcher.start()
        gone = asyncio.create_task(batcher.submit("gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert (await batcher.submit("kept")).value == "out-kept"
        assert recorder.batches == [["kept"]]
        await batcher.drain()

    run(main())


def test_drain_answers_queued_items_then_refuses() -> None:
    async def main() -> None:
        recorder = Recorder(delay=0.05)
        batcher = _batcher(recorder, max_batch_size=2, max_delay_s=0.0)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.drain()
        assert [p.result().value for p in pending] == [f"out-{i}" for i in range(6)]
        with pytest.raises(NotAcceptingError):
            await batcher.submit("late")

    run(main())


def test_not_started_refuses() -> None:
    async def main() -> None:
        with pytest.raises(NotAcceptingError):
            await _batcher(Recorder()).submit(1)

    run(main())


def test_a_lone_item_does_not_wait_out_the_window_when_nothing_else_is_coming() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher = _batcher(recorder, max_delay_s=30.0, timeout_s=60.0, coming=lambda: 0)
        batcher.start()
        result = await asyncio.wait_for(batcher.submit("alone"), 10)  # the 30 s window would time this out
        assert (result.value, result.batch_size) == ("out-alone", 1)
        await batcher.drain()

    run(main())


def test_a_batch_waits_for_items_still_being_prepared() -> None:
    async def main() -> None:
        preparing = 1
        recorder = Recorder()
        batcher = _batcher(recorder, max_delay_s=5.0, timeout_s=60.0, coming=lambda: preparing)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.2)
        assert recorder.batches == []  # one item is still being prepared: keep the window open
        preparing = 0
        second = await asyncio.wait_for(batcher.submit("second"), 4)
        assert recorder.batches == [["first", "second"]]
        assert (await first).batch_size == second.batch_size == 2
        await batcher.drain()

    run(main())


@pytest.mark.parametrize(("opens_when_free", "expected"), [(True, [["a", "b"]]), (False, [["a"], ["b"]])])
def test_window_can_open_when_the_model_is_free(opens_when_free: bool, expected: list[list[str]]) -> None:
    async def main() -> None:
        recorder = Recorder()
        recorder.release.clear()  # the first batch holds the model until released
        preparing = [0]
        batcher = _batcher(
            recorder,
            max_delay_s=0.3,
            timeout_s=60.0,
            coming=lambda: preparing[0],
            window_opens_when_free=opens_when_free,
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("first"))  # nothing else coming: runs at once
        await asyncio.sleep(0.05)
        preparing[0] = 1  # from now on something is always being prepared
        a = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.5)  # "a" is now older than the window
        recorder.release.set()
        await first
        await asyncio.sleep(0.1)  # "b" arrives inside a window opened when the model became free
        await asyncio.gather(a, batcher.submit("b"))
        assert recorder.batches[1:] == expected
        await batcher.drain()

    run(main())
