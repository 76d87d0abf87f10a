"Training sampler networks: data sources, replay alignment, targets, training to a stated KL, exact resume, checkpoints, CLIs, fidelity."
import contextlib, io, json, math, os, shutil
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
from soft_sampler.core import tiny_model
from soft_sampler.sampling import generate
from soft_sampler.heuristics import Pipeline, min_p as min_p_fn, top_k as top_k_fn
from soft_sampler.networks import LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork, load_network
from soft_sampler.train import (synthetic_logits, SyntheticLogits, LogitsDataset, replay_logits, as_target, pipeline_targets,
                                TrainConfig, train_sampler, latest_checkpoint, load_sampler, fidelity_metrics, evaluate_sampler,
                                fidelity_table, write_csv_atomic, train_cli, fidelity_cli, FIDELITY_COLUMNS, FIDELITY_TARGETS)

INF = math.inf


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def entropy(x): lp = x.log_softmax(-1); return -(lp.exp() * lp).sum(-1)


# ---------------------------------------------------------------- data

def test_synthetic_logits_spread_and_determinism():
    x = synthetic_logits(1000, 2048, torch.Generator().manual_seed(0))
    h = entropy(x)
    assert x.shape == (1000, 2048) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # like the embedded model's rows: some near-certain, some broad (see the notebook's measurement)
    assert torch.quantile(h, 0.1) < 0.3 and torch.quantile(h, 0.9) > 3.5
    assert torch.equal(synthetic_logits(4, 10, torch.Generator().manual_seed(3)), synthetic_logits(4, 10, torch.Generator().manual_seed(3)))
    s = SyntheticLogits(vocab=32, seed=1)
    assert torch.equal(s.batch(7, 3)[0], s.batch(7, 3)[0]) and not torch.equal(s.batch(7, 3)[0], s.batch(8, 3)[0])
    assert not torch.equal(s.batch(7, 3)[0], SyntheticLogits(vocab=32, seed=2).batch(7, 3)[0])


@pytest.mark.parametrize("bad, msg", [(dict(n=0), "`n` must be an integer >= 1"), (dict(n=2, vocab=1), "`vocab` must be an integer >= 2"),
                                      (dict(n=2.0), "`n` must be an integer")])
def test_synthetic_bad_input(bad, msg):
    with pytest.raises(ValueError, match=msg): synthetic_logits(**bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 17), st.integers(0, 200), st.integers(0, 5))
