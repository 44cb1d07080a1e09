"""The method test table (PEFT TEST_CASES style): (method, settings) × tiny BERT / GPT-2 / Llama classifiers.

Each row checks: only adapter (and head) parameters train; every trainable tensor changes in training; save →
peftkit's load_adapter reproduces the logits (≤ 1e-6); merge gives the same logits (≤ 1e-5) where the method is
mergeable and a clear refusal where not; the trainable count matches the method's formula, computed here from
the base model's layer shapes (not from PEFT's parameters).
"""

from __future__ import annotations

import re

import pytest
import torch

from peftkit.adapters.bundle import load_adapter, save_adapter
from peftkit.errors import PeftkitError
from peftkit.methods.apply import apply_method
from peftkit.methods.checks import check_method_for_model, model_skeleton
from peftkit.methods.registry import merge_refusal_reason
from peftkit.models.load import load_base_model, load_tokenizer, tokenizer_hash
from peftkit.models.sources import content_hash, resolve_source
from peftkit.training.loop import adalora_update

LABELS = ["neg", "pos"]
ARCHS = ["bert", "gpt2", "llama"]
CONV1D_REFUSED = {"loha", "lokr", "oft", "boft"}

# (method, settings). Settings are the recipe's `method` block (minus name).
TEST_CASES = [
    ("lora", {"r": 4}),
    ("dora", {"r": 4}),
    ("rslora", {"r": 4, "lora_dropout": 0.0}),
    ("adalora", {"init_r": 4, "target_r": 2}),
    ("ia3", {}),
    ("loha", {"r": 2}),
    ("vera", {"r": 4}),
    ("ln_tuning", {}),
    ("prompt_tuning", {"num_virtual_tokens": 4}),
    ("p_tuning", {"num_virtual_tokens": 4, "encoder_hidden_size": 8}),
    ("prefix_tuning", {"num_virtual_tokens": 4}),
    ("houlsby", {"reduction_factor": 8}),
    ("pfeiffer", {"reduction_factor": 8}),
    ("parallel", {"bottleneck_size": 4, "non_linearity": "gelu", "scaling": 2.0}),
    ("pfeiffer", {"bottleneck_size": 4, "layers_to_transform": [1]}),
]


def _ids(case):
    name, settings = case
    return name + ("-" + "-".join(f"{k}={v}" for k, v in settings.items()) if settings else "")


