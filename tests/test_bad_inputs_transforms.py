"""Bad inputs for the logit transforms (issue #23, transform layer), table-driven.

Every case asserts the error type, that the message names the parameter, and that the input logits were not
modified. Accepted limits (t = inf, n = inf, mu = ±inf) must give a defined result without NaN. Degenerate shapes
(empty batch, vocab 0) and half precision are swept over every transform. `BAD_INPUT_COUNT` says how many bad inputs
the module tries."""
import math
import pytest
import torch
from soft_sampler import heuristics as H
from soft_sampler.sampling import keyed_uniform, keyed_hash, keyed_generator, generate
from soft_sampler.core import tiny_model

torch.set_num_threads(1)
NAN, INF = float("nan"), float("inf")
B, V = 3, 16


def logits(dtype=torch.float32):
    x = torch.randn(B, V, generator=torch.Generator().manual_seed(0)) * 3
    x[0, ::4] = -INF  # a row with removed tokens
    return x.to(dtype)


IDS = torch.randint(0, V, (B, 6), generator=torch.Generator().manual_seed(1))

# name: (function, required keyword arguments, {parameter: kind})
#   kinds: "real" a per-row number, "finite" a per-row number that must be finite, "int" a per-row integer,
#          "pyint" a plain Python integer, "inf_ok" a per-row number for which ±inf is a defined limit,
#          "optional" a finite per-row number in [0, 1) or None, "scalar" one finite number
TRANSFORMS = {
    "temperature": (H.temperature, dict(t=0.7), {"t": "inf_ok"}),
    "top_k": (H.top_k, dict(k=3), {"k": "int", "min_tokens_to_keep": "int"}),
    "top_p": (H.top_p, dict(p=0.9), {"p": "finite", "min_tokens_to_keep": "int"}),
    "min_p": (H.min_p, dict(p=0.1), {"p": "finite", "min_tokens_to_keep": "int"}),
    "typical": (H.typical, dict(p=0.9), {"p": "finite", "min_tokens_to_keep": "int"}),
    "epsilon": (H.epsilon, dict(eps=0.01), {"eps": "finite", "min_tokens_to_keep": "int"}),
    "eta": (H.eta, dict(eps=0.01), {"eps": "finite", "min_tokens_to_keep": "int"}),
    "top_h": (H.top_h, dict(h=0.5), {"h": "finite"}),
    "top_n_sigma": (H.top_n_sigma, dict(n=1.0), {"n": "inf_ok"}),
    "xtc": (H.xtc, dict(threshold=0.1, probability=1.0, u=0.0), {"threshold": "finite", "probability": "finite", "u": "optional",
                                                                 "min_keep": "pyint"}),
    "dynamic_temperature": (H.dynamic_temperature, dict(low=0.5, high=1.5), {"low": "finite", "high": "finite", "exponent": "finite"}),
    "quadratic": (H.quadratic, dict(factor=0.3), {"factor": "finite", "curve": "finite"}),
    "top_a": (H.top_a, dict(a=0.2), {"a": "finite", "min_tokens_to_keep": "pyint"}),
    "tfs": (H.tfs, dict(z=0.9), {"z": "finite", "min_tokens_to_keep": "pyint"}),
    "repetition_penalty": (H.repetition_penalty, dict(penalty=1.3, input_ids=IDS), {"penalty": "finite", "prompt_lengths": "plen"}),
    "presence_penalty": (H.presence_penalty, dict(penalty=0.5, input_ids=IDS, prompt_lengths=3), {"penalty": "finite"}),
    "frequency_penalty": (H.frequency_penalty, dict(penalty=0.5, input_ids=IDS, prompt_lengths=3), {"penalty": "finite"}),
    "no_repeat_ngram": (H.no_repeat_ngram, dict(n=2, input_ids=IDS), {"n": "pyint"}),
    "dry": (H.dry, dict(multiplier=0.8, input_ids=IDS), {"multiplier": "finite", "base": "scalar", "allowed_length": "pyint",
                                                         "penalty_last_n": "pyint"}),
    "mirostat_v1": (H.mirostat_v1, dict(mu=6.0), {"mu": "inf_ok", "m": "pyint"}),
    "mirostat_v2": (H.mirostat_v2, dict(mu=6.0), {"mu": "inf_ok"}),
    "logit_bias": (H.logit_bias, dict(bias={1: -1.0}), {}),
}

