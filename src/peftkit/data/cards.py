"""Data cards: `data_cards/<name>.md`, YAML front matter plus Markdown prose.

The front matter holds the Hugging Face dataset-card keys (`license`, `language`, `task_categories`,
`pretty_name`, `size_categories`, ...) and a `peftkit:` block that says where the data lives, which columns
hold the text and the label, the label names in id order, the seeded split recipe, and the expected
example counts and checksum. The file stays a valid HF dataset card (`huggingface_hub.DatasetCard.load`).

This module only parses and validates; `peftkit.data.sources` reads the data a card points at.
Only PyYAML is imported here, so `import peftkit.data.cards` stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError, did_you_mean

TASKS = ("classification", "causal_lm")
FORMATS = ("csv", "jsonl", "json", "parquet")
SPLITS = ("train", "validation", "test")

_PEFTKIT_KEYS = (
    "task",
    "source",
    "format",
    "text_column",
    "label_column",
    "labels",
    "exclude_labels",
    "split",
    "counts",
    "checksum",
)
_SOURCE_KINDS = ("package", "files", "file", "hub")
_SOURCE_KEYS = (*_SOURCE_KINDS, "path")
_SPLIT_KEYS = ("seed", "test", "validation", "stratify")
# The same front-matter pattern huggingface_hub uses, so both parsers agree on what the metadata is.
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class CardSource:
    """Where a card's data lives: exactly one of `package` (+ `path`), `files`, `file` or `hub`."""

    kind: str
    """'package', 'files', 'file' or 'hub'."""
    package: str | None = None
    """Installed Python package that ships the file (found with importlib, never imported)."""
    path: str | None = None
    """File inside `package`, relative to the package folder."""
    files: dict[str, str] = field(default_factory=dict)
    """Split name → file, relative to the card file; splits that are missing are cut from `train`."""
    file: str | None = None
    """One local file (relative to the card file), split by the card's split recipe."""
    hub: str | None = None
    """A Hugging Face Hub dataset id (needs a network connection)."""


@dataclass(frozen=True)
class SplitSettings:
    """The seeded split recipe, used when the source does not bring its own splits."""

    seed: int = 42
    test: float = 0.2
    """Fraction of all examples held out for test."""
    validation: float = 0.1
    """Fraction of all examples held out for validation."""
    stratify: bool = True
    """Keep the label proportions equal across splits (classification only)."""


@dataclass
class DataCard:
    """A parsed, validated data card."""

    name: str
    path: Path
    metadata: dict[str, Any]
    """Every front-matter key except `peftkit` (the HF dataset-card metadata)."""
    task: str
    source: CardSource
    text_column: str
    label_column: str | None = None
    labels: list[str] = field(default_factory=list)
    """Label names in id order: labels[i] has id i."""
    exclude_labels: list[str] = field(default_factory=list)
    format: str | None = None
    """'csv', 'jsonl', 'json' or 'parquet'; None means inferred from each file's extension."""
    split: SplitSettings = field(default_factory=SplitSettings)
    counts: dict[str, int] | None = None
    checksum: str | None = None
    prose: str = ""

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def _search_dirs(search_dirs) -> list[Path]:
    # cards.py sits at <root>/src/peftkit/data/, so parents[3] is the project root of a source checkout.
    candidates = [
        *map(Path, search_dirs),
        Path.cwd() / "data_cards",
        Path(__file__).resolve().parents[3] / "data_cards",
    ]
    return list(dict.fromkeys(d.resolve() for d in candidates if d.is_dir()))


def list_cards(search_dirs=()) -> list[Path]:
    """All cards in the search folders, sorted by name; an earlier folder wins a name clash."""
    found: dict[str, Path] = {}
    for d in _search_dirs(search_dirs):
        for p in sorted(d.glob("*.md")):
            if p.stem.lower() != "readme":
                found.setdefault(p.stem, p)
    return [found[name] for name in sorted(found)]


def find_card(name_or_path, search_dirs=()) -> Path:
    """Resolve a card name (searched in `search_dirs`, ./data_cards, <project>/data_cards) or a .md path."""
    text = str(name_or_path)
    if text.endswith(".md") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise PeftkitError(f"Data card file {path} does not exist. Check the path, or pass a card name.")
        return path
    cards = list_cards(search_dirs)
    for p in cards:
        if p.stem == text:
            return p
    names = [p.stem for p in cards]
    where = ", ".join(str(d) for d in _search_dirs(search_dirs)) or "no data_cards folder found"
    listing = ", ".join(names) if names else "none"
    raise PeftkitError(
        f"No data card named '{text}' (searched: {where}).{did_you_mean(text, names)} "
        f"Available cards: {listing}. Pass a path to a .md card file or add data_cards/{text}.md."
    )


