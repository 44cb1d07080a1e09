"""The peer of `peftkit serve` in the serving benchmark: the FastAPI app a user writes by hand.

One PEFT model holding every adapter (`PeftModel.from_pretrained` + `load_adapter`), `set_adapter` per request
under a lock (the model is shared), the request's texts tokenized and run together, no batching across
requests. The base is loaded with transformers and given the adapters' pooling (peftkit's mean pooling for the
MiniLM recipes), so its answers are the adapters' own.

    python -m peftkit.bench.peer_server --adapter a=runs/x --adapter b=runs/y --port 8001
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket


def create_peer_app(adapters: dict[str, str]):
    """A FastAPI app with POST /v1/classify {adapter, texts} over `adapters` (name → adapter folder)."""
    import torch
    from fastapi import FastAPI, HTTPException
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit.models.load import hf_folder
    from peftkit.models.pooling import apply_pooling
    from peftkit.models.sources import resolve_source

    paths = {name: _adapter_dir(path) for name, path in adapters.items()}
    meta = json.loads((next(iter(paths.values())) / "peftkit_adapter.json").read_text())
    folder = hf_folder(resolve_source(meta["base_model"]["source"]))
    labels = meta["labels"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    apply_pooling(base, meta.get("pooling", "model"))
    names = list(paths)
    model = PeftModel.from_pretrained(base, str(paths[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(paths[name]), adapter_name=name)
    model.eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(body: dict):
        if body.get("adapter") not in paths:
            raise HTTPException(404, f"unknown adapter {body.get('adapter')!r}")
        with lock:
            model.set_adapter(body["adapter"])
            enc = tokenizer(
                body["texts"],
                padding=True,
                truncation=True,
                max_length=meta["max_length"],
                return_tensors="pt",
            )
            with torch.no_grad():
                probs = torch.softmax(model(**enc).logits, -1)
        return {
            "adapter": body["adapter"],
            "results": [
                {
                    "label": labels[int(p.argmax())],
                    "probabilities": dict(zip(labels, p.tolist(), strict=True)),
                }
                for p in probs
            ],
        }

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def _adapter_dir(path: str) -> Path:
    folder = Path(path)
    return folder / "adapter" if (folder / "adapter" / "adapter_config.json").is_file() else folder


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    started = time.perf_counter()
    app = create_peer_app(dict(spec.split("=", 1) for spec in args.adapter))
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            port = self.servers[0].sockets[0].getsockname()[1]
            print(
                f"peer: ready in {time.perf_counter() - started:.1f} s on http://127.0.0.1:{port}", flush=True
            )

    Server(config).run()


if __name__ == "__main__":
    main()
