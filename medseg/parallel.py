"""Map a picklable function over jobs in worker processes, in order, reporting progress."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


def default_workers() -> int:
    return os.cpu_count() or 1


def map_parallel(
    function: Callable[[Job], Result],
    jobs: Iterable[Job],
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    min_jobs_for_pool: int = 8,
) -> list[Result]:
    """Results in job order. Few jobs or one worker run in this process (no pool start-up cost)."""
    jobs = list(jobs)
    workers = default_workers() if workers is None else workers
    results: list[Result] = []
    if workers <= 1 or len(jobs) < min_jobs_for_pool:
        for job in jobs:
            results.append(function(job))
            if progress:
                progress(len(results), len(jobs))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(function, jobs, chunksize=max(1, min(4, len(jobs) // (4 * workers)))):
            results.append(result)
            if progress:
                progress(len(results), len(jobs))
    return results


def _call_and_send(queue, function, args) -> None:
    try:
        queue.put((True, function(*args)))
    except BaseException as error:  # noqa: BLE001 - sent back to the parent, which raises it there
        queue.put((False, error))


def run_in_own_process(function: Callable[..., Result], *args) -> Result:
    """``function(*args)`` in a freshly spawned process (its peak memory its own; it may start
    worker processes of its own), its result or its exception returned here. A child that dies
    without an answer (killed, out of memory) is an error naming its exit code."""
    import multiprocessing
    import queue as queues

    from medseg.errors import MedsegError

    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    child = context.Process(target=_call_and_send, args=(answers, function, args))
    child.start()
    try:
        while True:
            try:
                ok, value = answers.get(timeout=1.0)
                break
            except queues.Empty:
                if not child.is_alive():
                    raise MedsegError(f"the process running {function.__name__} ended without an answer (exit code {child.exitcode})") from None
    finally:
        child.join()
    if not ok:
        raise value
    return value
