"""Bad inputs, remote layer (#23): servers that answer badly, slowly, hugely or not at all, against the inference
client (`RemoteEngine`) and the reward client (`RemoteReward`), served by tests/faults.py on loopback. Every case
asserts the error type and that the message names the URL; the deadline cases assert what the server managed to
send before the client gave up (no timed assertions)."""
import json, re, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from faults import Fault, FaultServer  # noqa: E402

from soft_sampler.remote import RemoteEngine, RemoteServerError, parse_choice  # noqa: E402
from soft_sampler.rewards import RemoteReward, RewardServerError  # noqa: E402

V = 100  # the client's vocabulary


def choice(ids, lps=None, **kw):
    return {"index": 0, "finish_reason": "length", **kw,
            "logprobs": {"content": [{"id": i, "logprob": l} for i, l in zip(ids, lps or [-0.5] * len(ids))]}}


@pytest.fixture
def srv():
    s = FaultServer()
    yield s
    s.stop()


def engine(s, **kw):
    return RemoteEngine(s.url, **{"retries": 1, "backoff": 0.01, "timeout": 5, "vocab_size": V, **kw})


# ---- answers with the wrong content (defect 4 and the malformed-answer cases) --------------------------------

BAD_ANSWERS = [  # (answer body, what the message says)
    (None, "without a list of choices"),
    ({"choices": None}, "without a list of choices"),
    ({"choices": [None]}, "without a list of choices"),
    ({"object": "text_completion"}, "without a list of choices"),
    ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "no token log-probs"),
    ({"choices": [{"index": 0, "logprobs": None}]}, "no token log-probs"),
    ({"choices": [{"index": 0, "logprobs": {"content": "abc"}}]}, "must be a list of objects"),
    ({"choices": [choice([5, -1])]}, r"token 1: id -1 is outside the vocabulary \[0, 100\)"),
    ({"choices": [choice([100])]}, r"token 0: id 100 is outside the vocabulary \[0, 100\)"),
    ({"choices": [choice([10**12])]}, "outside the vocabulary"),
    ({"choices": [choice(["5"])]}, "token 0: id '5' is not an integer"),
    ({"choices": [choice([3.0])]}, "id 3.0 is not an integer"),
    ({"choices": [choice([True])]}, "id True is not an integer"),
    ({"choices": [choice([None])]}, "id None is not an integer"),
    ({"choices": [choice([3], ["x"])]}, "log-prob 'x' is not a number"),
    ({"choices": [choice([3], [None])]}, "log-prob None is not a number"),
    ({"choices": [choice([3], [2.5])]}, "log-prob 2.5 is not a number <= 0"),
    ({"choices": [{"index": 0, "logprobs": {"tokens": ["token_id:7", "token_id:8"], "token_logprobs": [-1.0]}}]}, "2 token ids but 1 log-probs"),
    ({"choices": [{"index": 0, "logprobs": {"tokens": ["token_id:x"], "token_logprobs": [-1.0]}}]}, "is not a token id"),
    ({"choices": [{"index": 0, "logprobs": {"tokens": ["hello"], "token_logprobs": [-1.0]}}]}, "return_tokens_as_token_ids"),
    ({"choices": [{"index": 0, "logprobs": {"tokens": "abc", "token_logprobs": [-1.0]}}]}, "must be lists"),
    ({"choices": [choice([3]), choice([4])]}, "returned 2 choices for 1 prompts"),
    ({"choices": []}, "returned 0 choices for 1 prompts"),
]


@pytest.mark.parametrize("body, msg", BAD_ANSWERS, ids=[m[:30] for _, m in BAD_ANSWERS])
def test_bad_answers_are_errors_naming_the_url(srv, body, msg):
    srv.plan = [Fault("json", body=body)]
    with pytest.raises(RemoteServerError, match=msg) as e: engine(srv).complete([[1, 2]], [3])
    assert f"{srv.url}/v1/completions" in str(e.value)
    assert len(srv.requests) == 1, "a malformed answer is not retried"


