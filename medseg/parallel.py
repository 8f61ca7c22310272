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
