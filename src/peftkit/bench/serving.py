"""`peftkit serve-bench`: the serving side of adapters, in figures (printed; no test asserts a speed).

- swap latency: switching the active adapter of an `AdapterSet`, and a one-text request right after a swap
  vs the same request without one;
- inference latency on the same batch: adapter active vs the adapter merged (float32) vs the bare base;
- resident memory with 1 vs N adapters on one base;
- optionally QLoRA vs fp32 LoRA training (accuracy, peak RSS, examples/s), each recipe in its own process so
  its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def serving_figures(named: list[tuple[str, str]], *, n_texts: int = 64, repeats: int = 9) -> dict:
    """Swap latency, adapter/merged/base latency and memory for the adapters `named` (name, path) on one base."""
    import gc

    import torch
    from peft import PeftModel

    from peftkit.adapters.bundle import load_adapter
    from peftkit.data.prepare import tokenize_texts
    from peftkit.errors import PeftkitError
    from peftkit.inference.adapter_set import AdapterSet
    from peftkit.inference.forward import forward_split
    from peftkit.inference.merge import sample_texts

    res: dict = {"rss_mb_start": round(rss_mb(), 1)}
    adapters = AdapterSet()
    for i, (name, path) in enumerate(named):
        adapters.add(name, path)
        gc.collect()
        res[f"rss_mb_{i + 1}_adapters"] = round(rss_mb(), 1)
    first = adapters.entries[named[0][0]]
    texts = sample_texts(first.meta, n_texts)
    tok = adapters.tokenizer
    ids = tokenize_texts(tok, texts, first.meta.get("max_length", 128))

    def run(model):
        forward_split(
            model, ids, None, pad_token_id=tok.pad_token_id, padding_side=tok.padding_side, batch_size=64
        )

    names = adapters.names
    k = iter(range(10**9))
    res["swap_activate_ms"] = _median_ms(lambda: adapters.activate(names[next(k) % len(names)]), 200)
    one = texts[:1]
    if len(names) > 1:
        same = _median_ms(lambda: adapters.logits(names[0], one), 30)
        swapped = _median_ms(lambda: adapters.logits(names[next(k) % len(names)], one), 30)
        res["one_text_request_ms_same_adapter"], res["one_text_request_ms_after_swap"] = same, swapped
    with torch.no_grad():
        unmerged = load_adapter(first.path, dtype="float32").model
        if not isinstance(unmerged, PeftModel):  # peftkit's own implementations (prefix tuning) do not merge
            raise PeftkitError(
                f"serve-bench: adapter '{named[0][0]}' cannot be merged, and the first adapter is the one "
                f"compared merged and unmerged. Put a mergeable adapter (e.g. LoRA) first."
            )
        merged = unmerged.merge_and_unload().eval()
        models = {"adapter_active": first.model, "base": adapters.base, "merged": merged}
        for model in models.values():
            run(model)  # warm-up
        # Interleaved rounds (base, adapter, merged, base, ...): a shared machine's speed drifts by ±10% over
        # seconds, which back-to-back blocks of repeats would turn into a false ratio.
        times: dict = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(_median_ms(lambda m=model: run(m), 1))
        for name, values in times.items():
            res[f"batch_ms_{name}"] = statistics.median(values)
    res["adapter_over_base"] = res["batch_ms_adapter_active"] / res["batch_ms_base"]
    res["merged_over_base"] = res["batch_ms_merged"] / res["batch_ms_base"]
    res["n_texts"], res["threads"] = len(texts), torch.get_num_threads()
    return res


def train_in_process(recipe: str, overrides: list[str], out: Path) -> dict:
    """Train `recipe` in a child process; its metrics plus the child's own peak RSS (MiB) and wall time."""
    cmd = [
        sys.executable,
        "-m",
        "peftkit",
        "train",
        recipe,
        "--overwrite",
        "--no-progress",
        *overrides,
        f"train.output_dir={out}",
        "train.save_every=null",
        "train.report_to=none",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"training {recipe} failed (exit {os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}"
        )
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics.get("test") or metrics.get("validation") or {}
    return {
        "recipe": recipe,
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "examples_per_s": metrics["train"]["examples_per_second"],
        "train_s": metrics["train"]["seconds"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "adapter": str(out / "adapter"),
    }


def compare_qlora_training(
    recipes: list[str],
    overrides: list[str],
    seeds: list[int] | None = None,
    root: Path = Path("runs/serve-bench"),
) -> dict:
    """Train the fp32 and the QLoRA recipe once per seed (the recipes' own seed when `seeds` is empty).

    One seed's test accuracy moves by about a point with the seed (and with any small change to the weights, such
    as a different quantization block size), so the accuracy difference is judged by its mean over seeds.
    """
    runs = []
    seed_list: list[int | None] = list(seeds) if seeds else [None]  # None: the recipe's own seed
    for seed in seed_list:
        extra = [] if seed is None else [f"train.seed={seed}"]
        folder = root if seed is None else root / f"seed{seed}"
        fp32, qlora = (train_in_process(r, [*overrides, *extra], folder / Path(r).stem) for r in recipes)
        runs.append(
            {
                "seed": seed,
                "fp32": fp32,
                "qlora": qlora,
                "delta_pt": (qlora["accuracy"] - fp32["accuracy"]) * 100,
            }
        )
    deltas = [r["delta_pt"] for r in runs]
    return {
        "runs": runs,
        "mean_delta_pt": statistics.fmean(deltas),
        "stdev_delta_pt": statistics.stdev(deltas) if len(deltas) > 1 else None,
    }


def print_training_comparison(result: dict) -> None:
    """One row per seed and recipe, each seed's difference, then the mean over the seeds."""
    print(
        f"{'seed':>5s} {'recipe':45s} {'accuracy':>8s} {'macro_f1':>8s} {'peak RSS MiB':>12s} {'examples/s':>10s}"
    )
    for run in result["runs"]:
        seed = "recipe" if run["seed"] is None else str(run["seed"])
        for r in (run["fp32"], run["qlora"]):
            print(
                f"{seed:>5s} {Path(r['recipe']).stem:45s} {r['accuracy']:8.4f} {r['macro_f1']:8.4f} "
                f"{r['peak_rss_mb']:12.1f} {r['examples_per_s']:10.1f}"
            )
        print(
            f"{'':5s} QLoRA − LoRA accuracy: {run['delta_pt']:+.2f} pt; peak RSS ratio "
            f"{run['qlora']['peak_rss_mb'] / run['fp32']['peak_rss_mb']:.2f}"
        )
    spread = "" if result["stdev_delta_pt"] is None else f" (sd {result['stdev_delta_pt']:.2f} pt)"
    print(
        f"QLoRA − LoRA accuracy over {len(result['runs'])} seed(s): mean {result['mean_delta_pt']:+.2f} pt{spread}"
    )


def run_serve_bench(
    named_specs: list[str],
    *,
    n_texts: int = 64,
    compare_qlora=None,
    overrides=None,
    seeds: list[int] | None = None,
) -> dict:
    """The `peftkit serve-bench` command: print the figures (and return them)."""
    from peftkit.errors import PeftkitError
    from peftkit.inference.adapter_set import parse_adapter_specs

    if not named_specs and not compare_qlora:
        raise PeftkitError(
            "serve-bench: nothing to measure. Give --adapter NAME=PATH (one or more) and/or "
            "--compare-qlora FP32_RECIPE QLORA_RECIPE."
        )
    if seeds and not compare_qlora:
        raise PeftkitError(
            "serve-bench: --seeds repeats the --compare-qlora training; give --compare-qlora too."
        )
    out: dict = {}
    if compare_qlora:
        out["training"] = compare_qlora_training(list(compare_qlora), list(overrides or []), seeds)
        print_training_comparison(out["training"])
        if not named_specs:
            first = out["training"]["runs"][0]
            named_specs = [f"lora={first['fp32']['adapter']}", f"qlora={first['qlora']['adapter']}"]
    pairs = parse_adapter_specs(named_specs)
    figs = serving_figures(pairs, n_texts=n_texts)
    out["serving"] = figs
    print(f"swap (activate) median: {figs['swap_activate_ms'] * 1000:.1f} µs")
    if "one_text_request_ms_after_swap" in figs:
        print(
            f"one-text request: {figs['one_text_request_ms_same_adapter']:.2f} ms same adapter, "
            f"{figs['one_text_request_ms_after_swap']:.2f} ms right after a swap"
        )
    print(
        f"batch of {figs['n_texts']}: base {figs['batch_ms_base']:.1f} ms, adapter active "
        f"{figs['batch_ms_adapter_active']:.1f} ms ({figs['adapter_over_base']:.2f}× base), merged "
        f"{figs['batch_ms_merged']:.1f} ms ({figs['merged_over_base']:.2f}× base)"
    )
    mem = [k for k in figs if k.startswith("rss_mb_") and k.endswith("_adapters")]
    print(
        "RSS MiB: start {:.0f}; ".format(figs["rss_mb_start"])
        + ", ".join(f"{k.split('_')[2]} adapter(s) {figs[k]:.0f}" for k in mem)
    )
    return out
