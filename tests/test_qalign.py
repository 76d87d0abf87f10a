"""QAlign (#10): exactness on an enumerable model, resume, selection, baselines, validation."""
import contextlib, io, json, math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import one_thread
from soft_sampler.core import tiny_model
from soft_sampler.rewards import last_number
from soft_sampler.qalign import (QAlign, KeepTokens, aligned_distribution, choose_cuts, effective_sample_size,
                                 enumerate_responses, log_acceptance, majority_vote, mbr_index,
                                 reference_suffix, sample_suffixes, softmax_weights, state_histogram,
                                 token_logprobs, total_variation, transition_matrix, tv_noise_quantile, unigram_f1)




@pytest.fixture(scope="module")
def setup():
    "A different tiny model than the notebook's: 1 layer, width 16, seed 1; three tokens kept by a pipeline."
    model, tok = tiny_model(hidden_size=16, num_layers=1, seed=1)
    eos, a, b = tok.eos_token_id, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    prompt = tok("Hi!")["input_ids"]
    return dict(model=model, tok=tok, eos=eos, a=a, b=b, prompt=prompt, keep=KeepTokens([eos, a, b]))


def count_a(setup):
    a = setup["a"]
    return lambda prompts, responses: [float(r.count(a)) for r in responses]


class NoLengthRatio(QAlign):
    "Deliberately wrong: accepts with exp(Δr/β) only."
    def log_accept(self, r0, r1, n0, n1): return log_acceptance(r0, r1, n0, n0, self.beta)


class PromptCut(QAlign):
    "Deliberately wrong: the cut ranges over prompt + response."
    def cut_points(self, lengths, prompt_length, u):
        return (choose_cuts(lengths + prompt_length, u) - prompt_length).clamp(min=0)


# ---- the acceptance rule ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.floats(-5, 5), st.floats(-5, 5), st.integers(1, 9), st.integers(1, 9), st.floats(0.05, 10))
def test_log_acceptance_detailed_balance(r0, r1, n0, n1, beta):
    "α(y→y')/α(y'→y) = exp(Δr/β)·|y|/|y'| (the MH identity) and α ∈ [0, 1]."
    f = log_acceptance([r0], [r1], [n0], [n1], beta)
    b = log_acceptance([r1], [r0], [n1], [n0], beta)
    assert f.item() <= 0 and b.item() <= 0
    assert math.isclose(f.item() - b.item(), (r1 - r0) / beta + math.log(n0 / n1), abs_tol=1e-9)


def test_log_acceptance_infinite_rewards():
    la = log_acceptance(torch.tensor([-math.inf, 0.0, -math.inf]), torch.tensor([0.0, -math.inf, -math.inf]),
                        torch.tensor([2, 2, 2]), torch.tensor([3, 3, 2]), 1.0)
    assert la.tolist() == [0.0, -math.inf, 0.0]


def test_cuts_uniform_over_response():
    u = torch.linspace(0, 1 - 1e-12, 7001)
    cuts = choose_cuts(torch.full((7001,), 7), u)
    assert cuts.min() == 0 and cuts.max() == 6
    assert (torch.bincount(cuts, minlength=7) - 1000).abs().max() <= 1


# ---- the proposal engine --------------------------------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(st.lists(st.lists(st.integers(3, 90), max_size=5), min_size=1, max_size=4), st.integers(0, 10**6),
       st.integers(0, 5))
def test_engine_matches_uncached_reference(setup, prefixes, seed, attempt):
    m, tok, p = setup["model"], setup["tok"], setup["prompt"]
    rows = torch.arange(len(prefixes)) * 7 + 1
    got = sample_suffixes(m, p, prefixes, 8, [tok.eos_token_id], rows, seed=seed, attempt=attempt)
    want = [reference_suffix(m, p, q, 8, [tok.eos_token_id], int(r), seed=seed, attempt=attempt) for q, r in zip(prefixes, rows)]
    assert got == want
    assert all(len(q) + len(s) == 8 or s[-1] == tok.eos_token_id for q, s in zip(prefixes, got))