@pytest.fixture(scope="module")
def folders(tiny_bert, tiny_gpt2, tiny_llama):
    return {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def _base(folder):
    source = resolve_source(str(folder))
    tok = load_tokenizer(source)
    torch.manual_seed(0)
    model = load_base_model(
        source, task="classification", labels=LABELS, pad_token_id=tok.pad_token_id, device="cpu"
    )
    return source, tok, model


def _batch(tok):
    enc = tok(
        ["the film was good", "a dull and boring plot is bad", "great"], padding=True, return_tensors="pt"
    )
    enc.pop("token_type_ids", None)
    return dict(enc)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _linear_shapes(model, targets):
    """(in, out) of every module PEFT's matching rules select (list: exact or suffix match; str: full regex)."""
    from transformers.pytorch_utils import Conv1D

    out = []
    for name, m in model.named_modules():
        hit = (
            re.fullmatch(targets, name)
            if isinstance(targets, str)
            else any(name == t or name.endswith("." + t) for t in targets)
        )
        if not hit:
            continue
        if isinstance(m, torch.nn.Linear):
            out.append((name, m.in_features, m.out_features))
        elif isinstance(m, Conv1D):
            out.append((name, m.weight.shape[0], m.weight.shape[1]))
        else:
            out.append((name, None, None))
    return out


def expected_trainable(name, settings, base, peft_config) -> int:
    """The method's parameter formula on the base model's shapes, plus the classification head."""
    cfg = base.config
    h = cfg.hidden_size
    layers = cfg.num_hidden_layers
    head = h * len(LABELS) + (len(LABELS) if cfg.model_type == "bert" else 0)
    targets = getattr(peft_config, "target_modules", None)
    shapes = _linear_shapes(base, targets) if targets else []
    r = settings.get("r")
    if name in {"lora", "rslora"}:
        n = sum(r * (i + o) for _, i, o in shapes)
    elif name == "dora":
        n = sum(r * (i + o) + o for _, i, o in shapes)  # + magnitude vector
    elif name == "adalora":
        n = sum(settings["init_r"] * (i + o + 1) for _, i, o in shapes)  # A, B and the singular values E
    elif name == "loha":
        n = sum(2 * r * (i + o) for _, i, o in shapes)
    elif name == "vera":
        n = sum(r + o for _, i, o in shapes)  # lambda_d, lambda_b (the random projections are frozen)
    elif name == "ia3":
        ff = peft_config.feedforward_modules
        n = sum(i if any(nm == f or nm.endswith("." + f) for f in ff) else o for nm, i, o in shapes)
    elif name == "ln_tuning":
        n = sum(p.numel() for nm, _, _ in shapes for p in base.get_submodule(nm).parameters())
    elif name == "prompt_tuning":
        n = settings["num_virtual_tokens"] * h
    elif name == "p_tuning":
        v, e = settings["num_virtual_tokens"], settings["encoder_hidden_size"]
        n = v * h + (h * e + e) + (e * e + e) + (e * h + h)  # embedding + the MLP reparametrisation
    elif name == "prefix_tuning":
        kv = (
            h
            // cfg.num_attention_heads
            * (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        )
        n = settings["num_virtual_tokens"] * layers * 2 * kv
    else:  # bottleneck variants: (down h→b + bias) + (up b→h + bias) per adapter
        b = settings.get("bottleneck_size") or h // settings["reduction_factor"]
        per_layer = 2 if name == "houlsby" else 1
        n_layers = len(settings.get("layers_to_transform") or range(layers))
        n = per_layer * n_layers * (2 * h * b + b + h)
    return n + head


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", TEST_CASES, ids=[_ids(c) for c in TEST_CASES])
def test_method_row(case, arch, folders, tmp_path):
    name, settings = case
    folder = folders[arch]
    source, tok, base = _base(folder)
    if arch == "gpt2" and name in CONV1D_REFUSED:
        with pytest.raises(PeftkitError, match="does not support transformers' Conv1D"):
            check_method_for_model(name, settings, base.config, "classification")
        return
    check_method_for_model(name, settings, base.config, "classification")  # passes the pre-load checks
    base_params = {id(p) for p in base.parameters()}
    model = apply_method(base, name=name, settings=settings, task="classification", total_steps=4)

    # 1. Only adapter and head parameters train; none of the base model's own tensors do.
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert not [n for n, p in trainable.items() if id(p) in base_params]
    head = r"(classifier|score)(\.modules_to_save\.default)?\.weight"
    assert any(re.search(head, n) for n in trainable), "head must train"
    skeleton = model_skeleton(
        base.config, "classification"
    )  # unwrapped shapes: get_peft_model wraps `base` in place
    assert sum(p.numel() for p in trainable.values()) == expected_trainable(
        name, settings, skeleton, model.peft_config["default"]
    )

    # 2. Every trainable tensor changes. Zero-initialised halves (LoRA's B, a bottleneck's up-projection, AdaLoRA's
    # singular values) give their partner a zero gradient on step 1, so train two steps (PEFT's tests do the same).
    before = {n: p.detach().clone() for n, p in trainable.items()}
    batch = _batch(tok)
    labels = torch.tensor([1, 0, 1])
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    for step in range(2):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        adalora_update(model, step)  # peftkit's training-loop hook, in the loop's order
        opt.zero_grad()
    unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), before[n])]
    assert not unchanged

    # 3. Save → load through peftkit reproduces the logits.
    logits = _logits(model, batch)
    meta = {
        "base_model": {"source": str(folder), "content_hash": content_hash(source), "model_type": arch},
        "tokenizer_hash": tokenizer_hash(tok),
        "task": "classification",
        "labels": LABELS,
        "method": name,
    }
    save_adapter(model, tmp_path / "adapter", meta)
    loaded = load_adapter(tmp_path / "adapter", device="cpu")
    assert torch.allclose(_logits(loaded.model, batch), logits, atol=1e-6, rtol=0)
    if not loaded.model.peft_config["default"].is_prompt_learning:
        # PEFT 0.21.2's disable_adapter() fails on prompt-learning classifiers (it patches
        # prepare_inputs_for_generation, which classifiers lack); every other method must be switchable off.
        with loaded.model.disable_adapter():
            assert not torch.allclose(_logits(loaded.model, batch), logits, atol=1e-4), (
                "disabling must change outputs"
            )

    # 4. Merge: same logits where mergeable, a refusal with the reason where not.
    reason = merge_refusal_reason(name)
    if reason is None:
        merged = loaded.model.merge_and_unload()
        assert torch.allclose(_logits(merged, batch), logits, atol=1e-5, rtol=0)
    else:
        assert "cannot be merged" in reason
        if name in {"houlsby", "pfeiffer", "parallel"}:
            assert "non-linearity" in reason
            with pytest.raises(PeftkitError, match="non-linearity"):
                loaded.model.merge_and_unload()
