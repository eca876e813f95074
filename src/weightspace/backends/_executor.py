"""Executors: run independent tasks (one per unit) on local threads or on a Dask cluster, a bounded number at once.

A task is a picklable call ``fn(*args)``; an executor yields ``(index, result)`` as tasks complete. Every executor
keeps at most :attr:`Executor.slots` tasks in flight (submitted and not yet handed to the caller), which is what
bounds memory: a unit fit holds one unit's chunks, so a run holds ``slots`` units' worth at most.

* :class:`LocalExecutor` — a thread pool of ``threads`` threads in this process (torch releases the GIL in its
  kernels and the safetensors reads release it in ``pread``). Each thread runs torch with
  ``max(1, threads // slots)`` intra-op threads, so units never oversubscribe the cores. With one slot the tasks
  run inline in the caller's thread.
* :class:`DaskExecutor` — a ``distributed`` client. Objects every task needs (the collection's index) are sent to
  each worker once (:meth:`Executor.share`); tasks read their data from paths the workers see and write their own
  outputs. A worker that dies while running a task (killed, out of memory) makes the run fail with a
  :class:`~weightspace.errors.BackendError` that names the task, after Dask's own retries
  (``distributed.scheduler.allowed-failures``).

Use an executor as a context manager: leaving the block (normally or by an exception) cancels queued tasks and
waits for running local ones, so no task is still writing when the caller cleans up its outputs.

Examples
--------
>>> with LocalExecutor(2) as ex:
...     sorted(ex.run([Task(pow, (2, i)) for i in range(5)]))
[(0, 1), (1, 2), (2, 4), (3, 8), (4, 16)]
"""

from __future__ import annotations

import abc
import contextlib
import logging
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch

from weightspace.backends._options import RunOptions, parse_scheduler
from weightspace.backends._scratch import scratch_for_thread, scratch_scope
from weightspace.errors import BackendError, DependencyError

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "Task", "open_executor", "require_dask", "torch_threads"]


@dataclass(frozen=True)
class Task:
    """One call ``fn(*args)``; ``label`` names it in errors (``"unit 'fc.weight'"``)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    label: str = ""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads in the calling thread inside the block (restored after)."""
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


def _init_worker(intra: int) -> None:
    """Thread-pool initializer: torch's intra-op threads for this thread, and scratch buffers kept until it exits."""
    torch.set_num_threads(intra)
    scratch_for_thread()  # released with the thread (its thread-local pool dies with it)


def _scoped_call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with scratch buffers reused inside the call and released after it (one Dask task)."""
    with scratch_scope():
        return fn(*args)


class Executor(abc.ABC):
    """Runs tasks, at most :attr:`slots` in flight; use as a context manager.

    Attributes
    ----------
    kind : str
        ``threads`` or ``dask``.
    slots : int
        Tasks in flight at most.
    peak_in_flight : int
        The most tasks that were in flight at once during this executor's runs (a measured bound).
    """

    kind: str = ""

    def __init__(self) -> None:
        self.peak_in_flight = 0
        self._runs: list[Any] = []

    @property
    @abc.abstractmethod
    def slots(self) -> int:
        """Tasks in flight at most."""

    def share(self, obj: Any) -> Any:
        """A handle to pass ``obj`` to many tasks (sent to each worker once); locally the object itself."""
        return obj

    def task_bytes(self, total: int) -> int:
        """A task's share of a memory budget of ``total`` bytes for everything this process runs at once."""
        return total // max(1, self.slots)

    @abc.abstractmethod
    def _iterate(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Any]]: ...

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` of every task as it completes; a task's exception is raised here."""
        gen = self._iterate(list(tasks))
        self._runs.append(gen)
        return gen

    def _note(self, in_flight: int) -> None:
        self.peak_in_flight = max(self.peak_in_flight, in_flight)

    def close(self) -> None:
        """Cancel what is queued and wait for what runs (idempotent)."""
        runs, self._runs = self._runs, []
        for gen in runs:
            gen.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """A pool of ``threads`` threads in this process.

    Parameters
    ----------
    threads : int
        Tasks in flight (and threads) at most.
    """

    kind = "threads"

    def __init__(self, threads: int):
        super().__init__()
        self.threads = int(threads)

    @property
    def slots(self) -> int:
        return self.threads

    def _iterate(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Any]]:
        if not tasks:
            return
        slots = min(self.threads, len(tasks))
        intra = max(1, self.threads // slots)
        if slots == 1:
            with torch_threads(intra), scratch_scope():
                for i, task in enumerate(tasks):
                    self._note(1)
                    result = task.fn(*task.args)
                    yield i, result
            return
        pending: dict[Future[Any], int] = {}
        pool = ThreadPoolExecutor(
            slots, thread_name_prefix="weightspace", initializer=_init_worker, initargs=(intra,)
        )
        queue = iter(enumerate(tasks))
        try:
            for i, task in queue:
                pending[pool.submit(task.fn, *task.args)] = i
                if len(pending) >= slots:
                    break
            while pending:
                self._note(len(pending))
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=pending.__getitem__):
                    i = pending.pop(fut)
                    if fut.exception() is not None:
                        raise _first_failure(i, fut, pending)
                    result = fut.result()
                    yield i, result
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(nxt[1].fn, *nxt[1].args)] = nxt[0]
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _first_failure(i: int, fut: Future[Any], pending: dict[Future[Any], int]) -> BaseException:
    """The error a serial run would raise: the lowest-index failure once the tasks in flight have finished.

    Tasks are submitted in index order, so every task below ``i`` has finished or is in ``pending``.
    """
    for other in pending:
        other.cancel()
    wait(pending)
    failures = [(i, fut.exception())]
    failures += [(j, f.exception()) for f, j in pending.items() if not f.cancelled() and f.exception() is not None]
    pending.clear()
    return min(failures, key=lambda pair: pair[0])[1]  # type: ignore[return-value]


def require_dask() -> Any:
    """Import ``distributed`` or raise :class:`DependencyError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise DependencyError(
            "the Dask backend (--scheduler / client=) needs the optional dependencies dask and distributed: "
            "pip install 'weightspace[dask]'"
        ) from None
    return distributed


