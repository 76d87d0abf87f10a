"""Bad inputs, command-line layer (#23): every sub-command of `soft_sampler.cli.COMMANDS` refuses bad flag values and
bad paths in one line on stderr with exit code 2, before any model loads (the loaders are patched to fail the test),
and Ctrl-C says in one line what was saved and how to resume (exit code 130). Commands run in-process."""
import argparse, contextlib, io, json
from pathlib import Path

import pytest

from soft_sampler import cli
from soft_sampler.cli import COMMANDS, _resolve


class ModelLoaded(AssertionError):
    "A command loaded a model before refusing its arguments."


@pytest.fixture
def no_models(monkeypatch):
    "Every model / tokenizer loader the commands use raises `ModelLoaded`."
    def boom(*a, **k): raise ModelLoaded("a model was loaded before the arguments were checked")
    import soft_sampler.core as core, transformers
    for name in ("load_model", "load_tokenizer", "tiny_model", "default_model_dir", "quiet_from_pretrained"): monkeypatch.setattr(core, name, boom)
    for mod, name in (("soft_sampler.curation", "load_model"), ("soft_sampler.curation", "tiny_model"), ("soft_sampler.rewards", "quiet_from_pretrained")):
        monkeypatch.setattr(__import__(mod, fromlist=[name]), name, boom)
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", boom)


def run(command: str, argv: list[str]) -> tuple[int, str, str]:
    fn = _resolve(COMMANDS[command].target)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: rc = fn(list(argv))
        except SystemExit as e: rc = e.code
        except KeyboardInterrupt: rc = "KeyboardInterrupt escaped"  # a failed test, not an aborted session
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d/"binary.yaml").write_bytes(b"- {name: temperature, t: 0.5}\n\x89PNG\r\n\x1a\n\x00\xff")
    (d/"binary.jsonl").write_bytes(b'{"id": "a", "text": "hi"}\n\xff\xfe\x00\x01\n')
    (d/"text.txt").write_text("just text\n")
    (d/"folder").mkdir()
    (d/"notamodel").mkdir(); (d/"notamodel"/"weights.bin").write_bytes(b"\x00")
    (d/"bad.safetensors").write_bytes(b"\x00\x01garbage")
    return d


