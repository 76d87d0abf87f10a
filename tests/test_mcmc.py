"""mcmc (#24): every sampler's output against the exact π on an enumerable model, the wrong variants caught,
the exact tools against QAlign's, one run shape, resume, a remote engine, the CLI."""
import contextlib, io, json, math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_thread
from soft_sampler.core import tiny_model
from soft_sampler.qalign import (KeepTokens, QAlign, enumerate_responses, state_histogram, token_logprobs,
                                 total_variation, transition_matrix, tv_noise_quantile)
from soft_sampler.mcmc import (SMC, CutRule, MetropolisHastings, PowerSampler, SamplerResult, Target, mcmc_cli,
                               mh_log_acceptance, mh_transition_matrix, power_sampler_distribution, proposal_for,
                               qalign_shortcut, sequence_distribution, sequence_logprobs, space_scores,
                               systematic_resample)




@pytest.fixture(scope="module")
def toy():
    "Not the notebook's model (seed 2, not 3); EOS, a, b kept; reward = count of a; max 4 tokens."
    model, tok = tiny_model(hidden_size=16, num_layers=1, seed=2)
    eos, a, b = tok.eos_token_id, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    keep = KeepTokens([eos, a, b])
    reward = lambda prompts, responses: [float(r.count(a)) for r in responses]
    target = Target(model, reward, alpha=2.0, beta=2.0, pipeline=keep)
    prompt, space = tok("Hi!")["input_ids"], enumerate_responses([eos, a, b], [eos], 4)
    return dict(model=model, tok=tok, eos=eos, a=a, b=b, keep=keep, reward=reward, target=target, prompt=prompt,
                space=space, tokens=[eos, a, b], pi=target.exact(prompt, space))


# ---- wrong variants ----------------------------------------------------------------------------------------

class Shortcut(MetropolisHastings):
    "QAlign's acceptance rule at α ≠ 1, τ ≠ 1: proposal and power terms dropped."
    def log_accept(self, lpo, lpn, lco, lcn, lqo, lqn, ro, rn):
        return qalign_shortcut(lpo, lpn, lco, lcn, lqo, lqn, ro, rn, self.target.beta)


class PowerNoQ(PowerSampler):
    def log_accept(self, lpo, lpn, lco, lcn, lqo, lqn, ro, rn):
        return mh_log_acceptance(lpo, lpn, lco, lcn, 0 * lqo, 0 * lqn)


class NoWeights(SMC):
    def log_increment(self, lp_new, lq_new, reward): return 0.0


class NoReset(SMC):
    def reset_weights(self, log_weights, ancestors): return torch.as_tensor(log_weights, dtype=torch.float64)[ancestors]


def no_q(lpo, lpn, lco, lcn, lqo, lqn, ro, rn, beta): return mh_log_acceptance(lpo, lpn, lco, lcn, 0 * lqo, 0 * lqn)


# ---- pieces against independent references -------------------------------------------------------------------

def test_sequence_logprobs_match_the_uncached_reference(toy):
    resp = [[toy["a"], toy["eos"]], [toy["b"], toy["b"], toy["a"], toy["a"]], [toy["eos"]]]
    q = proposal_for(toy["keep"], 0.5)
    got_p, got_q = sequence_logprobs(toy["model"], toy["prompt"], resp, [toy["keep"], q])
    for got, want in ((got_p, token_logprobs(toy["model"], toy["prompt"], resp, toy["keep"])),
                      (got_q, token_logprobs(toy["model"], toy["prompt"], resp, q))):
        for g, w in zip(got, want): assert np.allclose(g, w, atol=1e-5)


