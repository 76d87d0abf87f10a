"""`to_request` against the real llama-server (slow tier): every step kind it can express is sent to the server,
which must accept the request (HTTP 200: its schema refuses e.g. a negative `repeat_last_n`) and apply the same
distribution as our pipeline on the local fp32 model (the server runs the Q4_1 weights: distributions agree to a
small total variation). A control checks that each step changes the distribution by much more than that tolerance,
so a step the server ignored or applied differently would fail."""
import pytest
import torch
from soft_sampler.heuristics import Pipeline, to_request
from soft_sampler.sampling import StepContext

TOL, EFFECT = 0.08, 0.15  # TV(server, ours) must stay below TOL; TV(with the step, without) must exceed EFFECT
TEXT = "Repeat exactly: the cat sat on the mat. the cat sat on the mat. the cat sat on the"
STEPS = {  # id: pipeline spec (parameters chosen so the step changes the first token's distribution a lot)
    "temperature": [{"name": "temperature", "t": 0.4}],
    "dynamic_temperature": [{"name": "dynamic_temperature", "low": 0.2, "high": 1.0, "exponent": 0.5}],
    "top_k": [{"name": "top_k", "k": 2}],
    "top_p": [{"name": "top_p", "p": 0.4}],
    "min_p": [{"name": "min_p", "p": 0.3}],
    "typical": [{"name": "typical", "p": 0.3}],
    "top_n_sigma": [{"name": "top_n_sigma", "n": 1.0}],
    "xtc": [{"name": "xtc", "threshold": 0.05, "probability": 1.0, "keep_ties": False}],
    "dry": [{"name": "dry", "multiplier": 2.0, "allowed_length": 2}],
    "dry_last_n": [{"name": "dry", "multiplier": 2.0, "allowed_length": 2, "penalty_last_n": 24}],
    "repetition_penalty": [{"name": "repetition_penalty", "penalty": 3.0}],
    "presence_penalty": [{"name": "presence_penalty", "penalty": 2.0, "include_prompt": True}],
    "frequency_penalty": [{"name": "frequency_penalty", "penalty": 1.0, "include_prompt": True}],
    "penalties": [{"name": "repetition_penalty", "penalty": 1.5}, {"name": "frequency_penalty", "penalty": 0.5, "include_prompt": True},
                  {"name": "presence_penalty", "penalty": 0.5, "include_prompt": True}],
    "chain": [{"name": "repetition_penalty", "penalty": 1.3}, {"name": "temperature", "t": 1.5}, {"name": "min_p", "p": 0.05},
              {"name": "top_k", "k": 20}],
    "mirostat_v2": [{"name": "mirostat", "tau": 2.0}],
    "mirostat_v1": [{"name": "temperature", "t": 0.8}, {"name": "mirostat", "tau": 3.0, "version": 1}],
}


@pytest.fixture(scope="module")
def llama():
    from soft_sampler.remote import LlamaServer, build_llama_server, llama_server_path
    if not llama_server_path().is_file(): build_llama_server()
    with LlamaServer() as srv: yield srv


@pytest.fixture(scope="module")
def setup(real):
    model, tok = real
    ids = tok.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True, return_dict=True)["input_ids"]
    ids = ids + tok(" the cat sat on the", add_special_tokens=False)["input_ids"]  # the response so far repeats the prompt
    with torch.no_grad(): raw = model(torch.tensor([ids])).logits[:, -1].float()
    return ids, raw


def server_probs(url, ids, request, n=200) -> dict[int, float]:
    "The server's first-token distribution after its sampler chain (top `n`; fewer when the chain keeps fewer)."
    import requests
    body = dict(prompt=ids, n_predict=1, n_probs=n, post_sampling_probs=True, seed=0, cache_prompt=False, **request)
    r = requests.post(url + "/completion", json=body, timeout=120)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return {t["id"]: t["prob"] for t in r.json()["completion_probabilities"][0]["top_probs"]}


def ours(ids, raw, spec) -> torch.Tensor:
    pipe = Pipeline(spec)
    ctx = StepContext(torch.tensor([len(ids)]), torch.tensor([0]), 0)  # the whole context is prompt (include_prompt=True)
    return pipe.with_ctx(torch.tensor([ids]), raw.clone(), ctx).double().softmax(-1)[0]


def tv(p: dict[int, float], q: torch.Tensor | dict) -> float:
    "Total variation on the tokens `p` lists plus one bucket for the rest (a lower bound of the full TV)."
    get = (lambda i: float(q[i])) if isinstance(q, torch.Tensor) else (lambda i: q.get(i, 0.0))
    rest_q = 1 - sum(get(i) for i in p)
    return 0.5 * (sum(abs(v - get(i)) for i, v in p.items()) + abs((1 - sum(p.values())) - rest_q))


@pytest.mark.slow
def test_plain_request_matches_the_local_model(llama, setup):
    ids, raw = setup
    plain = server_probs(llama.url, ids, to_request(Pipeline([]), "llama.cpp"))
    assert tv(plain, raw.double().softmax(-1)[0]) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("kind", STEPS)
def test_every_expressible_step_runs_on_llama_server_as_ours(llama, setup, kind):
    ids, raw = setup
    spec = STEPS[kind]
    got = server_probs(llama.url, ids, to_request(Pipeline(spec), "llama.cpp"))
    want = ours(ids, raw, spec)
    plain = raw.double().softmax(-1)[0]
    assert tv(got, want) < TOL, (kind, tv(got, want), sorted(got.items(), key=lambda kv: -kv[1])[:5],
                                 [(int(i), float(want[i])) for i in want.topk(5).indices])
    assert tv(got, plain) > EFFECT, (kind, "the step must change the distribution for this test to mean anything")
    kept = int((want > 0).sum())
    if kept < 200: assert abs(len(got) - kept) <= max(1, kept // 10), (kind, len(got), kept)  # the same truncation
