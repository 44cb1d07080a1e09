"""`peftkit serve-bench --http`: `peftkit serve` under locust load, against its two references, in one run.

For each setup a fresh server process is started, warmed up (one request per adapter), loaded by locust for
`seconds` with `users` closed-loop users (mixed traffic: each request names an adapter drawn uniformly), and
stopped with SIGTERM. Printed per setup: requests, failures, texts/s, p50/p99 latency (locust's), the
server's RSS after the run, and time to ready. The references: the same server with ONE adapter, and the
peer (`peftkit.bench.peer_server`: one PEFT model, `set_adapter` per request, no batching) over the same
adapters as the largest mixed setup it is compared with. Then the throughput ratios and the server's memory
beyond the base and the adapter files.

With `soak_seconds`, one more run instead: open-loop traffic at `soak_rate` requests/s over the adapters while
an extra adapter is hot-loaded and unloaded every `swap_every` seconds; it reports failures and requests lost
(sent by locust but not counted by the server, or counted twice).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TypedDict

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class Swaps(TypedDict):
    """The soak run's hot-load record: successful loads and unloads, and the error texts of the failed ones."""

    loads: int
    unloads: int
    errors: list[str]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start(cmd: list[str], pattern: str) -> tuple[subprocess.Popen, str, float]:
    """Start a server process and wait for its ready line: (process, base URL, seconds to ready)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    match, line = None, "?"
    while match is None and line:
        line = proc.stdout.readline()
        match = re.search(pattern, line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {' '.join(cmd)[:300]}: {line[:300]}")
    return proc, match.group("url"), float(match.group("ready"))


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _classify_count(url: str) -> float:
    """Requests to /v1/classify the server answered (any status), from its /metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    pattern = r'^peftkit_requests_total{[^}]*endpoint="/v1/classify"[^}]*} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, flags=re.M))


