"""Remote generation (#11): the client against a toy in-process server (default tier), against a real
llama-server serving the embedded model (slow tier), and the demonstrations (heavy tier)."""
import json, math
from pathlib import Path

import numpy as np
import pytest
import torch

from soft_sampler.core import tiny_model
from soft_sampler.heuristics import Pipeline
from soft_sampler.qalign import (QAlign, KeepTokens, enumerate_responses, state_histogram, token_logprobs,
                                 total_variation, transition_matrix, tv_noise_quantile)
from soft_sampler.remote import (Completion, RemoteEngine, RemoteServerError, ToyServer, parse_choice, sampling_params)


@pytest.fixture(scope="module")
def toy_setup():
    "A tiny model restricted to three tokens; rewards count the `a`s (as tests/test_qalign.py, other seed)."
    model, tok = tiny_model(hidden_size=16, num_layers=1, seed=1)
    eos, a, b = tok.eos_token_id, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    return dict(model=model, tok=tok, eos=eos, a=a, b=b, prompt=tok("Hi!")["input_ids"], keep=KeepTokens([eos, a, b]))


@pytest.fixture
def toy(toy_setup):
    s = ToyServer(toy_setup["model"], [toy_setup["eos"]], logits_processor=toy_setup["keep"])
    yield s
    s.stop()


def engine(server, **kw):
    return RemoteEngine(server.url, **dict(dict(retries=1, backoff=0.01, timeout=10), **kw))


def count_a(setup):
    return lambda prompts, responses: [float(r.count(setup["a"])) for r in responses]


# ---- requests and validation ---------------------------------------------------------------------------

def test_plain_sampling_is_explicit_for_every_engine():
    ll, vl, oa = (sampling_params(None, e) for e in ("llama.cpp", "vllm", "openai"))
    assert (ll["top_k"], ll["top_p"], ll["min_p"], ll["temperature"], ll["samplers"]) == (0, 1.0, 0.0, 1.0, [])
    assert (vl["top_k"], vl["top_p"], vl["min_p"], vl["temperature"]) == (-1, 1.0, 0.0, 1.0)
    assert (oa["top_p"], oa["temperature"]) == (1.0, 1.0)


def test_pipeline_goes_through_to_request_or_is_refused(toy_setup, toy):
    p = Pipeline([{"name": "temperature", "t": 0.5}, {"name": "top_k", "k": 3}])
    assert sampling_params(p)["samplers"] == ["temperature", "top_k"] and sampling_params(p)["temperature"] == 0.5
    with pytest.raises(TypeError, match="cannot run on a server"):
        engine(toy).sample_suffixes(toy_setup["prompt"], [[]], 3, [toy_setup["eos"]], torch.tensor([0]), pipeline=toy_setup["keep"])
    with pytest.raises(ValueError, match="fixed order"):
        sampling_params(Pipeline([{"name": "top_p", "p": 0.9}, {"name": "temperature", "t": 0.5}]), "vllm")
    qa = QAlign(engine(toy), count_a(toy_setup), stop_token_ids=[toy_setup["eos"]])
    with pytest.raises(TypeError, match="cannot run on a server"):  # QAlign unchanged: the engine refuses
        qa.run(toy_setup["prompt"], chains=1, steps=1, max_new_tokens=3, pipeline=toy_setup["keep"], progress=False)
    assert len(toy.requests) == 0


@pytest.mark.parametrize("kw, match", [(dict(url="localhost:8080"), "url must start"), (dict(engine="tgi"), "engine must be one of"),
                                       (dict(concurrency=0), "concurrency must be"), (dict(prompts_per_request=1.5), "prompts_per_request"),
                                       (dict(timeout=0), "timeout must be > 0"), (dict(retries=-1), "retries")])
def test_engine_validates_its_arguments(kw, match):
    with pytest.raises(ValueError, match=match): RemoteEngine(**dict(dict(url="http://127.0.0.1:1"), **kw))


