"Soft decoding: mixtures, the KV-cached loop, guided training forward, the alpha schedule, freezing and the trainer."
import math, subprocess, sys, tempfile
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from transformers import (DataCollatorForLanguageModeling, LogitsProcessorList, TopKLogitsWarper,
                          TemperatureLogitsWarper, TrainingArguments)
from soft_sampler.core import tiny_model, load_model
from soft_sampler.sampling import keyed_uniform
from soft_sampler.soft import (GuidanceAlphaScheduler, SoftDecodingTrainer, entropy, freeze, gumbel_noise,
                               gumbel_softmax_weights, mix_embeddings, moi_weights, next_token_loss,
                               soft_generate, soft_sampling_forward)

BIN = Path(sys.executable).parent
MODES = ["soft", "hard", "mixture", "gumbel"]


def _topk(k):
    return LogitsProcessorList([TopKLogitsWarper(k)])


# ---------------------------------------------------------------- mixtures

def test_one_hot_mixture_reproduces_input_ids_logits(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("mixtures")["input_ids"], tok("one-hot!")["input_ids"]])
    E = model.get_input_embeddings().weight
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = model(inputs_embeds=mix_embeddings(F.one_hot(ids, E.shape[0]).float(), E)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=2, max_size=8), st.integers(0, 7), st.floats(0, 4))
def test_moi_weights_are_a_distribution_between_onehot_and_p(raw, y, beta):
    p = torch.tensor(raw) + 1e-3
    p = (p / p.sum()).unsqueeze(0)
    y = torch.tensor([y % p.shape[1]])
    w = moi_weights(p, y, beta)
    torch.testing.assert_close(w.sum(-1), torch.ones(1))
    assert (w >= 0).all()
    h = entropy(p) / math.log(p.shape[1])
    # closed form: the sampled token gets (h p_y + beta + 1 - h) / (beta + 1), the others h p_i / (beta + 1)
    want = h * p / (beta + 1)
    want[0, y] += (beta + 1 - h[0]) / (beta + 1)
    torch.testing.assert_close(w, want)


def test_moi_weights_extremes():
    p = torch.full((1, 8), 1 / 8)  # maximal entropy: normalised H = 1
    torch.testing.assert_close(moi_weights(p, torch.tensor([3]), beta=0.0), p)  # beta=0: the distribution itself
    confident = F.one_hot(torch.tensor([5]), 8).float()  # H = 0: only the sampled token
    torch.testing.assert_close(moi_weights(confident, torch.tensor([5]), 1.0), confident)


def test_gumbel_softmax_is_a_sample_of_p_at_low_tau():
    logp = torch.tensor([0.5, 0.25, 0.25, 0.0]).log().expand(6000, 4)
    w = gumbel_softmax_weights(logp, gumbel_noise(1, torch.arange(6000), 2, 4), tau=0.02)
    freq = w.argmax(-1).bincount(minlength=4).float() / 6000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.25, 0.0]), atol=0.025, rtol=0)
    assert w[:, 3].max() == 0 and (w.max(-1).values > 0.9).float().mean() > 0.95
    hot = gumbel_softmax_weights(logp[:1], gumbel_noise(1, torch.arange(1), 2, 4), tau=100.0)  # high tau: ~uniform on support
    torch.testing.assert_close(hot[0, :3], torch.full((3,), 1 / 3), atol=0.01, rtol=0)


def test_gumbel_noise_is_keyed_per_row():
    a = gumbel_noise(7, torch.tensor([0, 5]), 3, 50)
    b = gumbel_noise(7, torch.tensor([5]), 3, 50)
    torch.testing.assert_close(a[1], b[0])
    assert not torch.equal(a[0], a[1]) and not torch.equal(gumbel_noise(7, torch.tensor([5]), 4, 50), b)


# ---------------------------------------------------------------- generation

