"""Soft vs hard GRPO: time of one rollout + one update, side by side in one process.

Anchor: `hard` (ordinary GRPO: sampled tokens, token log-probs). For each policy one warm-up step, then the
median of `--repeats` steps, split into the rollout (KV-cached loop + reward) and the update (replay forward,
backward, optimiser step). Figures on a shared CPU are noisy: compare the ratios, not the seconds.

    .venv/bin/python bench/soft_rl.py            # the embedded SmolLM2-135M-Instruct, 1 thread
    .venv/bin/python bench/soft_rl.py --tiny     # the tiny random model (seconds)
"""
import argparse, copy, statistics, time
import torch
from soft_sampler.core import load_model, tiny_model
from soft_sampler.rewards import LengthReward
from soft_sampler.soft_rl import SoftRLConfig, SoftRLTrainer


def time_policy(model, tok, policy, args, rms):
    m = copy.deepcopy(model)
    trainable = ["model.layers.1"] if args.tiny else ["model.layers.28", "model.layers.29", "model.norm"]
    cfg = SoftRLConfig(policy, group_size=args.group, prompts_per_step=1, max_new_tokens=args.tokens, lr=1e-5,
                       temperature=0.3 if policy != "hard" else 1.0, noise_std=0.5 * rms, trainable=trainable)
    t = SoftRLTrainer(m, tok, LengthReward(0, 10_000), [[{"role": "user", "content": "Describe your day in one sentence."}]], cfg)
    roll, upd = [], []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter(); b = t.collect(); t1 = time.perf_counter()
        t.optimizer.zero_grad(); loss, _ = t.loss(b); loss.backward(); t.optimizer.step(); t2 = time.perf_counter()
        t.step_count += 1
        if i: roll.append(t1 - t0); upd.append(t2 - t1)
    return statistics.median(roll), statistics.median(upd)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random model instead of the embedded one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--group", type=int, default=4, help="rollouts per step")
    p.add_argument("--tokens", type=int, default=12, help="tokens per rollout")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = tiny_model() if args.tiny else load_model()
    rms = float(model.get_input_embeddings().weight.detach().pow(2).mean().sqrt())
    res = {pol: time_policy(model, tok, pol, args, rms) for pol in ("hard", "gaussian", "gumbel")}
    h = sum(res["hard"])
    print(f"model={'tiny' if args.tiny else 'SmolLM2-135M'} threads={args.threads} group={args.group} tokens={args.tokens} repeats={args.repeats}")
    print(f"{'policy':<10}{'rollout s':>11}{'update s':>10}{'step s':>9}{'x hard':>8}")
    for pol, (r, u) in res.items():
        print(f"{pol:<10}{r:>11.3f}{u:>10.3f}{r + u:>9.3f}{(r + u) / h:>8.2f}")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
