"""Hand freed activation memory back to the OS on glibc (Linux), so peak RSS follows live tensors on CPU.

glibc serves big blocks with mmap and frees them back to the OS, but after each such free it raises that size
threshold (up to 32 MB), so a training loop's activations (1–13 MB each for MiniLM at batch 16) soon come from the
heap, and freed heap stays resident and fragments as batch shapes change. On the quickstart bench row that kept ~510
MB resident after training and put the peak ~95 MB higher: 1,166–1,210 MB against 1,066–1,078 MB with the threshold
fixed at 1 MB, with the same losses. It costs speed: every block of 1 MB or more is then a fresh mapping whose pages
the kernel faults in and zeroes on each step. Measured back to back on the quickstart LoRA row (2,000 snippets, 2
cores, same losses, each run in one fresh process): batch 16 40.3 ex/s and 1,167 MB peak with it, 45.7 ex/s and
1,302 MB without; batch 32 35.6 / 1,421 MB against 50.8 / 1,832 MB; thresholds of 2, 4 and 16 MB gave 45.5 / 1,274,
47.4 / 1,277 and 45.4 / 1,267 MB (batch 16); `malloc_trim(0)` after every step 35.2 / 1,192 MB. The hand-written
peer measured the same way peaked at 1,296 MB (in the bench's child processes both read lower: 1,056 and 1,247 MB in
the README's run). So a bigger threshold keeps the peak under the peer's by only ~20 MB, within the peer's
run-to-run spread (1,144–1,247 MB in bench runs), and 1 MB by ~130 MB: the bench asks for a peak no higher than the
peer's, so 1 MB it is, at ~12% of speed. It is probably also why the 128-prefix row once ran at 25 ex/s against 36
(bigger attention tensors; not measured one to one). Re-measured after the fused LoRA layer and the CPU attention
(same row, alternating, one process each): 45.8 / 1,136 and 45.8 / 1,124 MB with it, 52.0 / 1,198 and 50.3 / 1,210
MB without, so still ~10% of speed for ~75 MB, and without it the peak would sit ~90 MB under the peer's 1,296 (same
measure). Kept, for the margin. The setting is process-wide.
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
