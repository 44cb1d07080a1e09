"""The GPU checks (QLoRA memory and merge parity; multi-process training through accelerate), marked `gpu`:
skipped without CUDA, run with `pytest -m gpu` on a GPU machine (a few minutes each). Their CPU dry runs
(marked `slow`: minutes on 2 cores) check the same code on tiny models where there is no GPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.gpu import accelerate_checks, qlora_checks


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _qlora(size: str, steps: int, seq: int, merge_size: str) -> list[str]:
    qlora_checks.versions()
    work = Path(tempfile.mkdtemp(prefix="peftkit-gpu-check-"))
    try:
        fails = qlora_checks.memory_check(work, size, steps, 2, seq)
        return fails + qlora_checks.merge_check(work, merge_size)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_qlora_7b_peak_memory_and_merge_parity_on_gpu():
    """QLoRA's peak GPU memory ≤ 0.35× 16-bit LoRA's on Llama-2-7B's shape, its loss falls, and the merged model
    matches the adapter on a float32 base (≤ 1e-3, top-1 agreement 1.0)."""
    assert _qlora("7b", steps=10, seq=256, merge_size="150m") == []


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_accelerate_launch_bf16_4bit_and_sharded_on_gpu():
    assert accelerate_checks.run_checks() == []


@pytest.mark.slow
def test_qlora_checks_dry_run_on_cpu(monkeypatch):
    """The QLoRA checks' code on the CPU with a tiny model: loss falls, merge parity holds (memory not measured)."""
    monkeypatch.setattr(qlora_checks, "DEVICE", "cpu")
    assert _qlora("tiny", steps=4, seq=32, merge_size="tiny") == []


@pytest.mark.slow
def test_accelerate_checks_dry_run_on_cpu():
    assert accelerate_checks.run_checks(dry=True) == []
