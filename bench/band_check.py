import sys, torch
sys.path.insert(0, 'tests'); sys.path.insert(0, 'bench')
from test_heuristics_hf import make_rows, border_top_p, border_typical, NEG
from transformers.generation import logits_process as hf
import band_proto as B
from soft_sampler import heuristics_hf as H

def lm_rows(n, v, seed):
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(n, v, generator=g).argsort(-1).float() + 1
    scale = torch.rand(n, 1, generator=g) * 3 + 1.2
    x = -scale * rank.log() + 0.5 * torch.randn(n, v, generator=g)
    return x

def odd_rows(v):
    g = torch.Generator().manual_seed(5)
    r = [lm_rows(1, v, 9)[0] for _ in range(8)]
    r[0][:] = (r[0] * 4).round() / 4  # ties everywhere
    r[1][r[1] == r[1].max()] = 0.0; r[1] = r[1] - r[1].max(); r[1][::7] = -0.0 * (r[1][::7] == 0)  # signed zeros
    r[2][torch.rand(v, generator=g) < 0.97] = NEG
    r[3] = r[3] * 1e4
    r[4][5] = float('nan')
    r[5][7] = float('inf')
    r[6][:] = NEG
    r[7] = r[7] + 1e6
    return torch.stack(r)

def tied_crossing(v):
    x = torch.full((4, v), -30.0)
    x[:, :4] = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))
    x[1, :8] = torch.log(torch.tensor([0.25]*4 + [1e-9]*4))
    return x

def eq(a, b): return bool(((a == b) | (a.isnan() & b.isnan())).all())

def offborder(a, b, border, x):
    diff = (a != NEG) != (b != NEG)
    if not diff.any(): return 0
    r = diff.any(-1).nonzero().flatten()
    return int((diff[r] & ~border(x[r])).sum())

def check(name, ours, theirs, border, x, ref=None):
    a, b = ours(x), theirs(x)
    if ref is not None:
        n_ours, n_ref = offborder(a, b, border, x), offborder(ref(x), b, border, x)
        if n_ours > n_ref: print(f"  {name}: {n_ours} tokens off the border differ (existing path: {n_ref})")
        return max(n_ours - n_ref, 0)
    ka, kb = a != NEG, b != NEG
    diff = ka != kb
    nbad = 0
    if diff.any():
        r = diff.any(-1).nonzero().flatten()
        bad = diff[r] & ~border(x[r])
        nbad = int(bad.sum())
        if nbad: print(f"  {name}: {nbad} tokens off the border differ, rows {r[bad.any(-1)][:5].tolist()}")
    both = ka & kb
    assert torch.allclose(a[both], b[both], rtol=1e-5, atol=0, equal_nan=True), name
    return nbad

def hfw(cls, p, m):
    w = cls(p, min_tokens_to_keep=m); return lambda x: w(None, x)

v = 16384
X = [make_rows(12 * 4, v, s) for s in (1, 2)] + [lm_rows(48, v, 3), odd_rows(v), tied_crossing(v)]
tot = 0
for xi, x in enumerate(X):
    for p in (0.0, 0.3, 0.9, 0.95, 0.999, 1.0):
        for m in (1, 2, 5):
            tot += check(f"top_p set{xi} p={p} m={m}", lambda y: B.top_p(y, p, m), hfw(hf.TopPLogitsWarper, p, m),
                         lambda y: border_top_p(y, p, m), x, lambda y: H.top_p(y, p, m))
            same = eq(B.top_p(x, p, m), H.top_p(x, p, m))
            if not same: print(f"  top_p set{xi} p={p} m={m}: differs from the existing path")
    for p in (0.05, 0.3, 0.9, 0.95, 0.99):
        for m in (1, 2, 5):
            tot += check(f"typical set{xi} p={p} m={m}", lambda y: B.typical(y, p, m), hfw(hf.TypicalLogitsWarper, p, m),
                         lambda y: border_typical(y, p, m), x, lambda y: H.typical(y, p, m))
            a, b = B.typical(x, p, m), H.typical(x, p, m)
            if not eq(a, b): print(f"  typical set{xi} p={p} m={m}: differs from the existing path in {int(((a!=NEG)!=(b!=NEG)).sum())} tokens")
# per-row p
x = torch.cat([lm_rows(16, v, 7), make_rows(12, v, 8)])
pr = torch.rand(len(x), generator=torch.Generator().manual_seed(3)) * 0.98 + 0.01
mr = torch.randint(1, 6, (len(x),), generator=torch.Generator().manual_seed(4))
for f, g in ((B.top_p, H.top_p), (B.typical, H.typical)):
    a = f(x, pr, mr)
    sep = torch.cat([f(x[i:i+1], float(pr[i]), int(mr[i])) for i in range(len(x))])
    assert torch.equal(a, sep), f"{f.__name__}: per-row != separate calls"
    assert torch.equal(a, torch.cat([f(x[i:i+4], pr[i:i+4], mr[i:i+4]) for i in range(0, len(x), 4)])), "batch composition"
    print(f.__name__, "per-row vs existing equal:", torch.equal(a, g(x, pr, mr)))
print("tokens off border:", tot)
