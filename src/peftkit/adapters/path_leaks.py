"""Find absolute filesystem paths in files about to be published, by field: nothing of this machine leaves it.

Any absolute path counts, not only known roots: `/srv/data/x.csv`, `~/runs/a`, `C:\\Users\\a`, `file:///x`. A path
inside a URL (`https://host/a/b`) is not one. JSON and YAML files (and a Markdown file's front matter) are walked
value by value, so each hit names its field (`recipe.resolved.yaml: description`); other text names its line; a
safetensors file's header metadata is read as JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from peftkit.errors import shorten

# Not after a word character, '.', ':' or '/', so relative paths (a/b, ../a) and URLs (https://h/a) do not match.
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/\\~<>-])/(?:[\w.@+~%=-]+/)*[\w.@+~%=-]*[\w@+~%=-]"  # /srv/data, /tmp
    r"|(?<![\w/])~/[^\s\"'`<>)]+"  # ~/runs/a
    r"|(?<![\w])[A-Za-z]:\\[^\s\"'`<>)]*"  # C:\Users\a
    r"|\bfile://[^\s\"'`<>)]+"  # file:///srv/a
)
_STRUCTURED = {".json": json.loads, ".yaml": yaml.safe_load, ".yml": yaml.safe_load}
_TEXT = (".md", ".txt", ".jsonl")


def find_absolute_paths(folder: Path) -> list[str]:
    """'FILE: FIELD: PATH' for every absolute path in the text files and safetensors headers under `folder`."""
    found = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(f.relative_to(folder))
        found += [f"{name}: {where}: {shorten(hit.rstrip('.,;:'), 80)}" for where, hit in _hits(f)]
    return found


def _hits(f: Path) -> list[tuple[str, str]]:
    if f.suffix == ".safetensors":
        with open(f, "rb") as fh:  # the JSON header: 8-byte length, then the header itself
            header = fh.read(int.from_bytes(fh.read(8), "little")).decode("utf-8", "replace")
        return _structured(json.loads, header, "header")
    text = f.read_text(encoding="utf-8", errors="replace")
    if f.suffix in _STRUCTURED:
        return _structured(_STRUCTURED[f.suffix], text, "")
    if f.suffix not in _TEXT:
        return []
    hits = []
    body_start = 0
    if f.suffix == ".md" and text.startswith("---\n") and "\n---" in text[4:]:
        end = text.index("\n---", 4)
        hits += _structured(yaml.safe_load, text[4:end], "front matter")
        body_start = text[: end + 4].count("\n") + 1
    for n, line in enumerate(text.splitlines()[body_start:], body_start + 1):
        hits += [(f"line {n}", hit) for hit in ABSOLUTE_PATH.findall(line)]
    return hits


def _structured(parse, text: str, prefix: str) -> list[tuple[str, str]]:
    """Hits per field of a JSON/YAML document; lines of the raw text if it does not parse."""
    try:
        doc = parse(text)
    except (ValueError, yaml.YAMLError):
        return [
            (f"line {n}", hit)
            for n, line in enumerate(text.splitlines(), 1)
            for hit in ABSOLUTE_PATH.findall(line)
        ]
    return [((f"{prefix} {key}" if prefix else key) or "(top)", hit) for key, hit in _walk(doc, "")]


def _walk(value, key: str):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{key}[{i}]")
    elif isinstance(value, str):
        for hit in ABSOLUTE_PATH.findall(value):
            yield key, hit
