"""A merged mean-pooled classifier written as a sentence-transformers folder, the format whose loader pools.

Plain transformers has no BERT classifier that reads the mean of the tokens: `AutoModelForSequenceClassification`
would build one that reads the [CLS] token through its pooler and answer differently (29 of 50 labels agreed on
the quickstart). sentence-transformers is the standard loader of mean-pooled encoders (MiniLM-L6 itself ships
that way), so the merged model goes out as one:

    modules.json             Transformer (0_Transformer/) → Pooling(mean) (1_Pooling/) → Dense, identity (2_Dense/)
    0_Transformer/           the merged encoder (transformers folder, no [CLS] pooler) + tokenizer
    2_Dense/                 the classifier: logits = W · mean + b
    config.json              a guard: its model_type names the right loader, so plain transformers refuses the
                             folder with that message instead of loading a different model

`SentenceTransformer(folder).encode(texts)` then returns the classifier's logits; `parity_report.json` proves it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from peftkit.errors import PeftkitError

GUARD_MODEL_TYPE = (
    "peftkit mean-pooled classifier in sentence-transformers format: load it with "
    "sentence_transformers.SentenceTransformer(folder), whose encode() returns the logits "
    "(transformers alone would read the [CLS] token instead of the mean)"
)
README = """# Merged mean-pooled classifier (sentence-transformers format)

Written by `peftkit merge`. The classifier reads the mean of the encoder's tokens, which plain transformers
cannot do, so this folder is a sentence-transformers model:

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{name}")
logits = model.encode(["a sharp, witty and moving film"])
labels = {labels!r}
print(labels[int(logits[0].argmax())])
```

`AutoModelForSequenceClassification.from_pretrained` refuses this folder on purpose (see config.json).
`parity_report.json` compares these logits with the adapter's own.
"""


def write_sentence_transformers_folder(
    model, tokenizer, folder: Path, *, max_length: int, labels: list[str], name: str
) -> None:
    """Write `model` (a merged `*ForSequenceClassification` with peftkit's mean pooling) into `folder`.

    `name`: what the README's snippet loads (the folder's final name).
    """
    import torch
    from safetensors.torch import save_file

    body = getattr(model, model.base_model_prefix)
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise PeftkitError(
            f"merge: a mean-pooled {type(model).__name__} whose classifier is not one linear layer cannot be "
            f"written as a sentence-transformers Dense head. Use `peftkit export --format onnx` instead."
        )
    folder = Path(folder)
    transformer = folder / "0_Transformer"
    pooler = body.pooler
    body.pooler = None  # the mean has no weights; the folder's encoder is built without a [CLS] pooler
    try:
        body.save_pretrained(transformer, safe_serialization=True)
    finally:
        body.pooler = pooler
    tokenizer.save_pretrained(transformer)
    sbert: dict[str, object] = {"max_seq_length": max_length, "do_lower_case": False}
    if "add_pooling_layer" in inspect.signature(type(body).__init__).parameters:
        sbert["model_args"] = {"add_pooling_layer": False}
    _write_json(transformer / "sentence_bert_config.json", sbert)
    hidden = head.in_features
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    dense = folder / "2_Dense"
    _write_json(
        dense / "config.json",
        {
            "in_features": hidden,
            "out_features": head.out_features,
            "bias": head.bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    )
    weights = {"linear.weight": head.weight.detach().float().contiguous()}
    if head.bias is not None:
        weights["linear.bias"] = head.bias.detach().float().contiguous()
    save_file(weights, str(dense / "model.safetensors"))
    modules = [
        ("0_Transformer", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"),
    ]
    _write_json(
        folder / "modules.json",
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)],
    )
    _write_json(folder / "config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": None})
    _write_json(folder / "config.json", {"model_type": GUARD_MODEL_TYPE, "id2label": dict(enumerate(labels))})
    (folder / "README.md").write_text(README.format(name=name, labels=labels))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
