"Heuristics II: llama.cpp / webui transforms, history-aware penalties, XTC's keyed coin, DRY and Mirostat."
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from transformers.generation.logits_process import (NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                                                    SequenceBiasLogitsProcessor)
from soft_sampler.heuristics_ext import (
    top_n_sigma, xtc, dynamic_temperature, quadratic, top_a, tfs, logit_bias, history_mask, token_counts,
    repetition_penalty, presence_penalty, frequency_penalty, no_repeat_ngram, dry, mirostat_v1, mirostat_v2,
    RepetitionPenalty, PresencePenalty, FrequencyPenalty, NoRepeatNGram, DRY, XTC, XTC_STREAM, Mirostat)
from soft_sampler.sampling import StepContext, keyed_uniform

NEG = float("-inf")
P = lambda l: torch.softmax(l, -1)
logp = lambda *p: torch.tensor([p]).log()
kept = lambda l: torch.isfinite(l[0]).nonzero()[:, 0].tolist()


# ---------------------------------------------------------------- hand-computed examples (llama.cpp's test vectors)
def test_top_n_sigma_llama_cpp_vectors():
    l = logp(.1, .2, .3, .4)
    torch.testing.assert_close(P(top_n_sigma(l, 1.0)), torch.tensor([[0, 0, 3 / 7, 4 / 7]]), atol=1e-6, rtol=0)
    assert torch.equal(top_n_sigma(l, 3.0), l) and torch.equal(top_n_sigma(l, 0.0), l)


def test_top_n_sigma_ignores_removed_tokens():
    # finite logits 0, 1, 2, 3: mean 1.5, σ = sqrt(1.25) = 1.118; n = 1 keeps ≥ 1.882 → {2, 3}. The -inf don't count.
    l = torch.tensor([[0., 1, 2, 3, NEG, NEG]])
    assert kept(top_n_sigma(l, 1.0)) == [2, 3]
    assert kept(top_n_sigma(l, 1.8)) == [1, 2, 3]  # cut 3 − 1.8·1.118 = 0.988
    assert kept(top_n_sigma(l, 2.7)) == [0, 1, 2, 3]  # cut 3 − 3.019 < 0


def test_xtc_llama_cpp_vectors():
    l = logp(.4, .3, .2, .1)
    for t, want in [(.09, [3]), (.19, [2, 3]), (.29, [1, 2, 3]), (.39, [0, 1, 2, 3])]:
        assert kept(xtc(l, t, 0.99, u=0.5)) == want
    torch.testing.assert_close(P(xtc(l, .19, 1.0, u=0.0)), torch.tensor([[0, 0, 2 / 3, 1 / 3]]))


def test_xtc_coin_keep_tokens_min_keep_and_ties():
    l = logp(.4, .3, .2, .1)
    assert torch.equal(xtc(l, .09, 0.5, u=0.5), l) and kept(xtc(l, .09, 0.5, u=0.4999)) == [3]
    assert torch.equal(xtc(l, .09, 0.0, u=0.0), l)  # probability 0 never fires
    assert torch.equal(xtc(l, .09, 1.0, u=0.5, keep_tokens=[1]), l)  # token 1 would go: row untouched
    assert kept(xtc(l, .19, 1.0, u=0.5, keep_tokens=[3])) == [2, 3]  # keep_tokens not affected: acts
    assert torch.equal(xtc(l, .09, 1.0, u=0.5, min_keep=2), l)
    assert kept(xtc(logp(.35, .35, .2, .1), .3, 1.0, u=0.)) == [0, 1, 2, 3]  # tied top choices: both kept
    assert kept(xtc(torch.tensor([[2., 1, 0, NEG]]), 0.0, 1.0, u=0.)) == [2]  # t = 0: every candidate is a top choice


def test_dynamic_temperature_by_hand():
    # llama.cpp temp_ext(temp=1, delta=.5, exponent=1): low .5, high 1.5; uniform row → T = 1.5
    l = torch.tensor([[1., 1, 1, 1]])
    torch.testing.assert_close(dynamic_temperature(l, .5, 1.5), l / 1.5)
    # p = (.5, .5, 0): two candidates, H = log 2 = max → T = high; the removed token stays removed
    l = torch.tensor([[0., 0, NEG]])
    torch.testing.assert_close(dynamic_temperature(l, .5, 2.0), l / 2)
    # exponent 2 on p = (.9, .1): H = .325083, H/log2 = .468996, T = .5 + 1·.468996² = .719957
    l = torch.tensor([[.9, .1]]).log()
    torch.testing.assert_close(dynamic_temperature(l, .5, 1.5, 2.0), l / 0.719957, atol=1e-5, rtol=1e-5)


