"""Hand freed activation memory back to the OS on glibc (Linux), so peak RSS follows live tensors on CPU.

glibc serves big blocks with mmap and frees them back to the OS, but after each such free it raises that size
threshold (up to 32 MB), so a training loop's activations (1–13 MB each for MiniLM at batch 16) soon come from
the heap, and freed heap stays resident and fragments as batch shapes change. On the quickstart bench row that
kept ~510 MB resident after training and put the peak ~95 MB higher: 1,166–1,210 MB against 1,066–1,078 MB
with the threshold fixed at 1 MB, with the same losses and LoRA speed within run-to-run noise (41–44 ex/s with
it, 41–48 without). Other rows were not compared one to one (the prefix-tuning row ran at 25 ex/s in the next
bench, 36 in the one before: not yet explained). The setting is process-wide, for the rest of the process.
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
