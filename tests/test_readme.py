"README.md must be what `make readme` generates from nbs/index.ipynb."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_matches_index():
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"make_readme.py"), "--check"])
    assert r.returncode == 0, "README.md is stale: run `make readme` and commit"


def test_readme_names_the_two_commands():
    text = (ROOT/"README.md").read_text()
    assert "make demo" in text and "make test" in text
