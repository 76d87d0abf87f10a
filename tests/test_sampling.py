"""The sampling loop: agreement with transformers, per-row EOS, keyed reproducibility, prefixes, the sampled
distribution, processors and their context, bad inputs, and the `sample` CLI."""
import math, subprocess, sys
from pathlib import Path
import numpy as np
import pytest, torch
from hypothesis import given, settings, strategies as st
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper
from soft_sampler import sampling
from soft_sampler.core import tiny_model, load_model
from soft_sampler.sampling import (generate, GenerationResult, StepContext, BadLogitsError, sample_from_logits, choose_tokens,
                                   token_uniform, keyed_uniform, check_logits_finite, encode_prompts, sample_cli)

BIN = Path(sys.executable).parent
INF = float("inf")


def hf_greedy(model, tok, texts, max_new_tokens, **kw):
    enc = tok(texts, padding=True, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kw)
    return enc, out


class ForceEOS:
    "Force EOS for the rows with the given stable ids at one response position (reads the context)."
    def __init__(self, eos, rows, at): self.eos, self.rows, self.at = eos, rows, at
    def __call__(self, input_ids, scores, ctx):
        hit = torch.isin(ctx.row_ids, torch.tensor(self.rows)) & (ctx.positions(input_ids) == self.at)
        forced = torch.full_like(scores, -INF); forced[:, self.eos] = 0
        return torch.where(hit[:, None], forced, scores)


# ---------------------------------------------------------------- agreement with transformers

def tiny_gpt2(seed):
    "A tiny GPT-2: learned *absolute* positions, so a wrong position id changes the logits (RoPE would hide an offset)."
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = tiny_model()[1]
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg).eval()
        with torch.no_grad(): model.transformer.wpe.weight.normal_(0, 1.0)  # make positions matter
    return model, tok


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_hf_generate_with_left_padding(seed, arch):
    model, tok = tiny_model(seed=seed, num_layers=3, init_std=0.5) if arch == "llama" else tiny_gpt2(seed)
    texts = ["a", "Hello world, how", "xyz!", "The quick brown fox jumps"]
    enc, theirs = hf_greedy(model, tok, texts, 16, eos_token_id=None)
    assert (enc["attention_mask"] == 0).any(), "the batch must actually be left-padded"
    ours = generate(model, texts, tok, max_new_tokens=16, do_sample=False, stop_token_ids=[])
    assert torch.equal(ours.sequences, theirs)


def test_greedy_equals_hf_with_a_row_ending_early_and_hf_processors(tiny_varied):
    "A plain (HF-convention) processor forces EOS in row 0 at its 3rd token; HF pads it after, so must we."
    model, tok = tiny_varied
    texts = ["Hi", "Hello there", "abc"]
    width = tok(texts, padding=True, return_tensors="pt")["input_ids"].shape[1]
    def eos_row0(input_ids, scores):
        s = scores.clone()
        if input_ids.shape[1] == width + 2: s[0] = -INF; s[0, tok.eos_token_id] = 0
        return s
    procs = [RepetitionPenaltyLogitsProcessor(1.5), eos_row0]
    enc, theirs = hf_greedy(model, tok, texts, 10, logits_processor=LogitsProcessorList(procs), eos_token_id=tok.eos_token_id)
    ours = generate(model, texts, tok, max_new_tokens=10, do_sample=False, logits_processor=procs)
    assert torch.equal(ours.sequences, theirs)
    assert ours.finish_reasons[0] == "eos" and len(ours.token_ids[0]) == 3 and ours.token_ids[0][-1] == tok.eos_token_id


