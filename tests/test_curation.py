"Tests of the data-curation chain (soft_sampler.curation): every stage on tiny data, malformed input, resume."
import json, math, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from soft_sampler import curation as C
from soft_sampler.heuristics import Pipeline
from soft_sampler.sampling import generate

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = {
    "model": "tiny", "prompts": {"kinds": ["arithmetic", "constraint", "creative"], "per_kind": 2},
    "grid": [[{"name": "temperature", "t": [0.7, 1.3]}], [None, {"name": "top_k", "k": 5}]],
    "seeds": [0, 1], "max_new_tokens": 8, "batch_size": 4, "labels": {"embeddings": None}, "top_k": 2,
    "train": {"holdout": 2, "steps": 3, "batch_size": 8, "eval_seeds": [0, 1]},
}


def lines(path): return [json.loads(l) for l in Path(path).read_text().splitlines()]
def canon(recs): return sorted(json.dumps(r, sort_keys=True) for r in recs)


# ---------- JSONL store ----------
def test_repair_tail_cuts_partial_line_and_completes_missing_newline(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": 1}\n{"id": 2')
    assert C.repair_tail(p) == len('{"id": 2')
    assert p.read_text() == '{"id": 1}\n'
    p.write_text('{"id": 1}\n{"id": 2}')  # complete record, no newline: kept
    assert C.repair_tail(p) == 0 and p.read_text() == '{"id": 1}\n{"id": 2}\n'
    assert C.repair_tail(tmp_path / "missing.jsonl") == 0


def test_read_jsonl_names_every_malformed_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\nnot json\n\n[1, 2]\n{"b": 2}\n')
    recs, problems = C.scan_jsonl(p)
    assert [i for i, _ in recs] == [1, 5]
    assert [i for i, _ in problems] == [2, 4]
    with pytest.raises(C.JsonlError, match=r"line 2.*line 4"): C.read_jsonl(p)
    with pytest.raises(FileNotFoundError): C.read_jsonl(tmp_path / "nope.jsonl")


def test_appender_skips_known_keys_and_writes_strict_json(tmp_path):
    p = tmp_path / "x.jsonl"
    with C.JsonlAppender(p, key=lambda r: r["id"]) as w:
        assert w.write([{"id": 1, "v": math.nan}, {"id": 1, "v": 2.0}]) == 1
    with C.JsonlAppender(p, key=lambda r: r["id"]) as w:
        assert w.write([{"id": 1}, {"id": 2, "v": [math.inf, 1.0]}]) == 1
    assert lines(p) == [{"id": 1, "v": None}, {"id": 2, "v": [None, 1.0]}]
    assert "NaN" not in p.read_text()


# ---------- config ----------
@pytest.mark.parametrize("given,msg", [
    ({"seedz": [0]}, "seedz"), ({"judge": {"kind": "elo"}}, "judge.kind"), ({"judge": {"rounds": 0}}, "judge.rounds"),
    ({"seeds": []}, "'seeds'"), ({"seeds": [0, True]}, "'seeds'"), ({"top_k": 0}, "'top_k'"),
    ({"weights": {"beauty": 1}}, "weights"), ({"train": {"stepz": 3}}, "train.stepz"), ({"train": 3}, "'train' must be a mapping"),
    ({"grid": [[{"name": "top_p", "p": 1.5}]]}, "top_p"), ({"grid": [[{"k": 3}]]}, "grid axis 0"), ({"grid": []}, "'grid'"),
])
def test_config_errors_name_the_key(given, msg):
    with pytest.raises(C.ConfigError, match=msg): C.load_config(given)


def test_config_yaml_text_file_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seeds: [3]\njudge: {kind: yesno}\n")
    cfg = C.load_config(f)
    assert cfg["seeds"] == [3] and cfg["judge"]["kind"] == "yesno" and cfg["judge"]["batch_size"] == 8
    with pytest.raises(C.ConfigError, match="invalid YAML"): C.load_config("seeds: [0\n")
    with pytest.raises(C.ConfigError, match="mapping"): C.load_config("- 1\n- 2\n")
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(C.ConfigError, match="invalid YAML"): C.load_config(tmp_path / "evil.yaml")  # safe loader
    for name in ("curation_smoke.yaml", "curation_full.yaml"): C.load_config(ROOT / "soft_sampler" / "data" / name)


def test_default_grid_is_24_named_pipelines():
    g = C.make_grid(C.DEFAULT_GRID)
    assert len(g) == 24 and "temperature(t=0.7)+min_p(p=0.1)+repetition_penalty(penalty=1.3)" in g
    assert all(isinstance(p, Pipeline) for p in g.values())


# ---------- stage 1: prompts ----------
def test_shipped_prompts_cover_every_kind_with_checkable_labels():
    ps = C.load_prompts(C.default_prompt_sources())
    kinds = {p["kind"] for p in ps}
    assert {"creative", "open", "constraint", "arithmetic"} <= kinds and len(ps) <= 300
    for p in ps:
        if p["kind"] == "arithmetic": assert isinstance(p["answer"], float)
        if p["kind"] == "constraint": assert set(p["constraints"]) <= set(C.CONSTRAINTS)
    assert len({p["id"] for p in ps}) == len(ps)


def test_make_prompts_selection_any_jsonl_and_errors(tmp_path):
    src = tmp_path / "mine.jsonl"
    src.write_text('{"question": "What is 2+2?", "answer": "4"}\n{"prompt": "Tell a joke."}\n{"id": "z", "text": "Hi", "kind": "open"}\n')
    assert C.make_prompts(tmp_path / "p.jsonl", [src]) == 3
    assert C.make_prompts(tmp_path / "p.jsonl", [src]) == 0  # rerun: nothing new
    ps = C.read_jsonl(tmp_path / "p.jsonl")
    assert ps[0] == {"id": "mine-1", "kind": "arithmetic", "text": "What is 2+2?", "answer": 4.0}
    assert [p["kind"] for p in ps] == ["arithmetic", "open", "open"]
    sel = C.select_prompts(C.load_prompts(C.default_prompt_sources()), per_kind=2, kinds=["constraint", "arithmetic"])
    assert [p["kind"] for p in sel] == ["constraint", "arithmetic"] * 2
    for text, msg in [('{"text": ""}\n', "line 1"), ('{"text": "a"}\n{"txt": "b"}\n', "line 2"),
                      ('{"text": "a", "answer": "x"}\n', "'answer' must be a number"),
                      ('{"text": "a", "constraints": {"rhymes": true}}\n', "constraints"),
                      ('{"id": "a", "text": "a"}\n{"id": "a", "text": "b"}\n', "duplicate prompt id"), ('{"text": "a"\n', "line 1")]:
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(ValueError, match=msg): C.make_prompts(tmp_path / "o.jsonl", [tmp_path / "bad.jsonl"])
    with pytest.raises(ValueError, match="kinds"): C.select_prompts(ps, kinds=["poetry"])


def test_check_constraints():
    c = {"max_words": 4, "include": ["Whale"], "exclude": ["tree"], "no_comma": True, "ends_with": "!", "lowercase": True}
    assert C.check_constraints("a blue whale!", c) == 1.0
    assert C.check_constraints("A blue, big whale near a tree.", c) == pytest.approx(1 / 6)
    with pytest.raises(ValueError): C.check_constraints("x", {})


# ---------- stage 2: candidates ----------
@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("cur")
    C.make_prompts(d / "prompts.jsonl", per_kind=1, kinds=["arithmetic", "constraint"])
    grid = C.make_grid([[{"name": "temperature", "t": [0.7, 1.3]}, [{"name": "repetition_penalty", "penalty": 1.5}, {"name": "top_k", "k": 5}]]])
    eng = C.LocalEngine(*tiny, max_new_tokens=8)
    C.make_candidates(C.read_jsonl(d / "prompts.jsonl"), d / "cand.jsonl", grid, [0, 1], eng, tiny[1], progress=False)
    return d, grid, eng


def test_candidates_records_complete_and_reproduce_generate(setup, tiny):
    d, grid, _ = setup
    recs, ps = C.read_jsonl(d / "cand.jsonl"), C.read_jsonl(d / "prompts.jsonl")
    assert len(recs) == 2 * 3 * 2 and len({C.candidate_key(r) for r in recs}) == 12
    r = recs[5]
    p = next(p for p in ps if p["id"] == r["prompt_id"])
    ref = generate(tiny[0], [C.chat_ids(tiny[1], p["text"])], tiny[1], max_new_tokens=8, seed=r["seed"],
                   logits_processor=Pipeline.from_spec(r["spec"]), row_ids=[C.row_id(p["id"])])
    assert ref.token_ids[0] == r["token_ids"] and ref.texts[0] == r["text"]


def test_candidates_resume_after_injected_failure(setup, tiny, tmp_path):
    d, grid, eng = setup
    ps = C.read_jsonl(d / "prompts.jsonl")
    calls = {"n": 0}
    def dying(*a):
        if calls["n"] == 3: raise RuntimeError("injected failure")
        calls["n"] += 1; return eng(*a)
    with pytest.raises(RuntimeError, match="injected"):
        C.make_candidates(ps, tmp_path / "c.jsonl", grid, [0, 1], dying, tiny[1], batch_size=1, progress=False)
    assert len(lines(tmp_path / "c.jsonl")) == 3
    with open(tmp_path / "c.jsonl", "a") as f: f.write('{"prompt_id": "half')  # and a torn last line
    assert C.make_candidates(ps, tmp_path / "c.jsonl", grid, [0, 1], eng, tiny[1], batch_size=1, progress=False) == 9
    assert canon(lines(tmp_path / "c.jsonl")) == canon(lines(d / "cand.jsonl"))


def _cli(args, **kw):
    code = "import sys, torch; torch.set_num_threads(1); from soft_sampler.curation import curate_cli; sys.exit(curate_cli(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_candidates_resume_after_kill(tmp_path):
    cfg = {**TINY_CFG, "prompts": {"kinds": ["arithmetic", "constraint", "creative"], "per_kind": 1}, "max_new_tokens": 16, "batch_size": 1}
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    for d in ("killed", "clean"): C.run_stage("prompts", C.Workspace(tmp_path / d, C.load_config(cfg), progress=False))
    proc = _cli(["candidates", "--config", str(tmp_path / "c.yaml"), "--dir", str(tmp_path / "killed"), "--no-progress"])
    out = tmp_path / "killed" / "candidates.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3): time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL); proc.wait()
    n_killed = out.read_text().count("\n")
    assert 3 <= n_killed < 24
    assert C.curate_cli(["candidates", "--config", str(tmp_path / "c.yaml"), "--dir", str(tmp_path / "killed"), "--no-progress"]) == 0
    assert C.curate_cli(["candidates", "--config", str(tmp_path / "c.yaml"), "--dir", str(tmp_path / "clean"), "--no-progress"]) == 0
    killed = lines(out)
    assert len(killed) == 24 and len({C.candidate_key(r) for r in killed}) == 24  # 3 prompts x 4 pipelines x 2 seeds
    assert canon(killed) == canon(lines(tmp_path / "clean" / "candidates.jsonl"))


def test_remote_candidates_on_two_servers_match_one_server(setup, tiny, tmp_path):
    from soft_sampler.remote import ToyServer
    d, grid, _ = setup
    ps, tok = C.read_jsonl(d / "prompts.jsonl"), tiny[1]
    with ToyServer(tiny[0], [tok.eos_token_id]) as a, ToyServer(tiny[0], [tok.eos_token_id]) as b:
        a.fail_next(2)  # transient 503s are retried
        C.make_candidates(ps, tmp_path / "two.jsonl", grid, [0, 1], C.RemoteCandidates([a.url, b.url], tok, 8), tok, progress=False)
        C.make_candidates(ps, tmp_path / "one.jsonl", grid, [0, 1], C.RemoteCandidates([b.url], tok, 8), tok, batch_size=1, progress=False)
        assert len(a.requests) > 0 and len(b.requests) > 0
    two = lines(tmp_path / "two.jsonl")
    assert canon(two) == canon(lines(tmp_path / "one.jsonl")) and len(two) == 12
    assert C.verify_candidates(tmp_path / "two.jsonl", tok, [p["id"] for p in ps], list(grid), [0, 1])["ok"]
    with pytest.raises(ValueError, match="urls"): C.RemoteCandidates([], tok)
    for bad, msg in [({"urls": ["ftp://x"]}, "engine.urls"), ({"urls": "http://x"}, "engine.urls"), ({"server": "tgi"}, "engine.server")]:
        with pytest.raises(C.ConfigError, match=msg): C.load_config({"engine": bad})


# ---------- stage 3: verify ----------
def test_verify_ok_and_each_kind_of_damage(setup, tiny, tmp_path):
    d, grid, _ = setup
    ids = [p["id"] for p in C.read_jsonl(d / "prompts.jsonl")]
    rep = C.verify_candidates(d / "cand.jsonl", tiny[1], ids, list(grid), [0, 1])
    assert rep["ok"] and rep["records"] == 12 and rep["problems"] == [] and rep["missing"] == []
    recs = lines(d / "cand.jsonl")
    recs[1]["text"] += "x"                               # 2: ids do not decode to the text
    recs[2]["spec"] = [{"name": "top_k", "k": 7}]        # 3: spec names another pipeline
    recs[3]["spec"] = [{"name": "top_q", "q": 1}]        # 4: spec does not parse
    recs[4]["token_ids"] = [10 ** 6]                     # 5: id outside the vocabulary
    recs[5] = dict(recs[6])                              # 7 duplicates 6
    del recs[7]["seed"]                                  # 8: missing field
    recs[8]["prompt_id"] = "nobody"                      # 9: unknown prompt
    txt = [json.dumps(r) for r in recs]
    txt[0] = "{oops"                                     # 1: not JSON
    (tmp_path / "bad.jsonl").write_text("\n".join(txt) + "\n")
    rep = C.verify_candidates(tmp_path / "bad.jsonl", tiny[1], ids, list(grid), [0, 1])
    got = {line: msg for line, msg in rep["problems"]}
    assert sorted(got) == [1, 2, 3, 4, 5, 7, 8, 9]
    for line, word in [(1, "JSON"), (2, "decode"), (3, "record says"), (4, "does not parse"), (5, "outside"), (7, "duplicate of line 6"),
                       (8, "seed"), (9, "unknown prompt")]:
        assert word in got[line], (line, got[line])
    assert not rep["ok"] and len(rep["missing"]) == 8


# ---------- stage 4: labels ----------
def test_bradley_terry_two_players_closed_form():
    games = [(0, 1, 0.9), (1, 0, 0.3), (0, 1, 0.6), (1, 0, 0.2)]
    w = np.mean([0.9, 0.7, 0.6, 0.8])
    th = C.bradley_terry(2, games, l2=0)
    assert th[0] - th[1] == pytest.approx(math.log(w / (1 - w)), abs=1e-9) and th.sum() == pytest.approx(0, abs=1e-12)
    assert 0 < (C.bradley_terry(2, games, l2=1.0)[0] - C.bradley_terry(2, games, l2=1.0)[1]) < th[0] - th[1]  # ridge shrinks
    th = C.bradley_terry(2, [(0, 1, 1.0)] * 3)  # all wins: finite thanks to the ridge
    assert np.isfinite(th).all() and th[0] > th[1]
    with pytest.raises(ValueError, match="l2"): C.bradley_terry(2, games, l2=-1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=7), st.randoms(use_true_random=False))