@pytest.mark.parametrize("mode", MODES)
def test_cached_equals_uncached(tiny, mode):
    model, tok = tiny
    kw = dict(max_new_tokens=7, mode=mode, n=2, seed=4, pipeline=_topk(20), noise_std=0.02 if mode != "hard" else 0.0,
              cold_stop_entropy=2.9 if mode == "soft" else None, cold_stop_steps=2)
    a = soft_generate(model, ["ab", "hello world"], tok, **kw)
    b = soft_generate(model, ["ab", "hello world"], tok, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.top_ids, b.top_ids)
    torch.testing.assert_close(a.entropy, b.entropy, equal_nan=True, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.top_weights, b.top_weights, atol=1e-4, rtol=1e-4)


def _reference_sampling_loop(model, prompt_ids, steps, seed, k):
    "An independent plain loop: input_ids, full recompute, numpy inverse CDF with keyed uniforms."
    ids, out = list(prompt_ids), []
    for t in range(steps):
        with torch.no_grad(): logits = model(torch.tensor([ids])).logits[0, -1].float()
        logits = logits.masked_fill(logits < logits.topk(k).values[-1], -math.inf)
        p = logits.softmax(-1).double().numpy()
        u = float(keyed_uniform(seed, 0, t, 0, 0))
        tok = int((p.cumsum() > u * p.sum()).argmax())
        ids.append(tok); out.append(tok)
    return out


def test_hard_mode_is_ordinary_sampling(tiny):
    model, tok = tiny
    prompt = tok("sampling")["input_ids"]
    r = soft_generate(model, [prompt], tok, max_new_tokens=12, mode="hard", seed=9, pipeline=_topk(10), stop_token_ids=[])
    assert r.sequences[0].tolist() == _reference_sampling_loop(model, prompt, 12, 9, 10)
    assert not r.soft.any() and (r.top_weights[..., 0] == 1).all()


def test_soft_mixtures_respect_the_pipeline(tiny):
    model, tok = tiny
    r = soft_generate(model, ["abc"], tok, max_new_tokens=5, mode="soft", pipeline=_topk(4), top_k=6)
    assert (r.top_weights[0, :, 4:] == 0).all() and (r.top_weights[0, :, :4] > 0).all()
    torch.testing.assert_close(r.top_weights[0, :, :4].sum(-1), torch.ones(5))
    assert (r.entropy[0] <= math.log(4) + 1e-5).all()
    assert torch.equal(r.sequences[0], r.top_ids[0, :, 0])  # soft trace = argmax of the mixture


@pytest.mark.parametrize("k", [None, 5])  # dense product, and the gather over a small support
def test_soft_input_is_p_times_E(tiny, k):
    "The second step's distribution equals a forward on [prompt, p.E] built by hand."
    model, tok = tiny
    prompt = torch.tensor([tok("xy")["input_ids"]])
    E = model.get_input_embeddings().weight
    proc = (lambda i, s: s) if k is None else _topk(k)
    with torch.no_grad():
        p = proc(prompt, model(prompt).logits[:, -1])[0].softmax(-1)
        x = torch.cat([E[prompt[0]], (p @ E)[None]])
        want = proc(prompt, model(inputs_embeds=x[None]).logits[:, -1])[0].softmax(-1)
    r = soft_generate(model, prompt, tok, max_new_tokens=2, mode="soft", stop_token_ids=[], pipeline=None if k is None else _topk(k))
    torch.testing.assert_close(r.entropy[0, 1], entropy(want), atol=1e-5, rtol=1e-5)


