"""The bottleneck adapter layer: wraps one module of the base model and adds a down → act → up branch.

Sequential (houlsby, pfeiffer): y = f(x); y + s·up(act(down(y))) — the adapter reads the wrapped projection's
output, before the residual connection and layer norm that follow it.
Parallel: y = f(x) + s·up(act(down(x))) — the adapter reads the feed-forward block's input. For BERT, whose
feed-forward block is split (`intermediate` + `output`, with the residual and LayerNorm inside `output`), the
wrapped `BertOutput` is re-run with the adapter output added before its LayerNorm.
The up-projection starts at zero, so a fresh adapter is the identity and the model starts as the base.
"""

from __future__ import annotations

from typing import Protocol, TypeGuard, cast

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """A wrapped module plus one bottleneck adapter per adapter name."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_scaling", "bottleneck_act", "bottleneck_parallel")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        *,
        hidden: int,
        bottleneck: int,
        non_linearity: str,
        scaling: float,
        parallel: bool,
        inference_mode: bool = False,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_scaling: dict[str, float] = {}
        self.bottleneck_act: dict[str, str] = {}
        self.bottleneck_parallel: dict[str, bool] = {}
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(
            adapter_name,
            hidden=hidden,
            bottleneck=bottleneck,
            non_linearity=non_linearity,
            scaling=scaling,
            parallel=parallel,
            inference_mode=inference_mode,
        )

    def update_layer(
        self,
        adapter_name: str,
        *,
        hidden: int,
        bottleneck: int,
        non_linearity: str,
        scaling: float,
        parallel: bool,
        inference_mode: bool = False,
    ) -> None:
        """Add (or replace) adapter `adapter_name`: down Linear(hidden→b), up Linear(b→hidden) initialised to zero."""
        weight = self.get_base_layer()
        ref = next(weight.parameters())
        down = nn.Linear(hidden, bottleneck).to(ref.device)
        up = nn.Linear(bottleneck, hidden).to(ref.device)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_scaling[adapter_name] = scaling
        self.bottleneck_act[adapter_name] = non_linearity
        self.bottleneck_parallel[adapter_name] = parallel
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _branch(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # update_layer puts only nn.Linear in these ModuleDicts (typed as holding any nn.Module)
        down, up = cast(nn.Linear, self.bottleneck_down[name]), cast(nn.Linear, self.bottleneck_up[name])
        h = ACTIVATIONS[self.bottleneck_act[name]]()(down(x.to(down.weight.dtype)))
        return (up(h) * self.bottleneck_scaling[name]).to(x.dtype)

    def merge(self, *args, **kwargs):
        refuse_merge()

    def unmerge(self):
        """Nothing to undo: merging is always refused (PEFT calls this when it unloads or switches adapters)."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        base = self.base_layer
        active = (
            [] if self.disable_adapters else [a for a in self.active_adapters if a in self.bottleneck_down]
        )
        if not active:
            return base(x, *args, **kwargs)
        parallel = self.bottleneck_parallel[active[0]]
        if parallel and args and _is_bert_output(base):
            # BertOutput(hidden_states, input_tensor): the adapter reads the FFN input, joins before the LayerNorm.
            residual = args[0]
            h = base.dropout(base.dense(x)) + residual
            for name in active:
                h = h + self._branch(name, residual)
            return base.LayerNorm(h)
        y = base(x, *args, **kwargs)
        source = x if parallel else y
        for name in active:
            y = y + self._branch(name, source)
        return y

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


def refuse_merge():
    """Bottleneck adapters never merge (their registry entry says why)."""
    from peftkit.errors import PeftkitError
    from peftkit.methods.registry import merge_refusal_reason

    raise PeftkitError(merge_refusal_reason("bottleneck"))


class _BertOutputLike(Protocol):
    """transformers' BertOutput (and its RoBERTa copies): dense → dropout, + residual, → LayerNorm."""

    dense: nn.Module
    dropout: nn.Module
    LayerNorm: nn.Module


def _is_bert_output(module: nn.Module) -> TypeGuard[_BertOutputLike]:
    return all(hasattr(module, a) for a in ("dense", "dropout", "LayerNorm"))
