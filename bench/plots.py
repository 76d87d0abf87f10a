"""TokenInspector interaction latency vs the model's own cost, on the embedded model, side by side in one process.

Anchor: **one raw forward** of SmolLM2-135M (one KV-cached decoding step, what generating one token costs).
Also shown: a full forward over prompt + response (what recording costs once), and the pieces of one inspector
interaction: re-running the two pipelines (+ learned sampler) on the cached logits of one position, building the
figure, and the whole `update()` (pipelines + metrics + figure + tables), for the plotly and matplotlib backends.

Run: `.venv/bin/python bench/plots.py` (about a minute on 2 cores). Functions are timed round-robin and the
median is reported; on a shared machine the figures are noisy.
"""
import argparse, statistics, time
import torch
from soft_sampler.core import load_model
from soft_sampler.networks import SimpleDistributionAwareTransform
from soft_sampler.plots import TokenInspector, record, step_view


def _time_interleaved(fns: dict, repeats: int) -> dict:
    "Median wall seconds of each function, run round-robin (one of each per round)."
    for fn in fns.values(): fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads); torch.set_grad_enabled(False)
    model, tok = load_model()
    chat = [{"role": "user", "content": "Write one sentence about the sea."}]
    rec = record(model, tok, prompt=chat, sampler="temperature(t=0.7)+min_p(p=0.05)", max_new_tokens=24, seed=0)
    net = SimpleDistributionAwareTransform()
    ins = {b: TokenInspector(recording=rec, sampler=net, backend=b) for b in ("plotly", "matplotlib")}
    ids = torch.tensor([rec.prompt_ids + rec.token_ids])
    out = model(input_ids=ids[:, :-1], use_cache=True)

    def one_step():  # one KV-cached decoding step , then crop the cache back
        model(input_ids=ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
        out.past_key_values.crop(-1)  # drop the token just added

    pos = iter(range(10**9))
    def move(b):  # a slider move: a different position each time
        ins[b].position.value = next(pos) % len(rec)
    samplers = ins["plotly"].samplers()
    fns = {"one raw forward (KV-cached step)": one_step,
           f"full forward ({ids.shape[1]} tokens, once per recording)": lambda: model(input_ids=ids),
           "pipelines A+B+learned on one position": lambda: step_view(rec, 5, samplers, 15, "A"),
           "figure only (plotly)": lambda: ins["plotly"].figure(ins["plotly"].current),
           "slider move, update() (plotly)": lambda: move("plotly"),
           "slider move, update() (matplotlib)": lambda: move("matplotlib")}
    res = _time_interleaved(fns, args.repeats)
    anchor = res["one raw forward (KV-cached step)"]
    print(f"torch threads {args.threads}, {len(rec)} recorded steps, vocab {rec.raw_logits.shape[-1]}; median of {args.repeats}")
    print(f"{'what':<52} {'ms':>9} {'x anchor':>9}")
    for k, v in res.items(): print(f"{k:<52} {v * 1e3:9.1f} {v / anchor:9.2f}")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
