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


# --- the home page (nbs/index.ipynb): a path for three kinds of reader, and every page linked by its title -------

import json, re


def _index_markdown() -> str:
    nb = json.loads((ROOT/"nbs"/"index.ipynb").read_text())
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def _titles() -> dict[str, str]:
    "Site page name -> the notebook's title (its first `# ` heading, which the sidebar shows)."
    sys.path.insert(0, str(ROOT/"tools"))
    from make_readme import notebook_of_page
    out = {}
    for page, nb in notebook_of_page().items():
        cells = json.loads((ROOT/nb).read_text())["cells"]
        m = next(m for c in cells if c["cell_type"] == "markdown" and (m := re.match(r"#\s+(.+)", "".join(c["source"]))))
        out[page] = m[1].strip()
    return out


def test_index_tables_link_every_page_by_its_sidebar_title():
    titles, md = _titles(), _index_markdown()
    rows = re.findall(r"^\| \[([^\]]+)\]\(([\w-]+)\.html\) \|", md, re.M)
    for text, page in rows:
        assert page in titles, f"index.ipynb links {page}.html, which is no page"
        assert text == titles[page], f"index.ipynb calls {page}.html {text!r}; its title (the sidebar's) is {titles[page]!r}"
    listed = [p for _, p in rows]
    missing = sorted(set(titles) - {"index"} - set(listed))
    assert not missing, f"add one row per page to the lessons/tutorials tables in nbs/index.ipynb: {missing}"
    assert len(listed) == len(set(listed)), "a page is listed twice"


def test_index_start_here_has_three_paths_of_links():
    titles, md = _titles(), _index_markdown()
    start = md[md.index("## Start here"):]
    start = start[:start.index("\n## ", 5)]
    paths = re.split(r"^\*\*\d\. ", start, flags=re.M)[1:]
    assert len(paths) == 3, "three kinds of reader: learn sampling, use the library, research"
    for p in paths:
        steps = re.findall(r"^\d+\. \[([^\]]+)\]\(([\w-]+)\.html\) — (.+)$", p, re.M)
        assert len(steps) >= 3, p
        for text, page, promise in steps:
            assert titles.get(page) == text, (page, text)
            assert len(promise) > 20, f"a one-line promise for {page}"


def test_readme_links_notebooks_not_pages():
    text = (ROOT/"README.md").read_text()
    assert "](nbs/30_tutorial_sampling.ipynb)" in text
    assert not re.search(r"\]\([\w-]+\.html", text), "README links (GitHub) go to notebooks, the site's to pages"