def test_exact_kernel_is_qaligns_at_alpha_1_and_stationary_for_every_cut(toy):
    t1 = Target(toy["model"], toy["reward"], alpha=1.0, beta=2.0, pipeline=toy["keep"])
    sc = space_scores(t1, toy["keep"], toy["prompt"], toy["space"])
    K = mh_transition_matrix(toy["space"], sc["logpi"], sc["lq"], sc["rewards"], 2.0)
    assert np.allclose(K, transition_matrix(toy["space"], sc["lp"], sc["rewards"], 2.0), atol=1e-6)
    sc2 = space_scores(toy["target"], proposal_for(toy["keep"], 0.5), toy["prompt"], toy["space"])
    pi = np.exp(sc2["logpi"] - sc2["logpi"].max()); pi /= pi.sum()
    for rule in (CutRule(), CutRule("start"), CutRule("offset", offset=2), CutRule("block")):
        K = mh_transition_matrix(toy["space"], sc2["logpi"], sc2["lq"], sc2["rewards"], 2.0, cut=rule, start=2)
        assert np.allclose(K.sum(1), 1) and (K >= -1e-12).all()
        assert np.abs(pi @ K - pi).max() < 1e-9, rule
    bad = mh_transition_matrix(toy["space"], sc2["logpi"], sc2["lq"], sc2["rewards"], 2.0, log_accept=qalign_shortcut)
    assert np.abs(pi @ bad - pi).max() > 1e-2


def test_temperature_per_token_is_not_the_power_distribution(toy):
    power = Target(toy["model"], alpha=4.0, pipeline=toy["keep"])
    low = proposal_for(toy["keep"], 0.25)
    q = sequence_distribution(token_logprobs(toy["model"], toy["prompt"], toy["space"], low))
    assert abs(q.sum() - 1) < 1e-6 and total_variation(q, power.exact(toy["prompt"], toy["space"])) > 0.2
    # at α = 1 and τ = 1 they coincide: the distribution of the loop is p itself
    p = sequence_distribution(token_logprobs(toy["model"], toy["prompt"], toy["space"], toy["keep"]))
    assert total_variation(p, Target(toy["model"], pipeline=toy["keep"]).exact(toy["prompt"], toy["space"])) < 1e-9


def test_cut_rules_and_systematic_resampling():
    lens, u = torch.full((6000,), 6), torch.rand(6000, generator=torch.Generator().manual_seed(0))
    for rule, allowed in ((CutRule(), range(6)), (CutRule("start"), [0]), (CutRule("offset", offset=2), [4]),
                          (CutRule("block"), [3, 4, 5])):
        c = rule.sample(lens, u, start=3)
        assert set(c.tolist()) == set(allowed)
        assert torch.allclose(rule.log_prob(c, lens, 3), torch.tensor(-math.log(len(allowed)), dtype=torch.float64))
    w = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    counts = torch.stack([torch.bincount(systematic_resample(w, u), minlength=3) for u in np.linspace(0, 0.999, 200)])
    assert torch.allclose(counts.double().mean(0), w * 3, atol=0.02) and ((counts - w * 3).abs() < 1).all()
    with pytest.raises(ValueError, match="cut must be one of"): CutRule("middle")


# ---- each sampler converges to π; its wrong variant does not ----------------------------------------------------

def test_mh_converges_to_pi_and_the_qalign_shortcut_does_not(toy):
    N, T, pi = 1000, 8, toy["pi"]
    sc = space_scores(toy["target"], proposal_for(toy["keep"], 0.5), toy["prompt"], toy["space"])
    p0, args = sequence_distribution(sc["lq"]), (toy["space"], sc["logpi"], sc["lq"], sc["rewards"], 2.0)
    exact_tv = lambda K: total_variation(p0 @ np.linalg.matrix_power(K, T), pi)
    threshold = tv_noise_quantile(pi, N, draws=500) + exact_tv(mh_transition_matrix(*args))
    assert threshold < 0.15 and exact_tv(mh_transition_matrix(*args, log_accept=qalign_shortcut)) > 2 * threshold
    tvs = {}
    with one_thread():
        for cls in (MetropolisHastings, Shortcut):
            r = cls(toy["target"], steps=T, temperature=0.5).run(toy["prompt"], n=N, max_new_tokens=4, seed=7,
                                                                 progress=False)
            tvs[cls.__name__] = total_variation(state_histogram([s[-1] for s in r.states], toy["space"]), pi)
    assert tvs["MetropolisHastings"] < threshold < tvs["Shortcut"], (tvs, threshold)


