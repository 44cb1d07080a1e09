"""How a BERT-style classifier reads a sequence: the model's own [CLS] pooler, or the mean of its real tokens.

`model` pooling keeps the head as transformers builds it: BERT's [CLS] hidden state through a dense + tanh
pooler. Sentence-transformers encoders such as all-MiniLM-L6-v2 were trained to be read by averaging their
tokens instead, so their [CLS] path is untrained for the task. Methods that can reshape every layer (LoRA, full
fine-tuning) learn it anyway; prefix tuning, which can only steer attention, could not: measured on MiniLM +
Rotten Tomatoes (2,000 training snippets, 1,281 validation), prefix tuning reached 0.717 with [CLS] (128 prefixes,
pooler trained) and 0.767 with mean pooling (20 prefixes), full fine-tuning 0.753 and 0.778.

`mean` pooling swaps the encoder's pooler for a parameter-free masked mean of the last hidden states, fed to the
dropout + classifier that follow. The attention mask reaches it through a pre-hook on the encoder; a mask that
is longer than the sequence (prefix tuning prepends its virtual tokens' ones) is read from the right. The choice
is written into the model config (`peftkit_pooling`), and `apply_pooling` re-applies it when a folder saved from
such a model is loaded again.

Plain transformers cannot express this head, so the artifacts of a mean-pooled classifier say so where they go:
its adapter_config.json makes plain PEFT refuse it (`peftkit.methods.peft_config`), `peftkit merge` writes a
sentence-transformers folder whose loader pools the same way (`peftkit.inference.sentence_folder`), and
`peftkit export --format onnx` puts the mean inside the graph. docs/interop.md has the whole contract.
"""

from __future__ import annotations

import torch  # imported only where a model is loaded

from peftkit.errors import PeftkitError
from peftkit.models.decoder import is_decoder

POOLINGS = ("model", "mean")
CONFIG_KEY = "peftkit_pooling"


def check_pooling(pooling: str, *, task: str, settings: dict, config, source: str) -> None:
    """Refuse, before weights load, a `mean` pooling that cannot work: another task, a decoder, a trained pooler."""
    if pooling == "model":
        return
    if task != "classification":
        raise PeftkitError(
            f"model.pooling: mean applies to classification only (model.task is {task}). "
            f"Remove model.pooling."
        )
    if is_decoder(config):
        raise PeftkitError(
            f"model.pooling: mean needs a BERT-style encoder; {source} is a {config.model_type} decoder, "
            f"whose classifier reads the last real token. Remove model.pooling (or set it to model)."
        )
    if "pooler" in (settings.get("modules_to_save") or []):
        raise PeftkitError(
            "method.modules_to_save: 'pooler' has nothing to train under model.pooling: mean (the "
            "mean has no parameters; the [CLS] pooler is gone). Remove it from modules_to_save, or "
            "set model.pooling: model."
        )


def apply_pooling(model, pooling: str, *, source: str = "the model") -> None:
    """Give `model` (a `*ForSequenceClassification`) `pooling`, or the one recorded in its config if `mean`."""
    pooling = "mean" if getattr(model.config, CONFIG_KEY, None) == "mean" else pooling
    if pooling == "model":
        return
    if pooling not in POOLINGS:
        raise PeftkitError(f"model.pooling: unknown pooling '{pooling}'. Use one of: {', '.join(POOLINGS)}.")
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if body is None or getattr(body, "pooler", None) is None:
        raise PeftkitError(
            f"model.pooling: mean needs a BERT-style encoder whose classifier reads a pooler; {source} "
            f"({model.config.model_type}, {type(model).__name__}) has none. Remove model.pooling (or set it to model)."
        )
    if isinstance(body.pooler, MeanPooler):
        return
    body.pooler = MeanPooler()
    body.register_forward_pre_hook(body.pooler.capture_mask, with_kwargs=True)
    setattr(model.config, CONFIG_KEY, "mean")


class MeanPooler(torch.nn.Module):
    """Mean of the real tokens' hidden states (per the attention mask); no parameters."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def capture_mask(self, module, args, kwargs):
        """Forward pre-hook on the encoder: keep this call's attention mask (None: every position is real)."""
        self.mask = kwargs.get("attention_mask")

    def forward(self, hidden):
        mask = self.mask
        if mask is None or mask.dim() != 2:
            return hidden.mean(1)
        real = mask[:, -hidden.shape[1] :].to(hidden.dtype).unsqueeze(-1)
        return (hidden * real).sum(1) / real.sum(1).clamp(min=1.0)
