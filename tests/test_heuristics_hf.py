"""Heuristics I against transformers' own warpers, and their properties.

Equivalence: thousands of random rows (flat to peaked, 50/90/99% already -inf, ties, tiny and huge
magnitudes, offsets), generated in batches. Kept sets must equal transformers' except tokens whose
position lies within 1e-5 of the threshold (computed independently in float64); kept values must equal
transformers' to 1e-5 relative. Properties (hypothesis, small vocabularies): no in-place change, at
least one token kept, row independence, monotone kept sets, per-row parameters = separate calls.
"""
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from transformers.generation import logits_process as hf
from soft_sampler.heuristics_hf import (temperature, top_k, top_p, min_p, typical, epsilon, eta, top_h)

NEG, TOL = float("-inf"), 1e-5


# ---------------------------------------------------------------- random rows
def make_rows(n: int, v: int, seed: int) -> torch.Tensor:
    "n rows of vocabulary v, in 12 kinds (n/12 each): shapes, scales, masks, ties, offsets."
    g = torch.Generator().manual_seed(seed)
    per = n // 12
    z = lambda: torch.randn(per, v, generator=g)
    rank = torch.rand(per, v, generator=g).argsort(-1).double() + 1
    zipf = (-1.1 * rank.log()).float() * 1.0
    kinds = [
        z() * 1e-4,                                   # tiny magnitudes: flat
        z() * 0.5, z() * 2.0, z() * 4.0,              # flat to peaked
        zipf + 0.5 * z(),                             # LM-like heavy tail
        z() * 1e3,                                    # huge magnitudes: one-hot
        z() * 3 + 100.0,                              # offset
        (z() * 2).round(),                            # many ties
        z() * 2, z() * 2, z() * 2,                    # masked 50/90/99% below
        torch.full((per, v), 2.0) + (torch.rand(per, v, generator=g) < 0.02) * 1.0,  # ties at the top
    ]
    for x, frac in zip(kinds[8:11], (0.5, 0.9, 0.99)):
        x.masked_fill_(torch.rand(per, v, generator=g) < frac, NEG)
        x[:, 0] = x[:, 0].nan_to_num(neginf=-1.0)  # keep one finite logit in each row
    return torch.cat(kinds)


ROWS = {"small": make_rows(12 * 200, 256, 0), "vocab": make_rows(12 * 2, 49152, 1)}


# ---------------------------------------------------------------- float64 positions of each token
def _interval_mass(order_key, p, eps=0.0):
    "For each token: mass strictly before it and mass before-or-tied minus itself, ordering by order_key descending."
    srt, idx = order_key.sort(-1)  # ascending
    cp = torch.cat([torch.zeros_like(p[:, :1]), p.gather(1, idx).cumsum(-1)], 1)
    total = cp[:, -1:]
    hi_pos = torch.searchsorted(srt.contiguous(), (order_key - eps).contiguous(), right=False)  # count of keys < key - eps
    lo_pos = torch.searchsorted(srt.contiguous(), (order_key + eps).contiguous(), right=True)   # count of keys <= key + eps
    before_strict = total - cp.gather(1, lo_pos)        # keys > key + eps
    before_tied = total - cp.gather(1, hi_pos) - p      # keys >= key - eps, minus itself
    return before_strict, before_tied


def near(lo, hi, thr, slack=0.0):
    return (lo - TOL - slack <= thr) & (thr <= hi + TOL + slack)


def f32_cumsum_slack(x, key):
    """How far transformers' float32 running sum of probabilities (in ascending `key` order, as its warpers sum)
    strays from the float64 sum, per row. It depends on the CPU's vector width (AVX2 vs AVX-512 softmax), and on
    flat 49152-token rows it exceeds TOL: tokens that close to the threshold are undecided."""
    idx = key.argsort(dim=-1, stable=True)
    c32 = x.gather(1, idx).softmax(-1).cumsum(-1)
    c64 = x.double().gather(1, idx).softmax(-1).cumsum(-1)
    return (c32.double() - c64).abs().amax(-1, keepdim=True)


def tied_with_rank(x, m, probs=False):
    "Tokens tied with the m-th largest logit (or float32 probability): transformers' choice among them is unspecified."
    if m <= 1: return torch.zeros_like(x, dtype=torch.bool)
    y = x.softmax(-1) if probs else x
    return y == y.topk(m).values[:, -1:]


