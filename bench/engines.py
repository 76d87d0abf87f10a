"""Engines side by side on the embedded model (issue 22): vLLM (CPU, eager) vs llama-server vs our in-process loop,
tokens/s at batch 1 and 8; the cost of our in-engine processor per step (3-transform pipeline, SamplingNetwork)
against vLLM's own step; QAlign steps/s on vLLM vs llama-server. Rounds are interleaved, medians reported.

    .venv/bin/python bench/engines.py [--rounds 3] [--tokens 32]

Needs `make vllm` and `make llama-server`. Anchor of each table: the first row.
"""
import argparse, json, os, statistics, time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
import requests
from soft_sampler.core import load_model
from soft_sampler.engines import VLLMServer, VLLMLogitsProcessor, vllm_request
from soft_sampler.heuristics import Pipeline, to_request
from soft_sampler.networks import SamplingNetwork
from soft_sampler.remote import LlamaServer, RemoteEngine
from soft_sampler.sampling import generate

PIPE = Pipeline([{"name": "repetition_penalty", "penalty": 1.2}, {"name": "top_k", "k": 40}, {"name": "temperature", "t": 0.8}])


def toks_per_s(post, prompt, batch, n):
    "Total generated tokens per second with `batch` concurrent single-row requests of `n` tokens."
    t = time.perf_counter()
    with ThreadPoolExecutor(batch) as pool: got = list(pool.map(lambda s: post(prompt, n, s), range(batch)))
    return sum(got) / (time.perf_counter() - t)


def vllm_post(srv, params):
    def post(prompt, n, seed):
        r = requests.post(srv.url + "/v1/completions", json={"model": srv.name, "prompt": prompt, "max_tokens": n, "seed": seed,
                                                             "ignore_eos": True, **params}, timeout=600)
        r.raise_for_status(); return r.json()["usage"]["completion_tokens"]
    return post


def llama_post(srv):
    def post(prompt, n, seed):
        r = requests.post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": n, "seed": seed, "ignore_eos": True,
                                                             **to_request(Pipeline([]), "llama.cpp")}, timeout=600)
        r.raise_for_status(); return r.json()["usage"]["completion_tokens"]
    return post


def local_post(model, tok):
    def run(prompt, n, batch):
        t = time.perf_counter()
        g = generate(model, [prompt] * batch, tok, max_new_tokens=n, stop_token_ids=[-1], seed=0, progress=False)
        return sum(map(len, g.token_ids)) / (time.perf_counter() - t)
    return run


