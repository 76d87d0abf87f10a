"TruncatedLogitsLoss against independent computations: float64 loops, torch's kl_div, closed-form gradients."
import math
import pytest, torch
from hypothesis import given, settings, strategies as st
from soft_sampler.loss import TruncatedLogitsLoss, LossParts

INF = math.inf


def _reference_rows(pred, target, gamma):
    "Per-row (loss, kl, removed) in float64 with plain Python loops."
    out = []
    for z, t in zip(pred.double().tolist(), target.double().tolist()):
        zmax = max(z); tmax = max(v for v in t if v > -INF)
        zs = sum(math.exp(v - zmax) for v in z if v > -INF)
        ts = sum(math.exp(v - tmax) for v in t if v > -INF)
        p = [math.exp(v - zmax) / zs if v > -INF else 0.0 for v in z]
        q = [math.exp(v - tmax) / ts if v > -INF else 0.0 for v in t]
        kl = sum(qi * (math.log(qi) - math.log(pi)) if pi > 0 else INF for qi, pi in zip(q, p) if qi > 0)
        r = sum(pi for pi, v in zip(p, t) if v == -INF)
        out.append((kl + gamma * r, kl, r))
    return torch.tensor(out, dtype=torch.float64)


@st.composite
def _pair(draw):
    b, v = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    vals = st.floats(-8, 8, allow_nan=False, width=32)
    pred = torch.tensor(draw(st.lists(st.lists(vals, min_size=v, max_size=v), min_size=b, max_size=b)))
    target = torch.tensor(draw(st.lists(st.lists(vals, min_size=v, max_size=v), min_size=b, max_size=b)))
    keep = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=v, max_size=v), min_size=b, max_size=b)))
    keep[torch.arange(b), torch.tensor(draw(st.lists(st.integers(0, v - 1), min_size=b, max_size=b)))] = True
    return pred, target.masked_fill(~keep, -INF)


