"""Benchmark QAlign (#10) on the embedded model: cost per generated token.

    .venv/bin/python bench/qalign.py [--chains 4] [--steps 6] [--max-new-tokens 32] [--repeats 2]

Anchor: **best-of-n**, independent samples from p drawn by the same engine (shared prompt cache, batch = chains)
until the same number of tokens as the QAlign steps generated. Rows, measured side by side in this process:

- QAlign steps: the MCMC steps only (initial samples excluded), batched over chains, shared prompt cache,
  batched re-prefill of the kept prefixes;
- QAlign steps without the shared prompt cache (every row re-prefills prompt + prefix): what the cache saves;
- llm-samplers' QAlignSampler (if installed: `pip install --no-deps llm-samplers`) at equal chains, steps and
  lengths. Its chain is not the exact one (no length ratio, cut over the prompt, fixed length); it runs an uncached
  forward per token per row. Its `beta` is our 1/β.

The reward is 0 everywhere (the chain samples p itself), so the timing is pure sampling. The CPU is shared with
other work: figures are noisy; compare ratios, not absolute numbers.
"""
import argparse, time

import torch

import soft_sampler.qalign as qa_mod
from soft_sampler.core import load_model
from soft_sampler.qalign import QAlign


def zero_reward(prompts, responses): return [0.0] * len(responses)


def time_qalign_steps(qa, prompt, a, seed):
    "Seconds and tokens of the MCMC steps only: run(steps=S) minus run(steps=0) (same seed, same initial samples)."
    t0 = time.perf_counter(); init = qa.run(prompt, chains=a.chains, steps=0, max_new_tokens=a.max_new_tokens, seed=seed, progress=False)
    t1 = time.perf_counter(); full = qa.run(prompt, chains=a.chains, steps=a.steps, max_new_tokens=a.max_new_tokens, seed=seed, progress=False)
    t2 = time.perf_counter()
    return (t2 - t1) - (t1 - t0), full.generated_tokens - init.generated_tokens, full


def without_prompt_cache():
    "Patch the engine so every row re-prefills prompt + prefix (no shared prompt cache); returns an undo function."
    orig_sample, orig_cache = qa_mod.sample_suffixes, qa_mod.prompt_cache
    def sample(model, prompt_ids, prefixes, max_new_tokens, stops, rows, seed, attempt, proc, cache, pad):
        P = len(prompt_ids)
        return orig_sample(model, prompt_ids[:1], [prompt_ids[1:] + p for p in prefixes], max_new_tokens + P - 1,
                           stops, rows, seed, attempt, proc, None, pad)
    qa_mod.sample_suffixes, qa_mod.prompt_cache = sample, (lambda model, ids: None)
    return lambda: (setattr(qa_mod, "sample_suffixes", orig_sample), setattr(qa_mod, "prompt_cache", orig_cache))


def time_llm_samplers(model, prompt, a):
    "llm-samplers' QAlignSampler at equal chains/steps/lengths; returns (seconds, sampled tokens) or None."
    try: from llm_samplers import QAlignSampler
    except ImportError: return None
    class Zero(torch.nn.Module):
        def forward(self, ids): return torch.zeros(ids.shape[0])
    s = QAlignSampler(Zero(), num_steps=a.steps, beta=1.0)
    s.device = model.device
    ids = torch.tensor([prompt] * a.chains)
    counted = {"tokens": 0}
    orig = s._sample_from_logits
    def counting(logits, num_samples=1):
        counted["tokens"] += logits.shape[0]; return orig(logits, num_samples)
    s._sample_from_logits = counting
    torch.manual_seed(0)
    t0 = time.perf_counter(); s.sample(model, ids, max_length=len(prompt) + a.max_new_tokens); dt = time.perf_counter() - t0
    init_tokens = a.chains * a.max_new_tokens  # its initial loop (stops only when every row is at EOS)
    return dt, counted["tokens"], init_tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chains", type=int, default=4); p.add_argument("--steps", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=32); p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-llm-samplers", action="store_true")
    a = p.parse_args()
    model, tok = load_model()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a short poem about the sea."}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    qa = QAlign(model, zero_reward, beta=1.0, tokenizer=tok)
    qa.run(prompt, chains=2, steps=1, max_new_tokens=4, progress=False)  # warm-up
    print(f"embedded model, prompt {len(prompt)} tokens, {a.chains} chains, {a.steps} steps, max_new_tokens {a.max_new_tokens}, "
          f"{torch.get_num_threads()} threads, best of {a.repeats}")
    rows = {}
    for r in range(a.repeats):
        dt, n, res = time_qalign_steps(qa, prompt, a, seed=r)
        t0 = time.perf_counter(); base = qa.baseline(prompt, n, max_new_tokens=a.max_new_tokens, seed=100 + r, batch=a.chains)
        bdt = time.perf_counter() - t0
        undo = without_prompt_cache()
        try: ndt, nn, _ = time_qalign_steps(qa, prompt, a, seed=r)
        finally: undo()
        for name, (secs, toks) in {"best-of-n (anchor)": (bdt, base.generated_tokens), "QAlign steps": (dt, n),
                                   "QAlign steps, no shared prompt cache": (ndt, nn)}.items():
            rows[name] = min(rows.get(name, (1e9, 0)), (secs / toks, toks), key=lambda x: x[0])
    anchor = rows["best-of-n (anchor)"][0]
    if not a.no_llm_samplers:
        got = time_llm_samplers(model, prompt, a)
        if got is None: print("llm-samplers not installed: skipped (pip install --no-deps llm-samplers)")
        else:
            dt, toks, init = got
            rows["llm-samplers QAlignSampler (whole run)"] = (dt / toks, toks)
    print(f"{'method':<42}{'tokens':>8}{'ms/token':>10}{'vs anchor':>11}")
    for name, (per, toks) in rows.items():
        print(f"{name:<42}{toks:>8}{1000 * per:>10.1f}{per / anchor:>10.2f}x")
    print(f"QAlign acceptance rate (zero reward: only the length ratio rejects): {res.acceptance_rate:.2f}")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
