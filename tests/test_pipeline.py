"Pipelines: specs and YAML round trips, our loop = transformers' generate, to_request, bad specs."
import pytest, torch, yaml
from hypothesis import given, settings, strategies as st
from transformers import LogitsProcessorList
from soft_sampler.core import tiny_model, load_model
from soft_sampler.sampling import generate, StepContext
from soft_sampler import heuristics as H
from soft_sampler.heuristics import Pipeline, Step, SpecError, to_request, grid, expand, pipeline_name, generate_with_pipeline

PURE = {"temperature": st.fixed_dictionaries({"t": st.floats(0.1, 3)}),
        "top_k": st.fixed_dictionaries({"k": st.integers(1, 20)}),
        "top_p": st.fixed_dictionaries({"p": st.floats(0.05, 1.0)}),
        "min_p": st.fixed_dictionaries({"p": st.floats(0.0, 1.0)}),
        "typical": st.fixed_dictionaries({"p": st.floats(0.05, 1.0, exclude_max=True)}),  # typical needs p < 1
        "epsilon": st.fixed_dictionaries({"eps": st.floats(1e-4, 0.05)}),
        "eta": st.fixed_dictionaries({"eps": st.floats(1e-4, 0.05)}),
        "top_n_sigma": st.fixed_dictionaries({"n": st.floats(0.1, 3)}),
        "top_a": st.fixed_dictionaries({"a": st.floats(0.0, 1.0)}),
        "tfs": st.fixed_dictionaries({"z": st.floats(0.05, 1.0)})}
step_st = st.sampled_from(sorted(PURE)).flatmap(lambda n: PURE[n].map(lambda p: {"name": n, **p}))


@settings(max_examples=60, deadline=None)
@given(st.lists(step_st, max_size=4), st.integers(0, 2**31 - 1))
def test_spec_and_yaml_round_trip_and_semantics(spec, seed):
    p = Pipeline(spec)
    assert p.to_spec() == spec
    assert Pipeline.from_yaml(p.to_yaml()).to_spec() == spec
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(seed))
    want = x
    for s in spec:
        want = getattr(H, s["name"])(want, *[v for k, v in s.items() if k != "name"])
    before = x.clone()
    torch.testing.assert_close(p(None, x), want)
    assert torch.equal(x, before), "a pipeline must not modify its input"


def test_bad_specs_name_the_entry():
    with pytest.raises(SpecError, match=r"entry 1: unknown step 'minp'.*allowed"):
        Pipeline([{"name": "temperature", "t": 1.0}, {"name": "minp", "p": 0.1}])
    with pytest.raises(SpecError, match=r"entry 0: unknown parameter\(s\) \['temp'\] for step 'temperature'; allowed: \['t'\]"):
        Pipeline([{"name": "temperature", "temp": 1.0}])
    with pytest.raises(SpecError, match=r"entry 0 \(top_k\)"):
        Pipeline([{"name": "top_k", "k": "ten"}])
    with pytest.raises(SpecError, match=r"entry 0: a dict step needs a 'name'"):
        Pipeline([{"t": 1.0}])
    with pytest.raises(SpecError, match="mirostat must be the last step"):
        Pipeline([{"name": "mirostat", "tau": 3.0}, {"name": "top_k", "k": 5}])
    with pytest.raises(SpecError, match="invalid YAML"):
        Pipeline.from_yaml("- name: [unclosed")


def test_yaml_is_safe():
    with pytest.raises(SpecError):
        Pipeline.from_yaml("- !!python/object/apply:os.system ['echo pwned']")


def test_yaml_file(tmp_path):
    f = tmp_path/"p.yaml"
    f.write_text("- name: temperature\n  t: 0.7\n- name: min_p\n  p: 0.1\n")
    assert Pipeline.from_yaml(f).to_spec() == [{"name": "temperature", "t": 0.7}, {"name": "min_p", "p": 0.1}]
    assert Pipeline.from_yaml(str(f)).to_spec() == Pipeline.from_yaml(f).to_spec()


def _loop_vs_generate(model, tok, pipe, ids, steps=6):
    "Processed logits at each step of our loop == the pipeline's output inside transformers' generate, same prefix."
    got = []
    class Rec:
        def __call__(self, i, s): got.append(s.clone()); return s
    res = generate(model, [ids], max_new_tokens=steps, logits_processor=[pipe, Rec()], seed=1)
    seq = ids + res.token_ids[0]
    for t in range(len(res.token_ids[0])):
        hf = []
        class Rec2:
            def __call__(self, i, s): hf.append(s.clone()); return s
        generate_with_pipeline(model, Pipeline([*pipe.steps, Rec2()]), input_ids=torch.tensor([seq[:len(ids) + t]]),
                               max_new_tokens=1, pad_token_id=tok.pad_token_id)
        torch.testing.assert_close(got[t], hf[0], rtol=1e-5, atol=1e-5)
    return res


def test_pipeline_in_loop_equals_pipeline_in_generate_tiny():
    model, tok = tiny_model(init_std=0.5)
    pipe = Pipeline([{"name": "temperature", "t": 0.8}, {"name": "top_k", "k": 10}, {"name": "min_p", "p": 0.05},
                     {"name": "repetition_penalty", "penalty": 1.3}])
    _loop_vs_generate(model, tok, pipe, tok("hello there")["input_ids"])


