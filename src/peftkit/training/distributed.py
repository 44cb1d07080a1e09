"""Several processes, one run: launching through accelerate, the strategy (DDP / FSDP / DeepSpeed ZeRO), sharded
steps whose gradients equal one process's, sharded evaluation, and per-process RNG state.

`peftkit train RECIPE --processes N` checks everything that can be checked (devices, accelerate config file,
strategy against quantization, DeepSpeed installed) and only then hands off to `accelerate launch`, which starts N
copies of `peftkit train RECIPE`; `accelerate launch -m peftkit train RECIPE` works directly too. Every process
builds the same (seed, epoch)-keyed global batches and takes its slice `batch[rank::world]`; each slice's loss is
weighted by its share of the global batch, so after DDP's gradient average the update is exactly the one a single
process makes on the whole global batch, even for a short last batch.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

from peftkit.errors import PeftkitError, shorten

# accelerate's distributed_type names (config file `distributed_type:`) → our strategy family.
_CONFIG_TYPES = {
    "MULTI_GPU": "ddp",
    "MULTI_CPU": "ddp",
    "NO": "ddp",
    "FSDP": "fsdp",
    "DEEPSPEED": "deepspeed",
}


def read_accelerate_config(path: str | None) -> dict:
    """The accelerate config file a recipe names, as a dict ({} for None); a missing or bad file is an error."""
    if path is None:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise PeftkitError(
            f"distributed.accelerate_config: file '{path}' does not exist. Write one with `accelerate config "
            f"--config_file {path}`, fix the path, or remove the key to use distributed.strategy."
        )
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PeftkitError(f"distributed.accelerate_config: '{path}' is not valid YAML ({exc}).") from None
    if not isinstance(cfg, dict):
        raise PeftkitError(
            f"distributed.accelerate_config: '{path}' must be a YAML mapping (accelerate's format)."
        )
    return cfg


def resolved_strategy(strategy: str, accelerate_config: dict | None = None, env=None) -> str:
    """The strategy family actually used: the recipe's, else the accelerate config's / launcher's, else ddp."""
    env = os.environ if env is None else env
    if strategy != "auto":
        return strategy
    config = accelerate_config or {}
    kind = _CONFIG_TYPES.get(str(config.get("distributed_type", "")).upper())
    if kind == "deepspeed":
        stage = (config.get("deepspeed_config") or {}).get("zero_stage", 2)
        return f"deepspeed_zero{3 if int(stage) == 3 else 2}"
    if kind:
        return kind
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed_zero3" if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "deepspeed_zero2"
    return "ddp"


def check_distributed(
    strategy: str,
    accelerate_config: str | None,
    *,
    quantized: bool,
    processes: int | None = None,
    cuda_devices: int | None = None,
    cpus: int | None = None,
) -> str:
    """Refuse impossible set-ups before any process starts; return the resolved strategy.

    `processes`: the N of `--processes N` (None when already launched). Device counts default to this machine's.
    """
    cfg = read_accelerate_config(accelerate_config)
    chosen = resolved_strategy(strategy, cfg)
    if strategy != "auto" and cfg.get("distributed_type"):
        family = _CONFIG_TYPES.get(str(cfg["distributed_type"]).upper(), "ddp")
        if not chosen.startswith(family):
            raise PeftkitError(
                f"distributed.strategy: the recipe asks for {strategy} but accelerate config '{accelerate_config}' "
                f"says distributed_type: {cfg['distributed_type']}. Set distributed.strategy: auto to follow the "
                f"config file, or drop distributed.accelerate_config."
            )
    if chosen.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise PeftkitError(
            f"distributed.strategy: {chosen} needs DeepSpeed, which is not installed. Run `pip install deepspeed` "
            f"(on a machine with CUDA), or use distributed.strategy: ddp or fsdp."
        )
    if (
        chosen.startswith("deepspeed")
        and (processes or 1) > 1
        and (cuda_devices if cuda_devices is not None else _cuda_count()) == 0
    ):
        raise PeftkitError(
            f"distributed.strategy: {chosen} with {processes} processes needs GPUs: accelerate runs DeepSpeed on CPU "
            f"in one process only. Use --processes 1, or distributed.strategy: ddp or fsdp on CPU."
        )
    if quantized and chosen in ("fsdp", "deepspeed_zero3"):
        raise PeftkitError(
            f"distributed.strategy: {chosen} shards the base model's weights, which peftkit does not support for a "
            f"quantized (bitsandbytes) base. Use distributed.strategy: ddp (each process holds its own 4-bit copy, "
            f"little memory), deepspeed_zero2, or remove the quantization block."
        )
    if chosen == "fsdp" and (cuda_devices if cuda_devices is not None else _cuda_count()) == 0:
        # accelerate (1.15) switches to FSDP only on accelerator devices; on CPU it would quietly run DDP instead.
        raise PeftkitError(
            "distributed.strategy: fsdp needs GPUs: accelerate runs FSDP only on accelerator devices (on CPU it "
            "would quietly fall back to DDP). Use distributed.strategy: ddp on CPU."
        )
    if processes is not None:
        if processes < 1:
            raise PeftkitError(
                f"--processes: {processes} is not a process count. Give a whole number of 1 or more."
            )
        machines = int(cfg.get("num_machines", 1) or 1)
        if machines == 1:
            _check_devices(processes, cuda_devices, cpus)
    return chosen


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _check_devices(processes: int, cuda_devices: int | None, cpus: int | None) -> None:
    if cuda_devices is None:
        cuda_devices = _cuda_count()
    if cuda_devices:
        if processes > cuda_devices:
            raise PeftkitError(
                f"--processes: {processes} processes need {processes} GPUs, but this machine has {cuda_devices} "
                f"visible (CUDA_VISIBLE_DEVICES). Use --processes {cuda_devices} or fewer; raise "
                f"train.batch_size or train.grad_accum_steps for a larger global batch."
            )
        return
    cpus = cpus or os.cpu_count() or 1
    if processes > cpus:
        raise PeftkitError(
            f"--processes: {processes} processes on CPU need at least {processes} cores, but this machine has "
            f"{cpus} and no GPU. Use --processes {cpus} or fewer."
        )


