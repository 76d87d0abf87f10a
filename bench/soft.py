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
    """Median (wall, CPU) seconds of each function, run round-robin (one of each per round) so a changing load hits
    all alike. CPU time (`time.process_time`, all threads of this process) is what to compare on a busy machine."""
    for fn in fns.values(): fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            times[k].append((time.perf_counter() - w, time.process_time() - c))
    return {k: tuple(statistics.median(x[i] for x in v) for i in (0, 1)) for k, v in times.items()}


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
    (aw, ac) = rows["hard"]
    print(f"\nGeneration, batch {batch}, {steps} new tokens, top-k 50 (anchor: hard mode; speed ratio = anchor time / time)")
    print(f"{'mode':<18} {'wall s':>7} {'tok/s wall':>10} {'x hard wall':>11} {'cpu s':>7} {'tok/cpu-s':>9} {'x hard cpu':>10}")
    for mode, (w, c) in rows.items():
        print(f"{mode:<18} {w:>7.2f} {batch * steps / w:>10.1f} {aw / w:>11.2f} {c:>7.2f} {batch * steps / c:>9.1f} {ac / c:>10.2f}")


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
    (aw, ac) = rows["sequential"]
    print(f"\nTraining step (forward + backward), batch {batch} x {ids.shape[1]} tokens, alpha 0.5 (anchor: sequential)")
    print(f"{'mode':<18} {'wall s':>7} {'x seq wall':>10} {'cpu s':>7} {'x seq cpu':>9}")
    for mode, (w, c) in rows.items():
        print(f"{mode:<18} {w:>7.2f} {aw / w:>10.2f} {c:>7.2f} {ac / c:>9.2f}")
    print("loss gap |sequential - two_pass|: " + ", ".join(f"alpha={a}: {g:.3f}" for a, g in gap.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24, help="new tokens per generation run")
    p.add_argument("--length", type=int, default=24, help="training sequence length")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="generation batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    model, tok = load_model()
    print(f"torch threads: {torch.get_num_threads()}")
    for batch in a.batches:
        bench_generation(model, tok, batch, a.steps, a.repeats)
    bench_training(model, tok, 2, a.length, a.repeats)


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
