"""Bad inputs for pipelines, specs, YAML and `to_request` (issue #23, pipeline layer), table-driven.

Every bad spec raises `SpecError` (a `ValueError`) naming the entry and the parameter; values that need the model's
vocabulary are refused when applied, naming the parameter, with the input logits unmodified; specs that are valid
whatever the vocabulary (token id 100, a per-row temperature) are accepted and round-trip through YAML.
`to_request` refuses parameters whose meaning a server does not share, and never sends what llama-server's schema
refuses. `BAD_INPUT_COUNT` says how many bad inputs the module tries."""
import json, math, warnings
import pytest
import torch
import yaml
from soft_sampler.heuristics import Pipeline, Step, SpecError, STEPS, to_request

torch.set_num_threads(1)
NAN, INF = float("nan"), float("inf")

GOOD = {  # one valid parameter set per registered step
    "temperature": dict(t=0.7), "top_k": dict(k=5), "top_p": dict(p=0.9), "min_p": dict(p=0.1), "typical": dict(p=0.9),
    "epsilon": dict(eps=0.01), "eta": dict(eps=0.01), "top_h": dict(h=0.5), "top_n_sigma": dict(n=1.0),
    "dynamic_temperature": dict(low=0.5, high=1.5), "quadratic": dict(factor=0.3), "top_a": dict(a=0.2), "tfs": dict(z=0.9),
    "logit_bias": dict(bias={3: -1.0}), "xtc": dict(threshold=0.1, probability=0.5), "repetition_penalty": dict(penalty=1.2),
    "presence_penalty": dict(penalty=0.5), "frequency_penalty": dict(penalty=0.5), "no_repeat_ngram": dict(n=3),
    "dry": dict(multiplier=0.8), "mirostat": dict(tau=5.0),
}
# values a YAML/JSON file can hold that mean nothing for a number: step -> parameters tried with each of them
YAML_BAD = [None, "x", "0.7", True, [], {}, NAN]
NUMERIC = {"temperature": ["t"], "top_k": ["k", "min_tokens_to_keep"], "top_p": ["p", "min_tokens_to_keep"],
           "min_p": ["p", "min_tokens_to_keep"], "typical": ["p", "min_tokens_to_keep"], "epsilon": ["eps", "min_tokens_to_keep"],
           "eta": ["eps", "min_tokens_to_keep"], "top_h": ["h"], "top_n_sigma": ["n"], "dynamic_temperature": ["low", "high", "exponent"],
           "quadratic": ["factor", "curve"], "top_a": ["a", "min_tokens_to_keep"], "tfs": ["z", "min_tokens_to_keep"],
           "xtc": ["threshold", "probability", "min_keep", "seed"], "repetition_penalty": ["penalty"],
           "presence_penalty": ["penalty"], "frequency_penalty": ["penalty"], "no_repeat_ngram": ["n"],
           "dry": ["multiplier", "base", "allowed_length", "penalty_last_n"], "mirostat": ["tau", "eta", "m"]}
INF_MEANINGLESS = {"top_p": ["p"], "min_p": ["p"], "typical": ["p"], "epsilon": ["eps"], "eta": ["eps"], "top_h": ["h"],
                   "dynamic_temperature": ["low", "high", "exponent"], "quadratic": ["factor", "curve"], "top_a": ["a"],
                   "tfs": ["z"], "xtc": ["threshold", "probability"], "repetition_penalty": ["penalty"],
                   "presence_penalty": ["penalty"], "frequency_penalty": ["penalty"], "dry": ["multiplier", "base"],
                   "mirostat": ["tau", "eta"]}
VALUE_CASES = ([(s, p, v) for s, ps in NUMERIC.items() for p in ps for v in YAML_BAD
                if not (v == [] and s == "xtc" and p == "keep_tokens")]
               + [(s, p, v) for s, ps in INF_MEANINGLESS.items() for p in ps for v in (INF, -INF)])


@pytest.mark.parametrize("step,param,value", VALUE_CASES, ids=[f"{s}-{p}={v!r}" for s, p, v in VALUE_CASES])
def test_bad_value_in_a_spec(step, param, value):
    spec = [{"name": "temperature", "t": 1.0}, {"name": step, **GOOD[step], param: value}]
    with pytest.raises(SpecError) as e: Pipeline(spec)
    msg = str(e.value)
    assert f"entry 1 ({step})" in msg and f"`{param}`" in msg, msg


