"""Tokens/s of `soft_sampler.samplers` vs `llm-samplers` (the anchor), side by side in one process, equal settings.

Same embedded model, same chat prompt, same number of new tokens per row (EOS disabled in both, so both write
exactly `--new-tokens` tokens; llm-samplers reads `model.config.eos_token_id`, which is set to -1 for its runs):

* temperature 0.7 sampling: `ProcessorSampler(TemperatureLogitsWarper(0.7))` vs `llm_samplers.TemperatureSampler(0.7)`;
* anti-slop with the same banned phrases: ours (strings, decoded-text matching, backtracking on the KV cache) vs
  `llm_samplers.AntiSlopSampler` (the phrases' token ids, restarts from the prompt);
* beam search with `--beams` beams: `BeamSearchSampler(k, eos_token_id=[])` vs `llm_samplers.beam.BeamSearchSampler(k)`.

tokens/s counts the tokens each sampler returns (beam search: the new tokens of its best hypothesis, times beams
explored per step is the same in both). One warm-up, then the median of `--reps` runs; the CPU is shared, so
figures are noisy. `llm-samplers` is installed with `pip install --no-deps llm-samplers` for this script only.

    .venv/bin/python bench/samplers.py [--new-tokens 16] [--reps 1] [--beams 3]
"""
import argparse, statistics, time
import torch
from transformers import TemperatureLogitsWarper
from soft_sampler.core import load_model
from soft_sampler.samplers import ProcessorSampler, AntiSlopSampler, BeamSearchSampler

BAN = ["cat", "fur", " the"]


def _median_time(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--beams", type=int, default=3)
    a = p.parse_args(argv)
    import llm_samplers
    from llm_samplers.beam import BeamSearchSampler as TheirBeams
    model, tok = load_model()
    chat = tok.apply_chat_template([{"role": "user", "content": "Write a short story about a cat."}], add_generation_prompt=True, tokenize=False)
    ids = tok([chat], return_tensors="pt", add_special_tokens=False)["input_ids"]
    N, w = a.new_tokens, ids.shape[1]
    theirs_phrases = [tok(ph, add_special_tokens=False)["input_ids"] for ph in BAN]
    cases = [
        ("temperature 0.7", lambda: ProcessorSampler(TemperatureLogitsWarper(0.7), seed=0, stop_token_ids=[]).sample(model, ids, max_new_tokens=N),
         lambda: llm_samplers.TemperatureSampler(0.7).sample(model, ids, max_length=N)),  # llm-samplers: max_length = new tokens here
        ("anti-slop", lambda: AntiSlopSampler(BAN, tok, seed=0, stop_token_ids=[]).sample(model, ids, max_new_tokens=N),
         lambda: llm_samplers.AntiSlopSampler(disallowed_phrases=theirs_phrases).sample(model, ids, max_length=N)),
        (f"beam search k={a.beams}", lambda: BeamSearchSampler(a.beams, eos_token_id=[]).sample(model, ids, max_length=w + N),
         lambda: TheirBeams(a.beams).sample(model, ids, max_length=w + N)[:, 0]),  # theirs: max_length = total length
    ]
    print(f"embedded model, {torch.get_num_threads()} threads, prompt {w} tokens, {N} new tokens, batch 1, "
          f"median of {a.reps} run(s) after a warm-up (shared CPU: figures are noisy)")
    print(f"{'sampler':<18} {'soft_sampler tok/s':>19} {'llm-samplers tok/s':>19} {'ratio':>7}")
    eos = model.config.eos_token_id
    for name, ours, theirs in cases:
        t_ours, out_ours = _median_time(ours, a.reps)
        model.config.eos_token_id = -1  # llm-samplers stops at model.config.eos_token_id; disable it as we do
        try: t_theirs, out_theirs = _median_time(theirs, a.reps)
        finally: model.config.eos_token_id = eos
        n_ours, n_theirs = out_ours.shape[-1] - w, out_theirs.shape[-1] - w
        r_ours, r_theirs = n_ours / t_ours, n_theirs / t_theirs
        print(f"{name:<18} {r_ours:>19.1f} {r_theirs:>19.1f} {r_ours / r_theirs:>6.1f}x")


if __name__ == "__main__":
    import machine; machine.report()  # threads and load average beside the figures
    main()