def load_card(name_or_path, search_dirs=()) -> DataCard:
    """Find, parse and validate a data card; every problem is a PeftkitError naming the file and key."""
    import yaml

    path = find_card(name_or_path, search_dirs)
    text = path.read_text(encoding="utf-8")
    match = _FRONT_MATTER.match(text)
    if not match:
        raise PeftkitError(
            f"Data card {path} has no YAML front matter. Start the file with a '---' line, the metadata "
            "(license, language, ..., and a `peftkit:` block), and a closing '---' line, then the prose."
        )
    try:
        meta = yaml.safe_load(match.group(2)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # +2: the mark counts from 0 inside the block, and the block starts after the opening '---'.
        where = f" line {mark.line + 2}" if mark else ""
        raise PeftkitError(f"Data card {path}{where}: the front matter is not valid YAML ({exc}).") from exc
    if not isinstance(meta, dict):
        raise PeftkitError(f"Data card {path}: the front matter must be a mapping of keys to values.")
    if "peftkit" not in meta:
        raise PeftkitError(
            f"Data card {path} has no `peftkit:` block in its front matter. Add one with at least "
            "`task`, `source`, `text_column` (and `label_column` + `labels` for classification)."
        )
    block = meta.pop("peftkit")
    prose = text[match.end() :].lstrip("\r\n")
    return _parse_block(path, block, meta, prose)


def _fail(path: Path, key: str, problem: str, fix: str) -> PeftkitError:
    return PeftkitError(f"Data card {path}: `peftkit.{key}` {problem}. {fix}")


def _check_keys(path: Path, prefix: str, mapping: dict, allowed) -> None:
    for key in mapping:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise PeftkitError(
                f"Data card {path}: unknown key `{prefix}{key}`.{hint} "
                f"Allowed keys under `{prefix.rstrip('.')}`: {', '.join(allowed)}."
            )


def _mapping(path: Path, key: str, value) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, key, f"must be a mapping, got {type(value).__name__}", "Indent its keys under it.")
    return value


def _optional_string(path: Path, key: str, value) -> str | None:
    return None if value is None else _string(path, key, value)


def _string(path: Path, key: str, value) -> str:
    if value is None:
        raise _fail(
            path, key, "is missing", f"Add `{key.split('.')[-1]}: ...` to the card's `peftkit:` block."
        )
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, f"must be a non-empty string, got {value!r}", "Write the name as text.")
    return value


def _names(path: Path, key: str, value) -> list[str]:
    # Label names are matched against the data as text, so YAML `[0, 1]` and `["0", "1"]` mean the same.
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value
    ):
        raise _fail(
            path, key, f"must be a list of label names, got {value!r}", "Write it as `[name1, name2]`."
        )
    names = [str(v) for v in value]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(path, key, f"lists {', '.join(dupes)} more than once", "Keep each label name once.")
    return names


def _parse_source(path: Path, value) -> CardSource:
    src = _mapping(path, "source", value)
    _check_keys(path, "peftkit.source.", src, _SOURCE_KEYS)
    kinds = [k for k in _SOURCE_KINDS if k in src]
    if len(kinds) != 1:
        raise _fail(
            path,
            "source",
            f"must name exactly one of {', '.join(_SOURCE_KINDS)} (found {kinds or 'none'})",
            "Use `package` + `path`, `files: {train: ..., test: ...}`, `file: all.csv`, or `hub: org/dataset`.",
        )
    kind = kinds[0]
    if kind == "package":
        return CardSource(
            kind,
            package=_string(path, "source.package", src["package"]),
            path=_string(path, "source.path", src.get("path")),
        )
    if "path" in src:
        raise _fail(path, "source.path", "only goes with `source.package`", "Remove it, or use `package`.")
    if kind == "files":
        files = _mapping(path, "source.files", src["files"])
        _check_keys(path, "peftkit.source.files.", files, SPLITS)
        if "train" not in files:
            raise _fail(path, "source.files", "needs a `train` file", "Add `train: <file>`.")
        return CardSource(kind, files={k: _string(path, f"source.files.{k}", v) for k, v in files.items()})
    if kind == "file":
        return CardSource(kind, file=_string(path, "source.file", src["file"]))
    return CardSource(kind, hub=_string(path, "source.hub", src["hub"]))