OTHER = [  # (id, spec (or YAML text), what the message must contain)
    ("unknown step", [{"name": "minp", "p": 0.1}], "unknown step 'minp'"),
    ("unknown parameter", [{"name": "min_p", "q": 0.1}], "unknown parameter(s) ['q']"),
    ("missing parameter", [{"name": "min_p"}], "needs parameter(s) ['p']"),
    ("dict without name", [{"p": 0.1}], "needs a 'name' key"),
    ("a number as a step", [3], "expected a Step"),
    ("spec not a list", 3, "a pipeline spec is a list"),
    ("mirostat not last", [{"name": "mirostat", "tau": 3.0}, {"name": "top_k", "k": 5}], "mirostat must be the last step"),
    ("include_prompt 'no'", [{"name": "repetition_penalty", "penalty": 1.2, "include_prompt": "no"}], "`include_prompt`"),
    ("include_prompt 0", [{"name": "presence_penalty", "penalty": 0.5, "include_prompt": 0}], "`include_prompt`"),
    ("include_prompt None", [{"name": "dry", "multiplier": 0.8, "include_prompt": None}], "`include_prompt`"),
    ("keep_ties 'false'", [{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_ties": "false"}], "`keep_ties`"),
    ("pad_token_id str", [{"name": "no_repeat_ngram", "n": 2, "pad_token_id": "0"}], "`pad_token_id`"),
    ("xtc keep_tokens negative", [{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_tokens": [-1]}], "`keep_tokens`"),
    ("xtc keep_tokens a string", [{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_tokens": "12"}], "`keep_tokens`"),
    ("xtc keep_tokens floats", [{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_tokens": [1.5]}], "`keep_tokens`"),
    ("logit_bias JSON string keys", [{"name": "logit_bias", "bias": {"100": -5.0}}], "`bias` keys"),
    ("logit_bias negative key", [{"name": "logit_bias", "bias": {-3: -5.0}}], "`bias` keys"),
    ("logit_bias NaN value", [{"name": "logit_bias", "bias": {3: NAN}}], "`bias`"),
    ("logit_bias +inf value", [{"name": "logit_bias", "bias": {3: INF}}], "`bias`"),
    ("logit_bias str value", [{"name": "logit_bias", "bias": {3: "x"}}], "`bias`"),
    ("logit_bias None", [{"name": "logit_bias", "bias": None}], "`bias`"),
    ("dry breakers a string", [{"name": "dry", "multiplier": 0.8, "sequence_breakers": "abc"}], "`sequence_breakers`"),
    ("dry breakers strings", [{"name": "dry", "multiplier": 0.8, "sequence_breakers": ["\n", ":"]}], "`sequence_breakers`"),
    ("dry breakers negative", [{"name": "dry", "multiplier": 0.8, "sequence_breakers": [[5, -1]]}], "`sequence_breakers`"),
    ("dynamic temperature high < low", [{"name": "dynamic_temperature", "low": 1.5, "high": 0.5}], "`high`"),
    ("mirostat version 3", [{"name": "mirostat", "tau": 5.0, "version": 3}], "`version`"),
    ("top_h top_n 0", [{"name": "top_h", "h": 0.5, "top_n": 0}], "`top_n`"),
    ("per-row lengths differ", [{"name": "xtc", "threshold": [0.1, 0.2], "probability": [0.5, 0.5, 0.5]}], "one length"),
    ("per-row bad value", [{"name": "temperature", "t": [0.5, -1.0, 0.7]}], "at rows [1]"),
    ("per-row tensor bad value", [{"name": "top_p", "p": torch.tensor([0.5, 1.5])}], "`p`"),
    ("per-row nested list", [{"name": "min_p", "p": [[0.1, 0.2]]}], "`p`"),
    ("YAML invalid", "- name: [unclosed", "invalid YAML"),
    ("YAML python tag", "- !!python/object/apply:os.system ['echo pwned']", "invalid YAML"),
    ("YAML a scalar", "temperature", "a pipeline spec is a list"),
    ("YAML value a word", "- name: top_k\n  k: many", "entry 0 (top_k)"),
    ("YAML value null", "- name: min_p\n  p:", "`p`"),
]


@pytest.mark.parametrize("what,spec,msg", OTHER, ids=[o[0] for o in OTHER])
def test_bad_spec(what, spec, msg):
    with pytest.raises(SpecError) as e:
        Pipeline.from_yaml(spec) if isinstance(spec, str) else Pipeline.from_spec(spec)
    assert msg in str(e.value), str(e.value)


# ---- valid whatever the vocabulary: accepted; refused only when applied to a vocabulary that lacks the id ---------
def test_token_ids_beyond_a_dummy_vocabulary_are_accepted():
    p = Pipeline([{"name": "logit_bias", "bias": {100: -5.0}}, {"name": "xtc", "threshold": 0.1, "probability": 1.0,
                                                                  "keep_tokens": [9000]},
                  {"name": "dry", "multiplier": 0.8, "sequence_breakers": [4000, [12, 13]]}])
    assert Pipeline.from_yaml(p.to_yaml()).to_spec() == p.to_spec()
    x, ids = torch.randn(2, 10000), torch.zeros(2, 1, dtype=torch.long)
    out = p(ids, x)
    assert (out[:, 100] == x[:, 100] - 5).all()


APPLY = [  # (spec, vocab, the parameter named)
    ([{"name": "logit_bias", "bias": {100: -5.0}}], 50, "`bias`"),
    ([{"name": "xtc", "threshold": 0.1, "probability": 1.0, "keep_tokens": [9000]}], 200, "`keep_tokens`"),
    ([{"name": "temperature", "t": [0.5, 0.9, 1.3]}], 20, "`t`"),  # per-row for 3 rows, applied to 2
    ([{"name": "repetition_penalty", "penalty": [1.1, 1.2]}], 20, "`penalty`"),
]


@pytest.mark.parametrize("spec,vocab,name", APPLY, ids=[a[0][0]["name"] for a in APPLY])
def test_vocabulary_dependent_values_are_refused_when_applied(spec, vocab, name):
    p = Pipeline(spec)
    x = torch.randn(2 if name != "`penalty`" else 3, vocab); before = x.clone()
    with pytest.raises(ValueError) as e: p(torch.zeros(x.shape[0], 1, dtype=torch.long), x)
    assert name in str(e.value), str(e.value)
    assert torch.equal(x, before)


def test_per_row_pipeline_round_trips_through_yaml():
    p = Pipeline([{"name": "temperature", "t": torch.tensor([.5, .9, 1.3])}, {"name": "top_k", "k": [3, 5, 7]}])
    q = Pipeline.from_yaml(p.to_yaml())
    assert q.to_spec() == p.to_spec()
    x = torch.randn(3, 30)
    torch.testing.assert_close(q(None, x), p(None, x))


def test_spec_validation_does_not_depend_on_a_dummy_row():
    "Parameters valid for any batch or vocabulary: a long bias, a large min_tokens_to_keep, a per-row list."
    Pipeline([{"name": "logit_bias", "bias": {i: -1.0 for i in range(0, 5000, 7)}}, {"name": "top_k", "k": 40, "min_tokens_to_keep": 50},
              {"name": "min_p", "p": [0.1, 0.2, 0.3, 0.4]}])


# ---- to_request ----------------------------------------------------------------------------------------------------
REQUEST_BAD = [  # (pipeline spec, server, what the message must contain)
    ([{"name": "presence_penalty", "penalty": 0.5}], "llama.cpp", "include_prompt=True"),
    ([{"name": "frequency_penalty", "penalty": 0.5}], "llama.cpp", "include_prompt=True"),
    ([{"name": "repetition_penalty", "penalty": 1.2, "include_prompt": False}], "llama.cpp", "include_prompt=True"),
    ([{"name": "repetition_penalty", "penalty": 1.2, "include_prompt": False}], "vllm", "include_prompt=True"),
    ([{"name": "presence_penalty", "penalty": 0.5, "include_prompt": True}], "vllm", "include_prompt=False"),
    ([{"name": "frequency_penalty", "penalty": 0.5, "include_prompt": True}], "openai", "include_prompt=False"),
    ([{"name": "dry", "multiplier": 0.8, "include_prompt": False}], "llama.cpp", "include_prompt=True"),
    ([{"name": "dry", "multiplier": 0.8, "sequence_breakers": [5]}], "llama.cpp", "sequence_breakers"),
    ([{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_tokens": [2], "keep_ties": False}], "llama.cpp", "keep_tokens"),
    ([{"name": "xtc", "threshold": 0.1, "probability": 0.5, "min_keep": 3, "keep_ties": False}], "llama.cpp", "min_keep"),
    ([{"name": "top_k", "k": 5, "min_tokens_to_keep": 3}], "llama.cpp", "min_tokens_to_keep"),
    ([{"name": "top_p", "p": 0.9, "min_tokens_to_keep": 3}], "vllm", "min_tokens_to_keep"),
    ([{"name": "mirostat", "tau": 5.0, "version": 1, "m": 50}], "llama.cpp", "m=100"),
    ([{"name": "temperature", "t": [0.5, 0.7]}], "llama.cpp", "per-row"),
    ([{"name": "presence_penalty", "penalty": 0.5, "include_prompt": True}, {"name": "repetition_penalty", "penalty": 1.2}],
     "llama.cpp", "one penalties sampler"),
    ([{"name": "top_k", "k": 5}, {"name": "top_k", "k": 3}], "llama.cpp", "each sampler once"),
    ([{"name": "tfs", "z": 0.9}], "llama.cpp", "cannot express"),
]


@pytest.mark.parametrize("spec,server,msg", REQUEST_BAD, ids=[f"{s[0]['name']}-{srv}" for s, srv, _ in REQUEST_BAD])
def test_to_request_refuses_what_the_server_means_differently(spec, server, msg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SpecError) as e: to_request(Pipeline(spec), server)
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("kw,msg", [(dict(server="sglang"), "`server`"), (dict(history=0), "`history`"),
                                    (dict(history=2**31), "`history`"), (dict(history=True), "`history`")])
def test_to_request_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg): to_request(Pipeline([{"name": "top_k", "k": 5}]), **kw)


def test_xtc_ties_warn_for_llama_cpp():
    with pytest.warns(UserWarning, match="keep_ties=False"):
        to_request(Pipeline([{"name": "xtc", "threshold": 0.1, "probability": 0.5}]), "llama.cpp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_request(Pipeline([{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_ties": False}]), "llama.cpp")


LLAMA_SCHEMA_NONNEG = ["repeat_last_n", "dry_penalty_last_n", "dry_allowed_length", "min_keep"]
EXPRESSIBLE = [
    [{"name": "temperature", "t": 0.7}], [{"name": "dynamic_temperature", "low": 0.5, "high": 1.5, "exponent": 2.0}],
    [{"name": "top_k", "k": 5}], [{"name": "top_p", "p": 0.9}], [{"name": "min_p", "p": 0.1}], [{"name": "typical", "p": 0.9}],
    [{"name": "top_n_sigma", "n": 1.0}], [{"name": "xtc", "threshold": 0.1, "probability": 0.5, "keep_ties": False}],
    [{"name": "dry", "multiplier": 0.8}], [{"name": "dry", "multiplier": 0.8, "penalty_last_n": 64}],
    [{"name": "repetition_penalty", "penalty": 1.2}],
    [{"name": "presence_penalty", "penalty": 0.5, "include_prompt": True}],
    [{"name": "frequency_penalty", "penalty": 0.5, "include_prompt": True}],
    [{"name": "repetition_penalty", "penalty": 1.2}, {"name": "frequency_penalty", "penalty": 0.3, "include_prompt": True},
     {"name": "presence_penalty", "penalty": 0.2, "include_prompt": True}],
    [{"name": "mirostat", "tau": 5.0}], [{"name": "temperature", "t": 0.8}, {"name": "mirostat", "tau": 4.0, "version": 1}],
]


@pytest.mark.parametrize("spec", EXPRESSIBLE, ids=["+".join(s["name"] for s in e) for e in EXPRESSIBLE])
def test_llama_request_fits_its_schema(spec):
    "llama-server refuses negative last-n values (schema 0..INT32_MAX) and an empty dry_sequence_breakers."
    r = to_request(Pipeline(spec), "llama.cpp")
    for k in LLAMA_SCHEMA_NONNEG:
        if k in r: assert 0 <= r[k] < 2**31, (k, r[k])
    if "dry_sequence_breakers" in r: assert r["dry_sequence_breakers"] and all(isinstance(s, str) for s in r["dry_sequence_breakers"])
    json.dumps(r)


BAD_INPUT_COUNT = len(VALUE_CASES) + len(OTHER) + len(APPLY) + len(REQUEST_BAD) + 4


def test_count_of_bad_inputs():
    print(f"pipeline/spec layer: {len(VALUE_CASES)} bad values in specs, {len(OTHER)} malformed specs, {len(APPLY)} refused "
          f"when applied, {len(REQUEST_BAD) + 4} refused by to_request = {BAD_INPUT_COUNT}")
    assert BAD_INPUT_COUNT > 200
