"The 2025-26 transforms: p-less, adaptive-p, CFG, DoLa, the llama.cpp preset; against independent references."
import math
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (ClassifierFreeGuidanceLogitsProcessor,
                                                    UnbatchedClassifierFreeGuidanceLogitsProcessor)
from soft_sampler.core import tiny_model
from soft_sampler.sampling import generate, StepContext
from soft_sampler.heuristics import (p_less, p_less_norm, adaptive_p, AdaptiveP, ClassifierFreeGuidance, DoLa,
                                     dola_contrast, dola_layers, min_p, top_p, Pipeline, SpecError, to_request)

NEG = float("-inf")


# ---------------------------------------------------------------- p-less: a numpy reference, row by row
def _pless_ref(row: np.ndarray, norm: bool) -> np.ndarray:
    fin = np.isfinite(row)
    p = np.zeros_like(row); p[fin] = np.exp(row[fin] - row[fin].max()); p /= p.sum()
    s, n = (p ** 2).sum(), fin.sum()
    cut = (n * s - 1) / (n - 1) if norm else s
    return np.where(p >= cut, row, -np.inf)


@pytest.mark.parametrize("norm", [False, True])
def test_p_less_matches_reference(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1, 2, 3, 4, 6], dtype=torch.float64)[:, None]
    x[2, :10] = NEG
    got = (p_less_norm if norm else p_less)(x)
    for r in range(6): np.testing.assert_array_equal(got[r].numpy(), _pless_ref(x[r].numpy(), norm))
    assert torch.equal(x[2, :10], got[2, :10]) and not torch.equal(got, x)  # removed stay removed; something is cut


def test_p_less_keeps_top_and_norm_keeps_more():
    x = torch.randn(32, 200, generator=torch.Generator().manual_seed(1)) * 3
    a, b = torch.isfinite(p_less(x)), torch.isfinite(p_less_norm(x))
    assert (a <= b).all() and a.gather(1, x.argmax(-1, keepdim=True)).all()


def test_p_less_high_temperature_stays_tight_where_top_p_explodes():
    "Zipf-like logits at T=3: top-p 0.9 keeps most of the vocabulary, min-p and p-less stay small."
    v = 2000
    x = -1.2 * torch.log(torch.arange(1, v + 1, dtype=torch.float32))[None] * 4  # a peaked row
    hot = x / 3.0
    n = lambda l: int(torch.isfinite(l).sum())
    assert n(top_p(hot, 0.9)) > 20 * n(p_less(hot)) and n(p_less(hot)) <= n(min_p(hot, 0.1)) + 5


# ---------------------------------------------------------------- adaptive-p: llama.cpp's C++, transcribed in float32
def _ap_ref(logits_row: np.ndarray, target: float, ws: float, tw: float) -> np.ndarray:
    "llama_sampler_adaptive_p_apply on one row (float32, as the C++)."
    l = logits_row.astype(np.float32)
    fin = np.isfinite(l)
    p = np.zeros_like(l); p[fin] = np.exp(l[fin] - l[fin].max()); p /= p.sum()
    t = np.float32(min(max(target, 0.0), 1.0))
    adapted = t if tw == 0 else np.float32(min(max(2 * t - ws / tw, 0.0), 1.0))
    out = l.copy()
    d = np.abs((p - adapted) * np.float32(1 / 0.3))
    out[fin] = np.float32(5.0) - np.float32(10.0) * d[fin] ** 2 / (1 + d[fin])
    return out


def test_adaptive_p_function_matches_cpp():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(2))
    x[1, 5:9] = NEG
    for (ws, tw) in [(None, None), (4.0, 10.0), (0.2, 3.0)]:
        got = adaptive_p(x, 0.3, ws, tw, 0.9)
        w, t = (0.3 / 0.1, 1 / 0.1) if ws is None else (ws, tw)
        for r in range(3): np.testing.assert_allclose(got[r].numpy(), _ap_ref(x[r].numpy(), 0.3, w, t), atol=2e-5)


def test_adaptive_p_in_the_loop_follows_each_rows_ema():
    "Every step's processed logits = the C++ transform with S, W accumulated from that row's own chosen tokens."
    m, tok = tiny_model(seed=3)
    res = generate(m, [[5, 6, 7], [9, 10, 11, 12]], n=2, max_new_tokens=8, seed=4, stop_token_ids=[],
                   logits_processor=AdaptiveP(target=0.3, decay=0.8), keep_logits="full")
    for r in range(4):
        raw, proc, ws, tw = res.raw_logits[r].values, res.processed_logits[r].values, 0.3 / 0.2, 1 / 0.2
        for t, chosen in enumerate(res.token_ids[r]):
            np.testing.assert_allclose(proc[t].numpy(), _ap_ref(raw[t].numpy(), 0.3, ws, tw), atol=3e-5)
            p0 = torch.softmax(raw[t].double(), -1)[chosen].item()
            ws, tw = p0 + 0.8 * ws, 1 + 0.8 * tw


