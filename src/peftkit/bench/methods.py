"""`peftkit bench`: train several methods (and optionally the hand-written peer pipeline) under one budget and
compare them in one table — trainable parameters, adapter bytes, speed, memory, accuracy, MFU.

Every row trains in its own child process, one after another (forked from a server that has imported the
libraries once), so each row's peak RSS is its own and no row inherits another's caches or allocations. The parent
measures the fp32 matmul peak of this machine in the same run, before the first row and after every row (each
row's MFU uses the larger of the two around it), and counts each method's parameters and matmul weights (see
`peftkit.bench.flops` for the FLOP formula).
A method that cannot be built (unknown name, bad settings) or whose run fails becomes a row that says why.

`device="cuda"` runs every row on the GPU (bf16 by default, see `peftkit.bench.peer` for the peer's settings)
and adds each row's peak GPU memory (`torch.cuda.max_memory_allocated`, from the row's start, evaluation
included, in its own process); the peak used for MFU is then the GPU's bf16 matmul peak. `device="cpu"` runs the
same rows on the CPU (on a GPU machine too): a dry run of the GPU bench with small budgets. A recipe with a
`quantization` block can add `unquantized_row`: the same method on the unquantized (bf16 on GPU) base, the
memory reference for QLoRA.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftkit.bench.tuned import apply_tuned, read_tuned, tuned_note
from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor
    from multiprocessing.context import BaseContext

# Full fine-tuning's learning rate when it is not the recipe's own method: BERT's usual 5e-5 (an adapter's 1e-3
# wrecks a fully trained encoder). Other methods take theirs from their registry entry (`MethodEntry.suggested`).
FULL_LEARNING_RATE = 5e-5
COLUMNS = [  # (key, header, format)
    ("name", "row", "{}"),
    ("learning_rate", "lr", "{:g}"),
    ("trainable_params", "trainable", "{:,}"),
    ("trainable_pct", "trainable %", "{:.3g}"),
    ("adapter_bytes", "adapter bytes", "{:,}"),
    ("examples_per_second", "train ex/s", "{:.1f}"),
    ("tokens_per_second", "real tok/s", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("peak_gpu_mb", "peak GPU MB", "{:.0f}"),
    ("eval_loss", "eval loss", "{:.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro_f1", "macro-F1", "{:.4f}"),
    ("matmul_peak_gflops", "peak GFLOP/s", "{:.1f}"),
    ("mfu_pct", "MFU %", "{:.1f}"),
]


def run_bench(
    recipe_path: str,
    *,
    methods: list[str],
    budget: int | None = None,
    peer: bool = False,
    output: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    matmul_size: int = 2048,
    device: str = "auto",
    unquantized_row: bool = False,
    tuned: str | Path | None = None,
) -> Path:
    """Bench `methods` on `recipe_path` (+ `overrides`) with `budget` training examples on `device` (auto, cpu,
    cuda); return the output folder. `tuned`: a folder of `peftkit tune` studies; methods tuned there run at their
    tuned settings (`bench.tuned`)."""
    import torch
    from transformers.utils import logging

    from peftkit.bench.flops import FORMULA, matmul_peak
    from peftkit.fileio import atomic_write_json, atomic_write_text
    from peftkit.recipe import load_recipe

    logging.set_verbosity_error()  # the per-row model loads would otherwise print load reports and bars
    logging.disable_progress_bar()
    recipe = load_recipe(recipe_path, overrides)  # refuse a bad recipe before anything runs
    settings = read_tuned(tuned) if tuned else {}
    if not methods:
        raise PeftkitError("--methods: no method given. Name one or more, e.g. --methods lora,ia3,full.")
    device = _bench_device(device)
    if unquantized_row and recipe.quantization is None:
        raise PeftkitError(
            f"--unquantized-row: recipe '{recipe_path}' has no quantization block, so there is no quantized row "
            f"to compare with. Drop --unquantized-row, or bench a QLoRA recipe."
        )
    out = Path(output or Path("bench") / Path(recipe_path).stem)
    base = {
        "recipe": str(recipe_path),
        "methods": list(methods),
        "peer": peer,
        "overrides": list(overrides),
        "budget": budget,
        "tuned": {m: tuned_note(m, t, budget) for m, t in settings.items() if m in methods},
        "device": device,
        "unquantized_row": unquantized_row,
        "threads": torch.get_num_threads(),
        **_environment(device),
    }
    # The peak is measured before the first row and after every row: on a shared machine it moved by ±20% within
    # minutes (122-176 GFLOP/s), so each row's MFU uses the larger of the two measurements around it, not one taken
    # minutes earlier.
    peaks = [matmul_peak(matmul_size, device=device)]
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    precision = "bf16 on the GPU" if device == "cuda" else f"fp32, {base['threads']} threads"
    say(f"matmul peak ({precision}): {peaks[0] / 1e9:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp, _row_pool(device) as pool:
        jobs = [("peftkit", m) for m in methods]
        at = methods.index(recipe.method.name) + 1 if recipe.method.name in methods else 0
        extra = [("peftkit_unquantized", recipe.method.name)] if unquantized_row else []
        if peer:  # right after the peftkit row they are compared with; on a GPU the dynamic-padding peer only
            extra += [(f"peer_{p}", recipe.method.name) for p in PEER_PADDINGS[device]]
        jobs[at:at] = extra
        for kind, method in jobs:
            name = method if kind == "peftkit" else f"{kind} ({method})"
            name += " (tuned)" if method in settings else ""
            say(f"bench: {name} …", flush=True)
            row: dict[str, Any] = {"name": name, "kind": kind, "method": method}
            try:
                row.update(count_params(recipe, method, settings.get(method)))
                row.update(
                    _child(
                        pool,
                        {
                            "recipe": str(recipe_path),
                            "overrides": list(overrides),
                            "budget": budget,
                            "method": method,
                            "tuned": settings.get(method),
                            "kind": kind,
                            "device": device,
                            "run_dir": str(Path(tmp) / kind / method),
                        },
                    )
                )
                _add_flops(row)
                row["status"] = "ok"
            except PeftkitError as exc:
                row["status"] = f"skipped: {str(exc).split('. ')[0]}."  # first sentence: what is wrong
            except Exception as exc:  # one broken method must not lose the other rows
                row["status"] = f"failed: {type(exc).__name__}: {exc}"
            peaks.append(matmul_peak(matmul_size, device=device))
            if row["status"] == "ok":
                row["matmul_peak_gflops"] = max(peaks[-2:]) / 1e9
                row["mfu_pct"] = 100 * row["train_flops"] / row["seconds"] / max(peaks[-2:])
            say(f"  {_short(row)}")
            rows.append(row)
            # Rewritten after every row, so an interrupted bench still leaves the rows it finished.
            _ratios(rows, recipe.method.name)
            result = {
                **base,
                "matmul_peak_flops": max(peaks),
                "matmul_peaks_flops": list(peaks),
                "flop_formula": FORMULA,
                "rows": rows,
            }
            atomic_write_json(out / "bench.json", result)
            atomic_write_text(out / "bench.md", render_markdown(result))
    return out


# Peer padding styles per device: padding to max_length is the CPU story (transformers' example defaults); a GPU
# run compares with the stronger dynamic-padding peer only.
PEER_PADDINGS = {"cpu": ("pad128", "dynamic"), "cuda": ("dynamic",)}


def _bench_device(device: str) -> str:
    """`auto` → cuda when a GPU is visible, else cpu; `cuda` without a GPU is refused."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise PeftkitError(f"--device: unknown device '{device}'. Use auto, cpu or cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise PeftkitError(
            "--device cuda: no CUDA GPU is visible to torch here (torch.cuda.is_available() is False). Run the "
            "bench on a GPU machine, or pass --device cpu for the same rows on the CPU (a dry run)."
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _environment(device: str) -> dict:
    import platform
    import time

    import torch

    from peftkit.adapters.bundle import versions

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "versions": versions(),
    }