def test_dataset_stream_is_a_keyed_permutation_per_epoch(n, size, start, seed):
    ds = LogitsDataset(torch.arange(float(n))[:, None].repeat(1, 2), seed=seed)
    idx = ds.indices(start, size)
    assert len(idx) == size
    full = ds.indices(0, start + size + n)  # the stream from the start
    assert torch.equal(idx, full[start:start + size])
    for e in range(len(full) // n):  # every whole epoch is a permutation of the rows
        assert sorted(full[e * n:(e + 1) * n].tolist()) == list(range(n))
    base, t = ds.batch(start // size if size else 0, size)
    assert t is None and base.dtype == torch.float32


def test_dataset_targets_and_half_storage():
    x = synthetic_logits(10, 20, torch.Generator().manual_seed(0))
    t = top_k_fn(x, 3)
    ds = LogitsDataset(x.half(), t.half(), seed=1)
    b, tb = ds.batch(2, 4)
    assert b.dtype == tb.dtype == torch.float32
    idx = ds.indices(8, 4)
    assert torch.equal(b, x.half()[idx].float()) and torch.equal(torch.isfinite(tb), torch.isfinite(t[idx]))
    with pytest.raises(ValueError, match="`targets` must be None or a tensor of the same shape"): LogitsDataset(x, t[:3])
    with pytest.raises(ValueError, match="`logits` must be a non-empty float tensor"): LogitsDataset(torch.zeros(0, 3))


# ---------------------------------------------------------------- replay alignment

def test_replay_matches_the_logits_the_loop_saw(tiny):
    model, tok = tiny
    res = generate(model, ["Hello", "A much longer prompt here"], tok, max_new_tokens=7, n=2, seed=3, keep_logits="full")
    rep = replay_logits(model, res, batch_size=3)  # batches mix prompt lengths: padding must not leak
    seen = torch.cat([k.values for k in res.raw_logits])
    assert len(rep) == sum(len(t) for t in res.token_ids) == len(seen)
    assert rep.tokens.tolist() == [t for r in res.token_ids for t in r]
    assert (rep.logits - seen).abs().max() < 1e-4
    first = torch.tensor([0] + torch.cumsum(torch.tensor([len(t) for t in res.token_ids]), 0).tolist()[:-1])
    assert rep.positions[first].tolist() == [0] * len(res) and rep.rows[first].tolist() == list(range(len(res)))
    # the first response token's logits are the prompt's last position (the bug this guards against drops them)
    direct = model(torch.tensor([res.prompt_ids[0]])).logits[0, -1]
    assert (rep.logits[0] - direct).abs().max() < 1e-4


def test_replay_greedy_argmax_and_rows(tiny_varied):
    model, tok = tiny_varied  # varied greedy output: a shifted replay would not match
    g = generate(model, ["Hi", "Sea", "Sky"], tok, max_new_tokens=6, do_sample=False)
    rep = replay_logits(model, g, rows=[2, 0])
    assert rep.logits.argmax(-1).tolist() == g.token_ids[2] + g.token_ids[0]
    assert rep.rows.tolist() == [0] * len(g.token_ids[2]) + [1] * len(g.token_ids[0])
    lists = replay_logits(model, g.prompt_ids, g.token_ids, dtype=torch.float16)
    assert lists.logits.dtype == torch.float16 and len(lists) == sum(map(len, g.token_ids))
    with pytest.raises(ValueError, match="prompt 0 is empty"): replay_logits(model, [[]], [[4]])
    with pytest.raises(ValueError, match="same length"): replay_logits(model, [[1]], [[4], [5]])


@pytest.mark.slow
def test_replay_alignment_on_the_embedded_model(real):
    model, tok = real
    res = generate(model, [[{"role": "user", "content": "Name a colour."}], "The capital of France is"], tok,
                   max_new_tokens=6, seed=0, keep_logits="full")
    rep = replay_logits(model, res)
    seen = torch.cat([k.values for k in res.raw_logits])
    assert rep.tokens.tolist() == [t for r in res.token_ids for t in r]
    assert (rep.logits.log_softmax(-1) - seen.log_softmax(-1)).abs().max() < 2e-3
    assert (rep.logits[1:] - seen[:-1]).abs().max() > 1.0  # off by one would be far off


# ---------------------------------------------------------------- targets

def test_as_target_forms_agree(tmp_path):
    x = synthetic_logits(5, 40, torch.Generator().manual_seed(0))
    spec = [{"name": "temperature", "t": 0.7}, {"name": "min_p", "p": 0.1}]
    want = min_p_fn(x / 0.7, 0.1)
    (tmp_path/"t.yaml").write_text(Pipeline(spec).to_yaml())
    for t in (spec, Pipeline(spec), str(tmp_path/"t.yaml"), tmp_path/"t.yaml", Pipeline(spec).to_yaml(), lambda z: min_p_fn(z / 0.7, 0.1)):
        assert torch.equal(as_target(t)(x), want)
    with pytest.raises(TypeError, match="`target` must be a Pipeline"): as_target(3)


def test_pipeline_targets_per_row():
    x = synthetic_logits(6, 30, torch.Generator().manual_seed(1))
    which = torch.tensor([1, 0, 1, 1, 0, 0])
    out = pipeline_targets(x, [[{"name": "top_k", "k": 2}], [{"name": "min_p", "p": 0.2}]], which)
    for i, w in enumerate(which.tolist()):
        want = top_k_fn(x[i:i + 1], 2) if w == 0 else min_p_fn(x[i:i + 1], 0.2)
        assert torch.equal(out[i:i + 1], want)
    with pytest.raises(ValueError, match="`which` must hold one index in"): pipeline_targets(x, [[]], which)


# ---------------------------------------------------------------- training reaches a stated KL

HELD = lambda vocab=1024: synthetic_logits(256, vocab, torch.Generator().manual_seed(12345))  # never a training row (different keys)


@pytest.mark.slow
def test_temperature_is_learned_to_kl_1e_4():
    "LocalProbabilityTransform, 300 steps × 16 rows of 1024 tokens: held-out KL(target‖pred) < 1e-4 (identity: ~0.12; measured 1e-5)."
    t = [{"name": "temperature", "t": 0.7}]
    r = train_sampler(LocalProbabilityTransform(), t, SyntheticLogits(1024), TrainConfig(steps=300, batch_size=16, lr=0.05), progress=False)
    held = HELD()
    m, base = evaluate_sampler(r.net, held, t), evaluate_sampler(None, held, t)
    assert base["kl"] > 0.05 and m["kl"] < 1e-4, (m, base)
    assert m["kept_mass_error"] == 0.0


@pytest.mark.slow
def test_min_p_is_learned_to_kl_0_04():
    "SimpleDistributionAwareTransform, 300 steps: held-out KL < 0.04 and removed mass < 0.02 (identity: KL ~0.22; measured 0.019)."
    t = [{"name": "min_p", "p": 0.1}]
    r = train_sampler(SimpleDistributionAwareTransform(), t, SyntheticLogits(1024), TrainConfig(steps=300, batch_size=16, lr=0.05), progress=False)
    held = HELD()
    m, base = evaluate_sampler(r.net, held, t), evaluate_sampler(None, held, t)
    assert base["kl"] > 0.15 and m["kl"] < 0.04 and m["kept_mass_error"] < 0.02, (m, base)
    assert m["jaccard"] > base["jaccard"] + 0.3


def test_training_lowers_the_loss_with_per_row_targets():
    x = synthetic_logits(64, 128, torch.Generator().manual_seed(0))
    t = pipeline_targets(x, [[{"name": "temperature", "t": 0.5}], [{"name": "temperature", "t": 0.5}]], torch.arange(64) % 2)
    r = train_sampler(LocalProbabilityTransform(), None, LogitsDataset(x, t), TrainConfig(steps=40, batch_size=8, lr=0.05), progress=False)
    assert sum(r.history["kl"][-5:]) < 0.2 * sum(r.history["kl"][:5])
    with pytest.raises(ValueError, match="`target` is None but the data did not provide target logits"):
        train_sampler(LocalProbabilityTransform(), None, LogitsDataset(x), TrainConfig(steps=1, batch_size=2), progress=False)
    with pytest.raises(TypeError, match="`net` must be a torch module with parameters"):
        train_sampler(lambda z: z, [{"name": "top_k", "k": 2}], progress=False)


def test_schedule_warmup_and_decay():
    c = TrainConfig(steps=50, warmup=5, lr=1.0, min_lr=0.1, schedule="linear")
    f = [c.lr_factor(s) for s in range(50)]
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and f[5] == 1.0 and f[-1] == pytest.approx(0.1 + 0.9 / 45)
    assert TrainConfig(schedule="constant", warmup=0).lr_factor(1000) == 1.0
    r = train_sampler(LocalProbabilityTransform(), [{"name": "top_k", "k": 3}], SyntheticLogits(50), TrainConfig(steps=8, batch_size=2, warmup=4, lr=0.1), progress=False)
    assert r.history["lr"][:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])


# ---------------------------------------------------------------- exact resume and checkpoints

@pytest.mark.parametrize("make", [lambda: SamplingNetwork(seed=2), lambda: SimpleDistributionAwareTransform()], ids=["sampling", "aware"])
def test_interrupted_run_resumes_to_the_same_curve(tmp_path, make):
    cfg = TrainConfig(steps=21, batch_size=6, accumulation=3, checkpoint_every=4, warmup=3, weight_decay=0.01)
    target, data = [{"name": "top_p", "p": 0.8}], SyntheticLogits(200, seed=9)
    straight = train_sampler(make(), target, data, cfg, progress=False)
    a = train_sampler(make(), target, data, cfg, checkpoint_dir=tmp_path, stop_at=9, progress=False)
    assert latest_checkpoint(tmp_path).name == "step-00000009" and len(a.history["loss"]) == 9
    b = train_sampler(make(), target, data, cfg, checkpoint_dir=tmp_path, stop_at=14, progress=False)
    c = train_sampler(make(), target, data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert (b.resumed_from, c.resumed_from) == (9, 14)
    for k in ("step", "loss", "kl", "removed_mass", "lr"): assert c.history[k] == straight.history[k], k
    for (n, p), q in zip(straight.net.state_dict().items(), c.net.state_dict().values()): assert torch.equal(p, q), n
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000020", "step-00000021"]  # the last two kept
    x = HELD(200)[:4]
    with torch.no_grad(): assert torch.equal(load_sampler(tmp_path)(x), straight.net(x))
    # a finished run resumed again does nothing
    d = train_sampler(make(), target, data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert d.resumed_from == 21 and d.history["loss"] == straight.history["loss"]


def test_a_crash_while_checkpointing_leaves_the_previous_one(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=2, checkpoint_every=3)
    t, data = [{"name": "min_p", "p": 0.2}], SyntheticLogits(64)
    straight = train_sampler(LocalProbabilityTransform(), t, data, cfg, progress=False)
    train_sampler(LocalProbabilityTransform(), t, data, cfg, checkpoint_dir=tmp_path, stop_at=3, progress=False)
    (tmp_path/".tmp-step-half").mkdir(); (tmp_path/".tmp-step-half"/"network.safetensors").write_bytes(b"partial")
    (tmp_path/"step-00000005").mkdir()  # renamed but latest.json never updated: not used
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    r = train_sampler(LocalProbabilityTransform(), t, data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert r.resumed_from == 3 and r.history["loss"] == straight.history["loss"]
    meta = json.loads((r.checkpoint/"trainer.json").read_text())
    assert meta["target"] == t and meta["network"] == "LocalProbabilityTransform" and meta["step"] == 6


def test_resume_refuses_another_network(tmp_path):
    t = [{"name": "top_k", "k": 2}]
    train_sampler(SamplingNetwork(), t, SyntheticLogits(50), TrainConfig(steps=2, batch_size=2), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds a SamplingNetwork"):
        train_sampler(SamplingNetwork(dim=8), t, SyntheticLogits(50), TrainConfig(steps=3, batch_size=2), checkpoint_dir=tmp_path, progress=False)
    r = train_sampler(SamplingNetwork(dim=8), t, SyntheticLogits(50), TrainConfig(steps=3, batch_size=2), checkpoint_dir=tmp_path, resume=False, progress=False)
    assert r.resumed_from == 0


# ---------------------------------------------------------------- fidelity metrics

@settings(max_examples=30, deadline=None)
@given(st.integers(2, 50), st.integers(0, 2**31 - 1), st.floats(0.0, 0.9))
def test_fidelity_metrics_properties(v, seed, cut):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, v, generator=g) * 3
    q = torch.where(torch.rand(3, v, generator=g) < cut, -INF, x)
    q[:, 0] = x[:, 0]
    same = fidelity_metrics(q.nan_to_num(neginf=-1e4), q)
    assert same["kl"].abs().max() < 1e-4 and same["kept_mass_error"].max() < 1e-4 and torch.equal(same["jaccard"], torch.ones(3))
    m = fidelity_metrics(x, q)
    assert (m["kl"] >= -1e-6).all() and ((0 <= m["jaccard"]) & (m["jaccard"] <= 1)).all()
    assert ((0 <= m["kept_mass_error"]) & (m["kept_mass_error"] <= 1)).all()
    kept = torch.isfinite(q)
    assert torch.allclose(m["kept_mass_error"], 1 - (x.softmax(-1) * kept).sum(-1), atol=1e-5)


def test_fidelity_metrics_closed_form():
    q = torch.tensor([[0.0, 0.0, -INF, -INF]])
    m = fidelity_metrics(torch.zeros(1, 4), q)
    assert m["kl"].item() == pytest.approx(math.log(2), abs=1e-6)  # q = (1/2, 1/2) vs p = (1/4, ...): log 2
    assert m["kept_mass_error"].item() == pytest.approx(0.5) and m["jaccard"].item() == pytest.approx(0.5)
    m = fidelity_metrics(torch.tensor([[0.0, -12.0, -12.0, -12.0]]), torch.tensor([[0.0, -INF, -INF, -INF]]), tau=1e-4)
    assert m["jaccard"].item() == 1.0  # tokens at p ~ 6e-6 < τ are not kept
    with pytest.raises(ValueError, match="`tau` must be in"): fidelity_metrics(q, q, tau=0)


def test_fidelity_table_small(tmp_path):
    held = HELD(256)[:32]
    rows = fidelity_table(held, ("LocalProbabilityTransform",), {"temperature": FIDELITY_TARGETS["temperature"]},
                          TrainConfig(steps=30, batch_size=8, lr=0.05), vocab=256, progress=False)
    assert [r["network"] for r in rows] == ["identity", "LocalProbabilityTransform"]
    assert rows[1]["kl"] < rows[0]["kl"] / 3 and rows[1]["params"] == 53
    text = write_csv_atomic(rows, tmp_path/"f.csv").read_text().splitlines()
    assert text[0] == ",".join(FIDELITY_COLUMNS) and len(text) == 3 and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="unknown network"): fidelity_table(held, ("Transformer",))


# ---------------------------------------------------------------- command line

def _run(fn, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = fn(argv)
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()


def test_train_cli(tmp_path):
    spec = tmp_path/"t.yaml"; spec.write_text("- {name: temperature, t: 0.5}\n")
    rc, out, _ = _run(train_cli, ["--target", str(spec), "--net", "LocalProbabilityTransform", "--steps", "6", "--vocab", "64",
                                  "--batch-size", "4", "--out", str(tmp_path/"ck"), "--no-progress"])
    assert rc == 0 and "temperature(t=0.5)" in out and "step 6:" in out
    assert isinstance(load_sampler(tmp_path/"ck"), LocalProbabilityTransform)
    rc, out, _ = _run(train_cli, ["--target", str(spec), "--net", "LocalProbabilityTransform", "--steps", "9", "--vocab", "64",
                                  "--batch-size", "4", "--out", str(tmp_path/"ck"), "--no-progress"])
    assert rc == 0 and "resumed from step 6" in out
    rc, out, _ = _run(train_cli, ["--top-k", "5", "--steps", "2", "--vocab", "64", "--batch-size", "2", "--no-progress"])
    assert rc == 0 and "SamplingNetwork" in out and "nothing saved" in out  # the default network


@pytest.mark.parametrize("argv, msg", [(["--net", "Transformer", "--min-p", "0.1"], "invalid choice: 'Transformer'"),
                                       (["--steps", "5"], "a target is needed"), (["--min-p", "0.1", "--lr", "0"], "`lr` must be a finite number > 0"),
                                       (["--target", "a.yaml", "--pipeline", "b.yaml"], "not both"),
                                       (["--target", "/nonexistent.yaml"], "No such file")])
def test_train_cli_errors(argv, msg):
    rc, _, err = _run(train_cli, argv)
    assert rc == 2 and msg in err, err


def test_sample_cli_applies_the_sampler(tmp_path, tiny):
    from soft_sampler.samplers import sample_cli
    model, tok = tiny
    model.save_pretrained(tmp_path/"m"); tok.save_pretrained(tmp_path/"m")
    sharp = LocalProbabilityTransform()
    with torch.no_grad(): sharp.scale.fill_(1e4)  # temperature 1e-4: sampling becomes greedy
    sharp.save(tmp_path/"sharp.safetensors")
    common = ["--model", str(tmp_path/"m"), "--prompt", "Hello", "--raw", "--max-new-tokens", "8", "--seed", "0"]
    text = lambda out: out.split("\n")[1]
    greedy = _run(sample_cli, common + ["--greedy"])
    plain = _run(sample_cli, common)
    learned = _run(sample_cli, common + ["--sampler", str(tmp_path/"sharp.safetensors")])
    assert greedy[0] == plain[0] == learned[0] == 0
    assert text(learned[1]) == text(greedy[1]) != text(plain[1])
    rc, _, err = _run(sample_cli, common + ["--sampler", str(tmp_path/"missing")])
    assert rc == 2 and "--sampler: no sampler network at" in err


@pytest.mark.slow
def test_fidelity_cli_small(tmp_path):
    rc, out, _ = _run(fidelity_cli, ["--out", str(tmp_path/"f.csv"), "--steps", "3", "--targets", "min_p", "--networks",
                                     "LocalProbabilityTransform", "--eval-tokens", "4"])
    assert rc == 0 and (tmp_path/"f.csv").read_text().count("\n") == 3
    meta = json.loads((tmp_path/"f.json").read_text())
    assert meta["eval_vocab"] == 49152 and meta["tau"] == 1e-4


@pytest.mark.heavy
def test_fidelity_table_regenerates_results():
    "Regenerates results/fidelity.csv (+ .json): 3 networks × 9 targets, ~10 min single-threaded."
    out = Path(__file__).resolve().parents[1]/"results"/"fidelity.csv"
    rc, _, _ = _run(fidelity_cli, ["--out", str(out)])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 9 * 4


@pytest.mark.heavy
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fidelity_table_over_seeds(seed):
    "Regenerates results/fidelity_seed{1..4}.csv: the same table with other data streams and initial weights (~3-10 min each)."
    out = Path(__file__).resolve().parents[1]/"results"/f"fidelity_seed{seed}.csv"
    rc, _, _ = _run(fidelity_cli, ["--seed", str(seed), "--out", str(out)])
    assert rc == 0 and len(out.read_text().splitlines()) == 1 + 9 * 4
    assert json.loads(out.with_suffix(".json").read_text())["init_seed"] == seed
