"""Speed of the logit transforms vs their transformers counterparts and vs one plain softmax (the floor).

Run: `.venv/bin/python bench/heuristics.py [--rounds 15] [--shapes 64x49152,64x49152:zipf,8x128256] [--clock thread|wall] [--json F]`
Rows: next-token logits of the embedded model (SmolLM2-135M) at the last 64 positions of a real text (TEXT gives
>= MIN_TOKENS tokens, checked); for the 128256 vocabulary (Llama 3's) 8 of those rows widened with two shuffled
copies shifted down by 2 and 4 nats. `64x49152 zipf` is the flat worst case: synthetic Zipf-like rows (also the
fallback, announced on stderr, when the model is unavailable). Timings side by side in one process: ours, transformers'
and one softmax in interleaved rounds (so all three see the same machine load), the median of the rounds; ratios < 1
mean we are faster. Each row prints its goals (issue #29) beside the ratios. One thread by default (`--threads`).

Clock: `thread` (default) is this thread's CPU time (`time.thread_time`), `wall` is `perf_counter`. On a shared,
loaded machine (load average above the core count) a function that runs for several ms is preempted part way far
more often than a 1 ms softmax, so wall-clock ratios against the softmax inflate with the load; CPU time does not
count the time other processes hold the core (caches and memory bandwidth are still shared). The header prints
the load average before and after: compare runs at similar loads.

Each round times each function over a block of back-to-back calls (`--block-ms`, default 10 ms) after one untimed
call, so each is measured in its own steady state (a 6 ms softmax fills a 10 ms block with a single call: without
the untimed call it would run right after transformers' warper and pay for its memory, see below; that made the
anchor swing from 6 to 23 ms). With single calls (`--block-ms 0`) a function runs right after another one
that allocated and freed tens of MB (transformers' warpers make several vocabulary-sized temporaries): glibc
hands that memory back to the system, the next large allocations fault their pages in again, and small ops
meet cold caches. That penalises whichever function comes next, by up to ~0.8 ms at [64, 49152] (with
MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ raised the single-call figures fall back to the block ones, and
transformers' η warper runs twice as fast).

CASES is a table of (name, our transform, transformers' counterpart or None); other transform families
add their rows to it.
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time
import torch
from transformers.generation import logits_process as hf
from soft_sampler.heuristics_hf import temperature, top_k, top_p, min_p, typical, epsilon, eta, top_h


def _w(warper):
    return lambda x: warper(None, x)


CASES = [  # (name, ours, transformers or None)
    ("temperature 0.7", lambda x: temperature(x, 0.7), _w(hf.TemperatureLogitsWarper(0.7))),
    ("top_k 50", lambda x: top_k(x, 50), _w(hf.TopKLogitsWarper(50))),
    ("top_k 1000", lambda x: top_k(x, 1000), _w(hf.TopKLogitsWarper(1000))),
    ("top_p 0.9", lambda x: top_p(x, 0.9), _w(hf.TopPLogitsWarper(0.9))),
    ("top_p 0.95", lambda x: top_p(x, 0.95), _w(hf.TopPLogitsWarper(0.95))),
    ("min_p 0.05", lambda x: min_p(x, 0.05), _w(hf.MinPLogitsWarper(0.05))),
    ("typical 0.9", lambda x: typical(x, 0.9), _w(hf.TypicalLogitsWarper(0.9))),
    ("epsilon 3e-4", lambda x: epsilon(x, 3e-4), _w(hf.EpsilonLogitsWarper(3e-4))),
    ("eta 3e-4", lambda x: eta(x, 3e-4), _w(hf.EtaLogitsWarper(3e-4))),
    ("top_h 0.4", lambda x: top_h(x, 0.4), _w(hf.TopHLogitsWarper(0.4))),
]
SORT_FREE = {"temperature 0.7", "min_p 0.05", "epsilon 3e-4", "eta 3e-4"}
GOALS = {  # name prefix: (ours / one softmax, ours / transformers), issue #29
    "top_k": (3.0, 0.5), "top_p": (5.0, 0.5), "typical": (6.0, 0.5), "min_p": (2.5, 1.0),
    "epsilon": (3.0, 1.0), "eta": (3.0, 1.0), "temperature": (None, 1.0), "top_h": (None, 1.0),
}


def goals(name: str) -> tuple:
    return GOALS.get(name.split()[0], (None, None))


def machine() -> str:
    "Threads and load average: print them with every figure (the machine may be shared)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import machine as m  # bench/machine.py
    return m.line()


TEXT = ("The old lighthouse keeper climbed the stairs every evening, counting the steps as his father had "
        "taught him. Storms came in from the west, and ships passed far out at sea, their lights small and "
        "uncertain. One night a boat drifted close to the rocks, and he ran down to the shore with a lantern. "
        "The wind tore at his coat and the rain stung his face, but he held the light high and shouted until "
        "the fishermen saw him and turned their bow away from the reef. In the morning the sea was calm again. "
        "The fishermen came back to thank him, carrying a basket of bread, cheese and a bottle of wine from "
        "their village. They sat together in the small kitchen at the foot of the tower, and the youngest of "
        "them asked how many years he had kept the light. Forty-one, he said, and before me my father kept it "
        "for thirty, and his mother before him. The boy looked up at the lamp, turning slowly behind its glass, "
        "and said that one day he would like to climb those stairs too.")
MIN_TOKENS = 153  # 64 rows after a context of at least 89 tokens: the rows are the model's, not the Zipf fallback


def model_rows(n: int = 64) -> torch.Tensor | None:
    "Next-token logits of the embedded model at the last n positions of TEXT (None if unavailable)."
    try:
        from soft_sampler.core import load_model
        model, tok = load_model()
    except Exception as e:  # the model is optional for the benchmark
        print(f"(embedded model unavailable: {e}; using synthetic rows)", file=sys.stderr)
        return None
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids.shape[1] >= MIN_TOKENS, f"TEXT gives {ids.shape[1]} tokens, fewer than {MIN_TOKENS}"
    with torch.no_grad(): logits = model(ids).logits[0].float()
    return logits[-n:].contiguous()


def synthetic_rows(b: int, v: int, seed: int = 0) -> torch.Tensor:
    "Zipf-like logits: -1.1 log(rank) in a random order, plus noise."
    g = torch.Generator().manual_seed(seed)
    rank = torch.rand(b, v, generator=g).argsort(-1).float() + 1
    return -1.1 * rank.log() + 0.5 * torch.randn(b, v, generator=g)


def rows_for(b: int, v: int, real: torch.Tensor | None, kind: str = "") -> torch.Tensor:
    "Rows for a shape: the model's (widened if needed) unless `kind` is 'zipf' or the model is unavailable."
    if kind == "zipf" or real is None or b > real.shape[0]:
        if kind != "zipf": print(f"({b}x{v}: synthetic Zipf rows, not the model's)", file=sys.stderr)
        return synthetic_rows(b, v)
    x = real[:b]
    g = torch.Generator().manual_seed(0)
    while x.shape[1] < v:  # widen with shuffled copies shifted down
        shift = 2.0 * (x.shape[1] // real.shape[1])
        x = torch.cat([x, x[:, torch.randperm(real.shape[1], generator=g)] - shift], 1)
    return x[:, :v].contiguous()


def median_ms(fns: list, x: torch.Tensor, rounds: int = 15, block: float = 0.01, clock=time.thread_time) -> list[float]:
    "Median ms per call of each fn over `rounds` interleaved rounds, each a block of ~`block` s of back-to-back calls."
    for f in fns: f(x)  # warm-up
    times = [[] for _ in fns]
    for _ in range(rounds):
        for f, ts in zip(fns, times):
            n = max(1, int(block / max(statistics.median(ts) if ts else 1e-3, 1e-6)))  # calls filling ~`block` s
            f(x)  # untimed: the timed calls then run in this function's own steady state (see the docstring)
            t0 = clock()
            for _ in range(n): f(x)
            ts.append((clock() - t0) / n)
    return [statistics.median(ts) * 1e3 for ts in times]


def _goal(r: float, g) -> str:
    return f"{r:6.2f} <= {g:<4g}{' ok' if r <= g else ' --'}" if g is not None else f"{r:6.2f}{'':11}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (the median is reported)")
    ap.add_argument("--shapes", default="64x49152,64x49152:zipf,8x128256",
                    help="BxV[:zipf], comma-separated; ':zipf' takes synthetic flat Zipf rows (the worst case)")
    ap.add_argument("--block-ms", type=float, default=10.0, help="back-to-back calls per timed block (0: single calls)")
    ap.add_argument("--clock", choices=["thread", "wall"], default="thread", help="thread CPU time or wall clock")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine may be shared)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda: wall clock with synchronisation)")
    ap.add_argument("--only", default="", help="comma-separated case names (prefix match)")
    ap.add_argument("--json", default="", help="also write the ratios to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    real = model_rows()
    clock = time.thread_time if args.clock == "thread" and args.device == "cpu" else time.perf_counter
    if args.device != "cpu":
        sync = lambda f: (lambda y: (f(y), torch.cuda.synchronize()))
    else:
        sync = lambda f: f
    print(f"torch {torch.__version__}, {args.device}, {machine()}; clock {clock.__name__}; anchors: one softmax and "
          f"transformers' warper; median of {args.rounds} interleaved rounds of {args.block_ms:g} ms blocks")
    print(f"{'shape':>14} {'transform':<16} {'ours ms':>8} {'softmax':>8} {'hf ms':>8}  {'ours/softmax (goal)':<20} "
          f"{'ours/hf (goal)':<20}")
    out = {"machine": machine(), "clock": clock.__name__, "device": args.device, "rows": []}
    for spec in args.shapes.split(","):
        dims, _, kind = spec.partition(":")
        b, v = map(int, dims.split("x"))
        shape = f"{dims} {kind}" if kind else dims  # e.g. `64x49152 zipf`
        x = rows_for(b, v, real, kind).to(args.device)
        for name, ours, theirs in CASES:
            if args.only and not any(name.startswith(o) for o in args.only.split(",")): continue
            fns = [sync(lambda y: y.softmax(-1)), sync(ours)] + ([sync(theirs)] if theirs is not None else [])
            soft, t_ours, *t_hf = median_ms(fns, x, args.rounds, block=args.block_ms / 1e3, clock=clock)
            t_hf = t_hf[0] if t_hf else float("nan")
            gs, gh = goals(name)
            print(f"{shape:>14} {name:<16} {t_ours:8.3f} {soft:8.3f} {t_hf:8.3f}  {_goal(t_ours / soft, gs):<20} "
                  f"{_goal(t_ours / t_hf, gh):<20}", flush=True)
            out["rows"].append(dict(shape=shape, transform=name, ours_ms=t_ours, softmax_ms=soft, hf_ms=t_hf,
                                    ours_per_softmax=t_ours / soft, ours_per_hf=t_ours / t_hf,
                                    goal_softmax=gs, goal_hf=gh))
    print(f"after: {machine()}")
    if args.json:
        with open(args.json, "w") as f: json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