def recipe_for_method(recipe, method: str, tuned: dict | None = None):
    """The recipe with `method`: its tuned settings when given (`bench.tuned`), else its own settings when it is
    the recipe's method, the method's suggested settings and learning rate (its registry entry) otherwise."""
    from peftkit.methods.registry import FULL, get_method
    from peftkit.recipe.schema import MethodSpec

    if tuned:
        return apply_tuned(recipe, tuned)
    r = recipe.model_copy(deep=True)
    if method == recipe.method.name:
        return r
    if method == FULL:
        r.method = MethodSpec(name=FULL)
        r.train.learning_rate = FULL_LEARNING_RATE
        return r
    suggestion = get_method(method).suggestion(r.model.pooling)
    r.method = MethodSpec(name=method, **suggestion.settings)
    r.train.learning_rate = suggestion.learning_rate or r.train.learning_rate
    return r


def count_params(recipe, method: str, tuned: dict | None = None) -> dict:
    """Parameter and matmul-weight counts of the base model with `method` applied (no training), on the meta
    device: no weights are read or allocated (a 7B base costs nothing here)."""
    from peftkit.bench.flops import matmul_params
    from peftkit.data.cards import load_card
    from peftkit.methods.apply import apply_method
    from peftkit.methods.checks import model_skeleton
    from peftkit.methods.registry import check_method_settings
    from peftkit.models.load import load_config
    from peftkit.models.pooling import apply_pooling
    from peftkit.models.sources import resolve_source

    r = recipe_for_method(recipe, method, tuned)
    check_method_settings(method, r.method.settings())  # an unknown method stops here, as a skipped row
    config = load_config(resolve_source(r.model.source, r.model.revision), r.model.cache_dir)
    if r.model.task == "classification":
        config.num_labels = len(load_card(r.data.card).labels)
    model = model_skeleton(config, r.model.task)
    if r.model.task == "classification":
        apply_pooling(model, r.model.pooling)
    model = apply_method(model, name=method, settings=r.method.settings(), task=r.model.task)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mm, mm_train = matmul_params(model)
    return {
        "trainable_params": n_train,
        "total_params": n_all,
        "trainable_pct": 100 * n_train / n_all,
        "matmul_params": mm,
        "matmul_trainable_params": mm_train,
        "learning_rate": r.train.learning_rate,
    }


