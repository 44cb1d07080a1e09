"""Bottleneck adapters (houlsby / pfeiffer / parallel): config, layer, tuner, their one registration with PEFT, and
their entries in peftkit's method registry."""

from peftkit.methods.bottleneck.config import BottleneckConfig
from peftkit.methods.bottleneck.model import BottleneckModel, default_targets, hidden_size
from peftkit.methods.bottleneck.register import PEFT_TYPE, register_with_peft
from peftkit.methods.registry import MethodEntry, register

register_with_peft(BottleneckConfig, BottleneckModel)

MERGE_REFUSAL = (
    "the adapter branch has a non-linearity (down → activation → up) between the base's layers, so no weight "
    "matrix equals it"
)
_SHARED = dict(
    peft_type=PEFT_TYPE.value, config=lambda: BottleneckConfig, merge_refusal=MERGE_REFUSAL, conv1d=True
)
register(
    MethodEntry(
        "bottleneck", doc="Bottleneck adapters; choose `variant` (houlsby, pfeiffer, parallel).", **_SHARED
    )
)
register(
    MethodEntry(
        "houlsby",
        doc="Bottleneck adapters after attention and feed-forward (Houlsby et al. 2019).",
        presets={"variant": "houlsby"},
        **_SHARED,
    )
)
register(
    MethodEntry(
        "pfeiffer",
        doc="One bottleneck adapter per layer after the feed-forward block (Pfeiffer et al. 2020).",
        presets={"variant": "pfeiffer"},
        **_SHARED,
    )
)
register(
    MethodEntry(
        "parallel",
        doc="Bottleneck adapter beside the feed-forward block (He et al. 2022).",
        presets={"variant": "parallel"},
        **_SHARED,
    )
)

__all__ = ["PEFT_TYPE", "BottleneckConfig", "BottleneckModel", "default_targets", "hidden_size"]