def test_out_of_vocab_ids_never_become_qalign_states(srv, tmp_path):
    "Defect 4: ids outside the vocabulary used to become chain states; now the run stops and the checkpoint holds only the header."
    from soft_sampler.qalign import QAlign
    srv.plan = [Fault("json", body={"choices": [choice([V + 5, 2], finish_reason="stop")]})]
    ck = tmp_path/"chain.jsonl"
    qa = QAlign(engine(srv), lambda p, r: [0.0] * len(r), stop_token_ids=[2])
    with pytest.raises(RemoteServerError, match="outside the vocabulary"):
        qa.run([1, 2, 3], chains=1, steps=2, max_new_tokens=4, checkpoint=ck, progress=False)
    lines = ck.read_text().splitlines()
    assert len(lines) == 1 and "header" in json.loads(lines[0])


def test_parse_choice_without_a_vocabulary_still_refuses_negative_ids():
    assert parse_choice(choice([7, 99999])).token_ids == [7, 99999]
    with pytest.raises(ValueError, match="id -3 is outside"): parse_choice(choice([-3]))
    with pytest.raises(ValueError, match="a choice must be a JSON object"): parse_choice([1, 2])


# ---- answers that fail, stall or flood (defect 8) -----------------------------------------------------------

FAULTS = [  # (planned faults, engine settings, message)
    ([Fault("garbage")], {}, "did not answer JSON"),
    ([Fault("status", status=400)], {}, "answered HTTP 400"),
    ([Fault("status", status=404)], {}, "answered HTTP 404"),
    ([Fault("status", status=500)] * 3, {"retries": 2}, "kept failing after 2 retries .last: answered HTTP 500"),
    ([Fault("status", status=503, retry_after="6")], {"timeout": 1}, "asked to retry after 6 s, past the 1 s deadline"),
    ([Fault("drop")] * 2, {"retries": 1}, "kept failing after 1 retries .last: dropped the connection"),
    ([Fault("hang", limit=10)], {"timeout": 0.5, "retries": 3}, r"did not answer within 0.5 s"),
    ([Fault("trickle", size=400, interval=0.05)], {"timeout": 0.5, "retries": 3}, r"did not answer within 0.5 s"),
    ([Fault("huge", size=300 * 2**20)], {"max_response_bytes": 2**20}, "sent 314572800 bytes, over the 1048576-byte limit"),
    ([Fault("huge", size=300 * 2**20, length=False)], {"max_response_bytes": 2**20}, "sent more than the 1048576-byte limit"),
]


@pytest.mark.parametrize("plan, kw, msg", FAULTS, ids=[p[0].kind + ("-nolength" if not p[0].length else "") + f"-{p[0].status}" for p, _, _ in FAULTS])
def test_faults_are_errors_naming_the_url(srv, plan, kw, msg):
    srv.plan = list(plan)
    with pytest.raises(RemoteServerError, match=msg) as e: engine(srv, **kw).complete([[1, 2]], [3])
    assert f"{srv.url}/v1/completions" in str(e.value)


def test_the_deadline_covers_a_trickled_body(srv):
    "Defect 8: a server sending one byte every 0.05 s for 20 s held a timeout=0.5 request until the end."
    srv.plan = [Fault("trickle", size=400, interval=0.05)]
    with pytest.raises(RemoteServerError, match="did not answer within 0.5 s"): engine(srv, timeout=0.5, retries=3).complete([[1]], [2])
    srv.stop()  # ends the handler: what it had sent is recorded
    assert len(srv.requests) == 1, "no retry once the deadline has passed"
    sent = srv.wait_sent()[0]
    assert sent < 200, f"the client read {sent} of 400 trickled bytes (~20 s): no deadline"


def test_retry_after_beyond_the_deadline_is_not_waited_for(srv):
    "Defect 8: Retry-After: 6 with timeout=1 waited 6 s per retry (18 s); now the client stops at once."
    srv.plan = [Fault("status", status=503, retry_after="6")] * 4
    with pytest.raises(RemoteServerError, match="retry after 6 s, past the 1 s deadline"): engine(srv, timeout=1, retries=3).complete([[1]], [2])
    assert len(srv.requests) == 1


def test_retry_after_within_the_deadline_is_honoured(srv):
    srv.plan = [Fault("status", status=503, retry_after="0.05"), Fault("json", body={"choices": [choice([4, 5])]})]
    assert engine(srv, timeout=5).complete([[1]], [2])[0].token_ids == [4, 5] and len(srv.requests) == 2


