"""`peftkit generate`: sample a continuation of a prompt from a causal-LM adapter on its base model."""

from __future__ import annotations

from peftkit.errors import PeftkitError


def generate_text(
    adapter: str,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    loaded=None,
    allow_unverified: bool = False,
    base_source: str | None = None,
) -> str:
    """The generated continuation of `prompt` (without the prompt). `temperature` 0 means greedy decoding.
    `allow_unverified`, `base_source`: as for `load_adapter`."""
    import torch

    from peftkit.adapters.bundle import load_adapter

    if max_new_tokens < 1:
        raise PeftkitError(
            f"--max-new-tokens: {max_new_tokens} is not a positive number of tokens; give 1 or more."
        )
    if temperature < 0:
        raise PeftkitError(
            f"--temperature: {temperature} is negative; use 0 for greedy decoding or a value > 0."
        )
    loaded = loaded or load_adapter(adapter, allow_unverified=allow_unverified, base_source=base_source)
    if loaded.meta["task"] != "causal_lm":
        raise PeftkitError(
            f"generate: adapter '{adapter}' is a {loaded.meta['task']} adapter; generate needs a "
            f"causal_lm adapter (use `peftkit predict` for classification)."
        )
    if loaded.meta.get("method") == "prefix_tuning":
        from peftkit.methods.prefix import peft_generation_drops_prefix

        if peft_generation_drops_prefix():
            raise PeftkitError(
                f"generate: adapter '{adapter}' is a prefix_tuning adapter, and with transformers 5.24 or later and "
                f"peft 0.21 PEFT's generation drops the learned prefixes (the text would come from the base model "
                f"alone). Generate with transformers 5.23 (pip install transformers==5.23.0), or train a LoRA "
                f"adapter; training and `peftkit eval` (perplexity) are not affected."
            )
    tok, model = loaded.tokenizer, loaded.model
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    if not ids:  # an empty prompt starts from the start-of-text token
        ids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    if limit and len(ids) + max_new_tokens > limit:
        raise PeftkitError(
            f"--max-new-tokens: the prompt ({len(ids)} tokens) plus {max_new_tokens} new tokens is "
            f"more than the model's {limit} positions. Lower --max-new-tokens or shorten the prompt."
        )
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **sampling,
        )
    # Decoding the whole sequence and cutting the prompt off keeps the space between them, which decoding the
    # new tokens alone loses for word-level and sentencepiece tokenizers.
    full = tok.decode(out[0], skip_special_tokens=True)
    prefix = tok.decode(ids, skip_special_tokens=True)
    return (
        full[len(prefix) :]
        if full.startswith(prefix)
        else tok.decode(out[0, len(ids) :], skip_special_tokens=True)
    )
