"""Export a classification adapter to ONNX: one graph from token ids to logits, proved in onnxruntime.

The graph holds everything peftkit's forward does: the adapter merged into float32 base weights (or, for
methods that cannot be merged — prefix tuning, bottleneck adapters — the unmerged model as it runs), the
pooling (peftkit's mean of the real tokens, or the model's own head; decoders' last-real-token pooling) and
the classifier. Inputs `input_ids` and `attention_mask` (int64, batch × sequence), output `logits` (batch ×
labels); both axes are dynamic. The folder also holds the tokenizer, `config.json` (labels in `id2label`),
and `parity_report.json`: onnxruntime, in a child process without peftkit, against peftkit's own predictions
on the adapter's test split, plus onnxruntime vs torch latency on this CPU at batch 1 and 64. An export whose
logits differ is not written. Causal-LM adapters are refused (text generation needs a decoding loop with a
key/value cache, not one graph).

Uses torch's exporter (`torch.onnx.export(dynamo=True)`, which needs onnx and onnxscript) and onnxruntime:
`pip install 'peftkit[export]'`.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

from peftkit.errors import PeftkitError

MODEL_FILE = "model.onnx"
REPORT_FILE = "parity_report.json"
FORMATS = ("onnx",)
NEEDS = ("onnx", "onnxscript", "onnxruntime")
# adapter_config.json's task_type → peftkit's task; PEFT may leave task_type out (None)
TASKS: dict[str | None, str] = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal_lm"}


def check_export_dependencies() -> None:
    """Refuse early, naming the extra, when the exporter's packages are missing."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise PeftkitError(
            f"export --format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Install the export extra: pip install 'peftkit[export]'."
        )


def export_onnx(
    adapter: str | Path,
    out: str | Path,
    *,
    n_samples: int | None = None,
    overwrite: bool = False,
    progress=None,
) -> dict:
    """Export `adapter` (a run or adapter folder) to `out`/model.onnx; return the parity and latency report.

    `n_samples`: test texts in the parity check (default: the whole test split).
    """
    from peftkit.adapters.bundle import check_bundle, load_adapter, resolve_adapter_dir
    from peftkit.fileio import atomic_dir, atomic_write_json
    from peftkit.inference.merge import check_mergeable, check_out_folder, sample_texts
    from peftkit.inference.parity import plain_logits, reference_logits, verdict
    from peftkit.methods.peft_config import config_dict

    say = progress or (lambda msg: print(f"export: {msg}", file=sys.stderr))
    check_export_dependencies()
    out = check_out_folder(out, overwrite=overwrite)
    adapter_dir = resolve_adapter_dir(adapter)
    meta, _ = check_bundle(adapter_dir)
    task = meta["task"] if meta else TASKS.get(config_dict(adapter_dir).get("task_type"), "causal_lm")
    if task != "classification":
        raise PeftkitError(
            f"export: adapter '{adapter_dir}' is a {task} adapter; ONNX export covers classification "
            f"only (text generation needs a decoding loop with a key/value cache, not one graph). Merge it with "
            f"`peftkit merge` and export the merged folder with a generation-aware tool (optimum's "
            f"ORTModelForCausalLM, onnxruntime-genai)."
        )
    say("[1/4] loading the adapter in float32 on the CPU")
    loaded = load_adapter(adapter_dir, dtype="float32", device="cpu")
    texts = sample_texts(loaded.meta, n_samples)
    reference = reference_logits(loaded, texts)
    from peft import PeftModel  # imported already by load_adapter

    try:
        check_mergeable(adapter_dir, loaded.meta)
        # only non-mergeable methods (prefix tuning) have peftkit's own implementation
        assert isinstance(loaded.model, PeftModel), "a mergeable adapter loads as a PeftModel"
        model, merged = loaded.model.merge_and_unload(), True
    except PeftkitError:
        model, merged = loaded.model, False  # the unmerged model, as it runs
    model.eval()
    report: dict = {
        "adapter": str(adapter_dir),
        "method": loaded.meta.get("method"),
        "pooling": loaded.meta.get("pooling", "model"),
        "graph": "merged" if merged else "unmerged (the method cannot be merged)",
        "inputs": ["input_ids", "attention_mask"],
        "outputs": ["logits"],
        "dynamic_axes": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]},
    }
    max_length = loaded.meta.get("max_length", 512)
    with atomic_dir(out) as tmp:
        say(f"[2/4] exporting the {report['graph']} graph to {out / MODEL_FILE}")
        _export(model, loaded.tokenizer, tmp / MODEL_FILE, adapter_dir)
        loaded.tokenizer.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        say(f"[3/4] onnxruntime in a fresh process (no peftkit) on {len(texts)} test texts")
        check = verdict(
            "onnxruntime", reference, plain_logits("onnxruntime", tmp, texts, max_length=max_length)
        )
        report["parity"] = check
        if check["outcome"] != "parity":
            raise PeftkitError(
                f"export: the ONNX graph does not reproduce the adapter ({_describe(check)}), so '{out}' was not "
                f"written. Report this with the adapter's method and base model."
            )
        say("[4/4] latency on this CPU: onnxruntime vs torch")
        report["latency_ms"] = measure_latency(model, loaded.tokenizer, tmp / MODEL_FILE, texts, max_length)
        atomic_write_json(tmp / REPORT_FILE, report)
    say(f"done: {_describe(check)}; report in {out / REPORT_FILE}")
    return report


