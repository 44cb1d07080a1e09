"""Library chatter off the console: what transformers, PEFT, bitsandbytes, accelerate and torch print while a
model loads (transformers' "LOAD REPORT" table of newly initialised heads, deprecation warnings, their progress
bars) is collected instead, and a command writes it to its run folder's `messages.log` (`--verbose` shows it).

peftkit's own warnings (raised from peftkit's code) still reach the console: they are about the user's inputs.
Everything is restored when the block ends; transformers is configured through its own logging API.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from peftkit.errors import PeftkitError

# Loggers of the libraries peftkit drives (standard logging; transformers' is configured through its API too).
LIBRARY_LOGGERS = (
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "torch",
    "huggingface_hub",
    "kernels",  # bitsandbytes' CPU backend asks it for a Hub kernel at import ("Skipping publisher trust check…")
)
MESSAGES_FILE = "messages.log"
_PEFTKIT_DIR = str(Path(__file__).resolve().parent)


class LibraryMessages(logging.Handler):
    """Collects library log records and warnings as lines of text."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def warning(self, message, category, filename, lineno) -> None:
        self.lines.append(f"[warning] {category.__name__}: {message} ({filename}:{lineno})")

    def write(self, path: Path) -> None:
        """Append the collected lines to `path` (nothing happens when there are none)."""
        if self.lines:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("\n".join(self.lines) + "\n")


@contextmanager
def quiet_libraries(verbose: bool = False, *, transformers: bool = True):
    """Collect library messages in the yielded `LibraryMessages` instead of printing them (`verbose`: print them
    as usual, and collect nothing). `transformers`: also silence transformers' own handler and progress bars
    (imports transformers' logging module, ~1 s; leave it off where no model is loaded)."""
    messages = LibraryMessages()
    if verbose:
        yield messages
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    bars = False  # transformers' progress bars were on (restored at the end)
    if transformers:
        import transformers.utils.logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()
    for logger in loggers:
        logger.handlers = [messages]
        logger.propagate = False
    try:
        with warnings.catch_warnings():
            console = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if str(filename).startswith(_PEFTKIT_DIR):  # peftkit's own: about the user's inputs
                    console(message, category, filename, lineno, file, line)
                else:
                    messages.warning(message, category, filename, lineno)

            warnings.showwarning = show
            yield messages
    except Exception as exc:
        if not isinstance(exc, PeftkitError):  # a crash: what the libraries said may explain it
            for line in messages.lines:
                print(line, file=sys.stderr)
        raise
    finally:
        for (
            logger,
            handlers,
            propagate,
        ) in saved:  # keep handlers a library added meanwhile (its first import)
            logger.handlers = handlers + [
                h for h in logger.handlers if h is not messages and h not in handlers
            ]
            logger.propagate = propagate
        if transformers:
            import transformers.utils.logging as hf_logging  # imported above: no cost

            hf_logging.enable_default_handler()
            if bars:
                hf_logging.enable_progress_bar()