def processor_cost(kind, batch, reps=20):
    "Seconds per step that VLLMLogitsProcessor adds for `batch` rows (in-process, the engine's float32 logits)."
    import tempfile
    proc, vocab = VLLMLogitsProcessor(), 49152
    if kind == "pipeline": args = vllm_request(PIPE)["vllm_xargs"]
    else:
        path = SamplingNetwork(seed=0).save(tempfile.mkdtemp() + "/net.safetensors")
        args = vllm_request(network=path)["vllm_xargs"]
    from types import SimpleNamespace as NS
    outs = [list(range(100, 140)) for _ in range(batch)]
    proc.update_state(NS(removed=[], moved=[], added=[(i, NS(extra_args=args, seed=i), list(range(60)), outs[i]) for i in range(batch)]))
    x = torch.randn(batch, vocab) * 3
    proc.apply(x.clone())
    ts = []
    for _ in range(reps):
        y = x.clone(); t = time.perf_counter(); proc.apply(y); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def qalign_steps_per_s(engine, tok, seed):
    from soft_sampler.qalign import QAlign
    from soft_sampler.rewards import VaderSentiment
    qa = QAlign(engine, VaderSentiment(tokenizer=tok), beta=0.2, tokenizer=tok)
    t = time.perf_counter()
    res = qa.run([{"role": "user", "content": "Describe your morning."}], chains=2, steps=4, max_new_tokens=24, seed=seed, progress=False)
    return res.steps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3); ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}, cores {os.cpu_count()}")
    model, tok = load_model()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me a story."}], add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    res = {k: [] for k in ("local 1", "local 8", "llama 1", "llama 8", "vllm 1", "vllm 8", "vllm+pipe 1", "vllm+pipe 8",
                           "qalign llama", "qalign vllm")}
    t0 = time.perf_counter()
    with VLLMServer() as vs, LlamaServer(parallel=8, threads=1, ctx=8192) as ls:
        print(f"servers ready in {time.perf_counter() - t0:.0f} s (vLLM: 1 OpenMP thread bound to core 0; llama-server -t 1)")
        vp, vpp, lp, run = vllm_post(vs, to_request(Pipeline([]), "vllm")), vllm_post(vs, vllm_request(PIPE)), llama_post(ls), local_post(model, tok)
        for r in range(a.rounds):
            for b in (1, 8):
                res[f"local {b}"].append(run(prompt, a.tokens, b))
                res[f"llama {b}"].append(toks_per_s(lp, prompt, b, a.tokens))
                res[f"vllm {b}"].append(toks_per_s(vp, prompt, b, a.tokens))
                res[f"vllm+pipe {b}"].append(toks_per_s(vpp, prompt, b, a.tokens))
            res["qalign llama"].append(qalign_steps_per_s(RemoteEngine(ls.url, tokenizer=tok, concurrency=2), tok, r))
            res["qalign vllm"].append(qalign_steps_per_s(vs.engine(tok, concurrency=2), tok, r))
            print(f"round {r + 1}/{a.rounds} done, load average {os.getloadavg()}", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\ntokens/s ({a.tokens} tokens per row, medians of {a.rounds} interleaved rounds); anchor: our in-process loop")
    print(f"{'engine':<32}{'batch 1':>10}{'ratio':>8}{'batch 8':>10}{'ratio':>8}")
    for name, key in (("our loop (transformers, fp32)", "local"), ("llama-server (Q4_1)", "llama"), ("vLLM (fp32, eager)", "vllm"),
                      ("vLLM + our 3-step pipeline", "vllm+pipe")):
        b1, b8 = med[f"{key} 1"], med[f"{key} 8"]
        print(f"{name:<32}{b1:>10.1f}{b1 / med['local 1']:>8.2f}{b8:>10.1f}{b8 / med['local 8']:>8.2f}")
    print("\nin-engine processor cost per step (in-process, float32 logits [batch, 49152]); anchor: vLLM's own step")
    step = {b: b / med[f"vllm {b}"] for b in (1, 8)}  # seconds per engine step (all rows advance by one token)
    print(f"{'':<32}{'batch 1 ms':>12}{'% step':>8}{'batch 8 ms':>12}{'% step':>8}")
    print(f"{'vLLM step':<32}{1e3 * step[1]:>12.2f}{100:>8.0f}{1e3 * step[8]:>12.2f}{100:>8.0f}")
    for kind, label in (("pipeline", "3-transform pipeline"), ("network", "SamplingNetwork")):
        c = {b: processor_cost(kind, b) for b in (1, 8)}
        print(f"{label:<32}{1e3 * c[1]:>12.2f}{100 * c[1] / step[1]:>8.1f}{1e3 * c[8]:>12.2f}{100 * c[8] / step[8]:>8.1f}")
    e2e = {b: 100 * (med[f"vllm {b}"] / med[f"vllm+pipe {b}"] - 1) for b in (1, 8)}
    print(f"{'end to end (slower by, %)':<32}{'':>12}{e2e[1]:>8.1f}{'':>12}{e2e[8]:>8.1f}")
    print(f"\nQAlign steps/s (2 chains x 4 steps, 24 tokens, VADER); anchor: llama-server")
    print(f"llama-server {med['qalign llama']:.3f}   vLLM {med['qalign vllm']:.3f}   ratio {med['qalign vllm'] / med['qalign llama']:.2f}")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