def test_power_sampler_converges_to_pi_and_without_q_terms_does_not(toy):
    N, K, pi = 1500, 12, toy["pi"]
    good, bad = PowerSampler(toy["target"], blocks=2, steps=K), PowerNoQ(toy["target"], blocks=2, steps=K)
    assert good.temperature == 0.5  # 1/α
    d_good = power_sampler_distribution(good, toy["prompt"], toy["tokens"], 4)[1]
    d_bad = power_sampler_distribution(bad, toy["prompt"], toy["tokens"], 4, no_q)[1]
    threshold = tv_noise_quantile(pi, N, draws=500) + total_variation(d_good, pi)
    assert threshold < 0.12 and total_variation(d_bad, pi) > 1.5 * threshold
    with one_thread():
        runs = {type(s).__name__: s.run(toy["prompt"], n=N, max_new_tokens=4, seed=8, progress=False)
                for s in (good, bad)}
    tvs = {k: total_variation(state_histogram([x[-1] for x in r.states], toy["space"]), pi) for k, r in runs.items()}
    assert tvs["PowerSampler"] < threshold < tvs["PowerNoQ"], (tvs, threshold)


def weighted_histogram(res: SamplerResult, space) -> np.ndarray:
    h, idx = np.zeros(len(space)), {tuple(y): k for k, y in enumerate(space)}
    for row, w in zip(res.states, res.weights(-2)): h[idx[tuple(row[-2])]] += w
    return h


def test_smc_converges_to_pi_and_the_unweighted_or_unreset_variants_do_not(toy):
    N, pi, tvs, ess = 2000, toy["pi"], {}, {}
    with one_thread():
        for cls in (SMC, NoWeights, NoReset):
            r = cls(toy["target"], temperature=0.5, ess_threshold=0.9).run(toy["prompt"], n=N, max_new_tokens=4, seed=9,
                                                                           progress=False)
            tvs[cls.__name__] = total_variation(weighted_histogram(r, toy["space"]), pi)
            ess[cls.__name__] = min(t["ess"] for t in r.trace)
            if cls is SMC: assert any(t["resampled"] for t in r.trace[:-1])  # the reset is exercised before the end
    threshold = 2 * tv_noise_quantile(pi, int(ess["SMC"]), draws=500)
    assert tvs["SMC"] < threshold < min(tvs["NoWeights"], tvs["NoReset"]), (tvs, threshold)


# ---- one run shape, bookkeeping, resume ------------------------------------------------------------------------

def samplers(toy):
    "Each with its own Target (the resume test swaps the reward)."
    t = lambda: Target(toy["model"], toy["reward"], alpha=2.0, beta=2.0, pipeline=toy["keep"])
    return [MetropolisHastings(t(), steps=3, temperature=0.5, cut="offset"),
            PowerSampler(t(), blocks=2, steps=2, cut="block", stop_at_eos=True), SMC(t(), block=2)]


def test_one_run_shape_and_bookkeeping(toy):
    for s in samplers(toy):
        r = s.run(toy["prompt"], n=5, max_new_tokens=4, seed=1, progress=False)
        T = len(s.plan(4))
        assert isinstance(r, SamplerResult) and r.rows == 5 and r.method == s.method
        columns = (r.states[0], r.rewards[0], r.log_weights[0], r.accepted[0], r.step_tokens, r.trace)
        assert all(len(x) == T for x in columns)
        assert all(0 < len(x[-1]) <= 4 for x in r.states) and r.generated_tokens == sum(r.step_tokens)
        assert r.final("majority_vote").response in [x[-1] for x in r.states]
        assert [rw[-1] for rw in r.rewards] == toy["reward"](None, [x[-1] for x in r.states])
    mh = samplers(toy)[0].run(toy["prompt"], n=3, max_new_tokens=4, seed=1, progress=False)
    tokens = sum(len(x[0]) for x in mh.states)
    for row, acc in zip(mh.states, mh.accepted):
        for t in range(1, 4):
            assert row[t] == row[t - 1] or acc[t]
            cut = max(len(row[t - 1]) - 2, 0)  # offset=2: the last 2 tokens are redrawn
            assert row[t][:cut] == row[t - 1][:cut]
    assert mh.step_tokens[0] == tokens


def test_stop_at_eos_freezes_finished_chains(toy):
    s = PowerSampler(toy["target"], blocks=2, steps=3, stop_at_eos=True)
    r = s.run(toy["prompt"], n=40, max_new_tokens=4, seed=3, progress=False)
    for row in r.states:
        if row[3][-1] == toy["eos"]: assert row[3:] == [row[3]] * (len(row) - 3)  # ended in block 1: never moves again