def test_rows_are_independent_of_the_batch(tiny):
    "Row 0 (prompt 0) is the same alone and next to a longer, differently padded prompt."
    model, tok = tiny
    for mode in ("gumbel", "mixture"):
        both = soft_generate(model, ["a", "longer prompt"], tok, max_new_tokens=6, mode=mode, seed=2, noise_std=0.05)
        alone = soft_generate(model, ["a"], tok, max_new_tokens=6, mode=mode, seed=2, noise_std=0.05)
        assert both.prompt_ids.shape[1] > alone.prompt_ids.shape[1]
        assert torch.equal(both.sequences[0], alone.sequences[0])
        torch.testing.assert_close(both.entropy[0], alone.entropy[0], atol=1e-4, rtol=1e-4, equal_nan=True)
        torch.testing.assert_close(both.top_weights[0], alone.top_weights[0], atol=1e-4, rtol=1e-4)


def test_noise_and_seed_change_gumbel_runs(tiny):
    model, tok = tiny
    base = soft_generate(model, ["q"], tok, max_new_tokens=6, mode="gumbel", seed=0, stop_token_ids=[])
    again = soft_generate(model, ["q"], tok, max_new_tokens=6, mode="gumbel", seed=0, stop_token_ids=[])
    other = soft_generate(model, ["q"], tok, max_new_tokens=6, mode="gumbel", seed=1, stop_token_ids=[])
    noisy = soft_generate(model, ["q"], tok, max_new_tokens=6, mode="gumbel", seed=0, noise_std=1.0, stop_token_ids=[])
    assert torch.equal(base.top_weights, again.top_weights)
    assert not torch.equal(base.top_weights, other.top_weights)
    assert not torch.allclose(base.entropy[0, 1:], noisy.entropy[0, 1:])


def test_cold_stop_turns_rows_hard_after_k_low_entropy_steps(tiny):
    model, tok = tiny
    never = soft_generate(model, ["ab"], tok, max_new_tokens=6, cold_stop_entropy=0.0, cold_stop_steps=1, stop_token_ids=[])
    assert never.soft.all()
    after3 = soft_generate(model, ["ab"], tok, max_new_tokens=6, cold_stop_entropy=50.0, cold_stop_steps=3, stop_token_ids=[])
    assert after3.soft[0].tolist() == [True, True, False, False, False, False]
    assert (after3.top_weights[0, 2:, 0] == 1).all()  # hard steps feed one token


def test_stop_tokens_end_rows(tiny):
    model, tok = tiny
    r = soft_generate(model, ["ab", "cd"], tok, max_new_tokens=20, mode="hard", seed=0)
    first = r.sequences[0, 0].item()
    r2 = soft_generate(model, ["ab", "cd"], tok, max_new_tokens=20, mode="hard", seed=0, stop_token_ids=[first])
    assert r2.lengths[0] == 1 and (r2.sequences[0, 1:] == tok.pad_token_id).all() and r2.entropy[0, 1:].isnan().all()
    assert r2.finished[0]
    assert r.finished.tolist() == [tok.eos_token_id in row.tolist() for row in r.sequences]


@pytest.mark.parametrize("kw, msg", [
    (dict(mode="fuzzy"), "`mode` must be one of"), (dict(max_new_tokens=0), "`max_new_tokens`"),
    (dict(tau=0.0, mode="gumbel"), "`tau` must be > 0"), (dict(beta=-1.0), "`beta` must be >= 0"),
    (dict(noise_std=-0.1), "`noise_std`"), (dict(trace="best"), "`trace`"), (dict(n=0), "`n`"),
    (dict(cold_stop_entropy=-1.0), "`cold_stop_entropy`"),
])
def test_generate_rejects_bad_arguments(tiny, kw, msg):
    model, tok = tiny
    with pytest.raises(ValueError, match=msg):
        soft_generate(model, ["a"], tok, **kw)


def test_text_prompts_need_a_tokenizer(tiny):
    with pytest.raises(TypeError, match="tokenizer"):
        soft_generate(tiny[0], ["a"], None)


# ---------------------------------------------------------------- training forward

def _padded(tok, texts, side):
    tok.padding_side = side
    try: b = tok(texts, return_tensors="pt", padding=True)
    finally: tok.padding_side = "left"
    return b["input_ids"], b["attention_mask"]