def test_adaptive_p_state_is_per_row_and_reset_between_generations():
    m, _ = tiny_model(seed=3)
    ap = AdaptiveP(0.2, 0.9)
    kw = dict(max_new_tokens=10, seed=7, stop_token_ids=[], logits_processor=ap)
    both = generate(m, [[5, 6, 7], [9, 10, 11]], **kw)
    again = generate(m, [[5, 6, 7], [9, 10, 11]], **kw)
    alone = generate(m, [[9, 10, 11]], row_ids=[1], **kw)
    assert both.token_ids == again.token_ids and alone.token_ids[0] == both.token_ids[1]
    assert len(ap.chosen_probs) == 9  # one update per step after the first


def test_adaptive_p_validation_and_pipeline_position():
    with pytest.raises(ValueError, match="decay"): AdaptiveP(0.5, 1.2)
    with pytest.raises(ValueError, match="target"): AdaptiveP(1.5)
    with pytest.raises(ValueError, match="target"): adaptive_p(torch.zeros(1, 4), float("nan"))
    with pytest.raises(SpecError, match="adaptive_p must be the last step"):
        Pipeline([{"name": "adaptive_p", "target": 0.5}, {"name": "top_k", "k": 5}])
    x = torch.randn(2, 8)
    assert torch.equal(adaptive_p(x, torch.tensor([-1.0, 0.4]))[0], x[0])  # a negative target switches a row off


# ---------------------------------------------------------------- CFG: transformers' processors
def test_cfg_matches_transformers_unbatched_and_batched():
    m, _ = tiny_model(seed=5)
    neg = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    ours = ClassifierFreeGuidance(m, 1.7, negative_prompt_ids=neg.tolist())
    ref = UnbatchedClassifierFreeGuidanceLogitsProcessor(1.7, m, unconditional_ids=neg.clone(), use_cache=True)
    ids, g = torch.tensor([[11, 12, 13], [14, 15, 16]]), torch.Generator().manual_seed(0)
    unc = neg.clone()
    for _ in range(5):
        with torch.no_grad(): scores = m(ids).logits[:, -1].float()
        a, b = ours(ids, scores), ref(ids, scores)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        with torch.no_grad(): u = m(unc).logits[:, -1].float()  # the batched form on a doubled batch
        c = ClassifierFreeGuidanceLogitsProcessor(1.7)(ids, torch.cat([scores, u]))
        torch.testing.assert_close(torch.log_softmax(a, -1), torch.log_softmax(c, -1), atol=1e-5, rtol=0)
        nxt = torch.multinomial(torch.softmax(a, -1), 1, generator=g)
        ids, unc = torch.cat([ids, nxt], 1), torch.cat([unc, nxt], 1)


def test_cfg_in_the_loop_with_ragged_negative_prompts():
    "Left-padded negative prompts of different lengths: each row equals a no-cache forward of its own context."
    m, _ = tiny_model(seed=6)
    negs = [[3, 4], [7, 8, 9, 10, 11]]
    res = generate(m, [[20, 21, 22], [23, 24]], max_new_tokens=5, seed=1, stop_token_ids=[],
                   logits_processor=ClassifierFreeGuidance(m, [2.0, 0.5], negs), keep_logits="full")
    for r, s in enumerate([2.0, 0.5]):
        for t in range(5):
            with torch.no_grad(): u = torch.log_softmax(m(torch.tensor([negs[r] + res.token_ids[r][:t]])).logits[0, -1], -1)
            c = torch.log_softmax(res.raw_logits[r].values[t], -1)
            torch.testing.assert_close(res.processed_logits[r].values[t], u + s * (c - u), atol=2e-5, rtol=0)


def test_cfg_scale_one_is_plain_and_validation():
    m, _ = tiny_model(seed=6)
    a = generate(m, [[5, 6, 7]], max_new_tokens=6, seed=2, logits_processor=ClassifierFreeGuidance(m, 1.0))
    b = generate(m, [[5, 6, 7]], max_new_tokens=6, seed=2)
    assert a.token_ids == b.token_ids
    with pytest.raises(ValueError, match="guidance_scale"): ClassifierFreeGuidance(m, -1.0)
    with pytest.raises(ValueError, match="negative_prompt_ids"):
        ClassifierFreeGuidance(m, 2.0, [[1, 2], [3]])(torch.tensor([[5, 6, 7]]), torch.zeros(1, m.config.vocab_size))