def launch_command(
    recipe_path: str,
    train_args: list[str],
    processes: int,
    accelerate_config: str | None,
    cuda_devices: int,
    strategy: str = "ddp",
) -> list[str]:
    """The `accelerate launch` command line that starts `processes` copies of `peftkit train` (no --processes).

    `strategy`: the resolved one (check_distributed); without a config file it picks accelerate's launcher flags.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if strategy == "fsdp":  # torchrun even for one process (FSDP needs a process group); CPU: gloo
            cmd += ["--use_fsdp", "--main_process_port", "0"]
        elif strategy.startswith("deepspeed"):
            cmd += ["--use_deepspeed", "--zero_stage", strategy[-1], "--main_process_port", "0"]
        else:
            # torchrun's launcher (`--multi_gpu`) also runs several CPU processes (gloo); port 0 picks a free port.
            cmd += (
                ["--multi_gpu", "--main_process_port", "0"]
                if processes > 1
                else ([] if cuda_devices else ["--cpu"])
            )
    cmd += ["--num_processes", str(processes), "-m", "peftkit", "train", recipe_path, *train_args]
    return cmd


def launch_training(
    recipe_path: str,
    train_args: list[str],
    processes: int,
    *,
    strategy: str,
    accelerate_config: str | None,
    quantized: bool,
) -> int:
    """Check, then run `processes` training processes through accelerate; return their exit code."""
    cuda = _cuda_count()
    chosen = check_distributed(
        strategy, accelerate_config, quantized=quantized, processes=processes, cuda_devices=cuda
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(
        launch_command(recipe_path, train_args, processes, accelerate_config, cuda, chosen), env=env
    )


def sharded_dtype(strategy: str, dtype: str) -> tuple[str, str | None]:
    """(weights dtype, accelerate mixed precision) for a run. FSDP and DeepSpeed flatten parameters and need one
    dtype for all of them, but PEFT keeps adapter weights in float32 over a bf16 base; so under them a bf16 run
    loads float32 weights and computes in bf16 through accelerate's mixed precision (FSDP's MixedPrecision /
    DeepSpeed's bf16 mode with float32 master weights). Everything else keeps the recipe's dtype."""
    import torch

    from peftkit.models.load import resolve_dtype

    chosen = resolved_strategy(strategy)
    if chosen == "ddp" or not torch.cuda.is_available():
        return dtype, None
    if resolve_dtype(dtype, "cuda") == torch.bfloat16:
        if chosen == "deepspeed_zero3":  # seen on an H200: ZeRO-3's partitioner asserts
            raise PeftkitError(
                "model.dtype: DeepSpeed ZeRO-3 with bf16 compute is not supported by peftkit yet (ZeRO-3 partitions "
                "the base in bf16 while PEFT keeps adapter weights in float32, and it needs one dtype). Set "
                "model.dtype: float32 for ZeRO-3, or use distributed.strategy: deepspeed_zero2 or fsdp with bf16."
            )
        return "float32", "bf16"
    return dtype, None


def make_accelerator(
    strategy: str,
    *,
    quantized: bool,
    batch_size: int,
    grad_accum_steps: int,
    max_grad_norm: float | None = None,
    mixed_precision: str | None = None,
):
    """An Accelerator for the recipe's strategy; `auto` follows whatever `accelerate launch` was told.

    On CPU, DDP runs with several processes (gloo) and DeepSpeed in one (its CPU accelerator); FSDP is refused.
    """
    import torch
    from accelerate import Accelerator

    launched = resolved_strategy("auto")
    if strategy != "auto" and launched != "ddp" and launched != strategy:
        raise PeftkitError(
            f"distributed.strategy: the recipe asks for {strategy} but accelerate was launched with "
            f"{launched}. Make them agree, or set distributed.strategy: auto."
        )
    chosen = check_distributed(strategy, None, quantized=quantized)
    kwargs: dict = {}
    if chosen == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        # use_orig_params: PEFT mixes frozen and trainable tensors inside one module. Every process loads the whole
        # base itself (same files, same seed → same adapter init), so no rank-0-only loading and no weight broadcast:
        # with cpu_ram_efficient_loading the other ranks build the adapter on the meta device, and accelerate's
        # broadcast needs a GPU. Other settings (wrap policy, FSDP version, ...) come from the launcher's config.
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            use_orig_params=True,
            sync_module_states=False,
            cpu_ram_efficient_loading=False,
            state_dict_type="FULL_STATE_DICT",
        )
    elif chosen.startswith("deepspeed") and strategy != "auto":
        from accelerate import DeepSpeedPlugin

        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(zero_stage=int(chosen[-1]), zero3_save_16bit_model=True)
    # accelerate(cpu=True) silently drops DeepSpeed; without a GPU DeepSpeed picks its own CPU accelerator.
    if mixed_precision:
        kwargs["mixed_precision"] = mixed_precision
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and not chosen.startswith("deepspeed"), **kwargs
    )
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if chosen != "ddp" and (
        kind != ("FSDP" if chosen == "fsdp" else "DEEPSPEED") or accelerator.num_processes != world
    ):
        raise PeftkitError(
            f"distributed.strategy: {chosen} was asked for, but accelerate set up {kind} with "
            f"{accelerator.num_processes} of {world} processes. Launch with `peftkit train RECIPE "
            f"--processes N` or `accelerate launch` (not plain python); DeepSpeed with several "
            f"processes needs GPUs. Or use distributed.strategy: ddp."
        )
    if accelerator.state.deepspeed_plugin is not None:
        configure_deepspeed(
            accelerator.state.deepspeed_plugin.deepspeed_config,
            batch_size,
            grad_accum_steps,
            max_grad_norm,
            accelerator.num_processes,
        )
    return accelerator


def configure_deepspeed(
    ds: dict, batch_size: int, grad_accum_steps: int, max_grad_norm: float | None, world: int
) -> None:
    """Fit a DeepSpeed config to peftkit's loop: its batch, its clipping, its torch optimizer and scheduler, and
    ZeRO-3 weights gathered on save (without that the adapter would be saved from empty partitions)."""
    if grad_accum_steps > 1:
        raise PeftkitError(
            "train.grad_accum_steps: peftkit accumulates micro-batches itself, which DeepSpeed's "
            "engine does not allow. Set train.grad_accum_steps: 1 and raise train.batch_size."
        )
    own = [k for k in ("optimizer", "scheduler") if k in ds]
    if own:
        raise PeftkitError(
            f"distributed.accelerate_config: the DeepSpeed config has its own {' and '.join(own)} "
            f"section; peftkit builds the optimizer and scheduler from the recipe (train.optimizer, "
            f"train.lr_scheduler). Remove the {' and '.join(own)} section from the DeepSpeed config."
        )
    ds["train_micro_batch_size_per_gpu"] = batch_size
    ds["train_batch_size"] = batch_size * world
    ds["gradient_accumulation_steps"] = 1
    # DeepSpeed clips inside its step, not clip_grad_norm_
    ds["gradient_clipping"] = float(max_grad_norm or 0.0)
    # A plain torch optimizer: DeepSpeed's fused / CPU Adam would need compiling (nvcc) and change the numbers.
    ds["zero_force_ds_cpu_optimizer"] = False
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def shard_steps(
    global_batches: list[list[int]], accum: int, rank: int, world: int, size
) -> list[list[tuple]]:
    """This process's optimizer steps: each a list of (indices, loss weight) micro-batches.

    `global_batches` are the same on every process; `accum` consecutive ones make one step. `size(i)` is what the
    model's mean loss averages over for example i (1 for classification, its target tokens for causal LM). A
    micro-batch's weight is its share of the step's total × world, so DDP's gradient *average* over processes
    yields the gradient of the step's global mean loss. A process whose slice is empty still runs one example at
    weight 0, so every process makes the same collective calls.
    """
    steps = []
    for s in range(0, len(global_batches), accum):
        group = global_batches[s : s + accum]
        total = sum(size(i) for b in group for i in b) or 1
        step = []
        for b in group:
            mine = b[rank::world]
            step.append((mine, sum(size(i) for i in mine) / total * world) if mine else (b[:1], 0.0))
        steps.append(step)
    return steps


def forward_split_sharded(
    model, ids: list[list[int]], labels: list[int] | None, accelerator, *, task: str, batch_size: int, **kw
):
    """`inference.forward_split` over all processes: each takes a slice, results are gathered.

    Returns what forward_split returns on the whole split, on every process. A process with fewer batches than
    the others runs one throw-away batch, so all make the same number of forward calls (FSDP gathers in each).
    """
    import numpy as np

    from peftkit.inference.forward import forward_split

    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return forward_split(model, ids, labels, task=task, batch_size=batch_size, **kw)
    from accelerate.utils import gather_object

    n = len(ids)
    mine = list(range(rank, n, world))
    logits, loss = (
        forward_split(
            model,
            [ids[i] for i in mine],
            [labels[i] for i in mine] if labels else None,
            task=task,
            batch_size=batch_size,
            **kw,
        )
        if mine
        else (None, 0.0)
    )
    most = math.ceil(n / world)  # process 0's slice, the largest
    if math.ceil(len(mine) / batch_size) < math.ceil(most / batch_size):
        kw.pop("progress", None)
        forward_split(model, ids[:1], labels[:1] if labels else None, task=task, batch_size=batch_size, **kw)
    weight = len(mine) if task == "classification" else sum(len(ids[i]) - 1 for i in mine)
    parts = gather_object([(mine, logits, loss, weight)])
    total = sum(p[3] for p in parts) or 1
    mean = sum(p[2] * p[3] for p in parts if p[3]) / total
    if task != "classification":
        return None, mean
    width = next(p[1].shape[-1] for p in parts if p[1] is not None)
    out = np.zeros((n, width), dtype=np.float32)
    for idx, lg, _, _ in parts:
        if idx:
            out[idx] = lg
    return out, (mean if labels is not None else float("nan"))


def local_rng_state() -> dict:
    """This process's RNG state (torch CPU, and CUDA when present)."""
    import torch

    rng: dict[str, torch.Tensor | list[torch.Tensor]] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def gather_rng_states(accelerator) -> list[dict]:
    """Every process's RNG state, in process order (a collective call: all processes must make it)."""
    if accelerator.num_processes == 1:
        return [local_rng_state()]
    from accelerate.utils import gather_object

    return gather_object([local_rng_state()])


