"""The HTTP API (FastAPI; OpenAPI at /docs): /v1 classify, generate and adapters; /health, /ready, /metrics; /.

Every error body is `{"error": "<one paragraph>"}` with the right status: 404 unknown adapter (naming the
loaded ones), 409/422 an adapter refused at load, 413 too many texts or too long a text, 422 a malformed
request, 429/503 with Retry-After when the queue is full or the server is draining.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from peftkit.serve.errors import ServeError
from peftkit.serve.execute import BatchRunner
from peftkit.serve.metrics import ServeMetrics
from peftkit.serve.scheduler import BatchScheduler, Job

STATIC = Path(__file__).parent / "static"
API_SUMMARY = (
    "POST /v1/classify, POST /v1/generate, GET/POST /v1/adapters, DELETE /v1/adapters/{name}, GET /health, "
    "GET /ready, GET /metrics, GET /docs"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ClassifyRequest(_Body):
    adapter: str
    """Name of a loaded adapter (GET /v1/adapters lists them)."""
    texts: list[str] = Field(min_length=1)
    """Texts to classify, answered in the same order."""
    top_k: int | None = Field(None, ge=1)
    """Return only the k most probable labels per text (default: all of the adapter's labels)."""


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    adapter: str
    fingerprint: str


class ClassifyResponse(BaseModel):
    adapter: str
    fingerprint: str
    results: list[Prediction]


class GenerateRequest(_Body):
    adapter: str
    """Name of a loaded causal-LM adapter."""
    prompt: str
    """Text to continue."""
    max_new_tokens: int = Field(50, ge=1)
    """Tokens to generate (at most the server's max_new_tokens)."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature; 0 decodes greedily."""
    seed: int = 0
    """Sampling seed: the same seed gives the same text."""


class LoadRequest(_Body):
    name: str
    """Name to serve the adapter under (letters, digits, `_ . -`)."""
    path: str
    """Run folder or adapter folder on the server's disk."""


def create_app(registry, settings, metrics: ServeMetrics | None = None) -> FastAPI:
    """The FastAPI app serving `registry`'s adapters under `settings`' limits."""
    from peftkit import __version__

    metrics = metrics or ServeMetrics()
    runner = BatchRunner(registry, metrics, max_batch_tokens=settings.max_batch_tokens)
    scheduler = BatchScheduler(
        runner,
        metrics,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue_texts=settings.max_queue_texts,
    )

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop, settings.drain_seconds)

    app = FastAPI(
        title="peftkit serve",
        version=__version__,
        lifespan=lifespan,
        description="Many adapters on one base model, batched across requests. Errors are "
        '`{"error": "..."}` with the HTTP status.',
    )
    app.state.registry, app.state.scheduler, app.state.metrics = registry, scheduler, metrics
    app.state.draining = False
    _error_handlers(app)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = route.path if route is not None else "other"
        adapter = getattr(request.state, "adapter", "-")
        metrics.requests.labels(endpoint, adapter, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint, adapter).observe(time.perf_counter() - started)
        return response

    @app.post("/v1/classify", response_model=ClassifyResponse, tags=["inference"])
    async def classify(body: ClassifyRequest, request: Request):
        """Labels and probabilities for `texts` under one adapter's own label set."""
        _check_sizes(body.texts, settings)
        served = _adapter_for(registry, body.adapter, request, "classification", "/v1/generate", "causal-LM")
        from peftkit.data.prepare import tokenize_texts

        ids = tokenize_texts(registry.tokenizer, body.texts, served.max_length)
        results = await asyncio.wrap_future(scheduler.submit(Job(served, ids=ids, top_k=body.top_k)))
        return {"adapter": served.name, "fingerprint": served.fingerprint, "results": results}

    @app.post("/v1/generate", tags=["inference"])
    async def generate(body: GenerateRequest, request: Request):
        """A continuation of `prompt` sampled from a causal-LM adapter (seeded)."""
        served = _adapter_for(registry, body.adapter, request, "causal_lm", "/v1/classify", "classification")
        _check_sizes([body.prompt], settings)
        if body.max_new_tokens > settings.max_new_tokens:
            raise ServeError(
                413,
                f"max_new_tokens {body.max_new_tokens} is more than this server allows "
                f"({settings.max_new_tokens}); ask for fewer tokens.",
            )
        options = {"max_new_tokens": body.max_new_tokens, "temperature": body.temperature, "seed": body.seed}
        job = Job(served, generate={"prompt": body.prompt, "options": options})
        return await asyncio.wrap_future(scheduler.submit(job))

    @app.get("/v1/adapters", tags=["adapters"])
    async def list_adapters():
        """The loaded adapters: name, fingerprint, task, labels, method, card."""
        return {
            "base": registry.base_spec,
            "task": registry.task,
            "adapters": [a.describe() for a in registry.adapters()],
        }

    @app.get("/v1/adapters/{name}", tags=["adapters"])
    async def show_adapter(name: str):
        """One loaded adapter."""
        return registry.get(name).describe()

    @app.post("/v1/adapters", status_code=201, tags=["adapters"])
    async def load_adapter(body: LoadRequest, request: Request):
        """Hot-load an adapter from a path on the server (checked against the base first; no restart)."""
        try:
            served = await run_in_threadpool(registry.load, body.name, body.path)
        except ServeError:
            metrics.adapter_loads.labels("refused").inc()
            raise
        metrics.adapter_loads.labels("loaded").inc()
        request.state.adapter = served.name
        return served.describe()

    @app.delete("/v1/adapters/{name}", tags=["adapters"])
    async def unload_adapter(name: str):
        """Unload an adapter: new requests for it get 404; requests already accepted are still answered by it."""
        served = await run_in_threadpool(registry.unload, name)
        return {"unloaded": served.name, "fingerprint": served.fingerprint}

    @app.get("/health", tags=["operations"])
    async def health():
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"])
    async def ready():
        """Ready to answer (readiness): the worker runs, an adapter is loaded, the server is not draining."""
        problem = (
            "the server is draining for shutdown"
            if app.state.draining or not scheduler.running
            else "no adapter is loaded; load one with POST /v1/adapters"
            if not registry.names()
            else None
        )
        if problem:
            raise ServeError(503, f"not ready: {problem}.", {"Retry-After": "5"})
        return {"ready": True, "adapters": len(registry.names())}

    @app.get("/metrics", tags=["operations"])
    async def prometheus():
        """Prometheus text format."""
        metrics.adapters_loaded.set(len(registry.names()))
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _adapter_for(registry, name: str, request: Request, task: str, other_route: str, other_kind: str):
    """The loaded adapter `name` (404 if none), refused with 422 unless it is a `task` adapter."""
    served = registry.get(name)
    request.state.adapter = served.name
    if served.task != task:
        route = "/v1/classify" if task == "classification" else "/v1/generate"
        raise ServeError(
            422,
            f"adapter '{served.name}' is a {served.task} adapter; {route} needs a {task} adapter (use POST "
            f"{other_route} for {other_kind} adapters).",
        )
    return served


def _check_sizes(texts: list[str], settings) -> None:
    """413 for more texts, or longer ones, than the server takes, naming the limit and the offending text."""
    if len(texts) > settings.max_texts_per_request:
        raise ServeError(
            413,
            f"{len(texts)} texts in one request; this server takes at most {settings.max_texts_per_request}. "
            f"Split them over several requests.",
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars_per_text:
            raise ServeError(
                413,
                f"text {i} has {len(text)} characters; this server takes at most {settings.max_chars_per_text} "
                f"per text (starting {text[:60]!r}). Shorten or split it.",
            )


def _error_handlers(app: FastAPI) -> None:
    """Every error as one JSON paragraph: `{"error": "..."}`."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
            problems.append(f"'{where}': {err['msg']}")
        return JSONResponse(
            {
                "error": f"{request.method} {request.url.path}: the request body is not valid: "
                + "; ".join(problems)
                + ". See /docs for the expected JSON, e.g. "
                '{"adapter": "sentiment", "texts": ["a witty film"]} for /v1/classify.'
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        what = (
            f"no route {request.method} {request.url.path[:200]}"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return JSONResponse(
            {"error": f"{what}. The API: {API_SUMMARY}."}, status_code=exc.status_code, headers=exc.headers
        )
