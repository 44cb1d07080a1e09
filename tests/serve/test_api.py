"""The HTTP API against a live server on 127.0.0.1: answers, adapters, limits, and every refusal's words."""

from __future__ import annotations

import hashlib
import json
import shutil

import httpx
import pytest

from peftkit.inference.predict import predict_texts
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import make_texts, running_server, train_tiny, write_lm_card, write_recipe

TEXTS = [t for t, _ in make_texts(6, seed=3)]


@pytest.fixture(scope="module")
def live(adapter_runs):
    from peftkit.serve.app import create_app
    from peftkit.serve.registry import AdapterRegistry
    from peftkit.serve.settings import ServeSettings

    settings = ServeSettings(max_texts_per_request=8, max_chars_per_text=200, max_wait_ms=2)
    registry = AdapterRegistry()
    registry.load_many({name: str(adapter_runs[name]) for name in ("lora", "lora3", "prefix")})
    with (
        running_server(create_app(registry, settings)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def _classify(client, adapter, texts=TEXTS, **extra):
    return client.post("/v1/classify", json={"adapter": adapter, "texts": texts, **extra})


@pytest.mark.parametrize("name", ["lora3", "prefix"])
def test_classify_gives_the_adapters_own_labels_and_probabilities(live, adapter_runs, name):
    response = _classify(live, name)
    assert response.status_code == 200, response.text
    body = response.json()
    alone = predict_texts(str(adapter_runs[name]), TEXTS)  # the adapter on its own freshly loaded base
    digest = hashlib.sha256((adapter_runs[name] / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert body["adapter"] == name and body["fingerprint"] == f"sha256:{digest}"
    assert len(body["results"]) == len(TEXTS)
    for got, want in zip(body["results"], alone, strict=True):
        assert got["adapter"] == name and got["fingerprint"] == body["fingerprint"]
        assert got["label"] == want["label"]
        assert set(got["probabilities"]) == set(want["probabilities"])
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_top_k_keeps_the_most_probable_labels_in_order(live):
    full = _classify(live, "lora3").json()["results"]
    top = _classify(live, "lora3", top_k=2).json()["results"]
    for f, t in zip(full, top, strict=True):
        ranked = sorted(f["probabilities"], key=f["probabilities"].get, reverse=True)
        assert list(t["probabilities"]) == ranked[:2] and t["label"] == ranked[0]


def test_unknown_adapter_is_404_listing_the_loaded_ones(live):
    response = _classify(live, "sentiment")
    assert response.status_code == 404
    assert response.json() == {
        "error": "adapter 'sentiment' is not loaded (loaded: lora, lora3, prefix). Name one of them, or load it "
        'with POST /v1/adapters {"name": ..., "path": ...}.'
    }


@pytest.mark.parametrize(
    "body, status, words",
    [
        (
            {"adapter": "lora", "texts": ["good"] * 9},
            413,
            "9 texts in one request; this server takes at most 8",
        ),
        (
            {"adapter": "lora", "texts": ["ok", "x" * 201]},
            413,
            "text 1 has 201 characters; this server takes at most 200",
        ),
        ({"adapter": "lora", "texts": []}, 422, "'texts': List should have at least 1 item"),
        (
            {"adapter": "lora", "texts": ["a"], "top_k": 0},
            422,
            "'top_k': Input should be greater than or equal to 1",
        ),
        ({"adapter": "lora", "text": ["a"]}, 422, "'text': Extra inputs are not permitted"),
        ({"texts": ["a"]}, 422, "'adapter': Field required"),
    ],
)
def test_bad_requests_get_one_clear_paragraph(live, body, status, words):
    response = live.post("/v1/classify", json=body)
    assert response.status_code == status
    assert list(response.json()) == ["error"] and words in response.json()["error"]
    assert "\n" not in response.json()["error"]


def test_malformed_json_and_unknown_routes_are_json_errors(live):
    response = live.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "the request body is not valid" in response.json()["error"]
    response = live.get("/v2/classify")
    assert response.status_code == 404
    assert response.json()["error"].startswith("no route GET /v2/classify. The API: POST /v1/classify")


def test_adapters_listing_page_and_openapi(live, adapter_runs):
    listing = live.get("/v1/adapters").json()
    assert [a["name"] for a in listing["adapters"]] == ["lora", "lora3", "prefix"]
    by_name = {a["name"]: a for a in listing["adapters"]}
    assert by_name["lora3"]["labels"] == ["neg", "pos", "meh"]
    assert by_name["lora"]["mixed_batching"] and not by_name["prefix"]["mixed_batching"]
    assert by_name["lora"]["card"].startswith("---") and "peftkit" in by_name["lora"]["card"]
    assert listing["task"] == "classification"
    assert live.get("/v1/adapters/prefix").json()["method"] == "prefix_tuning"
    assert "<title>peftkit serve</title>" in live.get("/").text
    assert "function showResult" in live.get("/static/app.js").text
    paths = live.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/generate", "/v1/adapters", "/v1/adapters/{name}", "/ready"} <= set(paths)
    assert live.get("/docs").status_code == 200


def test_health_ready_and_metrics(live):
    assert live.get("/health").json() == {"status": "ok"}
    assert live.get("/ready").json() == {"ready": True, "adapters": 3}
    _classify(live, "lora")
    _classify(live, "nope")
    text = live.get("/metrics").text
    assert 'peftkit_requests_total{adapter="lora",endpoint="/v1/classify",status="200"}' in text
    assert 'peftkit_errors_total{endpoint="/v1/classify",status="404"}' in text
    assert 'peftkit_request_seconds_bucket{adapter="lora",endpoint="/v1/classify",le="+Inf"}' in text
    assert 'peftkit_texts_total{adapter="lora"}' in text
    for name in ("peftkit_batch_rows_count", "peftkit_batch_adapters_count", "peftkit_queue_texts"):
        assert name in text
    assert "peftkit_adapters_loaded 3.0" in text


def _copy(src, dest):
    shutil.copytree(src, dest)
    return dest


def test_hot_load_refuses_an_adapter_for_another_base(live, tiny_gpt2, tiny_card, tmp_path):
    other = train_tiny(tmp_path, "gpt", model=tiny_gpt2, card=tiny_card, epochs=1)
    response = live.post("/v1/adapters", json={"name": "gpt", "path": str(other)})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error.startswith(f"adapter 'gpt' refused: adapter '{other}' does not fit the loaded base")
    assert "base model: expected" in error and "tokenizer: expected" in error
    assert _classify(live, "gpt").status_code == 404  # nothing half-loaded is served


def test_hot_load_refuses_target_modules_that_match_nothing(live, adapter_runs, tmp_path):
    bad = _copy(adapter_runs["lora"], tmp_path / "bad")
    config = json.loads((bad / "adapter_config.json").read_text())
    config["target_modules"] = ["attention_nowhere"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    response = live.post("/v1/adapters", json={"name": "bad", "path": str(bad)})
    assert response.status_code == 422
    assert (
        "its target modules (['attention_nowhere']) match no layer of the loaded base"
        in response.json()["error"]
    )


def test_load_refuses_weights_that_would_not_load(adapter_runs, tmp_path):
    """Keys for layers the base does not have would load as nothing: the bare base would answer. (A peftkit
    bundle's own checksums already refuse an edited file; a plain PEFT adapter, served with allow_unchecked,
    has none, so this check is what stands between it and the base.)"""
    from safetensors.torch import load_file, save_file

    from peftkit.serve.errors import ServeError
    from peftkit.serve.registry import AdapterRegistry

    bad = _copy(adapter_runs["lora"], tmp_path / "moved")
    (bad / "peftkit_adapter.json").unlink()
    weights = bad / "adapter_model.safetensors"
    tensors = {k.replace("layer.1.", "layer.7."): v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    registry = AdapterRegistry(allow_unchecked=True)
    registry.load("good", str(adapter_runs["lora"]))
    with pytest.raises(ServeError) as exc:
        registry.load("moved", str(bad))
    assert exc.value.status == 422
    assert "did not load into the base (no such layer)" in str(exc.value)
    assert registry.names() == ["good"]


def test_hot_load_refusals_for_names_paths_and_unchecked_adapters(live, adapter_runs, tmp_path):
    response = live.post("/v1/adapters", json={"name": "lora", "path": str(adapter_runs["lora3"])})
    assert response.status_code == 409 and "adapter name 'lora' is already loaded" in response.json()["error"]
    response = live.post("/v1/adapters", json={"name": "a b", "path": str(adapter_runs["lora3"])})
    assert response.status_code == 422 and "adapter name 'a b' is not allowed" in response.json()["error"]
    response = live.post("/v1/adapters", json={"name": "gone", "path": str(tmp_path / "nowhere")})
    assert response.status_code == 422 and "no such folder" in response.json()["error"]
    plain = _copy(adapter_runs["lora"], tmp_path / "plain")
    (plain / "peftkit_adapter.json").unlink()
    response = live.post("/v1/adapters", json={"name": "plain", "path": str(plain)})
    assert response.status_code == 422
    assert "is a plain PEFT adapter without peftkit_adapter.json" in response.json()["error"]
    assert "--allow-unchecked" in response.json()["error"]


def test_adapter_root_confines_hot_loads(adapter_runs, tmp_path):
    from peftkit.serve.errors import ServeError
    from peftkit.serve.registry import AdapterRegistry

    registry = AdapterRegistry(adapter_root=str(tmp_path))
    with pytest.raises(ServeError, match="is outside the server's adapter root") as exc:
        registry.load("lora", str(adapter_runs["lora"]))
    assert exc.value.status == 403


def test_hot_load_then_unload(live, adapter_runs):
    response = live.post("/v1/adapters", json={"name": "extra", "path": str(adapter_runs["lora3"])})
    assert response.status_code == 201 and response.json()["labels"] == ["neg", "pos", "meh"]
    first = _classify(live, "extra").json()["results"]
    again = _classify(live, "lora3").json()["results"]
    assert [r["probabilities"] for r in first] == [r["probabilities"] for r in again]
    assert live.delete("/v1/adapters/extra").json()["unloaded"] == "extra"
    assert _classify(live, "extra").status_code == 404
    assert live.delete("/v1/adapters/extra").status_code == 404


def test_generate_with_a_causal_lm_adapter(tiny_gpt2, tmp_path):
    from peftkit.inference.generate import generate_text
    from peftkit.serve.app import create_app
    from peftkit.serve.registry import AdapterRegistry
    from peftkit.serve.settings import ServeSettings

    recipe = write_recipe(
        tmp_path / "lm.yaml",
        model=tiny_gpt2,
        card=write_lm_card(tmp_path / "data"),
        out=tmp_path / "lm",
        train={"epochs": 1},
    )
    run = train(load_recipe(recipe, ["model.task=causal_lm"]), progress=False) / "adapter"
    registry = AdapterRegistry()
    registry.load("lm", str(run))
    with running_server(create_app(registry, ServeSettings(max_new_tokens=16))) as url:
        body = {"adapter": "lm", "prompt": "the film", "max_new_tokens": 6, "temperature": 0.9, "seed": 3}
        response = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
        assert response.status_code == 200, response.text
        want = generate_text(str(run), "the film", max_new_tokens=6, temperature=0.9, seed=3)
        assert response.json()["text"] == want and response.json()["adapter"] == "lm"
        response = httpx.post(f"{url}/v1/generate", json={**body, "max_new_tokens": 17}, timeout=60)
        assert response.status_code == 413 and "more than this server allows (16)" in response.json()["error"]
        response = httpx.post(f"{url}/v1/classify", json={"adapter": "lm", "texts": ["a"]}, timeout=60)
        assert response.status_code == 422
        assert (
            "adapter 'lm' is a causal_lm adapter; /v1/classify needs a classification adapter"
            in (response.json()["error"])
        )


def test_generate_refuses_a_classification_adapter(live):
    response = live.post("/v1/generate", json={"adapter": "lora", "prompt": "the"})
    assert response.status_code == 422
    assert (
        "adapter 'lora' is a classification adapter; /v1/generate needs a causal_lm adapter"
        in (response.json()["error"])
    )
