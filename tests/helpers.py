"""Builders shared by the tests: tiny models made in-process from configs, a tiny tokenizer, tiny data cards and
recipes, tiny trained adapters. No network; seconds each."""

from __future__ import annotations

import contextlib
import json
import random
import textwrap
import time
from pathlib import Path

POSITIVE = ["good", "great", "fine", "superb", "lovely", "moving", "sharp", "witty"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy", "flat", "tired"]
FILLER = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actors",
    "is",
    "was",
    "very",
    "quite",
    "and",
    "story",
    "script",
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<eos>", *POSITIVE, *NEGATIVE, *FILLER]


def make_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short sentences whose label is told by one sentiment word among fillers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.randint(2, 9))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def pretrain(model, tokenizer, steps: int = 60) -> None:
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
    pretrain(model, tok)
    model.bert.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def word_tokenizer(eos: str | None = "<eos>", pad: str | None = None):
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
    word_tokenizer(eos=eos).save_pretrained(folder)
    return folder


def build_pretrained_decoder(folder: Path, arch: str = "gpt2", *, steps: int = 150) -> Path:
    """`build_tiny_decoder` plus a few full language-modelling steps on make_texts sentences, then `pretrain`'s
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
    pretrain(classifier, tok)
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


def write_card(folder: Path, rows, *, name: str = "tiny", labels=("neg", "pos"), extra: str = "") -> Path:
    """A CSV of (text, label) rows and a data card for it (split 0.2 test / 0.2 validation, seed 0)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    card = folder / f"{name}.md"
    card.write_text(
        textwrap.dedent(f"""\
        ---
        license: cc0-1.0
        language: [en]
        task_categories: [text-classification]
        pretty_name: Tiny {name}
        peftkit:
          task: classification
          source:
            file: {name}.csv
          text_column: text
          label_column: label
          labels: [{", ".join(labels)}]
          split: {{seed: 0, test: 0.2, validation: 0.2, stratify: true}}
        {extra}---
        # Tiny {name}

        Synthetic sentences made by the tests.
        """)
    )
    return card


def write_recipe(
    path: Path,
    *,
    model: Path | str,
    card: Path | str,
    out: Path,
    method: dict | None = None,
    train: dict | None = None,
    data: dict | None = None,
    **sections,
) -> Path:
    """A recipe YAML for tiny runs (2 epochs, batch 8, no checkpoints, no tensorboard); dicts override defaults."""
    import yaml

    recipe = {
        "model": {"source": str(model)},
        "method": method or {"name": "lora"},
        "data": {"card": str(card), "max_length": 32, **(data or {})},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 0.005,
            "output_dir": str(out),
            "save_every": None,
            "report_to": "none",
            **(train or {}),
        },
        **sections,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_tiny(
    tmp: Path, name: str, *, model: Path, card: Path, method: dict | None = None, epochs: int = 2, **sections
) -> Path:
    """Train a tiny recipe into tmp/name and return its adapter folder."""
    from peftkit.recipe import load_recipe
    from peftkit.training.recipe import train

    recipe = write_recipe(
        tmp / f"{name}.yaml",
        model=model,
        card=card,
        out=tmp / name,
        method=method,
        train={"epochs": epochs, "learning_rate": 0.01},
        **sections,
    )
    return train(load_recipe(recipe), progress=False) / "adapter"


def write_checked_card(folder, rows, **kwargs):
    """`write_card` plus the checksum and counts that `peftkit validate` requires."""
    from peftkit.data.cards import load_card
    from peftkit.data.sources import load_splits, source_checksum

    card = write_card(folder, rows, **kwargs)
    loaded = load_card(card)
    counts = {name: len(split) for name, split in load_splits(loaded).items()}
    text = card.read_text().replace(
        "  split:", f"  checksum: {source_checksum(loaded)}\n  counts: {counts}\n  split:".replace("'", ""), 1
    )
    card.write_text(text)
    return card


