"""The compiled CPU kernels compute what their pure-torch definitions compute: the mask is a function of (key,
element index) with keep rate 1 − p, and the fused LoRA passes give the products of that mask. They build once,
atomically, and fall back (None) when switched off or when no compiler works."""

import pytest
import torch

from peftkit.cpu import kernels as cpu_kernels
from peftkit.cpu.kernels import apply_mask, kernels, mask_args


@pytest.fixture
def lib():
    found = kernels()
    if found is None:
        pytest.skip("no C compiler with OpenMP here: peftkit runs its pure-torch paths")
    return found


def _mask(shape, key, p):
    return apply_mask(torch.empty(shape), None, key, p)


def test_mask_is_a_function_of_key_and_element_index(lib):
    p, key = 0.3, 0x1234_5678_9ABC_DEF1
    whole = _mask((5000,), key, p)
    assert torch.equal(
        _mask((5000,), key, p), whole
    )  # the same key gives the same mask: backward recomputes it
    assert torch.equal(
        _mask((7, 13), key, p).flatten(), whole[:91]
    )  # element e's value does not depend on shape
    x = torch.randn(5000)
    assert torch.equal(apply_mask(torch.empty(5000), x, key, p), x * whole)
    other = _mask((5000,), key + 1, p)
    agree = ((whole > 0) == (other > 0)).float().mean().item()
    assert abs(agree - (0.7**2 + 0.3**2)) < 0.03  # another key: an independent mask (agreement 0.58, not 1)


def _lowbias32(x):
    x = (x ^ (x >> 16)) & 0xFFFFFFFF
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = (x ^ (x >> 15)) & 0xFFFFFFFF
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return (x ^ (x >> 16)) & 0xFFFFFFFF


@pytest.mark.parametrize("n", [1, 15, 16, 37, 100])
def test_mask_is_the_documented_hash(lib, n):
    """Element e keeps lane e & 1 of lowbias32(lowbias32((e >> 1) ^ k1) ^ k2) iff it is >= round(p·2¹⁶): the
    vectorised hash (16 elements a step, short ends through a buffer) computes exactly that, for any length."""
    p, key = 0.3, 0x0BAD_F00D_1234_5678
    k1, k2, t16, scale = mask_args(key, p)
    expected = []
    for e in range(n):
        h = _lowbias32(_lowbias32((e >> 1) ^ k1) ^ k2)
        expected.append(scale if ((h >> 16) if e & 1 else (h & 0xFFFF)) >= t16 else 0.0)
    assert _mask((n,), key, p).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_scale_and_independence(lib, p):
    mask = _mask((400, 1000), 987654321, p)
    values = torch.unique(mask).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    keep = (mask > 0).float()
    assert abs(keep.mean().item() - (1 - p)) < 0.003  # 400k draws: ~5 standard errors
    for lane in range(2):  # low and high 16 bits of each hash
        assert abs(keep[:, lane::2].mean().item() - (1 - p)) < 0.004, lane
    pairs = keep.view(-1, 2)  # the two halves of one hash, and neighbouring hashes, are uncorrelated
    assert abs(torch.corrcoef(pairs.t())[0, 1].item()) < 0.01
    assert abs(torch.corrcoef(torch.stack([keep.flatten()[:-2], keep.flatten()[2:]]))[0, 1].item()) < 0.01


def _reference(x, a, b, w, bias, s, mask):
    """y = x·Wᵀ + bias + s·(mask ⊙ x)·Aᵀ·Bᵀ and its gradients by autograd, for a given float mask."""
    x, a, b = (t.detach().clone().requires_grad_(True) for t in (x, a, b))
    y = x @ w.t() + (0 if bias is None else bias) + s * ((mask * x) @ a.t()) @ b.t()
    return y, x, a, b


