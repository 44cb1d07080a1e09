"""GPT-style decoders: positions and classification pooling that do not depend on padding.

transformers' `*ForSequenceClassification` decoders pool the rightmost token whose id is not the pad id, and
number positions 0, 1, 2, ... whatever the attention mask says. That goes wrong in three ways:
- pad == eos (GPT-2, SmolLM2) and a text that ends in a real eos: the eos is taken for padding and the token
  before it is pooled;
- prompt-learning methods (prompt tuning, p-tuning) call the model with `inputs_embeds`, and then the last
  position is pooled, which is a pad under right padding;
- left padding shifts every position by the pad count, which changes GPT-2's absolute position embeddings.

Two hooks on the model's transformer fix all three from the attention mask alone: a pre-hook numbers
positions by counting real tokens (`cumsum(mask) - 1`), and, for classification, a hook after the
transformer copies the hidden state of the last real token to every position, so whichever position the
head pools, it reads the right one. Batched and one-by-one predictions then agree with any padding side.
"""

from __future__ import annotations

HOOKED = "_peftkit_decoder_hooks"
DECODER_TYPES = (
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "gemma2",
    "phi",
    "phi3",
    "gpt_neox",
    "opt",
    "smollm3",
)


def is_decoder(config) -> bool:
    """GPT-style model (pools the last real token; needs a pad token)."""
    return config.model_type in DECODER_TYPES or bool(getattr(config, "is_decoder", False))


def backbone(model):
    """The transformer inside a `*ForSequenceClassification` / `*ForCausalLM` model (`model.transformer`, ...)."""
    return getattr(model, model.base_model_prefix)


def install_decoder_hooks(model, *, pool_last_token: bool) -> None:
    """Add the position pre-hook (always) and the last-real-token pooling hook (`pool_last_token`) once."""
    body = backbone(model)
    if getattr(body, HOOKED, False):
        return
    body.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
    if pool_last_token:
        body.register_forward_hook(_broadcast_last_real_token, with_kwargs=True)
    setattr(body, HOOKED, True)


def _sequence_length(args, kwargs) -> int | None:
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    return None if ids is None else ids.shape[1]


def _positions_from_mask(module, args, kwargs):
    """position_ids = number of real tokens before each one; the mask may also cover cached/prefix tokens."""
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is not None or mask is None or mask.dim() != 2:
        return None
    length = _sequence_length(args, kwargs)
    if length is None:
        return None
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    return args, {**kwargs, "position_ids": positions}


def _broadcast_last_real_token(module, args, kwargs, output):
    """Give every position the hidden state of the row's last real token (per the attention mask)."""
    import torch

    hidden = output[0]
    batch, length = hidden.shape[:2]
    mask = kwargs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        last = torch.full((batch,), length - 1, device=hidden.device)
    else:
        real = mask[:, -length:].to(hidden.device).long()
        last = (torch.arange(length, device=hidden.device) * real).argmax(-1)
    pooled = hidden[torch.arange(batch, device=hidden.device), last][:, None, :].expand_as(hidden)
    if isinstance(output, tuple):
        return (pooled, *output[1:])
    output["last_hidden_state"] = pooled
    return output
