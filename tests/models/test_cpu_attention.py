"""The lean training attention computes SDPA's attention with peftkit's dropout mask, and only while training."""

import json

import pytest
import torch

from peftkit.cpu.attention import NAME, _function, use_cpu_attention
from peftkit.cpu.dropout import keep_mask


@pytest.mark.parametrize("mask_kind", ["bool", "float", None])
@pytest.mark.parametrize("d, layout", [(4, "contiguous"), (32, "transformers"), (8, "transformers")])
def test_same_numbers_as_softmax_dropout_matmul_with_the_same_mask(mask_kind, d, layout, mask_backend):
    """Head sizes 4 (plain loops), 8 and 32 (AVX2 rows); q/k/v either contiguous or, as transformers passes them,
    (batch, heads, seq, dim) views of (batch, seq, heads·dim) projections."""
    torch.manual_seed(0)
    b, h, sq, sk, p = (
        2,
        3,
        5,
        11,
        0.3,
    )  # sk > sq: prefix tuning's longer keys; 11 keys: one block of 8 and a tail
    if layout == "contiguous":
        q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for s in (sq, sk, sk))
    else:
        q, k, v = (
            torch.randn(b, s, h * d).view(b, s, h, d).transpose(1, 2).requires_grad_(True)
            for s in (sq, sk, sk)
        )
    real = torch.ones(b, 1, sq, sk, dtype=torch.bool)
    real[0, ..., 5:] = False  # padding keys of the first sequence
    mask = {"bool": real, "float": torch.zeros(b, 1, sq, sk).masked_fill(~real, -1e9), None: None}[mask_kind]
    grad = torch.randn(b, sq, h, d)

    torch.manual_seed(1)
    out = _function().apply(q, k, v, mask, 0.5, p)
    out.backward(grad)
    got = [out.detach()] + [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None

    torch.manual_seed(1)
    scores = q @ k.transpose(-2, -1) * 0.5
    if mask_kind is not None:
        scores = scores.masked_fill(~real, float("-inf"))
    probs = torch.softmax(scores, -1) * keep_mask((b, h, sq, sk), p)
    ref = (probs @ v).transpose(1, 2)
    ref.backward(grad)
    want = [ref.detach()] + [t.grad for t in (q, k, v)]
    for name, a, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert torch.allclose(a, w, atol=1e-5), (name, (a - w).abs().max())
    assert got[0].abs().max() > 0 and got[3].abs().max() > 0
    assert torch.isfinite(got[1]).all() and got[1].abs().max() > 0


def _bert(folder):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=2, attn_implementation="sdpa"
    )


def test_used_in_training_only_and_never_saved(tiny_bert, monkeypatch, mask_backend):
    model, plain = _bert(tiny_bert), _bert(tiny_bert)
    assert use_cpu_attention(model) and model.config._attn_implementation == NAME
    ids = torch.randint(3, model.config.vocab_size, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    model.eval()
    plain.eval()
    with torch.no_grad():  # eval: SDPA itself, the same logits
        assert torch.allclose(
            model(input_ids=ids, attention_mask=mask).logits,
            plain(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )
    model.train()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert calls == []  # training with dropout: the lean function, not SDPA
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert calls  # eval goes back to SDPA
    assert NAME not in json.dumps(model.config.to_dict())  # a saved config never names it


def test_decoders_and_other_attention_are_left_alone(tiny_gpt2, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    gpt2 = AutoModelForSequenceClassification.from_pretrained(str(tiny_gpt2), num_labels=2)
    assert not use_cpu_attention(gpt2) and gpt2.config._attn_implementation != NAME
    eager = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=2, attn_implementation="eager"
    )
    assert not use_cpu_attention(eager) and eager.config._attn_implementation == "eager"
