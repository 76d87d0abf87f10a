"Sampler networks: contract (equivariance, identity, -inf, dtypes), exactness vs transformers' warpers, save/load, generate."
import json, math
import pytest, torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
                          MinPLogitsWarper, TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper)
from soft_sampler.core import tiny_model
from soft_sampler.loss import TruncatedLogitsLoss
from soft_sampler.networks import (LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork,
                                   LocalConfig, DistributionAwareConfig, SamplingNetworkConfig, NetworkProcessor,
                                   STATS, load_network, row_stats, read_logits, _ranked_mass)

INF = math.inf
FACTORIES = {
    "local": LocalProbabilityTransform,
    "aware": SimpleDistributionAwareTransform,
    "sampling": SamplingNetwork,
    "sampling_typical": lambda: SamplingNetwork(typical=True),
}


def perturbed(net, scale=0.05, seed=0):
    "The network with every weight moved off its initial value (so no branch is trivially zero)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters(): p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def logits(b=3, v=300, scale=3.0, seed=0, removed=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * scale
    if removed: x = x.masked_fill(torch.rand(b, v, generator=g) < removed, -INF)
    x[:, 0] = x[:, 0].clamp_min(-1e3)  # at least one kept token per row
    return x


# ---------------------------------------------------------------- contract

