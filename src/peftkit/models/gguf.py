"""GGUF model sources: convert a .gguf file once into a transformers folder in a cache, then reuse it.

transformers reads GGUF (`from_pretrained(folder, gguf_file=name)`, needs the `gguf` package) by parsing the
whole file and dequantizing every tensor, which takes tens of seconds for SmolLM2-135M. peftkit does that once
and saves an ordinary HF folder (float32 safetensors + tokenizer files) under

    <cache>/gguf/<file stem>-<first 16 hex of the file's sha256>/

where <cache> is the recipe's `model.cache_dir`, else peftkit's cache (`peftkit.fileio.cache_root`). Keying by
content means an edited or replaced file gets a fresh conversion. The folder is built in a temporary folder
beside it and renamed into place, and `peftkit_gguf.json` (written last) records the GGUF hash and the sha256
of every file; a folder whose record is missing or does not match its files is partial or corrupt, and is
rebuilt with a warning. A lock file serialises conversions between processes.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.fileio import cache_root, file_sha256

MARKER = "peftkit_gguf.json"
MAGIC = b"GGUF"
_verified: dict[str, tuple] = {}  # folder → marker (mtime, size), so one process hashes a folder once
_digests: dict[tuple, str] = {}  # (gguf path, size, mtime) → sha256: train resolves the folder three times


def forget_verified() -> None:
    """Forget which converted folders this process has verified, so the next use checks them again (as a new
    process would)."""
    _verified.clear()


def check_gguf(path: str | Path) -> Path:
    """The GGUF file, or a PeftkitError saying it is missing, not a GGUF file, or truncated/corrupt."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PeftkitError(
            f"GGUF file '{path}' does not exist. Check model.source (a path to a .gguf file, or "
            f"package:NAME/FILE.gguf for a file shipped in an installed package)."
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != MAGIC:
        raise PeftkitError(
            f"GGUF file '{path}' is not a GGUF file (it starts with {head!r}, not b'GGUF'). Point "
            f"model.source at a real .gguf file, or at a transformers folder."
        )
    GGUFReader = require_gguf(path)  # noqa: N806  (a class)
    try:
        GGUFReader(str(path))  # parses every header and tensor extent: catches truncated files
    except Exception as exc:  # the reader raises ValueError, IndexError, ... on damaged files
        raise PeftkitError(
            f"GGUF file '{path}' is corrupt or truncated ({type(exc).__name__}: {exc}). Download "
            f"it again or reinstall the package that ships it."
        ) from None
    return path


def require_gguf(path: Path):
    """The `gguf` package's reader class, or a PeftkitError saying how to install the optional package."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise PeftkitError(
            f"model source '{path}' is a GGUF file, and reading GGUF files needs the optional `gguf` package, "
            f"which is not installed. Install it with `pip install 'peftkit[gguf]'` (or `pip install gguf`), or "
            f"point model.source at a transformers folder."
        ) from None
    return GGUFReader


def converted_folder(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A transformers folder (config, float32 weights, tokenizer) converted from `gguf_path`, built once."""
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        check_gguf(path)  # raises the missing-file error
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _digests[key] = _digests.get(key) or file_sha256(path)
    root = cache_root(cache_dir) / "gguf"
    target = root / f"{path.stem}-{digest[:16]}"
    if _is_complete(target, digest):
        return target
    check_gguf(path)
    with _lock(root):
        if target.exists() and not _is_complete(target, digest):
            warnings.warn(
                f"GGUF cache folder {target} is incomplete or corrupt; converting {path.name} again.",
                stacklevel=2,
            )
        if not _is_complete(target, digest):  # another process may have finished while we waited
            _build(path, digest, target)
    return target


def _is_complete(folder: Path, digest: str) -> bool:
    """True when the folder's record matches the GGUF hash and every recorded file hashes as recorded."""
    marker = folder / MARKER
    try:
        stamp = (marker.stat().st_mtime_ns, marker.stat().st_size)
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if _verified.get(str(folder)) == stamp:
        return True
    files = record.get("files") or {}
    ok = (
        record.get("gguf_sha256") == digest
        and "config.json" in files
        and all(
            (folder / name).is_file()
            and (folder / name).stat().st_size == meta["size"]
            and file_sha256(folder / name) == meta["sha256"]
            for name, meta in files.items()
        )
    )
    if ok:
        _verified[str(folder)] = stamp
    return ok


def _build(path: Path, digest: str, target: Path) -> None:
    from peftkit.fileio import atomic_dir

    with atomic_dir(target) as tmp:
        try:
            convert_gguf(path, tmp)
        except Exception as exc:  # transformers' GGUF loader raises many types for files it cannot read
            raise PeftkitError(
                f"GGUF file '{path}' could not be converted to a transformers model ({type(exc).__name__}: {exc}). "
                f"The file may be damaged, or its architecture is not one transformers' GGUF loader supports; "
                f"convert it with llama.cpp's tools or use the model's transformers folder instead."
            ) from exc
        files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
        record = {"gguf_file": str(path), "gguf_sha256": digest, "files": files}
        (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    _verified.pop(str(target), None)


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantize into float32 and save model + tokenizer as a plain HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF "quantizer" so save_pretrained writes plain tensors
    # and the saved config does not ask for a gguf file.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = path.stem
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@contextmanager
def _lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the atomic rename still keeps the folder whole
        yield
        return
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
