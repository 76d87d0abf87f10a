"Every notebook in nbs/ runs as one test, with nbdev's skip rules and the flags of the chosen tier."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as _run_nb  # aliased: pytest would collect `test_nb`
from conftest import enabled_flags

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/"nbs").glob("*.ipynb") if not p.name.startswith("_"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, request, monkeypatch):
    cfg = get_config(path=ROOT)
    skip = [f for f in cfg.tst_flags.split() if f not in enabled_flags(request.config)]
    monkeypatch.chdir(ROOT)
    ok, secs = _run_nb(nb, skip_flags=skip, basepath=cfg.config_path)
    assert ok, f"{nb.name} failed (traceback above, on stderr)"
