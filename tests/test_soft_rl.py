"RL with soft rollouts: densities checked independently, rollouts, advantages, loss, update direction, resume, errors."
import copy, json, math
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
from transformers import LogitsProcessorList, TemperatureLogitsWarper
from soft_sampler.core import tiny_model
from soft_sampler.rewards import LengthReward, TextReward
from soft_sampler.sampling import keyed_generator
from soft_sampler.soft import GUMBEL_STREAM, NOISE_STREAM, soft_generate
from soft_sampler.soft_rl import (POLICIES, SoftRLConfig, SoftRLTrainer, clipped_surrogate, concrete_logprob,
                                  gaussian_logprob, group_advantages, policy_kl, policy_logprobs, replay_logits,
                                  soft_rollout)

PROMPTS = ["Hello", "Say something"]


@pytest.fixture(autouse=True)
def one_thread():
    "Tiny matrices: one thread is fastest, and the CPU is shared (restored after each test)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def brightness(prompts, completions, **kw):
    "A TRL-style text reward that varies a lot on a random model's output."
    return [sum(map(ord, c)) / (100 * max(1, len(c))) for c in completions]


def _means_without_cache(model, r, t):
    "Step t's logits, recomputed from scratch (no KV cache, no replay helper) on the prompt + inputs fed so far."
    E = model.get_input_embeddings().weight
    fed = {"gaussian": lambda: r.noisy[:, :t], "gumbel": lambda: r.logw[:, :t].exp() @ E, "hard": lambda: E[r.tokens[:, :t]]}[r.policy]()
    fed = torch.where(r.step_mask[:, 1:t + 1, None], fed, E[r.pad_id])  # a row that has ended is fed padding
    seq = torch.cat([E[r.prompt_ids], fed], 1)
    mask = torch.cat([r.prompt_mask, torch.ones(len(seq), t, dtype=torch.long)], 1)
    return model(inputs_embeds=seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1] / r.temperature


# ---------------------------------------------------------------- densities, independently

def test_gaussian_rollout_density_from_regenerated_noise(tiny):
    model, tok = tiny
    sigma, seed = 0.07, 11
    r = soft_rollout(model, PROMPTS, tok, "gaussian", n=2, max_new_tokens=6, noise_std=sigma, temperature=0.8, seed=seed)
    E = model.get_input_embeddings().weight
    with torch.no_grad():
        for t in range(r.tokens.shape[1]):
            logits = _means_without_cache(model, r, t)
            mean = logits.softmax(-1) @ E
            eps = torch.stack([sigma * torch.randn(E.shape[1], generator=keyed_generator(seed, row, t, 0, NOISE_STREAM)) for row in range(4)])
            torch.testing.assert_close(r.noisy[:, t], mean + eps, atol=1e-5, rtol=1e-5)
            want = torch.distributions.MultivariateNormal(mean.double(), sigma ** 2 * torch.eye(E.shape[1], dtype=torch.float64)).log_prob(r.noisy[:, t].double())
            torch.testing.assert_close(r.logprobs[:, t], want.masked_fill(~r.step_mask[:, t], 0), atol=2e-3, rtol=1e-6)
            assert torch.equal(r.tokens[:, t], logits.argmax(-1))  # the readable trace is argmax p_t
        torch.testing.assert_close(policy_logprobs(model, r), r.logprobs, atol=2e-3, rtol=1e-6)


def test_gumbel_rollout_density_is_the_concrete_density(tiny):
    model, tok = tiny
    tau, seed = 0.6, 5
    r = soft_rollout(model, PROMPTS, tok, "gumbel", n=2, max_new_tokens=6, tau=tau, seed=seed)
    with torch.no_grad():
        for t in range(r.tokens.shape[1]):
            logits = _means_without_cache(model, r, t).double()
            u = torch.stack([torch.rand(logits.shape[-1], generator=keyed_generator(seed, row, t, 0, GUMBEL_STREAM), dtype=torch.float64) for row in range(4)])
            g = -torch.log(-torch.log(u))
            w = ((logits.log_softmax(-1) + g) / tau).softmax(-1)
            alive = r.step_mask[:, t]
            torch.testing.assert_close(r.logw[alive, t].double().exp(), w[alive], atol=1e-5, rtol=1e-4)
            want = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(r.logw[:, t].double().exp())
            torch.testing.assert_close(r.logprobs[:, t], want.masked_fill(~alive, 0), atol=1e-4, rtol=1e-6)
        torch.testing.assert_close(policy_logprobs(model, r), r.logprobs, atol=1e-3, rtol=1e-6)


