"""Method × model refusals before any weights load: `peftkit validate` and `peftkit train` give the same words,
exit 2, and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftkit.cli import main
from tests.helpers import write_recipe

# `validate` checks the card against its data, so it needs a card with counts and checksum: the shipped one.
RT_CARD = Path(__file__).resolve().parents[2] / "data_cards" / "rotten_tomatoes.md"

CASES = [
    # (id, model fixture, method block, train block, words the message must contain)
    (
        "loha on Conv1D",
        "tiny_gpt2",
        {"name": "loha", "r": 2},
        {},
        ["loha does not support transformers' Conv1D", "c_attn", "target_modules"],
    ),
    ("oft on Conv1D", "tiny_gpt2", {"name": "oft"}, {}, ["oft does not support transformers' Conv1D"]),
    (
        "target matches nothing",
        "tiny_bert",
        {"name": "lora", "target_modules": ["quary", "value"]},
        {},
        ["'quary' matches no module", "Did you mean 'query'", "layer names"],
    ),
    (
        "regex matches nothing",
        "tiny_llama",
        {"name": "pfeiffer", "target_modules": r".*\.mlp\.nope"},
        {},
        ["matches no module", "down_proj"],
    ),
    (
        "prefix + checkpointing",
        "tiny_bert",
        {"name": "prefix_tuning"},
        {"gradient_checkpointing": True},
        ["prefix_tuning cannot be combined", "gradient_checkpointing: false"],
    ),
    ("rank zero", "tiny_bert", {"name": "lora", "r": 0}, {}, ["method.r: 0", "1 or more"]),
    (
        "reduction factor too big",
        "tiny_bert",
        {"name": "houlsby", "reduction_factor": 64},
        {},
        ["method.reduction_factor: 64", "hidden size (32)"],
    ),
    (
        "unknown variant",
        "tiny_bert",
        {"name": "bottleneck", "variant": "sideways"},
        {},
        ["method.variant", "sideways"],
    ),
    (
        "layer out of range",
        "tiny_gpt2",
        {"name": "pfeiffer", "layers_to_transform": [1, 5]},
        {},
        ["method.layers_to_transform: [5]", "layers 0–1"],
    ),
    (
        "preset contradicted",
        "tiny_bert",
        {"name": "houlsby", "variant": "parallel"},
        {},
        ["method.variant", "'houlsby' fixes variant: 'houlsby'"],
    ),
    (
        "adalora schedule",
        "tiny_bert",
        {"name": "adalora", "tinit": 20000},
        {},
        ["PEFT refuses these adalora settings", "tinit"],
    ),
]


# `train` runs the same checks (one function); a few cases prove it refuses before writing anything.
PAIRS = [("validate", c) for c in CASES] + [
    ("train", c)
    for c in CASES
    if c[0] in {"loha on Conv1D", "prefix + checkpointing", "reduction factor too big"}
]


@pytest.mark.parametrize("command,case", PAIRS, ids=[f"{cmd}-{c[0]}" for cmd, c in PAIRS])
def test_refused_before_loading(case, command, request, tiny_card, tmp_path, capsys):
    _, fixture, method, train, words = case
    out = tmp_path / "run"
    model = request.getfixturevalue(fixture)
    capsys.readouterr()  # drop the fixture's progress output
    card = RT_CARD if command == "validate" else tiny_card
    recipe = write_recipe(tmp_path / "r.yaml", model=model, card=card, out=out, method=method, train=train)
    argv = [command, str(recipe)] + (["--no-progress"] if command == "train" else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("peftkit: error: ") and "Traceback" not in err
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    assert not out.exists()


def test_conv1d_list_matches_peft(tiny_gpt2):
    """The registry's `conv1d` facts are a probe of PEFT itself: an allowed method wraps Conv1D, a refused one
    really fails there."""
    from peft import get_peft_model

    from peftkit.methods.apply import build_peft_config
    from peftkit.methods.registry import get_method
    from peftkit.models.load import load_base_model
    from peftkit.models.sources import resolve_source

    def wrap(name):
        model = load_base_model(
            resolve_source(str(tiny_gpt2)),
            task="classification",
            labels=["a", "b"],
            pad_token_id=5,
            device="cpu",
        )
        settings = {} if name == "boft" else {"r": 2}
        return get_peft_model(
            model, build_peft_config(name, settings, task="classification", model_type="gpt2")
        )

    assert get_method("lora").conv1d and get_method("vera").conv1d
    wrap("vera")
    for name in ("loha", "lokr", "boft"):
        assert not get_method(name).conv1d
        with pytest.raises((TypeError, ValueError, NotImplementedError)):
            wrap(name)


def test_validate_accepts_bottleneck_and_prefix(tiny_bert, tmp_path, capsys):
    for method in (
        {"name": "houlsby", "reduction_factor": 8},
        {"name": "prefix_tuning", "num_virtual_tokens": 4},
    ):
        recipe = write_recipe(
            tmp_path / "r.yaml", model=tiny_bert, card=RT_CARD, out=tmp_path / "run", method=method
        )
        assert main(["validate", str(recipe)]) == 0
        assert "OK" in capsys.readouterr().out
