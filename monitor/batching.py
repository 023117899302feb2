"""Dynamic batching: concurrent inference requests merged into one `session.run`.

As Triton's dynamic batcher: admitted requests wait in a queue; the scheduler takes the oldest
and, while the merged batch has fewer than `max_batch_rows` rows, waits at most
`max_queue_delay_us` (counted from the oldest request's arrival) for more to join. Requests that
arrived while the previous batch ran join the next one at once, so even a delay of 0 merges
under load. A request larger than `max_batch_rows` runs alone; rows count every pass. A
telemetry-sampled request is answered from its unmasked pass (`N` rows); the app then queues
its three masked Shapley passes (`3 x N` rows, `deferred`) to merge with the next requests, off
its request path.

The merged call (`Scorer.run_many`) runs in a worker thread, so the event loop keeps reading
bodies and queueing the next batch meanwhile; its outputs are split back per request. A batch
of at most `inline_rows` rows (the app's `--inline-rows`, as for unbatched requests) runs on the
event loop instead: at low load a batch is one small request, for which the hop to the thread
and back costs more than the model call. Each
request then continues on its own: the non-finite check, the response, its metrics, its
telemetry item and the shadow model's scoring stay per request. A batch holds requests of ONE
model version: after a reload, queued requests of the old version form their own batch.

Shutdown: uvicorn's graceful shutdown waits for every request in flight, and a queued request is
one, so the scheduler keeps running until the queue is drained; `stop` then ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np

from fusionguard.scorer import Mask, Outputs
from fusionguard.monitor.service import ModelState, Scored


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int = 0  # rows per merged session.run, masked passes included; 0: batching off
    max_queue_delay_us: int = 0  # how long the oldest queued request waits for others to join

    @property
    def enabled(self) -> bool:
        return self.max_batch_rows > 0


@dataclass
class _Job:
    state: ModelState
    feeds: dict[str, np.ndarray]
    masks: tuple[Mask, ...]
    rows: int  # rows this request adds to the merged batch (N x passes)
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    deferred: bool = False  # an answered request's Shapley passes, not a request of its own


def _plain_scored(state: ModelState, feeds: dict[str, np.ndarray], outputs: list[Outputs],
                  masks: tuple[Mask, ...], seconds: float) -> Scored:
    return Scored(state, feeds, outputs, len(masks) > 1, seconds, masks)


class DynamicBatcher:
    """Queue + scheduler task; `score` is awaited by each request (on the event loop)."""

    def __init__(self, config: BatchingConfig, on_batch=None, make_scored=None, inline_rows: int = 0) -> None:  # noqa: ANN001
        """`on_batch(requests, rows)`: metrics hook per merged run. `make_scored(state, feeds,
        outputs, masks, seconds)`: builds each request's `Scored` (the service's `scored`, which
        attaches its Shapley pass set to sampled requests); default: a plain `Scored`."""
        self.config = config
        self._make_scored = make_scored or _plain_scored
        self._delay = config.max_queue_delay_us / 1e6
        self._pending: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._on_batch = on_batch  # metrics hook: called with (requests merged, rows) per run
        self._inline_rows = inline_rows  # batches of at most this many rows run on the event loop

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name="fusionguard-batcher")

    async def stop(self) -> None:
        """Let the queued requests run, then end the scheduler."""
        while self._pending and self._task is not None and not self._task.done():
            await asyncio.sleep(0.001)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def score(self, state: ModelState, feeds: dict[str, np.ndarray], masks: tuple[Mask, ...],
                    *, deferred: bool = False) -> Scored:
        """Queue one admitted request and wait for its share of a merged run.

        `deferred`: these are the masked Shapley passes of a request already answered (the app
        queues them after the response); they merge like any job but are not counted as a request
        by `on_batch`.

        Raises:
            EvaluationError: the merged run failed (every request of that batch gets the error).
        """
        if self._task is None or self._wake is None:
            raise RuntimeError("the batcher is not running (the app's lifespan starts it)")
        n = int(next(iter(feeds.values())).shape[0])
        job = _Job(state, feeds, masks, n * len(masks), asyncio.get_running_loop().create_future(), deferred=deferred)
        self._pending.append(job)
        self._wake.set()
        return await job.future

    # ----- the scheduler ---------------------------------------------------------------------
    async def _schedule(self) -> None:
        wake = self._wake
        if wake is None:
            raise RuntimeError("start() the batcher first")
        while True:
            while not self._pending:
                wake.clear()
                await wake.wait()
            oldest = self._pending[0]
            deadline = oldest.enqueued + self._delay
            while self._ready_rows(oldest.state) < self.config.max_batch_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            try:
                if sum(job.rows for job in batch) <= self._inline_rows:
                    results = self._run(batch)  # small: no thread hop
                else:
                    results = await anyio.to_thread.run_sync(self._run, batch)
            except Exception as err:  # noqa: BLE001 - handed to every request of the batch
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, scored in zip(batch, results):
                if not job.future.done():  # a cancelled request has nobody waiting
                    job.future.set_result(scored)

    def _ready_rows(self, state: ModelState) -> int:
        rows = 0
        for job in self._pending:
            if job.state is not state:
                break
            rows += job.rows
        return rows

    def _take(self) -> list[_Job]:
        """The oldest request plus the following ones of the same version that fit."""
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        while self._pending:
            job = self._pending[0]
            if job.state is not first.state or rows + job.rows > self.config.max_batch_rows:
                break
            batch.append(self._pending.popleft())
            rows += job.rows
        return batch

    def _run(self, batch: list[_Job]) -> list[Scored]:
        state = batch[0].state
        start = time.perf_counter()
        outputs: list[list[Outputs]] = state.scorer.run_many([(job.feeds, job.masks) for job in batch])
        seconds = time.perf_counter() - start
        requests = sum(not job.deferred for job in batch)
        if self._on_batch is not None and requests:  # a call of deferred passes alone serves no request
            self._on_batch(requests, sum(job.rows for job in batch))
        return [self._make_scored(state, job.feeds, outs, job.masks, seconds) for job, outs in zip(batch, outputs)]