# ---------------------------------------------------------------- DoLa
def test_dola_contrast_by_hand_and_layer_choice_per_row():
    qN = torch.tensor([[0.5, 0.4, 0.1], [0.5, 0.4, 0.1]]).log()
    near, far = torch.tensor([0.45, 0.45, 0.1]).log(), torch.tensor([0.1, 0.1, 0.8]).log()
    prem = torch.stack([torch.stack([near, far]), torch.stack([far, near])])  # row 0: layer 1 is far; row 1: layer 0
    F, M = dola_contrast(qN, prem, alpha=0.5)
    assert M.tolist() == [1, 0]
    torch.testing.assert_close(F[:, :2], torch.tensor([[math.log(5), math.log(4)]] * 2), atol=1e-6, rtol=0)
    assert torch.isinf(F[:, 2]).all()  # 0.1 < 0.5 · 0.5
    with pytest.raises(ValueError, match="alpha"): dola_contrast(qN, prem, alpha=0.0)


def test_dola_layers_buckets():
    assert dola_layers("low", 30, tied=True) == list(range(2, 15, 2))
    assert dola_layers("high", 30) == list(range(15, 30, 2))
    assert dola_layers([3, 5], 8) == [3, 5]
    with pytest.raises(ValueError, match="layers"): dola_layers([8], 8)
    with pytest.raises(ValueError, match="layers"): dola_layers("middle", 8)


def test_dola_in_the_loop_matches_a_no_cache_reference_with_left_padding():
    "Each step of each (left-padded) row = early exit over that row's own context, recomputed without a cache."
    m, _ = tiny_model(num_layers=4, seed=8)
    dola = DoLa(m, layers=[1, 2, 3], alpha=0.1)
    res = generate(m, [[20, 21, 22, 23, 24], [25, 26]], max_new_tokens=4, seed=3, stop_token_ids=[],
                   logits_processor=dola, keep_logits="full")
    norm, head = m.get_decoder().norm, m.get_output_embeddings()
    for r in range(2):
        for t in range(4):
            with torch.no_grad():
                out = m(torch.tensor([res.prompt_ids[r] + res.token_ids[r][:t]]), output_hidden_states=True)
                prem = torch.stack([head(norm(out.hidden_states[j][:, -1])) for j in (1, 2, 3)])
            F, _ = dola_contrast(out.logits[:, -1].float(), prem.float(), 0.1)
            torch.testing.assert_close(res.processed_logits[r].values[t], F[0], atol=3e-4, rtol=0)
    assert len(dola.chosen) == 4 and all(set(c.tolist()) <= {1, 2, 3} for c in dola.chosen)


def test_step_context_carries_the_attention_mask():
    m, _ = tiny_model()
    seen = []
    class Rec:
        def with_ctx(self, ids, scores, ctx): seen.append(ctx.attention_mask.clone()); return scores
        def __call__(self, ids, scores): return scores
    generate(m, [[5, 6, 7], [8]], max_new_tokens=2, seed=0, stop_token_ids=[], logits_processor=Rec())
    assert seen[0].tolist() == [[1, 1, 1], [0, 0, 1]] and seen[1].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