def checkpoints_supported(accelerator, *, resume: bool, save_every: int | None) -> bool:
    """Resumable checkpoints hold whole trainable tensors and one optimizer state: DDP and one process only.

    Under FSDP / DeepSpeed each process holds shards, so checkpoints are skipped (with a warning) and --resume refused.
    """
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind not in ("FSDP", "DEEPSPEED"):
        return True
    if resume:
        raise PeftkitError(
            f"--resume: peftkit's checkpoints are for DDP and single-process runs, and this run uses "
            f"{kind}. Start the run again with --overwrite, or use distributed.strategy: ddp."
        )
    if save_every:
        import warnings

        warnings.warn(
            f"train.save_every: no intermediate checkpoints under {kind} (sharded weights); the adapter is "
            f"saved at the end. Set train.save_every: null to silence this.",
            stacklevel=2,
        )
    return False


def is_main_launch_process() -> bool:
    """True unless this is a non-main process of a multi-process launch (`accelerate launch` / torchrun set RANK):
    for what one process of a launch does before the processes are joined (its log, its summary, the lock check)."""
    return int(os.environ.get("RANK", "0")) == 0


def main_process_call(accelerator, fn):
    """Run `fn()` on the main process only and return its result there (None elsewhere). The outcome is shared: if
    it fails, every process raises a PeftkitError with its message, so none waits at a barrier for a process that
    stopped (a collective call: all processes must make it)."""
    if accelerator is None:  # not a multi-process run (a RunFolder used on its own)
        return fn()
    error, result = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except PeftkitError as exc:
            error = exc
        except BaseException as exc:
            if accelerator.num_processes > 1:
                _share(accelerator, f"the main process failed: {type(exc).__name__}: {shorten(exc, 300)}")
            raise
    if accelerator.num_processes > 1:
        message = _share(accelerator, str(error) if error else None)
        if message is not None and error is None:
            raise PeftkitError(message)
    if error is not None:
        raise error
    return result


def _share(accelerator, message: str | None) -> str | None:
    """The main process's `message`, on every process."""
    from accelerate.utils import broadcast_object_list

    box = [message]
    broadcast_object_list(box, from_process=0)
    return box[0]