def test_several_prompts_and_prompt_independence(toy):
    s = samplers(toy)[2]
    both = s.run([toy["prompt"], [5, 6]], n=4, max_new_tokens=4, progress=False)
    assert isinstance(both, list) and both[1].prompt_ids == [5, 6]
    assert s.run(toy["prompt"], n=4, max_new_tokens=4, progress=False).states == both[0].states


class Crash(Exception): pass


def crashing(reward, after):
    n = {"calls": 0}
    def fn(p, r):
        n["calls"] += 1
        if n["calls"] > after: raise Crash()
        return reward(p, r)
    return fn


@pytest.mark.parametrize("after", [0, 1, 3])
def test_resume_identical_for_every_sampler(toy, tmp_path, after):
    for k, s in enumerate(samplers(toy)):
        path = tmp_path / f"ck{k}.jsonl"
        full = s.run([toy["prompt"], [5, 6]], n=3, max_new_tokens=4, seed=4, progress=False)
        s.target.reward = crashing(toy["reward"], after)
        with pytest.raises(Crash):
            s.run([toy["prompt"], [5, 6]], n=3, max_new_tokens=4, seed=4, checkpoint=path, progress=False)
        s.target.reward = toy["reward"]
        with open(path, "a") as f: f.write('{"prompt": 0, "t": 99, "sta')  # died mid-write
        resumed = s.run([toy["prompt"], [5, 6]], n=3, max_new_tokens=4, seed=4, checkpoint=path, progress=False)
        for a, b in zip(full, resumed):
            key = lambda r: json.dumps([r.states, r.rewards, r.log_weights, r.accepted, r.step_tokens])  # NaN == NaN
            assert key(a) == key(b)
        with pytest.raises(ValueError, match="other settings"):
            s.run([toy["prompt"], [5, 6]], n=3, max_new_tokens=4, seed=5, checkpoint=path, progress=False)


def test_bad_inputs_name_the_parameter(toy):
    t = toy["target"]
    for f, msg in ((lambda: Target(toy["model"], alpha=-1), "alpha"), (lambda: Target(toy["model"], beta=0), "beta"),
                   (lambda: MetropolisHastings(t, temperature=0), "temperature"),
                   (lambda: MetropolisHastings(t, steps=-1), "steps"),
                   (lambda: SMC(t, ess_threshold=2), "ess_threshold"), (lambda: SMC(t, block=0), "block"),
                   (lambda: PowerSampler(t, blocks=8).run(toy["prompt"], max_new_tokens=4, progress=False), "blocks"),
                   (lambda: SMC(t).run(toy["prompt"], n=0, progress=False), "n must be")):
        with pytest.raises(ValueError, match=msg): f()
    with pytest.raises(TypeError, match="target must be a Target"): SMC(toy["model"])


# ---- a remote engine proposes, the local model scores -------------------------------------------------------------

def test_remote_engine_proposals_give_the_local_chains(toy):
    "The proposal is a Pipeline (what a server can run); the toy server samples from it; the rows are valid states."
    from soft_sampler.remote import RemoteEngine, ToyServer
    from soft_sampler.heuristics import Pipeline
    target = Target(toy["model"], toy["reward"], alpha=2.0, beta=2.0, pipeline=None, stop_token_ids=[toy["eos"]])
    with ToyServer(toy["model"], [toy["eos"]], logits_processor=proposal_for(None, 0.5)) as srv:
        s = MetropolisHastings(target, steps=2, temperature=0.5, engine=RemoteEngine(srv.url))
        assert isinstance(s.proposal, Pipeline)
        r = s.run(toy["prompt"], n=3, max_new_tokens=4, seed=0, progress=False)
    assert r.rows == 3 and all(0 < len(x[-1]) <= 4 for x in r.states) and r.generated_tokens > 0


# ---- CLI ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, msg", [
    (["--alpha", "0"], "--alpha: must be a number in (0, inf]"), (["--method", "gibbs"], "invalid choice"),
    (["--n", "0"], "--n: must be an integer >= 1"), (["--ess-threshold", "1.5"], "--ess-threshold"),
    (["--reward", "number", "--target", "x"], "--target must be a number"),
    (["--blocks", "9", "--max-new-tokens", "4"], "--max-new-tokens 4 must be >= --blocks 9")])
