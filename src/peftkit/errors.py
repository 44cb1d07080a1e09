"""The one exception type users see.

Every bad input (recipe, data, adapter file, CLI argument) raises `PeftkitError` with a one-paragraph
message that names the file or key and says how to fix it. The CLI prints it without a traceback and
exits non-zero.
"""

from __future__ import annotations

import difflib


class PeftkitError(Exception):
    """A user-facing error: the message is the whole story, no traceback needed."""

    exit_code = 2


def shorten(value, limit: int = 80) -> str:
    """`value` as text for a message, on one line and cut to about `limit` characters with what was left out said:
    a message never echoes a long input back (a 5 MB line in a data file stays a few words)."""
    text = " ".join(str(value).split())
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} characters)"


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: typos, including swapped neighbours ('lroa' → 'lora'), cost 1."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    word = str(word)
    # Names are short: comparing long strings costs quadratic time (a 5 MB "column name" took minutes).
    choices = [str(c) for c in choices if len(str(c)) <= 100]
    if not choices or len(word) > 100:
        return ""
    best = min(
        choices,
        key=lambda c: (
            _edit_distance(word.lower(), c.lower()),
            -difflib.SequenceMatcher(None, word, c).ratio(),
        ),
    )
    close = _edit_distance(word.lower(), best.lower()) <= max(1, len(word) // 3)
    if not close:
        hits = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
        best, close = (hits[0], True) if hits else (best, False)
    return f" Did you mean '{best}'?" if close else ""
