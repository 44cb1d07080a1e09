"""Checks shared by the fault tests: a folder snapshot (to prove nothing changed), leftover temporaries, and the
one-paragraph shape of an error."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `folder` (and '/' for each folder): equal snapshots, same tree."""
    if not folder.exists():
        return {}
    tree = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        tree[rel] = "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return tree


def temporaries(folder: Path) -> list[str]:
    """Temporary files and folders (`*.tmp`) anywhere under `folder` or beside it."""
    found = [*folder.rglob("*.tmp"), *folder.parent.glob(".*.tmp")] if folder.parent.exists() else []
    return sorted(str(p) for p in found)


def one_paragraph(err: str) -> str:
    """The error of a CLI run's stderr (notes before it aside), after checking it is one paragraph: no traceback,
    no blank line, at most 2,000 characters."""
    assert "Traceback" not in err, err[-3000:]
    assert err.count("peftkit: error: ") == 1, err[-3000:]
    message = err[err.index("peftkit: error: ") :].rstrip("\n")
    assert "\n\n" not in message and len(message) <= 2000, message[:3000]
    return message
