"""CPU training speed-ups change no results. The cheaper dropout is dropout, on both back ends (compiled kernels,
pure torch): keep rate 1 − p, survivors scaled by 1/(1 − p), gradient through the same mask, identity in eval,
reproducible under a seed, used by every dropout of a trained model. The fused AdamW makes the same updates. (The
lean LoRA forward: methods/; the kernels themselves: test_cpu_kernels.py.)"""

import pytest
import torch

from peftkit.cpu.dropout import keep_mask, use_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_and_independence(p, mask_backend):
    torch.manual_seed(0)
    mask = keep_mask((400, 1000), p)
    values = torch.unique(mask).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    keep = (mask > 0).float()
    assert abs(keep.mean().item() - (1 - p)) < 0.003  # 400k draws: ~5 standard errors
    for lane in range(4):  # each 16-bit lane of a 64-bit draw (100k elements each: ~5 standard errors)
        assert abs(keep[:, lane::4].mean().item() - (1 - p)) < 0.006, lane
    # neighbours (same 64-bit draw) and rows are uncorrelated
    a, b = keep[:, 0::4].flatten(), keep[:, 1::4].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.01


def test_forward_backward_eval_and_seed(mask_backend):
    layer = torch.nn.Dropout(0.2)
    assert use_cpu_dropout(torch.nn.Sequential(layer)) == 1
    x = torch.randn(64, 50, requires_grad=True)
    torch.manual_seed(3)
    y = layer(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    assert abs(kept.float().mean().item() - 0.8) < 0.03
    saved = (
        y.grad_fn.saved_tensors
    )  # kernels: nothing (backward recomputes the mask); torch: 1 byte per element
    assert saved == () if mask_backend == "kernels" else [t.dtype for t in saved] == [torch.bool]
    y.sum().backward()
    torch.manual_seed(3)
    assert torch.equal(x.grad, keep_mask(x.shape, 0.2))  # the gradient goes through the very same mask values
    torch.manual_seed(3)
    assert torch.equal(layer(x), y)  # torch's generator: seeding (and checkpointed RNG state) reproduces it
    layer.eval()
    assert torch.equal(layer(x), x)


def test_training_uses_it_on_every_dropout(tiny_bert, tiny_card, tmp_path, monkeypatch, mask_backend):
    from peftkit.cli import main
    from peftkit.cpu import dropout
    from peftkit.cpu import kernels as cpu_kernels
    from tests.helpers import write_recipe

    calls, torch_dropouts = [], []
    real, real_key, real_dropout = dropout.keep_mask, cpu_kernels.draw_key, torch.nn.functional.dropout
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, p: calls.append(p) or real(shape, p))
    monkeypatch.setattr(cpu_kernels, "draw_key", lambda: calls.append("key") or real_key())
    monkeypatch.setattr(
        torch.nn.functional,
        "dropout",
        lambda x, p=0.5, training=True, inplace=False: (
            torch_dropouts.append(p) if training and p else None or real_dropout(x, p, training, inplace)
        ),
    )
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        method={"name": "lora", "r": 4, "lora_dropout": 0.3},
        train={"epochs": 1, "batch_size": 8, "max_steps": 2, "output_dir": str(tmp_path / "run")},
    )
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert torch_dropouts == []  # no training dropout went to torch's own
    if mask_backend == "torch":
        assert 0.3 in calls and 0.1 in calls  # LoRA's dropout and BERT's own hidden dropout
    else:  # one key per mask; per step: 2 layers x (6 LoRA layers: q, k, v, 3 dense; attention; 2 hidden) +
        # the pooler's LoRA layer + embeddings + classifier = 21, for 2 steps
        assert calls.count("key") == 2 * (2 * 9 + 3) and 0.3 not in calls


def test_fused_cpu_adamw_gives_the_same_updates():
    """build_optimizer picks torch's fused AdamW on CPU: the same update as the per-parameter loop."""
    from peftkit.training.recipe import build_optimizer

    torch.manual_seed(0)
    models = [torch.nn.Linear(20, 5), torch.nn.Linear(20, 5)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], "adamw", learning_rate=1e-2, weight_decay=0.01)
    plain = torch.optim.AdamW(models[1].parameters(), lr=1e-2, weight_decay=0.01)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(8, 20)
    for _ in range(5):
        for model, opt in zip(models, (fused, plain), strict=True):
            model(x).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    assert not torch.equal(models[0].weight, torch.zeros_like(models[0].weight))
    assert torch.allclose(models[0].weight, models[1].weight, atol=1e-6)
