"""Hand freed activation memory back to the OS on glibc (Linux), so peak RSS follows live tensors on CPU.

Opt-in (`train.release_memory: true`). glibc serves big blocks with mmap and frees them back to the OS, but after
each such free it raises that size threshold (up to 32 MB), so a training loop's activations soon come from the
heap, where freed blocks stay resident and fragment as batch shapes change. Fixing the threshold at 1 MB keeps the
peak lower, but then every block of 1 MB or more is a fresh mapping whose pages the kernel faults in and zeroes
on every step: on this project's 2-core VM a fresh 2.4 MB tensor costs ~1.3 ms more than a reused one (a GELU of
400×1536 floats: 1.95 ms against 0.40 ms; a plain multiply 1.56 ms against 0.08 ms).

Measured on the quickstart LoRA bench row (2,000 snippets, 2 cores, bench child processes, same losses), after
the fused LoRA layer and CPU attention: batch 16, 45.5 / 45.6 ex/s and 993 / 998 MB peak with the threshold,
48.0 / 48.7 ex/s and 1,038 / 1,053 MB without; batch 32, 39.7 ex/s / 1,246 MB with, 53.6 ex/s / 1,481 MB
without. The hand-written peer peaked at 1,332 MB (batch 16) and 1,623 MB (batch 32) in the same runs, so the
default stays under the peer's peak either way, and the threshold is for when memory is tighter than time.
Measured earlier, on slower code: thresholds of 2, 4 and 16 MB, or `malloc_trim(0)` after every step, gave no
better trade (git history of this file has the figures).
The setting is process-wide.
"""

from __future__ import annotations

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number; setting it also turns the dynamic raising off


def release_freed_memory(threshold: int = 1 << 20) -> bool:
    """Serve blocks of `threshold` bytes or more with mmap from now on; False where not glibc (nothing changes)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
