"""peftkit's CPU kernels (`csrc/`: `kernels.h`, `lora.c`, `attention.c`), built on first use with the machine's C
compiler: dropout masks from a counter-based hash, LoRA's dropout and low-rank products fused, and training
attention per (batch, head).

Why: on the quickstart (MiniLM + LoRA, 2 cores) the LoRA layers' dropout cost more than a quarter of each training
step (55 ex/s with it, 76 without, same batches, one run each). Torch's generator is serial, each mask took five
passes over memory, and the dropped copy of every layer input stayed alive until backward. Here a mask is a pure
function of (one 64-bit key drawn from torch's global generator, element index), so seeding, checkpointed RNG state
and resume behave as before. It is computed in the pass that uses it, on torch's threads, and recomputed in
backward instead of stored (the LoRA layers keep it as bits). Paired on the quickstart (each batch trained with and
without the kernels, in one process): +32% per step (+25% before the attention kernel).

The library is compiled once per source version, compiler and machine into peftkit's cache
(`peftkit.fileio.cache_root`), written under a temporary name and renamed into place. It needs a C compiler with
OpenMP (`$CC`, else `cc`), the same requirement `torch.compile` has on CPU. Without one, or with
`PEFTKIT_CPU_KERNELS=0`, `kernels()` returns None and every caller keeps its pure-torch path: same distribution,
other masks.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from peftkit.fileio import cache_root

_CSRC = Path(__file__).with_name("csrc")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]


def kernels():
    """The loaded kernel library, or None when it is switched off (`PEFTKIT_CPU_KERNELS=0`) or cannot be built."""
    if os.environ.get("PEFTKIT_CPU_KERNELS", "1") == "0":
        return None
    return _load()


def forget_loaded() -> None:
    """Drop the loaded library, so the next `kernels()` loads or builds it again (after a change of
    `PEFTKIT_CPU_KERNELS`, `$CC` or the cache folder)."""
    _load.cache_clear()


# The C functions' arguments, one letter each (csrc/*.h): p pointer, s pointer to int64 strides, i int64,
# c int, u uint32, f float.
_CTYPES = {
    "p": ctypes.c_void_p,
    "s": ctypes.POINTER(ctypes.c_int64),
    "i": ctypes.c_int64,
    "c": ctypes.c_int,
    "u": ctypes.c_uint32,
    "f": ctypes.c_float,
}
_SIGNATURES = {
    "mask_apply": "p p i u u u f",
    "lora_forward": "p i i p i p c u u u f p i p p f p",
    "lora_backward": "p p i i i p p p i f p p p c u u u f p",
    "attn_forward": "p p p i i i i i s s s p s f p p c u u u f",
    "attn_backward": "p p p i i i i i s s s p p f p p p c u u u f",
}


@functools.cache
def _load():
    import torch  # noqa: F401  (loaded first: the kernels then share torch's libgomp and its thread pool)

    try:
        path = _build()
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    for name, signature in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = [_CTYPES[code] for code in signature.split()]
        fn.restype = None
    return lib


def _build() -> Path:
    files = sorted(_CSRC.glob("*.[ch]"))
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler '{compiler}'")
    tag = hashlib.sha256(
        b"\0".join(
            [
                *(f.name.encode() + f.read_bytes() for f in files),
                compiler.encode(),
                " ".join(_FLAGS).encode(),
                platform.machine().encode(),
                platform.node().encode(),
            ]
        )
    ).hexdigest()[:16]
    cache = cache_root()
    target = cache / f"cpu_kernels-{tag}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        sources = [str(f) for f in files if f.suffix == ".c"]
        subprocess.run(
            [compiler, *_FLAGS, *sources, "-o", tmp, "-lm"], check=True, capture_output=True, timeout=120
        )
        # atomic: a concurrent build or an interrupted one never leaves a partial library
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def draw_key() -> int:
    """One 64-bit key from torch's global generator: what one dropout mask consumes."""
    import torch

    return int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), None)) & 0xFFFFFFFFFFFFFFFF


def mask_args(key: int, p: float) -> tuple[int, int, int, float]:
    """(k1, k2, t16, scale): a key's two 32-bit halves, the 16-bit drop threshold round(p·2¹⁶), 1/(1 − p)."""
    return key & 0xFFFFFFFF, key >> 32, round(p * (1 << 16)), 1.0 / (1.0 - p)


def strides(*values: int):
    """A C array of int64 strides (in elements) for the kernels' strided views."""
    return (ctypes.c_int64 * len(values))(*values)


def expect(kernel: str, name: str, t, shape: tuple, *, dtype=None, contiguous: bool = True) -> None:
    """Refuse, before a kernel reads raw pointers, a tensor it would read wrongly or out of bounds: not on the CPU,
    not `dtype` (float32 by default), not of `shape` (None entries match anything), or not contiguous (with
    `contiguous=False`, only its last dimension must be)."""
    import torch

    dtype = dtype or torch.float32
    dense = t.is_contiguous() if contiguous else t.stride(-1) == 1
    if (
        t.device.type != "cpu"
        or t.dtype != dtype
        or t.dim() != len(shape)
        or any(want is not None and got != want for got, want in zip(t.shape, shape, strict=False))
        or not dense
    ):
        raise RuntimeError(
            f"peftkit CPU kernel {kernel}: {name} is a {t.dtype} {tuple(t.shape)} tensor on {t.device} with strides "
            f"{t.stride()}; expected {dtype} {shape} on cpu, {'contiguous' if contiguous else 'last dim dense'}. "
            f"This is a bug in peftkit: set PEFTKIT_CPU_KERNELS=0 to train on the pure-torch path meanwhile."
        )


def apply_mask(out, x, key: int, p: float):
    """out = x ⊙ mask(key, p) (out may be x), or the mask itself into `out` when x is None; returns out.
    Contiguous float32 CPU tensors."""
    expect("mask_apply", "out", out, tuple(out.shape))
    if x is not None:
        expect("mask_apply", "x", x, tuple(out.shape))
    _load().mask_apply(out.data_ptr(), None if x is None else x.data_ptr(), out.numel(), *mask_args(key, p))
    return out
