"""One forward for a batch whose rows belong to different LoRA adapters, each row keeping its own head.

`AdapterSet` gives every adapter its own skeleton of the base, so a batch that mixes adapters would take one
forward per adapter. For plain LoRA adapters that is wasted work: they differ from the base only by a rank-r
term added to some linear layers, and by their heads. `MixedLoraModel` is one more skeleton of the base
(weights shared, nothing copied) in which

- every linear layer that some adapter targets runs its base weight once over the whole batch, then adds each
  adapter's `lora_B(lora_A(x)) * scaling` to that adapter's rows only (rows come grouped by adapter, so a
  group is a slice, not a gather) — the same modules, called the same way as PEFT's own LoRA layer calls them;
- the classification head is every adapter's own head (its trained `modules_to_save` copy, of any label
  count), each applied to its rows; the logits are padded with NaN to the widest label set, and a caller
  reads a row's first `len(labels)` columns.

The LoRA modules and heads are the adapters' own objects (loaded by PEFT into their own skeletons), so a row
gives what its adapter gives when run alone, up to float rounding of a different batch shape (≤ 1e-5, tested).
Adapters that are not plain LoRA (DoRA and other variants, prompt learning, bottleneck adapters, trained
modules other than the head) are reported by `routable_reason` and must run on their own model.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

from peftkit.inference.adapter_set import shared_copy
from peftkit.models.load import HEAD_MODULES


class RowGroups:
    """The batch's layout, set before each forward: (adapter key, first row, end row) per contiguous group."""

    def __init__(self) -> None:
        self.groups: list[tuple[object, int, int]] = []


class RoutedLoraLinear(torch.nn.Module):
    """A base linear layer plus, per row group, that group's adapter's LoRA term (if it targets this layer)."""

    def __init__(self, base_layer: torch.nn.Module, layout: RowGroups):
        super().__init__()
        self.base_layer = base_layer
        self.layout = layout
        self.loras: dict[object, tuple[torch.nn.Module, torch.nn.Module, float]] = {}

    def forward(self, x, *args, **kwargs):
        result = self.base_layer(x, *args, **kwargs)
        for key, start, end in self.layout.groups:
            lora = self.loras.get(key)
            if lora is not None:
                lora_a, lora_b, scaling = lora
                result[start:end].add_(lora_b(lora_a(x[start:end])), alpha=scaling)
        return result


class RoutedHead(torch.nn.Module):
    """Each row group through its adapter's own head; outputs padded with NaN to the widest head."""

    def __init__(self, layout: RowGroups):
        super().__init__()
        self.layout = layout
        self.heads: dict[object, torch.nn.Module] = {}

    def forward(self, x):
        parts = [(start, end, self.heads[key](x[start:end])) for key, start, end in self.layout.groups]
        width = max(out.shape[-1] for _, _, out in parts)
        result = x.new_full((*x.shape[:-1], width), float("nan"))
        for start, end, out in parts:
            result[start:end, ..., : out.shape[-1]] = out
        return result


def _head_name(model) -> str | None:
    return next((n for n in HEAD_MODULES if hasattr(model, n)), None)


def routable_reason(peft_model, adapter_name: str) -> str | None:
    """Why this adapter's PEFT model cannot join a mixed LoRA batch, or None when it can."""
    config = peft_model.peft_config[adapter_name]
    if str(getattr(config.peft_type, "value", config.peft_type)) != "LORA":
        return f"{config.peft_type} is not LoRA"
    skeleton = peft_model.base_model.model
    head = _head_name(skeleton)
    if head is None:
        return "the model has no classifier/score head"
    for name, module in skeleton.named_modules():
        if isinstance(module, AuxiliaryTrainingWrapper) and name != head:
            return f"it trains module '{name}' besides the head"
        if isinstance(module, BaseTunerLayer):
            if type(module) is not LoraLinear:
                return f"layer '{name}' is a {type(module).__name__}, not a LoRA linear layer"
            if module.merged or adapter_name in module.lora_variant or module.disable_adapters:
                return f"layer '{name}' is merged, disabled or a LoRA variant (e.g. DoRA)"
    return None


def _lora_layers(peft_model, adapter_name: str):
    """(module path, lora_A, lora_B, scaling) for every LoRA linear layer of this adapter."""
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLinear) and adapter_name in module.lora_A:
            yield (
                name,
                module.lora_A[adapter_name],
                module.lora_B[adapter_name],
                module.scaling[adapter_name],
            )


def _adapter_head(peft_model, adapter_name: str) -> torch.nn.Module:
    skeleton = peft_model.base_model.model
    name = _head_name(skeleton)
    assert name is not None, "routable_reason accepted this adapter, so its model has a head"
    head = getattr(skeleton, name)
    return head.modules_to_save[adapter_name] if isinstance(head, ModulesToSaveWrapper) else head


class MixedLoraModel:
    """A skeleton of `base` that runs several plain LoRA adapters in one forward, routed per row group.

    `adapters`: key → (PEFT model, PEFT adapter name), each loaded on its own skeleton of the same `base` and
    accepted by `routable_reason`. The keys are the caller's (any hashable); `logits` takes rows grouped by key.
    """

    def __init__(self, base, adapters: dict):
        self.layout = RowGroups()
        self.model = shared_copy(base)
        self.model.eval()
        self.keys = set(adapters)
        routed: dict[str, RoutedLoraLinear] = {}
        head = RoutedHead(self.layout)
        for key, (peft_model, adapter_name) in adapters.items():
            for path, lora_a, lora_b, scaling in _lora_layers(peft_model, adapter_name):
                if path not in routed:
                    routed[path] = RoutedLoraLinear(self.model.get_submodule(path), self.layout)
                routed[path].loras[key] = (lora_a, lora_b, scaling)
            head.heads[key] = _adapter_head(peft_model, adapter_name)
        for path, module in routed.items():
            parent, _, leaf = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, leaf, module)
        head_name = _head_name(self.model)
        assert head_name is not None, "the base has a head: each adapter's skeleton of it had one"
        setattr(self.model, head_name, head)

    def logits(self, batch: dict, groups: list[tuple[object, int, int]]) -> torch.Tensor:
        """Logits of a collated `batch` whose rows [start, end) belong to adapter `key` for each group."""
        self.layout.groups = groups
        try:
            with torch.no_grad():
                return self.model(**batch).logits
        finally:
            self.layout.groups = []