def test_bradley_terry_recovers_ratings_from_exact_outcomes(ratings, rnd):
    n, t = len(ratings), np.array(ratings) - np.mean(ratings)
    order = list(range(n)); rnd.shuffle(order)
    pairs = [(order[i], order[i + 1]) for i in range(n - 1)]  # a spanning path: connected
    pairs += [(rnd.randrange(n), rnd.randrange(n)) for _ in range(n)]
    games = [(i, j, 1 / (1 + math.exp(-(t[i] - t[j])))) for i, j in pairs if i != j]
    np.testing.assert_allclose(C.bradley_terry(n, games, l2=0), t, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.integers(1, 6))
def test_swiss_tournament_never_repeats_a_game(strengths, rounds):
    n, seen = len(strengths), []
    def judge(pairs):
        seen.append(pairs)
        return [0.5 + (strengths[a] - strengths[b]) / 2 for a, b in pairs]
    games = C.swiss_tournament(n, judge, rounds)
    assert len(seen) <= rounds
    for pairs in seen:
        players = [x for p in pairs for x in p]
        assert len(players) == len(set(players))  # each player at most once per round
    assert len({frozenset(g[:2]) for g in games}) == len(games)
    if n > 1: assert len(seen[0]) == n // 2


def test_diversity_scores():
    from sacrebleu.metrics import BLEU
    texts = ["the cat sat on the mat", "the cat lay on a mat", "dogs run fast"]
    ref = np.mean([BLEU(effective_order=True).sentence_score(t, [o for o in texts if o != t]).score / 100 for t in texts])
    assert C.self_bleu(texts) == pytest.approx(ref) and math.isnan(C.self_bleu(texts[:1]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g)
    v = C.vendi_score(x)
    assert 1 <= v <= 5 and C.vendi_score(x[[4, 2, 0, 1, 3]]) == pytest.approx(v)  # order does not matter
    assert C.vendi_score(torch.eye(4)) == pytest.approx(4) and C.vendi_score(x[[0, 0, 0]]) == pytest.approx(1)
    assert C.vendi_score(3 * x) == pytest.approx(v)  # scale-free (cosine similarity)


def test_correctness_and_ngram_overlap():
    assert C.correctness({"text": "q", "answer": 12.0}, "So the answer is 12.") == 1.0
    assert C.correctness({"text": "q", "answer": 12.0}, "It is 13.") == 0.0
    assert math.isnan(C.correctness({"text": "q"}, "anything"))
    corpus = C.ngrams("once upon a time there was a cat", 3)
    assert C.ngram_overlap("once upon a time a dog", corpus, 3) == pytest.approx(2 / 4)
    assert math.isnan(C.ngram_overlap("too short", corpus, 3))


class CountingJudge:
    "A deterministic pairwise judge on ids (longer response wins softly), dying after `die_after` calls if set."
    def __init__(self, die_after=None): self.calls, self.die_after = 0, die_after
    def __call__(self, p, a, b):
        if self.die_after is not None and self.calls >= self.die_after: raise RuntimeError("injected failure")
        self.calls += 1
        return torch.tensor([1 / (1 + math.exp(-(len(x) - len(y)) / 3)) for x, y in zip(a, b)])


def test_labels_complete_resumable_and_consistent(setup, tiny, tmp_path):
    d, grid, _ = setup
    ps, cands = C.read_jsonl(d / "prompts.jsonl"), C.read_jsonl(d / "cand.jsonl")
    embed = lambda texts: torch.stack([torch.tensor([len(t), 1.0 + t.count(" ")]) for t in texts]).float()
    corpus = C.ngrams("a b c d e f g", 2)
    with pytest.raises(RuntimeError, match="injected"):
        C.make_labels(ps, cands, tmp_path / "l.jsonl", tiny[1], CountingJudge(die_after=3), embed, corpus=corpus, ngram_n=2, progress=False)
    assert len(lines(tmp_path / "l.jsonl")) == 6  # the first prompt finished, the second did not
    assert C.make_labels(ps, cands, tmp_path / "l.jsonl", tiny[1], CountingJudge(), embed, corpus=corpus, ngram_n=2, progress=False) == 6
    C.make_labels(ps, cands, tmp_path / "clean.jsonl", tiny[1], CountingJudge(), embed, corpus=corpus, ngram_n=2, progress=False)
    labs = lines(tmp_path / "l.jsonl")
    assert canon(labs) == canon(lines(tmp_path / "clean.jsonl"))
    assert {C.candidate_key(r) for r in labs} == {C.candidate_key(c) for c in cands}
    for p in ps:
        mine = [r for r in labs if r["prompt_id"] == p["id"]]
        assert sum(r["labels"]["quality"] for r in mine) == pytest.approx(0, abs=1e-9)
        assert sum(r["labels"]["wins"] for r in mine) == pytest.approx(sum(r["labels"]["games"] for r in mine) / 2)
        by_len = sorted(mine, key=lambda r: len(next(c for c in cands if C.candidate_key(c) == C.candidate_key(r))["token_ids"]))
        assert by_len[-1]["labels"]["quality"] >= by_len[0]["labels"]["quality"]  # the judge likes length
        for r in mine:
            c = next(c for c in cands if C.candidate_key(c) == C.candidate_key(r))
            assert r["labels"]["correctness"] == pytest.approx(C.correctness(p, c["text"]))
            assert 1 - 1e-9 <= r["labels"]["vendi"] <= 2 + 1e-9


# ---------- stage 5: score and filter ----------
def test_score_labels_weights_topk_and_missing_labels():
    labs = [{"prompt_id": p, "pipeline": f"p{i}", "seed": 0,
             "labels": {"quality": float(i), "correctness": None if p == "b" else float(i % 2), "vendi": 1.0, "self_bleu": None, "ngram_overlap": None}}
            for p in "ab" for i in range(4)]
    out = C.score_labels(labs, {"quality": 1.0}, top_k=2)
    assert len(out) == 8 and sum(r["kept"] for r in out) == 4
    assert {r["pipeline"] for r in out if r["kept"]} == {"p3", "p2"}
    out = C.score_labels(labs, {"quality": 0.0, "correctness": 1.0}, top_k=1)
    a = {r["pipeline"]: r for r in out if r["prompt_id"] == "a"}
    assert a["p1"]["z"]["correctness"] == pytest.approx(1.0) and a["p1"]["rank"] == 0 and a["p1"]["kept"]
    assert all(r["score"] == 0 for r in out if r["prompt_id"] == "b")  # correctness missing for b: contributes 0
    assert C.best_pipeline(C.score_labels(labs, {"quality": 1.0}))[0] == "p3"
    assert C.best_pipeline(C.score_labels(labs, {"quality": -1.0}), ["a"])[0] == "p0"


# ---------- stage 6: replay and train ----------
@pytest.mark.parametrize("spec", [
    [{"name": "temperature", "t": 0.7}, {"name": "min_p", "p": 0.1}],
    [{"name": "repetition_penalty", "penalty": 1.5}, {"name": "top_p", "p": 0.8}],
    [{"name": "no_repeat_ngram", "n": 2}, {"name": "top_k", "k": 7}],
])
def test_replay_targets_match_the_sampling_loop(tiny, spec):
    m, tok = tiny
    pipe = Pipeline.from_spec(spec)
    pids = C.chat_ids(tok, "replay me")
    res = generate(m, [pids], tok, max_new_tokens=16, logits_processor=pipe, seed=5, row_ids=[11], keep_logits="full")
    got = C.replay_targets(res.raw_logits[0].values, pipe, pids, res.token_ids[0], row=11, seed=5)
    torch.testing.assert_close(got, res.processed_logits[0].values, atol=1e-5, rtol=1e-5)


def test_split_prompts():
    ps = [{"id": f"{k}-{i}", "kind": k} for k in "abc" for i in range(4)]
    tr, ho = C.split_prompts(ps, 0.25)
    assert len(ho) == 3 and {p["kind"] for p in ho} == {"a", "b", "c"} and not {p["id"] for p in tr} & {p["id"] for p in ho}
    assert C.split_prompts(ps, 0.25) == (tr, ho)
    assert len(C.split_prompts(ps, 5)[1]) == 5
    with pytest.raises(ValueError, match="holdout"): C.split_prompts(ps[:1], 0.5)


def test_whole_chain_on_tiny_model_via_cli(tmp_path):
    (tmp_path / "c.yaml").write_text(json.dumps(TINY_CFG))
    p = _cli(["all", "--config", str(tmp_path / "c.yaml"), "--dir", str(tmp_path / "w"), "--no-progress"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    w = tmp_path / "w"
    assert [l.split(":")[0] for l in out.splitlines()] == list(C.STAGES)
    assert set(json.loads((w / "timings.json").read_text())) == set(C.STAGES)
    res = json.loads((w / "train" / "comparison.json").read_text())
    assert res["steps"] == 3 and len(res["heldout_prompts"]) == 2 and res["comparison"]["games"] == 4
    assert set(res["comparison"]) == {"win_rate", "games", "network", res["best_pipeline"]}
    assert (w / "train" / "sampler.safetensors").is_file()
    held = lines(w / "train" / "heldout.jsonl")
    assert len(held) == 2 * 2 * 2 and {r["pipeline"] for r in held} == {"network", res["best_pipeline"]}
    before = (w / "candidates.jsonl").read_text()
    p = _cli(["all", "--config", str(tmp_path / "c.yaml"), "--dir", str(w), "--no-progress"])  # rerun: nothing new
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert '"written": 0' in out
    assert (w / "candidates.jsonl").read_text() == before


def test_cli_errors(tmp_path, capsys):
    def run(args):
        try: return C.curate_cli(args)
        except SystemExit as e: return e.code
    assert run(["labels", "--config", str(tmp_path / "nope.yaml")]) == 2 and "nope.yaml" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("seeds: [0]\ntopk: 3\n")
    assert run(["prompts", "--config", str(tmp_path / "c.yaml")]) == 2 and "topk" in capsys.readouterr().err
    assert run(["stage9"]) == 2 and "invalid choice" in capsys.readouterr().err
    (tmp_path / "ok.yaml").write_text(json.dumps(TINY_CFG))
    w = tmp_path / "w"; w.mkdir()
    (w / "prompts.jsonl").write_text('{"id": "a", "kind": "open", "text": "hi"}\n')
    (w / "candidates.jsonl").write_text('{"prompt_id": "a"}\n')
    assert run(["verify", "--config", str(tmp_path / "ok.yaml"), "--dir", str(w)]) == 1
    err = capsys.readouterr().err
    assert "line 1" in err and "missing" in err
    assert json.loads((w / "verify.json").read_text())["ok"] is False
    assert run(["labels", "--config", str(tmp_path / "ok.yaml"), "--dir", str(tmp_path / "empty")]) == 1
    assert "prompts.jsonl" in capsys.readouterr().err


# ---------- the embedded model ----------
@pytest.mark.slow
def test_smoke_chain_on_embedded_model(tmp_path):
    "2 prompts x 3 pipelines x 1 seed, prompts to trained sampler, through the CLI (what CI runs)."
    p = _cli(["all", "--config", str(ROOT / "soft_sampler/data/curation_smoke.yaml"), "--dir", str(tmp_path), "--no-progress"])
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert len(lines(tmp_path / "candidates.jsonl")) == 6
    assert json.loads((tmp_path / "verify.json").read_text())["ok"]
    labs = lines(tmp_path / "labels.jsonl")
    assert all(r["labels"]["correctness"] is not None for r in labs)  # arithmetic + constraint prompts
    res = json.loads((tmp_path / "train" / "comparison.json").read_text())
    assert res["comparison"]["games"] == 1 and 0 <= res["comparison"]["win_rate"] <= 1


@pytest.mark.heavy
def test_full_curation_run_writes_results():
    "The full run (soft_sampler/data/curation_full.yaml); writes results/curation_full.json (make heavy)."
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = _cli(["all", "--config", str(ROOT / "soft_sampler/data/curation_full.yaml"), "--dir", d, "--no-progress"])
        out, err = p.communicate(timeout=3600)
        assert p.returncode == 0, err
        C.write_atomic(ROOT / "results" / "curation_full.json", json.dumps(C.summarise_run(d), indent=1))