def test_engine_one_token_prompt_and_pipeline(setup):
    m, keep = setup["model"], setup["keep"]
    got = sample_suffixes(m, [5], [[], [setup["a"]]], 4, [setup["eos"]], torch.tensor([0, 1]), logits_processor=keep)
    want = [reference_suffix(m, [5], q, 4, [setup["eos"]], r, logits_processor=keep) for q, r in (([], 0), ([setup["a"]], 1))]
    assert got == want and all(t in (setup["eos"], setup["a"], setup["b"]) for s in got for t in s)


# ---- exactness --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exact(setup):
    space = enumerate_responses([setup["eos"], setup["a"], setup["b"]], [setup["eos"]], 4)
    lp = token_logprobs(setup["model"], setup["prompt"], space, setup["keep"])
    logp = np.array([sum(l) for l in lp])
    rewards = np.array(count_a(setup)(None, [list(y) for y in space]))
    beta = 2.0
    return dict(space=space, lp=lp, p=np.exp(logp) / np.exp(logp).sum(), rewards=rewards, beta=beta,
                pi=aligned_distribution(logp, rewards, beta))


def test_enumerated_space_is_complete_and_eos_likely(setup, exact):
    assert abs(exact["p"].sum() - 1) < 1e-12 and abs(np.exp([sum(l) for l in exact["lp"]]).sum() - 1) < 1e-6
    first_eos = math.exp(token_logprobs(setup["model"], setup["prompt"], [(setup["eos"],)], setup["keep"])[0][0])
    assert first_eos >= 0.2
    assert len({len(y) for y in exact["space"]}) == 4


def test_transition_matrix_stationary_only_for_the_right_chain(exact):
    args = (exact["space"], exact["lp"], exact["rewards"], exact["beta"])
    K = transition_matrix(*args)
    assert np.allclose(K.sum(1), 1) and (K >= -1e-15).all()
    assert np.abs(exact["pi"] @ K - exact["pi"]).max() < 1e-7
    for bad in (transition_matrix(*args, length_ratio=False), transition_matrix(*args, prompt_length=3)):
        assert np.abs(exact["pi"] @ bad - exact["pi"]).max() > 1e-2


def test_chains_converge_to_pi_and_controls_do_not(setup, exact):
    """N chains at step T are N iid draws from p·K^T. Threshold = 99.9% quantile of the TV of N iid draws from π
    (sampling noise) + the exact TV(p·K^T, π) (mixing). The wrong chains' exact distance is far above it."""
    N, T, pi = 2000, 14, exact["pi"]
    args = (exact["space"], exact["lp"], exact["rewards"], exact["beta"])
    exact_tv = lambda K: total_variation(exact["p"] @ np.linalg.matrix_power(K, T), pi)
    threshold = tv_noise_quantile(pi, N, draws=1000) + exact_tv(transition_matrix(*args))
    assert threshold < 0.1
    assert min(exact_tv(transition_matrix(*args, length_ratio=False)),
               exact_tv(transition_matrix(*args, prompt_length=len(setup["prompt"])))) > 1.8 * threshold
    tvs = {}
    with one_thread():
        for cls in (QAlign, NoLengthRatio, PromptCut):
            r = cls(setup["model"], count_a(setup), beta=exact["beta"]).run(
                setup["prompt"], chains=N, steps=T, max_new_tokens=4, pipeline=setup["keep"], seed=5, progress=False)
            tvs[cls.__name__] = total_variation(state_histogram([s[T] for s in r.states], exact["space"]), pi)
    assert tvs["QAlign"] < threshold, (tvs, threshold)
    assert tvs["NoLengthRatio"] > threshold and tvs["PromptCut"] > threshold, (tvs, threshold)


# ---- the run: bookkeeping, resume, warm start -----------------------------------------------------------

def run_kw(setup, **kw):
    return dict(dict(chains=3, steps=5, max_new_tokens=4, pipeline=setup["keep"], seed=2, progress=False), **kw)


def test_run_bookkeeping(setup):
    reward = count_a(setup)
    res = QAlign(setup["model"], reward, beta=1.0).run(setup["prompt"], **run_kw(setup))
    assert (res.chains, res.steps) == (3, 5)
    tokens = sum(len(ch[0]) for ch in res.states)
    for c in range(3):
        for t in range(1, 6):
            y, y2, i = res.states[c][t - 1], res.proposals[c][t - 1], res.cuts[c][t - 1]
            assert 0 <= i < len(y) and y2[:i] == y[:i]
            assert res.states[c][t] == (y2 if res.accepted[c][t - 1] else y)
            assert res.proposal_rewards[c][t - 1] == reward(None, [y2])[0]
            tokens += len(y2) - i
        assert res.rewards[c] == reward(None, res.states[c])
    assert res.generated_tokens == tokens
    assert res.acceptance_rate == np.mean([a for ch in res.accepted for a in ch])


