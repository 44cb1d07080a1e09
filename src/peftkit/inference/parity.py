"""The interop contract, measured: peftkit's logits against a standard loader's, in a process without peftkit.

Every artifact peftkit writes (adapter folder, merged folder, published folder, ONNX export) either gives the
same predictions in the standard loader it is meant for (same label on every text, max |logit difference|
≤ `TOLERANCE` in float32) or fails loudly there (an error, never a silently different model). `plain_logits`
runs `plain_loaders.py` as a script in a child process, so what is measured is the loader alone; `verdict`
turns its answer and peftkit's reference logits into one report entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TOLERANCE = 1e-4
SCRIPT = Path(__file__).with_name("plain_loaders.py")
LOADERS = ("peft", "auto_peft", "transformers", "sentence_transformers", "onnxruntime")


def reference_logits(loaded, texts: list[str], *, batch_size: int = 64):
    """peftkit's own float32 logits for `texts` (a LoadedAdapter from `load_adapter`), one row per text, batched
    as `peftkit predict` batches them."""
    from peftkit.data.prepare import tokenize_texts
    from peftkit.inference.forward import forward_split

    tok = loaded.tokenizer
    ids = tokenize_texts(tok, texts, loaded.meta.get("max_length", 512))
    logits, _ = forward_split(
        loaded.model,
        ids,
        None,
        pad_token_id=tok.pad_token_id,
        padding_side=tok.padding_side,
        batch_size=batch_size,
    )
    return logits


def plain_request(
    loader: str,
    folder: str | Path,
    texts: list[str],
    *,
    max_length: int,
    base: str | Path | None = None,
    num_labels: int | None = None,
    task: str = "classification",
) -> dict:
    """One check for `run_plain_loaders`: `loader` on `folder`, logits for `texts`.

    `base` and `num_labels` are what the `peft` loader needs besides the adapter folder; `task: causal_lm` asks
    the `transformers` loader for a causal LM (last-position logits).
    """
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; one of {LOADERS}")
    return {
        "loader": loader,
        "folder": str(folder),
        "base": None if base is None else str(base),
        "num_labels": num_labels,
        "task": task,
        "texts": list(texts),
        "max_length": max_length,
    }


def run_plain_loaders(
    requests: list[dict], *, env: dict | None = None, threads: int | None = None, timeout: int = 1800
) -> list[dict]:
    """Run `requests` in one fresh process that never imports peftkit; one {"ok", "logits" | "error"} each.

    `env` is added to this process's environment (e.g. a Hugging Face cache for `auto_peft`).
    """
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="peftkit-parity-") as tmp:
        staged = [{**r, "logits_path": f"{tmp}/logits-{i}.npy"} for i, r in enumerate(requests)]
        job = {"threads": threads, "requests": staged}
        req, res = Path(tmp) / "requests.json", Path(tmp) / "results.json"
        req.write_text(json.dumps(job))
        # -I: no user site, no PYTHONPATH, and the script's own folder is not put on sys.path.
        proc = subprocess.run(
            [sys.executable, "-I", str(SCRIPT), str(req), str(res)],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if not res.is_file():  # the child died (a crash is a loud failure too)
            error = f"the loader process exited {proc.returncode}: {proc.stderr[-1500:]}"
            return [{"ok": False, "error": error} for _ in requests]
        answer = json.loads(res.read_text())
        if answer["peftkit_imported"]:  # a bug in plain_loaders.py, not a user error
            raise RuntimeError("the plain-loader process imported peftkit, so it measured nothing")
        results = answer["results"]
        for result, request in zip(results, staged, strict=True):
            if result["ok"]:
                result["logits"] = np.load(request["logits_path"])
    return results


def plain_logits(loader: str, folder: str | Path, texts: list[str], **kwargs) -> dict:
    """`run_plain_loaders` for one request (`plain_request`'s arguments)."""
    return run_plain_loaders([plain_request(loader, folder, texts, **kwargs)])[0]


def compare(reference, found) -> dict:
    """Label agreement and max |logit difference| between two (texts × labels) arrays."""
    import numpy as np

    reference, found = np.asarray(reference, dtype=np.float32), np.asarray(found, dtype=np.float32)
    if reference.shape != found.shape:
        return {"n": len(reference), "shape_mismatch": [list(reference.shape), list(found.shape)]}
    agree = int((reference.argmax(-1) == found.argmax(-1)).sum())
    return {
        "n": len(reference),
        "agree": agree,
        "label_agreement": agree / max(len(reference), 1),
        "max_abs_logit_diff": float(np.abs(reference - found).max()) if len(reference) else 0.0,
    }


def verdict(loader: str, reference, result: dict) -> dict:
    """One report entry: `parity` (same labels, within TOLERANCE), `fails_loudly` (an error), or `MISMATCH`."""
    if not result["ok"]:
        return {"loader": loader, "outcome": "fails_loudly", "error": result["error"][:600]}
    entry = {"loader": loader, **compare(reference, result["logits"])}
    same = entry.get("agree") == entry["n"] and entry.get("max_abs_logit_diff", 1.0) <= TOLERANCE
    entry["outcome"] = "parity" if same else "MISMATCH"
    return entry
