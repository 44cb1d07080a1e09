"""Start the server: load the base and the adapters, then run uvicorn until SIGTERM/SIGINT, draining first.

On SIGTERM uvicorn stops accepting connections and waits (up to `drain_seconds`) for the requests in flight;
those wait on the batching worker, which keeps running until the app shuts down and then finishes whatever is
still queued. So a request that was accepted is answered, and a new one finds the port closed.
"""

from __future__ import annotations

import sys
import time

from peftkit.errors import PeftkitError


def _uvicorn_server(config, on_ready, on_exit):
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                on_ready(self.servers[0].sockets[0].getsockname()[1])

        def handle_exit(self, sig, frame):
            on_exit()
            super().handle_exit(sig, frame)

    return Server(config)


def run_server(settings, *, started: float | None = None) -> int:
    """Load everything `settings` names, serve until stopped; print the time to ready. Returns the exit code."""
    import torch
    import uvicorn

    from peftkit.serve.app import create_app
    from peftkit.serve.registry import AdapterRegistry

    started = started or time.perf_counter()
    if not settings.adapters:
        raise PeftkitError(
            "serve: no adapter to serve. Give one or more --adapter NAME=PATH (or `adapters:` in --config); "
            "the base model and task are read from them, and more can be hot-loaded later."
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    registry = AdapterRegistry(
        settings.base, adapter_root=settings.adapter_root, allow_unchecked=settings.allow_unchecked
    )
    registry.load_many(settings.adapters)
    loaded = time.perf_counter()
    app = create_app(registry, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=settings.drain_seconds,
    )

    def on_ready(port: int) -> None:
        mixed = sum(a.routed for a in registry.adapters())
        print(
            f"peftkit serve: ready in {time.perf_counter() - started:.1f} s "
            f"(base + {len(settings.adapters)} adapter(s) loaded in {loaded - started:.1f} s, {mixed} in mixed "
            f"LoRA batches) on http://{settings.host}:{port}  (API docs: /docs, page: /)",
            flush=True,
        )

    def on_exit() -> None:
        app.state.draining = True
        print("peftkit serve: draining in-flight requests, then exiting", file=sys.stderr, flush=True)

    server = _uvicorn_server(config, on_ready, on_exit)
    server.run()
    return 0 if server.started else 1
