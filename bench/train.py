"""Training throughput of the sampler networks against one forward pass of the embedded model.

    .venv/bin/python bench/train.py [--rounds 5] [--threads 1] [--batch 16] [--vocab 4096]

Anchor: one forward pass (no gradients) of SmolLM2-135M-Instruct (`load_model()`) over a batch of 16 sequences
of 16 tokens, i.e. what replaying 256 real rows costs. Side by side (interleaved rounds, medians) with one
optimiser step of `train_sampler` (data + target + forward + backward + AdamW) for each network, at the
fidelity table's settings (16 synthetic rows of 4096 tokens, target min-p 0.1), and at the real vocabulary
(16 rows of 49152 tokens). Reported: ms per step, rows per second, and the ratio to the anchor. Timings on a
shared machine are noisy: compare ratios measured in the same run.
"""
from __future__ import annotations
import argparse, os, statistics, time
import torch
from soft_sampler.core import load_model
from soft_sampler.loss import TruncatedLogitsLoss
from soft_sampler.networks import LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork
from soft_sampler.train import SyntheticLogits, TrainConfig, as_target, make_optimizer, _step

NETS = (LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork)


def _timed(fn, n: int) -> float:
    "Median wall seconds of `n` calls."
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out)


def _stepper(cls, vocab: int, batch: int):
    "A closure doing one optimiser step of `train_sampler`'s loop per call."
    net, cfg = cls(), TrainConfig(steps=10**6, batch_size=batch, lr=0.05)
    opt, sched = make_optimizer(net, cfg)
    data, target, loss = SyntheticLogits(vocab), as_target([{"name": "min_p", "p": 0.1}]), TruncatedLogitsLoss()
    state = {"step": 0}
    def step():
        _step(net, data, target, loss, opt, sched, cfg, state["step"]); state["step"] += 1
    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5); p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16); p.add_argument("--vocab", type=int, default=4096)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok = load_model()
    ids = torch.randint(0, 49152, (16, 16), generator=torch.Generator().manual_seed(0))
    anchor = lambda: model(input_ids=ids).logits
    runs = {f"{c.__name__} @ {v}": _stepper(c, v, a.batch) for v in (a.vocab, 49152) for c in NETS}
    with torch.no_grad(): anchor()
    for f in runs.values(): f()  # warm-up
    times = {k: [] for k in ["anchor", *runs]}
    for _ in range(a.rounds):  # interleaved, so that load changes hit every side
        with torch.no_grad(): times["anchor"].append(_timed(anchor, 2))
        for k, f in runs.items(): times[k].append(_timed(f, 5))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU, {torch.get_num_threads()} thread(s). Anchor: one forward of the embedded model over 16×16 tokens "
          f"(= 256 replayed rows) = {med['anchor'] * 1e3:.0f} ms")
    print(f"{'optimiser step (batch ' + str(a.batch) + ', min-p target) @ vocab':>48} {'ms/step':>8} {'rows/s':>8} {'× anchor':>9}")
    for k in runs:
        print(f"{k:>48} {med[k] * 1e3:>8.1f} {a.batch / med[k]:>8.0f} {med[k] / med['anchor']:>9.3f}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores: print(f"NOTE: load average {load:.1f} on {cores} cores: the machine is busy and the figures are noisy.")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