def test_a_huge_body_is_not_read_whole(srv):
    "Defect 8: a 300 MB answer was read into memory; now reading stops past the cap."
    srv.plan = [Fault("huge", size=300 * 2**20, length=False)]
    with pytest.raises(RemoteServerError, match="more than the 1048576-byte limit"): engine(srv, max_response_bytes=2**20).complete([[1]], [2])
    srv.stop()
    sent = srv.wait_sent()[0]
    assert sent < 100 * 2**20, f"the server wrote {sent} bytes before the client hung up"


def test_unreachable_server_names_the_url():
    s = FaultServer(); url = s.url; s.stop()
    with pytest.raises(RemoteServerError, match=re.escape(url) + "/v1/completions is unreachable after 1 retries; is it running"):
        RemoteEngine(url, retries=1, backoff=0.01, timeout=5).complete([[1]], [2])


def test_reward_server_faults_name_the_url(srv):
    rew = lambda **kw: RemoteReward(srv.url + "/score", retries=kw.pop("retries", 1), backoff=0.01, timeout=kw.pop("timeout", 5))
    for plan, msg in [([Fault("json", body=None)], "must return a list of 1 numbers, got None"), ([Fault("garbage")], "did not answer JSON"),
                      ([Fault("trickle", size=400)], "did not answer within 0.5 s"),
                      ([Fault("status", status=503, retry_after="9")], "retry after 9 s, past the 0.5 s deadline")]:
        srv.plan = list(plan)
        with pytest.raises(RewardServerError, match=msg) as e: rew(timeout=0.5).score_texts(["p"], ["r"])
        assert srv.url + "/score" in str(e.value)


# ---- constructor parameters ---------------------------------------------------------------------------------

BAD_ENGINE_ARGS = [  # (keyword arguments, the error type, what the message names)
    (dict(retries="3"), ValueError, "retries must be an int >= 0, got '3'"),
    (dict(retries=1.5), ValueError, "retries must be an int"),
    (dict(retries=True), ValueError, "retries must be an int"),
    (dict(timeout="1"), ValueError, "timeout must be > 0"),
    (dict(timeout=float("inf")), ValueError, "timeout must be > 0, a finite number"),
    (dict(timeout=None), ValueError, "timeout must be > 0"),
    (dict(backoff="0.5"), ValueError, "backoff must be >= 0"),
    (dict(backoff=-1), ValueError, "backoff must be >= 0"),
    (dict(concurrency="2"), ValueError, "concurrency must be an int >= 1"),
    (dict(prompts_per_request=0), ValueError, "prompts_per_request must be an int >= 1"),
    (dict(vocab_size=0), ValueError, "vocab_size must be an int >= 1"),
    (dict(vocab_size="100"), ValueError, "vocab_size must be an int"),
    (dict(max_response_bytes=0), ValueError, "max_response_bytes must be an int >= 1"),
    (dict(model=5), TypeError, "model must be None or a string"),
    (dict(url=5), ValueError, "url must start with http:// or https://"),
    (dict(url="ftp://127.0.0.1:1"), ValueError, "url must start with http"),
    (dict(url="file:///etc/passwd"), ValueError, "url must start with http"),
    (dict(engine="tgi"), ValueError, "engine must be one of"),
]


@pytest.mark.parametrize("kw, err, msg", BAD_ENGINE_ARGS, ids=[str(k) for k, _, _ in BAD_ENGINE_ARGS])
def test_engine_arguments_name_the_parameter(kw, err, msg):
    with pytest.raises(err, match=re.escape(msg)): RemoteEngine(**{"url": "http://127.0.0.1:1", **kw})


BAD_REWARD_ARGS = [(dict(retries="3"), "retries"), (dict(timeout="1"), "timeout"), (dict(backoff=None), "backoff"),
                   (dict(timeout=0), "timeout"), (dict(batch_size=0), "batch_size"), (dict(url="ftp://x"), "url")]


@pytest.mark.parametrize("kw, name", BAD_REWARD_ARGS, ids=[str(k) for k, _ in BAD_REWARD_ARGS])
def test_reward_client_arguments_name_the_parameter(kw, name):
    with pytest.raises(ValueError, match=f"`{name}` must"): RemoteReward(**{"url": "http://127.0.0.1:1/score", **kw})


def count_cases() -> int:
    "Bad inputs this module tries (reported in the issue note)."
    return len(BAD_ANSWERS) + 3 + len(FAULTS) + 5 + 4 + len(BAD_ENGINE_ARGS) + len(BAD_REWARD_ARGS)
