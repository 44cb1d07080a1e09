"""Quantized training on CPU (bitsandbytes NF4 / int8): the base is quantized, the head is not and trains."""

from __future__ import annotations

import json

import pytest
import torch

from peftkit.errors import PeftkitError
from peftkit.methods.apply import apply_method
from peftkit.models.load import load_base_model
from peftkit.models.quant import bnb_config, quantized_modules
from peftkit.models.sources import resolve_source
from tests.helpers import train_tiny


def _quantized_step(model_dir, bits: int, optimizer: str = "adamw"):
    from peft import prepare_model_for_kbit_training

    from peftkit.training.recipe import build_optimizer

    model = load_base_model(
        resolve_source(str(model_dir)),
        task="classification",
        labels=["neg", "pos"],
        pad_token_id=5,
        device="cpu",
        quantization={"bits": bits, "quant_type": "nf4"},
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = apply_method(model, name="lora", settings={"r": 4}, task="classification")
    opt = build_optimizer(model, optimizer, learning_rate=0.01, weight_decay=0.0)
    head = next(
        m
        for n, m in model.named_modules()
        if n.endswith(("classifier.modules_to_save.default", "score.modules_to_save.default"))
    )
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    before_head, before_lora = head.weight.detach().clone(), lora.detach().clone()
    ids = torch.tensor([[2, 6, 20, 3], [2, 14, 21, 3]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1, 0]))
    out.loss.backward()
    opt.step()
    return model, head, before_head, lora, before_lora


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_gpt2"])
def test_quantized_train_step_keeps_head_fp32_and_training(arch, bits, request):
    model, head, before_head, lora, before_lora = _quantized_step(request.getfixturevalue(arch), bits)
    quantized = quantized_modules(model)
    assert quantized, "the base should be quantized"
    assert not [n for n in quantized if "classifier" in n or ".score" in n or "pooler" in n]
    if (
        arch == "tiny_bert"
    ):  # the pooler feeds the head one vector per sequence: it stays float32 (and LoRA-able)
        pooler = model.get_submodule("base_model.model.bert.pooler.dense")
        assert pooler.weight.dtype == torch.float32 and not hasattr(pooler.weight, "quant_state")
        assert any(".encoder." in n for n in quantized)  # while the encoder's layers are quantized
    assert set(quantized.values()) == {"Linear4bit" if bits == 4 else "Linear8bitLt"}
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32 and head.weight.requires_grad
    assert not torch.equal(head.weight, before_head), "the head must train"
    assert not torch.equal(lora, before_lora), "LoRA must train"


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit"])  # paged falls back to plain on CPU
def test_8bit_optimizer_step(tiny_bert, optimizer):
    _, head, before_head, lora, before_lora = _quantized_step(tiny_bert, 4, optimizer=optimizer)
    assert not torch.equal(head.weight, before_head) and not torch.equal(lora, before_lora)


def test_compute_dtype_auto_is_fp32_on_cpu_and_bf16_refused():
    assert bnb_config(task="classification", device="cpu").bnb_4bit_compute_dtype == torch.float32
    assert bnb_config(task="classification", device="cpu").llm_int8_skip_modules == [
        "classifier",
        "score",
        "pooler.dense",
        "pre_classifier",
        "lm_head",
    ]
    with pytest.raises(PeftkitError, match="compute_dtype: bfloat16 on CPU"):
        bnb_config(task="classification", device="cpu", compute_dtype="bfloat16")


def test_qlora_recipe_trains_and_records_quantization(tiny_bert, tiny_card, tmp_path):
    adapter = train_tiny(
        tmp_path, "q", model=tiny_bert, card=tiny_card, quantization={"bits": 4, "quant_type": "nf4"}
    )
    meta = json.loads((adapter / "peftkit_adapter.json").read_text())
    assert meta["quantization"]["bits"] == 4 and meta["quantization"]["quant_type"] == "nf4"
    metrics = json.loads((adapter.parent / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9


def test_shipped_qlora_recipe_validates():
    from peftkit.recipe import load_recipe

    recipe = load_recipe("recipes/minilm-qlora-rotten_tomatoes.yaml")
    assert recipe.quantization.bits == 4 and recipe.quantization.quant_type == "nf4"
    assert recipe.method.name == "lora"
