"""Atomic file writes: a reader never sees a half-written file, and a failure leaves nothing behind."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    """Atomic JSON write, indented and key-sorted so diffs stay readable."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks (weights can be hundreds of MB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def package_dir(name: str) -> Path | None:
    """The folder of installed top-level package `name`, or None. find_spec locates it without running its code."""
    if "." in name:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """peftkit's cache (converted GGUF models, compiled CPU kernels): `cache_dir`, else `$PEFTKIT_CACHE`, else
    `$XDG_CACHE_HOME/peftkit`, else `~/.cache/peftkit`."""
    if cache_dir or os.environ.get("PEFTKIT_CACHE"):
        return Path(cache_dir or os.environ["PEFTKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftkit"


def hub_offline(*also: str) -> bool:
    """True when the Hugging Face Hub must not be reached: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE (or one of the
    variables `also` names, e.g. HF_DATASETS_OFFLINE) is set to 1/true/yes/on."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *also)
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in names)
