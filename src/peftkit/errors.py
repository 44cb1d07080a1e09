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


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