@pytest.mark.slow
def test_pipeline_in_loop_equals_pipeline_in_generate_embedded():
    model, tok = load_model()
    pipe = Pipeline([{"name": "repetition_penalty", "penalty": 1.2}, {"name": "temperature", "t": 0.7},
                     {"name": "top_p", "p": 0.9}, {"name": "min_p", "p": 0.05}])
    ids = tok.apply_chat_template([{"role": "user", "content": "Name a fruit."}], add_generation_prompt=True, tokenize=False)
    _loop_vs_generate(model, tok, pipe, tok(ids, add_special_tokens=False)["input_ids"], steps=4)


def test_history_steps_get_the_loop_context():
    "Presence penalty counts generated tokens only: through a pipeline in our loop it sees ctx.prompt_lengths."
    model, tok = tiny_model()
    seen = []
    class Spy:
        def __call__(self, i, s): return s
        def with_ctx(self, i, s, ctx): seen.append(ctx.prompt_lengths.clone()); return s
    pipe = Pipeline([{"name": "presence_penalty", "penalty": 2.0}, Spy()])
    prompts = [tok("ab")["input_ids"], tok("abcd")["input_ids"]]
    res = generate(model, prompts, tok, max_new_tokens=4, logits_processor=pipe, seed=0)
    assert len(seen) == 4 and all(torch.equal(p, seen[0]) for p in seen)
    # a huge presence penalty forbids repeating a generated token, never a prompt token
    big = Pipeline([{"name": "presence_penalty", "penalty": 2.0}, {"name": "temperature", "t": 0.01}])
    out = generate(model, prompts, tok, max_new_tokens=6, logits_processor=big, seed=0, stop_token_ids=[])
    assert len(out.token_ids[0]) == 6


def test_stateful_steps_reset_between_generations():
    model, tok = tiny_model()
    pipe = Pipeline([{"name": "temperature", "t": 1.5}, {"name": "mirostat", "tau": 3.0, "eta": 0.5}])
    a = generate(model, ["hello"], tok, max_new_tokens=8, logits_processor=pipe, seed=5, stop_token_ids=[])
    b = generate(model, ["hello"], tok, max_new_tokens=8, logits_processor=pipe, seed=5, stop_token_ids=[])
    assert a.token_ids == b.token_ids, "mirostat's mu must restart at every generate"
    assert len(pipe[1].proc.surprises) == 7


def test_sample_cli_flags_in_order(tmp_path, capsys):
    from soft_sampler.heuristics import sample_cli, add_pipeline_args, pipeline_from_args
    import argparse
    p = add_pipeline_args(argparse.ArgumentParser())
    spec = tmp_path/"p.yaml"; spec.write_text("- name: top_k\n  k: 20\n")
    ns = p.parse_args(["--pipeline", str(spec), "--temperature", "0.7", "--min-p", "0.1", "--temperature", "0.9"])
    assert [s.name for s in pipeline_from_args(ns)] == ["top_k", "temperature", "min_p", "temperature"]
    model, tok = tiny_model(); model.save_pretrained(tmp_path/"m"); tok.save_pretrained(tmp_path/"m")
    assert sample_cli(["--prompt", "hi", "--model", str(tmp_path/"m"), "--top-k", "5", "--temperature", "0.5",
                       "--max-new-tokens", "3", "--seed", "1", "--raw"]) == 0
    assert "seed 1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sample_cli(["--prompt", "hi", "--model", str(tmp_path/"m"), "--min-p", "3"])
    assert "(min_p): `p` must be" in capsys.readouterr().err


def test_to_request_each_server():
    p = Pipeline([{"name": "temperature", "t": 0.7}, {"name": "top_p", "p": 0.9}])
    r = to_request(p, "llama.cpp")
    assert r["samplers"] == ["temperature", "top_p"] and r["temperature"] == 0.7 and r["top_p"] == 0.9
    assert r["top_k"] == 0 and r["min_p"] == 0.0, "llama-server defaults must be neutralised"
    assert to_request(p, "vllm") == {"temperature": 0.7, "top_k": -1, "top_p": 0.9, "min_p": 0.0, "repetition_penalty": 1.0,
                                     "presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert to_request(p, "openai") == {"temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    with pytest.raises(SpecError, match="fixed order"):
        to_request(Pipeline([{"name": "top_p", "p": 0.9}, {"name": "temperature", "t": 0.7}]), "openai")
    assert to_request(Pipeline([{"name": "top_p", "p": 0.9}, {"name": "temperature", "t": 0.7}]), "llama.cpp")["samplers"] == ["top_p", "temperature"]
    with pytest.raises(SpecError, match=r"cannot express entries \['0 \(top_k\)'\]"):
        to_request(Pipeline([{"name": "top_k", "k": 5}]), "openai")
    with pytest.raises(ValueError, match="`server` must be"):
        to_request(p, "sglang-x")
    m = to_request(Pipeline([{"name": "temperature", "t": 0.9}, {"name": "mirostat", "tau": 4.0, "eta": 0.2}]), "llama.cpp")
    assert m["mirostat"] == 2 and m["mirostat_tau"] == 4.0 and m["temperature"] == 0.9


def test_grid_names_are_stable_and_unique():
    axes = (expand("temperature", t=[0.3, 0.7, 1.0, 1.3]), [None, *expand("top_k", k=[10, 40]), *expand("min_p", p=[0.05, 0.1, 0.2])])
    g1, g2 = grid(*axes), grid(*axes)
    assert list(g1) == list(g2) and len(g1) == 4 * 6
    for name, p in g1.items():
        assert pipeline_name(Pipeline.from_spec(p.to_spec())) == name
