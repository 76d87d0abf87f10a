"""The candidate-band paths of top-p and typical (long float32 rows on the CPU) against transformers' warpers.

Rows long enough for the band (16384 tokens): LM-like heavy tails at several temperatures (where the band
decides most rows), the 12 stress kinds of test_heuristics_hf, and odd rows: ties everywhere, signed zeros,
97% -inf, huge logits, NaN, +inf, all -inf. Kept sets must equal transformers' except tokens within 1e-5 of the
threshold (the same border as test_heuristics_hf) and must equal the histogram path's (the previous exact
path) bit for bit; a row's result must not depend on the rest of the batch.
"""
import pytest, torch
from transformers.generation import logits_process as hf
from test_heuristics_hf import make_rows, border_top_p, border_typical, NEG
from soft_sampler import heuristics_hf as H

V = 16384


def lm_rows(n: int, v: int, seed: int) -> torch.Tensor:
    "Zipf-like rows, -a log(rank) + noise, with a in [1.2, 4.2): peaked to fairly flat."
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(n, v, generator=g).argsort(-1).float() + 1
    return -(torch.rand(n, 1, generator=g) * 3 + 1.2) * rank.log() + 0.5 * torch.randn(n, v, generator=g)


def odd_rows(v: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    r = list(lm_rows(9, v, 9))
    r[0] = (r[0] * 4).round() / 4  # ties everywhere
    r[1] = r[1] - r[1].max(); r[1][::7] = torch.where(r[1][::7] == 0, -0.0, r[1][::7])  # signed zeros at the top
    r[2][torch.rand(v, generator=g) < 0.97] = NEG
    r[3] = r[3] * 1e4
    r[4][5] = float("nan")
    r[5][7] = float("inf")
    r[6][:] = NEG
    r[7] = r[7] + 1e6
    r[8][:4] = torch.tensor([0.5, 0.25, 0.125, 0.125]).log(); r[8][4:] = -30.0  # tied crossings
    return torch.stack(r)


ROWS = torch.cat([lm_rows(36, V, 3), make_rows(24, V, 1), odd_rows(V)])


def _same(a, b):
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _offborder(a, b, border, x):
    diff = (a != NEG) != (b != NEG)
    if not diff.any(): return 0
    r = diff.any(-1).nonzero().flatten()
    return int((diff[r] & ~border(x[r])).sum())


def _hist(name):
    "The histogram path alone (the band switched off)."
    band = H._top_band
    def f(x, p, m):
        H._top_band = lambda x, gap: band(x, -1.0)  # an empty band: every row falls back
        try: return getattr(H, name)(x, p, m)
        finally: H._top_band = band
    return f


@pytest.mark.parametrize("name,warper,border,ps", [
    ("top_p", hf.TopPLogitsWarper, border_top_p, (0.0, 0.3, 0.9, 0.95, 0.999, 1.0)),
    ("typical", hf.TypicalLogitsWarper, border_typical, (0.05, 0.3, 0.9, 0.95, 0.99))])
@pytest.mark.parametrize("m", [1, 2, 5])
def test_band_matches_transformers_and_histogram(name, warper, border, ps, m):
    f, hist = getattr(H, name), _hist(name)
    for p in ps:
        w = warper(p, min_tokens_to_keep=m)
        a, b, c = f(ROWS, p, m), w(None, ROWS), hist(ROWS, p, m)
        assert _same(a, c), f"{name} p={p} m={m}: differs from the histogram path"
        # as many tokens off the border as the histogram path (0 on all but NaN/inf rows, where both keep one token)
        assert _offborder(a, b, lambda y: border(y, p, m), ROWS) == _offborder(c, b, lambda y: border(y, p, m), ROWS)


@pytest.mark.parametrize("name", ["top_p", "typical"])
def test_band_rows_independent_of_batch(name):
    f = getattr(H, name)
    x = torch.cat([lm_rows(12, V, 7), make_rows(12, V, 8), odd_rows(V)])
    p = torch.rand(len(x), generator=torch.Generator().manual_seed(3)) * 0.98 + 0.01
    m = torch.randint(1, 6, (len(x),), generator=torch.Generator().manual_seed(4))
    whole = f(x, p, m)
    assert _same(whole, torch.cat([f(x[i:i + 1], float(p[i]), int(m[i])) for i in range(len(x))]))
    assert _same(whole, torch.cat([f(x[i:i + 5], p[i:i + 5], m[i:i + 5]) for i in range(0, len(x), 5)]))
    assert _same(whole, _hist(name)(x, p, m))


def test_band_decides_lm_rows():
    "The band path is taken (and certified) on most LM-like rows, and on none of the NaN / inf / -inf rows."
    x = ROWS
    probs = x.softmax(-1)
    one = torch.ones(len(x), 1, dtype=torch.long)
    band = H._top_band(x, H._GAP)
    ok_p = H._top_p_band(x, probs.clone(), torch.full((len(x), 1), 0.9), one, band)[1]
    ok_t = H._typical_band(x, probs.clone(), torch.full((len(x), 1), 0.9), one, band)[1]
    assert ok_p[:36].float().mean() > 0.7 and ok_t[:36].float().mean() > 0.5
    assert not (ok_p[-5:-2] | ok_t[-5:-2]).any()  # NaN, +inf, all -inf