def _locust(url, names, *, users, seconds, texts_file, k, max_requests=0, rate=0.0, volatile="") -> dict:
    """Run locust headless against `url`: its final figures (requests sent by its users, requests and failures
    recorded, requests/s, p50 and p99 ms), as the locustfile's --summary-file writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "-u", str(users), "-r", str(users), "--run-time", f"{seconds}s", "--host", url,
            "--adapters", ",".join(names), "--texts-file", str(texts_file),
            "--texts-per-request", str(k), "--max-requests", str(max_requests), "--rate", str(rate),
            "--volatile", volatile, "--stop-timeout", "30", "--exit-code-on-error", "0",
            "--summary-file", str(summary),
        ]  # fmt: skip
        subprocess.run(
            cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 120
        )
        figures = json.loads(summary.read_text())
    return {
        key: figures[key] for key in ("sent", "requests", "failures", "requests_per_s", "p50_ms", "p99_ms")
    }


def _sample_texts(n: int = 400) -> list[str]:
    """Rotten Tomatoes validation snippets (the adapters' own data), for realistic lengths."""
    from peftkit.data.cards import load_card
    from peftkit.data.sources import load_splits

    texts = load_splits(load_card("rotten_tomatoes"))["validation"]["text"]
    return list(texts[:n])


def _run_setup(kind, named, *, users, seconds, texts_file, k, threads) -> dict:
    import httpx

    specs = [x for name, path in named for x in ("--adapter", f"{name}={path}")]
    if kind == "peer":
        cmd = [sys.executable, "-m", "peftkit.bench.peer_server", *specs, "--port", "0"]
        pattern = r"ready in (?P<ready>[\d.]+) s on (?P<url>\S+)"
    else:
        cmd = [sys.executable, "-m", "peftkit", "serve", *specs, "--port", "0"]
        cmd += ["--threads", str(threads)] if threads else []
        pattern = r"ready in (?P<ready>[\d.]+) s .* on (?P<url>http://\S+)"
    env_threads = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    os.environ.update(env_threads)
    proc, url, ready = _start(cmd, pattern)
    try:
        texts = json.loads(Path(texts_file).read_text())
        for name, _ in named:  # warm-up: one request per adapter
            httpx.post(f"{url}/v1/classify", json={"adapter": name, "texts": texts[:k]}, timeout=120)
        result = _locust(url, [n for n, _ in named], users=users, seconds=seconds, texts_file=texts_file, k=k)
        result["rss_mb"] = _rss_mb(proc.pid)
    finally:
        _stop(proc)
    sizes = sum((_adapter_dir(p) / "adapter_model.safetensors").stat().st_size for _, p in named) / 2**20
    return {
        "setup": kind,
        "adapters": len(named),
        **result,
        "texts_per_s": result["requests_per_s"] * k,
        "ready_s": ready,
        "adapter_files_mb": sizes,
    }


def _adapter_dir(path: str) -> Path:
    folder = Path(path)
    return folder / "adapter" if (folder / "adapter" / "adapter_config.json").is_file() else folder


def _named(pairs: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """`count` adapters: the given ones in order, cycling through their paths under new names if too few."""
    return [
        (pairs[i][0] if i < len(pairs) else f"{pairs[i % len(pairs)][0]}-{i}", pairs[i % len(pairs)][1])
        for i in range(count)
    ]


def run_http_bench(
    pairs: list[tuple[str, str]],
    *,
    counts: list[int],
    users: int = 16,
    seconds: int = 30,
    texts_per_request: int = 1,
    peer: bool = True,
    threads: int | None = None,
) -> list[dict]:
    """Every setup, one after another; print the table and the ratios; return the rows."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(_sample_texts(), fh)
        texts_file = fh.name
    common = {"users": users, "seconds": seconds, "texts_file": texts_file, "k": texts_per_request}
    rows = []
    for count in sorted({1, *counts}):
        rows.append(_run_setup("peftkit serve", _named(pairs, count), threads=threads, **common))
        _print_row(rows[-1], header=len(rows) == 1)
    largest = max(counts)
    peer_count = 8 if 8 in counts else largest
    if peer:
        rows.append(_run_setup("peer (set_adapter)", _named(pairs, peer_count), threads=threads, **common))
        _print_row(rows[-1])
    os.unlink(texts_file)
    _print_ratios(rows, peer_count)
    return rows


def _print_row(row: dict, *, header: bool = False) -> None:
    if header:
        print(
            f"{'setup':20s} {'adapters':>8s} {'requests':>8s} {'failed':>6s} {'texts/s':>8s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'RSS MiB':>8s} {'ready s':>7s}"
        )
    print(
        f"{row['setup']:20s} {row['adapters']:8d} {row['requests']:8d} {row['failures']:6d} "
        f"{row['texts_per_s']:8.1f} {row['p50_ms']:7.0f} {row['p99_ms']:7.0f} {row['rss_mb']:8.0f} "
        f"{row['ready_s']:7.1f}",
        flush=True,
    )


def _print_ratios(rows: list[dict], peer_count: int) -> None:
    ours = {r["adapters"]: r for r in rows if r["setup"] == "peftkit serve"}
    one = ours[1]
    for n in sorted(ours):
        if n > 1:
            print(f"{n} adapters vs 1: {ours[n]['texts_per_s'] / one['texts_per_s']:.2f}x throughput")
    peer = next((r for r in rows if r["setup"].startswith("peer")), None)
    if peer and peer_count in ours:
        mine = ours[peer_count]
        print(
            f"vs peer, {peer_count} adapters: {mine['texts_per_s'] / peer['texts_per_s']:.2f}x throughput, "
            f"p99 {mine['p99_ms']:.0f} vs {peer['p99_ms']:.0f} ms"
        )
    largest = max(ours)
    if largest > 1:
        base = one["rss_mb"] - one["adapter_files_mb"]
        files = ours[largest]["adapter_files_mb"]
        extra = ours[largest]["rss_mb"] / (base + files) - 1
        print(
            f"RSS with {largest} adapters: {ours[largest]['rss_mb']:.0f} MiB = (base {base:.0f} + adapter files "
            f"{files:.1f}) {extra:+.1%}"
        )


def run_soak(
    pairs: list[tuple[str, str]],
    *,
    seconds: int,
    rate: float,
    users: int = 16,
    swap_every: float = 30.0,
    texts_per_request: int = 1,
    threads: int | None = None,
) -> dict:
    """Open-loop traffic at `rate` requests/s for `seconds`, hot-loading/unloading an extra adapter every
    `swap_every` s; print and return failures and lost requests (both should be 0)."""
    import httpx

    named = _named(pairs, len(pairs))
    volatile_name, volatile_path = "swapped", named[-1][1]
    texts_file = Path(tempfile.mkdtemp()) / "texts.json"
    texts_file.write_text(json.dumps(_sample_texts()))
    specs = [x for name, path in named for x in ("--adapter", f"{name}={path}")]
    cmd = [sys.executable, "-m", "peftkit", "serve", *specs, "--port", "0"]
    cmd += ["--threads", str(threads)] if threads else []
    proc, url, ready = _start(cmd, r"ready in (?P<ready>[\d.]+) s .* on (?P<url>http://\S+)")
    swaps: Swaps = {"loads": 0, "unloads": 0, "errors": []}
    done = threading.Event()

    def swapper():
        loaded = False
        while not done.wait(swap_every):
            if loaded:
                r = httpx.delete(f"{url}/v1/adapters/{volatile_name}", timeout=120)
                swaps["unloads"] += r.status_code == 200
            else:
                r = httpx.post(
                    f"{url}/v1/adapters", json={"name": volatile_name, "path": volatile_path}, timeout=120
                )
                swaps["loads"] += r.status_code == 201
            if r.status_code not in (200, 201):
                swaps["errors"].append(r.text[:200])
            loaded = not loaded

    thread = threading.Thread(target=swapper, daemon=True)
    try:
        thread.start()
        result = _locust(
            url, [n for n, _ in named], users=users, seconds=seconds, texts_file=texts_file,
            k=texts_per_request, rate=rate / users, volatile=volatile_name,
        )  # fmt: skip
        done.set()
        thread.join(150)
        counted = _classify_count(url)
        result.update(rss_mb=_rss_mb(proc.pid), ready_s=ready, server_counted=counted, swaps=swaps)
    finally:
        _stop(proc)
    # Lost: sent by a client, never counted by the server. Extra: counted by the server, never sent (a request
    # answered twice would show here). Requests cut off by locust's stop are counted by the server but not by
    # locust's stats, hence `sent` rather than locust's request count.
    result["lost"] = max(0, result["sent"] - int(counted))
    result["extra"] = max(0, int(counted) - result["sent"])
    print(
        f"soak {seconds} s at {rate:.1f} req/s over {len(named)} adapters (+1 hot-loaded/unloaded every "
        f"{swap_every:.0f} s: {swaps['loads']} loads, {swaps['unloads']} unloads, {len(swaps['errors'])} swap "
        f"errors): {result['sent']} requests sent ({result['requests']} recorded by locust), {result['failures']} "
        f"failed, {result['lost']} lost, {result['extra']} answered twice (server counted {int(counted)}), "
        f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, RSS {result['rss_mb']:.0f} MiB",
        flush=True,
    )
    return result