def test_quadratic_by_hand_and_per_row_max():
    l = torch.tensor([[2., 1, 0, NEG], [10., 9, 8, 7]])
    out = quadratic(l, 1.0)
    assert torch.equal(out, torch.tensor([[2., 1, -2, NEG], [10., 9, 6, 1]]))  # each row around its own max


def test_top_a_and_tfs_by_hand():
    l = logp(.5, .3, .15, .05)
    assert kept(top_a(l, .5)) == [0, 1, 2] and kept(top_a(l, 1.)) == [0, 1]
    l = logp(.4, .3, .2, .05, .05)
    assert kept(tfs(l, .5)) == [0, 1, 2] and kept(tfs(l, .2)) == [0, 1] and torch.equal(tfs(l, 1.), l)
    assert kept(tfs(l, .2, min_tokens_to_keep=4)) == [0, 1, 2, 3]


def test_tfs_matches_webui_reference():
    "text-generation-webui's TailFreeLogitsWarper, restated, on random rows."
    def webui_tfs(scores, z):
        sl, si = torch.sort(scores, descending=True, stable=True)
        d2 = sl.softmax(-1).diff().diff().abs()
        cdf = (d2 / d2.sum(-1, keepdim=True)).cumsum(-1)
        rm = torch.cat((torch.zeros(scores.shape[0], 1, dtype=torch.bool), cdf > z, torch.ones(scores.shape[0], 1, dtype=torch.bool)), -1)
        return scores.masked_fill(rm.scatter(1, si, rm), NEG)
    g = torch.Generator().manual_seed(0)
    for z in (0.1, 0.5, 0.9, 0.95):
        l = torch.randn(64, 300, generator=g) * 3
        assert torch.equal(tfs(l, z), webui_tfs(l, z))


def test_logit_bias_matches_sequence_bias_for_single_tokens():
    g = torch.Generator().manual_seed(1)
    l = torch.randn(4, 50, generator=g)
    bias = {3: 2.5, 7: -1.0, 49: 4.0}
    ref = SequenceBiasLogitsProcessor([[[t], b] for t, b in bias.items()])(torch.zeros(4, 3, dtype=torch.long), l.clone())
    torch.testing.assert_close(logit_bias(l, bias), ref)


# ---------------------------------------------------------------- history: which tokens count
def test_llama_cpp_penalty_vectors():
    q = torch.full((1, 5), .2).log()
    for hist, want in [([0], [0, .25, .25, .25, .25]), ([0, 1, 2], [0, 0, 0, .5, .5]), ([0, 1, 2, 0, 0], [0, 0, 0, .5, .5])]:
        torch.testing.assert_close(P(repetition_penalty(q, 50.0, torch.tensor([hist]))), torch.tensor([want]), atol=1e-5, rtol=0)
    # frequency 5 + presence 5 over the whole history (prompt length 0: everything is generated)
    for hist, want in [([0], [.000011, .249997, .249997, .249997, .249997]),
                       ([0, 1, 2], [.000023, .000023, .000023, .499966, .499966]),
                       ([0, 1, 2, 0, 0], [0, .000023, .000023, .499977, .499977])]:
        ids = torch.tensor([hist])
        out = presence_penalty(frequency_penalty(q, 2.0, ids, 0), 2.0, ids, 0)  # our range is [-2, 2]:
        out = presence_penalty(frequency_penalty(out, 2.0, ids, 0), 2.0, ids, 0)  # 2 + 2 ...
        out = presence_penalty(frequency_penalty(out, 1.0, ids, 0), 1.0, ids, 0)  # ... + 1 = 5 of each
        torch.testing.assert_close(P(out), torch.tensor([want]), atol=1e-6, rtol=0)


