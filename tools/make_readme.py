"""Write README.md from nbs/index.ipynb (nbdev_readme needs quarto, which cannot be installed here).

Markdown cells are copied, code cells become ```python blocks, `#| hide` cells are dropped.
`python tools/make_readme.py --check` exits 1 when README.md is stale.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path = ROOT/"nbs"/"index.ipynb") -> str:
    nb = json.loads(nb_path.read_text())
    parts = ["<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->"]
    for cell in nb["cells"]:
        src = "".join(cell["source"]).strip()
        if not src or re.match(r"#\|\s*(hide|default_exp)", src): continue
        if cell["cell_type"] == "markdown":
            src = re.sub(r"^> (.*)$", r"*\1*", src, count=1, flags=re.M) if src.startswith("# ") else src
            parts.append(src)
        elif cell["cell_type"] == "code":
            parts.append("```python\n" + src + "\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT/"README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.exists() and readme.read_text() == text else 1)
    readme.write_text(text)
    print(f"wrote {readme}")
