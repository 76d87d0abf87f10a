"""Bad inputs, file layer (#23): binary or damaged YAML/JSONL files get errors with the line in the file; checkpoints
of another run are refused by name and left untouched; damaged training checkpoints fall back to the previous intact
step; a crafted pickle is refused without running; absurd network sizes are refused before allocating; curation's
`candidates` repairs what `verify` rejects, and one workspace is locked against a second run."""
import json, os, pickle, warnings
from pathlib import Path

import pytest
import torch

from soft_sampler import curation as C
from soft_sampler.cli import read_text
from soft_sampler.core import tiny_model
from soft_sampler.networks import (DistributionAwareConfig, LocalConfig, LocalProbabilityTransform, SamplingNetwork,
                                   SamplingNetworkConfig)
from soft_sampler.qalign import ChainCheckpointError, QAlign
from soft_sampler.train import CheckpointError, SyntheticLogits, TrainConfig, latest_checkpoint, train_sampler

BINARY = b'{"id": "a", "text": "hello"}\n{"id": "b", "text": "\xff\xfe\x00 binary"}\n'


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---- binary and damaged text files: the line in the file ---------------------------------------------------

def test_read_text_names_the_line_of_binary_content(tmp_path):
    for data, line in ((b"a\nb\n\xff", 3), (b"\x00", 1), (b"ok\nok\nok\x00ok", 3)):
        (tmp_path/"f").write_bytes(data)
        with pytest.raises(ValueError, match=f"f, line {line}: "): read_text(tmp_path/"f")
    with pytest.raises(IsADirectoryError, match="is a directory"): read_text(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"): read_text(tmp_path/"nope")


def test_binary_prompt_source_and_candidates_name_the_line(tmp_path):
    src = tmp_path/"prompts.jsonl"; src.write_bytes(BINARY)
    with pytest.raises(C.JsonlError, match=r"prompts.jsonl: malformed line\(s\): line 2: not UTF-8 text"): C.load_prompts([src])
    with pytest.raises(C.JsonlError, match="line 2: not UTF-8"): C.read_jsonl(src)
    _, tok = tiny_model()
    rep = C.verify_candidates(src, tok)
    assert [2, "not UTF-8 text (binary data)"] in rep["problems"]
    with pytest.raises(IsADirectoryError): C.scan_jsonl(tmp_path)


def test_binary_curation_config_names_the_line(tmp_path):
    (tmp_path/"c.yaml").write_bytes(b"seeds: [0]\ntop_k: 3\n\x89PNG\x00\xff\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml, line 3: not UTF-8 text"): C.load_config(tmp_path/"c.yaml")


# ---- QAlign checkpoints (defect 3) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain():
    model, tok = tiny_model(hidden_size=16, num_layers=1, seed=1)
    return model, tok, tok("Hi!")["input_ids"]


def count(tok, ch="a"):
    t = tok.convert_tokens_to_ids(ch)
    return lambda p, rs: [float(r.count(t)) for r in rs]


class Target:
    "A reward with a setting (as NumericAnswer's answer)."
    def __init__(self, token: int): self.token = token
    def __call__(self, p, rs): return [float(r.count(self.token)) for r in rs]


KW = dict(chains=2, steps=2, max_new_tokens=4, progress=False)

def test_qalign_refuses_another_runs_checkpoint(chain, tmp_path):
    "Defect 3: a changed reward, its setting, beta, pipeline or model was silently mixed into the old chain."
    from soft_sampler.qalign import KeepTokens
    model, tok, prompt = chain
    ck = tmp_path/"c.jsonl"
    QAlign(model, Target(5), beta=1.0, tokenizer=tok).run(prompt, checkpoint=ck, **KW)
    before = ck.read_bytes()
    other_model = tiny_model(hidden_size=16, num_layers=1, seed=2)[0]
    for qa, run_kw, field in [(QAlign(model, Target(6), beta=1.0, tokenizer=tok), {}, "reward: file"),
                              (QAlign(model, count(tok), beta=1.0, tokenizer=tok), {}, "reward: file"),
                              (QAlign(model, Target(5), beta=2.0, tokenizer=tok), {}, "beta: file 1.0 vs run 2.0"),
                              (QAlign(model, Target(5), beta=1.0, tokenizer=tok), {"pipeline": KeepTokens([1, 2])}, "pipeline: file None"),
                              (QAlign(other_model, Target(5), beta=1.0, tokenizer=tok), {}, "model: file"),
                              (QAlign(model, Target(5), beta=1.0, tokenizer=tok), {"max_new_tokens": 5}, "max_new_tokens: file 4 vs run 5")]:
        with pytest.raises(ChainCheckpointError, match=field) as e: qa.run(prompt, checkpoint=ck, **{**KW, **run_kw})
        assert "restart=True" in str(e.value)
        assert ck.read_bytes() == before, "a refused run touched the checkpoint"
    res = QAlign(model, Target(6), beta=1.0, tokenizer=tok).run(prompt, checkpoint=ck, restart=True, **KW)
    assert json.loads(ck.read_text().splitlines()[0])["header"]["reward"]["params"] == {"token": 6} and res.steps == 2


@pytest.mark.parametrize("damage, line, msg", [(b"\xff\xfe garbage\n", 4, "not a JSON record"), (b'{"no": "record"}\n', 4, "not a step record"),
                                               (b"[1, 2]\n", 4, "not a step record")])
def test_qalign_damaged_checkpoint_names_the_line(chain, tmp_path, damage, line, msg):
    model, tok, prompt = chain
    ck = tmp_path/"c.jsonl"
    QAlign(model, Target(5), tokenizer=tok).run(prompt, checkpoint=ck, **{**KW, "steps": 0})
    ck.write_bytes(ck.read_bytes() + b'{"prompt": 0, "t": 1, "states": [[1]]}\n' + damage)
    before = ck.read_bytes()
    with pytest.raises(ChainCheckpointError, match=f"c.jsonl, line {line}: {msg}"): QAlign(model, Target(5), tokenizer=tok).run(prompt, checkpoint=ck, **KW)
    assert ck.read_bytes() == before
    ck.write_bytes(b'{"prompt": 0}\n')
    with pytest.raises(ChainCheckpointError, match="line 1: not a header"): QAlign(model, Target(5), tokenizer=tok).run(prompt, checkpoint=ck, **KW)
    with pytest.raises(ChainCheckpointError, match="is a directory"): QAlign(model, Target(5), tokenizer=tok).run(prompt, checkpoint=tmp_path, **KW)


# ---- training checkpoints (defect 2, fallbacks) -------------------------------------------------------------

T, DATA, CFG = [{"name": "min_p", "p": 0.2}], SyntheticLogits(48, seed=1), TrainConfig(steps=6, batch_size=2, checkpoint_every=2, warmup=2)


def trained(d, **kw):
    return train_sampler(LocalProbabilityTransform(), kw.pop("target", T), kw.pop("data", DATA), kw.pop("config", CFG), d, progress=False, **kw)


def test_training_refuses_another_run_naming_the_fields(tmp_path):
    "Defect 2: another target, lr, seed, vocab or batch size silently continued the old checkpoint."
    trained(tmp_path, stop_at=4)
    before = snapshot(tmp_path)
    from dataclasses import replace
    for kw, field in [({"config": replace(CFG, lr=0.1)}, "lr: 0.03 in the checkpoint, 0.1 now"),
                      ({"config": replace(CFG, seed=4)}, "seed: 0 in the checkpoint, 4 now"),
                      ({"config": replace(CFG, batch_size=3)}, "batch_size: 2 in the checkpoint, 3 now"),
                      ({"data": SyntheticLogits(64, seed=1)}, "data.vocab: 48 in the checkpoint, 64 now"),
                      ({"data": SyntheticLogits(48, seed=2)}, "data.seed: 1 in the checkpoint, 2 now"),
                      ({"target": [{"name": "top_k", "k": 3}]}, "target:")]:
        with pytest.raises(CheckpointError, match=field) as e: trained(tmp_path, **kw)
        assert "resume=False" in str(e.value) and "new --out" in str(e.value)
        assert snapshot(tmp_path) == before, "a refused run touched the checkpoints"
    assert trained(tmp_path, config=replace(CFG, steps=8)).resumed_from == 4, "a longer run of the same settings resumes"
    r = trained(tmp_path, config=replace(CFG, lr=0.1), resume=False)
    assert r.resumed_from == 0 and latest_checkpoint(tmp_path).name == "step-00000006"
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000004", "step-00000006"], "the old run's steps are gone"


@pytest.mark.parametrize("damage", ["latest", "trainer", "weights", "optimizer"])
def test_damaged_checkpoint_falls_back_to_the_previous_intact_step(tmp_path, damage):
    straight = trained(None)
    trained(tmp_path, stop_at=4)  # steps 2 and 4 on disk
    newest = tmp_path/"step-00000004"
    target = {"latest": tmp_path/"latest.json", "trainer": newest/"trainer.json", "weights": newest/"network.safetensors",
              "optimizer": newest/"optimizer.safetensors"}[damage]
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # truncated
    with pytest.warns(UserWarning, match="damaged"): r = trained(tmp_path)
    assert r.resumed_from == (4 if damage == "latest" else 2)
    assert r.history["loss"] == straight.history["loss"], "the resumed run is the same run"


def test_latest_json_naming_nothing_is_an_error_not_a_restart(tmp_path):
    trained(tmp_path, stop_at=4)
    (tmp_path/"latest.json").write_text(json.dumps({"step": 9, "path": "step-00000009"}))
    with pytest.raises(CheckpointError, match="names step-00000009, which does not exist"): trained(tmp_path)
    for p in tmp_path.glob("step-*"): (p/"optimizer.safetensors").write_bytes(b"\x00")
    (tmp_path/"latest.json").write_text(json.dumps({"step": 4, "path": "step-00000004"}))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no intact checkpoint"): trained(tmp_path)


# ---- pickles and absurd sizes -------------------------------------------------------------------------------

def test_soft_rl_state_with_a_crafted_pickle_is_refused_and_never_run(tmp_path):
    "Defect 1: `SoftRLTrainer.load_checkpoint` unpickled state.pt with weights_only=False: code ran on load."
    from soft_sampler.soft_rl import load_plain_state
    marker = tmp_path/"pwned"
    class Evil:
        def __reduce__(self): return (os.mkdir, (str(marker),))
    (tmp_path/"state.pt").write_bytes(pickle.dumps({"optimizer": Evil(), "torch_rng": torch.get_rng_state()}))
    with pytest.raises(ValueError, match="refused to unpickle"): load_plain_state(tmp_path/"state.pt")
    assert not marker.exists(), "the pickle ran"


def test_soft_rl_load_checkpoint_refuses_a_crafted_state(tmp_path):
    from soft_sampler.soft_rl import SoftRLConfig, SoftRLTrainer
    from soft_sampler.rewards import TextReward
    model, tok = tiny_model()
    cfg = SoftRLConfig("gaussian", group_size=2, prompts_per_step=1, max_new_tokens=2, noise_std=0.1, trainable=["lm_head"])
    tr = SoftRLTrainer(model, tok, TextReward(lambda p, c: [float(len(x)) for x in c], tok), ["Hi"], cfg)
    tr.save_checkpoint(tmp_path/"ck")
    tr.load_checkpoint(tmp_path/"ck")  # a plain state loads
    marker = tmp_path/"pwned"
    class Evil:
        def __reduce__(self): return (os.mkdir, (str(marker),))
    (tmp_path/"ck"/"state.pt").write_bytes(pickle.dumps({"optimizer": Evil()}))
    with pytest.raises(ValueError, match="refused to unpickle"): tr.load_checkpoint(tmp_path/"ck")
    assert not marker.exists()


ABSURD = [(lambda: LocalConfig(hidden=10**9), "hidden"), (lambda: DistributionAwareConfig(stats_hidden=10**7), "stats_hidden"),
          (lambda: DistributionAwareConfig(n_gates=10**6), "n_gates"), (lambda: SamplingNetworkConfig(dim=2**20), "dim"),
          (lambda: SamplingNetworkConfig(hidden=5000), "hidden"), (lambda: LocalConfig(poly_degree=1000), "poly_degree"),
          (lambda: SamplingNetworkConfig.from_yaml("dim: 100000000\n"), "dim")]


@pytest.mark.parametrize("make, name", ABSURD, ids=[n for _, n in ABSURD])
def test_absurd_network_sizes_are_refused_before_allocating(make, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be an integer in \[1, \d+\]"): make()


# ---- curation: verify's advice works, duplicates, the lock --------------------------------------------------

def test_candidates_repairs_what_verify_rejects(tmp_path):
    model, tok = tiny_model()
    prompts = [{"id": "p1", "kind": "open", "text": "Hi"}, {"id": "p2", "kind": "open", "text": "Yo"}]
    grid = C.make_grid([[{"name": "temperature", "t": 1.0}]])
    out = tmp_path/"candidates.jsonl"
    C.make_candidates(prompts, out, grid, [0], C.LocalEngine(model, tok, 3), tok, progress=False)
    good = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(good[0] + good[0] + b'{"prompt_id": "p2", "broken\n' + b"\xff\x00\n")  # a duplicate, a torn line, binary
    rep = C.verify_candidates(out, tok, ["p1", "p2"], list(grid), [0])
    assert not rep["ok"] and [l for l, _ in rep["problems"]] == [2, 3, 4] and "duplicate of line 1" in rep["problems"][0][1]
    with pytest.raises(C.JsonlError): C.make_candidates(prompts, out, grid, [0], C.LocalEngine(model, tok, 3), tok, progress=False)
    assert C.repair_candidates(out, tok) == 3
    assert (tmp_path/C.REJECTED).read_bytes().count(b"\n") == 3, "the rejected lines are kept aside, whole"
    C.make_candidates(prompts, out, grid, [0], C.LocalEngine(model, tok, 3), tok, progress=False)
    assert C.verify_candidates(out, tok, ["p1", "p2"], list(grid), [0])["ok"]
    assert out.read_bytes().splitlines(keepends=True) == good, "the regenerated record is the one first written"


def test_two_runs_on_one_workspace_are_prevented(tmp_path):
    ws = C.Workspace(tmp_path, C.load_config({"model": "tiny"}), progress=False)
    with C.workspace_lock(tmp_path):
        with pytest.raises(C.WorkspaceBusy, match=f"pid {os.getpid()}"): C.run_stage("prompts", ws)
    assert not (tmp_path/"prompts.jsonl").exists()
    assert C.run_stage("prompts", ws)["written"] > 0


def count_cases() -> int:
    return 3 + 4 + 1 + 1 + 6 + 5 + 6 + 4 + 2 + 2 + len(ABSURD) + 4 + 1
