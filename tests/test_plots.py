"Plots, metrics, the TokenInspector's logic (no browser), analyze and its CLI."
import math
from pathlib import Path
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from soft_sampler.heuristics import Pipeline, pipeline_name, grid, expand, top_k, top_p, min_p, temperature, SpecError
from soft_sampler.networks import LocalProbabilityTransform, SimpleDistributionAwareTransform
from soft_sampler.sampling import generate
from soft_sampler.qalign import QAlignResult
from soft_sampler.plots import (Analysis, PipelineControls, TokenInspector, analyze, analyze_cli, apply_sampler, as_pipeline,
                                as_processor, compare_logits, distribution_metrics, fit_sampler, forward_logits, generation_trace,
                                parse_pipeline_name, plot_generation, plot_qalign, plot_step, qalign_traces, record, step_view,
                                to_html, token_rows)


def _np_kl(target, pred):
    "KL(softmax(target) || softmax(pred)) over the target's kept tokens, in numpy float64."
    q = np.exp(target - np.logaddexp.reduce(target[np.isfinite(target)]))
    lp = pred - np.logaddexp.reduce(pred[np.isfinite(pred)])
    keep = np.isfinite(target) & (q > 0)
    return float(np.sum(q[keep] * (np.log(q[keep]) - lp[keep])))


logit_rows = st.lists(st.floats(-8, 8, allow_nan=False), min_size=3, max_size=12)


# ---------------------------------------------------------------- metrics

@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 12), st.integers(1, 12), st.floats(0.2, 3.0))
def test_metrics_match_numpy(raw, k1, k2, t):
    raw = torch.tensor([raw], dtype=torch.float64)
    pred, tgt = top_k(temperature(raw, t), k1), top_k(raw, k2)
    m = {k: v.item() for k, v in distribution_metrics(raw, pred, tgt).items()}
    kp, kt = torch.isfinite(pred[0]).numpy(), torch.isfinite(tgt[0]).numpy()
    p_raw = raw.softmax(-1)[0].numpy()
    assert m["kept"] == kp.sum()
    assert m["kept_mass"] == pytest.approx(p_raw[kp].sum(), abs=1e-9)
    assert m["jaccard"] == pytest.approx((kp & kt).sum() / (kp | kt).sum())
    assert m["kl"] == pytest.approx(_np_kl(tgt[0].numpy(), pred[0].numpy()), rel=1e-6, abs=1e-9) or math.isinf(m["kl"])
    p_pred = pred.softmax(-1)[0].numpy()
    assert m["removed_mass"] == pytest.approx(p_pred[~kt].sum(), abs=1e-9)
    q = p_pred[p_pred > 0]
    assert m["entropy"] == pytest.approx(-(q * np.log(q)).sum(), abs=1e-9)


