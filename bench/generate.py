"""Tokens/s of `soft_sampler.sampling.generate` vs `model.generate` (the anchor), side by side in one process.

Both sample (`do_sample=True`; transformers with `top_k=0` so it adds no warpers of its own), with the same
logits processor (none by default, `--processor temperature` for a 0.7 temperature warper), from the same
left-padded chat prompts, for exactly `--new-tokens` tokens per row (EOS disabled in both), at batch 1 and 8.
Runs alternate between the two loops; the table reports the median of `--reps` timed runs after one warm-up.
A second table repeats this on a 1-layer random model with the embedded model's vocabulary (49152), where
the forward pass is cheap, so it measures the per-step overhead of the loops themselves (skip: --no-overhead).

    .venv/bin/python bench/generate.py [--new-tokens 32] [--reps 3] [--batches 1 8] [--processor none|temperature]
"""
import argparse, statistics, time
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper
from soft_sampler.core import load_model, tiny_model
from soft_sampler.sampling import generate

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three colours.",
             "Explain what a language model is in one sentence.", "Hi!", "Give me a tip for learning Python.",
             "What is 12 times 7?", "Describe a sunset over the mountains in a few words."]


def _prompts(tok, batch):
    chats = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(batch)]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    return tok(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")


def _time(fn):
    t0 = time.perf_counter(); out = fn(); return time.perf_counter() - t0, out


def _compare(model, tok, enc, N, procs, reps):
    "Median seconds of our loop and of model.generate, alternating, after one warm-up each."
    ours = lambda: generate(model, enc, tok, max_new_tokens=N, stop_token_ids=[], logits_processor=procs, seed=0)
    hf = lambda: model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=N, eos_token_id=None,
                                pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList(procs))
    ours(); hf()
    t_ours, t_hf = [], []
    for _ in range(reps):
        t, res = _time(ours); t_ours.append(t)
        assert all(len(r) == N for r in res.token_ids)
        t, out = _time(hf); t_hf.append(t)
        assert out.shape[1] == enc["input_ids"].shape[1] + N
    return statistics.median(t_ours), statistics.median(t_hf)


def _table(title, model, tok, a, procs):
    print(title)
    print(f"{'batch':>5} {'soft_sampler tok/s':>19} {'model.generate tok/s':>21} {'ratio':>6}")
    for b in a.batches:
        t_ours, t_hf = _compare(model, tok, _prompts(tok, b), a.new_tokens, procs, a.reps)
        s_ours, s_hf = b * a.new_tokens / t_ours, b * a.new_tokens / t_hf
        print(f"{b:>5} {s_ours:>19.1f} {s_hf:>21.1f} {s_ours / s_hf:>5.2f}x", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--processor", choices=["none", "temperature"], default="none")
    p.add_argument("--no-overhead", action="store_true", help="skip the per-step overhead table (tiny model)")
    a = p.parse_args(argv)
    procs = [] if a.processor == "none" else [TemperatureLogitsWarper(0.7)]
    print(f"{torch.get_num_threads()} threads, {a.new_tokens} new tokens per row, processor: {a.processor}, "
          f"median of {a.reps} runs (shared CPU: figures are noisy)")
    model, tok = load_model()
    _table("embedded model (SmolLM2-135M-Instruct, fp32):", model, tok, a, procs)
    if not a.no_overhead:
        tiny, ttok = tiny_model(vocab_size=len(tok), num_layers=1)
        _table("loop overhead (1-layer random model, same vocabulary and prompts):", tiny, tok, a, procs)


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
