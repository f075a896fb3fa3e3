"""Extraction on a dask.distributed cluster: block-aligned shards written by workers into one group.

The client holds the group's writer lock and finalizes; each worker loads the
backbone once (kept per process), opens the group with `root.open_writer` (no
lock) and writes only its own blocks, so writers never share a chunk. A shard
whose worker dies is rerun by dask (`retries`); blocks it had already written
are recorded done and simply written again with the same bytes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from sa.errors import SAError

SHARD_RETRIES = 3


def shard_blocks(blocks: Sequence[int], n_shards: int) -> list[list[int]]:
    """Split block numbers into at most `n_shards` contiguous, non-empty, block-aligned shards."""
    blocks = list(blocks)
    n = max(1, min(n_shards, len(blocks)))
    size, extra = divmod(len(blocks), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(blocks[start:stop])
        start = stop
    return [s for s in out if s]


def run_distributed(writer: Any, cache_url: str, name: str, pending: Sequence[int], job: Any, spec: dict, load: dict,
                    scheduler: Optional[str], n_workers: Optional[int], progress: bool, shard_fn: Callable[..., list]) -> list[str]:
    """Submit block-aligned shards of `pending` to a dask cluster (`scheduler` address, or a local one of `n_workers`).

    `shard_fn(cache_url, key, blocks, name, load, spec, imageset, pools, batch_size, skip_bad)` runs on a worker and
    returns the ids it skipped (sa.extract.runner.run_shard; passed in so this module needs nothing from the runner).

    Every shard runs to its end before an error is raised here, so no worker is still writing when the client
    reacts (e.g. widens an array float16 cannot hold, see sa.cache.manifest.Float16Overflow).
    """
    from dask.distributed import Client, LocalCluster, wait

    from sa.cache.manifest import Float16Overflow
    from sa.progress import make_progress

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise SAError(f"--scheduler {scheduler} cannot be reached ({exc}); check the address or use --workers N for a local cluster.") from None
    else:
        cluster = LocalCluster(n_workers=int(n_workers or 2), threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    try:
        n = max(1, len(client.scheduler_info().get("workers", {})) or int(n_workers or 1))
        shards = shard_blocks(pending, 2 * n)
        load = {**load, "weights": None if load.get("weights") is None else str(load["weights"])}
        futures = {
            client.submit(shard_fn, cache_url, writer.key, s, name, load, spec, job.imageset, tuple(job.pools),
                          job.batch_size, job.skip_bad, retries=SHARD_RETRIES, pure=False): s
            for s in shards
        }
        skipped: list[str] = []
        errors: list[BaseException] = []
        total = sum(len(range(*writer.block_rows_slice(b).indices(writer.n_rows))) for b in pending)
        with make_progress("img", disable=not progress) as bar:
            task = bar.add_task(f"extract {name} on {n} workers", total=total)
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(list(remaining), return_when="FIRST_COMPLETED")
                for fut in finished:
                    if fut.status == "error":
                        errors.append(fut.exception())
                        continue
                    skipped += fut.result()
                    job.skipped.extend(i for i in fut.result() if i not in job.skipped)
                    bar.advance(task, sum(len(range(*writer.block_rows_slice(b).indices(writer.n_rows))) for b in futures[fut]))
        other = [e for e in errors if not isinstance(e, Float16Overflow)]
        if other:
            raise other[0]
        if errors:  # every failure was an overflow: one error naming all the arrays to widen
            raise Float16Overflow(str(errors[0]), {k: v for e in errors for k, v in e.wide.items()})
        return skipped
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