def _parse_split(path: Path, value) -> SplitSettings:
    spec = _mapping(path, "split", value or {})
    _check_keys(path, "peftkit.split.", spec, _SPLIT_KEYS)
    settings = SplitSettings(**spec)
    if not isinstance(settings.seed, int) or isinstance(settings.seed, bool):
        raise _fail(
            path, "split.seed", f"must be an integer, got {settings.seed!r}", "For example `seed: 42`."
        )
    if not isinstance(settings.stratify, bool):
        raise _fail(
            path,
            "split.stratify",
            f"must be true or false, got {settings.stratify!r}",
            "Write `stratify: true` or `stratify: false`.",
        )
    for key in ("test", "validation"):
        frac = getattr(settings, key)
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise _fail(
                path,
                f"split.{key}",
                f"must be a fraction between 0 and 1, got {frac!r}",
                "It is the share of all examples, for example 0.1.",
            )
    if settings.test + settings.validation >= 1:
        raise _fail(path, "split", "leaves no training data (test + validation >= 1)", "Lower the fractions.")
    return settings


def _parse_block(path: Path, block, metadata: dict, prose: str) -> DataCard:
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise PeftkitError(f"Data card {path}: `peftkit:` must be a mapping of keys (task, source, ...).")
    _check_keys(path, "peftkit.", block, _PEFTKIT_KEYS)
    task = block.get("task", "classification")
    if task not in TASKS:
        raise _fail(
            path, "task", f"is '{task}'", f"Use one of: {', '.join(TASKS)}.{did_you_mean(task, TASKS)}"
        )
    if "source" not in block:
        raise _fail(
            path,
            "source",
            "is missing",
            "Say where the data lives: `package`+`path`, `files`, `file` or `hub`.",
        )
    fmt = block.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _fail(
            path, "format", f"is '{fmt}'", f"Use one of: {', '.join(FORMATS)}, or leave it out to infer it."
        )
    card = DataCard(
        name=path.stem,
        path=path,
        metadata=metadata,
        task=task,
        source=_parse_source(path, block["source"]),
        text_column=_string(path, "text_column", block.get("text_column")),
        label_column=_optional_string(path, "label_column", block.get("label_column")),
        labels=_names(path, "labels", block.get("labels")),
        exclude_labels=_names(path, "exclude_labels", block.get("exclude_labels")),
        format=fmt,
        split=_parse_split(path, block.get("split")),
        counts=_parse_counts(path, block.get("counts")),
        checksum=_parse_checksum(path, block.get("checksum")),
        prose=prose,
    )
    if task == "classification":
        if card.label_column is None:
            raise _fail(
                path, "label_column", "is missing", "Classification cards name the column with the labels."
            )
        if len(card.labels) < 2:
            raise _fail(
                path, "labels", "needs at least two label names", "List them in id order: `[neg, pos]`."
            )
    elif card.labels:
        raise _fail(path, "labels", "is set but the task is causal_lm (text only)", "Remove `labels`.")
    if card.exclude_labels and card.label_column is None:
        raise _fail(path, "exclude_labels", "needs `label_column`", "Name the column the labels are in.")
    both = sorted(set(card.labels) & set(card.exclude_labels))
    if both:
        raise _fail(
            path, "exclude_labels", f"repeats {', '.join(both)} from `labels`", "Keep each in one list."
        )
    return card


def _parse_counts(path: Path, value) -> dict[str, int] | None:
    if value is None:
        return None
    counts = _mapping(path, "counts", value)
    _check_keys(path, "peftkit.counts.", counts, SPLITS)
    for key, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise _fail(
                path, f"counts.{key}", f"must be a whole number, got {n!r}", "Run `peftkit data check`."
            )
    return dict(counts)


def _parse_checksum(path: Path, value) -> str | None:
    if value is not None and (not isinstance(value, str) or not _CHECKSUM.match(value)):
        raise _fail(
            path,
            "checksum",
            f"must look like 'sha256:<64 hex digits>', got {value!r}",
            "Copy the value `peftkit data check` prints.",
        )
    return value