# The causal-LM corpus: four sentences, over and over.
SENTENCES = [
    "the film was good and the story was superb",
    "the plot is dull and the actors are weak",
    "a movie that is quite witty and very sharp",
    "the script was messy and the story was flat",
]


def write_lm_card(folder, n: int = 160):
    """A causal-LM card over a CSV with one text column: the four sentences above, over and over."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = ["text"] + [rng.choice(SENTENCES) for _ in range(n)]
    (folder / "lm.csv").write_text("\n".join(lines) + "\n")
    card = folder / "lm.md"
    card.write_text(
        textwrap.dedent("""\
        ---
        license: cc0-1.0
        language: [en]
        task_categories: [text-generation]
        pretty_name: Tiny repetitive corpus
        peftkit:
          task: causal_lm
          source: {file: lm.csv}
          text_column: text
          split: {seed: 0, test: 0.2, validation: 0.2, stratify: false}
        ---
        # Tiny corpus
        """)
    )
    return card


@contextlib.contextmanager
def running_server(app):
    """Serve an ASGI `app` with uvicorn on 127.0.0.1 (an ephemeral port) in a thread; yield its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)


def hub_cache(root: Path, hub_id: str, folder: Path) -> Path:
    """Lay `folder`'s files out in a Hugging Face cache at `root` under `hub_id`, as a download would; returns root.

    With HF_HUB_CACHE=root and HF_HUB_OFFLINE=1, `from_pretrained(hub_id)` then reads them without a network.
    """
    import hashlib
    import shutil

    commit = hashlib.sha1(hub_id.encode()).hexdigest()
    repo = Path(root) / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in Path(folder).iterdir():
        if f.is_file():
            shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return Path(root)


def train_shipped_tiny(recipe: Path, out: Path, *, model: Path, card: Path, steps: int = 6) -> Path:
    """Train a shipped recipe's own method, pooling and settings on a tiny model and tiny data; the run folder."""
    from peftkit.recipe import load_recipe
    from peftkit.training.recipe import train

    tiny = load_recipe(
        recipe,
        [
            f"model.source={model}",
            f"data.card={card}",
            "data.max_length=32",
            f"train.max_steps={steps}",
            "train.batch_size=8",
            "train.save_every=null",
            "train.report_to=none",
            "data.max_eval_examples=16",
            f"train.output_dir={out}",
        ],
    )
    return train(tiny, progress=False)


def write_split_card(folder: Path, splits: dict, *, name: str = "split", labels=("neg", "pos")) -> Path:
    """A data card over one CSV per split (`splits`: split name → (text, label) rows), so each split is exactly
    the rows given (no seeded cutting)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(folder / f"{name}-{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    files = ", ".join(f"{split}: {name}-{split}.csv" for split in splits)
    card = folder / f"{name}.md"
    card.write_text(
        "---\nlicense: cc0-1.0\nlanguage: [en]\ntask_categories: [text-classification]\n"
        f"pretty_name: {name}\npeftkit:\n  task: classification\n  source:\n    files: {{{files}}}\n"
        f"  text_column: text\n  label_column: label\n  labels: [{', '.join(labels)}]\n---\n# {name}\n\n"
        "Synthetic sentences made by the tests.\n"
    )
    return card


def flipped(rows, share: float) -> list[tuple[str, str]]:
    """`rows` with the label of every k-th row swapped (neg ↔ pos), so that about `share` of them are wrong."""
    every = round(1 / share)
    swap = {"neg": "pos", "pos": "neg"}
    return [(text, swap[label] if i % every == 0 else label) for i, (text, label) in enumerate(rows)]


class Interrupted(Exception):
    """What `interrupt_at` raises: the run ends as a kill would end it."""


def interrupt_at(k: int):
    """A training callback that stops the run after step `k`, as a kill would (no final evaluation, no adapter)."""
    from peftkit.training.loop import TrainCallback

    class InterruptAt(TrainCallback):
        def on_step(self, step: int, loss: float) -> None:
            if step == k:
                raise Interrupted(step)

    return InterruptAt()
