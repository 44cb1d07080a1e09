"""adapter_config.json as peftkit writes and reads it, so that plain PEFT never loads a mean-pooled adapter wrongly.

A classifier trained with `model.pooling: mean` reads the mean of its tokens; plain transformers builds the same
architecture with its own [CLS] pooler and nothing in PEFT's format records the difference, so
`PeftModel.from_pretrained` used to load such an adapter without a word and answer differently (5 of 50 labels
agreed on the quickstart). Its adapter_config.json therefore carries `MEAN_POOLING_TASK_TYPE` as `task_type`
instead of `SEQ_CLS`. Every PEFT loader (`PeftModel.from_pretrained`, `AutoPeftModel*.from_pretrained`,
transformers' `load_adapter`) validates `task_type` when it builds the config (`PeftConfig.__post_init__`, PEFT
0.21) and raises `ValueError: Invalid task type: '<that text>'`, a loud error that says what loads it instead.
Unknown extra keys would not do: PEFT drops them with a warning. peftkit reads the file through
`read_peft_config`, which restores `SEQ_CLS`, and hands the config object to PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "adapter_config.json"
MEAN_POOLING_TASK_TYPE = (
    "SEQ_CLS with peftkit's mean pooling, which plain transformers lacks (it would read the [CLS] token and "
    "answer differently). Load it with peftkit (peftkit.load_adapter), or use the folder `peftkit merge` writes "
    "(a sentence-transformers model) or `peftkit export --format onnx`"
)


def mark_pooling(adapter_dir: Path, pooling: str) -> None:
    """Write `pooling` into a freshly saved adapter_config.json (only `mean` changes anything)."""
    if pooling != "mean":
        return
    path = Path(adapter_dir) / CONFIG_FILE
    config = json.loads(path.read_text())
    if config.get("task_type") in ("SEQ_CLS", MEAN_POOLING_TASK_TYPE):
        config["task_type"] = MEAN_POOLING_TASK_TYPE
        path.write_text(json.dumps(config, indent=2, sort_keys=True))


def unmarked(config: dict) -> dict:
    """An adapter_config.json dict with its real task type (`SEQ_CLS` for a mean-pooled classifier)."""
    return {**config, "task_type": "SEQ_CLS"} if config.get("task_type") == MEAN_POOLING_TASK_TYPE else config


def config_dict(adapter_dir: Path) -> dict:
    """adapter_config.json with its real task type."""
    return unmarked(json.loads((Path(adapter_dir) / CONFIG_FILE).read_text()))


def recorded_pooling(adapter_dir: Path) -> str:
    """`mean` when adapter_config.json carries the mean-pooling mark, else `model`."""
    config = json.loads((Path(adapter_dir) / CONFIG_FILE).read_text())
    return "mean" if config.get("task_type") == MEAN_POOLING_TASK_TYPE else "model"


def read_peft_config(adapter_dir: Path):
    """The adapter's PEFT config object, for `PeftModel.from_pretrained(model, adapter_dir, config=...)`."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import peftkit.methods.bottleneck  # noqa: F401  (registers peftkit's own PEFT types)

    kwargs = config_dict(adapter_dir)
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[kwargs["peft_type"]]
    return cls.from_peft_type(**cls.check_kwargs(**kwargs))