def test_parse_choice_reads_both_formats_and_refuses_text_tokens():
    assert parse_choice({"finish_reason": "stop", "logprobs": {"content": [{"id": 3, "logprob": -0.25}]}}) == Completion([3], [-0.25], "stop")
    assert parse_choice({"finish_reason": "length", "logprobs": {"tokens": ["token_id:9"], "token_logprobs": [-1.5]}}) == Completion([9], [-1.5], "length")
    with pytest.raises(ValueError, match="return_tokens_as_token_ids"): parse_choice({"logprobs": {"tokens": ["x"], "token_logprobs": [0.0]}})
    with pytest.raises(ValueError, match="logprobs=1"): parse_choice({"finish_reason": "stop"})


def test_payload_per_engine(toy_setup, toy):
    for eng, key in (("vllm", "return_tokens_as_token_ids"), ("llama.cpp", "cache_prompt")):
        toy.requests.clear()
        engine(toy, engine=eng, model="m").sample_suffixes(toy_setup["prompt"], [[]], 2, [toy_setup["eos"]], torch.tensor([0]))
        body = toy.requests[0]
        assert body[key] is True and body["model"] == "m" and body["logprobs"] == 1 and body["prompt"] == toy_setup["prompt"]


# ---- batching, seeds, stop handling ----------------------------------------------------------------------

def test_rows_are_grouped_per_request_and_seeded_only_alone(toy_setup, toy):
    e = engine(toy, prompts_per_request=3, concurrency=2)
    out = e.sample_suffixes(toy_setup["prompt"], [[]] * 7, 4, [toy_setup["eos"]], torch.arange(7))
    assert len(out) == 7 and sorted(len(r["prompt"]) if isinstance(r["prompt"][0], list) else 1 for r in toy.requests) == [1, 3, 3]
    assert all(("seed" in r) == (not isinstance(r["prompt"][0], list)) for r in toy.requests)