def test_several_prompts_give_a_list_and_prompts_are_independent(setup):
    qa = QAlign(setup["model"], count_a(setup), beta=1.0)
    both = qa.run([setup["prompt"], [5, 6]], **run_kw(setup))
    assert isinstance(both, list) and len(both) == 2 and both[1].prompt_ids == [5, 6]
    alone = qa.run(setup["prompt"], **run_kw(setup))
    assert alone.states == both[0].states


class Crash(Exception): pass


def crashing(reward, after):
    n = {"calls": 0}
    def fn(p, r):
        n["calls"] += 1
        if n["calls"] > after: raise Crash()
        return reward(p, r)
    return fn


@pytest.mark.parametrize("after", [0, 1, 4, 9])
def test_resume_identical_and_nothing_lost_or_repeated(setup, tmp_path, after):
    prompts, reward, path = [setup["prompt"], [5, 6, 7]], count_a(setup), tmp_path / "ck.jsonl"
    full = QAlign(setup["model"], reward, beta=1.0).run(prompts, **run_kw(setup))
    with pytest.raises(Crash):
        QAlign(setup["model"], crashing(reward, after), beta=1.0).run(prompts, checkpoint=path, **run_kw(setup))
    assert len(path.read_text().splitlines()) == 1 + after
    with open(path, "a") as f: f.write('{"prompt": 0, "t": 99, "states": [[')  # died mid-write
    resumed = QAlign(setup["model"], reward, beta=1.0).run(prompts, checkpoint=path, **run_kw(setup))
    for a, b in zip(full, resumed):
        assert (a.states, a.proposals, a.cuts, a.accepted, a.rewards, a.generated_tokens) == \
               (b.states, b.proposals, b.cuts, b.accepted, b.rewards, b.generated_tokens)
    recs = [json.loads(l) for l in path.read_text().splitlines()[1:]]
    assert sorted((r["prompt"], r["t"]) for r in recs) == [(k, t) for k in range(2) for t in range(6)]
    # a completed checkpoint is read back without calling the reward at all
    again = QAlign(setup["model"], crashing(reward, 0), beta=1.0).run(prompts, checkpoint=path, **run_kw(setup))
    assert again[1].states == full[1].states


@pytest.mark.parametrize("frac", [0.01, 0.2, 0.45, 0.7, 0.93, 0.999])
def test_resume_after_truncation_anywhere(setup, tmp_path, frac):
    "A crash can cut the file at any byte (even inside the header): resume repairs it and gives the same chains."
    path, reward = tmp_path / "ck.jsonl", count_a(setup)
    full = QAlign(setup["model"], reward, beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup))
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * frac)])
    resumed = QAlign(setup["model"], reward, beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup))
    assert (resumed.states, resumed.accepted, resumed.rewards) == (full.states, full.accepted, full.rewards)
    assert path.read_bytes() == raw  # the repaired file is byte-identical to an uninterrupted one


def test_resume_extends_steps(setup, tmp_path):
    path, reward = tmp_path / "ck.jsonl", count_a(setup)
    QAlign(setup["model"], reward, beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup, steps=2))
    longer = QAlign(setup["model"], reward, beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup, steps=5))
    assert longer.states == QAlign(setup["model"], reward, beta=1.0).run(setup["prompt"], **run_kw(setup)).states


def test_checkpoint_with_other_settings_is_refused(setup, tmp_path):
    path = tmp_path / "ck.jsonl"
    QAlign(setup["model"], count_a(setup), beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup))
    with pytest.raises(ValueError, match="seed"):
        QAlign(setup["model"], count_a(setup), beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup, seed=3))
    with pytest.raises(ValueError, match="kind"):
        NoLengthRatio(setup["model"], count_a(setup), beta=1.0).run(setup["prompt"], checkpoint=path, **run_kw(setup))


