"""`peftkit serve`: many adapters on one base model behind an HTTP API (FastAPI on uvicorn).

settings (flags / YAML) → registry (adapters: load, hot-load, unload; fail closed) → scheduler (dynamic batching
across requests, one worker thread) → app (routes, limits, errors as one JSON paragraph) → server (uvicorn,
time to ready, SIGTERM drain). metrics: Prometheus text at /metrics. static/: the page at /.
"""