@pytest.mark.parametrize(
    "rows, d, o, r", [(389, 384, 1536, 8), (9, 13, 5, 8), (5, 16, 24, 3), (1, 7, 3, 8), (6, 33, 40, 16)]
)
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_fused_lora_passes_match_their_definition(lib, rows, d, o, r, p):
    """r = 8 takes the AVX2 rows (blocks of four, then single rows); other ranks, odd widths and row counts the
    plain loops and the tails."""
    torch.manual_seed(0)
    x, a, b = torch.randn(rows, d), torch.randn(r, d), torch.randn(o, r)
    w, bias, g, s, key = torch.randn(o, d), torch.randn(o), torch.randn(rows, o), 1.7, 0xDEAD_BEEF_0000_1234
    mask = _mask((rows, d), key, p) if p else torch.ones(rows, d)
    ref, xr, ar, br = _reference(x, a, b, w, bias, s, mask)
    ref.backward(g)

    y, low, bits = x @ w.t(), torch.empty(rows, r), torch.empty(rows, (d + 7) // 8, dtype=torch.uint8)
    lib.lora_forward(
        x.data_ptr(),
        rows,
        d,
        a.data_ptr(),
        r,
        low.data_ptr(),
        int(p > 0),
        *mask_args(key, p),
        y.data_ptr(),
        o,
        b.data_ptr(),
        bias.data_ptr(),
        s,
        bits.data_ptr(),
    )
    assert torch.allclose(low, (mask * x) @ a.t(), atol=1e-3, rtol=1e-4)
    assert torch.allclose(y, ref.detach(), atol=1e-3, rtol=1e-4)  # values up to ~750: float32 rounding

    if p:  # the forward's bits are the mask
        unpacked = (bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
        assert torch.equal(unpacked.flatten(1)[:, :d].bool(), mask > 0)
    for packed in (
        bits,
        None,
    ):  # backward reads the forward's bits, or hashes the mask again: the same gradients
        gx, ga, gb = g @ w, torch.empty(r, d), torch.empty(o, r)
        lib.lora_backward(
            x.data_ptr(),
            g.data_ptr(),
            rows,
            d,
            o,
            a.data_ptr(),
            b.data_ptr(),
            low.data_ptr(),
            r,
            s,
            gx.data_ptr(),
            ga.data_ptr(),
            gb.data_ptr(),
            int(p > 0),
            *mask_args(key, p),
            None if packed is None else packed.data_ptr(),
        )
        for name, got, want in (("x", gx, xr.grad), ("A", ga, ar.grad), ("B", gb, br.grad)):
            assert torch.allclose(got, want, atol=1e-3, rtol=1e-4), (name, (got - want).abs().max())
    assert ar.grad.abs().max() > 0 and br.grad.abs().max() > 0


def test_switched_off_and_unbuildable_fall_back_without_leaving_files(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTKIT_CPU_KERNELS", "0")
    assert kernels() is None
    monkeypatch.delenv("PEFTKIT_CPU_KERNELS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_kernels.forget_loaded()
    try:
        monkeypatch.setenv("CC", "no-such-compiler")
        assert kernels() is None
        cpu_kernels.forget_loaded()
        monkeypatch.setenv("CC", "false")  # a compiler that fails: no library, and no half-written file left
        assert kernels() is None
        assert list((tmp_path / "peftkit").iterdir()) == []
    finally:
        cpu_kernels.forget_loaded()


def test_builds_once_into_the_cache(monkeypatch, tmp_path, lib):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_kernels.forget_loaded()
    try:
        assert kernels() is not None
        built = list((tmp_path / "peftkit").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"
        stamp = built[0].stat().st_mtime_ns
        cpu_kernels.forget_loaded()
        assert kernels() is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    finally:
        cpu_kernels.forget_loaded()


@pytest.mark.parametrize(
    "out, x, words",
    [
        (torch.zeros(8, dtype=torch.float64), None, "out is a torch.float64"),
        (torch.zeros(4, 4).t(), None, "expected torch.float32 (4, 4) on cpu, contiguous"),
        (torch.zeros(8), torch.zeros(9), "x is a torch.float32 (9,) tensor"),
    ],
)
def test_kernel_entry_refuses_what_it_would_read_wrongly(lib, out, x, words):
    """A wrong dtype, shape or layout raises before any raw pointer reaches C, and nothing is written."""
    before = out.clone()
    with pytest.raises(RuntimeError, match="peftkit CPU kernel mask_apply") as err:
        apply_mask(out, x, key=123, p=0.1)
    assert words in str(err.value) and "PEFTKIT_CPU_KERNELS=0" in str(err.value)
    assert torch.equal(out, before)