def test_cli_errors_before_the_model_loads(argv, msg, monkeypatch):
    import soft_sampler.core as core
    monkeypatch.setattr(core, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e: mcmc_cli(argv)
    assert e.value.code == 2 and msg in err.getvalue(), err.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mh", "power", "smc"])
def test_cli_on_the_embedded_model(method):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mcmc_cli(["--method", method, "--n", "2", "--blocks", "2", "--steps", "1", "--max-new-tokens", "6",
                         "--reward", "number", "--target", "12", "--no-progress"]) == 0
    assert "majority_vote" in out.getvalue() and "SamplerResult" in out.getvalue()


# ---- heavy: regenerate results/mcmc_arithmetic.json -----------------------------------------------------------------

@pytest.mark.heavy
@pytest.mark.timeout(6 * 3600)  # longer than pyproject's 1200 s; resumable anyway
def test_heavy_mcmc_arithmetic():
    "Resumable: a stopped run continues where it stopped (same settings); delete the file to start afresh."
    from soft_sampler.core import load_model
    from soft_sampler.mcmc import ARITH_RUN, arithmetic_table, mcmc_arithmetic
    torch.set_num_threads(1)
    model, tok = load_model()
    out = Path(__file__).parents[1] / "results" / "mcmc_arithmetic.json"
    obj = mcmc_arithmetic(model, tok, out, **ARITH_RUN)
    tab = arithmetic_table(obj)
    assert set(tab) >= {"greedy", "temperature", "low_temperature", "best_of_4", "majority_vote_16", "qalign", "power",
                        "smc"}


@pytest.mark.heavy
@pytest.mark.timeout(6 * 3600)  # longer than pyproject's 1200 s; resumable anyway
def test_heavy_mcmc_arithmetic_server():
    "The same grid (fewer problems) with a real llama-server on loopback proposing; p is still scored locally."
    from soft_sampler.core import load_model
    from soft_sampler.mcmc import ARITH_SERVER_RUN, arithmetic_table, mcmc_arithmetic
    from soft_sampler.remote import LlamaServer, RemoteEngine, build_llama_server
    torch.set_num_threads(1)
    build_llama_server()
    model, tok = load_model()
    out = Path(__file__).parents[1] / "results" / "mcmc_arithmetic_server.json"
    with LlamaServer(threads=1, parallel=2) as srv:
        obj = mcmc_arithmetic(model, tok, out, engine=RemoteEngine(srv.url, tokenizer=tok), **ARITH_SERVER_RUN)
    assert obj["settings"]["engine"] == "RemoteEngine" and obj["settings"]["complete"]
    assert arithmetic_table(obj)["best_of_4"]["tokens"] > 0


# ---- the measured table's statistics and its resumable grid ----------------------------------------------------------

def test_wilson_and_mcnemar_against_closed_forms_and_scipy():
    from soft_sampler.mcmc import mcnemar_exact, wilson_interval
    assert mcnemar_exact(0, 5) == 2 / 32 and mcnemar_exact(1, 9) == 22 / 1024 and mcnemar_exact(4, 4) == 1.0
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    z = 1.959963984540054
    assert np.allclose(wilson_interval(0, 10), (0, z * z / (10 + z * z)))  # k = 0: [0, z²/(n + z²)]
    assert np.allclose(wilson_interval(10, 10), (10 / (10 + z * z), 1))
    with pytest.raises(ValueError, match="k must be <= n"): wilson_interval(3, 2)
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"): wilson_interval(0, 0)
    stats = pytest.importorskip("scipy.stats")
    for b, c in ((0, 5), (1, 9), (7, 2), (12, 30), (25, 40), (3, 3)):
        assert math.isclose(mcnemar_exact(b, c), stats.binomtest(b, b + c, 0.5).pvalue, rel_tol=1e-12)
    for k, n in ((0, 5), (3, 17), (20, 20), (48, 60)):
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert np.allclose(wilson_interval(k, n), (ci.low, ci.high), atol=1e-12)


def test_significance_is_paired_and_holm_corrected():
    from soft_sampler.mcmc import arithmetic_table, significance, sign_test
    cells = [dict(a=i < 8, b=i < 1, c=i % 2 == 0) for i in range(12)]  # a right on 8, b on 1 (inside a's), c on 6
    obj = dict(settings=dict(seeds=[0, 1]), records=[
        dict(seed=i % 2, id=i // 2, methods={m: dict(correct=v, tokens=1 + (m == "c"), seconds=1.0) for m, v in x.items()})
        for i, x in enumerate(cells)])
    assert sign_test(obj, "a", "b") == (7, 0, 2 / 2**7)
    rows = significance(obj, [("a", "b"), ("c", "b"), ("a", "c")])
    ps = sorted(r["p"] for r in rows)
    holm = sorted(r["p_holm"] for r in rows)
    assert np.isclose(holm[0], 3 * ps[0]) and holm == sorted(holm) and all(h >= p for h, p in zip(holm, ps))
    assert [r["significant"] for r in rows] == [r["p_holm"] < 0.05 for r in rows]
    tab = arithmetic_table(obj)
    assert (tab["a"]["right"], tab["a"]["cells"]) == (8, 12) and tab["c"]["tokens"] == 2.0


def test_arithmetic_grid_resumes_per_cell_and_refuses_other_settings(tmp_path, monkeypatch):
    import soft_sampler.mcmc as mcmc
    model, tok = tiny_model(hidden_size=16, num_layers=1, seed=2)
    kw = dict(problems=[0, 3], seeds=[0], n=2, max_new_tokens=4, steps=1, blocks=2, mh_steps=1, progress=False)
    with one_thread():
        full = mcmc.mcmc_arithmetic(model, tok, **kw)
        real, calls, crash_at = mcmc._arith_cell, [], [9]
        def cell(*a):
            calls.append(a[0])
            if len(calls) == crash_at[0]: crash_at[0] = None; raise Crash()
            return real(*a)
        monkeypatch.setattr(mcmc, "_arith_cell", cell)
        with pytest.raises(Crash): mcmc.mcmc_arithmetic(model, tok, tmp_path / "r.json", **kw)
        stopped = json.loads((tmp_path / "r.json").read_text())
        assert not stopped["settings"]["complete"] and len(stopped["records"]) == 2  # 7 + 1 cells written
        calls.clear()
        resumed = mcmc.mcmc_arithmetic(model, tok, tmp_path / "r.json", **kw)
        assert calls == list(mcmc.ARITH_GROUPS[1:])  # only the cells not yet written run again
        with pytest.raises(ValueError, match="other settings"):
            mcmc.mcmc_arithmetic(model, tok, tmp_path / "r.json", **dict(kw, max_new_tokens=5))
    strip = lambda o: {(r["id"], m): (v["answer"], v["tokens"], v["correct"]) for r in o["records"]
                       for m, v in r["methods"].items()}
    assert strip(resumed) == strip(full) and resumed["settings"]["complete"]
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["complete"]
    # the grid grows by a seed: only the new seed's cells run; the table reads the grid asked for last
    with one_thread():
        calls.clear()
        grown = mcmc.mcmc_arithmetic(model, tok, tmp_path / "r.json", **dict(kw, seeds=[0, 1]))
        assert calls == 2 * list(mcmc.ARITH_GROUPS) and grown["settings"]["complete"]
        calls.clear()
        back = mcmc.mcmc_arithmetic(model, tok, tmp_path / "r.json", **dict(kw, problems=[3]))
    assert calls == [] and len(back["records"]) == 4 and [r["id"] for r in mcmc.arith_grid(back)] == [3]
    assert mcmc.arithmetic_table(back)["greedy"]["cells"] == 1


def test_mh_at_alpha_1_is_qalign_draw_for_draw(toy):
    "Same target (α = 1), same proposal (τ = 1), same keyed streams: the chains are identical, not just equal in law."
    t1 = Target(toy["model"], toy["reward"], alpha=1.0, beta=2.0, pipeline=toy["keep"])
    mh = MetropolisHastings(t1, steps=6).run([toy["prompt"], [5, 6]], n=8, max_new_tokens=4, seed=3, progress=False)
    qa = QAlign(toy["model"], toy["reward"], beta=2.0).run([toy["prompt"], [5, 6]], chains=8, steps=6, max_new_tokens=4,
                                                          pipeline=toy["keep"], seed=3, progress=False)
    for a, b in zip(mh, qa):
        assert a.states == b.states and [x[1:] for x in a.accepted] == b.accepted
