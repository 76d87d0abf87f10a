"The quality-diversity sweep's machinery on the tiny model: resumption, batch independence, summaries, CLI."
import json, math
import pytest
import torch
from soft_sampler.core import tiny_model
from soft_sampler.sweeps import (SWEEP_SAMPLERS, quality_diversity, run_cell, summarise, wilson, mean_ci, distinct_n,
                                 embedding_diversity, sweep_cli, cell_path)

PBS = [dict(id=i, question=f"{i} + 1 =", answer=i + 1) for i in range(3)]
OPS = [dict(id="a", text="a story"), dict(id="b", text="a poem")]
KW = dict(temperatures=(0.5, 2.0), seeds=(0, 1), problems=PBS, prompts=OPS, samples=2, max_new_tokens=(3, 4), progress=False)
FEW = {k: SWEEP_SAMPLERS[k] for k in ("plain", "min_p", "adaptive_p")}


@pytest.fixture(scope="module")
def tm(): return tiny_model(seed=1)


def test_interrupted_sweep_resumes_to_the_same_results(tm, tmp_path):
    model, tok = tm
    full = quality_diversity(model, tok, tmp_path / "a", FEW, **KW)
    part = quality_diversity(model, tok, tmp_path / "b", {k: FEW[k] for k in ("plain",)}, **KW)  # "killed" after one sampler
    assert len(part) == 4
    cell_path(tmp_path / "b", "plain", 1).unlink()  # and the last cell never written
    assert quality_diversity(model, tok, tmp_path / "b", FEW, **KW) == full
    assert len(full) == 3 * 2 * 2 and {k[1] for k in full} == {0.5, 2.0}


def test_a_cells_rows_do_not_depend_on_the_batch(tm):
    "The T=0.5 block of a two-temperature cell = a T=0.5 cell alone (per-row temperature, keyed rows, per-row state)."
    model, tok = tm
    for name in ("min_p", "adaptive_p"):
        two = run_cell(model, tok, SWEEP_SAMPLERS[name], (0.5, 2.0), 3, PBS, OPS, 2, (3, 4))
        one = run_cell(model, tok, SWEEP_SAMPLERS[name], (0.5,), 3, PBS, OPS, 2, (3, 4))
        assert two[0]["answers"] == one[0]["answers"] and two[0]["samples"] == one[0]["samples"]
        assert two[0]["samples"] != two[1]["samples"]  # the temperature did reach its rows


def test_summary_statistics_closed_forms():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)  # the textbook Wilson interval
    assert wilson(0, 20)[0] == pytest.approx(0, abs=1e-12) and wilson(20, 20)[1] == pytest.approx(1)
    m, l, h = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert m == 2.0 and h - m == pytest.approx(1.96 * 1.0 / math.sqrt(3))
    assert distinct_n(["a b a b"], 2) == 2 / 3 and math.isnan(distinct_n(["a"], 2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cos = (0 + 2 ** -0.5 + 2 ** -0.5) / 3
    assert embedding_diversity(x) == pytest.approx(1 - cos)
    recs = [dict(sampler="s", temperature=1.0, seed=s, correct=c, distinct_2=[0.5], self_bleu=[0.1], embedding_diversity=[0.2])
            for s, c in ((0, [1, 0]), (1, [1, 1]))]
    row = summarise(recs)[0]
    assert row["accuracy"] == 0.75 and row["accuracy_ci"] == wilson(3, 4) and row["seeds"] == 2


def test_sweep_cli_runs_and_summarises_a_cut_short_sweep(tmp_path, capsys):
    args = ["--out", str(tmp_path / "w"), "--tiny", "--temperatures", "1", "2", "--seeds", "0", "--problems", "2",
            "--prompts", "2", "--samples", "2", "--max-new-tokens", "3", "3", "--no-progress"]
    assert sweep_cli(args + ["--samplers", "plain,p_less"]) == 0
    assert sweep_cli(args + ["--samplers", "plain,p_less,min_p", "--no-run", "--results", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert {c["sampler"] for c in r["cells"]} == {"plain", "p_less"} and len(r["summary"]) == 4
    with pytest.raises(SystemExit): sweep_cli(args + ["--samplers", "nope"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: sweep_cli(args + ["--samplers", "plain", "--temperatures", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "other settings" in err and err.count("\n") == 1, err


SWEEP_COMMAND = ["--temperatures", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "--seeds", "0", "1", "--problems", "10",
                 "--prompts", "3", "--samples", "3", "--max-new-tokens", "4", "16"]


@pytest.mark.heavy
def test_heavy_quality_diversity_sweep(tmp_path):
    "Regenerates results/sweep_quality_diversity.json: `soft-sampler sweep --out DIR --results results/... <SWEEP_COMMAND>`"
    "(11 samplers x 6 temperatures x 2 seeds; 42 min with nice on the shared, loaded 2-core machine; resumable)."
    from pathlib import Path
    out = Path(__file__).resolve().parents[1] / "results" / "sweep_quality_diversity.json"
    assert sweep_cli(["--out", str(tmp_path / "sweep"), "--results", str(out), *SWEEP_COMMAND, "--no-progress"]) == 0
    assert len(json.loads(out.read_text())["summary"]) == 11 * 6
