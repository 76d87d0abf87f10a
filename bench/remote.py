"""Tokens/s: llama-server (soft_sampler.remote) vs the local PyTorch sampling loop, side by side in one process.

    .venv/bin/python bench/remote.py [--tokens 64] [--rows 8]

Anchor: local `generate`, batch 1. Both sides use one thread (torch.set_num_threads(1), llama-server -t 1)
and plain sampling of exactly --tokens tokens per row (a stop id that is never sampled; the remote client
continues rows the server ends early). Figures are noisy on a shared machine.
"""
import argparse, time
import torch
from soft_sampler.core import load_model
from soft_sampler.sampling import generate
from soft_sampler.remote import LlamaServer, RemoteEngine, build_llama_server

NEVER = [49151]  # a stop id outside what the prompt leads to: rows run to the length limit


def timed(fn) -> tuple[float, int]:
    t = time.perf_counter(); rows = fn(); return time.perf_counter() - t, sum(map(len, rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64); ap.add_argument("--rows", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model()
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me a story about a lighthouse."}],
                                  add_generation_prompt=True, return_dict=True)["input_ids"]
    build_llama_server()
    cases = {}
    local = lambda n: (lambda: generate(model, [ids] * n, tok, max_new_tokens=a.tokens, stop_token_ids=NEVER, seed=0).token_ids)
    cases["local generate, batch 1 (anchor)"] = local(1)
    cases[f"local generate, batch {a.rows}"] = local(a.rows)
    with LlamaServer(threads=1, parallel=2) as srv:
        for name, kw, n in (("remote, 1 row", {}, 1), (f"remote, {a.rows} rows, 1 per request, 2 in flight", {}, a.rows),
                            (f"remote, {a.rows} rows in one request", dict(prompts_per_request=a.rows), a.rows)):
            e = RemoteEngine(srv.url, **kw)
            e.sample_suffixes(ids, [[]], 4, NEVER, torch.arange(1))  # warm the prompt cache
            cases[name] = lambda e=e, n=n: e.sample_suffixes(ids, [[]] * n, a.tokens, NEVER, torch.arange(n))
        rates = {}
        for name, fn in cases.items():
            dt, n = timed(fn); rates[name] = n / dt
    anchor = rates["local generate, batch 1 (anchor)"]
    print(f"{'case':<52} {'tok/s':>8} {'x anchor':>9}")
    for name, r in rates.items(): print(f"{name:<52} {r:8.1f} {r / anchor:9.2f}")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
