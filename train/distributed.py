"""The sweep on a dask.distributed cluster: one task per job, results appended by the client as tasks finish.

A task carries the job's description only (data path, cache root URL and key,
runs, config): the worker loads the subject and reads features from the cache
itself, so data and cache must be reachable from the workers (a shared path or
a URL). Rows come back to the client, which alone writes runs.csv/curves.csv.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from sa.errors import SAError
from sa.train.jobs import record, run_job

JOB_RETRIES = 1


def open_client(scheduler: str | None, n_workers: int | None) -> tuple[Any, Any]:
    """(client, cluster or None): a client of `scheduler`, or of a LocalCluster on 127.0.0.1 (processes, 1 thread each)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as exc:
            raise SAError(f"--scheduler {scheduler} cannot be reached ({exc}); check the address or use --workers N "
                          "for a local cluster.") from None
    if n_workers is not None and n_workers < 1:
        raise SAError(f"--workers {n_workers} must be at least 1.")
    cluster = LocalCluster(n_workers=int(n_workers or 2), threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return Client(cluster), cluster


def run_jobs_dask(jobs: Sequence[Any], results: Any, *, scheduler: str | None = None, n_workers: int | None = None,
                  progress: bool = True, on_job: Callable[[Any, int], None] | None = None) -> int:
    """Run sweep jobs as dask tasks; append each job's curves and rows as it completes. Returns runs trained."""
    if not jobs:
        return 0
    from dask.distributed import as_completed

    from sa.progress import make_progress

    client, cluster = open_client(scheduler, n_workers)
    try:
        n = len(client.scheduler_info().get("workers", {})) or int(n_workers or 1)
        futures = {client.submit(run_job, job, retries=JOB_RETRIES, pure=False): job for job in jobs}
        trained = 0
        with make_progress("run", disable=not progress) as bar:
            task = bar.add_task(f"sweep on {n} dask workers", total=sum(len(j.runs) for j in jobs))
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    outputs = fut.result()
                except SAError:
                    raise
                except Exception as exc:  # noqa: BLE001 - surface the worker's failure with the job named
                    raise SAError(f"dask task for {job.title} failed on its worker ({type(exc).__name__}: {exc}); "
                                  "the finished jobs are saved, rerun the sweep to resume.") from exc
                k = record(results, outputs)
                trained += k
                bar.advance(task, k)
                if on_job is not None:
                    on_job(job, k)
        return trained
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
