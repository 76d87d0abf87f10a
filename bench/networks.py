"""Per-token overhead of the sampler networks against one KV-cached decode step of the embedded model.

    .venv/bin/python bench/networks.py [--rounds 15] [--threads N]

Anchor: one decode step of SmolLM2-135M-Instruct (`load_model()`), batch 1, a single-token forward with
the KV cache, measured side by side (interleaved rounds, medians) with each network applied to that step's
real logits (batch 1, vocab 49152, no gradients, as a logits processor runs). Goals on CPU: Local <= 2 %,
DistributionAware <= 3 %, SamplingNetwork <= 10 % of a decode step. With CUDA, also vocab 128256, batch 1
(goal < 1 ms each); skipped cleanly otherwise. Timings on a shared machine are noisy: compare ratios.
"""
from __future__ import annotations
import argparse, os, statistics, time
import torch
from soft_sampler.core import load_model
from soft_sampler.networks import LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork

GOALS = {"LocalProbabilityTransform": 2.0, "SimpleDistributionAwareTransform": 3.0, "SamplingNetwork": 10.0,
         "SamplingNetwork(typical=True)": None}  # the optional typical features: reported, no goal


def _timed(fn, n: int, sync=lambda: None) -> tuple[float, float]:
    "(median wall seconds, mean process CPU seconds) of `n` calls of `fn`."
    out, c = [], time.process_time()
    for _ in range(n):
        sync(); t = time.perf_counter(); fn(); sync(); out.append(time.perf_counter() - t)
    return statistics.median(out), (time.process_time() - c) / n


def _decoder(model, tok):
    "A closure doing one KV-cached single-token decode step per call (cache reset every 64 steps)."
    ids = tok("The history of the printing press begins", return_tensors="pt").input_ids
    state = {}
    def reset():
        out = model(ids, use_cache=True)
        state.update(pkv=out.past_key_values, n=0, nxt=out.logits[:, -1:].argmax(-1))
    def step():
        if state.get("n", 64) >= 64: reset()
        out = model(state["nxt"], past_key_values=state["pkv"], use_cache=True)
        state["n"] += 1; state["nxt"] = out.logits[:, -1:].argmax(-1)
        return out.logits[:, -1]
    return step


@torch.no_grad()
def _trained_like(net):
    "Default sizes with every weight non-zero (gates on), so that timings are those of a trained network."
    g = torch.Generator().manual_seed(0)
    for p in net.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


@torch.no_grad()
def cpu_table(rounds: int) -> None:
    model, tok = load_model()
    step = _decoder(model, tok)
    logits = step().float()
    nets = {cls.__name__: _trained_like(cls()) for cls in (LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork)}
    nets["SamplingNetwork(typical=True)"] = _trained_like(SamplingNetwork(typical=True))
    for net in nets.values(): net(logits)  # warm-up
    times = {name: [] for name in ["decode step", *nets]}
    for _ in range(rounds):  # interleaved, so that load changes hit both sides
        times["decode step"].append(_timed(step, 5))
        for name, net in nets.items(): times[name].append(_timed(lambda: net(logits), 20))
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    (wall0, cpu0) = med["decode step"]
    print(f"CPU, {torch.get_num_threads()} thread(s), batch 1, vocab {logits.shape[-1]}. Anchor: one KV-cached decode step "
          f"of the embedded model = {wall0 * 1e3:.1f} ms wall, {cpu0 * 1e3:.1f} ms CPU time")
    print(f"{'network (default sizes)':>34} {'params':>7} {'wall ms':>8} {'% of step':>10} {'CPU ms':>7} {'% of step':>10} {'goal':>6}")
    for name, net in nets.items():
        (wall, cpu), goal = med[name], GOALS[name]
        r_wall, r_cpu = 100 * wall / wall0, 100 * cpu / cpu0
        print(f"{name:>34} {sum(p.numel() for p in net.parameters()):>7,} {wall * 1e3:>8.3f} {r_wall:>9.2f}% "
              f"{cpu * 1e3:>7.3f} {r_cpu:>9.2f}% {'<=' + str(goal) if goal else '-':>6}"
              f"{'  (over goal)' if goal and max(r_wall, r_cpu) > goal else ''}")
    print("wall: median per call; CPU: process CPU time per call (robust to other processes pre-empting this one).")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(f"NOTE: load average {load:.1f} on {cores} cores: the machine is busy and the figures are noisy; "
              "with more than one thread, OpenMP spin-waiting inflates CPU times too. --threads 1 CPU-time "
              "ratios are the most robust figures on a shared machine.")


@torch.no_grad()
def gpu_table(vocab: int = 128256, n: int = 200) -> None:
    if not torch.cuda.is_available():
        print(f"\nCUDA not available: vocab {vocab} GPU timings skipped."); return
    x = torch.randn(1, vocab, device="cuda") * 3
    print(f"\nGPU {torch.cuda.get_device_name()}, batch 1, vocab {vocab} (goal < 1 ms each)")
    nets = {c.__name__: c() for c in (LocalProbabilityTransform, SimpleDistributionAwareTransform, SamplingNetwork)}
    nets["SamplingNetwork(typical=True)"] = SamplingNetwork(typical=True)
    for name, net in nets.items():
        net = _trained_like(net).cuda()
        for _ in range(10): net(x)
        t = _timed(lambda: net(x), n, torch.cuda.synchronize)[0]
        print(f"{name:>34} {t * 1e3:>9.3f} ms")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved measurement rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    cpu_table(args.rounds)
    gpu_table()
