"""What a score costs: seconds per batch of (prompt, response) pairs for each reward, against a named anchor.

Anchor: the embedded-model yes/no judge scoring the batch in padded batches of 8 (`YesNoJudge`, batch_size=8).
Everything is measured side by side in one process on the same pairs (best of `--repeats` after one warm-up).
Run: .venv/bin/python bench/rewards.py [--pairs 16] [--repeats 2]
"""
import argparse, time
import torch
from soft_sampler.core import load_model
from soft_sampler.rewards import (YesNoJudge, LMPairwiseJudge, MiniLMSimilarity, VaderSentiment, NumericAnswer,
                                  encode_pairs, score)

QUESTIONS = ["What is 12 + 7?", "Write one kind sentence about a rainy day.", "Name a colour.", "Explain what a noun is."]
ANSWERS = ["12 + 7 = 19.", "The rain sings softly on the roof, and everything smells fresh and new.", "Teal.",
           "A noun is a word that names a person, a place, a thing or an idea, like 'river' or 'Paris'."]


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16); ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model, tok = load_model()
    n = args.pairs
    p, r = encode_pairs(tok, [QUESTIONS[i % 4] for i in range(n)], [ANSWERS[(i // 4 + i) % 4] for i in range(n)])
    judge = YesNoJudge(model, tok, batch_size=8)
    rows = {
        "YesNoJudge, batches of 8 (anchor)": lambda: score(judge, p, r),
        "YesNoJudge, one pair at a time": lambda: score(YesNoJudge(model, tok, batch_size=1), p, r),
        "LMPairwiseJudge (both orders), batches of 8": lambda: LMPairwiseJudge(model, tok)(p, r, r[1:] + r[:1]),
        "MiniLMSimilarity, batches of 32": (lambda sim: lambda: score(sim, p, r))(MiniLMSimilarity("The rain is gentle.", tok)),
        "VaderSentiment": (lambda v: lambda: score(v, p, r))(VaderSentiment(tok)),
        "NumericAnswer": lambda: score(NumericAnswer(19, tok), p, r),
    }
    secs = {k: best_of(f, args.repeats) for k, f in rows.items()}
    anchor = secs["YesNoJudge, batches of 8 (anchor)"]
    print(f"{n} pairs, torch threads {torch.get_num_threads()}; ratio = time / anchor (lower is faster)")
    print(f"{'reward':<46}{'seconds':>10}{'ratio':>10}")
    for k, s in secs.items(): print(f"{k:<46}{s:>10.3f}{s / anchor:>10.3f}")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