class DaskExecutor(Executor):
    """Tasks on a Dask ``distributed`` cluster.

    Parameters
    ----------
    client : distributed.Client
    owned : tuple, optional
        ``(client, cluster)`` this executor started and closes.
    """

    kind = "dask"

    def __init__(self, client: Any, *, owned: tuple[Any, Any] | None = None):
        super().__init__()
        self.client = client
        self._owned = owned
        self._run_id = uuid.uuid4().hex[:8]

    @classmethod
    def start(cls, scheduler: str) -> DaskExecutor:
        """Connect to ``scheduler`` (``local``, ``local:N``, ``tcp://HOST:PORT``), starting a LocalCluster if local."""
        distributed = require_dask()
        kind, n = parse_scheduler(scheduler)
        if kind == "local":
            with warnings.catch_warnings():
                # "Port 8787 is already in use": the scheduler's HTTP endpoint then takes another port, harmlessly.
                warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
                cluster = distributed.LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            client = distributed.Client(cluster)
            return cls(client, owned=(client, cluster))
        try:
            client = distributed.Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise BackendError(f"cannot reach the Dask scheduler at {scheduler} ({err})") from None
        return cls(client, owned=(client, None))

    @property
    def slots(self) -> int:
        threads = sum(self.client.nthreads().values())
        return max(1, 2 * threads)

    def share(self, obj: Any) -> Any:
        # A one-element list so that a list-like object is scattered as one piece, not element by element.
        return self.client.scatter([obj], broadcast=True, hash=False)[0]

    def task_bytes(self, total: int) -> int:
        # Each worker has its own memory: the budget is per worker thread (the largest worker's threads share it).
        return total // max(1, max(self.client.nthreads().values(), default=1))

    def _iterate(self, tasks: Sequence[Task]) -> Iterator[tuple[int, Any]]:
        distributed = require_dask()
        if not tasks:
            return
        slots = self.slots
        pending: dict[Any, int] = {}
        ready = distributed.as_completed()

        def submit(i: int) -> None:
            task = tasks[i]
            fut = self.client.submit(
                _scoped_call, task.fn, *task.args, key=f"weightspace-{self._run_id}-{i}", pure=False
            )
            pending[fut] = i
            ready.add(fut)

        nxt = 0
        try:
            while nxt < len(tasks) and len(pending) < slots:
                submit(nxt)
                nxt += 1
            for fut in ready:
                self._note(len(pending))
                i = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as err:
                    raise self._first_failure(i, err, pending, tasks) from None
                fut.release()
                yield i, result
                if nxt < len(tasks):
                    submit(nxt)
                    nxt += 1
        finally:
            if pending:
                with contextlib.suppress(Exception):
                    self.client.cancel(list(pending), force=True)

    def _first_failure(
        self, i: int, err: BaseException, pending: dict[Any, int], tasks: Sequence[Task]
    ) -> BaseException:
        """The lowest-index failure once the tasks in flight have finished (what a serial run would raise), with
        a dead worker or a lost cluster turned into a :class:`BackendError` that names the task."""
        distributed = require_dask()
        failures = [(i, err)]
        with contextlib.suppress(Exception):
            distributed.wait(list(pending), timeout=600)
        for f, j in pending.items():
            if f.status == "error":
                with contextlib.suppress(Exception):
                    failures.append((j, f.exception()))
        # A dead worker is the cause of the cancellations that follow it: report it first.
        killed = [pair for pair in failures if isinstance(pair[1], distributed.KilledWorker)]
        j, exc = min(killed or failures, key=lambda pair: pair[0])
        what = tasks[j].label or f"task {j}"
        if isinstance(exc, distributed.KilledWorker):
            return BackendError(
                f"a Dask worker died while running {what} (killed, or out of memory; Dask gave up after retrying "
                f"it: {exc}). Nothing was written."
            )
        from distributed.comm.core import CommClosedError

        if isinstance(exc, distributed.CancelledError | CommClosedError | TimeoutError):
            return BackendError(
                f"the Dask cluster stopped while running {what} ({type(exc).__name__}: {exc}). Nothing was written."
            )
        if isinstance(exc, FileNotFoundError | PermissionError):
            return BackendError(
                f"a Dask worker running {what} cannot use {exc.filename!r} ({exc.strerror}): workers must see the "
                "models and the output's folder at the same paths (shared storage). Nothing was written."
            )
        return exc

    def close(self) -> None:
        super().close()
        owned, self._owned = self._owned, None
        if owned is not None:
            client, cluster = owned
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()


def open_executor(options: RunOptions | None = None) -> Executor:
    """The executor ``options`` ask for: a :class:`DaskExecutor` for ``scheduler``/``client``, else local threads.

    Use the result as a context manager (it closes a cluster it started).

    Examples
    --------
    >>> with open_executor(RunOptions(threads=1)) as ex:
    ...     ex.kind, ex.slots
    ('threads', 1)
    """
    opts = options if options is not None else RunOptions()
    if opts.client is not None:
        return DaskExecutor(opts.client)
    if opts.scheduler is not None:
        return DaskExecutor.start(opts.scheduler)
    return LocalExecutor(opts.workers)
