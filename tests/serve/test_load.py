"""Load with a real client: locust (bounded in users, requests and time) and the `serve-bench --http` command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import peftkit
from tests.helpers import running_server

LOCUSTFILE = str(Path(peftkit.__file__).parent / "bench" / "locustfile.py")


@pytest.mark.slow  # locust's own start-up (gevent) plus a bounded run: 10-90 s on 2 shared cores
def test_locust_mixed_traffic_is_bounded_and_fully_answered(make_app, adapter_runs, tmp_path):
    app, _ = make_app({n: adapter_runs[n] for n in ("lora", "lora3", "prefix")})
    with running_server(app) as url:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                LOCUSTFILE,
                "--headless",
                "--only-summary",
                "-u",
                "4",
                "-r",
                "4",
                "--run-time",
                "60s",
                "--host",
                url,
                "--summary-file",
                str(tmp_path / "summary.json"),
                "--adapters",
                "lora,lora3,prefix",
                "--max-requests",
                "40",
                "--texts-per-request",
                "2",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
        )
        metrics = httpx.get(f"{url}/metrics").text
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sent"] == summary["requests"] == 40 and summary["failures"] == 0, summary
    # Every request locust sent was answered once by the server, 2 texts each.
    answered = re.findall(r'^peftkit_requests_total{[^}]*endpoint="/v1/classify"[^}]*} (\S+)$', metrics, re.M)
    assert sum(map(float, answered)) == 40
    assert sum(map(float, re.findall(r"^peftkit_texts_total{[^}]*} (\S+)$", metrics, re.M))) == 80


@pytest.mark.slow  # three server processes (each imports torch + transformers) and three short locust runs
def test_serve_bench_http_prints_setups_ratios_and_rss(adapter_runs):
    """The bench's short version: both references in the same run (the peer needs one label set: the same
    adapter under two names)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftkit",
            "serve-bench",
            "--http",
            "--adapter",
            f"a={adapter_runs['lora']}",
            "--adapter",
            f"b={adapter_runs['lora']}",
            "--counts",
            "1,2",
            "--users",
            "2",
            "--seconds",
            "3",
            "--threads",
            "1",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    rows = re.findall(r"^(peftkit serve|peer \(set_adapter\))\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)", out, re.M)
    assert [(r[0], r[1]) for r in rows] == [
        ("peftkit serve", "1"),
        ("peftkit serve", "2"),
        ("peer (set_adapter)", "2"),
    ]
    assert all(int(r[2]) > 0 and int(r[3]) == 0 and float(r[4]) > 0 for r in rows), out
    assert re.search(r"^2 adapters vs 1: [\d.]+x throughput$", out, re.M), out
    assert re.search(r"^vs peer, 2 adapters: [\d.]+x throughput, p99 \d+ vs \d+ ms$", out, re.M), out
    rss = r"^RSS with 2 adapters: \d+ MiB = \(base \d+ \+ adapter files [\d.]+\) [+-][\d.]+%$"
    assert re.search(rss, out, re.M), out
