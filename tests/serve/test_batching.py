"""Concurrency: mixed batches equal each request alone, hot load/unload under traffic, backpressure, drain."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from peftkit.inference.adapter_set import AdapterSet
from tests.helpers import make_texts, running_server

TEXTS = [t for t, _ in make_texts(24, seed=5)]


@pytest.fixture(scope="module")
def alone(adapter_runs):
    """Each adapter's probabilities for each text, one text per call (no batch at all)."""
    adapters = AdapterSet()
    for name in ("lora", "lora3", "prefix"):
        adapters.add(name, adapter_runs[name])
    return {
        (name, t): adapters.predict(name, [t])[0]["probabilities"] for name in adapters.names for t in TEXTS
    }


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))


def _check_against_alone(alone, name, texts, body):
    for text, result in zip(texts, body["results"], strict=True):
        want = alone[(name, text)]
        assert set(result["probabilities"]) == set(want)
        assert max(abs(result["probabilities"][k] - v) for k, v in want.items()) <= 1e-5


def test_concurrent_requests_share_batches_and_match_each_request_alone(make_app, adapter_runs, alone):
    app, _ = make_app({n: adapter_runs[n] for n in ("lora", "lora3", "prefix")}, max_wait_ms=150)
    names = ["lora", "lora3", "prefix"]
    jobs = [(names[i % 3], TEXTS[i : i + 1 + i % 3]) for i in range(18)]
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:

        def send(job):
            name, texts = job
            return client.post("/v1/classify", json={"adapter": name, "texts": texts})

        with ThreadPoolExecutor(len(jobs)) as pool:
            responses = list(pool.map(send, jobs))
        for (name, texts), response in zip(jobs, responses, strict=True):
            assert response.status_code == 200, response.text
            assert response.json()["adapter"] == name
            _check_against_alone(alone, name, texts, response.json())
        metrics = client.get("/metrics").text
    batches = _metric(metrics, "peftkit_batch_adapters_count")
    # Fewer batches than requests, and on average more than one adapter per batch: the batches were mixed.
    assert batches < len(jobs)
    assert _metric(metrics, "peftkit_batch_adapters_sum") / batches > 1
    assert _metric(metrics, "peftkit_batch_rows_sum") == sum(len(t) for _, t in jobs)


def test_hot_load_and_unload_under_traffic_lose_no_request(make_app, adapter_runs, alone):
    """Traffic on three names while one is unloaded, reloaded from another adapter, and a new one comes and goes:
    every request is answered exactly once, by the adapter its answer names, or refused with 404 when its name
    was not loaded at that moment."""
    app, registry = make_app({"a": adapter_runs["lora"], "b": adapter_runs["lora3"]}, max_wait_ms=5)
    answers: list = []
    stop = threading.Event()
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as admin:

        def traffic(seed: int):
            with httpx.Client(base_url=url, timeout=60) as client:
                i = seed
                while not stop.is_set():
                    name, texts = "abc"[i % 3], TEXTS[i % 20 : i % 20 + 2]
                    r = client.post("/v1/classify", json={"adapter": name, "texts": texts})
                    answers.append((name, texts, r.status_code, r.json()))
                    i += 1

        threads = [threading.Thread(target=traffic, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        steps = [
            ("post", {"name": "c", "path": str(adapter_runs["prefix"])}),
            ("delete", "b"),
            ("post", {"name": "b", "path": str(adapter_runs["lora"])}),
            ("delete", "c"),
            ("delete", "a"),
            ("post", {"name": "a", "path": str(adapter_runs["lora3"])}),
        ]
        for verb, arg in steps:
            time.sleep(0.3)
            r = (
                admin.post("/v1/adapters", json=arg)
                if verb == "post"
                else admin.delete(f"/v1/adapters/{arg}")
            )
            assert r.status_code in (200, 201), r.text
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(60)
        metrics = admin.get("/metrics").text
    by_fingerprint = {_fingerprint(adapter_runs[n]): n for n in ("lora", "lora3", "prefix")}
    statuses = {status for _, _, status, _ in answers}
    assert statuses <= {200, 404} and 200 in statuses and len(answers) > 20
    for name, texts, status, body in answers:
        if status == 404:
            assert f"adapter '{name}' is not loaded" in body["error"]
            continue
        assert body["adapter"] == name
        _check_against_alone(alone, by_fingerprint[body["fingerprint"]], texts, body)
    # Answered exactly once: the server counted as many classify answers as the clients received.
    served = sum(
        float(v)
        for v in re.findall(
            r'^peftkit_requests_total{[^}]*endpoint="/v1/classify"[^}]*} (\S+)$', metrics, re.M
        )
    )
    assert served == len(answers)
    assert registry.names() == ["b", "a"]


def _fingerprint(path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_full_queue_answers_429_with_retry_after(make_app, adapter_runs):
    app, _ = make_app({"a": adapter_runs["lora"]}, max_queue_texts=4, max_wait_ms=1500)
    with (
        running_server(app) as url,
        httpx.Client(base_url=url, timeout=60) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        first = [
            pool.submit(client.post, "/v1/classify", json={"adapter": "a", "texts": [t]}) for t in TEXTS[:4]
        ]
        time.sleep(0.5)  # the four wait in the queue for their batch (max_wait_ms 1500)
        refused = client.post("/v1/classify", json={"adapter": "a", "texts": ["one more"]})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"].startswith(
            "the queue is full (4 texts waiting, limit 4); this request's 1 text(s) were not accepted. Retry after"
        )
        assert [f.result().status_code for f in first] == [200] * 4


@pytest.mark.slow  # a fresh process imports torch, transformers and peft: 10-40 s on 2 shared cores
def test_sigterm_drains_in_flight_requests(adapter_runs, tmp_path):
    """A real `peftkit serve` process: requests queued when SIGTERM arrives are all answered, then it exits."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peftkit",
            "serve",
            "--adapter",
            f"a={adapter_runs['lora']}",
            "--port",
            "0",
            "--max-wait-ms",
            "1500",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"ready in ([\d.]+) s .* on (http://127\.0\.0\.1:\d+)", line)
        assert match, line + proc.stderr.read()[-2000:] if proc.poll() is not None else line
        url = match.group(2)
        with ThreadPoolExecutor(6) as pool:
            futures = [
                pool.submit(httpx.post, f"{url}/v1/classify", json={"adapter": "a", "texts": [t]}, timeout=60)
                for t in TEXTS[:6]
            ]
            deadline = time.monotonic() + 30
            while _metric(httpx.get(f"{url}/metrics").text, "peftkit_queue_requests") < 6:
                assert time.monotonic() < deadline, "the requests never queued"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 6
        # uvicorn re-raises the signal once it has shut down cleanly, so a supervisor sees "ended by SIGTERM".
        assert proc.wait(60) == -signal.SIGTERM
        assert "draining in-flight requests" in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
