"""Guards that fail loudly when a dependency upgrade breaks something peftkit leans on.

Prefix tuning, which transformers 5.24 broke for PEFT 0.21, has its own guards in tests/methods/test_prefix.py.
Bottleneck adapters: peftkit adds `BOTTLENECK` to PEFT's closed `PeftType` enum and registers through
`peft.utils.register_peft_method` (peftkit/methods/bottleneck/register.py, the one place that does this).
"""

from __future__ import annotations

import json

import torch

from peftkit.methods.apply import apply_method
from peftkit.models.load import load_base_model, load_tokenizer
from peftkit.models.sources import resolve_source


def _model(folder):
    source = resolve_source(str(folder))
    tok = load_tokenizer(source)
    torch.manual_seed(0)
    model = load_base_model(
        source, task="classification", labels=["neg", "pos"], pad_token_id=tok.pad_token_id, device="cpu"
    )
    enc = dict(tok(["the film was good", "dull"], padding=True, return_tensors="pt"))
    enc.pop("token_type_ids", None)
    return model, enc


def test_bottleneck_route_into_peft(tiny_bert, tmp_path):
    """The enum extension + registration still work, and plain PEFT can reload a saved bottleneck adapter."""
    from peft import PeftModel, get_peft_model
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    from peftkit.methods.bottleneck import PEFT_TYPE, BottleneckConfig, BottleneckModel

    assert (
        PeftType("BOTTLENECK") is PEFT_TYPE
        and PeftType.BOTTLENECK is PEFT_TYPE
        and PEFT_TYPE in list(PeftType)
    )
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] is BottleneckConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] is BottleneckModel
    model, batch = _model(tiny_bert)
    model = get_peft_model(model, BottleneckConfig(task_type="SEQ_CLS", variant="houlsby"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    model.eval()
    logits = model(**batch).logits
    model.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK" and saved["variant"] == "houlsby"
    base, _ = _model(tiny_bert)
    again = PeftModel.from_pretrained(base, tmp_path / "a").eval()
    assert torch.allclose(again(**batch).logits, logits, atol=1e-6)


def test_bottleneck_starts_as_identity(tiny_llama):
    """Near-identity init: a fresh adapter (up-projection zero) leaves the base model's outputs unchanged."""
    model, batch = _model(tiny_llama)
    model.eval()
    with torch.no_grad():
        base_hidden = model.model(**batch).last_hidden_state
        for variant in ("houlsby", "pfeiffer", "parallel"):
            wrapped = apply_method(
                _model(tiny_llama)[0], name=variant, settings={}, task="classification"
            ).eval()
            assert torch.allclose(
                wrapped.base_model.model.model(**batch).last_hidden_state, base_hidden, atol=1e-6
            )


def test_bottleneck_adapters_swap_on_one_base(tiny_gpt2, tmp_path):
    """Two saved bottleneck adapters load side by side on one base; set_adapter switches between their outputs."""
    from peft import PeftModel

    expected = {}
    for i, variant in enumerate(("houlsby", "parallel")):
        model, batch = _model(tiny_gpt2)
        model = apply_method(model, name=variant, settings={"bottleneck_size": 4}, task="classification")
        torch.manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.2)
        model.eval()
        expected[variant] = model(**batch).logits
        model.save_pretrained(tmp_path / variant)
    base, batch = _model(tiny_gpt2)
    both = PeftModel.from_pretrained(base, tmp_path / "houlsby", adapter_name="houlsby")
    both.load_adapter(tmp_path / "parallel", adapter_name="parallel")
    both.eval()
    for variant in ("houlsby", "parallel", "houlsby"):
        both.set_adapter(variant)
        assert torch.allclose(both(**batch).logits, expected[variant], atol=1e-6), variant