@settings(max_examples=60, deadline=None)
@given(_pair(), st.floats(0, 3))
def test_matches_float64_loops(pair, gamma):
    pred, target = pair
    parts = TruncatedLogitsLoss(gamma=gamma, reduction="none")(pred, target)
    ref = _reference_rows(pred, target, gamma)
    for i, t in enumerate(parts):
        torch.testing.assert_close(t.double(), ref[:, i], atol=2e-5, rtol=1e-4)
    mean = TruncatedLogitsLoss(gamma=gamma)(pred, target)
    torch.testing.assert_close(mean.loss.double(), ref[:, 0].mean(), atol=2e-5, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(_pair(), st.floats(0, 3))
def test_identity_prediction_costs_minus_log_m(pair, gamma):
    _, target_mask = pair
    x = torch.randn(target_mask.shape, generator=torch.Generator().manual_seed(target_mask.numel())) * 3
    target = x.masked_fill(target_mask == -INF, -INF)
    m = torch.where(target > -INF, x.double().softmax(-1), 0).sum(-1)
    parts = TruncatedLogitsLoss(gamma=gamma, reduction="none")(x.double(), target.double())
    torch.testing.assert_close(parts.kl, -m.log(), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(parts.removed_mass, 1 - m, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(parts.loss, -m.log() + gamma * (1 - m), atol=1e-12, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(_pair(), st.floats(0, 3))
def test_lower_bound_and_zero_at_target(pair, gamma):
    pred, target = pair
    parts = TruncatedLogitsLoss(gamma=gamma, reduction="none")(pred.double(), target.double())
    r = parts.removed_mass
    assert (parts.kl >= -torch.log1p(-r.clamp(max=1 - 1e-15)) - 1e-9).all()
    assert (parts.loss >= -1e-9).all()
    at_target = TruncatedLogitsLoss(gamma=gamma, reduction="none")(target.double() - 1.5, target.double())
    torch.testing.assert_close(at_target.loss, torch.zeros_like(r), atol=1e-12, rtol=0)


def test_all_kept_rows_equal_torch_kl_div():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(5, 300, generator=g) * 2, torch.randn(5, 300, generator=g) * 2
    parts = TruncatedLogitsLoss(gamma=2.0)(pred, target)
    ref = torch.nn.functional.kl_div(pred.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(parts.kl, ref)
    assert parts.removed_mass.item() == 0.0
    torch.testing.assert_close(parts.loss, parts.kl)


def test_gradient_matches_closed_form():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 200, generator=g, dtype=torch.float64) * 2
    target = x.masked_fill(x.softmax(-1) < 0.05 * x.softmax(-1).amax(-1, keepdim=True), -INF)
    z = (torch.randn(4, 200, generator=g, dtype=torch.float64) * 2).requires_grad_()
    TruncatedLogitsLoss(gamma=0.3)(z, target).loss.backward()
    p, q, rem = z.detach().softmax(-1), target.softmax(-1), target == -INF
    r = torch.where(rem, p, 0).sum(-1, keepdim=True)
    torch.testing.assert_close(z.grad, (p - q + 0.3 * (torch.where(rem, p, 0) - r * p)) / 4)


def test_pred_removing_a_kept_token_is_inf_with_finite_gradient():
    target = torch.tensor([[1.0, 0.0, -INF, 0.5], [0.0, 1.0, 2.0, 3.0]])
    z = torch.tensor([[1.0, -INF, 0.0, 0.5], [0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    parts = TruncatedLogitsLoss(reduction="none")(z, target)
    assert parts.kl[0].item() == INF and math.isfinite(parts.kl[1].item())
    parts.loss.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_pred_minus_inf_on_removed_tokens_and_target_underflow_are_finite():
    target = torch.tensor([[0.0, -200.0, -INF]])  # q of token 1 underflows to 0 in float32
    z = torch.tensor([[0.0, -INF, -INF]], requires_grad=True)
    parts = TruncatedLogitsLoss()(z, target)
    assert torch.isfinite(parts.loss) and parts.removed_mass.item() == 0.0
    parts.loss.backward()
    assert torch.isfinite(z.grad).all()


def test_inputs_not_modified_and_dtypes():
    pred, target = torch.randn(2, 7), torch.randn(2, 7)
    target[0, 3] = -INF
    p0, t0 = pred.clone(), target.clone()
    out = TruncatedLogitsLoss()(pred.to(torch.bfloat16), target)
    assert out.loss.dtype == torch.float32
    assert TruncatedLogitsLoss()(pred.double(), target).loss.dtype == torch.float64
    assert isinstance(out, LossParts) and torch.equal(pred, p0) and torch.equal(target, t0)


@pytest.mark.parametrize("kw,msg", [(dict(gamma=-0.1), "`gamma`"), (dict(gamma=math.nan), "`gamma`"),
                                    (dict(gamma=True), "`gamma`"), (dict(reduction="avg"), "`reduction`")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg): TruncatedLogitsLoss(**kw)


@pytest.mark.parametrize("pred,target,err,msg", [
    (torch.zeros(2, 5), torch.zeros(2, 4), ValueError, "same shape"),
    (torch.zeros(5), torch.zeros(5), ValueError, r"`pred_logits` must have shape \[batch, vocab\]"),
    (torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5), TypeError, "`pred_logits` must be floating point"),
    ([[0.0, 1.0]], torch.zeros(1, 2), TypeError, "`pred_logits` must be a torch.Tensor"),
    (torch.zeros(2, 3), torch.tensor([[0.0, 1, 2], [-INF] * 3]), ValueError, r"rows \[1\] are all -inf"),
    (torch.tensor([[-INF, -INF]]), torch.zeros(1, 2), ValueError, "`pred_logits`.*all -inf"),
    (torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2), ValueError, "must not contain NaN"),
    (torch.zeros(1, 2), torch.tensor([[0.0, INF]]), ValueError, "`target_logits` must not contain NaN or \\+inf"),
])
def test_bad_inputs(pred, target, err, msg):
    with pytest.raises(err, match=msg): TruncatedLogitsLoss()(pred, target)
