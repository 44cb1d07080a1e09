"""Load what peftkit wrote the way someone without peftkit would, and write the logits it gives.

This file is run as a script in a fresh process (`python -I plain_loaders.py REQUESTS.json RESULTS.json`) and
never imports peftkit: the interop contract is about the standard loaders alone. Each request names a loader
and its folders, the texts and the tokenizer settings; several run one after the other in the same process
(starting one costs seconds of imports). Each result says whether it loaded (else the error the loader raised:
a loud failure is an acceptable answer, a silently different model is not); the logits (one row per text) go
to the .npy file its request names. RESULTS also records whether peftkit ended up imported.

Loaders (the standard one for each artifact):
- `peft`: `AutoModelForSequenceClassification` on the base folder + `PeftModel.from_pretrained(adapter)`;
- `auto_peft`: `AutoPeftModelForSequenceClassification.from_pretrained(folder)` (the base comes from the Hub
  cache under adapter_config.json's `base_model_name_or_path`);
- `transformers`: `AutoModelForSequenceClassification.from_pretrained(folder)` (a merged folder), or
  `AutoModelForCausalLM` for `task: causal_lm` (then the logits of each text's last position, texts one by one);
- `sentence_transformers`: `SentenceTransformer(folder).encode(texts)` (a merged mean-pooled encoder);
- `onnxruntime`: an `InferenceSession` on `folder/model.onnx`, tokenizer from the same folder.
"""

from __future__ import annotations

import json
import sys
import traceback

BATCH = 16


def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:  # GPT-style tokenizers: pad with eos, as their model cards say
        tok.pad_token = tok.eos_token
    return tok


def _torch_logits(model, tok, texts: list[str], max_length: int) -> list[list[float]]:
    import torch

    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), BATCH):
            enc = tok(
                texts[i : i + BATCH],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            rows += model(**enc).logits.float().tolist()
    return rows


def load_peft(req: dict) -> list[list[float]]:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    tok = _tokenizer(req["base"])
    model = AutoModelForSequenceClassification.from_pretrained(
        req["base"], num_labels=req["num_labels"], pad_token_id=tok.pad_token_id, dtype="float32"
    )
    model = PeftModel.from_pretrained(model, req["folder"]).eval()
    return _torch_logits(model, tok, req["texts"], req["max_length"])


def load_auto_peft(req: dict) -> list[list[float]]:
    from peft import AutoPeftModelForSequenceClassification, PeftConfig

    base = PeftConfig.from_pretrained(req["folder"]).base_model_name_or_path
    tok = _tokenizer(base)
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        req["folder"], num_labels=req["num_labels"], pad_token_id=tok.pad_token_id, dtype="float32"
    ).eval()
    return _torch_logits(model, tok, req["texts"], req["max_length"])


def load_transformers(req: dict) -> list[list[float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if req.get("task") == "causal_lm" else AutoModelForSequenceClassification
    model = auto.from_pretrained(req["folder"], dtype="float32").eval()  # the model first: its errors matter
    tok = _tokenizer(req["folder"])
    if req.get("task") != "causal_lm":
        return _torch_logits(model, tok, req["texts"], req["max_length"])
    with torch.no_grad():
        return [
            model(**tok(text, truncation=True, max_length=req["max_length"], return_tensors="pt"))
            .logits[0, -1]
            .tolist()
            for text in req["texts"]
        ]


def load_sentence_transformers(req: dict) -> list[list[float]]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(req["folder"], device="cpu")
    return model.encode(req["texts"], batch_size=BATCH, convert_to_numpy=True).astype("float32").tolist()


def load_onnxruntime(req: dict) -> list[list[float]]:
    import onnxruntime

    session = onnxruntime.InferenceSession(f"{req['folder']}/model.onnx", providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    tok = _tokenizer(req["folder"])
    rows = []
    for i in range(0, len(req["texts"]), BATCH):
        enc = tok(req["texts"][i : i + BATCH], padding=True, truncation=True, max_length=req["max_length"])
        feed = {k: _int64(v) for k, v in enc.items() if k in names}
        rows += session.run(None, feed)[0].astype("float32").tolist()
    return rows


def _int64(rows):
    import numpy as np

    return np.asarray(rows, dtype=np.int64)


LOADERS = {
    "peft": load_peft,
    "auto_peft": load_auto_peft,
    "transformers": load_transformers,
    "sentence_transformers": load_sentence_transformers,
    "onnxruntime": load_onnxruntime,
}


def run(req: dict) -> dict:
    """One request: its logits saved to req["logits_path"], or the loader's error."""
    try:
        import numpy as np

        np.save(req["logits_path"], np.asarray(LOADERS[req["loader"]](req), dtype=np.float32))
        return {"ok": True}
    except Exception as exc:  # the loader's own error is the answer: it failed loudly
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def main(requests_path: str, results_path: str) -> None:
    with open(requests_path) as fh:
        job = json.load(fh)
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])
    results = [run(req) for req in job["requests"]]
    imported = any(name == "peftkit" or name.startswith("peftkit.") for name in sys.modules)
    with open(results_path, "w") as fh:
        json.dump({"results": results, "peftkit_imported": imported}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
