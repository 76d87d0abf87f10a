"""Engines (#22): the vLLM logits processor's bookkeeping with hand-made batch updates (default tier); SGLang's own
base class from its wheel, and a real vLLM server (one per test session) serving the embedded model (slow tier)."""
import json, math, os, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch

from soft_sampler.heuristics import Pipeline, VLLM_PIPELINE_ARG, to_request
from soft_sampler.engines import (VLLMLogitsProcessor, VLLM_EXTRAS, VLLM_ROW_ARG, parse_request, vllm_request,
                                  vllm_installed, vllm_unsupported)

ROOT = Path(__file__).resolve().parents[1]


def spec(steps): return {VLLM_PIPELINE_ARG: json.dumps(steps)}
def upd(removed=(), added=(), moved=()): return NS(batch_size=0, removed=list(removed), added=list(added), moved=list(moved))
def req(args, prompt, out, seed=None): return NS(extra_args=args, seed=seed), prompt, out
MOVE, SWAP = NS(name="UNIDIRECTIONAL"), NS(name="SWAP")


# ---- default tier: the processor's bookkeeping ------------------------------------------------------------

def test_vllm_extras_are_the_projects_pins():
    pins = dict(l.split("==") for l in (ROOT / "constraints.txt").read_text().split() if "==" in l)
    for p in VLLM_EXTRAS:
        name, v = p.split("==")
        assert pins[name] == v, (p, pins.get(name))


def test_rows_follow_removes_adds_moves_and_swaps():
    "Each row's pipeline is its own request's, whatever vLLM does to the slots (a mismatch would ban the wrong ids)."
    proc, outs = VLLMLogitsProcessor(), {k: [] for k in "abcd"}
    nr = spec([{"name": "no_repeat_ngram", "n": 1}])
    proc.update_state(upd(added=[(0, *req(nr, [1], outs["a"])), (1, *req(None, [2], outs["b"])), (2, *req(nr, [3], outs["c"]))]))
    outs["a"].append(4); outs["c"].append(5)
    proc.update_state(upd(moved=[(0, 2, SWAP)]))  # a <-> c
    banned = lambda x: [torch.isinf(r).nonzero().flatten().tolist() for r in x]
    assert banned(proc.apply(torch.zeros(3, 10))) == [[3, 5], [], [1, 4]]
    proc.update_state(upd(removed=[2], added=[(3, *req(nr, [6], outs["d"]))], moved=[(3, 2, MOVE)]))  # a leaves, d lands in 2
    assert banned(proc.apply(torch.zeros(3, 10))) == [[3, 5], [], [6]]
    proc.update_state(upd(added=[(0, *req({"other": 1}, [7], []))]))  # a request without our arguments replaces c
    assert banned(proc.apply(torch.zeros(3, 10))) == [[], [], [6]]
    proc.update_state(None)  # unchanged batch
    assert set(proc.rows) == {2}


def test_mirostat_state_follows_its_request_through_moves():
    "μ per request across a swap equals the μ of the same request alone (one-row reference)."
    g = torch.Generator().manual_seed(0)
    steps = [[torch.randn(1, 50, generator=g) * 3 for _ in range(6)] for _ in range(2)]
    mir = spec([{"name": "mirostat", "tau": 3.0, "eta": 0.5}])
    def alone(r):
        proc, out, got = VLLMLogitsProcessor(), [], []
        proc.update_state(upd(added=[(0, *req(mir, [1], out))]))
        for t in range(6):
            x = proc.apply(steps[r][t].clone()); got.append(x); out.append(int(x.argmax()))
        return got
    ref = [alone(0), alone(1)]
    proc, outs = VLLMLogitsProcessor(), [[], []]
    proc.update_state(upd(added=[(0, *req(mir, [1], outs[0])), (1, *req(mir, [1], outs[1]))]))
    slot = [0, 1]
    for t in range(6):
        if t in (2, 4): proc.update_state(upd(moved=[(0, 1, SWAP)])); slot = slot[::-1]
        x = torch.cat([steps[slot.index(0)][t], steps[slot.index(1)][t]])
        y = proc.apply(x.clone())
        for r in range(2):
            assert torch.equal(y[slot[r]], ref[r][t][0]), (t, r)
            outs[r].append(int(y[slot[r]].argmax()))