def test_seeded_rows_reproduce_and_differ(toy_setup, toy):
    e, args = engine(toy), (toy_setup["prompt"], [[]] * 6, 4, [toy_setup["eos"]], torch.arange(6))
    a = e.sample_suffixes(*args, seed=3)
    assert a == e.sample_suffixes(*args, seed=3) and len({tuple(r) for r in a}) > 1
    seeds = [r["seed"] for r in toy.requests]  # arrival order varies with concurrency: compare as multisets
    assert sorted(seeds[: len(seeds) // 2]) == sorted(seeds[len(seeds) // 2:]) and len(set(seeds)) == len(seeds) // 2


def test_budget_cut_and_prefix_rows(toy_setup, toy):
    "Rows with different prefixes share a request with the largest budget; each is cut to its own."
    a, b, eos = toy_setup["a"], toy_setup["b"], toy_setup["eos"]
    prefixes = [[], [a], [a, b], [a, b, a]]
    out = engine(toy, prompts_per_request=4).sample_suffixes(toy_setup["prompt"], prefixes, 4, [eos], torch.arange(4))
    assert toy.requests[0]["max_tokens"] == 4
    for p, s in zip(prefixes, out):
        assert 1 <= len(s) <= 4 - len(p) and (s[-1] == eos or len(p) + len(s) == 4) and eos not in s[:-1]


def test_server_stops_differ_from_the_chains(toy_setup):
    "The server ends rows on `a` (its EOG), the chain only on EOS: rows are continued; the chain's extra stop `b` cuts."
    m, keep, eos, a, b = (toy_setup[k] for k in ("model", "keep", "eos", "a", "b"))
    with ToyServer(m, [eos, a], logits_processor=keep) as s:
        out = engine(s).sample_suffixes(toy_setup["prompt"], [[]] * 30, 6, [eos], torch.arange(30), seed=1)
        assert any(a in r[:-1] for r in out) and len(s.requests) > 30
        assert all(r[-1] == eos or len(r) == 6 for r in out)
    with ToyServer(m, [eos], logits_processor=keep) as s:
        out = engine(s).sample_suffixes(toy_setup["prompt"], [[]] * 30, 6, [eos, b], torch.arange(30), seed=1)
        assert all(t not in (eos, b) for r in out for t in r[:-1]) and any(r[-1] == b for r in out)


def test_generate_returns_logprobs_of_the_model(toy_setup, toy):
    g = engine(toy, tokenizer=toy_setup["tok"]).generate([toy_setup["prompt"]] * 2, max_new_tokens=5, n=2, seed=2)
    assert len(g) == 4 and g.row_ids == [0, 1, 2, 3] and len(g.texts) == 4
    for p, t, lp in zip(g.prompt_ids, g.token_ids, g.logprobs):
        ref = token_logprobs(toy_setup["model"], p, [t], toy_setup["keep"])[0]
        assert torch.allclose(lp, torch.tensor(ref, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ValueError, match="stop_token_ids"): engine(toy).generate([toy_setup["prompt"]])


# ---- failures --------------------------------------------------------------------------------------------

def test_retries_then_clear_errors(toy_setup, toy):
    e, args = engine(toy, retries=2), (toy_setup["prompt"], [[]], 3, [toy_setup["eos"]], torch.tensor([0]))
    toy.fail_next(2); assert len(e.sample_suffixes(*args)) == 1 and len(toy.requests) == 3
    toy.fail_next(3)
    with pytest.raises(RemoteServerError, match=f"{toy.url}/v1/completions kept failing after 2 retries"): e.sample_suffixes(*args)
    toy.fail_next(1, status=400)
    with pytest.raises(RemoteServerError, match="answered HTTP 400"): e.sample_suffixes(*args)
    toy.delay = 0.3
    with pytest.raises(RemoteServerError, match="did not answer within 0.1 s"): engine(toy, retries=0, timeout=0.1).sample_suffixes(*args)
    toy.delay = 0.0; toy.stop()
    with pytest.raises(RemoteServerError, match=f"{toy.url}/v1/completions is unreachable.*is it running"): e.sample_suffixes(*args)


def test_killed_server_leaves_a_resumable_checkpoint(toy_setup, tmp_path):
    "The server dies after step 2: a clear error, steps 0-2 on disk; a new server completes the run identically."
    m, keep, eos = toy_setup["model"], toy_setup["keep"], toy_setup["eos"]
    kw = dict(chains=3, steps=6, max_new_tokens=4, seed=4, progress=False)
    with ToyServer(m, [eos], logits_processor=keep) as s:
        full = QAlign(engine(s), count_a(toy_setup), stop_token_ids=[eos]).run(toy_setup["prompt"], **kw)
    s, calls = ToyServer(m, [eos], logits_processor=keep), []
    def dying(p, r):
        calls.append(1)
        if len(calls) == 3: s.stop()  # after scoring step 2, the server is gone
        return count_a(toy_setup)(p, r)
    ck = tmp_path / "chain.jsonl"
    with pytest.raises(RemoteServerError, match=f"{s.url}/v1/completions is unreachable"):
        QAlign(engine(s), dying, stop_token_ids=[eos]).run(toy_setup["prompt"], checkpoint=ck, **kw)
    assert [json.loads(l).get("t") for l in ck.read_text().splitlines()[1:]] == [0, 1, 2]
    with ToyServer(m, [eos], logits_processor=keep) as s2:
        res = QAlign(engine(s2), count_a(toy_setup), stop_token_ids=[eos]).run(toy_setup["prompt"], checkpoint=ck, **kw)
        assert len(s2.requests) == 4 * 3  # only steps 3..6 were generated (3 chains, seeded: one request per row... at least)
    assert res.states == full.states and res.accepted == full.accepted


# ---- exactness on an enumerable space --------------------------------------------------------------------

def test_remote_chain_follows_the_exact_kernel(toy_setup):
    """N remote chains at step T are N iid draws from p·K^T (K: QAlign's exact kernel on the enumerated space).
    Their TV to p·K^T stays under the 99.9% sampling-noise quantile; a server that samples at temperature 0.5
    instead of plain sampling (what default server settings do to a chain) lands far outside it."""
    m, keep, eos, a, b = (toy_setup[k] for k in ("model", "keep", "eos", "a", "b"))
    space, N, T, beta = enumerate_responses([eos, a, b], [eos], 4), 4000, 6, 2.0
    lps = token_logprobs(m, toy_setup["prompt"], space, keep)
    K = transition_matrix(space, lps, count_a(toy_setup)(None, space), beta)
    target = np.exp([sum(l) for l in lps]) @ np.linalg.matrix_power(K, T)
    threshold = tv_noise_quantile(target, N, draws=1000)
    tvs = {}
    for name, proc in (("plain", keep), ("cold", lambda ids, s: keep(ids, s) / 0.5)):
        with ToyServer(m, [eos], logits_processor=proc) as s:
            r = QAlign(engine(s, prompts_per_request=N, concurrency=1), count_a(toy_setup), beta=beta, stop_token_ids=[eos]).run(
                toy_setup["prompt"], chains=N, steps=T, max_new_tokens=4, seed=5, progress=False)
        tvs[name] = total_variation(state_histogram([c[T] for c in r.states], space), target)
    assert tvs["plain"] < threshold and tvs["cold"] > 1.5 * threshold, (tvs, threshold)


def test_qalign_cli_proposes_from_a_server(tmp_path, capsys):
    "`soft-sampler qalign --server URL --model DIR`: proposals come from the server, only the tokenizer is loaded locally."
    from soft_sampler.qalign import qalign_cli
    model, tok = tiny_model(hidden_size=16, num_layers=1, seed=2)
    model.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    with ToyServer(model, [tok.eos_token_id]) as s:
        assert qalign_cli(["--server", s.url, "--model", str(tmp_path), "--reward", "brevity", "--chains", "2",
                           "--steps", "2", "--max-new-tokens", "6", "--no-progress"]) == 0
        assert len(s.requests) >= 2 + 2 * 2, "initial states and every proposal went to the server"
    out = capsys.readouterr().out
    assert "acceptance rate" in out and out.count("chain ") == 2 and "best_of_n" in out
    for bad, msg in ((["--server", s.url, "--llama-server"], "not both"), (["--llama-server", "--model", str(tmp_path)], "leave out --model")):
        with pytest.raises(SystemExit): qalign_cli(bad)
        assert msg in capsys.readouterr().err


# ---- slow: a real llama-server serving the embedded model -------------------------------------------------

CHAT = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.mark.slow
def test_real_server_logprobs_match_the_local_model(real, llama):
    "Q4_1 weights x 8-bit activations on the server vs de-quantised fp32 locally: ~0.04 nats (FACTS.md)."
    model, tok = real
    g = RemoteEngine(llama.url, tokenizer=tok).generate(CHAT, max_new_tokens=24, n=4, seed=1)
    ref = [torch.tensor(token_logprobs(model, p, [t])[0], dtype=torch.float64) for p, t in zip(g.prompt_ids, g.token_ids)]
    d, lp = torch.cat([(a - b).abs() for a, b in zip(g.logprobs, ref)]), torch.cat(ref)
    assert len(d) >= 40 and d.median() < 0.08 and d.max() < 0.6, (d.median(), d.max())
    assert d[lp > -1].mean() < 0.05  # probable tokens agree best
    assert all(t[-1] == tok.eos_token_id or len(t) == 24 for t in g.token_ids)


@pytest.mark.slow
def test_real_server_samples_plainly_and_reproducibly(real, llama):
    """With llama-server's defaults (min_p 0.05, top_k 40, top_p 0.95) a first token below 0.05·p_max is impossible.
    Plain sampling draws one with probability m per sample (m from the local model): enough samples must hit one."""
    model, tok = real
    e = RemoteEngine(llama.url, tokenizer=tok)
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad(): p = model(torch.tensor([ids])).logits[0, -1].double().softmax(-1)
    rare = p < 0.05 * p.max()
    m = float(p[rare].sum())
    n = min(400, math.ceil(math.log(1e-6) / math.log(1 - m)))
    firsts = [s[0] for s in e.sample_suffixes(ids, [[]] * n, 1, [tok.eos_token_id], torch.arange(n), seed=2)]
    assert m > 0.05 and any(rare[t] for t in firsts), (m, n)
    again = e.sample_suffixes(ids, [[]] * 4, 8, [tok.eos_token_id], torch.arange(4), seed=7)
    assert again == e.sample_suffixes(ids, [[]] * 4, 8, [tok.eos_token_id], torch.arange(4), seed=7)


@pytest.mark.slow
def test_real_server_greedy_matches_until_a_near_tie(real, llama):
    from soft_sampler.sampling import generate
    model, tok = real
    remote = RemoteEngine(llama.url, tokenizer=tok).generate(CHAT, max_new_tokens=24, pipeline=Pipeline([{"name": "top_k", "k": 1}])).token_ids[0]
    local = generate(model, CHAT, tok, max_new_tokens=24, do_sample=False)
    k = next((i for i, (x, y) in enumerate(zip(remote, local.token_ids[0])) if x != y), None)
    if k is None: assert remote == local.token_ids[0]; return
    assert k >= 5
    with torch.no_grad(): top = model(torch.tensor([local.prompt_ids[0] + remote[:k]])).logits[0, -1].log_softmax(-1).topk(2).values
    assert float(top[0] - top[1]) < 0.2, (k, top)  # the two models only part ways where the top two nearly tie


@pytest.mark.slow
def test_real_server_killed_mid_run_resumes_from_checkpoint(real, tmp_path):
    from soft_sampler.remote import LlamaServer, llama_server_path, build_llama_server
    from soft_sampler.rewards import VaderSentiment
    model, tok = real
    if not llama_server_path().is_file(): build_llama_server()
    vader, calls, ck = VaderSentiment(tokenizer=tok), [], tmp_path / "chains.jsonl"
    kw = dict(chains=2, steps=4, max_new_tokens=16, seed=0, checkpoint=ck, progress=False)
    srv = LlamaServer().start()
    def dying(p, r):
        calls.append(1)
        if len(calls) == 3: srv.stop()
        return vader(p, r)
    try:
        with pytest.raises(RemoteServerError, match=f"{srv.url}/v1/completions is unreachable.*is it running"):
            QAlign(RemoteEngine(srv.url, tokenizer=tok, retries=1, backoff=0.05), dying, beta=0.2, tokenizer=tok).run(CHAT, **kw)
    finally: srv.stop()
    before = [json.loads(l) for l in ck.read_text().splitlines()[1:]]
    assert [r["t"] for r in before] == [0, 1, 2]
    with LlamaServer() as srv2:
        # the same reward as the crashed run (the checkpoint header checks it); it no longer stops a server
        res = QAlign(RemoteEngine(srv2.url, tokenizer=tok), dying, beta=0.2, tokenizer=tok).run(CHAT, **kw)
    assert res.steps == 4 and [res.states[c][:3] for c in range(2)] == [[r["states"][c] for r in before] for c in range(2)]


@pytest.mark.slow
def test_qalign_cli_with_its_own_llama_server(llama, capsys):
    "`soft-sampler qalign --llama-server` starts the cached llama-server on the embedded model, runs, and stops it."
    from soft_sampler.qalign import qalign_cli
    assert qalign_cli(["--llama-server", "--chains", "2", "--steps", "2", "--max-new-tokens", "12", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "acceptance rate" in out and out.count("chain ") == 2 and "weighted_majority_vote" in out


# ---- heavy: the demonstrations (regenerate results/remote_*.json) -----------------------------------------

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="module")
def llama():
    "A llama-server serving the embedded model on a free loopback port; built once if missing (~5 min on 2 cores)."
    from soft_sampler.remote import LlamaServer, build_llama_server, llama_server_path
    if not llama_server_path().is_file(): build_llama_server()
    with LlamaServer() as srv: yield srv


@pytest.mark.heavy
def test_heavy_arithmetic_demo(real, llama):
    "~9 min on a shared 2-core machine: 18 problems (3 per operation), QAlign 4 chains x 8 steps vs the same token budget of samples."
    from soft_sampler.remote import arithmetic_demo
    model, tok = real
    obj = arithmetic_demo(RemoteEngine(llama.url, tokenizer=tok), tok, RESULTS / "remote_arithmetic.json")
    assert len(obj["records"]) == 18 and (RESULTS / "remote_arithmetic.json").is_file()


@pytest.mark.heavy
def test_heavy_sentiment_demo(real, llama):
    "~5 min: 2 prompts, 4 chains x 20 steps towards positive VADER sentiment; fluency from the local model."
    from soft_sampler.remote import sentiment_demo
    model, tok = real
    torch.set_num_threads(1)
    obj = sentiment_demo(RemoteEngine(llama.url, tokenizer=tok), model, tok, RESULTS / "remote_sentiment.json")
    assert len(obj["records"]) == 2
