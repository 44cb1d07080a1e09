"""Bottleneck adapters (houlsby / pfeiffer / parallel): config, layer, tuner, and their one registration with PEFT."""

from peftkit.methods.bottleneck.config import BottleneckConfig
from peftkit.methods.bottleneck.model import BottleneckModel, default_targets, hidden_size
from peftkit.methods.bottleneck.register import PEFT_TYPE, register_with_peft

register_with_peft(BottleneckConfig, BottleneckModel)

__all__ = [
    "PEFT_TYPE",
    "BottleneckConfig",
    "BottleneckModel",
    "default_targets",
    "hidden_size",
]
