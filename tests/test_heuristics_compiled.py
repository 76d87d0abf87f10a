"""The compiled row kernels (numba, lesson 03) against the torch paths they replace, and the torch paths themselves
against transformers (with the kernels on, `test_heuristics_hf.py` holds the kernels to transformers).

Property test: many random batches (flat to peaked, Zipf, ties, masked, constant, NaN and +inf rows, small and
long vocabularies, per-row parameters). top-k must agree exactly; top-p and typical wherever a token is not on the
float-rounding border of the mass (the same borders `test_heuristics_hf.py` grants against transformers).
"""
import os, subprocess, sys
import pytest, torch
import soft_sampler.heuristics_hf as H
from soft_sampler.heuristics_hf import top_k, top_p, typical
import test_heuristics_hf as T
from test_heuristics_hf import border_top_p, border_typical, NEG

needs_numba = pytest.mark.skipif(not H._NUMBA, reason="numba is not installed (or SOFT_SAMPLER_NUMBA=0)")


def random_rows(seed: int) -> torch.Tensor:
    "One batch of 6-24 rows of one random vocabulary size, each row of a random kind."
    g = torch.Generator().manual_seed(seed)
    v = [5, 64, 300, 4097, 9000, 20000][seed % 6]
    b = int(torch.randint(6, 25, (1,), generator=g))
    rows = []
    for i in range(b):
        kind = int(torch.randint(0, 9, (1,), generator=g))
        z = torch.randn(v, generator=g)
        if kind == 0: r = z * float(torch.rand(1, generator=g) * 8)  # flat to peaked
        elif kind == 1: r = -1.1 * (torch.randperm(v, generator=g).float() + 1).log() + 0.5 * z  # Zipf
        elif kind == 2: r = (z * 2).round()  # ties
        elif kind == 3: r = z.masked_fill(torch.rand(v, generator=g) < 0.7, NEG)  # masked
        elif kind == 4: r = torch.full((v,), 1.5)  # constant
        elif kind == 5: r = z * 1e3  # one-hot
        elif kind == 6: r = z * 3 + 80  # offset
        elif kind == 7: r = z.masked_fill(torch.rand(v, generator=g) < 0.5, NEG) * 0.01  # masked, flat
        else: r = z.clone(); r[int(torch.randint(0, v, (1,), generator=g))] = float("nan")  # a NaN
        rows.append(r)
    x = torch.stack(rows)
    if seed % 7 == 3: x[0] = float("inf")
    if seed % 5 == 1: x[-1] = NEG
    return x


def torch_path(fn, *a):
    "`fn(*a)` with the compiled kernels switched off."
    before, H._NUMBA = H._NUMBA, False
    try: return fn(*a)
    finally: H._NUMBA = before


def per_row(x, g, low, high):
    return low + (high - low) * torch.rand(len(x), generator=g)


def kept(t): return t != NEG


def assert_on_border(a, b, x, border, ps, m):
    "Kept sets of `a` and `b` differ only on border tokens (computed row by row: per-row p)."
    for r in ((kept(a) != kept(b)).any(-1) & ~x.isnan().any(-1) & ~x.isposinf().any(-1)).nonzero().flatten().tolist():
        bad = (kept(a[r]) != kept(b[r])) & ~border(x[r:r + 1], float(ps[r]), m)[0]
        assert not bad.any(), f"row {r}: {int(bad.sum())} tokens off the border differ"


@needs_numba
@pytest.mark.parametrize("seed", range(36))
def test_compiled_top_k_equals_torch_path(seed):
    x = random_rows(seed)
    g = torch.Generator().manual_seed(seed)
    for k in (1, 3, x.shape[1] // 3 + 1, x.shape[1]):
        kk = torch.randint(1, k + 1, (len(x),), generator=g)
        for m in (1, 2):
            a, b = top_k(x, kk, m), torch_path(top_k, x, kk, m)
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), (k, m)