@pytest.mark.parametrize("mode", ["sequential", "two_pass"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_alpha_one_is_teacher_forcing(tiny, mode, side):
    model, tok = tiny
    ids, mask = _padded(tok, ["short", "a longer one"], side)
    labels = ids.masked_fill(mask == 0, -100)
    if side == "left":  # a real token after padding has no real source position: not a target
        first_real = mask.argmax(-1)
        labels[torch.arange(len(ids)), first_real] = -100
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss
        got = soft_sampling_forward(model, ids, 1.0, mode=mode, attention_mask=mask, pipeline=_topk(5))
    torch.testing.assert_close(got.loss, plain, atol=1e-5, rtol=1e-5)


def _by_hand(model, ids, alpha, pipeline=None, two_pass=False):
    "Guided inputs built position by position from full forwards (or the teacher-forced pass for two_pass)."
    E = model.get_input_embeddings().weight
    proc = (lambda i, s: s) if pipeline is None else pipeline
    tf_logits = model(ids).logits
    xs = [E[ids[:, 0]]]
    for t in range(1, ids.shape[1]):
        prev = tf_logits[:, t - 1] if two_pass else model(inputs_embeds=torch.stack(xs, 1)).logits[:, -1]
        p = proc(ids[:, :t], prev).softmax(-1)
        xs.append(alpha * E[ids[:, t]] + (1 - alpha) * p @ E)
    logits = model(inputs_embeds=torch.stack(xs, 1)).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("mode", ["sequential", "two_pass"])
@pytest.mark.parametrize("use_pipeline", [False, True])
def test_guided_forward_against_hand_built(tiny, alpha, mode, use_pipeline):
    model, tok = tiny
    ids = torch.tensor([tok("guide")["input_ids"], tok("soft!")["input_ids"]])
    pipe = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(6)]) if use_pipeline else None
    with torch.no_grad():
        got = soft_sampling_forward(model, ids, alpha, pipeline=pipe, mode=mode).loss
        want = _by_hand(model, ids, alpha, pipe, two_pass=mode == "two_pass")
        tf = model(ids, labels=ids).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert abs(float(got - tf)) > 1e-4  # the mixtures do change the loss


def test_hard_prefix_feeds_the_prompt_hard(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("prompt+answer")["input_ids"]])
    with torch.no_grad():
        whole = soft_sampling_forward(model, ids, 0.0, hard_prefix=ids.shape[1])
        tf = model(ids, labels=ids).loss
        part = soft_sampling_forward(model, ids, 0.0, hard_prefix=7)
    torch.testing.assert_close(whole.loss, tf, atol=1e-5, rtol=1e-5)
    assert part.mixed[0].tolist() == [False] * 7 + [True] * (ids.shape[1] - 7)
    torch.testing.assert_close(part.logits[:, :7], whole.logits[:, :7], atol=1e-5, rtol=1e-5)


def test_detach_probs_changes_only_the_gradient(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("detach")["input_ids"]])
    grads = {}
    for detach in (False, True):
        model.zero_grad()
        out = soft_sampling_forward(model, ids, 0.3, detach_probs=detach)
        out.loss.backward()
        grads[detach] = (out.loss.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[False][0], grads[True][0])
    assert not torch.allclose(grads[False][1], grads[True][1])
    model.zero_grad()


def test_next_token_loss_counts_only_real_targets():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4], [0, 1, 2, -100]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    pairs = [(0, 0, 2), (0, 1, 3), (0, 2, 4), (1, 1, 2)]  # (row, source position, target)
    want = torch.stack([F.cross_entropy(logits[r, s], torch.tensor(y)) for r, s, y in pairs]).mean()
    torch.testing.assert_close(next_token_loss(logits, labels, mask), want)
    with pytest.raises(ValueError, match="no real next-token targets"):
        next_token_loss(logits, torch.full_like(labels, -100), mask)


