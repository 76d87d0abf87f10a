"The library in soft_sampler/ must be exactly what the notebooks export, and notebooks must be clean."
import shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _files(d: Path, pattern: str) -> dict:
    return {p.relative_to(d).as_posix(): p.read_text() for p in d.rglob(pattern) if ".ipynb_checkpoints" not in p.parts}


def test_library_in_sync_with_notebooks(tmp_path):
    for name in ("settings.ini", "pyproject.toml"): shutil.copy(ROOT/name, tmp_path/name)
    shutil.copytree(ROOT/"nbs", tmp_path/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_proc", "_docs"))
    shutil.copytree(ROOT/"soft_sampler", tmp_path/"soft_sampler", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in ("nbdev_clean", "nbdev_export"):
        subprocess.run([str(BIN/cmd)], cwd=tmp_path, check=True, capture_output=True)
    stale = [f"nbs/{k}" for k, v in _files(tmp_path/"nbs", "*.ipynb").items() if v != (ROOT/"nbs"/k).read_text()]
    want, have = _files(tmp_path/"soft_sampler", "*.py"), _files(ROOT/"soft_sampler", "*.py")
    stale += [f"soft_sampler/{k}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    assert not stale, ("Library and notebooks differ; run `make sync` (nbdev_clean, then nbdev_export) "
                       f"and commit. Out of sync: {stale}")