def test_hard_rollout_density_is_the_token_probability(tiny):
    model, tok = tiny
    r = soft_rollout(model, PROMPTS, tok, "hard", n=2, max_new_tokens=6, temperature=0.9, seed=2)
    with torch.no_grad():
        for t in range(r.tokens.shape[1]):
            want = torch.distributions.Categorical(logits=_means_without_cache(model, r, t).double()).log_prob(r.tokens[:, t])
            torch.testing.assert_close(r.logprobs[:, t], want.masked_fill(~r.step_mask[:, t], 0), atol=1e-5, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.floats(0.1, 3.0), st.integers(0, 10_000))
def test_concrete_logprob_matches_torch(n, tau, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(3, n, generator=g, dtype=torch.float64)
    dist = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits)
    w = dist.sample().clamp_min(1e-300)
    w = w / w.sum(-1, keepdim=True)
    torch.testing.assert_close(concrete_logprob(logits + 7.0, w.log(), tau), dist.log_prob(w), atol=1e-6, rtol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 16), st.floats(0.01, 5.0), st.integers(0, 10_000))
def test_gaussian_logprob_matches_torch(d, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    mean, x = torch.randn(4, d, generator=g), torch.randn(4, d, generator=g)
    want = torch.distributions.Normal(mean.double(), sigma).log_prob(x.double()).sum(-1)
    torch.testing.assert_close(gaussian_logprob(mean, x, sigma), want)


# ---------------------------------------------------------------- rollouts

@pytest.mark.parametrize("policy,mode", [("gaussian", "soft"), ("gumbel", "gumbel"), ("hard", "hard")])
def test_rollout_trace_is_soft_generate_trace(tiny, policy, mode):
    model, tok = tiny
    r = soft_rollout(model, PROMPTS, tok, policy, n=3, max_new_tokens=9, temperature=0.7, noise_std=0.05, seed=4)
    s = soft_generate(model, [tok(p)["input_ids"] for p in PROMPTS], tok, max_new_tokens=9, mode=mode, n=3, seed=4,
                      pipeline=LogitsProcessorList([TemperatureLogitsWarper(0.7)]), noise_std=0.05 if mode == "soft" else 0.0)
    assert torch.equal(r.tokens, s.sequences) and torch.equal(r.lengths, s.lengths)


def test_rollout_stops_and_masks(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    r = soft_rollout(model, ["Hi"], tok, "hard", n=16, max_new_tokens=40, temperature=3.0, seed=1, stop_token_ids=[eos, tok.convert_tokens_to_ids("e")])
    for row, l, m, lp in zip(r.tokens, r.lengths, r.step_mask, r.logprobs):
        assert m[:l].all() and not m[l:].any() and (lp[l:] == 0).all()
    resp = r.responses()
    assert all(eos not in x and tok.convert_tokens_to_ids("e") not in x for x in resp)
    assert any(l < 40 for l in r.lengths.tolist())  # some rows did stop


def test_replay_logits_match_loop_logprobs_for_left_padded_prompts(tiny):
    model, tok = tiny
    for policy in POLICIES:
        r = soft_rollout(model, ["a", "a much longer prompt"], tok, policy, n=2, max_new_tokens=7, noise_std=0.1, seed=3)
        assert (r.prompt_mask == 0).any()
        with torch.no_grad(): torch.testing.assert_close(policy_logprobs(model, r), r.logprobs, atol=1e-3, rtol=1e-6)


# ---------------------------------------------------------------- advantages, loss, KL

@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=6, max_size=6), st.sampled_from([2, 3, 6]))
def test_group_advantages_closed_forms(raw, group):
    r = torch.tensor(raw, dtype=torch.float64)
    grpo, rloo = group_advantages(r, group), group_advantages(r, group, "rloo")
    for i in range(len(raw)):
        lo = (i // group) * group
        others = [raw[j] for j in range(lo, lo + group) if j != i]
        assert math.isclose(float(rloo[i]), raw[i] - sum(others) / len(others), abs_tol=1e-9)
    g = r.view(-1, group)
    torch.testing.assert_close(grpo.view(-1, group), (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4))


def test_clipped_surrogate_stops_gradient_outside_the_trust_region():
    lp = torch.tensor([[0.5, 0.0]], dtype=torch.float64, requires_grad=True)  # ratios e^0.5 (clipped) and 1
    loss, frac = clipped_surrogate(lp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), 0.2)
    loss.backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] == -0.5 and float(frac) == 0.5
    torch.testing.assert_close(loss, torch.tensor(-(1.2 + 1.0) / 2, dtype=torch.float64))


