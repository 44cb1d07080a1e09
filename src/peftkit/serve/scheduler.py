"""Dynamic batching: requests queue up, one worker thread takes them in batches and runs the model.

The first request in the queue waits at most `max_wait_ms` for others to join it, or until the queue holds
`max_batch_tokens` tokens; the worker then takes requests in arrival order while the batch's padded size
(rows × longest row) stays within `max_batch_tokens` (a single larger request is split into several forwards).
While the worker runs a batch, new requests queue, so under load batches form without waiting at all.

The queue is bounded in texts: a request that would overflow it is refused at once with 429 and a Retry-After
estimated from recent throughput, never dropped later. Each request's future is set exactly once, with its
answer or its error; `stop` finishes everything already queued before the worker exits (SIGTERM drain).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peftkit.serve.errors import ServeError

if TYPE_CHECKING:
    from peftkit.serve.registry import ServedAdapter


@dataclass(eq=False)  # jobs are compared by identity
class Job:
    """One request's work: classify `ids` (token ids per text) or generate from `prompt`, on `adapter`."""

    adapter: ServedAdapter
    ids: list[list[int]] | None = None
    top_k: int | None = None
    generate: dict | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def texts(self) -> int:
        return len(self.ids) if self.ids is not None else 1

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids) if self.ids is not None else 0

    @property
    def longest(self) -> int:
        return max(len(x) for x in self.ids) if self.ids else 0


class BatchScheduler:
    """The queue and its worker thread. `submit` is called from request handlers, `run_batch(jobs)` by the worker."""

    def __init__(
        self, run_batch, metrics, *, max_batch_tokens: int, max_wait_ms: float, max_queue_texts: int
    ):
        self.run_batch = run_batch
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue_texts = max_queue_texts
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._queued_texts = self._queued_tokens = 0
        self._seconds_per_text = 0.01  # running estimate, for Retry-After
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="peftkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queue `job`, or refuse it now: 503 while stopping, 429 (with Retry-After) when the queue is full."""
        with self._cond:
            if self._stopping:
                raise ServeError(
                    503,
                    "the server is shutting down and accepts no new requests; send it to another replica or "
                    "retry once this one is back.",
                    {"Retry-After": "5"},
                )
            if self._queued_texts + job.texts > self.max_queue_texts:
                wait = max(1, math.ceil(self._queued_texts * self._seconds_per_text))
                raise ServeError(
                    429,
                    f"the queue is full ({self._queued_texts} texts waiting, limit {self.max_queue_texts}); "
                    f"this request's {job.texts} text(s) were not accepted. Retry after {wait} s, or send "
                    f"fewer texts at once.",
                    {"Retry-After": str(wait)},
                )
            self._queue.append(job)
            self._queued_texts += job.texts
            self._queued_tokens += job.tokens
            self._gauges()
            self._cond.notify()
        return job.future

    def stop(self, timeout: float) -> None:
        """Refuse new work, finish what is queued (up to `timeout` seconds), then fail whatever is left with 503."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for job in left:
            _settle(job, error=ServeError(503, "the server stopped before this request could run; retry it."))

    # -- worker --------------------------------------------------------------------------------------------------

    def _gauges(self) -> None:
        self.metrics.queue_texts.set(self._queued_texts)
        self.metrics.queue_requests.set(len(self._queue))

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            head = self._queue[0]
            if head.ids is not None:
                deadline = head.enqueued + self.max_wait
                while not self._stopping and self._queued_tokens < self.max_batch_tokens:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            jobs = [self._queue.popleft()]
            if head.ids is not None:
                rows, longest = head.texts, head.longest
                while self._queue and self._queue[0].ids is not None:
                    nxt = self._queue[0]
                    if (rows + nxt.texts) * max(longest, nxt.longest) > self.max_batch_tokens:
                        break
                    jobs.append(self._queue.popleft())
                    rows, longest = rows + nxt.texts, max(longest, nxt.longest)
            self._queued_texts -= sum(j.texts for j in jobs)
            self._queued_tokens -= sum(j.tokens for j in jobs)
            self._gauges()
            return jobs

    def _work(self) -> None:
        while (jobs := self._next_batch()) is not None:
            started = time.perf_counter()
            try:
                answers = self.run_batch(jobs)
            except Exception as exc:  # one bad batch must not stop the server: its requests get the error
                error = exc if isinstance(exc, ServeError) else _internal(exc)
                for job in jobs:
                    _settle(job, error=error)
                continue
            spent = time.perf_counter() - started
            texts = sum(j.texts for j in jobs)
            self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * spent / max(texts, 1)
            for job, answer in zip(jobs, answers, strict=True):
                _settle(job, answer=answer)


def _settle(job: Job, *, answer=None, error: Exception | None = None) -> None:
    """Answer a job exactly once (a second answer would be a bug, and is ignored rather than sent)."""
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(answer)


def _internal(exc: Exception) -> ServeError:
    return ServeError(
        500,
        f"the model failed on this request's batch ({type(exc).__name__}: {str(exc)[:200]}). Nothing was "
        f"answered for it; retry, and report it with the server log if it persists.",
    )