def border_top_p(x, p, m):
    p64 = x.double().softmax(-1)
    lo, hi = _interval_mass(x.double(), p64)
    return near(lo, hi, p, f32_cumsum_slack(x, x)) | tied_with_rank(x, m) | (p64 < 1e-30)


def border_typical(x, mass, m):
    x64 = x.double()
    lp = x64.log_softmax(-1); p64 = lp.exp()
    ent = -(lp * p64).nansum(-1, keepdim=True)
    s = (-lp - ent).abs()
    lo, hi = _interval_mass(-s, p64, eps=1e-5)  # closest to the entropy first; float32 scores tie within ~1e-6
    s32 = (-(x.log_softmax(-1)) + (x.log_softmax(-1) * x.softmax(-1)).nansum(-1, keepdim=True)).abs()
    tied_m = torch.zeros_like(x, dtype=torch.bool) if m <= 1 else \
        (s32 - (-(-s32).topk(m).values[:, -1:])).abs() <= 1e-5 * (1 + s32.abs())
    return near(lo, hi, mass, f32_cumsum_slack(x, s32)) | tied_m | (p64 < 1e-30)


def border_ratio(x, thr_fn, m, probs=False):
    "Tokens whose float64 probability is within 1e-5 (relative) of a per-row threshold."
    p64 = x.double().softmax(-1)
    thr = thr_fn(x.double(), p64)
    return ((p64 - thr).abs() <= TOL * thr) | tied_with_rank(x, m, probs)


def border_top_h(x, h, n=100):
    n = min(n, x.shape[1])
    vals, cols = x.double().topk(n)
    q = vals.softmax(-1)
    terms = -(q * q.log()).nan_to_num(0.0)
    H = terms.sum(-1, keepdim=True)
    lo, hi = _interval_mass(vals, terms)
    inside = near(lo + terms, hi + terms, h * H) | (q < 1e-30)
    inside |= (vals == vals[:, -1:]) | (vals == vals[:, :1])  # ties with the 100th or the forced 1st: unspecified
    return torch.zeros_like(x, dtype=torch.bool).scatter(1, cols, inside)


# ---------------------------------------------------------------- the cases
def _hf(cls, *a, **kw):
    w = cls(*a, **kw)
    return lambda x: w(None, x)

CASES = {  # name: [(ours, theirs, border or None)]
    "top_k": [(lambda x, k=k, m=m: top_k(x, k, m), _hf(hf.TopKLogitsWarper, k, min_tokens_to_keep=m), None)
              for k in (1, 5, 50, 600) for m in (1, 3)],
    "top_p": [(lambda x, p=p, m=m: top_p(x, p, m), _hf(hf.TopPLogitsWarper, p, min_tokens_to_keep=m),
               lambda x, p=p, m=m: border_top_p(x, p, m))
              for p in (0.0, 0.5, 0.9, 0.999, 1.0) for m in (1, 3)],
    "min_p": [(lambda x, p=p, m=m: min_p(x, p, m), _hf(hf.MinPLogitsWarper, p, min_tokens_to_keep=m),
               lambda x, p=p, m=m: border_ratio(x, lambda x64, p64: p * p64.amax(-1, keepdim=True), m, probs=True))
              for p in (0.0, 0.02, 0.1, 0.5, 1.0) for m in (1, 3)],
    "typical": [(lambda x, p=p, m=m: typical(x, p, m), _hf(hf.TypicalLogitsWarper, p, min_tokens_to_keep=m),
                 lambda x, p=p, m=m: border_typical(x, p, m))
                for p in (0.05, 0.2, 0.5, 0.9, 0.99) for m in (1, 3)],
    "epsilon": [(lambda x, e=e, m=m: epsilon(x, e, m), _hf(hf.EpsilonLogitsWarper, e, min_tokens_to_keep=m),
                 lambda x, e=e, m=m: border_ratio(x, lambda x64, p64: torch.full_like(p64[:, :1], e), m))
                for e in (1e-5, 3e-4, 0.01, 0.2, 0.9) for m in (1, 3)],
    "eta": [(lambda x, e=e, m=m: eta(x, e, m), _hf(hf.EtaLogitsWarper, e, min_tokens_to_keep=m),
             lambda x, e=e, m=m: border_ratio(x, lambda x64, p64: torch.minimum(
                 torch.tensor(e, dtype=torch.float64), e ** 0.5 * torch.exp(
                     (p64 * x64.log_softmax(-1)).nan_to_num(0.0).sum(-1, keepdim=True))), m))
            for e in (1e-5, 3e-4, 4e-3, 0.2, 0.9, 0.995) for m in (1, 3)],  # > 0.99: the rank guard is computed
    "top_h": [(lambda x, h=h: top_h(x, h), _hf(hf.TopHLogitsWarper, h), lambda x, h=h: border_top_h(x, h))
              for h in (0.05, 0.3, 0.6, 0.9, 1.0)],
    "temperature": [(lambda x, t=t: temperature(x, t), _hf(hf.TemperatureLogitsWarper, t), None)
                    for t in (0.01, 0.7, 1.0, 1.5, 10.0)],
}


