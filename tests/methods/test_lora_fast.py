"""The lean LoRA forward gives PEFT's numbers: outputs and gradients, train (dropout on) and eval, and falls back."""

import pytest
import torch

from peftkit.cpu.lora import use_fast_lora


def _model(folder, dropout=0.2, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=3, pad_token_id=0)
    config = LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules="all-linear", lora_alpha=8, lora_dropout=dropout, **lora
    )
    model = get_peft_model(base, config)
    for name, p in model.named_parameters():  # non-zero B so the adapter changes the output
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model


def _run(model, train: bool):
    model.train(train)
    torch.manual_seed(1)  # same dropout masks in both runs
    ids = torch.randint(3, model.config.vocab_size, (3, 9))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states[
        -1
    ]
    grads = {}
    if train:
        out.float().pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("train", [True, False])
def test_same_outputs_and_grads_as_peft(family, train, tiny_bert, tiny_gpt2):
    model = _model(tiny_bert if family == "bert" else tiny_gpt2)
    ref_out, ref_grads = _run(model, train)
    assert use_fast_lora(model) >= 4
    out, grads = _run(model, train)
    assert torch.allclose(out, ref_out, atol=1e-5), (out - ref_out).abs().max()
    assert ref_out.abs().max() > 0
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4), name
    assert not train or any("lora_A" in n for n in grads)


def test_falls_back_for_dora_disabled_and_merged(tiny_bert):
    model = _model(tiny_bert, use_dora=True)
    ref, _ = _run(model, False)
    use_fast_lora(model)
    assert torch.allclose(_run(model, False)[0], ref, atol=1e-6)  # DoRA: PEFT's own variant forward
    plain = _model(tiny_bert)
    use_fast_lora(plain)
    with plain.disable_adapter():
        off, _ = _run(plain, False)
    on, _ = _run(plain, False)
    assert not torch.allclose(on, off, atol=1e-4)  # the adapter is really applied, and really switched off
    plain.merge_adapter()
    assert torch.allclose(_run(plain, False)[0], on, atol=1e-5)  # merged: not added twice


@pytest.mark.parametrize("dropout", [0.2, 0.0])
def test_fused_training_function_gives_the_same_run(dropout, tiny_bert, mask_backend):
    """On CPU with peftkit's dropout, training goes through one autograd function per layer: same masks (same
    generator draws, on either back end), so the same logits and gradients as PEFT's layer-by-layer graph; the
    frozen embeddings' input gradient is never computed."""
    from peftkit.cpu.dropout import use_cpu_dropout

    results = []
    for fused in (False, True):
        model = _model(tiny_bert, dropout)
        if fused:
            use_fast_lora(model)
        use_cpu_dropout(model)
        model.train()
        torch.manual_seed(1)
        ids = torch.randint(3, model.config.vocab_size, (3, 9))
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        query = model.base_model.model.bert.encoder.layer[0].attention.self.query
        x = torch.randn(2, 3, query.in_features)
        results.append((out.logits.detach(), grads, type(query(x).grad_fn).__name__))
    (ref_logits, ref_grads, ref_node), (logits, grads, node) = results
    assert node == "LoraLinearBackward" and ref_node != node  # the fused path really ran, and only when asked
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5), name


def test_fused_function_falls_back_when_the_base_trains(tiny_bert):
    from peftkit.cpu.dropout import use_cpu_dropout

    model = _model(tiny_bert)
    use_fast_lora(model)
    use_cpu_dropout(model)
    model.train()
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    query.base_layer.weight.requires_grad_(True)
    query(torch.randn(2, 3, query.in_features)).sum().backward()
    assert query.base_layer.weight.grad is not None  # PEFT's graph, which trains the base weight too


def test_fused_function_skips_the_input_gradient_nobody_needs(tiny_bert, monkeypatch, mask_backend):
    """Above frozen embeddings the layer input needs no gradient: backward then skips the base layer's input-gradient
    matmul (kernels: 0 torch matmuls instead of 1, the rank-r products are in the kernel; torch: 3 instead of 5)."""
    from peftkit.cpu.dropout import use_cpu_dropout

    model = _model(tiny_bert)
    use_fast_lora(model)
    use_cpu_dropout(model)
    model.train()
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: calls.append(1) or real_mm(*a))
    counts = []
    for needs in (True, False):
        out = query(torch.randn(2, 3, query.in_features, requires_grad=needs))
        calls.clear()
        out.sum().backward()
        counts.append(len(calls))
    assert counts == ([1, 0] if mask_backend == "kernels" else [5, 3])
