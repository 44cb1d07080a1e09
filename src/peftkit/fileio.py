"""Atomic file writes: a reader never sees a half-written file, and a failure leaves nothing behind.

Files and folders are written under a temporary name beside their target, flushed to disk (fsync), then renamed
into place. Temporary names carry the writer's pid and host (`.NAME.~PID@HOST~XXXX.tmp`), so one left behind by a
killed process is recognised and removed by the next writer in the same folder (`clean_stale_temps`).
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

_TEMP = re.compile(r"^\.(?P<name>.+)\.~(?P<pid>\d+)@(?P<host>[^~/]+)~[^/]*\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private files (0600/0700); what appears in place gets the usual permissions instead.
_FILE_MODE, _DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.~{os.getpid()}@{socket.gethostname()}~"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a process we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files and folders in `folder` left by killed writers of this machine; return them.

    Only names of the form `.NAME.~PID@HOST~XXXX.tmp` whose HOST is this machine and whose PID is gone are
    removed: a live writer's temporaries, and another machine's (shared folders), are never touched.
    """
    folder, host = Path(folder), socket.gethostname()
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if not m or m["host"] != host or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (best effort: some file systems cannot open folders)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    """Atomic JSON write, indented and key-sorted so diffs stay readable."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on failure it is removed.

    Stale temporaries of killed writers in the same parent folder are cleaned first. An existing `path` is
    swapped out in one step where the OS can (Linux `renameat2`), so it is never missing in between.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, _DIR_MODE)
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_dir(path: str | Path) -> None:
    """Delete a folder so that it disappears at once: renamed to a temporary name first, then deleted (a kill
    during the deletion leaves a stale temporary, never a half-deleted folder under its real name)."""
    path = Path(path)
    if not path.exists():
        return
    doomed = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.rename(path, doomed / path.name)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_dir(new: str | Path, path: str | Path) -> None:
    """Move folder `new` to `path`, replacing what is there; the old content is deleted afterwards."""
    new, path = Path(new), Path(path)
    if not path.exists():
        os.rename(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old content
    else:  # no atomic exchange here: move the old one aside first, so a failure never loses both
        aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        os.rename(path, aside / path.name)
        os.rename(new, path)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


# Errors that mean "this machine could not write the file", with what the user can do about each.
_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space or raise the quota",
    errno.EFBIG: "the file grew past this shell's file size limit: raise it (`ulimit -f unlimited`)",
    errno.EIO: "the storage reported an I/O error: check the disk",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "permission denied: write somewhere you may write",
    errno.EPERM: "permission denied: write somewhere you may write",
}


def write_failure(exc: BaseException) -> str | None:
    """'<strerror> (<what to do>)' when `exc` says a file could not be written (disk full, size limit, I/O
    error, permissions), else None. Reads the errno of an OSError, or the `os error N` in safetensors' messages."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None:
        found = re.search(r"os error (\d+)\)", str(exc))
        code = int(found[1]) if found else None
    if code not in _WRITE_ERRORS:
        return None
    return f"{os.strerror(code)}; {_WRITE_ERRORS[code]}"


@contextmanager
def reported_write_failures(what: str, where: str | Path):
    """Turn a failed write inside the block (disk full, size limit, I/O error, permissions) into one paragraph
    about `what` (e.g. '--out') and folder `where`; other errors pass through."""
    from peftkit.errors import PeftkitError

    try:
        yield
    except PeftkitError:
        raise
    except Exception as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        raise PeftkitError(
            f"{what}: '{where}' could not be written: {reason} ({free_space(where)}). Nothing was left half-written "
            f"there; run the command again once that is fixed."
        ) from None


def free_space(folder: str | Path) -> str:
    """Free space on the file system of `folder` (or its nearest existing parent), e.g. '1.2 GB free'."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 1e9:.1f} GB free" if free >= 1e8 else f"{free / 1e6:.1f} MB free"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks (weights can be hundreds of MB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (tensor name → dtype, shape, offsets), after checking that the file
    is complete: its size must be where the header says the last tensor ends. No tensor is read. Raises
    ValueError('expected …, found … bytes') for a truncated or corrupt file."""
    import struct

    size = Path(path).stat().st_size
    header = None
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if 8 + n <= size:
            try:
                header = json.loads(fh.read(n))
            except (ValueError, UnicodeDecodeError):
                header = None
    try:
        tensors = [t for k, t in header.items() if k != "__metadata__"] if isinstance(header, dict) else None
        end = 8 + n + max((t["data_offsets"][1] for t in tensors), default=0) if tensors is not None else None
    except (KeyError, TypeError, IndexError):
        end = None
    if header is None or end is None:
        raise ValueError(f"expected a valid safetensors header, found {size} bytes")
    if end != size:
        raise ValueError(f"expected {end} bytes, found {size} bytes")
    return header


def package_dir(name: str) -> Path | None:
    """The folder of installed top-level package `name`, or None. find_spec locates it without running its code."""
    if "." in name:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


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