def test_presence_frequency_count_generated_tokens_only():
    ids = torch.tensor([[7, 7, 7, 1, 1, 2]])  # prompt 7 7 7 | generated 1 1 2
    l = torch.zeros(1, 8)
    want_f = torch.zeros(1, 8); want_f[0, 1], want_f[0, 2] = -1.0, -0.5
    assert torch.equal(frequency_penalty(l, 0.5, ids, 3), want_f)
    want_p = torch.zeros(1, 8); want_p[0, 1], want_p[0, 2] = -0.5, -0.5
    assert torch.equal(presence_penalty(l, 0.5, ids, 3), want_p)
    assert torch.equal(presence_penalty(l, 0.5, ids, 6), l)  # nothing generated yet
    with pytest.raises(ValueError, match="prompt_lengths"):
        presence_penalty(l, 0.5, ids, None)


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    g = torch.Generator().manual_seed(2)
    for trial in range(20):
        b, L, v = 8, int(torch.randint(1, 40, (1,), generator=g)), 30
        ids, l = torch.randint(0, v, (b, L), generator=g), torch.randn(b, v, generator=g) * 4
        ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, l.clone())
        assert torch.equal(repetition_penalty(l, penalty, ids), ref)
        cut = int(torch.randint(0, L + 1, (1,), generator=g))
        ref = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=cut)(ids, l.clone())
        assert torch.equal(repetition_penalty(l, penalty, ids, cut, include_prompt=False), ref)
        cuts = torch.randint(0, L + 1, (b,), generator=g)
        ref = RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=cuts)(ids, l.clone())
        assert torch.equal(repetition_penalty(l, penalty, ids, cuts, include_prompt=False), ref)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_equals_transformers(n):
    g = torch.Generator().manual_seed(3)
    for trial in range(40):
        L = int(torch.randint(1, 30, (1,), generator=g))
        ids, l = torch.randint(0, 4, (6, L), generator=g), torch.randn(6, 6, generator=g)
        assert torch.equal(no_repeat_ngram(l, n, ids), NoRepeatNGramLogitsProcessor(n)(ids, l.clone()))


def test_no_repeat_ngram_response_only():
    ids = torch.tensor([[1, 2, 3, 1]])  # prompt 1 2 | response 3 1
    assert kept(no_repeat_ngram(torch.zeros(1, 4), 2, ids)) == [0, 1, 3]  # (1, 2) from the prompt
    assert kept(no_repeat_ngram(torch.zeros(1, 4), 2, ids, 2, include_prompt=False)) == [0, 1, 2, 3]


def _pad_left(rows, pad):
    L = max(len(r) for r in rows)
    return torch.tensor([[pad] * (L - len(r)) + r for r in rows])


PENALTIES = {
    "repetition": lambda l, ids, pl, pad: repetition_penalty(l, 1.7, ids, pl, pad_token_id=pad),
    "repetition_response": lambda l, ids, pl, pad: repetition_penalty(l, 1.7, ids, pl, False, pad),
    "presence": lambda l, ids, pl, pad: presence_penalty(l, 0.7, ids, pl),
    "frequency": lambda l, ids, pl, pad: frequency_penalty(l, 0.7, ids, pl),
    "ngram": lambda l, ids, pl, pad: no_repeat_ngram(l, 2, ids, pl, pad_token_id=pad),
    "ngram_response": lambda l, ids, pl, pad: no_repeat_ngram(l, 2, ids, pl, False, pad),
    "dry": lambda l, ids, pl, pad: dry(l, 0.8, ids, allowed_length=1, prompt_lengths=pl, pad_token_id=pad),
}


@pytest.mark.parametrize("name", list(PENALTIES))
def test_left_padding_never_counts(name):
    "A left-padded batch gives each row what the row alone, unpadded, gives; the pad id itself is a real token later."
    f, pad = PENALTIES[name], 0
    prompts, responses = [[3, 4, 3], [5], [4, 4, 0, 4]], [[0, 3, 4], [0, 5, 6], [3, 3, 3]]  # 0 = pad = EOS-like
    rows = [p + r for p, r in zip(prompts, responses)]
    ids = _pad_left(rows, pad)
    pl = torch.tensor([ids.shape[1] - len(r) for r in responses])
    l = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    batch = f(l, ids, pl, pad)
    for i, r in enumerate(rows):
        alone = f(l[i:i + 1], torch.tensor([r]), len(prompts[i]), pad)
        assert torch.equal(batch[i:i + 1], alone), (name, i)
    # without pad_token_id, repetition penalty would count the pads (token 0) in row 1: it must differ there
    if name == "repetition":
        assert not torch.equal(f(l, ids, pl, None)[1], batch[1]) or 0 in rows[1]


