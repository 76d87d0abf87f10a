"""Write README.md from nbs/index.ipynb (nbdev_readme needs quarto, which cannot be installed here).

Markdown cells are copied, code cells become ```python blocks, `#| hide` cells are dropped. Links to site pages
(`sampling.html`, nbdev's page names) point at their notebooks (`nbs/02_sampling.ipynb`), which GitHub renders.
`python tools/make_readme.py --check` exits 1 when README.md is stale.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebook_of_page() -> dict[str, str]:
    "Site page name -> its notebook under nbs/ (nbdev's names: `02_sampling.ipynb` -> `sampling.html`)."
    from nbdev.frontmatter import _nbpath2html
    return {_nbpath2html(p).stem: f"nbs/{p.name}" for p in sorted((ROOT/"nbs").glob("*.ipynb"))}


def page_links_to_notebooks(md: str, pages: dict[str, str]) -> str:
    "`[text](page.html#x)` -> `[text](nbs/NN_page.ipynb)` for every page of the site; other links unchanged."
    return re.sub(r"\]\(([\w-]+)\.html(?:#[^)]*)?\)", lambda m: f"]({pages[m[1]]})" if m[1] in pages else m[0], md)


def render(nb_path: Path = ROOT/"nbs"/"index.ipynb") -> str:
    nb, pages = json.loads(nb_path.read_text()), notebook_of_page()
    parts = ["<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->"]
    for cell in nb["cells"]:
        src = "".join(cell["source"]).strip()
        if not src or re.match(r"#\|\s*(hide|default_exp)", src): continue
        if cell["cell_type"] == "markdown":
            src = re.sub(r"^> (.*)$", r"*\1*", src, count=1, flags=re.M) if src.startswith("# ") else src
            parts.append(page_links_to_notebooks(src, pages))
        elif cell["cell_type"] == "code":
            parts.append("```python\n" + src + "\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), ROOT/"README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.exists() and readme.read_text() == text else 1)
    readme.write_text(text)
    print(f"wrote {readme}")
