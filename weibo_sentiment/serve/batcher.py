"""Micro-batching: requests that arrive together are merged per adapter into one model call on one thread.

All model work (prediction, loading and removing adapters) runs on the batcher's one worker thread, so the
event loop stays free for `/healthz` and new requests, and a hot swap never interleaves with a batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .schemas import ApiError, unknown_adapter

BATCH_WAIT_MS = 5.0
MAX_BATCH_TEXTS = 512
# Texts waiting for the model, beyond which requests get 503 + Retry-After instead of waiting in an ever longer
# queue. 2,048 is 8 full requests (--max-texts 256): about 2.6 s of work for the tiny model on 2 CPU cores
# (`make loadtest`: 776 texts/s); the uer model on 2 CPU cores predicts 17 texts/s (README, Performance):
# 2 minutes of work, so lower --max-queue there (with --max-texts).
MAX_QUEUE = 2048


@dataclass
class _Job:
    adapter: str
    texts: list[str]
    future: asyncio.Future = field(repr=False)
    long_text: Any = None  # how its long texts are read (an inference LongText; None: the predictor's setting)
    queued: bool = True  # still counted in the queue (not yet taken by the loop, nor dropped)
    dropped: bool = False  # counted as abandoned
    started: bool = False  # handed to the model (a cancel from then on saves nothing)


class MicroBatcher:
    """Gathers concurrent requests for `wait_ms` into per-adapter batches run on one model thread.

    At most `max_queue` texts wait; beyond that `submit` refuses with a 503. A job whose future is cancelled
    (its client went away) is dropped before it reaches the model.
    """

    def __init__(self, predictor, *, wait_ms: float = BATCH_WAIT_MS, max_batch_texts: int = MAX_BATCH_TEXTS,
                 batch_size: int = 32, max_queue: int = MAX_QUEUE):
        self.predictor = predictor
        self.wait_s = wait_ms / 1000
        self.max_batch_texts = max_batch_texts
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.revisions = dict.fromkeys(predictor.adapters, 1)
        self._loaded_count = dict(self.revisions)  # never decreases, so a re-added name gets a new revision
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weibo-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # model calls made, for /healthz and tests
        self.pending = 0  # requests waiting in the queue
        self.pending_texts = 0  # their texts
        self.dropped_requests = self.dropped_texts = 0  # abandoned by their clients before the model saw them
        self._texts_per_s: float | None = None  # recent model throughput, for Retry-After

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, adapter: str, texts: list[str], long_text: Any = None) -> asyncio.Future:
        """Queue a request (`long_text`: how its long texts are read; None: the predictor's setting); its future
        gives (revision, predictions). Cancel the future to drop the work."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self.pending_texts + len(texts) > self.max_queue:
            retry = self.retry_after(len(texts))
            raise ApiError(503, f"the server is busy: {self.pending_texts} texts are waiting (the limit is "
                                f"{self.max_queue}); retry in {retry} s", {"Retry-After": str(retry)})
        job = _Job(adapter, texts, asyncio.get_running_loop().create_future(), long_text)
        self.pending += 1
        self.pending_texts += len(texts)
        job.future.add_done_callback(lambda f: self._dequeue(job, dropped=f.cancelled()))
        self._queue.put_nowait(job)
        return job.future

    def retry_after(self, extra: int = 0) -> int:
        """Seconds until the queue has room again, from the recent throughput (1 to 60)."""
        if not self._texts_per_s:
            return 1
        return max(1, min(60, math.ceil((self.pending_texts + extra - self.max_queue / 2) / self._texts_per_s)))

    def _dequeue(self, job: _Job, dropped: bool) -> None:
        if job.queued:
            job.queued = False
            self.pending -= 1
            self.pending_texts -= len(job.texts)
        if dropped and not job.dropped and not job.started:
            job.dropped = True
            self.dropped_requests += 1
            self.dropped_texts += len(job.texts)

    async def predict(self, adapter: str, texts: list[str], long_text: Any = None) -> tuple[int, list]:
        """(revision of the adapter that answered, predictions in input order)."""
        future = self.submit(adapter, texts, long_text)
        try:
            return await future
        finally:
            future.cancel()  # a no-op when answered; else (this caller was cancelled) the job is dropped

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def add_adapter(self, name: str, path: Path) -> int:
        def load() -> int:
            # Over HTTP there is no --allow-other-base: an adapter of another base is refused, with no hint.
            self.predictor.add_adapter(name, path, override_hint=None)
            self._loaded_count[name] = self._loaded_count.get(name, 0) + 1
            self.revisions[name] = self._loaded_count[name]
            return self.revisions[name]

        return await self.call(load)

    async def remove_adapter(self, name: str, new_default: str | None = None) -> str:
        """Unload `name`, making `new_default` the default first; the default itself needs one. Returns the
        default afterwards."""
        def remove() -> str:
            predictor = self.predictor
            if name not in predictor.adapters:  # removed by a concurrent request
                raise ApiError(404, unknown_adapter(name, predictor))
            if new_default is not None:
                if new_default == name:
                    raise ApiError(409, f"cannot remove {name!r} and keep it the default: name another adapter")
                if new_default not in predictor.adapters:
                    raise ApiError(404, unknown_adapter(new_default, predictor))
            if len(predictor.adapters) == 1:
                raise ApiError(409, f"cannot remove {name!r}: it is the only adapter loaded")
            if new_default is None and predictor.default == name:
                others = ", ".join(a for a in predictor.adapters if a != name)
                raise ApiError(409, f"cannot remove {name!r}: it is the default adapter; name the next default "
                                    f"with ?default=NAME (one of: {others})")
            if new_default is not None:
                predictor.use(new_default)
            predictor.remove_adapter(name)
            self.revisions.pop(name, None)
            return predictor.default

        return await self.call(remove)

    async def _loop(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            if queue.empty() and self.wait_s > 0:
                # An idle server: give concurrent requests a moment to join. Under load the queue already
                # holds what arrived during the previous batch.
                await asyncio.sleep(self.wait_s)
            jobs, count = [first], len(first.texts)
            while count < self.max_batch_texts and not queue.empty():
                job = queue.get_nowait()
                jobs.append(job)
                count += len(job.texts)
            groups: dict[tuple[str, Any], list[_Job]] = {}
            for job in jobs:
                self._dequeue(job, dropped=job.future.cancelled())
                if not job.future.done():
                    groups.setdefault((job.adapter, job.long_text), []).append(job)
            for (adapter, long_text), group in groups.items():
                await self._run_group(adapter, group, long_text)

    async def _run_group(self, adapter: str, group: list[_Job], long_text: Any = None) -> None:
        live = [job for job in group if not job.future.done()]  # clients may have gone while others ran
        for job in group:
            if job.future.cancelled():
                self._dequeue(job, dropped=True)
        if not live:
            return
        group = live
        for job in group:
            job.started = True
        texts = [t for job in group for t in job.texts]
        started = time.perf_counter()
        try:
            revision, preds = await self.call(self._predict, adapter, texts, long_text)
        except asyncio.CancelledError:
            raise
        except UserError as e:  # the adapter went away: the same answer for every request
            for job in group:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        except Exception as e:
            if len(group) > 1:  # one request's failure must not fail the others that shared its batch
                for job in group:
                    await self._run_group(adapter, [job], long_text)
            elif not group[0].future.done():
                group[0].future.set_exception(e)  # the handler logs it and answers a bare 500
            return
        rate = len(texts) / max(time.perf_counter() - started, 1e-6)
        self._texts_per_s = rate if self._texts_per_s is None else 0.7 * self._texts_per_s + 0.3 * rate
        start = 0
        for job in group:
            if not job.future.done():  # a client that went away meanwhile leaves a cancelled future
                job.future.set_result((revision, preds[start:start + len(job.texts)]))
            start += len(job.texts)

    def _predict(self, adapter: str, texts: list[str], long_text: Any = None) -> tuple[int, list]:
        self.batches += 1
        options = {} if long_text is None else {"long_text": long_text}
        preds = self.predictor.predict(texts, adapter=adapter, batch_size=self.batch_size, **options)
        return self.revisions[adapter], preds


async def _until_disconnected(receive) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def answer_unless_gone(future: asyncio.Future, receive) -> Any:
    """The future's result; if the client disconnects first (or this handler is cancelled), the future is
    cancelled, so its job is dropped before the model call, and ClientGone is raised."""
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        future.cancel()  # a no-op once answered
    if future.cancelled():
        raise ClientGone
    return future.result()


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""