def test_pad_inside_prompt_is_text():
    ids = torch.tensor([[0, 0, 5, 0, 6]])  # two pads, then 5, then a real token 0 (e.g. <|im_end|>)
    assert history_mask(ids, 5, pad_token_id=0).tolist() == [[False, False, True, True, True]]
    assert token_counts(ids, history_mask(ids, 5, pad_token_id=0), 7)[0, 0] == 1


# ---------------------------------------------------------------- DRY
def webui_dry(ids, scores, multiplier, base, allowed, breakers):
    "text-generation-webui's DRYLogitsProcessor (single-token breakers), restated; equals llama.cpp's DRY for them."
    out = scores.clone()
    for row, s in zip(ids.tolist(), out):
        last = row[-1]
        if last in breakers: continue
        lengths = {}
        for i in [k for k, v in enumerate(row[:-1]) if v == last]:
            nxt = row[i + 1]
            if nxt in breakers: continue
            m = 1
            while m < 50:
                j = i - m
                if j < 0 or row[j] != row[-(m + 1)] or row[-(m + 1)] in breakers: break
                m += 1
            lengths[nxt] = max(m, lengths.get(nxt, 0))
        for t, m in lengths.items():
            if m >= allowed: s[t] -= multiplier * base ** (m - allowed)
    return out


@pytest.mark.parametrize("allowed", [1, 2, 3])
def test_dry_equals_webui_reference(allowed):
    g = torch.Generator().manual_seed(5)
    for trial in range(150):
        L = int(torch.randint(2, 40, (1,), generator=g))
        ids = torch.randint(0, 3 + trial % 3, (1, L), generator=g)
        l = torch.randn(1, 6, generator=g)
        brk = [5] if trial % 2 else []
        got = dry(l, 0.8, ids, base=1.5, allowed_length=allowed, sequence_breakers=brk)
        torch.testing.assert_close(got, webui_dry(ids, l, 0.8, 1.5, allowed, set(brk)))


def test_dry_llama_cpp_vectors_and_multi_token_breakers():
    q = lambda k: torch.full((1, k), 1 / k).log()
    torch.testing.assert_close(P(dry(q(4), 1.0, torch.tensor([[0, 1, 2, 0, 1]]), base=1.1)),
                               torch.tensor([[.296923, .296923, .109232, .296923]]), atol=1e-6, rtol=0)
    assert torch.equal(dry(q(5), 1.0, torch.tensor([[0, 1, 2, 3, 4, 0, 1]]), base=1.1, allowed_length=4), q(5))
    # multi-token breaker (3, 4): `1 2 3 4 1 2` → the repeat `1 2` starts after the breaker: allowed 2 → penalised
    ids = torch.tensor([[1, 2, 0, 3, 4, 1, 2]])
    base = dry(torch.zeros(1, 6), 1.0, ids, base=2.0)
    assert base[0, 0] == -1.0
    # a breaker sequence `0 3` inside the suffix cuts the repeat `2 0 3 4 1 2`… here the suffix `1 2` is after it:
    assert torch.equal(dry(torch.zeros(1, 6), 1.0, ids, base=2.0, sequence_breakers=[(0, 3)]), base)
    # breaker (4, 1) overlaps the suffix: the repeat may only use `2` → length 1 < 2 → nothing
    assert torch.equal(dry(torch.zeros(1, 6), 1.0, ids, base=2.0, sequence_breakers=[(4, 1)]), torch.zeros(1, 6))
    # a multi-token breaker head is still penalised as a token (only single-token breakers are exempt)
    ids = torch.tensor([[1, 2, 4, 1, 2]])
    assert dry(torch.zeros(1, 6), 1.0, ids, base=2.0, sequence_breakers=[(4, 5)])[0, 4] == -1.0
    assert dry(torch.zeros(1, 6), 1.0, ids, base=2.0, sequence_breakers=[4])[0, 4] == 0.0


def test_dry_penalty_last_n_and_exponent_cap():
    ids = torch.tensor([[7, 1, 2, 3, 9, 1, 2, 3]])
    assert dry(torch.zeros(1, 10), 1.0, ids, base=2.0)[0, 9] == -2.0  # `1 2 3` then 9: 2^(3-2)
    assert torch.equal(dry(torch.zeros(1, 10), 1.0, ids, base=2.0, penalty_last_n=4), torch.zeros(1, 10))
    assert torch.equal(dry(torch.zeros(1, 10), 1.0, ids, base=2.0, penalty_last_n=0), torch.zeros(1, 10))
    long = torch.tensor([[1, 2] * 200])
    out = dry(torch.zeros(1, 3), 1.0, long, base=1.75)
    assert torch.isfinite(out).all() and out[0, 1] == -(1.75 ** int(88.7228391 / math.log(1.75)))


