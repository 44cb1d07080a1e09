"""What the CPU fast path reads from transformers and PEFT, the versions it was checked on, and its loud fallback.

`attention` registers a function with transformers' `AttentionInterface` and calls
`transformers.integrations.sdpa_attention.sdpa_attention_forward` / `masking_utils.sdpa_mask`; `lora` replaces the
forward of PEFT's LoRA `Linear` and reads its adapter attributes. Where an installed version lacks one of these,
that part stays off for the run with a warning naming what is missing (training is then slower on CPU, with the
same numbers); tests/cpu/test_upstream.py fails on such a version, so an upgrade is noticed in CI, not by users.
"""

from __future__ import annotations

import warnings

CHECKED = "transformers 5.23.0, 5.24.0 and 5.25.0 with peft 0.21.0 and 0.21.2"
# The attributes of peft.tuners.lora.layer.Linear that peftkit.cpu.lora reads.
LORA_ATTRIBUTES = (
    "base_layer",
    "lora_A",
    "lora_B",
    "lora_dropout",
    "lora_variant",
    "scaling",
    "merged",
    "disable_adapters",
    "active_adapters",
)


class FastPathUnavailable(UserWarning):
    """A part of the CPU fast path is off because an installed library lacks what it needs."""


def warn_off(part: str, reason: str) -> None:
    """Say that `part` of the CPU fast path is off for this run, and why."""
    import peft
    import transformers

    warnings.warn(
        f"peftkit's CPU {part} is off for this run: {reason} (installed: transformers {transformers.__version__}, "
        f"peft {peft.__version__}; checked on {CHECKED}). Training gives the same numbers, only slower on CPU.",
        FastPathUnavailable,
        stacklevel=3,
    )
