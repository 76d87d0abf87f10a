"""Soft decoding speed on the embedded model, measured side by side in one process.

1. Generation tokens/s of each input mode, anchor: `hard` mode (ordinary sampling through the same loop).
   Goal of issue #12: soft >= 0.9x hard. When `soft_sampler.sampling.generate` exists it is timed too.
2. Training step time (forward + backward) of `soft_sampling_forward`, anchor: the sequential (exact) mode;
   plain teacher forcing (`model(input_ids, labels=...)`) is shown for scale.

Run: `.venv/bin/python bench/soft.py` (a few minutes on 2 cores). Modes are timed round-robin and the median
is reported, so a changing load on a shared machine hits all of them alike; the figures are still noisy.
"""
import argparse, statistics, time
import torch
from transformers import LogitsProcessorList, TopKLogitsWarper
from soft_sampler.core import load_model
from soft_sampler.soft import soft_generate, soft_sampling_forward


def _time_interleaved(fns: dict, repeats: int) -> dict:
    "Median seconds of each function, run round-robin (one of each per round) so a changing load hits all alike."
    for fn in fns.values(): fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_generation(model, tok, batch, steps, repeats):
    prompt = tok.apply_chat_template([{"role": "user", "content": "Describe the sea in one paragraph."}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    pipe = LogitsProcessorList([TopKLogitsWarper(50)])
    kw = dict(max_new_tokens=steps, pipeline=pipe, stop_token_ids=[], n=batch, seed=0)
    fns = {mode: (lambda mode=mode: soft_generate(model, [prompt], tok, mode=mode, **kw)) for mode in ("hard", "soft", "mixture", "gumbel")}
    try:
        from soft_sampler.sampling import generate
        fns["sampling.generate"] = lambda: generate(model, [prompt], tokenizer=tok, max_new_tokens=steps, n=batch,
                                                    logits_processor=pipe, seed=0, stop_token_ids=[])
    except ImportError:
        pass
    rows = _time_interleaved(fns, repeats)
    anchor = rows["hard"]
    print(f"\nGeneration, batch {batch}, {steps} new tokens, top-k 50 (anchor: hard mode)")
    print(f"{'mode':<18} {'s/run':>7} {'tok/s':>8} {'x hard':>7}")
    for mode, s in rows.items():
        print(f"{mode:<18} {s:>7.2f} {batch * steps / s:>8.1f} {anchor / s:>7.2f}")


def bench_training(model, tok, batch, length, repeats):
    text = ("The sea is a vast body of salt water that covers most of the Earth and shapes its weather, "
            "its coasts and the lives of everything that lives in it or near it.")
    ids = tok([text] * batch, return_tensors="pt")["input_ids"][:, :length]
    model.train()

    def step(fn):
        def run():
            model.zero_grad(set_to_none=True)
            fn().backward()
        return run
    rows = _time_interleaved({
        "sequential": step(lambda: soft_sampling_forward(model, ids, 0.5, mode="sequential").loss),
        "two_pass": step(lambda: soft_sampling_forward(model, ids, 0.5, mode="two_pass").loss),
        "teacher forcing": step(lambda: model(input_ids=ids, labels=ids).loss),
    }, repeats)
    with torch.no_grad():
        gap = {a: abs(float(soft_sampling_forward(model, ids, a).loss - soft_sampling_forward(model, ids, a, mode="two_pass").loss))
               for a in (0.5, 0.0)}
    model.eval()
    anchor = rows["sequential"]
    print(f"\nTraining step (forward + backward), batch {batch} x {ids.shape[1]} tokens, alpha 0.5 (anchor: sequential)")
    print(f"{'mode':<18} {'s/step':>7} {'x sequential':>13}")
    for mode, s in rows.items():
        print(f"{mode:<18} {s:>7.2f} {anchor / s:>13.2f}")
    print("loss gap |sequential - two_pass|: " + ", ".join(f"alpha={a}: {g:.3f}" for a, g in gap.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=32, help="new tokens per generation run")
    p.add_argument("--length", type=int, default=32, help="training sequence length")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    model, tok = load_model()
    print(f"torch threads: {torch.get_num_threads()}")
    for batch in (1, 4):
        bench_generation(model, tok, batch, a.steps, a.repeats)
    bench_training(model, tok, 2, a.length, a.repeats)


if __name__ == "__main__":
    main()
