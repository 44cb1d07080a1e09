"""glibc keeps freed blocks resident once its mmap threshold has risen; release_freed_memory() stops that."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys, torch
from peftkit.heap import release_freed_memory
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
if sys.argv[1] == "release":
    assert release_freed_memory()
a = torch.ones(4 << 20); del a  # 16 MB: mmapped; freeing it raises glibc's dynamic threshold to 16 MB
b = torch.ones(2 << 20)         # 8 MB
before = rss(); del b
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activation_memory_goes_back_to_the_os():
    def returned_mb(mode):
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip())

    assert returned_mb("default") <= 1  # glibc's default: the freed 8 MB stays resident
    assert returned_mb("release") >= 7


@pytest.mark.parametrize("release", [None, False, True])  # None: the key left out (the default)
def test_train_releases_memory_only_when_the_recipe_asks(release, tiny_bert, tiny_card, tmp_path, monkeypatch):
    from peftkit import heap
    from peftkit.cli import main
    from tests.conftest import write_recipe

    calls = []
    monkeypatch.setattr(heap, "release_freed_memory", lambda *a: calls.append(a) or True)
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run",
                          train={"epochs": 1, "max_steps": 1,
                                 **({} if release is None else {"release_memory": release})})
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert len(calls) == int(bool(release))  # off by default: glibc's heap reuse is faster (see heap.py)