@pytest.mark.parametrize("rows", sorted(ROWS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_transformers(name, rows):
    x, cases = ROWS[rows], CASES[name]
    for i, (ours, theirs, border) in enumerate(cases if rows == "small" else cases[::3]):
        before = x.clone()
        a, b = ours(x), theirs(x)
        assert torch.equal(x, before), "input modified"
        ka, kb = a != NEG, b != NEG
        diff = ka != kb
        if border is None: assert not diff.any(), f"{name} case {i}: {int(diff.sum())} tokens differ"
        elif diff.any():
            r = diff.any(-1).nonzero().flatten()  # the threshold positions are computed for these rows only
            bad = diff[r] & ~border(x[r])
            r = r[bad.any(-1)][:3].tolist()
            assert not bad.any(), f"{name} case {i}: {int(bad.sum())} tokens off the threshold differ, rows {r}"
        if rows == "small" and name != "top_k":  # the tolerance is an exception: rows without ties agree exactly
            kinds = [0, 1, 2, 3, 4, 6, 8, 9, 10] if name == "min_p" else [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
            # (min_p on one-hot rows, kind 5: transformers keeps arbitrary zero-probability tokens for m > 1)
            plain = diff.view(12, -1, x.shape[1])[kinds].any(-1)
            assert plain.float().mean() < 0.01, f"{name} case {i}: {float(plain.float().mean()):.3f} of rows differ"
        both = ka & kb
        torch.testing.assert_close(a[both], b[both], rtol=TOL, atol=0)
        assert (ka.any(-1) | ~x.isfinite().any(-1)).all(), "a row with a finite logit kept nothing"


# ---------------------------------------------------------------- rows with -inf
def test_all_neg_inf_rows():
    x = torch.randn(3, 300); x[1] = NEG
    for name, cases in CASES.items():
        ours = cases[0][0](x)
        assert (ours[1] == NEG).all(), name
        assert torch.equal(ours[[0, 2]], cases[0][0](x[[0, 2]])), name
    for cls, arg in [(hf.EtaLogitsWarper, 1e-3), (hf.TopHLogitsWarper, 0.5)]:  # transformers' quirk
        with pytest.raises(ValueError): cls(arg)(None, x)
    for cls, arg in [(hf.TopPLogitsWarper, 0.9), (hf.TopKLogitsWarper, 5), (hf.MinPLogitsWarper, 0.1),
                     (hf.TypicalLogitsWarper, 0.9), (hf.EpsilonLogitsWarper, 1e-3)]:
        assert (cls(arg)(None, x)[1] == NEG).all()


def test_greedy_temperature():
    x = torch.tensor([[1., 4, 4, 2], [NEG, NEG, NEG, NEG], [NEG, -3, NEG, NEG]])
    out = temperature(x, 0)
    assert out[0].tolist() == [NEG, 4, NEG, NEG]  # first index among tied maxima
    assert (out[1] == NEG).all() and out[2].tolist() == [NEG, -3, NEG, NEG]
    y = ROWS["small"]
    g = temperature(y, 0)
    assert ((g != NEG).sum(-1) == 1).all()
    assert torch.equal(g.argmax(-1), y.argmax(-1))


# ---------------------------------------------------------------- per-row parameters
PER_ROW = {
    "temperature": (temperature, [0.0, 0.5, 2.0]), "top_k": (top_k, [1, 7, 40]),
    "top_p": (top_p, [0.0, 0.6, 0.95]), "min_p": (min_p, [0.0, 0.05, 0.3]),
    "typical": (typical, [0.2, 0.7, 0.95]), "epsilon": (epsilon, [1e-4, 1e-2, 0.3]),
    "eta": (eta, [1e-4, 4e-3, 0.3]), "top_h": (top_h, [0.1, 0.5, 1.0]),
}


@pytest.mark.parametrize("name", sorted(PER_ROW))
def test_per_row_equals_separate_calls(name):
    f, values = PER_ROW[name]
    x = ROWS["vocab"][::3]
    which = torch.arange(x.shape[0]) % len(values)
    dtype = torch.long if isinstance(values[0], int) else torch.float32
    out = f(x, torch.tensor(values, dtype=dtype)[which])
    for j, v in enumerate(values):
        assert torch.equal(out[which == j], f(x[which == j], v)), (name, v)
    if name not in ("temperature", "top_h"):
        m = torch.tensor([1, 2, 5])[which]
        out = f(x, values[1], min_tokens_to_keep=m)
        for j, mj in enumerate([1, 2, 5]):
            assert torch.equal(out[which == j], f(x[which == j], values[1], min_tokens_to_keep=mj)), (name, mj)


# ---------------------------------------------------------------- properties (hypothesis)
FNS = {  # name: (fn, parameter strategy, larger parameter keeps more?)
    "temperature": (temperature, st.floats(0.05, 5), None),
    "top_k": (top_k, st.integers(1, 12), True),
    "top_p": (top_p, st.floats(0, 1), True),
    "min_p": (min_p, st.floats(0, 1), False),
    "typical": (typical, st.floats(0.01, 0.99), True),
    "epsilon": (epsilon, st.floats(1e-4, 0.99), False),
    "eta": (eta, st.floats(1e-4, 0.99), False),
    "top_h": (top_h, st.floats(0.01, 1), True),
}
logit = st.one_of(st.floats(-30, 30, width=32), st.just(NEG), st.sampled_from([0.0, 1.0]))
rows = st.integers(1, 4).flatmap(lambda b: st.integers(2, 12).flatmap(
    lambda v: st.lists(st.lists(logit, min_size=v, max_size=v), min_size=b, max_size=b)))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(FNS))
@SETTINGS
@given(data=st.data())
def test_properties(name, data):
    f, param, larger_keeps_more = FNS[name]
    x = torch.tensor(data.draw(rows))
    b = x.shape[0]
    ps = [data.draw(param) for _ in range(b)]
    before = x.clone()
    out = f(x, torch.tensor(ps))
    assert torch.equal(x, before)  # no in-place change
    assert out.shape == x.shape and out.dtype == x.dtype
    kept = out != NEG
    assert (kept.any(-1) | ~x.isfinite().any(-1)).all()  # a row with a finite logit keeps a token
    if name != "temperature": assert torch.equal(out[kept], x[kept])  # kept logits unchanged
    for i in range(b):  # per-row parameters = separate calls = rows alone (row independence)
        assert torch.equal(out[i], f(x[i:i + 1], ps[i])[0])
    if larger_keeps_more is not None:  # monotone kept sets
        q = data.draw(param)
        lo, hi = sorted([ps[0], q])
        klo, khi = f(x[:1], lo) != NEG, f(x[:1], hi) != NEG
        small, big = (klo, khi) if larger_keeps_more else (khi, klo)
        assert not (small & ~big).any(), (lo, hi)


# ---------------------------------------------------------------- errors
BAD = [
    (temperature, -0.5, "`t` must be a number in [0, inf)"),
    (top_k, 0, "`k` must be an integer in [1, inf)"), (top_k, 2.5, "`k` must be an integer"),
    (top_p, 1.01, "`p` must be a number in [0, 1]"), (top_p, float("nan"), "`p` must be a number in [0, 1]"),
    (min_p, -0.1, "`p` must be a number in [0, 1]"),
    (typical, 0.0, "`p` must be a number in (0, 1)"), (typical, 1.0, "`p` must be a number in (0, 1)"),
    (epsilon, 0.0, "`eps` must be a number in (0, 1)"), (eta, 1.0, "`eps` must be a number in (0, 1)"),
    (top_h, 0.0, "`h` must be a number in (0, 1]"), (top_h, 1.5, "`h` must be a number in (0, 1]"),
]


@pytest.mark.parametrize("f,value,msg", BAD, ids=[f"{f.__name__}={v}" for f, v, _ in BAD])
def test_bad_parameters(f, value, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        f(torch.zeros(2, 5), value)


def test_bad_shapes_and_types():
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"`p` must be a number or a tensor of shape \[batch\]=\[2\]"):
        top_p(x, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"at rows \[1\]"): min_p(x, torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="`min_tokens_to_keep` must be an integer in \\[1, inf\\)"): top_p(x, 0.5, 0)
    with pytest.raises(TypeError, match="`p` must be a real number"): top_p(x, True)
    with pytest.raises(TypeError, match="`logits` must be floating point"): top_k(torch.zeros(2, 5, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"`logits` must have shape \[batch, vocab\]"): top_k(torch.zeros(5), 1)
    with pytest.raises(ValueError, match="`top_n` must be a positive integer or None"): top_h(x, 0.5, top_n=0)


@pytest.mark.parametrize("e", [3e-4, 0.01])
def test_cutoff_paths_agree(e):
    "ε compares logits against a logit-space threshold where that is exact, else probabilities: both match transformers."
    x = ROWS["vocab"][::2]
    mixed = torch.cat([x[:4], x[4:] + 1e4])  # huge rows take the probability-space path
    ours, theirs = epsilon(mixed, e).isfinite(), hf.EpsilonLogitsWarper(e)(None, mixed).isfinite()
    border = border_ratio(mixed, lambda x64, p64: torch.full_like(p64[:, :1], e), 1)
    assert not ((ours ^ theirs) & ~border).any()
    assert torch.equal(epsilon(mixed[:4], e), epsilon(x[:4], e))  # a row's path never depends on the others


@pytest.mark.parametrize("rows", sorted(ROWS))
def test_cutoff_when_token_0_is_negligible(rows):
    "ε and η read the log-sum-exp off p_0; where p_0 is 0 or subnormal they use the top token: still transformers' answer."
    x = ROWS[rows][ROWS[rows].shape[0] // 12 * 1:ROWS[rows].shape[0] // 12 * 5].clone()  # flat to peaked, LM-like
    x[::2, 0] = NEG                                              # p_0 = 0
    x[1::2, 0] = x[1::2].amax(-1) - 95                          # p_0 ~ e^-95: a subnormal float32
    assert (x[1::2].softmax(-1)[:, 0] < torch.finfo(torch.float32).tiny).all()
    for e in (3e-4, 0.01, 0.995):
        for ours, theirs, thr in [
                (epsilon(x, e), hf.EpsilonLogitsWarper(e)(None, x), lambda x64, p64: torch.full_like(p64[:, :1], e)),
                (eta(x, e), hf.EtaLogitsWarper(e)(None, x), lambda x64, p64: torch.minimum(
                    torch.tensor(e, dtype=torch.float64),
                    e ** 0.5 * torch.exp((p64 * x64.log_softmax(-1)).nan_to_num(0.0).sum(-1, keepdim=True))))]:
            diff = (ours != NEG) != (theirs != NEG)
            assert not (diff & ~border_ratio(x, thr, 1)).any(), e
            assert diff.float().mean() < 1e-3, e
            both = (ours != NEG) & (theirs != NEG)
            torch.testing.assert_close(ours[both], theirs[both], rtol=TOL, atol=0)


def test_eta_rows_independent_of_batch():
    "η's entropy form is chosen row by row: a row's result is bit-identical alone and beside -inf / huge rows."
    x = ROWS["vocab"][:6].clone()
    x[1, ::2] = NEG  # a row with -inf logits
    x[2] += 1e4       # a row with huge logits
    for e in (3e-4, 0.01):
        whole = eta(x, e)
        for i in range(x.shape[0]):
            assert torch.equal(whole[i:i + 1], eta(x[i:i + 1], e)), i