TYPE_BAD = [("0.7", TypeError), (None, TypeError), (True, TypeError), (1 + 2j, TypeError)]
BAD = {  # kind -> [(value, error type)]
    "real": TYPE_BAD + [(NAN, ValueError), ([0.5] * 5, ValueError), (torch.full((2, 2), 0.5), ValueError)],
    "finite": TYPE_BAD + [(NAN, ValueError), (INF, ValueError), (-INF, ValueError), ([0.5] * 5, ValueError),
                          (torch.tensor([0.5, NAN, 0.5]), ValueError), (torch.tensor([0.5, INF, 0.5]), ValueError)],
    "inf_ok": TYPE_BAD + [(NAN, ValueError), ([0.5] * 5, ValueError), (torch.tensor([0.5, NAN, 0.5]), ValueError)],
    "int": TYPE_BAD + [(NAN, ValueError), (INF, ValueError), (2.5, ValueError), (0, ValueError), ([2] * 5, ValueError),
                       (torch.tensor([2.0, INF, 2.0]), ValueError)],
    "pyint": [("2", TypeError), (None, TypeError), (True, TypeError), (2.5, ValueError), (NAN, ValueError), ([2, 2], TypeError),
              (-5, ValueError)],
    "optional": [(v, e) for v, e in TYPE_BAD if v is not None] + [(NAN, ValueError), (INF, ValueError), (1.0, ValueError)],
    "plen": [("3", TypeError), (True, TypeError), (NAN, ValueError), (2.5, ValueError), (-1, ValueError), (99, ValueError),
             ([3] * 5, ValueError)],
    "scalar": [("2", TypeError), (None, TypeError), (True, TypeError), (NAN, ValueError), (INF, ValueError), ([2.0], TypeError)],
}
PARAM_CASES = [(t, p, v, e) for t, (_, _, params) in TRANSFORMS.items() for p, kind in params.items() for v, e in BAD[kind]]


def _check_unmodified(x, before):
    assert torch.equal(torch.isnan(x), torch.isnan(before)) and torch.equal(x.nan_to_num(), before.nan_to_num()), "input was modified"


@pytest.mark.parametrize("name,param,value,err", PARAM_CASES, ids=[f"{t}-{p}={v!r:.20}" for t, p, v, _ in PARAM_CASES])
def test_bad_parameter_value(name, param, value, err):
    fn, kw, _ = TRANSFORMS[name]
    x = logits(); before = x.clone()
    with pytest.raises(err) as e: fn(x, **{**kw, param: value})
    assert f"`{param}`" in str(e.value), str(e.value)
    _check_unmodified(x, before)