@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("v", [1, 2, 7, 1000])
def test_identity_at_init(name, v):
    net = FACTORIES[name]()
    x = logits(4, v, removed=0.3 if v > 2 else 0.0, seed=v)
    y = net(x)
    lp = x.log_softmax(-1)
    assert torch.equal(torch.isfinite(y), torch.isfinite(x))
    if name in ("local", "aware"):
        assert torch.equal(y, lp), "Local/DistributionAware must return the input log-softmax bitwise at init"
    kl = torch.where(torch.isfinite(x), x.softmax(-1) * (lp - y.log_softmax(-1)), 0).sum(-1)
    assert kl.abs().max() < 1e-6


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(list(FACTORIES)), st.integers(1, 40), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_permutation_equivariance(name, v, seed, ties, with_inf):
    net = perturbed(FACTORIES[name](), 0.1, seed % 7)
    x = logits(3, v, seed=seed, removed=0.3 if with_inf else 0.0)
    if ties: x = torch.where(torch.isfinite(x), x.round(), x)  # many exact ties
    perm = torch.randperm(v, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(net(x[:, perm]), net(x)[:, perm], atol=1e-4, rtol=1e-5)


def test_tied_tokens_get_identical_outputs():
    x = torch.tensor([[2.0, 1.0, 2.0, 0.5, 1.0, 2.0, -INF]])
    for name, make in FACTORIES.items():
        with torch.no_grad(): y = perturbed(make(), 0.1)(x)
        # equal up to float rounding (vectorised kernels may round the tail of a row differently)
        torch.testing.assert_close(y[0, [2, 5, 4]], y[0, [0, 0, 1]], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("name", FACTORIES)
def test_minus_inf_stays_and_nothing_is_nan(name):
    net = perturbed(FACTORIES[name](), 0.05)
    x = logits(4, 200, removed=0.5)
    x[3] = -INF  # a row with nothing kept
    x.requires_grad_()
    y = net(x)
    assert torch.equal(y == -INF, x == -INF) and not torch.isnan(y).any()
    target = MinPLogitsWarper(0.1)(None, x.detach()[:3])
    TruncatedLogitsLoss()(y[:3], target).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", FACTORIES)
def test_gradient_reaches_every_parameter(name):
    net = perturbed(FACTORIES[name](), 0.02)
    x = logits(4, 2000, scale=2.5, seed=3)
    TruncatedLogitsLoss()(net(x), MinPLogitsWarper(0.05)(None, x)).loss.backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_rows_independent_input_untouched(name, dtype):
    net = perturbed(FACTORIES[name](), 0.05)
    x = logits(3, 100, removed=0.2).to(dtype)
    x0 = x.clone()
    with torch.no_grad():
        y = net(x)
        assert y.dtype == dtype and y.shape == x.shape and torch.equal(x, x0)
        one = net(x[1:2])
    torch.testing.assert_close(one.float(), y[1:2].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", FACTORIES)
def test_bad_inputs(name):
    net = FACTORIES[name]()
    with pytest.raises(ValueError, match=r"`logits` must have shape \[batch, vocab\]"): net(torch.zeros(5))
    with pytest.raises(ValueError, match=r"`logits` must have shape \[batch, vocab\]"): net(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="`logits` must be floating point"): net(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="`logits` must be a torch.Tensor"): net([[0.0, 1.0]])


# ---------------------------------------------------------------- features

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=12), st.booleans())
def test_ranked_mass_matches_brute_force(vals, descending):
    key = torch.tensor([vals], dtype=torch.float32)
    p = torch.rand(1, len(vals), generator=torch.Generator().manual_seed(len(vals)))
    rank, above = _ranked_mass(key, p, descending)
    before = (key[0][None, :] > key[0][:, None]) if descending else (key[0][None, :] < key[0][:, None])  # [i, j]: j before i
    torch.testing.assert_close(rank[0], before.sum(1).float())
    torch.testing.assert_close(above[0], (before * p[0][None, :]).sum(1))


def test_row_stats_against_direct_formulas():
    x = logits(3, 50, removed=0.3).double()
    logp, u, kept = read_logits(x)
    s = row_stats(logp, u, kept)
    p = x.softmax(-1)
    lp = torch.where(kept, x.log_softmax(-1), 0)
    h = -(p * lp).sum(-1)
    n = kept.sum(-1).double()
    expected = torch.stack([x.log_softmax(-1).amax(-1), h, ((p * lp**2).sum(-1) - h**2 + 1e-6).sqrt(), n.log(), h / n.log()], -1)
    torch.testing.assert_close(s.double(), expected, atol=1e-4, rtol=1e-4)
    assert STATS[0] == "max_log_prob"


# ---------------------------------------------------------------- what the networks express

def same_distribution(a, b, atol=1e-6):
    pa, pb = a.float().softmax(-1), b.float().softmax(-1)
    torch.testing.assert_close(pa, pb, atol=atol, rtol=0)
    assert torch.equal(pa > 1e-30, pb > 1e-30)


def sampling_net(temperature=1.0, **cuts):
    net = SamplingNetwork(typical="typical_mass" in cuts)
    with torch.no_grad(): net.scale.fill_(1 / temperature)
    for name, threshold in cuts.items(): net.gates.set_cut(name, threshold)
    return net


CASES = {
    "top-k": lambda: (sampling_net(log_rank=math.log(20.5)), [TopKLogitsWarper(20)]),
    "top-p": lambda: (sampling_net(mass_above=0.8), [TopPLogitsWarper(0.8)]),
    "typical": lambda: (sampling_net(typical_mass=0.7), [TypicalLogitsWarper(0.7)]),
    "min-p": lambda: (sampling_net(relative_surprisal=-math.log(0.1)), [MinPLogitsWarper(0.1)]),
    "T+top-p": lambda: (sampling_net(0.6, mass_above=0.9), [TemperatureLogitsWarper(0.6), TopPLogitsWarper(0.9)]),
    "T+top-k+min-p": lambda: (sampling_net(1.3, log_rank=math.log(30.5), relative_surprisal=-math.log(0.2)),
                              [TemperatureLogitsWarper(1.3), TopKLogitsWarper(30), MinPLogitsWarper(0.2)]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_sampling_network_expresses_transformers_warpers(case, seed):
    net, procs = CASES[case]()
    x = logits(5, 1500, scale=[1.0, 2.0, 3.0, 5.0][seed], seed=seed)
    with torch.no_grad(): same_distribution(net(x), LogitsProcessorList(procs)(None, x))


@pytest.mark.parametrize("seed", range(4))
def test_local_expresses_epsilon_then_temperature(seed):
    net = LocalProbabilityTransform()
    with torch.no_grad(): net.scale.fill_(1 / 0.8)
    net.gates.set_cut("surprisal", -math.log(1e-3))
    x = logits(4, 1500, scale=[1.0, 2.0, 3.0, 5.0][seed], seed=seed)
    ref = LogitsProcessorList([EpsilonLogitsWarper(1e-3), TemperatureLogitsWarper(0.8)])(None, x)
    with torch.no_grad(): same_distribution(net(x), ref)


@pytest.mark.parametrize("seed", range(4))
def test_distribution_aware_expresses_min_p_and_eta(seed):
    x = logits(4, 1500, scale=[0.5, 1.0, 3.0, 6.0][seed], seed=seed)
    mp = SimpleDistributionAwareTransform()
    mp.gates.set_cut("surprisal_1", -math.log(0.07))
    with torch.no_grad():
        mp.row_head.linear.weight[mp.row_head.index("threshold", 1), STATS.index("max_log_prob")] = -1.0
        same_distribution(mp(x), MinPLogitsWarper(0.07)(None, x))
    eta = 3e-4
    net = SimpleDistributionAwareTransform()
    net.gates.set_cut("surprisal_0", -math.log(eta))
    rh = net.row_head
    with torch.no_grad():
        rh.hidden.weight.zero_(); rh.hidden.bias.fill_(-1.0)
        rh.hidden.weight[3, STATS.index("entropy")] = 1.0; rh.hidden.bias[3] = 0.5 * math.log(eta)
        rh.out.weight[rh.index("threshold", 0), 3] = 1.0
        same_distribution(net(x), EtaLogitsWarper(eta)(None, x))


def test_row_head_index_names():
    rh = SimpleDistributionAwareTransform(hidden=4, poly_degree=3, n_gates=2).row_head
    assert [rh.index("scale"), rh.index("poly", 1), rh.index("threshold", 1), rh.index("dw"), rh.index("db", 3)] == [0, 2, 4, 5, 12]
    with pytest.raises(ValueError, match="`name` must be one of"): rh.index("temperature")


# ---------------------------------------------------------------- configs, save/load

@pytest.mark.parametrize("cfg", [LocalConfig(hidden=4, poly_degree=3), DistributionAwareConfig(n_gates=3, seed=5),
                                 SamplingNetworkConfig(dim=2, typical=True, gate_sharpness=2.5)])
def test_config_yaml_round_trip(cfg):
    assert type(cfg).from_yaml(cfg.to_yaml()) == cfg
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("make,err,msg", [
    (lambda: LocalConfig(hidden=0), ValueError, "`hidden` must be an integer >= 1"),
    (lambda: LocalConfig(hidden=2.5), ValueError, "`hidden` must be an integer"),
    (lambda: LocalConfig(gate_sharpness=-1), ValueError, "`gate_sharpness` must be a finite number > 0"),
    (lambda: LocalConfig(gate_threshold=INF), ValueError, "`gate_threshold` must be finite"),
    (lambda: DistributionAwareConfig(n_gates=0), ValueError, "`n_gates`"),
    (lambda: SamplingNetworkConfig(typical="yes"), ValueError, "`typical` must be a bool"),
    (lambda: LocalConfig.from_yaml("hidden: 8\nwidth: 3"), ValueError, r"unknown LocalConfig field\(s\) \['width'\]"),
    (lambda: LocalConfig.from_yaml("- 1\n- 2"), TypeError, "needs a mapping"),
    (lambda: SamplingNetwork(width=3), ValueError, "unknown SamplingNetworkConfig field"),
    (lambda: SamplingNetwork(LocalConfig()), TypeError, "`config` must be a SamplingNetworkConfig"),
])
def test_bad_configs(make, err, msg):
    with pytest.raises(err, match=msg): make()


def test_overrides_and_defaults():
    assert LocalProbabilityTransform(hidden=4).config.hidden == 4
    assert SamplingNetwork(SamplingNetworkConfig(dim=2), hidden=3).config == SamplingNetworkConfig(dim=2, hidden=3)
    a, b = SimpleDistributionAwareTransform(), SimpleDistributionAwareTransform()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())), "seeded initialisation"
    assert not torch.equal(SimpleDistributionAwareTransform(seed=1).row_head.hidden.weight, a.row_head.hidden.weight)


@pytest.mark.parametrize("name", FACTORIES)
def test_save_load_round_trip_is_bitwise(name, tmp_path):
    net = perturbed(FACTORIES[name](), 0.05)
    path = net.save(tmp_path/"sub"/"net.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.safetensors"], "no temporary files left behind"
    back = load_network(path)
    assert type(back) is type(net) and back.config == net.config
    x = logits(3, 400, removed=0.2)
    with torch.no_grad(): assert torch.equal(back(x), net(x))
    assert type(net).load(path).config == net.config
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["class"] == type(net).__name__ and json.loads(meta["config"]) == net.config.to_dict()


def test_load_rejects_other_files(tmp_path):
    path = LocalProbabilityTransform().save(tmp_path/"local.safetensors")
    with pytest.raises(TypeError, match="holds a LocalProbabilityTransform, not a SamplingNetwork"):
        SamplingNetwork.load(path)
    save_file({"w": torch.zeros(2)}, str(tmp_path/"other.safetensors"))
    with pytest.raises(ValueError, match="not a soft_sampler network file"):
        load_network(tmp_path/"other.safetensors")
    (tmp_path/"junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(Exception):
        load_network(tmp_path/"junk.safetensors")


# ---------------------------------------------------------------- in the sampling loop

def test_processor_interface():
    net = perturbed(SamplingNetwork(), 0.05)
    proc = net.as_processor()
    assert isinstance(proc, NetworkProcessor)
    scores = logits(2, 50).to(torch.bfloat16)
    out = proc(torch.zeros(2, 3, dtype=torch.long), scores)
    assert out.dtype == torch.bfloat16 and not out.requires_grad
    with torch.no_grad(): assert torch.equal(out, net(scores))


def test_generate_with_a_top1_network_is_greedy():
    model, tok = tiny_model(init_std=0.5)  # varied greedy output
    ids = tok(["Hello there"], return_tensors="pt").input_ids
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=10)
    greedy = model.generate(ids, do_sample=False, **kw)
    for net in (sampling_net(log_rank=math.log(1.5)), sampling_net(relative_surprisal=1e-6)):
        torch.manual_seed(1)
        out = model.generate(ids, do_sample=True, logits_processor=LogitsProcessorList([net.as_processor()]), **kw)
        assert torch.equal(out, greedy)


@pytest.mark.parametrize("name", FACTORIES)
def test_generate_with_identity_network_changes_nothing(name):
    model, tok = tiny_model(seed=2)
    ids = tok(["abc", "xyz"], return_tensors="pt").input_ids
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=True)
    torch.manual_seed(3); plain = model.generate(ids, **kw)
    torch.manual_seed(3)
    out = model.generate(ids, logits_processor=LogitsProcessorList([FACTORIES[name]().as_processor()]), **kw)
    assert torch.equal(out, plain)


@pytest.mark.slow
def test_real_model_logits_and_generate():
    from soft_sampler.core import load_model
    model, tok = load_model()
    ids = tok(["The capital of France is", "Once upon a time"], return_tensors="pt", padding=True)
    with torch.no_grad():
        x = model(**ids).logits[:, -1].float()
    for case in ("top-k", "top-p", "min-p", "T+top-p"):
        net, procs = CASES[case]()
        with torch.no_grad(): same_distribution(net(x), LogitsProcessorList(procs)(None, x))
    for make in FACTORIES.values():
        with torch.no_grad(): assert torch.equal(torch.isfinite(make()(x)), torch.isfinite(x))
    torch.manual_seed(0)
    net = sampling_net(0.7, mass_above=0.9)
    out = model.generate(**ids, do_sample=True, max_new_tokens=8, top_k=None, top_p=None,
                         logits_processor=LogitsProcessorList([net.as_processor()]))
    assert out.shape == (2, ids.input_ids.shape[1] + 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = logits(2, 5000, removed=0.1)
    for name, make in FACTORIES.items():
        net = perturbed(make(), 0.05)
        with torch.no_grad():
            cpu = net(x)
            gpu = net.cuda()(x.cuda()).cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