def test_metrics_without_target_are_nan_and_kl_of_self_is_zero():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    m = distribution_metrics(x, top_p(x, 0.5))
    assert all(math.isnan(v) for k in ("kl", "removed_mass", "jaccard") for v in m[k].tolist())
    y = min_p(x, 0.1)
    torch.testing.assert_close(distribution_metrics(x, y, y)["kl"], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(distribution_metrics(x, y, y)["jaccard"], torch.ones(3, dtype=torch.float64))


# ---------------------------------------------------------------- samplers

@settings(max_examples=25, deadline=None)
@given(st.sampled_from(list(grid([None, *expand("temperature", t=[0.5, 1.3])], [None, *expand("top_k", k=[3, 40])],
                                 [None, *expand("top_p", p=[0.8, 0.95]), *expand("min_p", p=[0.05])]).items())))
def test_pipeline_names_parse_back(item):
    name, pipe = item
    assert pipeline_name(parse_pipeline_name(name)) == name
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(apply_sampler(name, None, x), pipe(None, x))


def test_sampler_forms_and_errors():
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    net = LocalProbabilityTransform()
    torch.testing.assert_close(apply_sampler(net, None, x).log_softmax(-1), x.log_softmax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_sampler(net.as_processor(), None, x), apply_sampler(net, None, x))
    torch.testing.assert_close(apply_sampler([{"name": "top_k", "k": 4}], None, x), top_k(x, 4))
    torch.testing.assert_close(apply_sampler("- {name: min_p, p: 0.2}", None, x), min_p(x, 0.2))
    with pytest.raises(TypeError, match="a sampler must be"): as_processor(3)
    with pytest.raises(TypeError, match="must return a tensor of shape"): apply_sampler(lambda s: s[:, :3], None, x)
    with pytest.raises(SpecError, match="not of the form"): parse_pipeline_name("top_k")
    with pytest.raises(SpecError): parse_pipeline_name("top_k(k=-1)")
    x0 = x.clone(); apply_sampler("temperature(t=0.5)+top_k(k=3)", None, x); torch.testing.assert_close(x, x0)


# ---------------------------------------------------------------- recordings and views

def test_record_logits_equal_the_model_and_the_loop(tiny):
    model, tok = tiny
    rec = record(model, tok, prompt="abc", max_new_tokens=7, sampler="top_k(k=5)", seed=3)
    res = generate(model, "abc", tok, max_new_tokens=7, logits_processor=as_processor("top_k(k=5)"), seed=3, keep_logits="full")
    assert rec.token_ids == res.token_ids[0]
    torch.testing.assert_close(rec.raw_logits, res.raw_logits[0].values)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([rec.prompt_ids + rec.token_ids])).logits[0]
    n = len(rec.prompt_ids)
    torch.testing.assert_close(forward_logits(model, rec.prompt_ids, rec.token_ids), full[n - 1:n - 1 + len(rec)], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one"): record(model, tok, prompt="a", result=res)
    with pytest.raises(ValueError, match="`row` must be"): record(model, tok, result=res, row=5)
    res2 = generate(model, "abc", tok, max_new_tokens=3, seed=0)  # no logits kept: needs the model
    with pytest.raises(ValueError, match="`model` is needed"): record(None, tok, result=res2)


def test_step_view_and_plot_show_removed_tokens(tiny):
    model, tok = tiny
    rec = record(model, tok, prompt="hello", max_new_tokens=4, seed=0)
    v = step_view(rec, 1, {"k2": "top_k(k=2)", "t": "temperature(t=2.0)"}, top=6, target="k2")
    ref = top_k(rec.raw_logits[1:2], 2).softmax(-1)[0, v.token_ids].numpy()
    np.testing.assert_allclose(v.probs["k2"], ref, atol=1e-7)
    assert v.kept["k2"].tolist()[:2] == [True, True] and not v.kept["k2"][2:6].any() and v.kept["t"].all()
    assert v.chosen == rec.token_ids[1] and v.chosen in v.token_ids
    fig = plot_step(v, panels=[["k2"], ["t"]])
    removed = [tr for tr in fig.data if tr.name == "k2: removed"]
    assert len(removed) == 1 and sorted(removed[0].x) == [i for i in range(len(v.token_ids)) if not v.kept["k2"][i]]
    assert fig.layout.yaxis.type == "linear" and plot_step(v, log=True).layout.yaxis.type == "log"
    assert len(plot_step(v, backend="matplotlib", log=True).axes) == 1
    with pytest.raises(ValueError, match="`backend`"): plot_step(v, backend="svg")
    with pytest.raises(ValueError, match="`t` must be"): step_view(rec, 99, {})
    with pytest.raises(ValueError, match="`target` must be one of"): compare_logits(rec.raw_logits[:1], {"a": rec.raw_logits[:1]}, target="b")
    with pytest.raises(ValueError, match="reserved"): compare_logits(rec.raw_logits[:1], {"raw": rec.raw_logits[:1]})


def test_generation_trace_against_independent_computation(tiny):
    model, tok = tiny
    rec = record(model, tok, prompt="xyz", max_new_tokens=6, seed=1)
    tr = generation_trace(rec, "top_p(p=0.6)")
    full = forward_logits(model, rec.prompt_ids, rec.token_ids)
    y = top_p(full, 0.6)
    np.testing.assert_allclose(tr["kept"], torch.isfinite(y).sum(-1).numpy())
    np.testing.assert_allclose(tr["p chosen"], y.double().softmax(-1)[torch.arange(len(rec)), rec.token_ids].numpy(), atol=1e-5)
    fig = plot_generation(rec, "top_p(p=0.6)", kind="strip")
    np.testing.assert_allclose(fig.data[2].y, tr["kept"])
    with pytest.raises(ValueError, match="`kind`"): plot_generation(rec, kind="pie")


def test_qalign_traces_from_a_handmade_result():
    res = QAlignResult([1], states=[[[1], [2], [2]], [[1], [1], [3]]], rewards=[[0.0, 1.0, 1.0], [0.5, 0.5, 2.0]],
                       proposals=[[[2], [4]], [[5], [3]]], proposal_rewards=[[1.0, -1.0], [0.1, 2.0]],
                       cuts=[[0, 0], [0, 0]], accepted=[[True, False], [False, True]], beta=1.0)
    tr = qalign_traces(res)
    np.testing.assert_allclose(tr["acceptance"], [[1.0, 0.5], [0.0, 0.5]])
    fig = plot_qalign(res)
    assert len(fig.data) == 6 and list(fig.data[0].y) == [0.0, 1.0, 1.0]
    assert len(plot_qalign(res, backend="matplotlib").axes) == 2


# ---------------------------------------------------------------- the inspector (widget logic)

def _expected(model, ins, t, pipe):
    "The pipeline applied to logits of an independent forward pass: softmax over the vocabulary."
    raw = forward_logits(model, ins.rec.prompt_ids, ins.rec.token_ids)[t:t + 1]
    return pipe(raw).double().softmax(-1)[0]


def test_inspector_follows_slider_controls_and_order(tiny):
    model, tok = tiny
    ins = TokenInspector(model, tok, prompt="hello", pipeline="temperature(t=0.5)+top_p(p=0.7)", compare="top_k(k=3)",
                         sampler=LocalProbabilityTransform(), max_new_tokens=6, top=8, seed=2)
    n = len(ins.rec)
    assert n >= 3 and ins.position.max == n - 1
    before = [r["token"] for r in ins.rows]
    ins.position.value = 2
    assert ins.current.position == 2 and "ss-cur" in ins.prefix.value
    ids = ins.current.token_ids
    exp_a = _expected(model, ins, 2, lambda x: top_p(temperature(x, 0.5), 0.7))
    np.testing.assert_allclose([r["p A"] for r in ins.rows], exp_a[ids].numpy(), atol=1e-6)
    np.testing.assert_allclose([r["p B"] for r in ins.rows], _expected(model, ins, 2, lambda x: top_k(x, 3))[ids].numpy(), atol=1e-6)
    assert [r["token"] for r in ins.rows] != before or ins.rec.raw_logits[0].argmax() == ins.rec.raw_logits[2].argmax()
    # the figure carries the same numbers
    bars = {(tr.name, tr.xaxis): np.array(tr.y) for tr in ins.fig.data if tr.type == "bar"}
    np.testing.assert_allclose(bars[("A", "x")], exp_a[ids].numpy(), atol=1e-6)
    # order matters: top_p before temperature keeps a different set than after
    ins.a.order.value = ["top_p", "temperature"]
    exp_swapped = _expected(model, ins, 2, lambda x: temperature(top_p(x, 0.7), 0.5))
    np.testing.assert_allclose([r["p A"] for r in ins.rows], exp_swapped[ids].numpy(), atol=1e-6)
    assert ins.current.metrics["A"]["kept"] == torch.isfinite(temperature(top_p(ins.rec.raw_logits[2:3], 0.7), 0.5)).sum().item()
    ins.b.sliders["top_k"].value = 1
    assert sum(r["kept B"] for r in ins.rows) == 1 and ins.current.metrics["B"]["kept"] == 1
    assert ins.current.metrics["B"]["jaccard"] == pytest.approx(1 / ins.current.metrics["A"]["kept"])
    # learned sampler on / off, log scale
    assert "p learned" in ins.rows[0]
    ins.learned.value = False
    assert "p learned" not in ins.rows[0] and all(tr.name != "learned" for tr in ins.fig.data)
    ins.log.value = True
    assert ins.fig.layout.yaxis.type == "log"


def test_inspector_on_a_result_static_and_matplotlib(tiny):
    model, tok = tiny
    res = generate(model, ["ab", "cd"], tok, max_new_tokens=5, seed=4)
    ins = TokenInspector(model, tok, result=res, row=1, backend="matplotlib", pipeline="top_k(k=4)", compare="min_p(p=0.3)")
    assert ins.rec.token_ids == res.token_ids[1] and hasattr(ins.fig, "savefig")
    snap = ins.static()
    assert snap.html.count("data-pos=") == len(ins.rec) and "<script src" not in snap.html and "data:image/png;base64" in snap.html
    with pytest.raises(ValueError, match="`positions`"): ins.static([len(ins.rec)])
    with pytest.raises(ValueError, match="`backend`"): TokenInspector(recording=ins.rec, backend="bokeh")


def test_pipeline_controls_keep_unknown_steps():
    pc = PipelineControls("A", [{"name": "top_k", "k": 7}, {"name": "tfs", "z": 0.9}])
    assert pipeline_name(pc.pipeline()) == "top_k(k=7)+tfs(z=0.9)"
    pc.order.value = []
    assert pipeline_name(pc.pipeline()) == "tfs(z=0.9)"


# ---------------------------------------------------------------- analyze

def test_analyze_tables_against_the_loss(tiny, tmp_path):
    model, tok = tiny
    net = SimpleDistributionAwareTransform().requires_grad_(False)
    an = analyze(net, "top_k(k=8)", "hey", model, tok, max_new_tokens=5, seed=0, top=10)
    assert isinstance(an, Analysis) and len(an) == len(an.recording)
    raw = forward_logits(model, an.recording.prompt_ids, an.recording.token_ids)
    for t, row in enumerate(an.table()):
        x = raw[t:t + 1]
        assert row["kl"] == pytest.approx(_np_kl(top_k(x, 8)[0].double().numpy(), net(x)[0].double().numpy()), rel=1e-4)
        assert row["removed_mass"] == pytest.approx(net(x).softmax(-1)[0, ~torch.isfinite(top_k(x, 8)[0])].sum().item(), abs=1e-5)
        assert row["kept target"] == 8
    page = an.save(tmp_path/"r.html").read_text()
    assert "<script src" not in page and "Per token" in page
    with pytest.raises(ValueError, match="`generate_with`"): analyze(net, "top_k(k=8)", "hey", model, tok, generate_with="both")


def test_fit_sampler_lowers_the_loss(tiny):
    from soft_sampler.loss import TruncatedLogitsLoss
    model, tok = tiny
    rec = record(model, tok, prompt="fit me", max_new_tokens=6, seed=0)
    target = top_k(rec.raw_logits, 5)
    loss = lambda n: TruncatedLogitsLoss()(n(rec.raw_logits), target).loss.item()
    net = SimpleDistributionAwareTransform()
    before = loss(net)
    assert loss(fit_sampler(net, rec, "top_k(k=5)", steps=40, top=None)) < before


def test_analyze_cli_rejects_bad_arguments(capsys):
    for argv in (["--prompt", "x"], ["--prompt", "x", "--out", "r.html", "--max-new-tokens", "0"],
                 ["--prompt", "x", "--out", "r.html", "--top-k", "0"]):
        with pytest.raises(SystemExit) as e: analyze_cli(argv)
        assert e.value.code == 2


# `soft-sampler analyze` on the embedded model, opened in a browser: tests/test_plots_browser.py