# ---- hand-written cases: (id, call, error type, the name the message must contain) ---------------------------------
L = logits()
CASES = [
    ("logits not a tensor", lambda: H.top_k([[0.0, 1.0]], 1), TypeError, "`logits`"),
    ("logits 1-d", lambda: H.top_p(torch.zeros(5), 0.5), ValueError, "`logits`"),
    ("logits int", lambda: H.min_p(torch.zeros(2, 5, dtype=torch.long), 0.5), TypeError, "`logits`"),
    ("dynamic_temperature high < low", lambda: H.dynamic_temperature(L, 1.5, 0.5), ValueError, "`high`"),
    ("logit_bias key out of vocab", lambda: H.logit_bias(L, {V: 1.0}), ValueError, "`bias`"),
    ("logit_bias negative key", lambda: H.logit_bias(L, {-1: 1.0}), ValueError, "`bias`"),
    ("logit_bias bool key", lambda: H.logit_bias(L, {True: 1.0}), ValueError, "`bias`"),
    ("logit_bias str key", lambda: H.logit_bias(L, {"3": 1.0}), ValueError, "`bias`"),
    ("logit_bias str value", lambda: H.logit_bias(L, {3: "x"}), TypeError, "`bias`"),
    ("logit_bias +inf value", lambda: H.logit_bias(L, {3: INF}), ValueError, "`bias`"),
    ("logit_bias nan value", lambda: H.logit_bias(L, {3: NAN}), ValueError, "`bias`"),
    ("logit_bias dense shape", lambda: H.logit_bias(L, torch.zeros(V + 1)), ValueError, "`bias`"),
    ("logit_bias dense str", lambda: H.logit_bias(L, "abc"), TypeError, "`bias`"),
    ("xtc keep_tokens out of vocab", lambda: H.xtc(L, 0.1, 1.0, u=0.0, keep_tokens=[9000]), ValueError, "`keep_tokens`"),
    ("xtc keep_tokens negative", lambda: H.xtc(L, 0.1, 1.0, u=0.0, keep_tokens=[-1]), ValueError, "`keep_tokens`"),
    ("xtc keep_tokens str", lambda: H.xtc(L, 0.1, 1.0, u=0.0, keep_tokens="ab"), TypeError, "`keep_tokens`"),
    ("xtc keep_tokens floats", lambda: H.xtc(L, 0.1, 1.0, u=0.0, keep_tokens=[1.5]), TypeError, "`keep_tokens`"),
    ("xtc keep_ties str", lambda: H.xtc(L, 0.1, 1.0, u=0.0, keep_ties="no"), TypeError, "`keep_ties`"),
    ("XTC keep_tokens negative", lambda: H.XTC(0.1, 1.0, keep_tokens=[-3]), ValueError, "`keep_tokens`"),
    ("XTC seed negative", lambda: H.XTC(0.1, 1.0, seed=-1), ValueError, "`seed`"),
    ("top_h top_n zero", lambda: H.top_h(L, 0.5, top_n=0), ValueError, "`top_n`"),
    ("dry breakers a string", lambda: H.dry(L, 0.8, IDS, sequence_breakers="abc"), TypeError, "`sequence_breakers`"),
    ("dry breakers str items", lambda: H.dry(L, 0.8, IDS, sequence_breakers=["\n"]), TypeError, "`sequence_breakers`"),
    ("dry breakers negative", lambda: H.dry(L, 0.8, IDS, sequence_breakers=[-2]), ValueError, "`sequence_breakers`"),
    ("dry breakers empty sequence", lambda: H.dry(L, 0.8, IDS, sequence_breakers=[()]), ValueError, "`sequence_breakers`"),
    ("DRY breakers a string", lambda: H.DRY(0.8, sequence_breakers="abc"), TypeError, "`sequence_breakers`"),
    ("dry base < 1", lambda: H.dry(L, 0.8, IDS, base=0.5), ValueError, "`base`"),
    ("Mirostat tau str", lambda: H.Mirostat(tau="x"), TypeError, "`tau`"),
    ("Mirostat tau inf", lambda: H.Mirostat(tau=INF), ValueError, "`tau`"),
    ("Mirostat tau 0", lambda: H.Mirostat(tau=0.0), ValueError, "`tau`"),
    ("Mirostat eta None", lambda: H.Mirostat(eta=None), TypeError, "`eta`"),
    ("Mirostat eta nan", lambda: H.Mirostat(eta=NAN), ValueError, "`eta`"),
    ("Mirostat version 3", lambda: H.Mirostat(version=3), ValueError, "`version`"),
    ("Mirostat version True", lambda: H.Mirostat(version=True), ValueError, "`version`"),
    ("Mirostat m 1", lambda: H.Mirostat(version=1, m=1), ValueError, "`m`"),
    ("Mirostat m str", lambda: H.Mirostat(version=1, m="100"), TypeError, "`m`"),
    ("PresencePenalty include_prompt str", lambda: H.PresencePenalty(0.5, include_prompt="no"), TypeError, "`include_prompt`"),
    # history: negative ids hit token 0 before (defect 6); now refused unless declared as a negative pad id
    ("repetition_penalty negative id", lambda: H.repetition_penalty(L, 1.3, torch.tensor([[1, -1, 2]] * B)), ValueError, "`input_ids`"),
    ("presence_penalty negative id", lambda: H.presence_penalty(L, 0.5, torch.tensor([[1, 2, -1]] * B), 1), ValueError, "`input_ids`"),
    ("frequency_penalty negative id", lambda: H.frequency_penalty(L, 0.5, torch.tensor([[1, 2, -7]] * B), 1), ValueError, "`input_ids`"),
    ("no_repeat_ngram negative id", lambda: H.no_repeat_ngram(L, 2, torch.tensor([[-1, 3, -1]] * B)), ValueError, "`input_ids`"),
    ("dry negative id", lambda: H.dry(L, 0.8, torch.tensor([[3, -1, 3, -1]] * B), allowed_length=1), ValueError, "`input_ids`"),
    ("token_counts negative id", lambda: H.token_counts(torch.tensor([[-1, 2]]), torch.ones(1, 2, dtype=torch.bool), V), ValueError, "`input_ids`"),
    ("input_ids float", lambda: H.repetition_penalty(L, 1.3, IDS.float()), TypeError, "`input_ids`"),
    ("input_ids 1-d", lambda: H.no_repeat_ngram(L, 2, IDS[0]), TypeError, "`input_ids`"),
    ("input_ids a list", lambda: H.dry(L, 0.8, IDS.tolist()), TypeError, "`input_ids`"),
    ("input_ids wrong batch", lambda: H.repetition_penalty(L, 1.3, IDS[:2]), ValueError, "`input_ids`"),
    ("include_prompt 'no'", lambda: H.repetition_penalty(L, 1.3, IDS, 3, include_prompt="no"), TypeError, "`include_prompt`"),
    ("include_prompt 0", lambda: H.no_repeat_ngram(L, 2, IDS, 3, include_prompt=0), TypeError, "`include_prompt`"),
    ("include_prompt None", lambda: H.dry(L, 0.8, IDS, prompt_lengths=3, include_prompt=None), TypeError, "`include_prompt`"),
    ("pad_token_id str", lambda: H.repetition_penalty(L, 1.3, IDS, pad_token_id="0"), TypeError, "`pad_token_id`"),
    ("prompt_lengths beyond seq", lambda: H.presence_penalty(L, 0.5, IDS, 99), ValueError, "`prompt_lengths`"),
    ("prompt_lengths missing", lambda: H.presence_penalty(L, 0.5, IDS, None), ValueError, "`prompt_lengths`"),
    # degenerate shapes
    ("vocab 0", lambda: H.temperature(torch.zeros(2, 0), 0.7), ValueError, "`logits`"),
    ("vocab 0 (mirostat v1)", lambda: H.mirostat_v1(torch.zeros(2, 0), 5.0), ValueError, "`logits`"),
    ("vocab 0 (dry)", lambda: H.dry(torch.zeros(2, 0), 0.8, IDS[:2]), ValueError, "`logits`"),
    # keys of the keyed randomness and seeds: 64 bits
    ("keyed_uniform seed 2**64", lambda: keyed_uniform(2**64), ValueError, "`seed`"),
    ("keyed_hash seed -2**63-1", lambda: keyed_hash(-2**63 - 1), ValueError, "`seed`"),
    ("keyed_generator row 2**70", lambda: keyed_generator(0, row=2**70), ValueError, "`row`"),
    ("generate seed 2**64", lambda: _generate_tiny(seed=2**64), ValueError, "`seed`"),
    ("generate seed -1", lambda: _generate_tiny(seed=-1), ValueError, "`seed`"),
]