def _wrapper(model):
    """A module whose forward is (input_ids, attention_mask) → logits: the graph's whole signature."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsOnly(model).eval()


def _export(model, tokenizer, path: Path, adapter_dir: Path) -> None:
    import torch

    # Two rows of different lengths: a dynamic axis traced at size 1 would be specialised to 1.
    enc = tokenizer(
        ["a good film, and a very long sentence about it", "bad"], padding=True, return_tensors="pt"
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
            torch.onnx.export(
                _wrapper(model),
                (enc["input_ids"], enc["attention_mask"]),
                str(path),
                dynamo=True,
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_shapes={
                    "input_ids": {0: batch, 1: sequence},
                    "attention_mask": {0: batch, 1: sequence},
                },
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter's own errors are long; the first line says what failed
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PeftkitError(
            f"export: torch's ONNX exporter could not export adapter '{adapter_dir}' ({type(exc).__name__}: "
            f"{first}). Nothing was written. Merge it instead (`peftkit merge`) or serve the adapter itself."
        ) from None


def measure_latency(model, tokenizer, onnx_path: Path, texts: list[str], max_length: int) -> dict:
    """Median milliseconds per call, torch then onnxruntime (each in its own block: onnxruntime's threads spin
    after a call and would slow an interleaved torch call), same thread count, at batch 1 and 64."""
    import statistics
    import time

    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    wrapped = _wrapper(model)
    result: dict[str, int | dict[str, float]] = {"threads": torch.get_num_threads()}
    for batch, repeats in ((1, 30), (64, 5)):
        chunk = (texts * (batch // max(len(texts), 1) + 1))[:batch]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        feed = {k: enc[k].numpy() for k in ("input_ids", "attention_mask")}
        calls = {
            "torch": lambda enc=enc: wrapped(enc["input_ids"], enc["attention_mask"]),
            "onnxruntime": lambda feed=feed: session.run(None, feed),
        }
        row = {}
        with torch.no_grad():
            for name, call in calls.items():
                timings = []
                for _ in range(repeats + 1):  # the first call warms up and is dropped
                    start = time.perf_counter()
                    call()
                    timings.append(time.perf_counter() - start)
                row[name] = round(1000 * statistics.median(timings[1:]), 3)
        result[f"batch_{batch}"] = row
    return result


def _describe(check: dict) -> str:
    if "agree" in check:
        return f"labels agree on {check['agree']}/{check['n']}, max |logit diff| {check['max_abs_logit_diff']:.2e}"
    return check.get("error", check["outcome"])
