"""Speed of the heuristics II transforms, side by side in one process.

Anchors: one plain `torch.softmax` over the same logits (the floor every sampler pays), and transformers'
processor where one exists (repetition penalty, no-repeat n-gram, sequence bias for single tokens).
Figures are the minimum over repeats (robust to a shared, busy CPU), in milliseconds, and ratios.

    python bench/heuristics_ext.py [--repeats 7] [--history 512] [--device cpu|cuda]
"""
import argparse, time
import torch
from transformers.generation.logits_process import (NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                                                    SequenceBiasLogitsProcessor)
from soft_sampler.heuristics_ext import (top_n_sigma, xtc, dynamic_temperature, quadratic, top_a, tfs, logit_bias,
                                         repetition_penalty, presence_penalty, frequency_penalty, no_repeat_ngram, dry,
                                         mirostat_v1, mirostat_v2)


def best_ms(fn, repeats, device):
    "Minimum wall time of `fn()` in ms over `repeats` runs (after one warm-up)."
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda": torch.cuda.synchronize()
        t = time.perf_counter(); fn()
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def cases(l, ids, pl):
    "name → (ours, transformers' counterpart or None)."
    b, v = l.shape
    bias = {int(t): 1.5 for t in torch.randint(0, v, (50,))}
    seq_bias = SequenceBiasLogitsProcessor([[[t], x] for t, x in bias.items()])
    u = torch.rand(b, dtype=torch.float64)
    rep, ngram = RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(3)
    return {
        "top_n_sigma(1.0)": (lambda: top_n_sigma(l, 1.0), None),
        "xtc(0.1, 1.0)": (lambda: xtc(l, 0.1, 1.0, u=u), None),
        "dynamic_temperature(.5,1.5)": (lambda: dynamic_temperature(l, 0.5, 1.5), None),
        "quadratic(0.3)": (lambda: quadratic(l, 0.3), None),
        "top_a(0.2)": (lambda: top_a(l, 0.2), None),
        "tfs(0.95)": (lambda: tfs(l, 0.95), None),
        "logit_bias(50 tokens)": (lambda: logit_bias(l, bias), lambda: seq_bias(ids, l.clone())),
        "repetition_penalty(1.3)": (lambda: repetition_penalty(l, 1.3, ids), lambda: rep(ids, l.clone())),
        "presence_penalty(0.5)": (lambda: presence_penalty(l, 0.5, ids, pl), None),
        "frequency_penalty(0.5)": (lambda: frequency_penalty(l, 0.5, ids, pl), None),
        "no_repeat_ngram(3)": (lambda: no_repeat_ngram(l, 3, ids), lambda: ngram(ids, l.clone())),
        "dry(0.8)": (lambda: dry(l, 0.8, ids, sequence_breakers=[0, 1]), None),
        "mirostat_v2(6.0)": (lambda: mirostat_v2(l, 6.0), None),
        "mirostat_v1(6.0)": (lambda: mirostat_v1(l, 6.0), None),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--history", type=int, default=512, help="length of input_ids (prompt + generated)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, history {args.history}")
    for b, v in [(64, 49152), (8, 128256)]:
        l = (torch.randn(b, v, generator=g) * 2.5).to(args.device)
        # a history with repeats: a random text of 64 distinct tokens, so n-grams and DRY matches occur
        ids = torch.randint(0, 64, (b, args.history), generator=g).to(args.device)
        pl = args.history // 2
        soft = best_ms(lambda: torch.softmax(l, -1), args.repeats, args.device)
        print(f"\n[{b}, {v}] float32: one softmax = {soft:.2f} ms")
        print(f"{'transform':30s} {'ms':>9s} {'× softmax':>10s} {'transformers ms':>16s} {'× transformers':>15s}")
        for name, (ours, ref) in cases(l, ids, pl).items():
            t = best_ms(ours, args.repeats, args.device)
            r = best_ms(ref, args.repeats, args.device) if ref else None
            print(f"{name:30s} {t:9.2f} {t / soft:10.2f} {'' if r is None else f'{r:16.2f}'}"
                  f"{'' if r is None else f'{t / r:15.2f}'}")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
