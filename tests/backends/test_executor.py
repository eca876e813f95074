"""Executors: every task runs once, at most ``slots`` are in flight, errors are those of a serial run."""

from __future__ import annotations

import threading

import pytest
import torch

from weightspace.backends import LocalExecutor, RunOptions, Task, give, open_executor, scratch_scope, take


def test_results_of_every_task() -> None:
    for threads in (1, 2, 3):
        with LocalExecutor(threads) as ex:
            got = dict(ex.run([Task(pow, (3, i)) for i in range(7)]))
        assert got == {i: 3**i for i in range(7)}


def test_at_most_threads_tasks_in_flight() -> None:
    """While two tasks hold their slots, the third is not started (an event handshake, no timing)."""
    started = [threading.Event() for _ in range(4)]
    release = [threading.Event() for _ in range(4)]

    def task(i: int) -> int:
        started[i].set()
        assert release[i].wait(30)
        return i

    with LocalExecutor(2) as ex:
        run = ex.run([Task(task, (i,)) for i in range(4)])
        waiter = threading.Thread(target=lambda: results.extend(run))
        results: list[tuple[int, int]] = []
        waiter.start()
        assert started[0].wait(30)
        assert started[1].wait(30)
        assert not started[2].is_set()
        assert not started[3].is_set()
        release[1].set()
        assert started[2].wait(30)
        assert not started[3].is_set()
        for r in release:
            r.set()
        waiter.join(30)
    assert sorted(results) == [(i, i) for i in range(4)]
    assert ex.peak_in_flight == 2


def test_failure_is_the_serial_one() -> None:
    """Two tasks fail; whichever finishes first, the lowest index is reported, as a serial run would."""
    gate = threading.Event()

    def task(i: int) -> int:
        if i == 0:
            assert gate.wait(30)
            raise ValueError("task 0")
        if i == 1:
            gate.set()
            raise ValueError("task 1")
        return i

    with LocalExecutor(2) as ex, pytest.raises(ValueError, match="task 0"):
        list(ex.run([Task(task, (i,)) for i in range(5)]))


def test_torch_threads_per_task() -> None:
    """With as many tasks as threads each task runs torch single-threaded; one task alone gets them all."""
    with LocalExecutor(2) as ex:
        inner = dict(ex.run([Task(torch.get_num_threads) for _ in range(4)]))
    assert set(inner.values()) == {1}
    before = torch.get_num_threads()
    with LocalExecutor(2) as ex:
        assert dict(ex.run([Task(torch.get_num_threads)])) == {0: 2}
    assert torch.get_num_threads() == before


def test_open_executor_is_local_without_a_scheduler() -> None:
    with open_executor(RunOptions(threads=3)) as ex:
        assert (ex.kind, ex.slots) == ("threads", 3)


def test_scratch_buffers_are_reused_only_in_a_scope() -> None:
    with scratch_scope():
        b = take(100)
        give(b)
        c = take(50)
        assert c.data_ptr() == b.data_ptr()
        d = take(50)  # c is taken: a second taker gets its own buffer
        assert d.data_ptr() != c.data_ptr()
