"""Scratch prototype (to be ported into nbs/03): the candidate-band exact paths for top-p and typical, and a
sampled-threshold top-k. Fallbacks are the existing paths of soft_sampler.heuristics_hf."""
from __future__ import annotations
import torch
from torch import Tensor
from soft_sampler import heuristics_hf as H
from soft_sampler.heuristics_hf import _NEG, _flat_nonzero, _floats, _ints, check_logits

_GAP = 8.0  # the band: tokens within this many nats of the row's top logit
_BANDCAP = 4096  # rows whose band holds more tokens take the histogram path
_FIX = 2.0 ** 56  # fixed point for masses: float32 probabilities >= 2^-32 are exact, sums are associative
_STRIDE = 16  # the sample that sends flat rows straight to the histogram path
_MARGIN = 1e-4  # typical: float64 scores within this (+ 4e-6 |top|, the float32 sums' error) of the boundary: fall back


def _fixed(p: Tensor) -> Tensor:
    "Probabilities (float32) as int64 fixed point (multiples of 2^-56)."
    return (p.double() * _FIX).long()


def _fixed_ceil(p: Tensor) -> Tensor:
    "ceil(p * 2^56): for an integer sum s, s < p * 2^56 <=> s < this."
    return (p.double() * _FIX).ceil().long()


_BW = 64  # tokens per block: block maxima find the band without a full-size mask


