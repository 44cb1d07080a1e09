"""GPU check for multi-process training (issue 8), on ONE GPU, offline, tiny config-built models; < 5 minutes.

Run from the repository root:  PYTHONPATH=src:. python scripts/gpu_check_accelerate.py
Checks (each prints its figures; the script exits 1 if a required one fails):
  1. bf16   `peftkit train R --processes 1` → accelerate launch → 1 GPU process: the run finishes, loss falls,
            the adapter passes the tensor-count/norm check, model weights were bfloat16 on cuda.
  2. 4-bit  `load_base_model(..., quantization=4-bit, device="cuda:0")` puts every weight on cuda:0 (the process's
            own device), then the same training path with a 4-bit base (needs peftkit.models.quant, issue 5).
  3. launcher refuses `--processes N` with N > visible GPUs before anything starts.
  4. (info only) FSDP with 1 process through torchrun: trains and saves a non-empty adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep the caller's PYTHONPATH (wheels carried to the GPU machine live there) after the checkout's own paths.
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": os.pathsep.join(
    [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

DRY = "--dry-run" in sys.argv  # CPU: check 1 in float32 and check 3 only, to test this script itself
failures: list[str] = []


def check(name: str, ok: bool, detail: str = "", required: bool = True) -> None:
    print(f"[{'PASS' if ok else ('FAIL' if required else 'INFO')}] {name} {detail}", flush=True)
    if not ok and required:
        failures.append(name)


def peftkit_train(recipe: Path, *args: str, timeout: int = 180) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "peftkit", "train", str(recipe), "--no-progress", *args],
                          env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - t0


def run_figures(run: Path) -> dict:
    from peftkit.adapters import check_adapter_weights

    metrics = json.loads((run / "metrics.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    from safetensors.torch import load_file

    dtypes = sorted({str(t.dtype) for t in load_file(str(run / "adapter" / "adapter_model.safetensors")).values()})
    return {"adapter_dtypes": dtypes, "first_loss": losses[0], "last_loss": losses[-1], "steps": metrics["train"]["steps"],
            "examples_per_s": metrics["train"]["examples_per_second"],
            "val_accuracy": metrics.get("validation", {}).get("accuracy"), **check_adapter_weights(run / "adapter")}


def main() -> int:
    import torch

    from tests.conftest import build_tiny_bert, build_tiny_decoder, make_texts, write_card, write_recipe

    if not torch.cuda.is_available() and not DRY:
        print("no CUDA device: this script is for a GPU machine (--dry-run checks the script itself on CPU)")
        return 1
    if not DRY:
        print(f"device: {torch.cuda.get_device_name(0)}, visible GPUs: {torch.cuda.device_count()}, torch "
              f"{torch.__version__}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="peftkit-gpu8-"))
    bert = build_tiny_bert(tmp / "bert", hidden=64)
    llama = build_tiny_decoder(tmp / "llama", "llama", hidden=64)
    card = write_card(tmp / "data", make_texts(400))
    common = dict(card=card, method={"name": "lora", "r": 8}, data={"max_length": 32})

    # 1. bf16 through the launcher, one process.
    r1 = write_recipe(tmp / "bf16.yaml", model=bert, out=tmp / "bf16", **common,
                      train={"epochs": 3, "batch_size": 16, "learning_rate": 0.005, "log_every": 1,
                             "save_every": 10, "report_to": "none", "output_dir": str(tmp / "bf16")})
    _set(r1, "model", dtype="float32" if DRY else "bfloat16")
    code, out, secs = peftkit_train(r1, "--processes", "1")
    ok = code == 0 and (tmp / "bf16" / "adapter").is_dir()
    fig = run_figures(tmp / "bf16") if ok else {}
    check("bf16 --processes 1", ok and fig["last_loss"] < fig["first_loss"], f"{secs:.1f}s {fig}" if ok else out[-2000:])
    if ok:  # resume in the launched path: stop is not a CLI flag, so resume the finished run's last checkpoint
        code, out, secs = peftkit_train(r1, "--processes", "1", "--resume")
        check("bf16 --processes 1 --resume", code == 0, f"{secs:.1f}s" if code == 0 else out[-2000:])

    # 2. 4-bit: placement on the process's own device, then training.
    try:
        import peftkit.models.quant  # noqa: F401
        have_quant = True
    except ImportError:
        have_quant = False
    check("peftkit.models.quant present (issue 5 merged)", have_quant, required=not DRY)
    if have_quant and not DRY:
        from peftkit.models.load import load_base_model
        from peftkit.models.sources import resolve_source

        quant = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
        model = load_base_model(resolve_source(str(llama)), task="classification", labels=["neg", "pos"],
                                pad_token_id=5, dtype="bfloat16", device="cuda:0", quantization=quant)
        devices = {str(p.device) for p in model.parameters()}
        n4 = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        check("4-bit base on the process's device", devices == {"cuda:0"} and n4 > 0,
              f"devices={devices} Linear4bit layers={n4} memory={torch.cuda.memory_allocated() / 2**20:.1f} MiB")
        del model
        torch.cuda.empty_cache()
        r2 = write_recipe(tmp / "q4.yaml", model=llama, out=tmp / "q4", quantization=quant, **common,
                          train={"epochs": 3, "batch_size": 16, "learning_rate": 0.005, "log_every": 1,
                                 "report_to": "none", "output_dir": str(tmp / "q4")})
        code, out, secs = peftkit_train(r2, "--processes", "1")
        ok = code == 0 and (tmp / "q4" / "adapter").is_dir()
        fig = run_figures(tmp / "q4") if ok else {}
        check("4-bit --processes 1", ok and fig["last_loss"] < fig["first_loss"],
              f"{secs:.1f}s {fig}" if ok else out[-2000:])

    # 3. More processes than GPUs: refused before launching.
    n = (os.cpu_count() or 1) + 1 if DRY else torch.cuda.device_count() + 1
    code, out, secs = peftkit_train(r1, "--processes", str(n), "--overwrite")
    check(f"--processes {n} refused", code == 2 and ("cores" if DRY else "GPUs") in out,
          f"{secs:.1f}s: {out.strip()[-300:]}")
    if DRY:
        return _finish()

    # 4. FSDP, one process under torchrun (info only: FSDP with one process is a degenerate case).
    r4 = write_recipe(tmp / "fsdp.yaml", model=bert, out=tmp / "fsdp", **common,
                      distributed={"strategy": "fsdp"},
                      train={"epochs": 2, "batch_size": 16, "learning_rate": 0.005, "log_every": 1,
                             "save_every": None, "report_to": "none", "output_dir": str(tmp / "fsdp")})
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "1",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "0", "-m", "peftkit", "train", str(r4), "--no-progress"],
                          env=ENV, capture_output=True, text=True, timeout=180, cwd=ROOT)
    ok = done.returncode == 0 and (tmp / "fsdp" / "adapter").is_dir()
    check("fsdp 1 process (torchrun)", ok, f"{time.perf_counter() - t0:.1f}s "
          + (str(run_figures(tmp / "fsdp")) if ok else (done.stdout + done.stderr)[-1500:]), required=False)

    return _finish()


def _finish() -> int:
    print("FAILED: " + ", ".join(failures) if failures else "ALL REQUIRED CHECKS PASSED", flush=True)
    return 1 if failures else 0


def _set(recipe: Path, section: str, **values) -> None:
    import yaml

    data = yaml.safe_load(recipe.read_text())
    data.setdefault(section, {}).update(values)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