def test_warm_start(setup):
    a, b, eos = setup["a"], setup["b"], setup["eos"]
    qa = QAlign(setup["model"], count_a(setup), beta=1.0)
    res = qa.run(setup["prompt"], warm_start=[a, a, b, a], **run_kw(setup))
    assert [ch[0] for ch in res.states] == [[a, a, b, a]] * 3
    assert res.generated_tokens == sum(len(p) - i for ch_p, ch_i in zip(res.proposals, res.cuts) for p, i in zip(ch_p, ch_i))
    per_chain = qa.run(setup["prompt"], warm_start=[[eos], [a, eos], [b, b, b, b]], **run_kw(setup))
    assert [ch[0] for ch in per_chain.states] == [[eos], [a, eos], [b, b, b, b]]
    for bad in ([a, a], [eos, a], [a] * 5, [], [[a, eos]] * 2):
        with pytest.raises(ValueError, match="warm_start"):
            qa.run(setup["prompt"], warm_start=bad, **run_kw(setup))


def test_bad_input(setup):
    m, r = setup["model"], count_a(setup)
    with pytest.raises(ValueError, match="beta"): QAlign(m, r, beta=-1)
    with pytest.raises(ValueError, match="beta"): QAlign(m, r, beta=float("inf"))
    with pytest.raises(TypeError, match="reward"): QAlign(m, 3)
    qa = QAlign(m, r)
    for kw, name in ((dict(chains=0), "chains"), (dict(steps=-1), "steps"), (dict(max_new_tokens=0), "max_new_tokens"),
                     (dict(chains=2.5), "chains")):
        with pytest.raises(ValueError, match=name): qa.run([5, 6], **kw)
    with pytest.raises(ValueError, match="tokenizer"): qa.run("text needs a tokenizer")
    with pytest.raises(TypeError, match="pipeline"): qa.run([5, 6], pipeline=3)
    with pytest.raises(ValueError, match="finite"):
        QAlign(m, lambda p, rs: [float("nan")] * len(rs)).run([5, 6], chains=2, steps=1, max_new_tokens=2, progress=False)


# ---- ESS, selection, baselines ----------------------------------------------------------------------------

@pytest.mark.parametrize("phi", [0.0, 0.6, 0.9])
def test_ess_matches_ar1_closed_form(phi):
    rng = np.random.default_rng(1)
    m, n = 6, 5000
    e = rng.standard_normal((m, n)); x = np.zeros((m, n)); x[:, 0] = e[:, 0] / math.sqrt(1 - phi**2)
    for t in range(1, n): x[:, t] = phi * x[:, t - 1] + e[:, t]
    assert abs(effective_sample_size(x) / (m * n * (1 - phi) / (1 + phi)) - 1) < 0.15


def test_selectors_by_hand():
    assert majority_vote(["1", "2", "2", None, None, None]) == "2"
    assert majority_vote([None]) is None
    assert majority_vote(["1", "2", "2"], softmax_weights([3.0, 0.0, 0.0], 1.0)) == "1"
    assert majority_vote(["1", "2", "2"], softmax_weights([3.0, 0.0, 0.0], 100.0)) == "2"
    assert mbr_index([[1, 2], [7, 8, 9], [1, 2, 3], [1, 2, 3]]) in (2, 3)
    assert mbr_index(["a", "b", "b"], similarity=lambda x, y: float(x == y)) == 1
    assert last_number("x = -3.5; y = 1,024.") == 1024.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["1", "2", "3"]), min_size=1, max_size=12), st.floats(0.1, 5))
def test_weighted_vote_with_equal_rewards_is_majority_vote(answers, beta):
    w = softmax_weights([0.7] * len(answers), beta)
    assert math.isclose(sum(w), 1.0) and majority_vote(answers, w) == majority_vote(answers)


