"""Line numbers in data files, for error messages: where a bad row is, without echoing the row.

Only called on the error path (a full pass over the file in Python is fine there); long lines cost nothing special.
"""

from __future__ import annotations

import csv
import io
import json
import sys

from peftkit.errors import shorten


def decompress(data: bytes, compression: str | None) -> bytes:
    """The bytes of a file as stored (`gzip`, `bz2` or None)."""
    if compression == "gzip":
        import gzip

        return gzip.decompress(data)
    if compression == "bz2":
        import bz2

        return bz2.decompress(data)
    return data


def first_bad_json_line(data: bytes) -> tuple[int, str] | None:
    """(line number, problem) of the first non-blank line of JSONL `data` that is not a JSON object, or None."""
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            return n, f"not valid JSON: {shorten(getattr(exc, 'msg', exc), 80)}"
        if not isinstance(row, dict):
            return n, f"a JSON {type(row).__name__}, not an object"
    return None


def line_of_row(data: bytes, fmt: str, row: int) -> int | None:
    """The line (1-based) on which data row `row` (0-based, as pandas numbers them) starts in CSV or JSONL `data`;
    exact for CSV texts that span lines. None for other formats or past the end."""
    text = data.decode("utf-8", errors="replace")
    if fmt == "jsonl":
        lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        return lines[row] if row < len(lines) else None
    if fmt != "csv":
        return None
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a 5 MB field is data, not a reason to fail here
    try:
        reader = csv.reader(io.StringIO(text))
        start, seen = 1, -1  # -1: the header row
        for record in reader:
            if record:
                if seen == row:
                    return start
                seen += 1
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)
    return None