def _generate_tiny(**kw):
    model, tok = tiny_model(hidden_size=16, num_layers=1)
    return generate(model, ["a"], tok, max_new_tokens=1, **kw)


@pytest.mark.parametrize("what,call,err,name", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, call, err, name):
    before = L.clone()
    with pytest.raises(err) as e: call()
    assert name in str(e.value), str(e.value)
    _check_unmodified(L, before)


BAD_INPUT_COUNT = len(PARAM_CASES) + len(CASES) + len(TRANSFORMS)  # + one empty batch per transform (below)


def test_count_of_bad_inputs():
    print(f"transform layer: {len(PARAM_CASES)} bad parameter values, {len(CASES)} hand-written bad inputs, "
          f"{len(TRANSFORMS)} empty batches, {len(TRANSFORMS) * 2} half-precision sweeps")
    assert len(PARAM_CASES) > 300 and len(CASES) > 50


# ---- degenerate shapes and precision, swept over every transform ---------------------------------------------------
def _call(name, x):
    fn, kw, _ = TRANSFORMS[name]
    kw = {k: (v[: x.shape[0]] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return fn(x, **kw)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_empty_batch_gives_an_empty_result(name):
    out = _call(name, torch.zeros(0, V))
    assert out.shape == (0, V)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_half_precision_never_turns_finite_logits_into_inf_or_nan(name, dtype):
    "Large finite logits (near the float16 range) and a cold temperature: no +inf, no NaN, finite stays finite unless removed."
    big = 300.0 if dtype == torch.float16 else 1e30
    x = (torch.randn(B, V, generator=torch.Generator().manual_seed(2)) * big).to(dtype)
    before = x.clone()
    out = _call(name, x)
    ref = _call(name, x.double())  # the same transform in float64 says which tokens it removes
    assert out.dtype == dtype and not torch.isnan(out).any() and not (out == INF).any()
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref)), "a finite logit became ±inf (or the reverse)"
    _check_unmodified(x, before)