def test_policy_kl_closed_forms(tiny):
    model, tok = tiny
    other = tiny_model(seed=1)[0]
    E, E2 = model.get_input_embeddings().weight, other.get_input_embeddings().weight
    for policy in ("gaussian", "hard"):
        r = soft_rollout(model, PROMPTS, tok, policy, n=2, max_new_tokens=5, noise_std=0.2, seed=0)
        with torch.no_grad():
            a, b = replay_logits(model, r), replay_logits(other, r)
            kl = policy_kl(r, a, b, E, E2)
        if policy == "gaussian":
            want = torch.distributions.kl_divergence(torch.distributions.Normal((a.softmax(-1) @ E).double(), 0.2),
                                                     torch.distributions.Normal((b.softmax(-1) @ E2).double(), 0.2)).sum(-1)
        else:
            want = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=a.double()), torch.distributions.Categorical(logits=b.double()))
        torch.testing.assert_close(kl, want.masked_fill(~r.step_mask, 0), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the trainer

@pytest.mark.parametrize("policy", POLICIES)
def test_one_update_moves_the_policy_towards_the_advantage(policy):
    model, tok = tiny_model(seed=0)
    lr = {"gaussian": 1e-3, "gumbel": 1e-6, "hard": 1e-2}[policy]
    t = SoftRLTrainer(model, tok, TextReward(brightness, tok), ["Hello"], SoftRLConfig(policy, group_size=6, prompts_per_step=1,
                      max_new_tokens=6, noise_std=0.05, lr=lr, optimizer="sgd", max_grad_norm=None, seed=7))
    b = t.collect()
    assert b.advantages.abs().max() > 0.5
    before = b.rollout.logprobs.sum(-1)
    loss, _ = t.loss(b); t.optimizer.zero_grad(); loss.backward(); t.optimizer.step()
    with torch.no_grad(): change = policy_logprobs(model, b.rollout).sum(-1) - before
    assert change[b.advantages.argmax()] > 0 > change[b.advantages.argmin()]
    assert (b.advantages * change).sum() > 0


def test_training_raises_a_reward_on_the_tiny_model():
    "Hard GRPO on a length target: the tiny model learns to stop early (a real learning signal, few seconds)."
    model, tok = tiny_model(seed=0)
    eos = tok.eos_token_id
    t = SoftRLTrainer(model, tok, LengthReward(0, 3), ["Hi"], SoftRLConfig("hard", group_size=8, prompts_per_step=1,
                      max_new_tokens=6, temperature=1.0, lr=3e-2, seed=0))
    hist = t.train(25, progress=False)
    first, last = sum(h["reward"] for h in hist[:5]) / 5, sum(h["reward"] for h in hist[-5:]) / 5
    assert last > first + 0.2, (first, last)


def _trainer(policy="gumbel", **kw):
    m, tk = tiny_model(seed=0)
    cfg = dict(group_size=2, prompts_per_step=2, max_new_tokens=5, lr=1e-3, grad_accum_steps=2, ppo_epochs=2,
               trainable=["model.layers.1", "model.norm"], kl_coef=0.05, noise_std=0.05)
    cfg.update(kw)
    return SoftRLTrainer(m, tk, TextReward(brightness, tk), PROMPTS, SoftRLConfig(policy, **cfg))


@pytest.mark.parametrize("policy", ["gaussian", "gumbel"])
def test_resume_is_the_uninterrupted_run(tmp_path, policy):
    straight = _trainer(policy); straight.train(3, progress=False)
    first = _trainer(policy); first.train(2, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # no temporary folders left
    resumed = _trainer(policy).load_checkpoint(tmp_path/"checkpoint-1")
    resumed.train(2, progress=False)
    assert resumed.history == straight.history
    assert all(torch.equal(resumed.params[n], p) for n, p in straight.params.items())


def test_checkpoint_overwrite_and_mismatch(tmp_path):
    t = _trainer(); t.train(1, progress=False)
    t.save_checkpoint(tmp_path/"ck"); t.train(1, progress=False); t.save_checkpoint(tmp_path/"ck")
    assert json.loads((tmp_path/"ck"/"trainer.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    with pytest.raises(ValueError, match="config differs"): _trainer(lr=2e-3).load_checkpoint(tmp_path/"ck")
    with pytest.raises(FileNotFoundError, match="trainer.json"): _trainer().load_checkpoint(tmp_path)


@pytest.mark.parametrize("kw,match", [
    (dict(policy="soft"), "`policy` must be one of"), (dict(group_size=1), "`group_size`"),
    (dict(temperature=0), "`temperature`"), (dict(noise_std=-1), "`noise_std`"), (dict(advantage="ppo"), "`advantage`"),
    (dict(optimizer="adam"), "`optimizer`"), (dict(kl_coef=-0.1), "`kl_coef`"), (dict(max_grad_norm=0), "`max_grad_norm`"),
    (dict(grad_accum_steps=0), "`grad_accum_steps`"), (dict(ppo_epochs=1.5), "`ppo_epochs`"), (dict(clip_eps=0), "`clip_eps`"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match): SoftRLConfig(**kw)


def test_bad_inputs(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="`noise_std` must be > 0"): soft_rollout(model, "Hi", tok, "gaussian", noise_std=0.0)
    with pytest.raises(ValueError, match="`policy`"): soft_rollout(model, "Hi", tok, "mixture")
    with pytest.raises(ValueError, match="`max_new_tokens`"): soft_rollout(model, "Hi", tok, "hard", max_new_tokens=0)
    m = copy.deepcopy(model)
    with pytest.raises(TypeError, match="`reward`"): SoftRLTrainer(m, tok, "vader", ["Hi"])
    with pytest.raises(TypeError, match="`config`"): SoftRLTrainer(m, tok, LengthReward(), ["Hi"], dict(lr=1))
    with pytest.raises(ValueError, match="`trainable`"): SoftRLTrainer(m, tok, LengthReward(), ["Hi"], SoftRLConfig(trainable="nope"))
    with pytest.raises(ValueError, match="`steps`"): SoftRLTrainer(m, tok, LengthReward(), ["Hi"]).train(-1)
    with pytest.raises(ValueError, match="`group`"): group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="finite"): group_advantages(torch.tensor([1.0, float("nan")]), 2)


# ---------------------------------------------------------------- the embedded model

@pytest.mark.slow
def test_real_model_soft_rollout_and_one_step(real):
    model, tok = copy.deepcopy(real[0]), real[1]
    from soft_sampler.rewards import VaderSentiment
    prompts = [[{"role": "user", "content": "Describe your day in one sentence."}]]
    for policy in ("gaussian", "gumbel"):
        r = soft_rollout(model, prompts, tok, policy, n=2, max_new_tokens=6, temperature=0.3, noise_std=0.07, seed=0)
        with torch.no_grad(): lp = policy_logprobs(model, r)
        assert (lp - r.logprobs).abs().max() < 0.5  # float32 replay vs KV-cached loop on 576-d / 49k-dim densities
    t = SoftRLTrainer(model, tok, VaderSentiment(tok), prompts, SoftRLConfig("gaussian", group_size=2, prompts_per_step=1,
                      max_new_tokens=6, temperature=0.3, noise_std=0.07, lr=1e-4, trainable=["model.layers.29"]))
    before = {n: p.detach().clone() for n, p in t.params.items()}
    log = t.step()
    assert math.isfinite(log["loss"]) and -1 <= log["reward"] <= 1
    assert log["reward_std"] == 0 or any(not torch.equal(before[n], p) for n, p in t.params.items())


@pytest.mark.heavy
def test_vader_demo():
    "Regenerates results/soft_rl_vader.json (four 2-3 min single-threaded runs on a quiet CPU)."
    from soft_sampler.soft_rl import DEMO_RUNS, vader_demo
    out = Path(__file__).parents[1]/"results"/"soft_rl_vader.json"
    res = vader_demo(out)
    assert set(res["runs"]) == set(DEMO_RUNS) and json.loads(out.read_text())["runs"].keys() == res["runs"].keys()


def test_trainer_rloo_advantages_and_reward_protocol(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    t = SoftRLTrainer(model, tok, TextReward(brightness, tok), PROMPTS, SoftRLConfig("gaussian", group_size=3, prompts_per_step=2,
                      max_new_tokens=4, noise_std=0.3, advantage="rloo"))
    b = t.collect()
    texts = [tok.decode(x, skip_special_tokens=True) for x in b.rollout.responses()]
    want = torch.tensor(brightness(None, texts), dtype=torch.float32)
    torch.testing.assert_close(b.rewards, want)  # the TRL-style function saw the decoded traces
    r = want.double().view(2, 3)
    torch.testing.assert_close(b.advantages, (r - (r.sum(1, keepdim=True) - r) / 2).flatten())
    log = t.step()
    assert set(log) >= {"reward", "kl", "entropy", "loss", "clip_frac", "grad_norm", "length", "sample"} and math.isnan(log["kl"])
