"""A memo of the slow preflight checks that passed, so `peftkit validate` answers in about a second when nothing
those checks read has changed.

The slow checks need pandas and scikit-learn (splitting the data), torch, transformers and PEFT (the model's
config and tokenizer, the method on a weightless skeleton): seconds of imports for results that only change when
their inputs do. Each passed group is remembered in `<peftkit cache>/preflight/<key>.json`, where the key is the
sha256 of everything the group reads:
- data: the card file's bytes, the data's checksum, the split code and the pandas / scikit-learn / numpy
  versions → the split sizes;
- model: the model folder's files (all but the weights, which no check reads), the recipe's model and method
  sections, `data.max_length`, `train.gradient_checkpointing`, the card's task and labels, the files of the
  adapter `method.init_from` names, the transformers / peft / torch / tokenizers versions → the method name.
Both keys also hold a fingerprint of peftkit's own source files. Only passes are remembered: a failing check runs,
and explains itself, every time. Hub sources are never memoised (their files are not local). `train` never reads
the memo (it loads everything anyway) but records what its checks proved; `peftkit validate --recheck` ignores it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import cache
from importlib import metadata
from pathlib import Path

from peftkit.data.cards import DataCard
from peftkit.fileio import atomic_write_json, cache_root
from peftkit.models.sources import WEIGHT_SUFFIXES, ModelSource
from peftkit.recipe import Recipe

_DATA_LIBRARIES = ("pandas", "scikit-learn", "numpy")
_MODEL_LIBRARIES = ("transformers", "peft", "torch", "tokenizers")


def data_key(card: DataCard, checksum: str | None) -> str | None:
    """The memo key of the card's split sizes; None for data without a checksum (a hub dataset)."""
    if checksum is None:
        return None
    return _digest("data", card.path.read_bytes(), checksum, _versions(_DATA_LIBRARIES))


def model_key(recipe: Recipe, card: DataCard, source: ModelSource) -> str | None:
    """The memo key of the model and method checks; None for a hub source."""
    if source.kind == "hub":
        return None
    assert source.path is not None  # every source kind but the hub resolves to a local path
    files = [source.path] if source.path.is_file() else _plain_files(source.path)
    adapter = Path(recipe.method.init_from) if recipe.method.init_from else None
    if adapter is not None and (adapter / "adapter").is_dir():
        adapter = adapter / "adapter"
    settings = {
        "model": recipe.model.model_dump(mode="json"),
        "method": recipe.method.model_dump(mode="json"),
        "max_length": recipe.data.max_length,
        "gradient_checkpointing": recipe.train.gradient_checkpointing,
        "card": [card.task, card.labels],
    }
    return _digest(
        "model",
        json.dumps(settings, sort_keys=True),
        *(_file_identity(f) for f in files),
        *(_file_identity(f) for f in (_plain_files(adapter) if adapter and adapter.is_dir() else [])),
        _versions(_MODEL_LIBRARIES),
    )


def recall(key: str | None) -> dict | None:
    """What a passed group recorded under `key`, or None."""
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # a damaged memo is only a miss
        return None


def remember(key: str | None, value: dict) -> None:
    """Record that the group under `key` passed, with `value` (best effort: a read-only cache is no error)."""
    path = _path(key)
    if path is None:
        return
    with contextlib.suppress(OSError):
        atomic_write_json(path, value)


def _path(key: str | None) -> Path | None:
    return None if key is None else cache_root() / "preflight" / f"{key}.json"


def _plain_files(folder: Path) -> list[Path]:
    """Every file of a model or adapter folder but its weights, in a fixed order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in WEIGHT_SUFFIXES)


def _file_identity(path: Path) -> str:
    """Small files by content; large ones (a GGUF model) by size and modification time."""
    stat = path.stat()
    if stat.st_size > 16 << 20:
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{path.name}:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _versions(names: tuple[str, ...]) -> str:
    return json.dumps({name: _version(name) for name in names} | {"peftkit": _source_fingerprint()})


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@cache
def _source_fingerprint() -> str:
    """peftkit's own code, by file size and modification time: an edited check invalidates the memo."""
    root = Path(__file__).resolve().parents[1]
    stats = [
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*.py"))
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()