@pytest.mark.parametrize("kw, err, msg", [
    (dict(guidance_alpha=1.5), ValueError, "`guidance_alpha` must be in"),
    (dict(mode="parallel"), ValueError, "`mode` must be"),
    (dict(hard_prefix=0), ValueError, "`hard_prefix`"),
    (dict(attention_mask=torch.ones(1, 3, dtype=torch.long)), ValueError, "`attention_mask` must have the shape"),
    (dict(input_ids=torch.ones(1, 4)), TypeError, "`input_ids` must be"),
])
def test_forward_rejects_bad_arguments(tiny, kw, err, msg):
    args = dict(input_ids=torch.tensor([[3, 4, 5, 6]]), guidance_alpha=0.5) | kw
    with pytest.raises(err, match=msg):
        soft_sampling_forward(tiny[0], **args)


# ---------------------------------------------------------------- freezing, schedule, trainer

@pytest.mark.parametrize("trainable", ["head", ["model.layers.0.self_attn", "model.norm"]])
def test_gradients_reach_trainable_and_not_frozen(trainable):
    model, tok = tiny_model(seed=3)
    names = freeze(model, trainable)
    assert names and len(names) < len(list(model.parameters()))
    ids = torch.tensor([tok("gradients")["input_ids"]])
    soft_sampling_forward(model, ids, 0.5, mode="two_pass").loss.backward()
    for n, p in model.named_parameters():
        if n in names: assert p.grad is not None and p.grad.abs().sum() > 0, n
        else: assert p.grad is None, n


def test_freeze_unknown_module():
    with pytest.raises(ValueError, match="no module named"):
        freeze(tiny_model()[0], ["model.missing"])


def test_scheduler_boundaries():
    s = GuidanceAlphaScheduler(warmup_delay_ratio=0.25, warmup_ratio=0.5, min_alpha=0.2)
    assert s(0, 100) == 1.0 and s(25, 100) == 1.0
    assert s(26, 100) == pytest.approx(1 - 0.8 / 50)
    assert s(50, 100) == pytest.approx(0.6)
    assert s(75, 100) == 0.2 and s(100, 100) == 0.2 and s(500, 100) == 0.2
    assert GuidanceAlphaScheduler(0.0, 0.0, 0.0)(0, 10) == 1.0 and GuidanceAlphaScheduler(0.0, 0.0, 0.0)(1, 10) == 0.0
    assert GuidanceAlphaScheduler(1.0, 0.5, 0.0)(10, 10) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(1, 200))
def test_scheduler_is_monotone_and_bounded(delay, warm, lo, total):
    s = GuidanceAlphaScheduler(delay, warm, lo)
    a = [s(i, total) for i in range(total + 1)]
    assert all(lo - 1e-12 <= x <= 1.0 for x in a) and all(x >= y - 1e-12 for x, y in zip(a, a[1:]))


@pytest.mark.parametrize("kw, msg", [(dict(min_alpha=-0.1), "`min_alpha`"), (dict(warmup_ratio=2.0), "`warmup_ratio`"),
                                     (dict(warmup_delay_ratio=-1.0), "`warmup_delay_ratio`")])
def test_scheduler_rejects_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GuidanceAlphaScheduler(**kw)


def _train(model, tok, texts, steps, tmp, **kw):
    args = TrainingArguments(str(tmp), max_steps=steps, per_device_train_batch_size=2, learning_rate=5e-3, logging_steps=1,
                             report_to="none", save_strategy="no", use_cpu=True, remove_unused_columns=False, disable_tqdm=True)
    trainer = SoftDecodingTrainer(model=model, args=args, train_dataset=[tok(t) for t in texts],
                                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False), **kw)
    trainer.train()
    return trainer


