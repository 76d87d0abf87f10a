"""What the command line says to a newcomer (issue 28): one resolver for trained networks, analyze's kept sets as the
fidelity table defines them, train's KL labelled with its data, qalign's degenerate statistics explained and its
final answers formatted alike, `qalign --problems` on the shipped arithmetic set, both entropies in `soft --mode
mixture`, and `sample --ban` keeping the per-token table and the prompt header.

Default tier: the commands run on a tiny random model (`soft_sampler.core.load_model` patched); slow tier: the
embedded model, where a never-matching ban must print exactly what plain sampling prints.
"""
import contextlib, io, math, re
from pathlib import Path
import pytest, torch
import soft_sampler.core as core
from soft_sampler.core import tiny_model


def _run(fn, argv):
    "rc, stdout, stderr of a CLI function (argparse's SystemExit becomes its code)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = fn(argv)
        except SystemExit as e: rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def tiny_cli(monkeypatch):
    "Commands load the tiny random model instead of the embedded one."
    model, tok = tiny_model(seed=0)
    monkeypatch.setattr(core, "load_model", lambda *a, **k: (model, tok))
    monkeypatch.setattr(core, "load_tokenizer", lambda *a, **k: tok)
    return model, tok


@pytest.fixture
def no_model(monkeypatch):
    "Loading a model fails the test: errors about the arguments must come first."
    def boom(*a, **k): raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(core, "load_model", boom)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    "A trained network's checkpoint folder, as `soft-sampler train --out` writes it."
    from soft_sampler.networks import SimpleDistributionAwareTransform
    from soft_sampler.train import train_sampler, TrainConfig, SyntheticLogits
    d = tmp_path_factory.mktemp("ck")
    r = train_sampler(SimpleDistributionAwareTransform(), [{"name": "min_p", "p": 0.1}], SyntheticLogits(vocab=64),
                      TrainConfig(steps=3, batch_size=2), checkpoint_dir=d, progress=False)
    assert (d/"network.safetensors").is_file()
    return d


# ---- trained networks: one resolver, one error ----------------------------------------------------------------

@pytest.mark.parametrize("which", ["folder", "file"])
def test_analyze_takes_the_folder_train_prints_or_the_file(tiny_cli, checkpoint, tmp_path, which):
    from soft_sampler.plots import analyze_cli
    net = checkpoint if which == "folder" else checkpoint/"network.safetensors"
    rc, out, err = _run(analyze_cli, ["--prompt", "hi", "--network", str(net), "--max-new-tokens", "3", "--out", str(tmp_path/"r.html")])
    assert rc == 0, err
    assert re.search(r"mean jaccard=\S+ .*mean jaccard \(finite\)=", out) and "as in the fidelity table" in out
    assert (tmp_path/"r.html").is_file()


@pytest.mark.parametrize("bad,msg", [("missing", "no sampler network at"), ("notes.txt", "is not a sampler network file"),
                                     ("emptydir", "no sampler network at")])
def test_commands_reject_a_bad_network_alike_before_loading_the_model(no_model, tmp_path, bad, msg):
    from soft_sampler.plots import analyze_cli
    from soft_sampler.samplers import sample_cli
    (tmp_path/"notes.txt").write_text("not a network"); (tmp_path/"emptydir").mkdir()
    path = str(tmp_path/bad)
    for fn, argv, flag in [(analyze_cli, ["--prompt", "x", "--out", str(tmp_path/"r.html"), "--network", path], "--network"),
                           (sample_cli, ["--prompt", "x", "--sampler", path], "--sampler")]:
        rc, out, err = _run(fn, argv)
        assert rc == 2 and f"{flag}: " in err and msg in err, (fn.__name__, err)
        last = err.strip().splitlines()[-1]  # argparse: the usage, then one line naming the flag and the problem
        assert "Traceback" not in err and re.match(rf"soft-sampler \w+: error: {flag}: ", last) and msg in last, err


def test_analysis_jaccard_is_the_fidelity_tables():
    "A network's logits are all finite: the finite-logit Jaccard is ~kept/vocab, the fidelity table's counts p >= 1e-4."
    from soft_sampler.plots import distribution_metrics
    from soft_sampler.train import fidelity_metrics
    from soft_sampler.heuristics import min_p
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 4096, generator=g) * 3
    target = min_p(raw, 0.1)
    pred = torch.where(target > -math.inf, raw, raw - 30)  # min-p learned, but the tail pushed down, not removed
    m, f = distribution_metrics(raw, pred, target), fidelity_metrics(pred, target)
    torch.testing.assert_close(m["jaccard_tau"], f["jaccard"].double())
    assert (m["kept"] == 4096).all() and (m["jaccard"] < 0.05).all()  # the finite-logit count calls it a failure
    assert (m["jaccard_tau"] == 1).all() and (m["kept_tau"] == (target > -math.inf).sum(-1)).all()  # it is min-p


# ---- train ----------------------------------------------------------------------------------------------------

def test_train_says_which_data_its_kl_was_measured_on():
    from soft_sampler.train import train_cli
    rc, out, err = _run(train_cli, ["--top-k", "5", "--steps", "2", "--vocab", "64", "--batch-size", "2", "--no-progress"])
    assert rc == 0, err
    assert "KL" in out and "last training batch: synthetic rows (vocab 64)" in out and "soft-sampler fidelity" in out


# ---- qalign ---------------------------------------------------------------------------------------------------

ANSWER = r"(none|-?\d+(\.\d+)?(e[+-]\d+)?|'[^']*')"


