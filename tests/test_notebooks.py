"""Every notebook in nbs/ runs as one test, with nbdev's skip rules and the flags of the chosen tier.

Each notebook runs in its own Python process, so global state one lesson sets (grad mode, default dtype, RNG,
loaded models) can never leak into the next. It runs in the docs build's worker (`tools/build_docs.py`): the same
executor and skip rules as nbdev's `test_nb` (markdown, the export call, `eval: false` and the flags the tier
skips: `slow heavy` by default, `heavy` in the slow tier, none in the heavy tier), and the executed notebook goes
to the docs cache `.cache/docs/`, keyed by its content, the library, results/ and the skipped flags. The site
(`tests/test_docs.py`, slow tier, where the site skips exactly `heavy` too) then renders these executed notebooks
instead of running every notebook a second time; a notebook edited in between has another key and runs again.
These tests run before every other test of the session (see `conftest.py`) so that the site finds them.
"""
import importlib.util
from pathlib import Path
import pytest
from nbdev.config import get_config
from conftest import enabled_flags

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/"nbs").glob("*.ipynb") if not p.name.startswith("_"))
_spec = importlib.util.spec_from_file_location("build_docs", ROOT/"tools"/"build_docs.py")
bd = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bd)


def skipped_flags(config) -> tuple:
    "nbdev's `tst_flags` (settings.ini) that the chosen tier does not run."
    return tuple(f for f in get_config(path=ROOT).tst_flags.split() if f not in enabled_flags(config))


def test_tiers_skip_what_the_site_skips(request):
    "The slow tier (CI's) skips exactly the cells the site never runs, so the site can reuse its executions."
    assert set(get_config(path=ROOT).tst_flags.split()) - {"slow"} == set(bd.SKIP_FLAGS)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, request):
    entry, failure = bd.run_notebook(nb, skip=skipped_flags(request.config))
    assert failure is None, f"{nb.name} failed:\n{failure[-6000:]}"
    assert entry.exists()