def test_logprobs_equal_hf_processed_scores(tiny_varied):
    model, tok = tiny_varied
    texts = ["Hi", "Hello there"]
    procs = [TemperatureLogitsWarper(0.7), TopKLogitsWarper(10)]
    enc = tok(texts, padding=True, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=tok.pad_token_id, eos_token_id=None,
                         logits_processor=LogitsProcessorList(procs), output_scores=True, return_dict_in_generate=True)
    ours = generate(model, texts, tok, max_new_tokens=6, do_sample=False, stop_token_ids=[], logits_processor=procs)
    assert torch.equal(ours.sequences, out.sequences)
    for r in range(2):
        ref = torch.stack([torch.log_softmax(s[r], -1)[t] for s, t in zip(out.scores, ours.token_ids[r])])
        torch.testing.assert_close(ours.logprobs[r], ref, atol=1e-5, rtol=1e-5)
        ent = torch.stack([torch.distributions.Categorical(logits=s[r]).entropy() for s in out.scores])
        torch.testing.assert_close(ours.entropies[r], ent, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_greedy_equals_hf_generate_on_embedded_model():
    model, tok = load_model()
    chats = [[{"role": "user", "content": q}] for q in
             ["What is the capital of France?", "Hi", "Write a haiku about autumn leaves falling in the wind."]]
    ours = generate(model, chats, tok, max_new_tokens=24, do_sample=False)
    enc = tok([tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats],
              add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()
    theirs = model.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    assert torch.equal(ours.sequences, theirs)
    assert "Paris" in ours.texts[0]


@pytest.mark.slow
def test_embedded_model_sampling_is_reproducible_and_row_independent():
    model, tok = load_model()
    prompts = ["Once upon a time", "The weather today is"]
    a = generate(model, prompts, tok, max_new_tokens=12, seed=5, n=2)
    b = generate(model, prompts, tok, max_new_tokens=12, seed=5, n=2)
    assert a.token_ids == b.token_ids and len(set(map(tuple, a.token_ids))) == 4
    alone = generate(model, prompts[1:], tok, max_new_tokens=12, seed=5, n=2, row_ids=[2, 3])
    assert alone.token_ids == a.token_ids[2:]


# ---------------------------------------------------------------- per-row EOS, n, seeds, rows

def test_per_row_eos_does_not_disturb_other_rows(tiny):
    model, tok = tiny
    prompts = ["Hello", "Hi there", "abc"]
    free = generate(model, prompts, tok, max_new_tokens=8, seed=1, stop_token_ids=[])
    res = generate(model, prompts, tok, max_new_tokens=8, seed=1, logits_processor=ForceEOS(tok.eos_token_id, [0], 2))
    assert res.token_ids[0] == free.token_ids[0][:2] + [tok.eos_token_id]
    assert res.finish_reasons[0] == "eos" and res.token_ids[1:] == free.token_ids[1:]
    assert res.responses[0, 3:].eq(tok.pad_token_id).all()
    assert res.logprobs[0][-1].item() == 0.0 and res.entropies[0][-1].item() == 0.0


def test_custom_stop_ids_give_stop_reason(tiny):
    model, tok = tiny
    free = generate(model, ["Hello"], tok, max_new_tokens=10, seed=2, stop_token_ids=[])
    stop = free.token_ids[0][4]
    res = generate(model, ["Hello"], tok, max_new_tokens=10, seed=2, stop_token_ids=[stop])
    first = free.token_ids[0].index(stop)
    assert res.token_ids[0] == free.token_ids[0][:first + 1] and res.finish_reasons == ["stop"]
    assert generate(model, ["Hello"], tok, max_new_tokens=3, seed=2, stop_token_ids=[]).finish_reasons == ["length"]


def test_seed_reproducibility_and_seed_none(tiny):
    model, tok = tiny
    a = generate(model, ["Hello", "Hi"], tok, max_new_tokens=10, seed=7)
    assert a.token_ids == generate(model, ["Hello", "Hi"], tok, max_new_tokens=10, seed=7).token_ids
    assert a.token_ids != generate(model, ["Hello", "Hi"], tok, max_new_tokens=10, seed=8).token_ids
    torch.manual_seed(0); r1 = generate(model, ["Hello"], tok, max_new_tokens=6)
    torch.manual_seed(0); r2 = generate(model, ["Hello"], tok, max_new_tokens=6)
    assert r1.seed == r2.seed and isinstance(r1.seed, int)
    assert generate(model, ["Hello"], tok, max_new_tokens=6, seed=r1.seed).token_ids == r1.token_ids


def test_rows_do_not_depend_on_batch_composition(tiny):
    model, tok = tiny
    big = generate(model, ["Hello", "Hi there friend", "x"], tok, max_new_tokens=10, seed=4, stop_token_ids=[])
    other = generate(model, ["Completely different, longer prompt", "Hi there friend"], tok, max_new_tokens=10, seed=4,
                     row_ids=[9, 1], stop_token_ids=[])
    assert other.token_ids[1] == big.token_ids[1]
    assert generate(model, ["x"], tok, max_new_tokens=10, seed=4, row_ids=[2], stop_token_ids=[]).token_ids[0] == big.token_ids[2]


def test_n_samples_layout(tiny):
    model, tok = tiny
    res = generate(model, ["Hello", "Hi"], tok, max_new_tokens=8, seed=0, n=3, stop_token_ids=[])
    assert len(res) == 6 and res.row_ids == list(range(6))
    assert res.prompt_ids[:3] == [tok("Hello")["input_ids"]] * 3 and res.prompt_ids[3:] == [tok("Hi")["input_ids"]] * 3
    assert len({tuple(t) for t in res.token_ids[:3]}) == 3, "samples of one prompt must differ"
    row4 = generate(model, ["Hi"], tok, max_new_tokens=8, seed=0, row_ids=[4], stop_token_ids=[])
    assert row4.token_ids[0] == res.token_ids[4]
    assert len(res.texts) == 6 and res.texts[4] == tok.decode(res.token_ids[4], skip_special_tokens=True)


def test_token_choice_is_the_exported_helper(tiny):
    "The loop's choice at each step equals `choose_tokens` on the processed logits with the keyed uniform."
    model, tok = tiny
    res = generate(model, ["Hello", "Hi"], tok, max_new_tokens=5, seed=3, keep_logits="full", row_ids=[10, 11], attempt=[0, 2],
                   logits_processor=lambda ids, s: s / 0.8, stop_token_ids=[])
    for r in range(2):
        proc = res.processed_logits[r].values
        for t in range(5):
            want = choose_tokens(proc[t:t + 1], res.seed, [res.row_ids[r]], [t], attempt=[0, 2][r])
            assert want.item() == res.token_ids[r][t]
        torch.testing.assert_close(proc, res.raw_logits[r].values / 0.8)


# ---------------------------------------------------------------- prefixes and attempts

def test_prefix_equivalence_per_row_lengths(tiny):
    model, tok = tiny
    prompts = ["Hello", "Hi there"]
    full = generate(model, prompts, tok, max_new_tokens=12, seed=11, n=2, stop_token_ids=[])
    cuts = [0, 3, 7, 11]
    res = generate(model, prompts, tok, max_new_tokens=12, seed=11, n=2, stop_token_ids=[],
                   prefixes=[full.token_ids[r][:c] for r, c in enumerate(cuts)])
    for r, c in enumerate(cuts):
        assert res.token_ids[r][:12] == full.token_ids[r], r
        assert len(res.token_ids[r]) == c + 12 and res.prefix_lengths[r] == c
        assert torch.isnan(res.logprobs[r][:c]).all()
        torch.testing.assert_close(res.logprobs[r][c:12], full.logprobs[r][c:12], atol=1e-5, rtol=1e-5)


def test_prefix_positions_seen_by_processors(tiny):
    model, _ = tiny
    seen = []
    def spy(input_ids, scores, ctx):
        seen.append((ctx.prompt_lengths.tolist(), ctx.positions(input_ids).tolist(), ctx.row_ids.tolist(), ctx.seed,
                     torch.as_tensor(ctx.attempt).tolist()))
        return scores
    generate(model, [[5, 6, 7], [8]], max_new_tokens=2, seed=9, prefixes=[[], [9, 10]], row_ids=[4, 7], attempt=[0, 3],
             logits_processor=spy, stop_token_ids=[])
    assert seen == [([3, 1], [0, 2], [4, 7], 9, [0, 3]), ([3, 1], [1, 3], [4, 7], 9, [0, 3])]


def test_attempt_changes_only_its_row(tiny):
    model, tok = tiny
    a = generate(model, ["Hello", "Hi"], tok, max_new_tokens=10, seed=0, stop_token_ids=[])
    b = generate(model, ["Hello", "Hi"], tok, max_new_tokens=10, seed=0, stop_token_ids=[], attempt=[0, 1])
    assert a.token_ids[0] == b.token_ids[0] and a.token_ids[1] != b.token_ids[1]


def test_prefix_with_stop_tokens(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    res = generate(model, ["Hello", "Hi"], tok, max_new_tokens=5, seed=0, prefixes=[[40, eos], [41]])
    assert res.token_ids[0] == [40, eos] and res.finish_reasons[0] == "eos"
    assert res.token_ids[1][0] == 41 and len(res.token_ids[1]) > 1
    with pytest.raises(ValueError, match="prefix 0 contains a stop token before its end"):
        generate(model, ["Hello"], tok, prefixes=[[eos, 40]])


def test_max_new_tokens_zero(tiny):
    model, tok = tiny
    res = generate(model, ["Hello"], tok, max_new_tokens=0, prefixes=[[40, 41]])
    assert res.token_ids == [[40, 41]] and res.finish_reasons == ["length"]
    kept = generate(model, ["Hello"], tok, max_new_tokens=0, keep_logits="topk", keep_topk=5).raw_logits
    assert len(kept) == 1 and kept[0].values.shape == (0, 5)


# ---------------------------------------------------------------- the sampled distribution

def test_one_step_samples_follow_the_processed_softmax(tiny):
    "Chi-square of 6000 one-step samples against the exact processed distribution (top-k 12, temperature 0.7)."
    model, tok = tiny
    procs = [TemperatureLogitsWarper(0.7), TopKLogitsWarper(12)]
    ids = tok("Hello")["input_ids"]
    with torch.no_grad(): logits = model(torch.tensor([ids])).logits[0, -1]
    p = torch.softmax(LogitsProcessorList(procs)(torch.tensor([ids]), logits[None].clone())[0], -1).double()
    N = 6000
    res = generate(model, [ids], max_new_tokens=1, n=N, seed=123, logits_processor=procs, stop_token_ids=[])
    counts = torch.bincount(torch.tensor([t[0] for t in res.token_ids]), minlength=len(p)).double()
    assert counts[p == 0].sum() == 0, "a token outside the top-k was sampled"
    keep = p > 0
    chi2 = (((counts - N * p)[keep]) ** 2 / (N * p[keep])).sum().item()
    df = int(keep.sum()) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), f"chi2={chi2:.1f} with df={df}"
    assert 0.5 * (counts / N - p).abs().sum() < 0.05


@settings(max_examples=60, deadline=None)
@given(logits=st.lists(st.one_of(st.floats(-30, 30), st.just(-INF)), min_size=1, max_size=8).filter(lambda x: any(v > -INF for v in x)))
def test_inverse_cdf_is_exact_on_a_grid(logits):
    x = torch.tensor([logits], dtype=torch.float32)
    p = torch.softmax(x[0].double(), -1)
    M = 20_000
    u = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    picks = sample_from_logits(x.expand(M, -1), u)
    freq = torch.bincount(picks, minlength=len(logits)).double() / M
    assert (freq[p == 0] == 0).all(), "a zero-probability token was chosen"
    assert (freq - p).abs().max() <= 1.5 / M + 1e-6
    edges = torch.tensor([0.0, 2**-53, 0.5, 1 - 2**-53, np.nextafter(1.0, 0.0)], dtype=torch.float64)
    t = sample_from_logits(x.expand(len(edges), -1), edges)
    assert (p[t] > 0).all()


def test_never_chooses_a_minus_inf_token_at_float_edges():
    x = torch.tensor([[0.0, -INF, -INF], [-INF, -INF, 5.0], [-INF, 1e-30, -INF]]).repeat(2, 1)
    u = torch.tensor([0.0, 0.0, 0.0, 1 - 2**-53, 1 - 2**-53, 1 - 2**-53], dtype=torch.float64)
    assert sample_from_logits(x, u).tolist() == [0, 2, 1, 0, 2, 1]
    one = torch.ones(6, dtype=torch.float64)  # u = 1 is outside [0, 1), yet it still lands on a possible token
    assert sample_from_logits(x, one).tolist() == [0, 2, 1, 0, 2, 1]
    tiny_mass = torch.tensor([[0.0, -800.0, -INF]])  # exp(-800) underflows: probability exactly 0 in float64
    assert sample_from_logits(tiny_mass, torch.tensor([1 - 2**-53], dtype=torch.float64)).item() == 0


def test_keyed_uniforms_are_uniform():
    u = keyed_uniform(3, row=torch.arange(50_000), position=7).numpy()
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = ((hist - 2500) ** 2 / 2500).sum()
    assert chi2 < 19 + 6 * math.sqrt(38)
    assert torch.equal(token_uniform(3, [5], [7]), keyed_uniform(3, 5, 7, 0, 0)[None])


# ---------------------------------------------------------------- processors and context

def test_ctx_signature_is_checked_once_per_processor(tiny, monkeypatch):
    model, tok = tiny
    calls = []
    real = sampling._wants_ctx
    monkeypatch.setattr(sampling, "_wants_ctx", lambda f: calls.append(f) or real(f))
    got = {}
    class Kw:
        def __call__(self, input_ids, scores, **kwargs): got["kw"] = kwargs.get("ctx"); return scores
    def plain(input_ids, scores): return scores
    generate(model, ["Hello"], tok, max_new_tokens=5, seed=0, logits_processor=[Kw(), plain], stop_token_ids=[])
    assert len(calls) == 2
    assert isinstance(got["kw"], StepContext)


def test_processor_returning_wrong_shape(tiny):
    model, tok = tiny
    with pytest.raises(TypeError, match="must return a tensor of shape"):
        generate(model, ["Hello"], tok, max_new_tokens=2, logits_processor=lambda i, s: s[:, :5])
    with pytest.raises(TypeError, match="item 1 is a str"):
        generate(model, ["Hello"], tok, logits_processor=[lambda i, s: s, "temperature"])


def test_keep_logits_topk_and_full(tiny):
    model, tok = tiny
    ids = tok("Hello")["input_ids"]
    res = generate(model, [ids], max_new_tokens=4, seed=0, keep_logits="topk", keep_topk=7, stop_token_ids=[])
    k = res.raw_logits[0]
    assert k.values.shape == (4, 7) and k.indices.shape == (4, 7) and k.logsumexp.shape == (4,)
    with torch.no_grad(): ref = model(torch.tensor([ids])).logits[0, -1]
    v, i = ref.topk(7)
    torch.testing.assert_close(k.values[0], v, atol=1e-5, rtol=1e-5); assert torch.equal(k.indices[0], i)
    torch.testing.assert_close(k.logprobs()[0], torch.log_softmax(ref, -1)[i], atol=1e-5, rtol=1e-5)
    full = generate(model, [ids], max_new_tokens=4, seed=0, keep_logits="full", stop_token_ids=[])
    torch.testing.assert_close(full.raw_logits[0].values[0], ref, atol=1e-5, rtol=1e-5)
    assert full.raw_logits[0].indices is None and res.token_ids == full.token_ids
    assert generate(model, [ids], max_new_tokens=2, seed=0).raw_logits is None


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("value,what", [(float("nan"), "NaN"), (INF, "+inf"), (-INF, "no finite logit")])
def test_bad_logits_name_step_and_row(tiny, value, what):
    model, tok = tiny
    def poison(input_ids, scores, ctx):
        hit = (ctx.row_ids == 2) & (ctx.positions(input_ids) == 3)
        s = scores.clone()
        if value == -INF: s[hit] = -INF
        else: s[hit, 5] = value
        return s
    with pytest.raises(BadLogitsError, match=rf"step 3, row 2 \(row id 2, response position 3\): {what.replace('+', '[+]')}"):
        generate(model, ["a", "bb", "ccc"], tok, max_new_tokens=6, seed=0, logits_processor=poison, stop_token_ids=[])
    with pytest.raises(BadLogitsError, match="step 3, row 2"):  # greedy too
        generate(model, ["a", "bb", "ccc"], tok, max_new_tokens=6, do_sample=False, logits_processor=poison, stop_token_ids=[])


def test_bad_logits_of_finished_rows_are_ignored(tiny):
    model, tok = tiny
    def nan_after_eos(input_ids, scores, ctx):
        dead = (ctx.row_ids == 0) & (ctx.positions(input_ids) >= 2)
        return torch.where(dead[:, None], torch.full_like(scores, float("nan")), scores)
    res = generate(model, ["a", "bb"], tok, max_new_tokens=6, seed=0,
                   logits_processor=[ForceEOS(tok.eos_token_id, [0], 1), nan_after_eos])
    assert res.finish_reasons[0] == "eos" and len(res.token_ids[0]) == 2


def test_check_logits_finite_direct():
    check_logits_finite(torch.tensor([[0.0, -INF]]))
    with pytest.raises(BadLogitsError, match="row 1"):
        check_logits_finite(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="`u` must have shape"):
        sample_from_logits(torch.zeros(2, 3), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("kw,match", [
    (dict(max_new_tokens=-1), "`max_new_tokens` must be an integer >= 0"),
    (dict(max_new_tokens=2.5), "`max_new_tokens` must be an integer"),
    (dict(n=0), "`n` must be an integer >= 1"),
    (dict(seed=-3), "`seed` must be an integer >= 0"),
    (dict(seed="x"), "`seed` must be an integer"),
    (dict(row_ids=[1, 2]), "`row_ids` must be an integer or a list of 1"),
    (dict(attempt=[0, 1]), "`attempt` must be an integer or a list of 1"),
    (dict(prefixes=[[1], [2]]), "`prefixes` must be a list of 1"),
    (dict(prefixes=[[10**6]]), "prefix 0 has token ids outside"),
    (dict(keep_logits="all"), "`keep_logits` must be None, 'topk' or 'full'"),
    (dict(keep_logits="topk", keep_topk=0), "`keep_topk` must be an integer >= 1"),
])
def test_bad_arguments(tiny, kw, match):
    model, tok = tiny
    with pytest.raises(ValueError, match=match):
        generate(model, "Hello", tok, **kw)


def test_bad_prompts(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="`tokenizer` is needed"): generate(model, "Hello")
    with pytest.raises(TypeError, match="empty list"): generate(model, [], tok)
    with pytest.raises(TypeError, match="prompt 1 must be"): generate(model, ["a", 3.5], tok)
    with pytest.raises(TypeError, match="integer token ids"): generate(model, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="prompt 0 has token ids outside"): generate(model, [[1, -2]])
    with pytest.raises(ValueError, match="prompt 1 is empty"): generate(model, [[5], []])
    tok2 = tiny_model()[1]; tok2.chat_template = None
    with pytest.raises(ValueError, match="no chat template"): generate(model, [{"role": "user", "content": "x"}], tok2)


def test_prompt_forms_agree(tiny):
    model, tok = tiny
    chat = [{"role": "user", "content": "hi"}]
    ids = encode_prompts(chat, tok)[0]
    forms = [chat, [chat], [ids], torch.tensor([ids]), torch.tensor(ids), {"input_ids": [ids]},
             tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)]
    outs = [generate(model, f, tok, max_new_tokens=4, seed=0).token_ids for f in forms[:-1]]
    outs.append(generate(model, [tok(forms[-1], add_special_tokens=False)["input_ids"]], tok, max_new_tokens=4, seed=0).token_ids)
    assert all(o == outs[0] for o in outs)


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("tiny")
    tiny[0].save_pretrained(d); tiny[1].save_pretrained(d)
    return d


def test_sample_cli_on_a_local_model(tiny_dir, capsys):
    assert sample_cli(["--prompt", "hi", "--model", str(tiny_dir), "--max-new-tokens", "5", "--seed", "0", "-n", "2",
                       "--temperature", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and "seed 0" in out and "chat template" in out
    assert "entropy" in out and len([l for l in out.splitlines() if l[:3].strip().isdigit()]) >= 2
    assert sample_cli(["--prompt", "hi", "--model", str(tiny_dir), "--max-new-tokens", "3", "--raw", "--greedy"]) == 0
    assert "raw prompt" in capsys.readouterr().out


@pytest.mark.parametrize("args,msg", [(["--temperature", "0"], "--temperature must be"), (["-n", "0"], "-n must be"),
                                      (["--max-new-tokens", "0"], "--max-new-tokens must be")])
def test_sample_cli_bad_args(args, msg, capsys):
    with pytest.raises(SystemExit) as e: sample_cli(["--prompt", "x", *args])
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.slow
def test_sample_cli_embedded_model_subprocess():
    r = subprocess.run([str(BIN/"soft-sampler"), "sample", "--prompt", "Write one sentence about the sea.",
                        "--max-new-tokens", "8", "--seed", "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "seed 0" in r.stdout and "entropy" in r.stdout and "chat template" in r.stdout