M, B, T, D, N, X = "{missing}", "{binary}", "{text}", "{folder}", "{notamodel}", "{badst}"
CASES = [  # (command, argv, what the one-line message says)
    ("info", ["--bogus"], "unrecognized arguments: --bogus"),
    ("prepare", ["--bogus"], "unrecognized arguments"),
    ("tour", ["extra"], "unrecognized arguments"),
    # sample
    ("sample", ["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    ("sample", ["--prompt", "x", "-n", "0"], "-n: must be an integer >= 1"),
    ("sample", ["--prompt", "x", "--seed", "-5"], "--seed: must be an integer >= 0, got -5"),
    ("sample", ["--prompt", "x", "--seed", "abc"], "--seed: must be an integer"),
    ("sample", ["--prompt", "x", "--model", M], "--model: " + M + ": no such folder"),
    ("sample", ["--prompt", "x", "--model", T], "is a file, not a model folder"),
    ("sample", ["--prompt", "x", "--model", N], "is not a model folder (no config.json)"),
    ("sample", ["--prompt", "x", "--pipeline", M], "no such file"),
    ("sample", ["--prompt", "x", "--pipeline", B], "binary.yaml, line 2: "),
    ("sample", ["--prompt", "x", "--pipeline", D], "is a directory"),
    ("sample", ["--prompt", "x", "--sampler", M], "--sampler"),
    ("sample", ["--prompt", "x", "--sampler", X], "--sampler"),
    ("sample", ["--prompt", "x", "--min-p", "-1"], "min_p"),
    ("sample", ["--prompt", "x", "--ban", ""], "--ban"),
    ("sample", ["--max-new-tokens", "5"], "the following arguments are required: --prompt"),
    # score
    ("score", ["--reward", "format", "--pattern", "a(b", "--response", "x"], "--pattern: not a valid regular expression"),
    ("score", ["--reward", "remote", "--url", "ftp://host/x", "--response", "x"], "--url: must be an http:// or https:// URL"),
    ("score", ["--reward", "remote", "--url", "http://127.0.0.1:1", "--api", "grpc", "--response", "x"], "--api"),
    ("score", ["--reward", "number", "--response", "x"], "--reward number needs --answer"),
    ("score", ["--reward", "length", "--min-tokens", "-1", "--response", "x"], "--min-tokens: must be an integer >= 0"),
    ("score", ["--reward", "length", "--max-tokens", "-2", "--response", "x"], "--max-tokens: must be an integer >= 0"),
    ("score", ["--reward", "vader"], "required: --response"),
    # qalign
    ("qalign", ["--beta", "-1"], "--beta: must be a number in (0, inf]"),
    ("qalign", ["--beta", "0"], "--beta: must be a number in (0, inf]"),
    ("qalign", ["--beta", "nan"], "--beta: must be a number"),
    ("qalign", ["--chains", "0"], "--chains: must be an integer >= 1"),
    ("qalign", ["--steps", "-1"], "--steps: must be an integer >= 0"),
    ("qalign", ["--seed", "-5"], "--seed: must be an integer >= 0"),
    ("qalign", ["--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    ("qalign", ["--burn-in", "-1"], "--burn-in: must be an integer >= 0"),
    ("qalign", ["--steps", "4", "--burn-in", "5"], "--burn-in 5 must be <= --steps 4"),
    ("qalign", ["--server", "ftp://127.0.0.1:1"], "--server: must be an http:// or https:// URL"),
    ("qalign", ["--server", "127.0.0.1:8080"], "--server: must be an http:// or https:// URL"),
    ("qalign", ["--model", M], "no such folder"),
    ("qalign", ["--model", T], "is a file, not a model folder"),
    ("qalign", ["--reward", "number", "--target", "twelve"], "--target must be a number for --reward number"),
    ("qalign", ["--reward", "keyword", "--target", ""], "--target"),
    ("qalign", ["--checkpoint", D], "is a directory"),
    ("qalign", ["--checkpoint", B], "line 2: "),
    ("qalign", ["--server", "http://127.0.0.1:1", "--llama-server"], "not both"),
    # soft
    ("soft", ["--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    ("soft", ["--seed", "-5"], "--seed: must be an integer >= 0"),
    ("soft", ["--temperature", "0"], "--temperature: must be a number in (0, inf]"),
    ("soft", ["--top-k", "-1"], "--top-k: must be an integer >= 0"),
    ("soft", ["--tau", "0"], "--tau: must be a number in (0, inf]"),
    ("soft", ["--beta", "-1"], "--beta: must be a number in (0, inf]"),
    ("soft", ["--noise-std", "-1"], "--noise-std: must be a number in [0, inf]"),
    ("soft", ["--cold-stop-steps", "0"], "--cold-stop-steps: must be an integer >= 1"),
    ("soft", ["--cold-stop-entropy", "-1"], "--cold-stop-entropy: must be a number in [0, inf]"),
    ("soft", ["--show-top", "0"], "--show-top: must be an integer >= 1"),
    ("soft", ["--model", M], "no such folder"),
    ("soft", ["--mode", "fuzzy"], "invalid choice"),
    # analyze
    ("analyze", ["--prompt", "x", "--out", "r.html", "--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--seed", "-5"], "--seed: must be an integer >= 0"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--fit-steps", "-1"], "--fit-steps: must be an integer >= 0"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--top", "0"], "--top: must be an integer >= 1"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--network", M], "--network"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--network", X], "--network"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--model", M], "no such folder"),
    ("analyze", ["--prompt", "x", "--out", D], "--out"),
    ("analyze", ["--prompt", "x", "--out", "r.html", "--pipeline", B], "line 2"),
    # train
    ("train", ["--min-p", "0.1", "--vocab", "1"], "--vocab: must be an integer >= 2"),
    ("train", ["--min-p", "0.1", "--steps", "0"], "--steps: must be an integer >= 1"),
    ("train", ["--min-p", "0.1", "--lr", "-1"], "--lr: must be a number in (0, inf]"),
    ("train", ["--min-p", "0.1", "--seed", "-5"], "--seed: must be an integer >= 0"),
    ("train", ["--min-p", "0.1", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    ("train", ["--target", M], "no such file"),
    ("train", ["--target", B], "binary.yaml, line 2: "),
    ("train", ["--target", D], "is a directory"),
    ("train", ["--min-p", "0.1", "--net-config", B], "line 2"),
    ("train", ["--min-p", "0.1", "--replay-text", M], "--replay-text"),
    ("train", ["--min-p", "0.1", "--out", T], "is a file, not a checkpoint folder"),
    ("train", ["--min-p", "0.1", "--net", "Transformer"], "invalid choice"),
    # fidelity
    ("fidelity", ["--seed", "-5"], "--seed: must be an integer >= 0"),
    ("fidelity", ["--steps", "0"], "--steps: must be an integer >= 1"),
    ("fidelity", ["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    ("fidelity", ["--lr", "0"], "--lr: must be a number in (0, inf]"),
    ("fidelity", ["--vocab", "1"], "--vocab: must be an integer >= 2"),
    ("fidelity", ["--eval-tokens", "0"], "--eval-tokens: must be an integer >= 1"),
    ("fidelity", ["--threads", "0"], "--threads: must be an integer >= 1"),
    ("fidelity", ["--out", D], "--out"),
    # curate
    ("curate", ["prompts", "--config", M], "no such file"),
    ("curate", ["prompts", "--config", B], "binary.yaml, line 2: "),
    ("curate", ["prompts", "--config", D], "is a directory"),
    ("curate", ["prompts", "--per-kind", "0"], "--per-kind: must be an integer >= 1"),
    ("curate", ["prompts", "--source", M], "no such file"),
    ("curate", ["prompts", "--source", D], "is a directory"),
    ("curate", ["prompts", "--dir", T], "--dir"),
    ("curate", ["harvest"], "invalid choice"),
    # mcmc
    ("mcmc", ["--method", "gibbs"], "invalid choice: 'gibbs'"),
    ("mcmc", ["--seed", "x"], "--seed: must be an integer >= 0, got 'x'"),
    ("mcmc", ["--seed", "-5"], "--seed: must be an integer >= 0, got -5"),
    ("mcmc", ["--bogus"], "unrecognized arguments"),
    ("mcmc", ["--n", "0"], "--n: must be an integer >= 1"),
    ("mcmc", ["--steps", "-1"], "--steps: must be an integer >= 0"),
    ("mcmc", ["--blocks", "0"], "--blocks: must be an integer >= 1"),
    ("mcmc", ["--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    ("mcmc", ["--max-new-tokens", "2", "--blocks", "4"], "--max-new-tokens 2 must be >= --blocks 4"),
    ("mcmc", ["--alpha", "0"], "--alpha: must be a number in (0, inf]"),
    ("mcmc", ["--alpha", "inf"], "--alpha: must be a number in (0, inf]"),
    ("mcmc", ["--beta", "-1"], "--beta: must be a number in (0, inf]"),
    ("mcmc", ["--beta", "nan"], "--beta: must be a number"),
    ("mcmc", ["--temperature", "0"], "--temperature: must be a number in (0, inf]"),
    ("mcmc", ["--ess-threshold", "1.5"], "--ess-threshold: must be a number in [0, 1]"),
    ("mcmc", ["--reward", "number", "--target", "twelve"], "--target must be a number for --reward number"),
    ("mcmc", ["--reward", "keyword", "--target", " "], "--target: the keyword must not be empty"),
    ("mcmc", ["--reward", "gold"], "invalid choice"),
    ("mcmc", ["--cut", "middle"], "invalid choice"),
    ("mcmc", ["--model", M], "--model: " + M + ": no such folder"),
    ("mcmc", ["--model", T], "is a file, not a model folder"),
    ("mcmc", ["--model", N], "is not a model folder (no config.json)"),
    ("mcmc", ["--server", "ftp://127.0.0.1:1"], "--server: must be an http:// or https:// URL"),
    ("mcmc", ["--checkpoint", D], "is a directory, not a JSONL file"),
    ("mcmc", ["--checkpoint", B], "binary.yaml, line 2: "),
    # sweep
    ("sweep", [], "required: --out"),
    ("sweep", ["--out", "w", "--seeds", "a"], "--seeds: must be an integer >= 0, got 'a'"),
    ("sweep", ["--out", "w", "--seeds", "-5"], "--seeds: must be an integer >= 0, got -5"),
    ("sweep", ["--out", "w", "--seeds"], "--seeds: expected at least one argument"),
    ("sweep", ["--out", "w", "--temperatures", "0"], "--temperatures: must be a number in (0, inf]"),
    ("sweep", ["--out", "w", "--temperatures", "1", "-0.5"], "--temperatures: must be a number in (0, inf]"),
    ("sweep", ["--out", "w", "--temperatures", "inf"], "--temperatures: must be a number in (0, inf]"),
    ("sweep", ["--out", "w", "--temperatures"], "--temperatures: expected at least one argument"),
    ("sweep", ["--out", "w", "--samplers", ""], "--samplers: name at least one of"),
    ("sweep", ["--out", "w", "--samplers", "plain,beam"], "--samplers: unknown ['beam']"),
    ("sweep", ["--out", "w", "--problems", "0"], "--problems: must be an integer >= 1"),
    ("sweep", ["--out", "w", "--problems", "100000"], "--problems must be in 1.."),
    ("sweep", ["--out", "w", "--prompts", "0"], "--prompts: must be an integer >= 1"),
    ("sweep", ["--out", "w", "--samples", "1"], "--samples: must be an integer >= 2"),
    ("sweep", ["--out", "w", "--max-new-tokens", "0", "8"], "--max-new-tokens: must be an integer >= 1"),
    ("sweep", ["--out", T], "--out " + T + " is a file, not a folder"),
    ("sweep", ["--out", "w", "--results", D], "--results " + D + " is a directory"),
    ("sweep", ["--out", "w", "--network", M], "--network"),
    ("sweep", ["--out", "w", "--network", X], "--network"),
    # train-rl
    ("train-rl", ["--task", "chess"], "invalid choice: 'chess'"),
    ("train-rl", ["--net", "Transformer"], "invalid choice"),
    ("train-rl", ["--advantage", "ppo"], "invalid choice"),
    ("train-rl", ["--steps", "0"], "--steps: must be an integer >= 1"),
    ("train-rl", ["--group-size", "1"], "--group-size: must be an integer >= 2"),
    ("train-rl", ["--prompts-per-step", "0"], "--prompts-per-step: must be an integer >= 1"),
    ("train-rl", ["--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1"),
    ("train-rl", ["--kl-coef", "-1"], "--kl-coef: must be a number in [0, inf]"),
    ("train-rl", ["--kl-coef", "nan"], "--kl-coef: must be a number"),
    ("train-rl", ["--lr", "0"], "--lr: must be a number in (0, inf]"),
    ("train-rl", ["--checkpoint-every", "0"], "--checkpoint-every: must be an integer >= 1"),
    ("train-rl", ["--warmup-steps", "-1"], "--warmup-steps: must be an integer >= 0"),
    ("train-rl", ["--seed", "-5"], "--seed: must be an integer >= 0, got -5"),
    ("train-rl", ["--threads", "0"], "--threads: must be an integer >= 1"),
    ("train-rl", ["--net-config", M], "--net-config: " + M + ": no such file"),
    ("train-rl", ["--net-config", B], "binary.yaml, line 2: "),
    ("train-rl", ["--net-config", D], "is a directory"),
    ("train-rl", ["--net-config", T], "--net-config " + T + ": expected a mapping of config fields"),
    ("train-rl", ["--init", M], "--init"),
    ("train-rl", ["--init", X], "--init"),
    ("train-rl", ["--ref", M], "--ref"),
    ("train-rl", ["--out", T], "--out " + T + " is a file, not a checkpoint folder"),

    # flags left uncovered by the cases above
    ("score", ["--reward", "number", "--answer", "twelve", "--response", "x"], "--answer: invalid float value"),
    ("qalign", ["--engine", "tgi"], "invalid choice"),
    ("qalign", ["--problems", "0"], "--problems must be in 1.."),
    ("train", ["--min-p", "0.1", "--accumulation", "0"], "--accumulation: must be an integer >= 1"),
    ("train", ["--min-p", "0.1", "--warmup", "-1"], "--warmup: must be an integer >= 0"),
    ("train", ["--min-p", "0.1", "--checkpoint-every", "0"], "--checkpoint-every: must be an integer >= 1"),
    ("train", ["--pipeline", B], "binary.yaml, line 2: "),
    ("fidelity", ["--networks", "Transformer"], "invalid choice"),
    ("fidelity", ["--targets", "beam"], "invalid choice"),
]
# every pipeline-step flag, in every command that takes them: refused by the step's own check, naming the step
STEP_FLAGS = {"--temperature": "-1", "--top-k": "-1", "--top-p": "2", "--min-p": "-1", "--typical": "2", "--epsilon": "-1",
              "--eta": "-1", "--top-h": "2", "--top-n-sigma": "-1", "--top-a": "-1", "--tfs": "2", "--repetition-penalty": "0",
              "--presence-penalty": "nan", "--frequency-penalty": "inf", "--no-repeat-ngram": "-1", "--mirostat": "-1"}
CASES += [(c, [*pre, f, v], f"pipeline entry 0 ({f[2:].replace('-', '_')})") for c, pre in
          (("sample", ["--prompt", "x"]), ("analyze", ["--prompt", "x", "--out", "r.html"]), ("train", [])) for f, v in STEP_FLAGS.items()]
FREE_TEXT = {"--prompt", "--reference", "--rubric", "--served-model", "--response", "--target"}  # any string is a valid value


def _fill(argv, files):
    return [a.format(missing=str(files/"missing.yaml"), binary=str(files/"binary.yaml"), text=str(files/"text.txt"),
                     folder=str(files/"folder"), notamodel=str(files/"notamodel"), badst=str(files/"bad.safetensors")) for a in argv]


@pytest.mark.parametrize("command, argv, msg", CASES, ids=[f"{c}:{' '.join(a)[:40]}" for c, a, _ in CASES])
def test_user_errors_are_one_line_and_exit_2_before_the_model_loads(no_models, files, tmp_path, monkeypatch, command, argv, msg):
    monkeypatch.chdir(tmp_path)  # nothing is written next to the tests
    rc, out, err = run(command, _fill(argv, files))
    msg = _fill([msg], files)[0]
    assert rc == 2, (rc, err)
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    assert msg in err, err
    assert list(tmp_path.iterdir()) == [], "a refused command wrote files"


def test_every_command_has_cases():
    assert {c for c, _, _ in CASES} == set(COMMANDS), set(COMMANDS) - {c for c, _, _ in CASES}


def _parsers(command: str) -> list[argparse.ArgumentParser]:
    "The parsers a command builds (sub-command parsers included), caught as it parses."
    caught = []
    class Caught(Exception): pass
    def grab(self, *a, **k): caught.append(self); raise Caught
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", grab)
        with contextlib.suppress(Caught): _resolve(COMMANDS[command].target)(["prompts"] if command == "curate" else [])
    subs = [sp for p in caught for a in p._actions if isinstance(a, argparse._SubParsersAction) for sp in a.choices.values()]
    return caught + subs


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_that_takes_a_value_has_a_bad_case(command):
    "A flag added to a command without a case here fails this test: give it one (or list it in FREE_TEXT)."
    used = {a for c, argv, _ in CASES if c == command for a in argv if a.startswith("-")}
    flags = [a.option_strings for p in _parsers(command) for a in p._actions
             if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)]
    missing = [f for f in flags if not set(f) & (used | FREE_TEXT)]
    assert not missing, f"{command}: no bad-input case for {missing}"


def test_main_reports_ctrl_c_in_one_line(monkeypatch):
    def interrupt(argv): raise KeyboardInterrupt
    monkeypatch.setitem(COMMANDS, "boom", cli.Command("tests_cli_helper:interrupt", "interrupts"))
    monkeypatch.setattr(cli, "_resolve", lambda target: interrupt)
    err = io.StringIO()
    with contextlib.redirect_stderr(err): assert cli.main(["boom"]) == 130
    assert err.getvalue() == "soft-sampler boom: interrupted; nothing was saved\n"


def test_train_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path, monkeypatch):
    import soft_sampler.train as train
    real, calls = train._step, []
    def step(*a, **k):
        calls.append(1)
        if len(calls) == 5: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(train, "_step", step)
    argv = ["--min-p", "0.1", "--net", "LocalProbabilityTransform", "--steps", "8", "--vocab", "32", "--batch-size", "2",
            "--checkpoint-every", "2", "--out", str(tmp_path/"ck"), "--no-progress"]
    rc, _, err = run("train", argv)
    assert rc == 130 and err.count("\n") == 1, err
    assert "step-00000004 is saved in" in err and "run the same command to resume" in err
    monkeypatch.setattr(train, "_step", real)
    rc, out, _ = run("train", argv)
    assert rc == 0 and "resumed from step 4" in out


def test_train_refuses_another_runs_checkpoint_before_training(tmp_path):
    "Defect 2: `train --out D` with another lr/seed/vocab/batch size/target continued the old run."
    base = ["--net", "LocalProbabilityTransform", "--steps", "3", "--vocab", "32", "--batch-size", "2", "--out", str(tmp_path/"ck"), "--no-progress"]
    assert run("train", ["--min-p", "0.1", *base])[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path/"ck").rglob("*")}
    for change, field in ((["--lr", "0.1"], "lr: 0.03 in the checkpoint, 0.1 now"), (["--seed", "3"], "seed: 0 in the checkpoint, 3 now"),
                          (["--vocab", "64"], "data.vocab: 32 in the checkpoint, 64 now"), (["--batch-size", "4"], "batch_size: 2 in the checkpoint, 4 now"),
                          (["--top-k", "5"], "target:")):
        argv = (change if field == "target:" else ["--min-p", "0.1"]) + base + ([] if field == "target:" else change)  # the last value wins
        rc, _, err = run("train", argv)
        assert rc == 2 and field in err and "--restart" in err and "new --out" in err and err.count("\n") == 1, err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path/"ck").rglob("*")} == before, "a refused run touched the checkpoint"
    rc, out, _ = run("train", ["--min-p", "0.1", "--lr", "0.1", "--restart", *base])
    assert rc == 0 and "resumed" not in out


def test_qalign_ctrl_c_and_another_runs_checkpoint(tmp_path, monkeypatch):
    "Defect 3 on the command line: a changed reward, beta or target is refused naming the field; Ctrl-C names the file."
    import soft_sampler.core as core
    from soft_sampler.core import tiny_model
    from soft_sampler.qalign import QAlign
    model, tok = tiny_model()
    monkeypatch.setattr(core, "load_tokenizer", lambda *a, **k: tok)
    monkeypatch.setattr(core, "load_model", lambda *a, **k: (model, tok))
    ck = tmp_path/"chain.jsonl"
    base = ["--prompt", "Hi", "--chains", "2", "--steps", "2", "--max-new-tokens", "4", "--no-progress", "--checkpoint", str(ck)]
    assert run("qalign", base)[0] == 0
    text = ck.read_text()
    for change, field in ((["--target", "13"], "reward: file"), (["--beta", "0.5"], "beta: file 0.25 vs run 0.5"),
                          (["--reward", "brevity"], "reward: file")):
        rc, _, err = run("qalign", base + change)
        assert rc == 2 and field in err and "--restart" in err and err.count("\n") == 1, err
    assert ck.read_text() == text
    real = QAlign._step
    def interrupted(self, *a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(QAlign, "_step", interrupted)
    rc, _, err = run("qalign", base + ["--restart", "--steps", "3"])
    assert rc == 130 and err.count("\n") == 1 and str(ck) in err and "resume" in err, err
    monkeypatch.setattr(QAlign, "_step", real)
    assert run("qalign", base + ["--steps", "3"])[0] == 0


def count_cases() -> int:
    "Bad inputs this module tries: the table, then the scenarios' refusals and interrupts."
    return len(CASES) + 1 + 5 + 3 + 1 + 2 + 2 + 4


@pytest.fixture
def tiny_loaded(monkeypatch):
    "`load_model` gives the tiny random model (a real run, in seconds)."
    import soft_sampler.core as core, torch
    from soft_sampler.core import tiny_model
    model, tok = tiny_model()
    monkeypatch.setattr(core, "load_model", lambda *a, **k: (model, tok))
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield model, tok
    torch.set_num_threads(n)


def _interrupt_on_call(monkeypatch, owner, name, k):
    "Make `owner.name` raise KeyboardInterrupt on its k-th call; returns the list of calls."
    real, calls = getattr(owner, name), []
    def f(*a, **kw):
        calls.append(1)
        if len(calls) == k: raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(owner, name, f)
    return calls


def test_mcmc_ctrl_c_names_the_checkpoint_and_resumes(tiny_loaded, tmp_path, monkeypatch):
    from soft_sampler.mcmc import PowerSampler
    ck = tmp_path/"power.jsonl"
    argv = ["--method", "power", "--n", "2", "--blocks", "2", "--steps", "1", "--max-new-tokens", "4", "--no-progress",
            "--checkpoint", str(ck)]
    with monkeypatch.context() as mp:
        _interrupt_on_call(mp, PowerSampler, "_grow", 2)
        rc, _, err = run("mcmc", argv)
    assert rc == 130 and err.count("\n") == 1 and f"saved in {ck}" in err and "run the same command to resume" in err, err
    assert ck.is_file()
    rc, out, _ = run("mcmc", argv)
    assert rc == 0 and "majority_vote" in out
    rc, _, err = run("mcmc", argv[:-2] + ["--alpha", "2", "--checkpoint", str(ck)])  # another run's checkpoint: one line
    assert rc == 2 and err.count("\n") == 1 and "other settings" in err, err


def test_sweep_ctrl_c_keeps_the_finished_cells_and_resumes(tmp_path, monkeypatch):
    import soft_sampler.sweeps as sweeps
    out = tmp_path/"sw"
    argv = ["--out", str(out), "--tiny", "--samplers", "plain,min_p", "--temperatures", "1", "--seeds", "0", "--problems", "2",
            "--prompts", "2", "--samples", "2", "--max-new-tokens", "3", "3", "--no-progress"]
    with monkeypatch.context() as mp:
        _interrupt_on_call(mp, sweeps, "run_cell", 2)
        rc, _, err = run("sweep", argv)
    assert rc == 130 and err.count("\n") == 1 and str(out/"cells") in err and "resume" in err, err
    assert [p.name for p in (out/"cells").iterdir()] == ["plain_s0.json"]
    calls = _interrupt_on_call(monkeypatch, sweeps, "run_cell", 0)  # count only
    assert run("sweep", argv)[0] == 0 and len(calls) == 1, "the finished cell was computed again"
    rc, _, err = run("sweep", argv[:-1] + ["--samples", "3"])  # other settings in the same --out
    assert rc == 2 and err.count("\n") == 1 and "other settings" in err, err


def test_train_rl_ctrl_c_resume_and_another_runs_out(tiny_loaded, tmp_path, monkeypatch):
    import soft_sampler.sampler_rl as srl
    out = tmp_path/"rl"
    argv = ["--net", "SimpleDistributionAwareTransform", "--steps", "3", "--group-size", "2", "--prompts-per-step", "1",
            "--max-new-tokens", "2", "--checkpoint-every", "1", "--out", str(out), "--no-progress"]
    with monkeypatch.context() as mp:
        _interrupt_on_call(mp, srl, "rl_step", 2)
        rc, _, err = run("train-rl", argv)
    assert rc == 130 and err.count("\n") == 1 and f"step-00000001 is saved in {out}" in err and "resume" in err, err
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for change, field in ((["--lr", "0.5"], "lr"), (["--seed", "3"], "seed"), (["--net", "ContextAwareTransform"], "ContextAwareTransform")):
        rc, _, err = run("train-rl", argv + change)
        assert rc == 2 and err.count("\n") == 1 and "cannot be resumed" in err and field in err and "--restart" in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before, "a refused run touched the checkpoint"
    rc, out_text, _ = run("train-rl", argv)
    assert rc == 0 and "resumed from step 1" in out_text


def test_argument_parser_keeps_argparse_positional_order_and_one_line_errors(capsys):
    "`cli.ArgumentParser(prog, usage, description, ...)` takes argparse's parameters in argparse's order."
    p = cli.ArgumentParser("demo", None, "What demo does.", epilog="the end")
    assert (p.prog, p.description, p.epilog) == ("demo", "What demo does.", "the end")
    p.add_argument("--beta", type=cli.number_in(0, 1, high_open=True))
    with pytest.raises(SystemExit) as e: p.parse_args(["--beta", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "demo: error: argument --beta: must be a number in [0, 1), got 1\n"
