"""Running a graph of tasks on worker processes, one thread each (the main job's engine: ``probe.demo``).

A free worker takes the first task, in list order, whose dependencies are done; a task's result
comes back to the main process; the first failure stops the graph and names its task.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from train.errors import UserError


def _worker_init() -> None:
    import torch

    from train.run.allocator import keep_freed_memory

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the training loop and the probes do
    keep_freed_memory()  # as the training loop does (train.run.allocator)


@dataclass
class Task:
    """``fn(*args)`` once every task named in ``deps`` has finished; ``status()`` says how far it is."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    deps: tuple[str, ...] = ()
    status: Callable[[], str] | None = None


def run_graph(tasks: list[Task], jobs: int, say: Callable[[str], None] = print, every: float = 30.0) -> dict[str, Any]:
    """Run ``tasks`` on ``jobs`` worker processes; a free worker takes the first task (in list order)
    whose dependencies are done.  Prints a line as each task starts and ends, and every ``every``
    seconds the progress of the running ones.  Returns ``{name: result}``; the first failure ends the
    graph with its error (a :class:`UserError` names the task)."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names) or any(d not in names for t in tasks for d in t.deps):
        raise ValueError("task names must be unique and dependencies must name tasks of the graph")
    results: dict[str, Any] = {}
    pending, running = list(tasks), {}
    t0 = time.time()
    clock = lambda: f"[{time.time() - t0:5.0f} s]"  # noqa: E731
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    with _one_thread_per_worker(), ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init) as pool:
        try:
            while pending or running:
                for task in [t for t in pending if all(d in results for d in t.deps)][:max(0, jobs - len(running))]:
                    pending.remove(task)
                    running[pool.submit(task.fn, *task.args)] = (task, time.time())
                    say(f"{clock()} start  {task.name}")
                if not running:
                    raise ValueError("the task graph has a cycle")
                done, _ = wait(running, timeout=every, return_when=FIRST_COMPLETED)
                if not done:
                    say(f"{clock()} ...    " + "; ".join(t.name + (f" {t.status()}" if t.status else "") for t, _ in running.values()))
                for fut in done:
                    task, start = running.pop(fut)
                    try:
                        results[task.name] = fut.result()
                    except UserError as e:
                        raise UserError(f"{task.name}: {e}") from None
                    say(f"{clock()} done   {task.name} ({time.time() - start:.0f} s; {len(results)}/{len(tasks)} tasks)")
        except BaseException:  # a failure or Ctrl-C: stop the other tasks now rather than wait for them
            for fut in running:
                fut.cancel()
            # the executor has no public way to stop running work; its worker processes are kept in
            # ``_processes`` (CPython 3.8-3.13).  Every write of a task is atomic, so a killed task
            # leaves nothing half-written and the next run resumes it.
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            raise
    return results


@contextlib.contextmanager
def _one_thread_per_worker():
    """One BLAS/OpenMP thread in the worker processes started inside: the variables are read when a
    worker loads numpy/scipy (which ``_worker_init`` comes too late for); this process keeps its own."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