# Imported once by the fork server, so each row's process starts with them loaded (no 10 s import per row) and
# every row's peak RSS counts the same library footprint.
_PRELOAD = [
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "sklearn.metrics",
    "peftkit.training.recipe",
    "peftkit.bench.peer",
    "transformers.trainer",
]


class _PoolPerRow:
    """Python 3.10's stand-in for `ProcessPoolExecutor(max_tasks_per_child=1)` (3.11+): a one-worker pool per
    task, each worker forked from the same server."""

    def __init__(self, ctx: BaseContext) -> None:
        self.ctx = ctx

    def submit(self, fn, /, *args) -> Future:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=1, mp_context=self.ctx) as pool:
            return pool.submit(fn, *args)  # leaving the block waits for the task; its process then ends

    def __enter__(self) -> _PoolPerRow:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _row_pool(device: str) -> ProcessPoolExecutor | _PoolPerRow:
    """A pool that runs each row in a fresh process forked from a pre-imported server (which sees no GPU when the
    bench runs on the CPU: the server starts with an empty CUDA_VISIBLE_DEVICES)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    hidden = device == "cpu" and "CUDA_VISIBLE_DEVICES" not in os.environ
    if hidden:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        pool: ProcessPoolExecutor | _PoolPerRow
        if sys.version_info >= (3, 11):
            pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)
        else:
            pool = _PoolPerRow(ctx)
        pool.submit(os.getpid).result()  # starts the server now, with this environment
    finally:
        if hidden:
            del os.environ["CUDA_VISIBLE_DEVICES"]
    return pool


def _child(pool, spec: dict) -> dict:
    """Run one row in its own process; its peak RSS is then its own."""
    try:
        return pool.submit(run_row, spec).result()
    except PeftkitError:
        raise
    except Exception as exc:
        raise PeftkitError(f"run failed: {type(exc).__name__}: {exc}") from None


def run_row(spec: dict) -> dict:
    """Train one row (in a child process) as described by `spec`; return its measured values."""
    import resource

    import datasets
    import torch
    from transformers.utils import logging

    from peftkit.recipe import load_recipe

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    recipe = recipe_for_method(
        load_recipe(spec["recipe"], spec["overrides"]), spec["method"], spec.get("tuned")
    )
    if spec["budget"]:
        recipe.data.max_train_examples = spec["budget"]
    recipe.data.max_test_examples = 1  # bench compares on the validation subset; test stays for the user
    cuda = spec.get("device") == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if spec["kind"] == "peftkit_unquantized":
        recipe.quantization = None
    if spec["kind"].startswith("peftkit"):
        res = _run_peftkit(recipe, spec["run_dir"])
    else:
        from peftkit.bench.peer import run_peer

        res = run_peer(
            recipe,
            spec["kind"].removeprefix("peer_"),
            recipe.data.max_train_examples,
            spec.get("device", "cpu"),
        )
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _run_peftkit(recipe, run_dir: str) -> dict:
    from peftkit.training.recipe import train

    recipe.train.output_dir = run_dir
    recipe.train.save_every = None
    recipe.train.report_to = "none"
    out = train(recipe, overwrite=True, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    tr, val = m["train"], m.get("validation", {})
    return {
        "examples": tr["examples"],
        "seconds": tr["seconds"],
        "examples_per_second": tr["examples_per_second"],
        "real_tokens": tr["tokens"],
        "tokens_per_second": tr["tokens"] / tr["seconds"],
        "final_loss": tr["final_loss"],
        "eval_loss": val.get("loss"),
        "accuracy": val.get("accuracy"),
        "macro_f1": val.get("macro_f1"),
        "adapter_bytes": sum(p.stat().st_size for p in (out / "adapter").rglob("*.safetensors")),
    }


def _add_flops(row: dict) -> None:
    from peftkit.bench.flops import train_flops

    row["train_flops"] = train_flops(row["matmul_params"], row["matmul_trainable_params"], row["real_tokens"])


def _ratios(rows: list[dict], method: str) -> None:
    """peftkit's train examples/s (= real tokens/s: the same examples) for the peer's method over each peer row's,
    and on a GPU peftkit's peak GPU memory over the peer's."""
    ours = next(
        (r for r in rows if r["kind"] == "peftkit" and r["method"] == method and r["status"] == "ok"), None
    )
    for r in rows:
        if r["kind"].startswith("peer_") and r["status"] == "ok" and ours:
            r["peftkit_speedup"] = ours["examples_per_second"] / r["examples_per_second"]
            if r.get("peak_gpu_mb") and ours.get("peak_gpu_mb"):
                r["peftkit_memory_ratio"] = ours["peak_gpu_mb"] / r["peak_gpu_mb"]


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    gpu = f", GPU {row['peak_gpu_mb']:.0f} MB" if row.get("peak_gpu_mb") else ""
    return (
        f"{row['examples_per_second']:.1f} ex/s, {row['tokens_per_second']:.0f} tok/s, acc {row['accuracy']:.4f}, "
        f"MFU {row['mfu_pct']:.1f}%, RSS {row['peak_rss_mb']:.0f} MB{gpu}"
    )


def render_markdown(result: dict) -> str:
    """bench.md: the command, the machine, the table, the peer ratios and the FLOP formula."""
    over = " ".join(result["overrides"])
    budget = f" --budget {result['budget']}" if result["budget"] else ""
    gpu = result.get("device") == "cuda"
    flags = (
        f" --methods {','.join(result.get('methods', []))}{budget}{' --peer' if result.get('peer') else ''}"
        f"{' --unquantized-row' if result.get('unquantized_row') else ''}"
        f"{' --device ' + result['device'] if result.get('device') else ''}"
    )
    columns = [c for c in COLUMNS if gpu or c[0] != "peak_gpu_mb"]
    machine = f"{result['cpu_count']} CPUs ({result['machine']}), torch threads {result['threads']}"
    lines = [
        "# peftkit bench",
        "",
        f"`peftkit bench {result['recipe']}{flags} {over}`".replace("  ", " ").replace(" `", "`"),
        "",
        f"{result['date']}; {(result.get('gpu') or 'GPU') + ', ' if gpu else ''}{machine}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        _peak_line(result),
        "",
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---" if k == "name" else "---:" for k, _, _ in columns) + "|",
    ]
    skipped = []
    for row in result["rows"]:
        if row["status"] != "ok":
            skipped.append(f"- {row['name']}: {row['status']}")
            continue
        cells = [fmt.format(row[k]) if row.get(k) is not None else "—" for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    peers = [r for r in result["rows"] if r.get("peftkit_speedup")]
    if peers:
        lines += [
            "",
            "peftkit's train examples/s relative to the peer pipeline (transformers Trainer + peft "
            "get_peft_model, same model, data, epochs, batch size, schedule and PEFT config):",
            "",
        ]
        for r in peers:
            memory = r.get("peftkit_memory_ratio")
            lines.append(
                f"- {r['name']}: **{r['peftkit_speedup']:.2f}×**"
                + (f", peak GPU memory {memory:.2f}× the peer's" if memory else "")
            )
    if result.get("tuned"):
        lines += ["", "Rows marked (tuned) use the settings `peftkit tune` found (`--tuned`):", ""]
        lines += list(result["tuned"].values())
    if skipped:
        lines += ["", "Rows not run:", "", *skipped]
    lines += [
        "",
        f"MFU = train FLOPs / train seconds / matmul peak, where {result['flop_formula']} The peak is "
        "the larger of the two measured just before and just after the row.",
        "",
    ]
    return "\n".join(lines)


def _peak_line(result: dict) -> str:
    peaks = [p / 1e9 for p in result.get("matmul_peaks_flops") or [result["matmul_peak_flops"]]]
    kind = "bf16 GPU" if result.get("device") == "cuda" else "fp32"
    if len(peaks) == 1:
        return f"Measured {kind} matmul peak (same run): **{peaks[0]:.1f} GFLOP/s**."
    return (
        f"Measured {kind} matmul peak (same run, before the first row and after every row): "
        f"**{min(peaks):.1f}–{max(peaks):.1f} GFLOP/s** ({', '.join(f'{p:.1f}' for p in peaks)})."
    )