def test_qalign_explains_a_constant_reward_trace(tiny_cli):
    from soft_sampler.qalign import qalign_cli
    rc, out, err = _run(qalign_cli, ["--reward", "keyword", "--target", "z" * 30, "--chains", "2", "--steps", "3",
                                     "--max-new-tokens", "4", "--no-progress"])
    assert rc == 0, err
    assert "ESS nan" in out and "undefined (nan)" in out and "length ratio" in out
    assert "final answers (the selected response's text)" in out


def test_qalign_final_answers_are_labelled_and_formatted_alike(tiny_cli):
    from soft_sampler.qalign import qalign_cli
    rc, out, err = _run(qalign_cli, ["--chains", "2", "--steps", "2", "--max-new-tokens", "4", "--no-progress"])
    assert rc == 0, err
    assert "final answers (the last number of the selected response)" in out
    rows = [l for l in out.splitlines() if re.match(r"\s*(best_of_n|majority_vote|weighted_majority_vote|mbr):", l)]
    assert len(rows) == 4
    for l in rows:
        m = re.match(rf"\s*\w+: qalign {ANSWER}\s+baseline {ANSWER}$", l)
        assert m and not m[1].startswith("'") and not m[4].startswith("'"), l  # numbers (or none) in every row


def test_qalign_problems_evaluates_the_shipped_arithmetic_set(tiny_cli):
    from soft_sampler.qalign import qalign_cli, evaluate_arithmetic, load_arithmetic, QAlign, ARITH_INSTRUCTION, last_number
    from soft_sampler.rewards import NumericAnswer
    import soft_sampler.remote as remote
    assert remote.load_arithmetic is load_arithmetic  # the old import path still works
    rc, out, err = _run(qalign_cli, ["--problems", "2", "--chains", "2", "--steps", "1", "--max-new-tokens", "3", "--no-progress"])
    assert rc == 0, err
    table = [l for l in out.splitlines() if l.startswith(("qalign ", "independent "))]
    assert len(table) == 6 and all(re.search(r"\s\d\.\d\d\s+\d+$", l) for l in table), out
    rc, _, err = _run(qalign_cli, ["--problems", "0"])
    assert rc == 2 and "--problems must be in 1..150" in err
    # one problem by hand: the accuracy of QAlign's majority vote is whether its vote is the answer
    model, tok = tiny_cli
    pb = load_arithmetic()[0]
    rows = evaluate_arithmetic(model, tok, [pb], chains=2, steps=2, max_new_tokens=4, progress=False)
    qa = QAlign(model, NumericAnswer(float(pb["answer"]), tokenizer=tok), beta=0.5, tokenizer=tok)
    res = qa.run([{"role": "user", "content": pb["question"] + ARITH_INSTRUCTION}], chains=2, steps=2, max_new_tokens=4,
                 seed=0, progress=False)
    votes = [last_number(tok.decode(s, skip_special_tokens=True)) for ch in res.states for s in ch]
    counts = {v: votes.count(v) for v in votes if v is not None}
    win = max(counts, key=counts.get) if counts else None
    row = next(r for r in rows if r["method"] == "qalign majority_vote")
    assert row["tokens"] == res.generated_tokens
    if len(counts) and list(counts.values()).count(max(counts.values())) == 1:  # no tie: the vote is unambiguous
        assert row["accuracy"] == float(win == pb["answer"])


# ---- soft --mode mixture --------------------------------------------------------------------------------------

def test_soft_mixture_shows_both_entropies_and_explains_the_star():
    from soft_sampler.soft import soft_cli, soft_generate, entropy
    rc, out, err = _run(soft_cli, ["--tiny", "--mode", "mixture", "--max-new-tokens", "4"])
    assert rc == 0, err
    assert re.search(r"H\(p\)\s+H\(fed\)", out) and "* the input of that step was a mixture" in out
    # H(fed) is the entropy of the weights actually fed: recompute it from all of them (top_k = the vocabulary)
    model, tok = tiny_model()
    r = soft_generate(model, "hi", tok, max_new_tokens=4, mode="mixture", beta=1.0, top_k=model.config.vocab_size)
    n = int(r.lengths[0])
    torch.testing.assert_close(r.fed_entropy[0, :n], entropy(r.top_weights[0, :n]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(r.fed_entropy[0, :n], r.entropy[0, :n]), "mixture mode feeds something other than p"


# ---- sample --ban ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sample_ban_prints_what_plain_sampling_prints():
    "Greedy with a phrase that never comes: anti-slop draws the same tokens from the same distributions."
    from soft_sampler.samplers import sample_cli
    argv = ["--prompt", "Name three fruits.", "--greedy", "--max-new-tokens", "8", "--min-p", "0.1", "--seed", "0"]
    rc1, plain, err1 = _run(sample_cli, argv)
    rc2, banned, err2 = _run(sample_cli, argv + ["--ban", "qqzzqq"])
    assert rc1 == rc2 == 0, err1 + err2
    assert "chat template" in banned and "(p and entropy, in nats" in banned
    lines = lambda s: [l for l in s.splitlines() if l.strip()]
    assert len(lines(banned)) == len(lines(plain))
    for a, b in zip(lines(plain), lines(banned)):
        num = r"-?\d+\.\d+"  # -0.000 and 0.000 are the same entropy
        nums_a, nums_b = re.findall(num, a), re.findall(num, b)
        assert re.sub(num, "#", a).replace(" ", "") == re.sub(num, "#", b).replace(" ", "")
        assert all(abs(float(x) - float(y)) <= 2e-3 for x, y in zip(nums_a, nums_b)), (a, b)