# ---------------------------------------------------------------- property tests
def _row(vocab):
    return st.lists(st.one_of(st.floats(-30, 30, allow_nan=False, width=32), st.just(NEG)), min_size=vocab, max_size=vocab
                    ).filter(lambda r: any(x > NEG for x in r))


@st.composite
def batches(draw):
    v, b = draw(st.integers(2, 7)), draw(st.integers(1, 4))
    return torch.tensor([draw(_row(v)) for _ in range(b)], dtype=torch.float32)


HIST = torch.tensor([[0, 1, 1, 0, 2, 1]])
TRANSFORMS = {  # name: (f(logits, param), per-row parameter values, truncates?)
    "top_n_sigma": (lambda l, x: top_n_sigma(l, x), [0.0, 0.5, 1.0, 3.0], True),
    "xtc": (lambda l, x: xtc(l, x, 1.0, u=0.0), [0.05, 0.1, 0.3, 0.6], True),
    "dynamic_temperature": (lambda l, x: dynamic_temperature(l, x, 1.5), [0.0, 0.3, 1.0, 1.5], True),
    "quadratic": (lambda l, x: quadratic(l, x), [0.0, 0.1, 1.0, 3.0], False),
    "top_a": (lambda l, x: top_a(l, x), [0.0, 0.2, 0.7, 1.0], True),
    "tfs": (lambda l, x: tfs(l, x), [0.1, 0.5, 0.95, 1.0], True),
    "repetition_penalty": (lambda l, x: repetition_penalty(l, x, HIST.expand(l.shape[0], -1).clamp(max=l.shape[1] - 1)), [0.5, 1.0, 1.3, 3.0], False),
    "presence_penalty": (lambda l, x: presence_penalty(l, x, HIST.expand(l.shape[0], -1).clamp(max=l.shape[1] - 1), 2), [-1.0, 0.0, 0.5, 2.0], False),
    "frequency_penalty": (lambda l, x: frequency_penalty(l, x, HIST.expand(l.shape[0], -1).clamp(max=l.shape[1] - 1), 2), [-1.0, 0.0, 0.5, 2.0], False),
    "dry": (lambda l, x: dry(l, x, HIST.expand(l.shape[0], -1).clamp(max=l.shape[1] - 1), allowed_length=1), [0.0, 0.5, 1.0, 2.0], False),
    "mirostat_v2": (lambda l, x: mirostat_v2(l, x), [0.0, 1.0, 3.0, 10.0], True),
    "mirostat_v1": (lambda l, x: mirostat_v1(l, x), [0.0, 1.0, 3.0, 10.0], True),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(l=batches(), data=st.data())
def test_properties(name, l, data):
    f, values, truncates = TRANSFORMS[name]
    x = torch.tensor(data.draw(st.lists(st.sampled_from(values), min_size=l.shape[0], max_size=l.shape[0])))
    before = l.clone()
    out = f(l, x)
    assert torch.equal(l, before), "input modified"
    assert out is not l and out.data_ptr() != l.data_ptr(), "not a new tensor"
    assert out.shape == l.shape and out.dtype == l.dtype
    assert not torch.isnan(out).any()
    assert (torch.isfinite(out).sum(-1) >= 1).all(), "a row lost every token"
    if truncates:  # kept tokens keep their logits (up to temperature), removed ones were in the running
        assert not (torch.isfinite(out) & ~torch.isfinite(l)).any()
    for i in range(l.shape[0]):  # per-row parameters = separate calls; rows independent of each other
        assert torch.equal(out[i:i + 1], f(l[i:i + 1], float(x[i]))), f"row {i}"


@pytest.mark.parametrize("call", [
    lambda l: top_n_sigma(l, -1.0), lambda l: xtc(l, 0.1, 1.5), lambda l: xtc(l, 0.1, 0.5, u=1.0),
    lambda l: dynamic_temperature(l, -0.1, 1.0), lambda l: quadratic(l, 1.0, float("inf")), lambda l: top_a(l, 1.1),
    lambda l: tfs(l, -0.1), lambda l: top_a(l, 0.1, min_tokens_to_keep=0), lambda l: logit_bias(l, torch.zeros(3)),
    lambda l: logit_bias(l, {0: float("nan")}), lambda l: repetition_penalty(l, -1.0, HIST),
    lambda l: presence_penalty(l, 2.5, HIST, 0), lambda l: no_repeat_ngram(l, 1.5, HIST),
    lambda l: dry(l, -1.0, HIST), lambda l: dry(l, 1.0, HIST, allowed_length=0), lambda l: dry(l, 1.0, HIST, penalty_last_n=-2),
    lambda l: mirostat_v1(l, 3.0, m=1), lambda l: top_n_sigma(l, torch.tensor([1.0, 2.0])),
    lambda l: repetition_penalty(l, 1.2, HIST, prompt_lengths=9),
])
def test_bad_parameters_are_value_errors(call):
    with pytest.raises(ValueError, match="`"):
        call(torch.zeros(1, 5))


def test_bad_logits_are_clear():
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"): top_a(torch.zeros(5), 0.1)
    with pytest.raises(TypeError, match="floating point"): quadratic(torch.zeros(1, 5, dtype=torch.long), 1.0)


# ---------------------------------------------------------------- processors and XTC's keyed coin
def test_xtc_reproducible_under_keyed_uniform():
    l = logp(.4, .3, .2, .1).repeat(6, 1)
    ids = torch.zeros(6, 9, dtype=torch.long)
    ctx = StepContext(prompt_lengths=torch.full((6,), 4), row_ids=torch.arange(10, 16), seed=42)
    proc = XTC(0.09, 0.5)
    a, b = proc(ids, l, ctx=ctx), XTC(0.09, 0.5)(ids, l, ctx=ctx)
    assert torch.equal(a, b)
    u = keyed_uniform(42, torch.arange(10, 16), 5, 0, XTC_STREAM)
    assert torch.equal(a, xtc(l, 0.09, 0.5, u=u))
    fired = ~torch.isfinite(a[:, 0])
    assert torch.equal(fired, u < 0.5)
    for i in range(6):  # a row's coin does not depend on the rest of the batch
        one = StepContext(ctx.prompt_lengths[i:i + 1], ctx.row_ids[i:i + 1], seed=42)
        assert torch.equal(proc(ids[i:i + 1], l[i:i + 1], ctx=one), a[i:i + 1])
    other = XTC(0.09, 0.5)(ids, l, ctx=StepContext(ctx.prompt_lengths, ctx.row_ids, seed=43))
    assert not torch.equal(other, a) or True  # (different seed: different coins, almost surely; not asserted)


def test_xtc_fires_with_the_given_probability():
    l = logp(.4, .3, .2, .1)
    hits = 0
    for pos in range(2000):
        ids = torch.zeros(1, 3 + pos, dtype=torch.long)
        ctx = StepContext(torch.tensor([3]), torch.tensor([0]), seed=7)
        hits += int(not torch.isfinite(XTC(0.09, 0.3)(ids, l, ctx=ctx)[0, 0]))
    assert abs(hits / 2000 - 0.3) < 0.035  # 3.4 binomial standard deviations


def test_xtc_without_ctx_uses_seeded_keyed_fallback():
    l = logp(.4, .3, .2, .1).repeat(3, 1)
    runs = []
    for _ in range(2):
        proc, outs = XTC(0.09, 0.5, seed=5), []
        for L in range(4, 12):
            outs.append(proc(torch.zeros(3, L, dtype=torch.long), l))
        runs.append(torch.stack(outs))
    assert torch.equal(runs[0], runs[1])
    fired = ~torch.isfinite(runs[0][..., 0])
    want = torch.stack([keyed_uniform(5, torch.arange(3), k, 0, XTC_STREAM) < 0.5 for k in range(8)])
    assert torch.equal(fired, want)


def test_processors_track_prompt_without_ctx():
    proc = FrequencyPenalty(1.0)
    s = torch.zeros(1, 4)
    assert torch.equal(proc(torch.tensor([[1, 1]]), s), s)  # first call: all prompt
    assert torch.equal(proc(torch.tensor([[1, 1, 2]]), s), torch.tensor([[0., 0, -1, 0]]))
    assert torch.equal(proc(torch.tensor([[1, 1, 2, 2]]), s), torch.tensor([[0., 0, -2, 0]]))
    assert torch.equal(proc(torch.tensor([[3, 3, 3]]), s), s)  # a new generation (length did not grow by 1)
    proc.reset()
    assert torch.equal(proc(torch.tensor([[3, 3, 3, 3]]), s), s)


def test_processors_in_transformers_generate():
    "Inside transformers' generate (no ctx) our processors equal transformers' own (varied greedy output: offsets matter)."
    from soft_sampler.core import tiny_model
    model, tok = tiny_model(init_std=0.5)
    ids = tok(["abcab", "xyzxyzx"], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = model.generate(**ids, repetition_penalty=1.5, **kw)
    ours = model.generate(**ids, logits_processor=[RepetitionPenalty(1.5)], **kw)
    assert torch.equal(ref, ours)  # transformers counts the pads too, and so do we without pad_token_id
    ref = model.generate(**ids, no_repeat_ngram_size=2, **kw)
    ours = model.generate(**ids, logits_processor=[NoRepeatNGram(2)], **kw)
    assert torch.equal(ref, ours)
    # XTC with its seeded fallback reproduces across calls
    a = model.generate(**ids, logits_processor=[XTC(0.05, 0.5, seed=1)], **kw)
    b = model.generate(**ids, logits_processor=[XTC(0.05, 0.5, seed=1)], **kw)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- Mirostat
def test_mirostat_v2_update_by_hand():
    ms = Mirostat(tau=1.1, eta=0.5)
    l = logp(.5, .25, .125, .125)
    out = ms(torch.tensor([[3]]), l)
    torch.testing.assert_close(P(out), torch.tensor([[2 / 3, 1 / 3, 0, 0]]))
    ms(torch.tensor([[3, 0]]), l)  # the row sampled token 0: surprise log2(3/2) = 0.585
    mu1 = 2.2 - 0.5 * (math.log2(1.5) - 1.1)
    assert math.isclose(float(ms.mu), mu1, rel_tol=1e-9)
    # μ1 = 2.4575 still keeps two tokens; sampling token 1: surprise log2 3
    ms.update(torch.tensor([1]))
    assert math.isclose(float(ms.mu), mu1 - 0.5 * (math.log2(3) - 1.1), rel_tol=1e-9)
    ms(torch.tensor([[3, 0, 1]]), l)  # explicit update already done: no second update
    assert math.isclose(float(ms.mu), mu1 - 0.5 * (math.log2(3) - 1.1), rel_tol=1e-9)
    assert len(ms.surprises) == 2
    ms.reset()
    ms(torch.tensor([[3]]), l)
    assert float(ms.mu) == 2.2


def test_mirostat_v1_update_by_hand():
    # exact Zipf p_i ∝ 1/i over N = 100: ŝ = 1, k = ⌊2^μ / ln 100⌋; μ0 = 2τ = 5 → k = 6
    zipf = (1 / torch.arange(1, 101.)).log()[None]
    ms = Mirostat(tau=2.5, eta=1.0, version=1)
    out = ms(torch.tensor([[0]]), zipf)
    assert kept(out) == list(range(6))
    ms.update(torch.tensor([2]))  # p = (1/3) / H_6, H_6 = 2.45
    s = -math.log2((1 / 3) / sum(1 / i for i in range(1, 7)))
    assert math.isclose(float(ms.mu), 5 - (s - 2.5), rel_tol=1e-6)
    assert len(kept(ms(torch.tensor([[0, 2]]), zipf))) == int(2 ** float(ms.mu) / math.log(100))


def test_mirostat_per_row_state_and_finished_rows():
    l = logp(.5, .25, .125, .125).repeat(3, 1)
    ms = Mirostat(tau=1.1, eta=0.5)
    ctx = StepContext(torch.tensor([1, 1, 1]), torch.tensor([10, 11, 12]))
    ms(torch.tensor([[3], [3], [3]]), l, ctx=ctx)
    ms(torch.tensor([[3, 0], [3, 1], [3, 0]]), l, ctx=ctx)
    mu = ms.mu.clone()
    assert mu[0] == mu[2] and mu[0] > mu[1]  # token 1 was more surprising
    # row 11 finished and left the batch: the loop passes the remaining row ids
    ms(torch.tensor([[3, 0, 0], [3, 0, 1]]), l[:2], ctx=StepContext(torch.tensor([1, 1]), torch.tensor([10, 12])))
    assert len(ms.mu) == 2 and math.isclose(float(ms.mu[0]), float(mu[0]) - 0.5 * (math.log2(1.5) - 1.1), rel_tol=1e-9)
    assert math.isclose(float(ms.mu[1]), float(mu[2]) - 0.5 * (math.log2(3) - 1.1), rel_tol=1e-9)


def test_mirostat_refuses_beam_search():
    from soft_sampler.core import tiny_model
    model, tok = tiny_model()
    ids = tok(["abc"], return_tensors="pt")
    with pytest.raises(ValueError, match="num_beams=1"):
        model.generate(**ids, max_new_tokens=6, num_beams=3, do_sample=False, logits_processor=[Mirostat(3.0)],
                       pad_token_id=tok.pad_token_id)
    ms = Mirostat(3.0)
    ms(torch.tensor([[1, 2]]), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="reset"):
        ms(torch.tensor([[1, 2, 3, 4]]), torch.zeros(1, 5))  # skipped a step / new generation without reset
    with pytest.raises(ValueError, match="version"):
        Mirostat(3.0, version=3)


def test_mirostat_in_transformers_sampling():
    from soft_sampler.core import tiny_model
    model, tok = tiny_model()
    ms = Mirostat(tau=3.0, eta=0.2)
    ids = tok(["abc", "hello"], return_tensors="pt", padding=True)
    out = model.generate(**ids, max_new_tokens=10, do_sample=True, top_k=0, logits_processor=[ms], pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 10
    assert len(ms.surprises) == 9  # the 10th choice is recorded at a next call that never comes
    assert ms.mu.shape == (2,)


@pytest.mark.slow
def test_mirostat_converges_to_tau_on_the_embedded_model():
    "Observed surprise (bits) of the sampled tokens settles near τ over a generation (two left-padded rows)."
    from soft_sampler.core import load_model
    model, tok = load_model()
    tau, temperature = 3.0, 1.5  # the temperature makes the raw text more surprising than τ: Mirostat must cut
    ms = Mirostat(tau=tau, eta=0.3)
    g = torch.Generator().manual_seed(0)
    prompts = ["Tell me a story about a dragon.", "Describe a walk in the forest."]
    enc = tok.apply_chat_template([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True, padding=True)
    att, ids = enc["attention_mask"], enc["input_ids"]
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    past, step = None, ids
    with torch.no_grad():
        for t in range(64):
            o = model(step, attention_mask=att, position_ids=pos, past_key_values=past, use_cache=True)
            past = o.past_key_values
            nxt = torch.multinomial(P(ms(ids, o.logits[:, -1].float() / temperature)), 1, generator=g)
            ids, step = torch.cat([ids, nxt], 1), nxt
            att = torch.cat([att, torch.ones_like(nxt)], 1); pos = pos[:, -1:] + 1
    ms(ids, o.logits[:, -1].float())  # records the last choice
    s = torch.stack(ms.surprises).numpy()  # [steps, rows]
    assert s.shape == (64, 2)
    late = s[32:].mean(0)
    assert np.all(np.abs(late - tau) < 0.75), late
    assert abs(s[32:].mean() - tau) < 0.5 and abs(s.mean() - tau) < 0.5
    # the controller's bookkeeping: mean surprise − τ = (μ0 − μT) / (η·T) exactly
    np.testing.assert_allclose(s.mean(0) - tau, (2 * tau - ms.mu.numpy()) / (0.3 * 64), rtol=1e-6)


@pytest.mark.parametrize("proc", [RepetitionPenalty(1.2), PresencePenalty(0.5), FrequencyPenalty(0.5), NoRepeatNGram(3),
                                  DRY(0.8), XTC(0.1, 0.5), Mirostat(3.0)], ids=lambda p: type(p).__name__)
def test_processor_signatures_serve_both_loops(proc):
    "Our loop passes `ctx` when `inspect.signature(proc)` shows it; transformers insists on a 2-argument `__call__`."
    import inspect
    params = inspect.signature(proc).parameters
    assert "ctx" in params and params["ctx"].default is None
    assert list(inspect.signature(proc.__call__).parameters) == ["input_ids", "scores"]
    out = proc(torch.tensor([[1, 2, 1]]), torch.zeros(1, 4), ctx=StepContext(torch.tensor([1]), torch.tensor([0])))
    assert out.shape == (1, 4)
