"Sampler RL: exact log-probs against a cache-free replay, gradients only into the sampler, exact resume, equivariance with the new inputs, errors."
import copy, json, math
from pathlib import Path
import pytest, torch
from soft_sampler.core import tiny_model
from soft_sampler.networks import (ContextAwareTransform, HiddenStateHead, LayerReadout, SamplerInputs,
                                   SimpleDistributionAwareTransform, load_network, step_stats)
from soft_sampler.sampler_rl import (SamplerRLConfig, arithmetic_reward, arithmetic_tasks, exact_kl, policy_logprobs,
                                     rl_step, sampler_rollout, train_rl_cli, train_sampler_rl)
from soft_sampler.train import latest_checkpoint

PROMPTS = ["ab", "hello", "xyz"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(net, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters(): p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def _nets(hidden_size=32):
    return {"simple": _perturbed(SimpleDistributionAwareTransform()),
            "context+layers": _perturbed(ContextAwareTransform(state_size=4, layers=[0, 1])),
            "hidden": _perturbed(HiddenStateHead(hidden_size=hidden_size), 0.3)}


def brightness(prompts, responses):
    "A reward on ids that varies on a random model's output."
    return [sum(r) / (10 * max(1, len(r))) for r in responses]


@torch.no_grad()
def _independent_logprobs(model, net, r):
    "Each row teacher-forced in one forward without cache; readouts, hidden state and context recomputed by hand."
    out = torch.zeros_like(r.logprobs)
    for i in range(len(r.tokens)):
        n = int(r.step_mask[i].sum())
        seq = torch.tensor([r.prompt_ids[i] + r.tokens[i, :n].tolist()])
        o = model(seq, output_hidden_states=True)
        P = len(r.prompt_ids[i])
        logits = o.logits[0, P - 1:P - 1 + n].float()
        hs = [h[0, P - 1:P - 1 + n] for h in o.hidden_states]
        layers = getattr(net.config, "layers", [])
        ch = torch.stack([model.lm_head(model.model.norm(hs[l])).log_softmax(-1) for l in layers], 1) if layers else None
        state = net.init_state(1) if isinstance(net, ContextAwareTransform) else None
        for t in range(n):
            inp = SamplerInputs(hs[-1][t:t + 1].float(), None if ch is None else ch[t:t + 1], state)
            y = net(logits[t:t + 1], inp) if getattr(net, "reads_inputs", False) else net(logits[t:t + 1])
            out[i, t] = y.double().log_softmax(-1)[0, r.tokens[i, t]]
            if state is not None: state = net.update_state(state, step_stats(logits[t:t + 1], r.tokens[i, t:t + 1]))
    return out


@pytest.mark.parametrize("kind", ["simple", "context+layers", "hidden"])
def test_logprobs_exact(tiny, kind):
    model, tok = tiny
    net = _nets()[kind]
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    r = sampler_rollout(model, net, ids, group=2, max_new_tokens=7, seed=3, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                        readout=LayerReadout(model, [0, 1]) if kind == "context+layers" else None)
    want = _independent_logprobs(model, net, r)
    torch.testing.assert_close(r.logprobs, want, atol=2e-5, rtol=0)
    assert float(r.logprobs[r.step_mask].std()) > 1e-3  # not a degenerate (deterministic) policy
    with torch.no_grad(): torch.testing.assert_close(policy_logprobs(net, r), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind", ["simple", "context+layers", "hidden"])
def test_gradients_only_into_the_sampler(tiny, kind):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    net = _nets()[kind]
    net_before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cfg = SamplerRLConfig(steps=1, group_size=3, prompts_per_step=2, max_new_tokens=5, lr=0.05)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    readout = LayerReadout(model, [0, 1]) if kind == "context+layers" else None
    log = rl_step(net, model, ids, brightness, cfg, opt, 0, readout, None, [tok.eos_token_id], tok.pad_token_id)
    assert log["reward_std"] > 0 and math.isfinite(log["loss"])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert any(not torch.equal(net_before[n], p) for n, p in net.named_parameters())


def test_exact_kl_matches_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    p, q = a.softmax(-1).double(), b.softmax(-1).double()
    torch.testing.assert_close(exact_kl(a, b), (p * (p.log() - q.log())).sum(-1))
    a[:, :10] = -math.inf  # removed tokens contribute nothing
    p = a.softmax(-1).double()
    torch.testing.assert_close(exact_kl(a, b), (p[:, 10:] * (p[:, 10:].log() - q[:, 10:].log())).sum(-1))


@pytest.mark.parametrize("kind", ["simple", "context+layers", "hidden"])
def test_resume_equals_an_uninterrupted_run(tiny, tmp_path, kind):
    model, tok = tiny
    cfg = SamplerRLConfig(steps=4, group_size=3, prompts_per_step=2, max_new_tokens=5, checkpoint_every=2, lr=0.05)
    ref = _perturbed(SimpleDistributionAwareTransform(), 0.02, seed=5)  # a network as KL reference
    run = lambda **kw: train_sampler_rl(_nets()[kind], model, tok, PROMPTS, brightness, cfg, ref=ref, progress=False, **kw)
    full = run()
    first = run(checkpoint_dir=tmp_path, stop_at=2)
    assert len(first.history) == 2 and latest_checkpoint(tmp_path).name == "step-00000002"
    resumed = run(checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 2 and [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for (n, a), b in zip(full.net.state_dict().items(), resumed.net.state_dict().values()): assert torch.equal(a, b), n
    assert {p.suffix for p in (tmp_path/"step-00000004").iterdir()} == {".safetensors", ".json"}  # no pickle
    with pytest.raises(ValueError, match="config differs"):
        train_sampler_rl(_nets()[kind], model, tok, PROMPTS, brightness, SamplerRLConfig(steps=5, group_size=3, prompts_per_step=2,
                         max_new_tokens=5, checkpoint_every=2, lr=0.01), checkpoint_dir=tmp_path, progress=False)


def test_equivariance_with_context_channels_and_hidden_state():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 300, generator=g) * 3
    x[0, :20] = -math.inf
    perm = torch.randperm(300, generator=g)
    net = _perturbed(ContextAwareTransform(state_size=4, layers=[0, 1]), 0.2)
    ch = torch.randn(4, 2, 300, generator=g).log_softmax(-1)
    state = net.update_state(net.init_state(4), step_stats(x, x.argmax(-1)))
    with torch.no_grad():
        y = net(x, SamplerInputs(channels=ch, context=state))
        torch.testing.assert_close(net(x[:, perm], SamplerInputs(channels=ch[..., perm], context=state)), y[:, perm], atol=1e-4, rtol=0)
        assert not torch.allclose(net(x, SamplerInputs(channels=ch[..., perm], context=state)), y, atol=1e-3)  # channels matter
    hs = _perturbed(HiddenStateHead(hidden_size=8), 0.3)
    hid = torch.randn(4, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(hs(x[:, perm], SamplerInputs(hidden=hid)), hs(x, SamplerInputs(hidden=hid))[:, perm], atol=1e-4, rtol=0)


def test_new_networks_round_trip(tmp_path):
    for net in _nets().values():
        back = load_network(net.save(tmp_path/"n.safetensors"))
        assert type(back) is type(net) and back.config == net.config
        for a, b in zip(net.state_dict().values(), back.state_dict().values()): assert torch.equal(a, b)


def test_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="group_size"): SamplerRLConfig(group_size=1)
    with pytest.raises(ValueError, match="advantage"): SamplerRLConfig(advantage="ppo")
    with pytest.raises(ValueError, match="`layers`"): LayerReadout(model, [5])
    with pytest.raises(ValueError, match="`layers`"): ContextAwareTransform(layers=["a"])
    with pytest.raises(ValueError, match="inputs.hidden"): HiddenStateHead(hidden_size=8)(torch.randn(2, 10))
    with pytest.raises(ValueError, match="channel"): ContextAwareTransform(layers=[0])(torch.randn(2, 10))
    with pytest.raises(TypeError, match="LogitsNetwork"): train_sampler_rl(torch.nn.Linear(2, 2), model, tok, PROMPTS, brightness)
    with pytest.raises(ValueError, match="split"): arithmetic_tasks("test")
    with pytest.raises(SystemExit): train_rl_cli(["--lr", "-1"])  # refused before the model loads


def test_arithmetic_reward_reads_the_answer_from_the_prompt(tiny):
    tok = tiny[1]
    tasks = arithmetic_tasks("heldout", 2)
    reward = arithmetic_reward(tok, tasks)
    ids = [tok.apply_chat_template(t["chat"], add_generation_prompt=True) for t in tasks]
    ids = [i["input_ids"] if isinstance(i, dict) or hasattr(i, "keys") else i for i in ids]
    resp = [tok(f"it is {tasks[0]['answer']}", add_special_tokens=False)["input_ids"], tok("7777", add_special_tokens=False)["input_ids"]]
    assert reward(ids, resp).tolist() == [1.0, 0.0]


@pytest.mark.heavy
@pytest.mark.timeout(3 * 3600)  # about an hour on two loaded cores; resumable if interrupted
def test_sampler_rl_experiment():
    "Regenerates results/sampler_rl.json (about an hour single-threaded under load; rerun to resume)."
    from soft_sampler.sampler_rl import sampler_rl_experiment
    out = Path(__file__).parents[1]/"results"/"sampler_rl.json"
    res = sampler_rl_experiment(out)
    assert json.loads(out.read_text())["eval"].keys() == res["eval"].keys()


def test_replayed_mirostat_is_mirostat_v2():
    "The synthetic trajectories' μ and kept sets are those of the stateful `Mirostat` processor fed the same rows and tokens."
    from soft_sampler.heuristics_ext import Mirostat
    from soft_sampler.sampler_rl import replayed_mirostat
    r, target, mu = replayed_mirostat(6, steps=10, vocab=64, tau=2.0, eta=1.0, seed=3)
    m = Mirostat(tau=2.0, eta=1.0)
    for t in range(10):
        out = m(torch.zeros(6, 1 + t, dtype=torch.long), r.raw_logits[:, t])
        assert torch.allclose(m.mu, mu[:, t]) and torch.equal(out.isfinite(), target[:, t].isfinite())
        m.update(r.tokens[:, t])
    assert float(mu.std()) > 0.5 and bool((~target.isfinite()).any())  # μ moves and mirostat truncates
    with pytest.raises(ValueError, match="`mu`"): replayed_mirostat(2, mu=0.0)


def test_context_state_imitates_mirostat_where_stateless_cannot():
    "Held out: the GRU summary halves the best stateless KL to mirostat v2 when μ moves, and adds nothing needed when it is constant."
    from soft_sampler.sampler_rl import imitate_trajectories, replayed_mirostat, trajectory_fidelity

    def fit(net, mu=None):
        tr, tr_t, _ = replayed_mirostat(48, seed=0, mu=mu)
        te, te_t, _ = replayed_mirostat(48, seed=1, mu=mu)
        imitate_trajectories(net, tr, tr_t, steps=150, batch=8)
        return trajectory_fidelity(net, te, te_t)

    stateless = [fit(SimpleDistributionAwareTransform()), fit(ContextAwareTransform(state_size=0))]
    with_state = fit(ContextAwareTransform(state_size=8))
    best = min(f["kl"] for f in stateless)
    assert with_state["kl"] < 0.6 * best, (with_state, stateless)
    assert with_state["jaccard"] > max(f["jaccard"] for f in stateless) + 0.03, (with_state, stateless)
    control = fit(ContextAwareTransform(state_size=0), mu=6.0)  # μ constant: a function of the row suffices
    assert control["kl"] < 0.5 * best, (control, stateless)