def test_bad_arguments_are_rejected_by_name():
    for args, match in [(spec([{"name": "top_p", "p": 1.5}]), "soft_sampler_pipeline"), ({VLLM_PIPELINE_ARG: "{"}, "soft_sampler_pipeline"),
                        ({VLLM_PIPELINE_ARG: 3}, "must be a JSON string"), ({VLLM_ROW_ARG: 1.5, **spec([])}, "soft_sampler_row"),
                        ({"soft_sampler_network": "/nonexistent.safetensors"}, "soft_sampler_network")]:
        with pytest.raises(ValueError, match=match): VLLMLogitsProcessor.validate_params(NS(extra_args=args))
    VLLMLogitsProcessor.validate_params(NS(extra_args=None))  # requests without our arguments pass


def test_in_engine_request_carries_any_pipeline():
    p = Pipeline([{"name": "dry", "multiplier": 0.8}, {"name": "top_p", "p": 0.9}, {"name": "temperature", "t": 0.6}])
    r = to_request(p, "vllm", in_engine=True)
    assert Pipeline.from_spec(json.loads(r["vllm_xargs"][VLLM_PIPELINE_ARG])).to_spec() == p.to_spec()
    assert (r["temperature"], r["top_k"], r["top_p"], r["min_p"], r["repetition_penalty"]) == (1.0, -1, 1.0, 0.0, 1.0)
    assert "vllm_xargs" not in to_request(Pipeline([]), "vllm", in_engine=True)
    with pytest.raises(ValueError, match="cannot express"): to_request(p, "vllm")  # the native subset cannot say it
    from soft_sampler.remote import sampling_params
    assert sampling_params(p, "vllm-processor") == r


# ---- slow tier: SGLang's own base class, from its wheel ---------------------------------------------------

SGLANG_VERSION = "0.5.23"


@pytest.fixture(scope="session")
def sglang_file():
    "SGLang's custom_logit_processor.py, taken from its wheel (downloaded once into the project cache)."
    import zipfile
    from soft_sampler.core import cache_dir
    d = cache_dir() / "sglang" / SGLANG_VERSION
    src = d / "sglang" / "srt" / "sampling" / "custom_logit_processor.py"
    if not src.is_file():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"sglang=={SGLANG_VERSION}", "-d", str(d)], check=True)
        with zipfile.ZipFile(next(d.glob("sglang-*.whl"))) as z: z.extract("sglang/srt/sampling/custom_logit_processor.py", d)
    return src


SGLANG_CHECK = r'''
import importlib.util, json, sys, types, torch
spec = importlib.util.spec_from_file_location("sglang.srt.sampling.custom_logit_processor", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
for name in ("sglang", "sglang.srt", "sglang.srt.sampling"): sys.modules[name] = types.ModuleType(name)
sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
from soft_sampler.engines import SGLangLogitsProcessor
from soft_sampler.heuristics import Pipeline
assert issubclass(SGLangLogitsProcessor, mod.CustomLogitProcessor) and SGLangLogitsProcessor.__mro__[1] is mod.CustomLogitProcessor
proc = mod.CustomLogitProcessor.from_str(SGLangLogitsProcessor.to_str())   # SGLang's own round trip
assert type(proc).__name__ == "SGLangLogitsProcessor"
g = torch.Generator().manual_seed(0); x = torch.randn(3, 40, generator=g)
p1 = [{"name": "repetition_penalty", "penalty": 1.5}, {"name": "top_k", "k": 5}]
p2 = [{"name": "min_p", "p": 0.2}, {"name": "temperature", "t": 0.5}]
reqs = [types.SimpleNamespace(origin_input_ids=[1, 2], output_ids=[3]), types.SimpleNamespace(origin_input_ids=[4], output_ids=[])]
out = proc(x.clone(), [{"pipeline": p1, "__req__": reqs[0]}, None, {"pipeline": json.dumps(p2), "__req__": reqs[1]}])
ref0 = Pipeline(p1)(torch.tensor([[1, 2, 3]]), x[:1])
ref2 = Pipeline(p2)(torch.tensor([[4]]), x[2:])
assert torch.equal(out[0], ref0[0]) and torch.equal(out[1], x[1]) and torch.equal(out[2], ref2[0])
print("ok")
'''


