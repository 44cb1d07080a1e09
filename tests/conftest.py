"""Shared fixtures: tiny models built in-process from configs, a tiny tokenizer, tiny data cards. No network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import FILLER, NEGATIVE, POSITIVE, VOCAB, make_texts, write_card, write_recipe  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # Tiny models gain nothing from threads, and two threaded processes on 2 cores slow each other down badly.
    import torch

    torch.set_num_threads(1)


def _pretrain(model, tokenizer, steps: int = 60) -> None:
    """A few full fine-tuning steps on the tiny task, so the frozen base 'knows' the words as a pretrained one would.

    Only the encoder is saved: the head a test trains is new. A random frozen base gives LoRA little to work with.
    """
    import torch

    rows = make_texts(160, seed=123)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        chunk = [rows[(step * 16 + i) % len(rows)] for i in range(16)]
        batch = tokenizer([t for t, _ in chunk], padding=True, return_tensors="pt")
        labels = torch.tensor([1 if lab == "pos" else 0 for _, lab in chunk])
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build_tiny_bert(folder: Path, *, hidden: int = 32, layers: int = 2) -> Path:
    """A 2-layer BERT (random weights) and a word-piece tokenizer over VOCAB, saved as a transformers folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    _pretrain(model, tok)
    model.bert.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _word_tokenizer(eos: str | None = "<eos>", pad: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token=eos, pad_token=pad)


def build_tiny_decoder(
    folder: Path, arch: str = "gpt2", *, hidden: int = 32, eos: str | None = "<eos>"
) -> Path:
    """A 2-layer GPT-2 or Llama (random weights) with a word-level tokenizer that has eos but no pad token."""
    import torch
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    folder.mkdir(parents=True, exist_ok=True)
    eos_id = VOCAB.index(eos) if eos else None
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(VOCAB),
            n_embd=hidden,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
        GPT2Model(cfg).save_pretrained(folder)
    else:
        cfg = LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
        LlamaModel(cfg).save_pretrained(folder)
    _word_tokenizer(eos=eos).save_pretrained(folder)
    return folder


def build_pretrained_decoder(folder: Path, arch: str = "gpt2", *, steps: int = 150) -> Path:
    """`build_tiny_decoder` plus a few full language-modelling steps on make_texts sentences, then `_pretrain`'s
    sentiment steps on the transformer (as for the tiny BERT), saved with its LM head.

    A random tiny decoder's tied, near-zero embeddings cap how peaked its next-token distribution can get, so
    adapters on it barely move the loss; a little pretraining makes it behave like a (very small) real model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    build_tiny_decoder(folder, arch)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    texts = [t + " <eos>" for t, _ in make_texts(320, seed=321)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        chunk = [texts[(step * 16 + i) % len(texts)] for i in range(16)]
        enc = [tok(t)["input_ids"] for t in chunk]
        longest = max(map(len, enc))
        ids = torch.tensor([x + [tok.eos_token_id] * (longest - len(x)) for x in enc])
        mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in enc])
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(folder)
    tok.pad_token = tok.eos_token
    classifier = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, pad_token_id=tok.eos_token_id
    )
    _pretrain(classifier, tok)
    prefix = model.base_model_prefix
    getattr(model, prefix).load_state_dict(getattr(classifier, prefix).state_dict())
    model.save_pretrained(folder)
    return folder


def no_dropout_copy(model: Path, dest: Path) -> Path:
    """A copy of a tiny BERT folder without its own dropout: runs that draw masks differently (one process vs
    several, plain vs sharded) can then be compared for equality."""
    import shutil

    shutil.copytree(model, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


@pytest.fixture(params=["kernels", "torch"])
def mask_backend(request, monkeypatch) -> str:
    """Run a test on both CPU back ends: peftkit's compiled kernels, and the pure-torch path used without them."""
    from peftkit.cpu.kernels import kernels

    if request.param == "torch":
        monkeypatch.setenv("PEFTKIT_CPU_KERNELS", "0")
    elif kernels() is None:
        pytest.skip("no C compiler with OpenMP here: peftkit runs its pure-torch paths")
    return request.param


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def pretrained_gpt2(tmp_path_factory) -> Path:
    return build_pretrained_decoder(tmp_path_factory.mktemp("models") / "pretrained-gpt2", "gpt2")


@pytest.fixture(scope="session")
def pretrained_llama(tmp_path_factory) -> Path:
    return build_pretrained_decoder(tmp_path_factory.mktemp("models") / "pretrained-llama", "llama")


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory) -> Path:
    return write_card(tmp_path_factory.mktemp("data"), make_texts(200))
