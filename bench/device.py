"""CUDA figures of issue #29, written as one JSON file of ratios (run by `bench/device.sh` on a GPU machine).

Sections (each guarded: a failing one records its error and the others still run), all medians of interleaved
rounds timed with CUDA events / synchronised wall clock:
- `heuristics`: every transform of bench/heuristics.py vs one softmax and vs transformers' warper, on CUDA.
- `top_p_vs_sort`: our top-p (sort-free) vs `torch.sort` of the same rows (what transformers' warper spends most
  of its time on), at 0.9 and 0.95.
- `generate`: `soft_sampler.sampling.generate` vs `model.generate` tokens/s, batch 1 and 8, 32 new tokens.
- `networks`: each sampler network's forward as a fraction of one KV-cached decode step (batch 1).
- `soft`: soft decoding modes (soft, mixture, gumbel) tokens/s vs hard mode, batch 1 and 4 (goal >= 0.9).
The model is the embedded SmolLM2-135M-Instruct when its files are there, else random weights of the same shape
(`.device/model`: its config and tokenizer, from bench/device_prep.sh): timings do not depend on the weights.
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time, traceback
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DEV, DRY = "cuda", False  # --dry: every section on the CPU with tiny sizes (checks the script, measures nothing)


def sync():
    if DEV == "cuda": torch.cuda.synchronize()


PUBLISHED = {  # what the sort-free GPU samplers report (no per-kernel figure vs torch.sort is published in these)
    "Qrita": "arXiv 2602.01518 (Park, Kim, Cheung, Stoica; v2 26 May 2026): pivot-based top-k/top-p, same output as "
             "sorting; up to 1.4x end-to-end serving throughput with half the memory vs SGLang and FlashInfer kernels "
             "(v1 abstract: up to 2x); the default top-k/top-p of vLLM's GPU path (vllm/v1/sample/ops/topk_topp_triton.py)",
    "FlashInfer": "flashinfer.ai blog 2025-03-10 'Sorting-Free GPU Kernels for LLM Sampling' (rejection sampling with "
                  "pivots): in vLLM on 1xH100 the kernels cut the overall sampling time by more than 50% on three models",
}


def cuda_ms(fns: list, rounds: int = 20, inner: int = 10) -> list[float]:
    if DRY: rounds, inner = 2, 1
    "Median ms per call of each zero-argument fn over interleaved rounds of `inner` calls (CUDA-synchronised)."
    for f in fns: f(); f()
    sync()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for f, ts in zip(fns, times):
            sync(); t0 = time.perf_counter()
            for _ in range(inner): f()
            sync(); ts.append((time.perf_counter() - t0) / inner)
    return [statistics.median(t) * 1e3 for t in times]


def model_and_tokenizer():
    from soft_sampler.core import load_model
    try:
        model, tok = load_model(device=DEV)
        return model.eval(), tok, "embedded SmolLM2-135M-Instruct"
    except Exception as e:  # no model files on the GPU machine: same shapes, random weights
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        path = os.path.join(os.path.dirname(HERE), ".device", "model")
        cfg = AutoConfig.from_pretrained(path)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(DEV).eval()
        return model, AutoTokenizer.from_pretrained(path), f"random weights, SmolLM2-135M shapes ({type(e).__name__})"


def heuristics(res: dict) -> None:
    import heuristics as H
    shapes = [(4, 4096)] if DRY else [(64, 49152), (8, 128256), (256, 128256)]
    for b, v in shapes:
        x = H.rows_for(b, v, None).to(DEV)
        for name, ours, theirs in H.CASES:
            fns = [lambda: x.softmax(-1), lambda: ours(x)] + ([lambda: theirs(x)] if theirs else [])
            soft, t_ours, *t_hf = cuda_ms(fns)
            res.setdefault("heuristics", []).append(dict(
                shape=f"{b}x{v}", transform=name, ours_ms=t_ours, softmax_ms=soft, hf_ms=t_hf[0] if t_hf else None,
                ours_per_softmax=t_ours / soft, ours_per_hf=t_ours / t_hf[0] if t_hf else None))
            print(f"{b}x{v} {name:<16} ours/softmax {t_ours / soft:6.2f}  ours/hf {t_ours / t_hf[0] if t_hf else float('nan'):6.2f}")


def top_p_vs_sort(res: dict) -> None:
    import heuristics as H
    from soft_sampler.heuristics_hf import top_p
    for b, v in [(4, 4096)] if DRY else [(64, 49152), (8, 128256), (256, 128256)]:
        x = H.rows_for(b, v, None).to(DEV)
        for p in (0.9, 0.95):
            srt, ours = cuda_ms([lambda: torch.sort(x, dim=-1, descending=True), lambda: top_p(x, p)])
            res.setdefault("top_p_vs_sort", []).append(dict(shape=f"{b}x{v}", p=p, sort_ms=srt, ours_ms=ours,
                                                           ours_per_sort=ours / srt))
            print(f"top-p {p} {b}x{v}: ours {ours:.3f} ms, torch.sort {srt:.3f} ms, ratio {ours / srt:.2f}")


def _tok_s(fn, tokens: int, reps: int = 3) -> float:
    fn(); sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
    return tokens / statistics.median(ts)


def generate_vs_hf(res: dict, model, tok) -> None:
    from transformers import LogitsProcessorList
    from soft_sampler.sampling import generate
    from generate import _prompts  # bench/generate.py
    n = 4 if DRY else 32
    for b in (1, 8):
        enc = {k: t.to(DEV) for k, t in _prompts(tok, b).items()}
        ours = lambda: generate(model, enc, tok, max_new_tokens=n, stop_token_ids=[], seed=0)
        hf = lambda: model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=n, eos_token_id=None,
                                    pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList([]))
        s_ours, s_hf = _tok_s(ours, b * n), _tok_s(hf, b * n)
        res.setdefault("generate", []).append(dict(batch=b, ours_tok_s=s_ours, hf_tok_s=s_hf, ratio=s_ours / s_hf))
        print(f"generate batch {b}: ours {s_ours:.1f} tok/s, model.generate {s_hf:.1f} tok/s, ratio {s_ours / s_hf:.2f}")


@torch.no_grad()
def networks(res: dict, model, tok) -> None:
    from networks import _trained_like  # bench/networks.py
    from soft_sampler.networks import LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork
    ids = tok("The history of the printing press begins", return_tensors="pt").input_ids.to(DEV)
    out = model(ids, use_cache=True)
    pkv, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    logits = out.logits[:, -1].float()
    def decode():  # one KV-cached single-token step (the cache grows by one token per call)
        model(nxt, past_key_values=pkv, use_cache=True)
    nets = {c.__name__: _trained_like(c()).to(DEV) for c in (LocalProbabilityTransform, SimpleDistributionAwareTransform,
                                                            SamplingNetwork)}
    names = list(nets)
    t = cuda_ms([decode] + [lambda n=n: nets[n](logits) for n in names], rounds=10, inner=5)
    for name, tn in zip(names, t[1:]):
        res.setdefault("networks", []).append(dict(network=name, ms=tn, decode_step_ms=t[0], fraction_of_step=tn / t[0]))
        print(f"{name}: {tn:.3f} ms = {100 * tn / t[0]:.1f}% of a decode step ({t[0]:.3f} ms)")


def soft(res: dict, model, tok) -> None:
    from transformers import LogitsProcessorList, TopKLogitsWarper
    from soft_sampler.soft import soft_generate
    prompt = tok.apply_chat_template([{"role": "user", "content": "Describe the sea in one paragraph."}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    n = 4 if DRY else 24
    pipe = LogitsProcessorList([TopKLogitsWarper(50)])
    for b in (1, 4):
        kw = dict(max_new_tokens=n, pipeline=pipe, stop_token_ids=[], n=b, seed=0)
        speed = {m: _tok_s(lambda m=m: soft_generate(model, [prompt], tok, mode=m, **kw), b * n)
                 for m in ("hard", "soft", "mixture", "gumbel")}
        for m, s in speed.items():
            res.setdefault("soft", []).append(dict(batch=b, mode=m, tok_s=s, per_hard=s / speed["hard"]))
        print(f"soft decoding batch {b}: " + ", ".join(f"{m} {s / speed['hard']:.2f}x" for m, s in speed.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="device.json")  # bench/device.sh passes $OUT/device.json; device.json is git-ignored
    ap.add_argument("--only", default="", help="comma-separated sections")
    ap.add_argument("--dry", action="store_true", help="run every section on the CPU, tiny sizes (a check of the script)")
    a = ap.parse_args(argv)
    global DEV, DRY
    if a.dry: DEV, DRY = "cpu", True
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)", "torch": torch.__version__}
    if not torch.cuda.is_available() and not DRY:
        print("CUDA not available: nothing to measure"); res["error"] = "no CUDA"
        json.dump(res, open(a.out, "w"), indent=1); return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    if DRY: torch.set_num_threads(1)
    model, tok, what = model_and_tokenizer()
    res["model"] = what
    res["published"] = PUBLISHED
    sections = {"heuristics": lambda: heuristics(res), "top_p_vs_sort": lambda: top_p_vs_sort(res),
                "generate": lambda: generate_vs_hf(res, model, tok), "networks": lambda: networks(res, model, tok),
                "soft": lambda: soft(res, model, tok)}
    for name, run in sections.items():
        if a.only and name not in a.only.split(","): continue
        t0 = time.perf_counter()
        try: run()
        except Exception:
            res.setdefault("errors", {})[name] = traceback.format_exc(limit=4)
            print(f"{name} failed:\n{res['errors'][name]}")
        res.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        json.dump(res, open(a.out, "w"), indent=1)  # partial results survive a timeout
    print(json.dumps(res.get("seconds")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
