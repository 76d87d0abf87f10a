"""Every notebook in nbs/ runs as one test, with nbdev's skip rules and the flags of the chosen tier.

Each notebook runs in its own Python process (nbdev's `test_nb`), so global state one lesson sets
(grad mode, default dtype, RNG, loaded models) can never leak into the next.
"""
import os, subprocess, sys
from pathlib import Path
import pytest
from nbdev.config import get_config
from conftest import enabled_flags

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/"nbs").glob("*.ipynb") if not p.name.startswith("_"))
RUNNER = """
import sys
from pathlib import Path
from nbdev.test import test_nb
ok, secs = test_nb(Path(sys.argv[1]), skip_flags=sys.argv[3].split(), basepath=sys.argv[2])
print(f"{Path(sys.argv[1]).name}: {'ok' if ok else 'FAILED'} in {secs:.1f}s")
sys.exit(0 if ok else 1)
"""


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, request):
    cfg = get_config(path=ROOT)
    skip = [f for f in cfg.tst_flags.split() if f not in enabled_flags(request.config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = subprocess.run([sys.executable, "-c", RUNNER, str(nb), str(cfg.config_path), " ".join(skip)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    print(r.stdout[-2000:])
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stderr[-6000:]}"