def long_rows(seed: int) -> torch.Tensor:
    "Long rows against top-k's sample and bracket: +inf outside the sample, ties, masks, rows the sample misreads."
    g = torch.Generator().manual_seed(seed)
    v = [8192, 9000, 20000, 49152][seed % 4]
    z = lambda: torch.randn(v, generator=g)
    rows = [z() * 3, -1.1 * (torch.randperm(v, generator=g).float() + 1).log() + 0.5 * z(), (z() * 2).round(),
            z().masked_fill(torch.rand(v, generator=g) < 0.9, NEG), torch.full((v,), 1.5), z().sort(descending=True).values]
    r = z(); r[torch.arange(v) % H._SPAN < H._TAKE] = 10.0; rows.append(r)  # the sample sees only the tens
    for n in (1, 3, 40):  # +inf tokens, outside the sample
        r = z(); r[torch.randperm(v, generator=g)[:n] | 7] = float("inf"); rows.append(r)
    return torch.stack(rows)


@needs_numba
@pytest.mark.parametrize("seed", range(12))
def test_compiled_top_k_kernel(seed):
    "`_top_k_compiled` (its bracket narrowed by counting) against `topk`, k from 1 to the vocabulary, per row."
    x = long_rows(seed)
    g = torch.Generator().manual_seed(seed)
    for hi in (2, 5, 60, 1000, x.shape[1] // 8, x.shape[1]):
        kk = torch.randint(1, hi + 1, (len(x), 1), generator=g)
        ref = torch.stack([r.masked_fill(r < r.topk(int(k)).values[-1], NEG) for r, k in zip(x, kk)])
        assert torch.equal(H._top_k_compiled(x, kk), ref), hi
        if 16 < hi <= x.shape[1] // 8:  # top_k's own range for the kernel
            assert torch.equal(top_k(x, kk[:, 0]), torch_path(top_k, x, kk[:, 0]))


@needs_numba
@pytest.mark.parametrize("seed", range(36))
@pytest.mark.parametrize("name", ["top_p", "typical"])
def test_compiled_mass_rules_match_torch_path(seed, name):
    x = random_rows(seed)
    g = torch.Generator().manual_seed(seed)
    fn, border = (top_p, border_top_p) if name == "top_p" else (typical, border_typical)
    for lo, hi in ((0.05, 0.5), (0.5, 0.99), (0.9, 0.9999)):
        ps = per_row(x, g, lo, hi)
        for m in (1, 3):
            a, b = fn(x, ps, m), torch_path(fn, x, ps, m)
            finite = ~(x.isnan().any(-1) | x.isposinf().any(-1))  # NaN / +inf rows: unspecified, both take the reference
            assert torch.equal(a[~finite].nan_to_num(), b[~finite].nan_to_num())
            assert_on_border(a, b, x, border, ps, m)
            both = kept(a) & kept(b)
            assert torch.equal(a[both].nan_to_num(), b[both].nan_to_num())  # kept values are the logits themselves


@needs_numba
def test_compiled_flat_long_rows():
    "Flat 49152-token rows (the crossing bin of a few hundred tokens) and a batch of one."
    g = torch.Generator().manual_seed(0)
    rank = torch.rand(8, 49152, generator=g).argsort(-1).float() + 1
    x = -1.1 * rank.log() + 0.5 * torch.randn(8, 49152, generator=g)
    for p in (0.3, 0.9, 0.99):
        for fn, border in ((top_p, border_top_p), (typical, border_typical)):
            a, b = fn(x, p), torch_path(fn, x, p)
            assert_on_border(a, b, x, border, torch.full((8,), p), 1)
            assert torch.equal(fn(x[3:4], p), a[3:4])  # row independence
    assert torch.equal(top_k(x, 1000), torch_path(top_k, x, 1000))


def test_numba_switch_by_environment():
    "SOFT_SAMPLER_NUMBA=0 turns the kernels off (the torch paths run)."
    code = "import soft_sampler.heuristics_hf as h; print(h._NUMBA)"
    env = dict(os.environ, SOFT_SAMPLER_NUMBA="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("rows", ["small", "vocab"])
@pytest.mark.parametrize("name", ["top_k", "top_p", "typical"])
def test_torch_paths_match_transformers(name, rows, monkeypatch):
    "The torch paths (the fallback without numba, and for the rows a kernel leaves) against transformers."
    monkeypatch.setattr(H, "_NUMBA", False)
    T.test_matches_transformers(name, rows)