# ---------------------------------------------------------------- the llama.cpp preset
def test_llama_cpp_preset_spec_and_request():
    pre = Pipeline.preset("llama.cpp")
    assert Pipeline.from_yaml(pre.to_yaml()).to_spec() == pre.to_spec()
    r = to_request(pre, "llama.cpp")
    assert r["samplers"] == ["penalties", "dry", "top_n_sigma", "top_k", "top_p", "min_p", "xtc", "temperature"]
    x = torch.randn(2, 300, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    want = Pipeline([{"name": "top_k", "k": 40}, {"name": "top_p", "p": 0.95}, {"name": "min_p", "p": 0.05},
                     {"name": "temperature", "t": 0.8}])(ids, x)
    torch.testing.assert_close(pre(ids, x), want)  # the switched-off stages change nothing
    assert Pipeline.preset("llama.cpp", temperature={"t": 1.0})[-1].params == {"t": 1.0}


# ---------------------------------------------------------------- slow: the real llama-server
CHATS = [[{"role": "user", "content": "Write one sentence about the sea."}],
         [{"role": "user", "content": "Name a colour and explain why you like it."}],
         [{"role": "user", "content": "Tell me a story about a dragon."}]]


@pytest.fixture(scope="module")
def llama():
    "llama-server on the embedded model (built once if missing, ~5 min on 2 cores)."
    from soft_sampler.remote import LlamaServer, build_llama_server, llama_server_path
    if not llama_server_path().is_file(): build_llama_server()
    with LlamaServer() as srv: yield srv


def _completion(url: str, ids: list[int], params: dict, n_predict: int, n_probs: int, post: bool) -> list[dict]:
    "llama-server's native /completion: per generated token, its id and the top `n_probs` (post-sampling or raw)."
    import requests
    body = dict(prompt=ids, n_predict=n_predict, n_probs=n_probs, post_sampling_probs=post, cache_prompt=False, **params)
    r = requests.post(url + "/completion", json=body, timeout=300)
    assert r.status_code == 200, r.text[:500]
    return r.json()["completion_probabilities"]


def _raw_logits(step: dict, vocab: int) -> torch.Tensor:
    "The server's raw top log-probs of one step as a [1, vocab] row (-inf elsewhere)."
    x = torch.full((1, vocab), NEG, dtype=torch.float64)
    for d in step["top_logprobs"]: x[0, d["id"]] = d["logprob"]
    return x


def _post(step: dict) -> dict[int, float]:
    return {d["id"]: d["prob"] for d in step["top_probs"]}


@pytest.mark.slow
def test_llama_cpp_preset_gives_the_servers_candidates(real, llama):
    "llama-server's default chain vs `Pipeline.preset('llama.cpp')`: on the server's logits, the same candidates and"
    "probabilities; on our fp32 logits, the same candidates up to tokens right at a cut (Q4_1 quantisation)."
    model, tok = real
    pre, v = Pipeline.preset("llama.cpp"), model.config.vocab_size
    req = {**to_request(pre, "llama.cpp"), "seed": 0}
    for chat in CHATS:
        ids = list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
        post = _post(_completion(llama.url, ids, req, 1, 200, True)[0])
        raw = _raw_logits(_completion(llama.url, ids, req, 1, 200, False)[0], v)
        ours = torch.softmax(pre(torch.tensor([ids]), raw), -1)[0]
        got = {int(i): float(ours[i]) for i in ours.nonzero()[:, 0]}
        assert set(got) == set(post) and 1 < len(post) <= 40, (sorted(got), sorted(post))
        assert max(abs(got[i] - post[i]) for i in post) < 1e-5  # measured: ~2e-7
        with torch.no_grad(): local = model(torch.tensor([ids])).logits[0, -1:].double()
        kept = torch.isfinite(pre(torch.tensor([ids]), local))[0]
        lp = torch.log_softmax(local[0], -1)
        cut = (lp[kept].min() + lp[~kept].max()) / 2
        for t in set(kept.nonzero()[:, 0].tolist()) ^ set(post):
            assert abs(float(lp[t] - cut)) < 0.25, (t, float(lp[t]), float(cut))  # only tokens next to the cut differ


@pytest.mark.slow
def test_adaptive_p_follows_the_server_over_one_generation(real, llama):
    "min-p 0.05 → adaptive-p (τ 0.3, γ 0.9) on llama-server: every step's distribution after adaptive-p equals"
    "our `AdaptiveP` driven by the server's raw log-probs and its chosen tokens (the EMA state carried across steps)."
    model, tok = real
    v, steps = model.config.vocab_size, 10
    pipe = Pipeline([{"name": "min_p", "p": 0.05}, {"name": "adaptive_p", "target": 0.3, "decay": 0.9}])
    req = {**to_request(pipe, "llama.cpp"), "seed": 3}
    ids = list(tok.apply_chat_template(CHATS[2], add_generation_prompt=True, return_dict=True)["input_ids"])
    post, raw = _completion(llama.url, ids, req, steps, 100, True), _completion(llama.url, ids, req, steps, 100, False)
    assert [s["id"] for s in post] == [s["id"] for s in raw] and len(post) == steps  # same seed, same tokens
    seq, worst, moved = list(ids), 0.0, 0
    for s_post, s_raw in zip(post, raw):
        out = torch.softmax(pipe(torch.tensor([seq]), _raw_logits(s_raw, v)), -1)[0]
        want = _post(s_post)
        assert set(out.nonzero()[:, 0].tolist()) == set(want)
        worst = max(worst, max(abs(float(out[i]) - p) for i, p in want.items()))
        seq.append(s_raw["id"])
    assert worst < 1e-5, worst  # measured: ~6e-8
    ap = pipe[-1].proc
    assert len(ap.chosen_probs) == steps - 1 and abs(float(ap.weighted_sum[0]) - 0.3 / 0.1) > 1e-3  # the state moved