def _band(x: Tensor, gap: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The tokens within `gap` of their row's top logit, found through block maxima: flat indices (row-major), rows,
    count per row, the top logit `[b, 1]`, the threshold `[b, 1]` (inf where a row's band is not extracted: not finite,
    or more than half its blocks hit, a flat row)."""
    b, v = x.shape
    bm = x.view(b, v // _BW, _BW).amax(-1)
    top = bm.amax(-1, keepdim=True)
    thr = top - gap
    hits = bm >= thr
    flat_row = top.isfinite() & (hits.sum(-1, keepdim=True) * 2 <= bm.shape[1])
    thr = torch.where(flat_row, thr, float("inf"))
    hit = (hits & flat_row).view(-1).nonzero().squeeze(1)
    blk = x.view(-1, _BW)[hit]
    i = _flat_nonzero(blk >= thr.view(-1)[hit // bm.shape[1]][:, None])  # row-major in the blocks
    flat = hit[i // _BW] * _BW + i % _BW
    rows = flat // v
    return flat, rows, torch.bincount(rows, minlength=b), top, thr


def _desc_key(rows: Tensor, vals: Tensor) -> Tensor:
    "int64 keys sorting by row, then value descending (signed zeros equal); a stable sort keeps lower ids first."
    bits = (vals + 0.0).view(torch.int32).long()  # -0.0 + 0.0 = +0.0
    ordk = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # monotone in the value, as a signed int32
    return (rows << 32) + (0x7FFFFFFF - ordk)


def _segments(rows: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    "For entries sorted by row: each one's place within its row, and each row's first entry."
    start = n.cumsum(0) - n
    return torch.arange(len(rows), device=rows.device) - start[rows], start


def _top_p_band(x, probs, p, m, band):
    "top-p on the band for the rows where that is provably exact: (kept flat indices, ok rows)."
    b, v = x.shape
    flat, rows, n, top, thr = band
    ok = (thr.isfinite() & (p < 1)).squeeze(1) & (n <= _BANDCAP) & (n > 0)
    if not bool(ok.all()):
        sel = ok[rows]
        flat, rows, n = flat[sel], rows[sel], torch.where(ok, n, 0)
    if not len(flat): return flat, ok
    key, perm = _desc_key(rows, x.view(-1)[flat]).sort(stable=True)
    flat = flat[perm]
    q = _fixed(probs.view(-1)[flat])
    pos, start = _segments(rows, n)
    excl = q.cumsum(0) - q
    before = excl - excl[start.clamp_max(max(len(q) - 1, 0))][rows]
    keep = (before < _fixed_ceil(p).squeeze(1)[rows]) | (pos < m.squeeze(1)[rows])
    kept = torch.bincount(rows[keep], minlength=b)
    ok &= kept < n  # some band token is dropped: the mass reached p inside the band
    return flat[keep & ok[rows]], ok


def top_p(logits, p, min_tokens_to_keep=1):
    check_logits(logits)
    pc = _floats(p, "p", logits, low=0, high=1)
    m = _ints(min_tokens_to_keep, "min_tokens_to_keep", logits)
    if logits.dtype != torch.float32 or logits.is_cuda or logits.shape[1] < 8192 or logits.shape[1] % _BW or not len(m):
        return H.top_p(logits, p, min_tokens_to_keep)
    x = logits.contiguous()
    band = _band(x, _GAP)
    probs = x.softmax(-1)
    kept, ok = _top_p_band(x, probs, pc, m, band)
    if not bool(ok.any()): return _top_p_hist(x, probs, pc, m)
    slow = None if bool(ok.all()) else _top_p_hist(x[~ok], probs[~ok], pc[~ok], m[~ok])
    out = probs.fill_(_NEG)  # the softmax buffer takes the result
    out.view(-1)[kept] = x.view(-1)[kept]
    if slow is not None: out[~ok] = slow
    return out


def _top_p_hist(x, probs, pc, m):
    "The existing path (histogram over value bins + exact resolve) from the softmax; overwrites probs."
    if bool((pc >= 1).all()): return x.masked_fill(H._keep_first(probs == 0, x, m), _NEG)  # p = 1
    t, drop, ok = H._top_p_cut(x, probs, pc)
    slow = None if bool(ok.all()) else H._top_p_solve(x[~ok], probs[~ok], pc[~ok], m[~ok], x.shape[1])[0]
    out = H._keep_from(x, t, out=probs)
    out[drop] = _NEG
    if int(m.max()) > 1: out = x.masked_fill(H._keep_first(out == _NEG, x, m), _NEG)
    if slow is not None: out[~ok] = slow
    return out


def _typical_ok(band):
    "Rows whose band may settle typical: extracted, moderate (float32 sums good to ~1e-5), not too many tokens."
    flat, rows, n, top, thr = band
    return (thr.isfinite() & (top.abs() <= 64)).squeeze(1) & (n <= _BANDCAP) & (n > 0)


def _typical_band(x, probs, p, m, band):
    "typical on the band for the rows where that is provably exact: (kept flat indices, ok rows). Overwrites probs."
    b, v = x.shape
    flat, rows, n, top, thr = band
    ok = _typical_ok(band)
    xb, pb = x.view(-1)[flat], probs.view(-1)[flat]
    c = H._rowsum(probs.mul_(x), nan=True).double()  # sum p x = lse - H: the typical logit, float32 sum
    mg = _MARGIN + 4e-6 * (top.abs().double() + _GAP)  # float32 sums (ours and transformers') err by < 1e-6 sum p|x|
    ok &= (c > thr + mg).squeeze(1)  # tokens outside the band have scores > c - thr
    if not bool(ok.all()):
        sel = ok[rows]
        flat, rows, xb, pb, n = flat[sel], rows[sel], xb[sel], pb[sel], torch.where(ok, n, 0)
    if not len(flat): return flat, ok
    s = (xb.double() - c.squeeze(1)[rows]).abs()
    key, perm = (rows.double() * 64 + s.clamp_max(63)).sort(stable=True)
    flat, rows_s, s = flat[perm], rows, s[perm]  # rows stay sorted (row-major extraction)
    q = _fixed(pb[perm])
    pos, start = _segments(rows, n)
    incl = q.cumsum(0)
    base = (incl - q)[start.clamp_max(max(len(q) - 1, 0))]
    below = (incl - base[rows]) < _fixed_ceil(p).squeeze(1)[rows]
    last = torch.bincount(rows[below], minlength=b)  # tokens before the crossing
    j = torch.maximum(last, m.squeeze(1) - 1)
    ok &= j < n
    jj = (start + j.clamp_max(n - 1).clamp_min(0)).clamp_max(max(len(q) - 1, 0))
    kj = key[jj]
    # no other score within the margin of the boundary (exactly equal ones are the same logit: tied in float32 too)
    mg = mg.squeeze(1)
    lo_w, hi_w = torch.searchsorted(key, kj - mg), torch.searchsorted(key, kj + mg, right=True)
    lo_e, hi_e = torch.searchsorted(key, kj), torch.searchsorted(key, kj, right=True)
    ok &= (lo_w == lo_e) & (hi_w == hi_e) & (s[jj] + mg < (c - thr).squeeze(1))
    sl = s[(start + last.clamp_max(n - 1).clamp_min(0)).clamp_max(max(len(q) - 1, 0))]
    keep = (s <= sl[rows]) | (pos < m.squeeze(1)[rows])
    return flat[keep & ok[rows]], ok


def typical(logits, p, min_tokens_to_keep=1):
    check_logits(logits)
    pc = _floats(p, "p", logits, low=0, high=1, low_open=True, high_open=True)
    m = _ints(min_tokens_to_keep, "min_tokens_to_keep", logits)
    if logits.dtype != torch.float32 or logits.is_cuda or logits.shape[1] < 8192 or logits.shape[1] % _BW or not len(m):
        return H.typical(logits, p, min_tokens_to_keep)
    x = logits.contiguous()
    band = _band(x, _GAP)
    if not bool(_typical_ok(band).any()): return _typical_hist(x, pc, m)
    probs = x.softmax(-1)
    kept, ok = _typical_band(x, probs, pc, m, band)
    if not bool(ok.any()): return _typical_hist(x, pc, m)
    slow = None if bool(ok.all()) else _typical_hist(x[~ok], pc[~ok], m[~ok])
    out = probs.fill_(_NEG)
    out.view(-1)[kept] = x.view(-1)[kept]
    if slow is not None: out[~ok] = slow
    return out


def _typical_hist(x, pc, m):
    "The existing path: transformers' float32 scores, a histogram over score bins, exact resolve."
    s, probs = H._typical_scores(x)
    cut, ok = H._typical_cut(s, probs, pc)
    if not bool(ok.all()):  # NaN / inf rows, huge ties: the reference
        slow = H._typical_solve(x[~ok], s[~ok], probs[~ok], pc[~ok], m[~ok], x.shape[1])[0]
    if int(m.max()) > 1: out = torch.where(H._keep_first(s > cut, -s, m), _NEG, x)
    else: out = _keep_where(x, s, cut)
    if not bool(ok.all()): out[~ok] = slow
    return out


def _keep_where(x, s, cut):
    "`torch.where(s <= cut, x, -inf)` in cheap passes: +-inf signed by `cut - s`, then `minimum` (overwrites s)."
    d = torch.sub(cut.to(s.dtype), s, out=s)  # >= +0 where kept (x - x is +0, never -0)
    torch.copysign(torch.tensor(float("inf"), dtype=s.dtype), d, out=d)
    return torch.minimum(x, d, out=d)
