"""CPU turns: decodes share the cores, a model batch has them to itself."""

import threading
import time

from app.gate import CpuTurns


def _in_thread(target) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_decodes_share_the_cores() -> None:
    turns = CpuTurns()
    inside = threading.Barrier(3, timeout=5)

    def decode() -> None:
        with turns.shared():
            inside.wait()  # only passes when all three hold the shared turn at once

    threads = [_in_thread(decode) for _ in range(3)]
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def test_a_batch_waits_for_running_decodes_and_new_decodes_wait_for_the_batch() -> None:
    turns = CpuTurns()
    events: list[str] = []
    decoding, release_decode = threading.Event(), threading.Event()

    def first_decode() -> None:
        with turns.shared():
            decoding.set()
            release_decode.wait(5)
            events.append("decode 1 done")

    def batch() -> None:
        with turns.exclusive():
            events.append("batch runs")
            time.sleep(0.2)
            events.append("batch done")

    def second_decode() -> None:
        with turns.shared():
            events.append("decode 2 runs")

    threads = [_in_thread(first_decode)]
    decoding.wait(5)
    threads.append(_in_thread(batch))
    deadline = time.monotonic() + 5
    while turns._waiting_exclusive != 1:  # until the batch waits for decode 1
        assert time.monotonic() < deadline, "the batch never started waiting"
        time.sleep(0.001)
    threads.append(_in_thread(second_decode))  # must queue behind the waiting batch
    release_decode.set()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert events == ["decode 1 done", "batch runs", "batch done", "decode 2 runs"]


def test_batches_run_one_at_a_time() -> None:
    turns = CpuTurns()
    running, overlaps = [0], []

    def batch() -> None:
        with turns.exclusive():
            running[0] += 1
            overlaps.append(running[0])
            time.sleep(0.02)
            running[0] -= 1

    threads = [_in_thread(batch) for _ in range(5)]
    for thread in threads:
        thread.join(5)
    assert overlaps == [1] * 5
