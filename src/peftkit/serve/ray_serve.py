"""Scale out with Ray Serve: replicas of one base model, adapters spread over them by model multiplexing.

    pip install 'peftkit[ray]'
    from ray import serve
    from peftkit.serve.ray_serve import deployment
    serve.run(deployment({"sentiment": "runs/a", "topic": "runs/b"}, num_replicas=2))
    # POST http://127.0.0.1:8000/ with header serve_multiplexed_model_id: sentiment, body {"texts": [...]}

Each replica is a small `peftkit serve` without HTTP of its own: an `AdapterRegistry` (same checks, fail
closed) and the same batching worker. Ray routes a request to a replica that already holds its adapter
(the `serve_multiplexed_model_id` header, or `handle.options(multiplexed_model_id=...)`); a replica loads an
adapter on first use and unloads the least recently used one beyond `adapters_per_replica`. Requests already
holding an adapter are still answered by it when it is evicted, as with DELETE /v1/adapters.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ray import serve

from peftkit.serve.errors import ServeError

if TYPE_CHECKING:
    from starlette.responses import JSONResponse


class _Held:  # noqa: B903 (a class, not a tuple: its __del__ is the point)
    """What Ray's multiplexing cache holds per adapter: dropping it (LRU eviction) unloads the adapter."""

    def __init__(self, registry, served):
        self.registry, self.served = registry, served

    def __del__(self):
        self.registry.unload(self.served.name, only=self.served)


class PeftkitReplica:
    """One replica: the base model, up to `adapters_per_replica` adapters, a batching worker."""

    def __init__(self, adapters: dict[str, str], base: str | None = None, settings: dict | None = None):
        from peftkit.serve.execute import BatchRunner
        from peftkit.serve.metrics import ServeMetrics
        from peftkit.serve.registry import AdapterRegistry
        from peftkit.serve.scheduler import BatchScheduler
        from peftkit.serve.settings import ServeSettings

        self.paths = dict(adapters)
        self.settings = ServeSettings(**(settings or {}))
        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        self.registry = AdapterRegistry(base)
        metrics = ServeMetrics()
        runner = BatchRunner(self.registry, metrics, max_batch_tokens=self.settings.max_batch_tokens)
        self.scheduler = BatchScheduler(
            runner,
            metrics,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_texts=self.settings.max_queue_texts,
        )
        self.scheduler.start()

    async def get_adapter(self, name: str) -> _Held:
        """Load adapter `name` (the subclass made by `deployment` wraps this in Ray's multiplexing cache)."""
        if name not in self.paths:
            raise ServeError(
                404, f"adapter {name[:80]!r} is not configured (configured: {', '.join(self.paths)})."
            )
        served = await asyncio.to_thread(self.registry.load, name, self.paths[name])
        return _Held(self.registry, served)

    async def classify(self, texts: list[str], top_k: int | None = None) -> dict:
        """Classify `texts` with the adapter named by the request's multiplexed model id."""
        from peftkit.data.prepare import tokenize_texts
        from peftkit.serve.app import _check_sizes
        from peftkit.serve.scheduler import Job

        held = await self.get_adapter(serve.get_multiplexed_model_id())
        served = held.served
        _check_sizes(texts, self.settings)
        ids = tokenize_texts(self.registry.tokenizer, texts, served.max_length)
        results = await asyncio.wrap_future(self.scheduler.submit(Job(served, ids=ids, top_k=top_k)))
        return {"adapter": served.name, "fingerprint": served.fingerprint, "results": results}

    async def __call__(self, request) -> dict | JSONResponse:
        """HTTP: POST {"texts": [...], "top_k": k} with header serve_multiplexed_model_id: ADAPTER."""
        body = await request.json()
        try:
            return await self.classify(body["texts"], body.get("top_k"))
        except ServeError as exc:
            from starlette.responses import JSONResponse

            return JSONResponse({"error": str(exc)}, status_code=exc.status)


def deployment(
    adapters: dict[str, str],
    *,
    base: str | None = None,
    num_replicas: int = 2,
    adapters_per_replica: int = 8,
    settings: dict | None = None,
):
    """A bound Ray Serve application: `num_replicas` replicas, each holding at most `adapters_per_replica`."""

    class Replica(PeftkitReplica):
        # Ray finds the wrapped method by its __name__, so the wrapper keeps the name get_adapter.
        get_adapter = serve.multiplexed(max_num_models_per_replica=adapters_per_replica)(
            PeftkitReplica.get_adapter
        )

    return serve.deployment(name="peftkit", num_replicas=num_replicas)(Replica).bind(adapters, base, settings)
