"""Settings (flags + YAML), CLI refusals and the scheduler's own errors: every message's words."""

from __future__ import annotations

from concurrent.futures import Future

import httpx
import pytest

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.serve.errors import ServeError
from peftkit.serve.metrics import ServeMetrics
from peftkit.serve.scheduler import BatchScheduler, Job
from peftkit.serve.settings import load_settings
from tests.helpers import running_server


def test_yaml_settings_with_flags_on_top(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("port: 9001\nmax_wait_ms: 2\nadapters: {a: runs/a}\n")
    settings = load_settings(str(config), {"port": 9002, "host": None, "adapters": {"b": "runs/b"}})
    assert (settings.port, settings.max_wait_ms, settings.host) == (9002, 2.0, "127.0.0.1")
    assert settings.adapters == {"a": "runs/a", "b": "runs/b"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("max_wait: 3\n", "'max_wait': Extra inputs are not permitted. Did you mean 'max_wait_ms'?"),
        ("port: many\n", "'port': Input should be a valid integer"),
        ("- 1\n", "expected a mapping of settings (e.g. `port: 8000`)"),
        ("port: [\n", "not valid YAML"),
        ("adapters: {'a b': x}\n", "adapter name 'a b' is not allowed"),
    ],
)
def test_bad_settings_are_refused_with_the_key(tmp_path, text, words):
    config = tmp_path / "serve.yaml"
    config.write_text(text)
    with pytest.raises(PeftkitError) as exc:
        load_settings(str(config), {})
    assert words in str(exc.value)


def test_serve_cli_refusals(tmp_path, capsys):
    assert main(["serve"]) == 2
    assert "serve: no adapter to serve. Give one or more --adapter NAME=PATH" in capsys.readouterr().err
    assert main(["serve", "--adapter", "a=x", "--adapter", "a=y"]) == 2
    assert "--adapter: a name is given twice (a, a)" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "none.yaml"), "--adapter", "a=x"]) == 2
    assert "--config: '" in capsys.readouterr().err
    assert main(["serve", "--adapter", f"a={tmp_path / 'missing'}", "--port", "0"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["serve-bench", "--http"]) == 2
    assert "serve-bench --http: no adapters" in capsys.readouterr().err
    assert main(["serve-bench", "--http", "--adapter", "a=x", "--counts", "1,many"]) == 2
    assert (
        "--counts: expected comma-separated adapter counts like 1,8,32, found '1,many'"
        in capsys.readouterr().err
    )


class _Adapter:
    key, name = 1, "a"


def test_scheduler_refuses_after_stop_and_turns_a_crash_into_a_500():
    def crash(jobs):
        raise RuntimeError("boom")

    scheduler = BatchScheduler(crash, ServeMetrics(), max_batch_tokens=64, max_wait_ms=0, max_queue_texts=8)
    scheduler.start()
    future: Future = scheduler.submit(Job(_Adapter(), ids=[[1, 2]]))
    with pytest.raises(ServeError) as exc:
        future.result(timeout=30)
    assert exc.value.status == 500
    assert str(exc.value).startswith("the model failed on this request's batch (RuntimeError: boom)")
    scheduler.stop(timeout=30)
    with pytest.raises(ServeError) as exc:
        scheduler.submit(Job(_Adapter(), ids=[[1]]))
    assert exc.value.status == 503 and exc.value.headers == {"Retry-After": "5"}
    assert "the server is shutting down and accepts no new requests" in str(exc.value)


def test_scheduler_batches_within_the_token_limit():
    seen = []

    def record(jobs):
        seen.append([j.texts for j in jobs])
        return [None] * len(jobs)

    scheduler = BatchScheduler(
        record, ServeMetrics(), max_batch_tokens=12, max_wait_ms=300, max_queue_texts=64
    )
    futures = [scheduler.submit(Job(_Adapter(), ids=[[1, 2, 3]] * n)) for n in (2, 2, 1, 3)]
    scheduler.start()
    for f in futures:
        f.result(timeout=30)
    scheduler.stop(timeout=30)
    # 3 tokens per text, 12 tokens per batch: 2+2 texts, then 1+3 (each batch ≤ 4 rows of 3).
    assert seen == [[2, 2], [1, 3]]


def test_ready_is_503_once_no_adapter_is_loaded(make_app, adapter_runs):
    app, _ = make_app({"a": adapter_runs["lora"]})
    with running_server(app) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        assert httpx.delete(f"{url}/v1/adapters/a").status_code == 200
        response = httpx.get(f"{url}/ready")
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.json() == {
            "error": "not ready: no adapter is loaded; load one with POST /v1/adapters."
        }


def test_rows_are_cut_by_length_into_the_cheapest_forwards():
    from peftkit.serve.execute import chunks

    lengths = [40, 8, 38, 9, 41, 7, 39, 10]
    rows = [("ab"[i % 2], [0] * n, None, i) for i, n in enumerate(lengths)]
    parts = chunks(rows, max_tokens=4096, overhead=48)
    # Long and short rows go to separate forwards (one forward would pad 8 rows to 41: 328 tokens + 48).
    assert sorted(sorted(len(r[1]) for r in p) for p in parts) == [[7, 8, 9, 10], [38, 39, 40, 41]]
    assert all([r[0] for r in p] == sorted(r[0] for r in p) for p in parts)  # grouped by adapter inside
    assert sorted(r[3] for p in parts for r in p) == list(range(8))  # every row exactly once
    # The token limit holds; a row longer than the limit goes alone.
    parts = chunks([("a", [0] * 30, None, i) for i in range(5)] + [("a", [0] * 200, None, 5)], max_tokens=64)
    assert all(len(p) * max(len(r[1]) for r in p) <= 64 or len(p) == 1 for p in parts)
    assert [len(p) for p in parts] == [1, 2, 2, 1]