def test_final_answers_and_equal_compute_baseline(setup):
    a = setup["a"]
    qa = QAlign(setup["model"], count_a(setup), beta=2.0, tokenizer=setup["tok"])
    res = qa.run(setup["prompt"], **run_kw(setup, chains=4, steps=8))
    base = qa.baseline(setup["prompt"], res.generated_tokens, max_new_tokens=4, pipeline=setup["keep"], seed=2, batch=3)
    assert 0 <= base.generated_tokens - res.generated_tokens < 4
    assert base.responses[:4] == [ch[0] for ch in res.states]  # common random numbers with the chains' starts
    pool, rewards = res.pool(burn_in=3)
    assert len(pool) == 4 * 6
    assert res.final("best_of_n", burn_in=3).response.count(a) == max(rewards)
    assert res.final("last").response == res.states[0][-1]
    count = lambda text: text.count("a")
    mv = res.final("majority_vote", burn_in=3, extract=count).answer
    assert mv == majority_vote([count(setup["tok"].decode(s, skip_special_tokens=True)) for s in pool])
    wmv = res.final("weighted_majority_vote", burn_in=3, extract=count).answer
    assert wmv == majority_vote([s.count(a) for s in pool], softmax_weights(rewards, 2.0))
    assert base.final("best_of_n").response.count(a) == max(base.rewards)
    assert res.final("mbr", burn_in=3).response in pool
    with pytest.raises(ValueError, match="method"): res.final("median")
    with pytest.raises(ValueError, match="burn_in"): res.final("best_of_n", burn_in=99)
    with pytest.raises(ValueError, match="tokens"): qa.baseline(setup["prompt"], 0)


# ---- the embedded model ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_model_run_resume_and_cli(tmp_path):
    from soft_sampler.core import load_model
    from soft_sampler.qalign import qalign_cli
    model, tok = load_model()
    reward = lambda p, rs: [-len(r) / 8 for r in rs]
    chat = [{"role": "user", "content": "Name a colour."}]
    qa = QAlign(model, reward, beta=0.5, tokenizer=tok)
    full = qa.run(chat, chains=3, steps=3, max_new_tokens=12, seed=1, progress=False)
    path = tmp_path / "ck.jsonl"
    with pytest.raises(Crash):
        QAlign(model, crashing(reward, 2), beta=0.5, tokenizer=tok).run(chat, chains=3, steps=3, max_new_tokens=12,
                                                                        seed=1, checkpoint=path, progress=False)
    resumed = qa.run(chat, chains=3, steps=3, max_new_tokens=12, seed=1, checkpoint=path, progress=False)
    assert resumed.states == full.states and resumed.accepted == full.accepted
    for ch in full.states:
        for s in ch: assert 1 <= len(s) <= 12 and (s[-1] == tok.eos_token_id or len(s) == 12)
    # the engine's proposals match an uncached reference on the real model
    prompt_ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    pre = [full.states[0][0][:2], []]
    got = sample_suffixes(model, prompt_ids, pre, 8, [tok.eos_token_id], torch.tensor([4, 9]), seed=3, attempt=1)
    assert got == [reference_suffix(model, prompt_ids, q, 8, [tok.eos_token_id], r, seed=3, attempt=1) for q, r in zip(pre, (4, 9))]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert qalign_cli(["--reward", "brevity", "--chains", "2", "--steps", "2", "--max-new-tokens", "8", "--no-progress"]) == 0
    assert "acceptance rate" in out.getvalue() and "best_of_n" in out.getvalue()


def test_initial_states_are_the_sampling_loops_samples():
    "Chains start from exactly what `sampling.generate` draws for the same (seed, row): one randomness policy."
    from soft_sampler.sampling import generate
    from soft_sampler.core import tiny_model as _tiny
    model, tok = _tiny(seed=4)
    q = QAlign(model, lambda p, r: [float(len(x)) for x in r], beta=1.0, tokenizer=tok)
    res = q.run("hello", chains=3, steps=1, max_new_tokens=6, seed=7)
    loop = generate(model, ["hello"], tok, max_new_tokens=6, seed=7, n=3)
    assert [res.states[c][0] for c in range(3)] == loop.token_ids


def test_qalign_imports_nothing_from_remote():
    "qalign (lesson 10) is below remote (11): the server flags reach its command through `register_cli_extension`."
    import ast, soft_sampler.qalign as q
    tree = ast.parse(Path(q.__file__).read_text(encoding="utf-8"))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.split(".")[-1] in ("remote", "engines") for m in mods), mods
    import soft_sampler.remote as remote
    assert remote.qalign_cli is q.qalign_cli and any(type(e).__name__ == "ServerFlags" for e in q.CLI_EXTENSIONS)
