"""Several processes (CPU, gloo) give the adapter one process gives with the same global batch; 2-process runs
resume exactly; only the main process writes; bad set-ups are refused before any process starts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from peftkit.training.distributed import check_distributed, launch_command, shard_steps
from peftkit.training.recipe import train
from tests.helpers import flipped, make_texts, no_dropout_copy, write_recipe, write_split_card

ROOT = Path(__file__).resolve().parents[1]


def _losses(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice: only the main process may write the log"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture
def child_env(monkeypatch):
    # The launched processes import this worktree's peftkit, one thread each (2 processes on few cores).
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.integration
def test_two_processes_match_one_and_resume(tmp_path, tiny_bert, tiny_card, child_env):
    # 51 training examples, global batch 8: the last batch has 3 (2 + 1 across processes), so the shard weighting
    # matters; 49 in the resume runs: the last batch has 1 and process 1 runs a weight-0 placeholder.
    base = dict(
        model=no_dropout_copy(tiny_bert, tmp_path / "bert"),
        card=tiny_card,
        method={"name": "lora", "lora_dropout": 0.0},
    )
    one = write_recipe(
        tmp_path / "one.yaml",
        out=tmp_path / "one",
        data={"max_train_examples": 51},
        train={"batch_size": 8, "log_every": 1},
        **base,
    )
    two = write_recipe(
        tmp_path / "two.yaml",
        out=tmp_path / "two",
        data={"max_train_examples": 51},
        train={"batch_size": 4, "log_every": 1},
        **base,
    )
    resume_kw = dict(
        model=tiny_bert,
        card=tiny_card,
        method={"name": "lora", "lora_dropout": 0.2},
        data={"max_train_examples": 49},
        train={"batch_size": 4, "log_every": 1, "save_every": 4},
    )
    full = write_recipe(tmp_path / "full.yaml", out=tmp_path / "full", **resume_kw)
    cut = write_recipe(tmp_path / "cut.yaml", out=tmp_path / "cut", **resume_kw)
    k = 9  # past the first epoch's 7 steps, not on a save_every multiple
    # Early stopping with keep_best on a run built to peak early (validation labels a quarter wrong): the same
    # global batch in 1 and 2 processes stops at the same step and keeps the same best adapter.
    peaking = write_split_card(
        tmp_path / "peak",
        {
            "train": make_texts(96, seed=1),
            "validation": flipped(make_texts(40, seed=2), 0.25),
            "test": make_texts(40, seed=3),
        },
    )
    stopping = dict(
        max_steps=60, eval_every=2, learning_rate=0.002, lr_scheduler="constant", warmup_ratio=0.0
    )
    stopping |= dict(early_stopping={"patience": 3}, keep_best=True, log_every=1)
    es = dict(model=base["model"], card=peaking, method={"name": "lora", "lora_dropout": 0.0})
    one_es = write_recipe(
        tmp_path / "one_es.yaml", out=tmp_path / "one_es", train={**stopping, "batch_size": 8}, **es
    )
    two_es = write_recipe(
        tmp_path / "two_es.yaml", out=tmp_path / "two_es", train={**stopping, "batch_size": 4}, **es
    )

    train(load_recipe(one), progress=False)
    train(load_recipe(one_es), progress=False)
    # One launch of 2 processes (the `peftkit train` CLI under accelerate) for: the invariance run, a full dropout
    # run, the same run stopped at step k, and its --resume.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(ROOT / "tests" / "distributed_worker.py"),
        str(two),
        str(full),
        f"{cut}@{k}",
        f"{cut}@resume",
        str(two_es),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # Invariant: same global batch → same losses, same adapter, same metrics.
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 15))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), step
    assert _max_diff(_adapter(tmp_path / "one"), _adapter(tmp_path / "two")) <= 1e-5
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["validation"]["accuracy"] == m1["validation"]["accuracy"]
    assert m2["test"]["loss"] == pytest.approx(m1["test"]["loss"], abs=1e-5)
    assert m2["train"]["examples"] == m1["train"]["examples"] == 2 * 51
    assert not list((tmp_path / "two").rglob("*.tmp"))
    # every run folder was replaced in one piece: no partial folder, no lock left behind
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.lock"))

    # Checkpoints hold each process's RNG state, and they differ (each process draws its own dropout masks).
    from peftkit.training.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(tmp_path / "cut")
    assert json.loads((ckpt / "state.json").read_text()) == {"step": 12, "processes": 2}
    import torch

    r0, r1 = torch.load(ckpt / "rng.pt"), torch.load(ckpt / "rng-1.pt")
    assert not torch.equal(r0["cpu"], r1["cpu"])

    # Resumed with 2 processes it matches the full run; resuming with another process count is refused.
    f, c = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(f) == sorted(c) == list(range(1, 15))
    for step in range(k + 1, 15):
        assert c[step] == pytest.approx(f[step], abs=1e-6), step
    assert _max_diff(_adapter(tmp_path / "full"), _adapter(tmp_path / "cut")) <= 1e-6
    with pytest.raises(PeftkitError, match="written by a run of 2 process"):
        train(load_recipe(cut), resume=True, progress=False)

    best_one = json.loads((tmp_path / "one_es" / "metrics.json").read_text())["best"]
    best_two = json.loads((tmp_path / "two_es" / "metrics.json").read_text())["best"]
    assert best_one["stopped_early"] and best_one["step"] < best_one["last_step"] < 60
    assert best_two == pytest.approx(best_one, abs=1e-5)
    assert _max_diff(_adapter(tmp_path / "one_es"), _adapter(tmp_path / "two_es")) <= 1e-5


def _sharded_vs_one(tmp_path, tiny_bert, tiny_card, strategy: str, processes: int) -> tuple[dict, dict]:
    """The adapter of one plain process and of `processes` processes under `strategy` (same global batch)."""
    base = dict(
        model=no_dropout_copy(tiny_bert, tmp_path / "bert"),
        card=tiny_card,
        method={"name": "lora", "lora_dropout": 0.0},
        data={"max_train_examples": 51},
    )
    one = write_recipe(tmp_path / "one.yaml", out=tmp_path / "one", train={"batch_size": 8}, **base)
    many = write_recipe(
        tmp_path / "many.yaml",
        out=tmp_path / "many",
        train={"batch_size": 8 // processes},
        distributed={"strategy": strategy},
        **base,
    )
    train(load_recipe(one), progress=False)
    done = subprocess.run(
        [sys.executable, "-m", "peftkit", "train", str(many), "--no-progress", "--processes", str(processes)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return _adapter(tmp_path / "one"), _adapter(tmp_path / "many")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_one_cpu_process_saves_the_whole_adapter(tmp_path, tiny_bert, tiny_card, child_env, stage):
    # DeepSpeed runs on CPU in one process (accelerate refuses more); ZeRO-3 leaves empty partitions in the module
    # outside a gather, so this checks the save gathers the adapter. (FSDP: GPU only, see
    # tests/gpu/accelerate_checks.py.)
    a, b = _sharded_vs_one(tmp_path, tiny_bert, tiny_card, f"deepspeed_zero{stage}", 1)
    assert len(b) == len(a) > 0 and all(v.numel() for v in b.values())
    assert _max_diff(a, b) <= 1e-5


def test_shard_weights_give_the_global_mean():
    # Classification: each example counts 1. 2 processes, accumulation 2, a short last batch and an empty slice.
    batches = [[0, 1, 2, 3], [4, 5, 6], [7]]
    for world in (1, 2, 3):
        steps = [shard_steps(batches, 2, r, world, lambda i: 1) for r in range(world)]
        assert all(
            len(s) == 2 for s in steps
        )  # every process makes the same number of steps and micro-batches
        for s in range(2):
            # DDP averages over processes: sum of (weight × mean over its examples) / world = global mean weights.
            share = {}
            for r in range(world):
                for idx, w in steps[r][s]:
                    for i in idx:
                        share[i] = share.get(i, 0) + (w / len(idx) / world if w else 0)
            group = [i for b in batches[2 * s : 2 * s + 2] for i in b]
            assert share == pytest.approx({i: 1 / len(group) for i in group})
    placeholder = shard_steps([[7]], 1, 1, 2, lambda i: 1)
    assert placeholder == [[([7], 0.0)]]


def test_launch_command_hands_off_to_accelerate():
    cmd = launch_command("r.yaml", ["--overwrite", "train.epochs=2"], 2, None, cuda_devices=0)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("-m", 3) :] == ["-m", "peftkit", "train", "r.yaml", "--overwrite", "train.epochs=2"]
    cfg = launch_command("r.yaml", [], 4, "acc.yaml", cuda_devices=4)
    assert cfg[cfg.index("--config_file") + 1] == "acc.yaml" and "--multi_gpu" not in cfg
    # Sharded strategies pick accelerate's own launcher (torchrun / deepspeed) even for one process, never --cpu.
    fsdp = launch_command("r.yaml", [], 1, None, cuda_devices=1, strategy="fsdp")
    assert "--use_fsdp" in fsdp and "--cpu" not in fsdp and "--multi_gpu" not in fsdp
    ds = launch_command("r.yaml", [], 1, None, cuda_devices=0, strategy="deepspeed_zero3")
    assert ds[ds.index("--use_deepspeed") + 1 : ds.index("--use_deepspeed") + 3] == ["--zero_stage", "3"]
    assert "--cpu" not in ds


def test_deepspeed_config_fits_peftkits_loop():
    from peftkit.training.distributed import configure_deepspeed

    ds = {
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False},
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    }
    configure_deepspeed(ds, 8, 1, 0.5, world=4)
    assert (
        ds["train_micro_batch_size_per_gpu"],
        ds["train_batch_size"],
        ds["gradient_accumulation_steps"],
    ) == (8, 32, 1)
    assert ds["gradient_clipping"] == 0.5 and ds["zero_force_ds_cpu_optimizer"] is False
    assert (
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    )  # else ZeRO-3 saves empties
    with pytest.raises(PeftkitError, match="has its own optimizer section.*Remove the optimizer section"):
        configure_deepspeed({"optimizer": {"type": "AdamW"}}, 8, 1, 1.0, world=1)
    with pytest.raises(PeftkitError, match="train.grad_accum_steps: peftkit accumulates"):
        configure_deepspeed({}, 8, 2, 1.0, world=1)


def test_quantized_model_goes_to_its_process_device():
    from peftkit.models.load import quant_device_map

    assert quant_device_map("cuda:3") == {"": 3}
    assert quant_device_map("cpu") == {"": "cpu"}


def test_empty_adapter_is_refused(tmp_path, tiny_bert):
    # What an ungathered ZeRO-3 save writes: the adapter's keys, each a zero-sized shard.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peftkit.adapters.bundle import check_adapter_weights, save_adapter

    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
        LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"),
    )
    empty = {k: torch.empty(0) for k in model.state_dict()}
    with pytest.raises(PeftkitError) as err:
        save_adapter(model, tmp_path / "adapter", {}, state_dict=empty)
    assert "refusing to save an empty or broken adapter" in str(err.value) and "ZeRO-3" in str(err.value)
    assert not (tmp_path / "adapter").exists()
    save_adapter(model, tmp_path / "ok", {})
    figures = check_adapter_weights(tmp_path / "ok")
    assert figures["tensors"] > 0 and figures["norm"] > 0


@pytest.fixture
def recipe(tmp_path, tiny_bert, tiny_card):
    def make(**sections):
        return write_recipe(
            tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run", **sections
        )

    return make


BAD = [
    # (recipe sections, argv extra, words)
    ({}, ["--processes", "4096"], ["--processes: 4096 processes", "Use --processes"]),
    ({}, ["--processes", "0"], ["--processes: 0 is not a process count"]),
    (
        {"distributed": {"accelerate_config": "no/such/accelerate.yaml"}},
        ["--processes", "2"],
        ["distributed.accelerate_config", "no/such/accelerate.yaml", "does not exist", "accelerate config"],
    ),
    (
        {"distributed": {"strategy": "fsdp"}, "quantization": {"bits": 4}},
        ["--processes", "2"],
        ["distributed.strategy: fsdp", "quantized", "ddp"],
    ),
    ({"distributed": {"strategy": "deepspeed_zero3"}}, ["--processes", "2"], ["pip install deepspeed"]),
    (
        {"distributed": {"strategy": "fsdp"}},
        ["--processes", "1"],
        ["distributed.strategy: fsdp needs GPUs", "ddp"],
    ),
]


@pytest.mark.parametrize(
    "sections,argv,words",
    BAD,
    ids=["too many", "zero", "missing config", "fsdp 4-bit", "deepspeed", "fsdp on cpu"],
)
def test_bad_distributed_setups_refused_before_launch(recipe, tmp_path, capsys, sections, argv, words):
    path = recipe(**sections)
    assert main(["train", str(path), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not (tmp_path / "run").exists()


def test_more_processes_than_gpus_and_config_conflicts(tmp_path):
    with pytest.raises(PeftkitError, match="need 4 GPUs, but this machine has 2 visible"):
        check_distributed("ddp", None, quantized=False, processes=4, cuda_devices=2)
    cfg = tmp_path / "acc.yaml"
    cfg.write_text("distributed_type: FSDP\nnum_machines: 1\n")
    with pytest.raises(PeftkitError, match="says distributed_type: FSDP"):
        check_distributed("ddp", str(cfg), quantized=False)
    with pytest.raises(PeftkitError, match="quantized"):
        check_distributed("auto", str(cfg), quantized=True)
    assert check_distributed("auto", str(cfg), quantized=False, processes=2, cuda_devices=2) == "fsdp"


def test_sharded_strategies_skip_checkpoints_and_refuse_resume():
    from types import SimpleNamespace

    from peftkit.training.distributed import checkpoints_supported

    fsdp = SimpleNamespace(distributed_type="DistributedType.FSDP")
    with pytest.raises(PeftkitError, match="--resume: peftkit's checkpoints are for DDP"):
        checkpoints_supported(fsdp, resume=True, save_every=10)
    with pytest.warns(UserWarning, match="no intermediate checkpoints under FSDP"):
        assert checkpoints_supported(fsdp, resume=False, save_every=10) is False
    ddp = SimpleNamespace(distributed_type="DistributedType.MULTI_CPU")
    assert checkpoints_supported(ddp, resume=True, save_every=10) is True


def test_sharded_bf16_loads_float32_weights_and_refuses_zero3(monkeypatch):
    """Under FSDP / DeepSpeed a bf16 run keeps float32 weights and computes in bf16 (one dtype to flatten); ZeRO-3 with
    bf16 is refused with the fix; DDP and CPU keep the recipe's dtype."""
    import torch

    from peftkit.errors import PeftkitError
    from peftkit.training.distributed import sharded_dtype

    assert sharded_dtype("fsdp", "auto") == ("auto", None)  # no GPU here: nothing changes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert sharded_dtype("fsdp", "auto") == ("float32", "bf16")
    assert sharded_dtype("deepspeed_zero2", "bfloat16") == ("float32", "bf16")
    assert sharded_dtype("fsdp", "float32") == ("float32", None)
    assert sharded_dtype("ddp", "auto") == ("auto", None)
    with pytest.raises(PeftkitError, match=r"ZeRO-3 with bf16.*model.dtype: float32"):
        sharded_dtype("deepspeed_zero3", "auto")