@pytest.mark.parametrize("t", [0.01, 1e-30, 1e-300])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cold_temperature_fits_the_dtype(t, dtype):
    "l / t overflows the dtype: the row is shifted by its max (softmax unchanged), so the result stays finite and exact."
    x = logits().to(dtype)
    out = H.temperature(x, t)
    assert out.dtype == dtype and not torch.isnan(out).any() and torch.equal(torch.isfinite(out), torch.isfinite(x))
    assert torch.equal(out.argmax(-1), x.argmax(-1))


# ---- accepted limits are defined (defect 5) ------------------------------------------------------------------------
def test_temperature_inf_is_the_flat_limit_even_with_removed_tokens():
    x = logits()
    for t in (INF, torch.tensor([INF, 1.0, INF])):
        out = H.temperature(x, t)
        assert not torch.isnan(out).any()
        p = out.softmax(-1)
        fin = torch.isfinite(x[0])
        torch.testing.assert_close(p[0][fin], torch.full((int(fin.sum()),), 1 / int(fin.sum())))
        assert (p[0][~fin] == 0).all()
    torch.testing.assert_close(H.temperature(x, torch.tensor([INF, 1.0, INF]))[1], x[1])


@pytest.mark.parametrize("name,param,value", [("top_n_sigma", "n", INF), ("mirostat_v1", "mu", INF), ("mirostat_v1", "mu", -INF),
                                              ("mirostat_v2", "mu", INF), ("mirostat_v2", "mu", -INF), ("temperature", "t", 1e300)])
def test_infinite_limits_are_defined(name, param, value):
    fn, kw, _ = TRANSFORMS[name]
    out = fn(logits(), **{**kw, param: value})
    assert not torch.isnan(out).any() and torch.isfinite(out).any(-1).all()


def test_dry_with_a_huge_multiplier_stays_finite():
    "multiplier=inf is refused (inf · 0 = NaN); the largest finite one penalises without NaN or +inf."
    x = torch.zeros(1, 5)
    out = H.dry(x, 3e38, torch.tensor([[1, 2, 1, 2, 1]]), allowed_length=1)
    assert not torch.isnan(out).any() and torch.isfinite(out).all() and out[0, 2] < -1e30


# ---- defect 6: a negative pad id is "no token"; defect 7: mirostat v1 on one token -------------------------------
def test_negative_pad_id_is_no_token():
    ids = torch.tensor([[-1, -1, 3, 4, 3], [5, 3, -1, 4, 3]])
    x = torch.zeros(2, 8)
    got = H.repetition_penalty(x - 1, 2.0, ids, pad_token_id=-1)
    clean = [torch.tensor([[3, 4, 3]]), torch.tensor([[5, 3, 4, 3]])]
    for r in range(2): assert torch.equal(got[r], H.repetition_penalty(x[:1] - 1, 2.0, clean[r])[0])
    assert got[0, 0] == -1 and got[1, 0] == -1, "token 0 must not be penalised for the pads"
    freq = H.frequency_penalty(x, 1.0, ids, 0, include_prompt=False, pad_token_id=-1)
    assert freq[0].tolist() == [0, 0, 0, -2, -1, 0, 0, 0]
    ng = H.no_repeat_ngram(x, 1, ids, pad_token_id=-1)
    assert torch.isfinite(ng[:, 0]).all() and not torch.isfinite(ng[0, 3])
    dr = H.dry(x[:1], 1.0, torch.tensor([[-1, 2, 3, -1, 2, 3, -1, 2]]), allowed_length=1, pad_token_id=-1)
    assert torch.isfinite(dr).all() and dr[0, 0] == 0 and dr[0, 7] == 0 and dr[0, 3] < 0


def test_mirostat_v1_on_a_one_token_vocabulary():
    x = torch.tensor([[0.5], [-2.0]])
    assert torch.equal(H.mirostat_v1(x, 3.0), x)
    ms = H.Mirostat(3.0, version=1)
    assert torch.equal(ms(torch.zeros(2, 1, dtype=torch.long), x), x)


def test_xtc_llama_cpp_ties_keep_one():
    "Three equal top choices: ours keeps all (nothing below them), llama.cpp's rule keeps exactly one."
    x = torch.tensor([[1.0, 1.0, 1.0, -3.0]])
    assert torch.equal(H.xtc(x, 0.1, 1.0, u=0.0), x)
    one = H.xtc(x, 0.1, 1.0, u=0.0, keep_ties=False)
    assert torch.isfinite(one).sum() == 2 and torch.isfinite(one[0, 3]) and torch.isfinite(one[0, 0])
