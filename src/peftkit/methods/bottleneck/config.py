"""Bottleneck adapter config (Houlsby 2019, Pfeiffer 2020, parallel adapters He et al. 2022), PEFT-shaped.

Saved as `adapter_config.json` with `peft_type: BOTTLENECK` beside `adapter_model.safetensors`: PEFT's own folder
format. PEFT can read it back once `peftkit.methods.bottleneck` is imported (which registers the type).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from peftkit.methods.bottleneck.register import PEFT_TYPE

VARIANTS = ("houlsby", "pfeiffer", "parallel")


@dataclass
class BottleneckConfig(PeftConfig):
    """Down-project → non-linearity → up-project, added back to the hidden states.

    houlsby: after the attention output projection and after the feed-forward block (two per layer).
    pfeiffer: after the feed-forward block only (one per layer).
    parallel: beside the feed-forward block, reading its input (one per layer).
    """

    variant: Literal["houlsby", "pfeiffer", "parallel"] = field(
        default="pfeiffer", metadata={"help": "Where the adapters sit: houlsby, pfeiffer or parallel."}
    )
    reduction_factor: int = field(
        default=16,
        metadata={"help": "Bottleneck size = hidden size // reduction_factor (Pfeiffer et al.: 16)."},
    )
    bottleneck_size: int | None = field(
        default=None, metadata={"help": "Bottleneck size; overrides reduction_factor when set."}
    )
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = field(
        default="relu", metadata={"help": "Activation between the down and up projections."}
    )
    scaling: float = field(
        default=1.0, metadata={"help": "Multiplier on the adapter output (He et al. use 4 for parallel)."}
    )
    layers_to_transform: list[int] | None = field(
        default=None, metadata={"help": "Transformer layer indices that get adapters. None: all layers."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Regex of the modules to wrap. None: peftkit's default for the variant and "
            "architecture (see peftkit.methods.bottleneck.model.default_targets)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full (the classification head)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    def bottleneck_dim(self, hidden: int) -> int:
        """The bottleneck width for a model of hidden size `hidden`."""
        return self.bottleneck_size or max(1, hidden // self.reduction_factor)