@pytest.mark.slow
def test_sglang_processor_against_sglangs_own_base_class(sglang_file):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    r = subprocess.run([sys.executable, "-c", SGLANG_CHECK, str(sglang_file)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


# ---- slow tier: a real vLLM server ------------------------------------------------------------------------

@pytest.mark.slow
def test_vllm_is_installed_where_it_can_be():
    "On Linux x86-64 the vLLM tests must not be skipped: `make test` installs vLLM first (`make vllm`)."
    if (why := vllm_unsupported()): pytest.skip(why)
    assert vllm_installed(), "vLLM's environment is missing: run `make vllm`"


@pytest.fixture(scope="session")
def vllm(tmp_path_factory):
    "ONE vLLM server per test session (60-90 s to start here, 3 min loaded), on the embedded model, with our processor."
    from soft_sampler.engines import VLLMServer, build_vllm
    if (why := vllm_unsupported()): pytest.skip(why)
    if os.environ.get("SOFT_SAMPLER_VLLM_URL"):  # reuse a server started with VLLMServer() (development)
        s = VLLMServer.__new__(VLLMServer); s.url, s.name, s.proc = os.environ["SOFT_SAMPLER_VLLM_URL"], "soft_sampler", None
        yield s; return
    if not vllm_installed(): build_vllm()
    trace = tmp_path_factory.mktemp("vllm") / "batch_updates.jsonl"  # the processor logs every batch update here
    os.environ["SOFT_SAMPLER_VLLM_TRACE"] = str(trace)
    try:
        with VLLMServer() as s: s.trace = trace; yield s
    finally: os.environ.pop("SOFT_SAMPLER_VLLM_TRACE", None)


@pytest.fixture(scope="module")
def local(real):
    "The embedded model (fp32, transformers) and a prompt."
    model, tok = real
    ids = tok.apply_chat_template([{"role": "user", "content": "Write one sentence about the sea."}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    return model, tok, list(ids)


def post(server, body):
    import requests
    return requests.post(server.url + "/v1/completions", json={"model": server.name, "logprobs": 20, "stream": False,
                                                              "return_tokens_as_token_ids": True, **body}, timeout=600)


def steps_of(choice):
    "Per step: the sampled id, its log-prob, and {id: log-prob} of the top 20 (vLLM clamps -inf to -9999)."
    lp = choice["logprobs"]
    ids = [int(t.split(":")[1]) for t in lp["tokens"]]
    tops = [{int(k.split(":")[1]): v for k, v in d.items()} for d in lp["top_logprobs"]]
    return ids, lp["token_logprobs"], tops


def local_steps(model, prompt, ids, pipeline=None, network=None):
    "Our pipeline (fresh state) applied to the local model's logits at each step of the engine's response."
    from soft_sampler.sampling import StepContext
    with torch.no_grad(): logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:].float()
    out = []
    for t in range(len(ids)):
        x = logits[t:t + 1]
        if network is not None:
            with torch.no_grad(): x = network(x)
        if pipeline is not None:
            x = pipeline.with_ctx(torch.tensor([prompt + ids[:t]]), x, StepContext(torch.tensor([len(prompt)]), torch.tensor([0]), 0, 0))
        out.append(x[0].log_softmax(-1))
    return out


def compare(choice, model, prompt, pipeline=None, network=None):
    "Largest |engine − local| log-prob of the sampled tokens and of the top 20; kept-set differences (count)."
    ids, lps, tops = steps_of(choice)
    ref = local_steps(model, prompt, ids, None if pipeline is None else Pipeline.from_spec(pipeline.to_spec()), network)
    d_tok, d_top, flips = 0.0, 0.0, 0
    for t, (i, lp, top) in enumerate(zip(ids, lps, tops)):
        d_tok = max(d_tok, abs(lp - float(ref[t][i])))
        for k, v in top.items():
            r = float(ref[t][k])
            if (v <= -9999) != (r == -math.inf): flips += 1  # kept by one side only (a token at the cut)
            elif v > -9999: d_top = max(d_top, abs(v - r))
    return d_tok, d_top, flips, len(ids)


PIPELINES = {
    "top_k+temperature": [{"name": "top_k", "k": 12}, {"name": "temperature", "t": 0.7}],
    "min_p+top_p (reversed vLLM order)+temperature": [{"name": "top_p", "p": 0.9}, {"name": "min_p", "p": 0.05}, {"name": "temperature", "t": 1.3}],
    "penalties+no_repeat_ngram": [{"name": "repetition_penalty", "penalty": 1.3}, {"name": "presence_penalty", "penalty": 0.5},
                                  {"name": "no_repeat_ngram", "n": 2}, {"name": "top_k", "k": 15}],
    "dry+typical+eta": [{"name": "dry", "multiplier": 0.8, "allowed_length": 1}, {"name": "typical", "p": 0.9}, {"name": "eta", "eps": 0.002}],
    "top_n_sigma+mirostat": [{"name": "top_n_sigma", "n": 2.0}, {"name": "mirostat", "tau": 3.0, "eta": 0.3}],
}
TOL = 1e-3  # fp32 vLLM (its CPU kernels) vs fp32 transformers: measured <= 5e-5 nats on processed log-probs (5 pipelines x 3 seeds)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PIPELINES))
def test_processed_logprobs_equal_our_pipeline(vllm, local, name):
    model, tok, prompt = local
    pipe = Pipeline(PIPELINES[name])
    r = post(vllm, {"prompt": prompt, "max_tokens": 16, "seed": 5, **vllm_request(pipe)})
    assert r.status_code == 200, r.text
    d_tok, d_top, flips, n = compare(r.json()["choices"][0], model, prompt, pipe)
    assert n >= 8 and d_tok < TOL and d_top < TOL and flips <= 1, (name, d_tok, d_top, flips, n)


@pytest.mark.slow
def test_sampler_network_runs_in_the_engine(vllm, local, tmp_path):
    from soft_sampler.networks import SamplingNetwork
    model, tok, prompt = local
    net = SamplingNetwork(seed=3)
    with torch.no_grad():
        net.head_out.normal_(0, 0.5, generator=torch.Generator().manual_seed(1)); net.scale.fill_(1.4)
        net.gates.set_cut("log_rank", math.log(30))
    path = net.save(tmp_path / "net.safetensors")
    pipe = Pipeline([{"name": "temperature", "t": 0.8}])
    r = post(vllm, {"prompt": prompt, "max_tokens": 12, "seed": 2, **vllm_request(pipe, network=path)})
    assert r.status_code == 200, r.text
    d_tok, d_top, flips, n = compare(r.json()["choices"][0], model, prompt, pipe, net.eval())
    raw = compare(r.json()["choices"][0], model, prompt, pipe)  # without the network: far off
    assert d_tok < TOL and d_top < TOL and flips <= 1 and raw[0] > 0.05, (d_tok, d_top, flips, raw)


@pytest.mark.slow
def test_mixed_concurrent_batch_stays_row_correct_through_moves(vllm, local):
    """Twelve concurrent requests (with and without our arguments, different pipelines, different lengths so rows
    finish and vLLM compacts its batch) — every row's log-probs are its own pipeline's on its own history."""
    model, tok, prompt = local
    names = list(PIPELINES) + [None]
    jobs = [(names[k % len(names)], 4 + 3 * (k % 5), k) for k in range(12)]
    def one(job):
        name, n, seed = job
        body = vllm_request(Pipeline(PIPELINES[name])) if name else to_request(Pipeline([]), "vllm")
        return post(vllm, {"prompt": prompt, "max_tokens": n, "seed": seed, **body})
    seen = len(vllm.trace.read_text().splitlines()) if getattr(vllm, "trace", None) and vllm.trace.exists() else None
    with ThreadPoolExecutor(12) as pool: rs = list(pool.map(one, jobs))
    if seen is not None:  # the batch really was compacted while our rows were in it
        ups = [json.loads(l) for l in vllm.trace.read_text().splitlines()[seen:]]
        assert any(u["moved"] for u in ups) and any(u["removed"] for u in ups), ups[:5]
    for (name, n, seed), r in zip(jobs, rs):
        assert r.status_code == 200, r.text
        d_tok, d_top, flips, _ = compare(r.json()["choices"][0], model, prompt, Pipeline(PIPELINES[name]) if name else None)
        assert d_tok < TOL and d_top < TOL and flips <= 1, (name, seed, d_tok, d_top, flips)


@pytest.mark.slow
def test_bad_specs_get_http_400_naming_the_parameter(vllm, local):
    model, tok, prompt = local
    for xargs, word in [({VLLM_PIPELINE_ARG: '[{"name": "top_p", "p": 3}]'}, "soft_sampler_pipeline"),
                        ({VLLM_PIPELINE_ARG: '[{"name": "warp_drive"}]'}, "unknown step"),
                        ({"soft_sampler_network": "/nonexistent.safetensors"}, "soft_sampler_network")]:
        r = post(vllm, {"prompt": prompt, "max_tokens": 2, "vllm_xargs": xargs})
        assert r.status_code == 400 and word in r.text, (r.status_code, r.text[:300])
    assert post(vllm, {"prompt": prompt, "max_tokens": 2}).status_code == 200  # the server is fine afterwards


@pytest.mark.slow
def test_remote_engine_on_vllm_matches_the_local_model(vllm, local):
    "Token ids in and out, n rows, seeds: the proposal's log-probs are the local fp32 model's (far closer than llama-server's 0.04)."
    from soft_sampler.qalign import token_logprobs
    from soft_sampler.remote import RemoteEngine
    model, tok, prompt = local
    e = vllm.engine(tok)
    g = e.generate([{"role": "user", "content": "Write one sentence about the sea."}], max_new_tokens=20, n=4, seed=1)
    ref = [torch.tensor(token_logprobs(model, p, [t])[0], dtype=torch.float64) for p, t in zip(g.prompt_ids, g.token_ids)]
    d = torch.cat([(a - b).abs() for a, b in zip(g.logprobs, ref)])
    assert len(d) >= 40 and d.max() < TOL, (d.median(), d.max())
    again = e.generate([{"role": "user", "content": "Write one sentence about the sea."}], max_new_tokens=20, n=4, seed=1)
    assert again.token_ids == g.token_ids and len(set(map(tuple, g.token_ids))) > 1  # seeded per row, rows differ


@pytest.mark.slow
def test_qalign_cli_against_vllm(vllm, capsys):
    from soft_sampler.qalign import qalign_cli
    assert qalign_cli(["--server", vllm.url, "--engine", "vllm", "--served-model", vllm.name, "--chains", "2", "--steps", "2",
                       "--max-new-tokens", "12", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "acceptance rate" in out and out.count("chain ") == 2


@pytest.mark.slow
def test_curation_candidates_run_their_pipeline_in_the_engine(vllm, local, tmp_path):
    "A pipeline vLLM cannot express natively (no_repeat_ngram, then greedy) runs in the engine: the local loop's tokens."
    from soft_sampler.curation import RemoteCandidates, make_candidates
    from soft_sampler.sampling import generate
    model, tok, prompt = local
    pipe = Pipeline([{"name": "no_repeat_ngram", "n": 1}, {"name": "top_k", "k": 1}])
    prompts = [{"id": "p0", "text": "Name three colours."}, {"id": "p1", "text": "Say hello in French."}]
    eng = RemoteCandidates([vllm.url], tok, max_new_tokens=12, server="vllm-processor")
    out = tmp_path / "cands.jsonl"
    assert make_candidates(prompts, out, {"norepeat-greedy": pipe}, [0], eng, tok, progress=False) == 2
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    from soft_sampler.curation import chat_ids
    for r, p in zip(recs, prompts):
        loc = generate(model, [chat_ids(tok, p["text"])], tok, max_new_tokens=12, logits_processor=Pipeline.from_spec(pipe.to_spec()))
        assert r["token_ids"] == loc.token_ids[0], (r["token_ids"], loc.token_ids[0])
        assert len(set(r["token_ids"])) == len(r["token_ids"])  # no token twice: the ban ran


def test_networks_run_once_per_checkpoint_on_their_rows(tmp_path):
    "Rows sharing a checkpoint are one batch; each row equals the network on that row alone (then its pipeline)."
    from soft_sampler.networks import SamplingNetwork
    net = SamplingNetwork(seed=1)
    with torch.no_grad(): net.head_out.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    path = str(net.save(tmp_path / "n.safetensors"))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 3
    proc = VLLMLogitsProcessor()
    tk = [{"name": "top_k", "k": 5}]
    proc.update_state(upd(added=[(0, *req(vllm_request(network=path)["vllm_xargs"], [1], [])), (1, *req(None, [1], [])),
                                 (2, *req(vllm_request(tk, network=path)["vllm_xargs"], [1], []))]))
    y = proc.apply(x.clone())
    with torch.no_grad(): ref = [net.eval()(x[i:i + 1])[0] for i in (0, 2)]
    torch.testing.assert_close(y[0], ref[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(y[1], x[1])
    torch.testing.assert_close(y[2], Pipeline(tk)(torch.tensor([[1]]), ref[1][None])[0], atol=1e-5, rtol=1e-5)