@pytest.mark.parametrize("soft_mode", ["sequential", "two_pass"])
def test_trainer_trains_tiny_model_and_logs_alpha(tmp_path, soft_mode):
    model, tok = tiny_model(seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = _train(model, tok, ["soft tokens", "hard truths", "a mixture", "of inputs"], 4, tmp_path,
                alpha_scheduler=GuidanceAlphaScheduler(0.25, 0.5, 0.0), trainable="head", soft_mode=soft_mode)
    logs = [h for h in tr.state.log_history if "guidance_alpha" in h]
    assert [h["guidance_alpha"] for h in logs] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert all(math.isfinite(h["loss"]) for h in logs)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"model.embed_tokens.weight"}  # the (tied) head only


def test_trainer_rejects_bad_mode(tmp_path):
    model, tok = tiny_model()
    with pytest.raises(ValueError, match="`soft_mode`"):
        SoftDecodingTrainer(model=model, args=TrainingArguments(str(tmp_path), report_to="none", use_cpu=True), soft_mode="x")


def test_cli_on_tiny_model():
    r = subprocess.run([str(BIN/"soft-sampler"), "soft", "--tiny", "--mode", "mixture", "--max-new-tokens", "4", "--top-k", "5"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "[mixture]" in r.stdout and "entropy" in r.stdout and len(r.stdout.splitlines()) >= 4
    bad = subprocess.run([str(BIN/"soft-sampler"), "soft", "--tiny", "--tau", "0", "--mode", "gumbel"], capture_output=True, text=True)
    assert bad.returncode == 2 and "argument --tau: must be a number in (0, inf]" in bad.stderr


# ---------------------------------------------------------------- the embedded model

@pytest.mark.slow
def test_real_model_one_hot_and_cache(real):
    model, tok = real
    ids = torch.tensor([tok("The sea is")["input_ids"]])
    E = model.get_input_embeddings().weight
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = model(inputs_embeds=mix_embeddings(F.one_hot(ids, E.shape[0]).float(), E)).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    kw = dict(max_new_tokens=6, mode="soft", pipeline=_topk(50), stop_token_ids=[])
    c, u = soft_generate(model, ids, tok, **kw), soft_generate(model, ids, tok, use_cache=False, **kw)
    assert torch.equal(c.sequences, u.sequences)
    torch.testing.assert_close(c.entropy, u.entropy, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_real_model_hard_mode_is_ordinary_sampling(real):
    model, tok = real
    prompt = tok("Once upon a time")["input_ids"]
    r = soft_generate(model, [prompt], tok, max_new_tokens=8, mode="hard", seed=5, pipeline=_topk(40), stop_token_ids=[])
    assert r.sequences[0].tolist() == _reference_sampling_loop(model, prompt, 8, 5, 40)


@pytest.mark.slow
def test_real_model_trainer_few_steps(real, tmp_path):
    model, tok = load_model()  # a fresh copy: training changes weights
    tr = _train(model, tok, ["The sky is blue.", "Cats like to sleep.", "Water is wet.", "Fire is hot."], 2, tmp_path,
                alpha_scheduler=GuidanceAlphaScheduler(0.0, 1.0, 0.5), trainable=["model.layers.29.mlp"])
    logs = [h for h in tr.state.log_history if "guidance_alpha" in h]
    assert [h["guidance_alpha"] for h in logs] == pytest.approx([1.0, 0.75])
    assert all(math.isfinite(h["loss"]) and h["loss"] < 12 for h in logs)


def test_pipeline_gets_the_step_context_like_the_sampling_loop(tiny):
    model, tok = tiny
    seen = []

    def recorder(input_ids, scores, ctx=None):
        seen.append((ctx.positions(input_ids).tolist(), ctx.row_ids.tolist(), ctx.seed))
        return scores

    soft_generate(model, ["ab", "c"], tok, max_new_tokens=3, n=2, seed=11, pipeline=[recorder, _topk(5)], stop_token_ids=[])
    assert seen == [([t] * 4, [0, 1, 2, 3], 11) for t in range(3)]


def test_trainer_loss_is_a_mean_under_gradient_accumulation(tmp_path):
    "With 2 accumulation steps of one sequence each (lr 0), the logged loss is the mean of the two losses, not twice it."
    model, tok = tiny_model(seed=2)
    texts = ["abcdef", "uvwxyz"]
    with torch.no_grad():
        want = sum(model(torch.tensor([tok(t)["input_ids"]]), labels=torch.tensor([tok(t)["input_ids"]])).loss for t in texts) / 2
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                             learning_rate=0.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True)
    tr = SoftDecodingTrainer(model=model, args=args, train_dataset=[tok(t) for t in texts],
                             data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
                             alpha_scheduler=GuidanceAlphaScheduler(1.0, 0.0, 1.0))  # alpha = 1: teacher forcing
    tr.train()
    logged = [h["loss"] for h in tr.state.log_history if "guidance_alpha" in h]
    assert logged == pytest.approx([float(want)], rel=1e-4)


def test_prompts_as_ids_tensor_or_tokenizer_output(tiny):
    model, tok = tiny
    kw = dict(max_new_tokens=4, mode="mixture", seed=3)
    texts = soft_generate(model, ["ab", "hello"], tok, **kw)
    ids = soft_generate(model, [tok("ab")["input_ids"], tok("hello")["input_ids"]], tok, **kw)
    enc = soft_generate(model, tok(["ab", "hello"], return_tensors="pt", padding=True), tok, **kw)
    assert torch.equal(texts.sequences, ids.sequences) and torch.equal(texts.sequences, enc.sequences)
    one = soft_generate(model, torch.tensor([tok("hello")["input_ids"]]), tok, **kw)
    assert one.sequences.shape == (1, 4)
    with pytest.raises(ValueError, match="must be \\[batch, seq\\]"):
        soft_generate(model, torch.tensor([1, 2, 3]), tok)


def _sampling_generate():
    from soft_sampler import sampling
    if not hasattr(sampling, "generate"): pytest.skip("soft_sampler.sampling.generate is not on this branch yet")
    return sampling.generate


@pytest.mark.parametrize("stop", ["none", "first"])
def test_hard_mode_equals_the_sampling_loop(tiny, stop):
    "Same seed, same pipeline: `hard` mode gives `sampling.generate`'s tokens and entropies, row by row."
    generate = _sampling_generate()
    model, tok = tiny
    prompts = [tok("ab")["input_ids"], tok("hello there")["input_ids"]]
    kw = dict(max_new_tokens=10, n=2, seed=5)
    stop_ids = [] if stop == "none" else [soft_generate(model, prompts, tok, mode="hard", pipeline=_topk(8), **kw).sequences[1, 2].item()]
    g = generate(model, prompts, tokenizer=tok, logits_processor=_topk(8), stop_token_ids=stop_ids, **kw)
    r = soft_generate(model, prompts, tok, mode="hard", pipeline=_topk(8), stop_token_ids=stop_ids, **kw)
    for i in range(4):
        L = int(r.lengths[i])
        assert g.token_ids[i] == r.sequences[i, :L].tolist(), i
        torch.testing.assert_close(g.entropies[i].float(), r.entropy[i, :L], atol=1e-4, rtol=1e-4)
    if stop == "first": assert r.finished[1] and g.finish_reasons[1] == "stop"


@pytest.mark.slow
def test_real_model_hard_mode_equals_the_sampling_loop(real):
    generate = _sampling_generate()
    model, tok = real
    prompts = [tok("Once upon a time")["input_ids"], tok("The sea")["input_ids"]]
    kw = dict(max_new_tokens=8, seed=7, stop_token_ids=[])
    g = generate(model, prompts, tokenizer=tok, logits_processor=_topk(40), **kw)
    r = soft_generate(model, prompts, tok, mode="hard", pipeline=_topk(40), **kw)
    assert [g.token_ids[i] for i in range(2)] == r.sequences.tolist()
