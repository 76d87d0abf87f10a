"""The documentation site: `tools/build_docs.py` (what `make docs` runs) builds it from the notebooks, headless
Chromium opens every page from a loopback server with every other address blocked.

default tier: the pieces (widget snapshots, plotly without a CDN, the API index, navigation) on a tiny notebook.
slow tier: one full build per session (executed notebooks are reused from `.cache/docs/` when unchanged) and the
browser checks; screenshots of the home page, a lesson, the tutorials and the API reference go to `screenshots/`.
"""
import functools, http.server, importlib.util, json, re, socketserver, subprocess, sys, threading, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_docs", ROOT/"tools"/"build_docs.py")
bd = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bd)


def page_name(nb: str) -> str:
    from nbdev.frontmatter import _nbpath2html
    return _nbpath2html(Path(nb)).stem


NOTEBOOKS = bd.lesson_order()
PAGES = [page_name(n) for n in NOTEBOOKS] + ["api"]


# --- default tier: the build's pieces on a tiny notebook --------------------------------------------------

TINY_NB = {"cells": [
    {"cell_type": "markdown", "metadata": {}, "source": "# A tiny page\n> With a widget and a plotly chart.\n\nSome math: $p_i = e^{\\ell_i}$."},
    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
     "source": "import ipywidgets as W\nimport plotly.graph_objects as go"},
    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
     "source": "out = W.Output()\nout.append_display_data(W.HTML('<b>inside</b>'))\n"
               "W.VBox([W.FloatSlider(value=0.7, min=0, max=2, description='t'), W.Dropdown(options=['top-k', 'min-p'], value='min-p'), out])"},
    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
     "source": "go.Figure(go.Bar(x=['a', 'b'], y=[0.6, 0.4])).show()"},
    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "#| heavy\nraise RuntimeError('heavy cells never run')"},
    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "#| hide\nhidden = 1"},
    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "#| echo: false\nprint('only the output')"},
], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory):
    "The tiny notebook through the build's worker (a fresh process, as in the build), then `tidy`."
    d = tmp_path_factory.mktemp("tiny")
    (d/"tiny.ipynb").write_text(json.dumps(TINY_NB))
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    import os
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"build_docs.py"), "--worker", str(d/"tiny.ipynb"), str(d/"out.ipynb")],
                       env={**os.environ, **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return bd.tidy(json.loads((d/"out.ipynb").read_text()))


def _outputs(nb, mime):
    return ["".join(o["data"][mime]) for c in nb["cells"] for o in c.get("outputs", []) if mime in o.get("data", {})]


def test_tiny_title_and_directives(tiny_page):
    nb, title, _ = tiny_page
    test_title = title
    assert test_title == "A tiny page"
    sources = [c["source"] for c in nb["cells"]]
    assert not any("hidden = 1" in s for s in sources), "`#| hide` cells are dropped"
    assert not any(s.startswith("#|") for s in sources)
    echo = next(c for c in nb["cells"] if "only the output" in c["source"])
    assert "remove_input" in echo["metadata"]["tags"]
    assert not any("heavy cells never run" in "".join(map(str, c.get("outputs", []))) for c in nb["cells"])


def test_tiny_widget_snapshot(tiny_page):
    nb = tiny_page[0]
    assert not _outputs(nb, bd.WIDGET_VIEW), "widget views must be replaced by their static form"
    snap = next(h for h in _outputs(nb, "text/html") if "ss-widget" in h)
    assert 'type="range"' in snap and 'value="0.7"' in snap and ">t<" in snap
    assert "<option selected>min-p</option>" in snap
    assert "<b>inside</b>" in snap, "an Output widget shows what it holds"


def test_tiny_plotly_is_local(tiny_page):
    figs = [h for h in _outputs(tiny_page[0], "text/html") if "plotly" in h.lower() and "newPlot" in h]
    assert len(figs) == 1
    assert re.search(r'<script[^>]* src="plotly.min.js"', figs[0])
    assert "https://" not in figs[0]


def test_offline_html_rewrites_cdns():
    cdn = '<script src="https://cdn.plot.ly/plotly-3.0.1.min.js" charset="utf-8"></script><div>x</div>'
    mj = '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.5/MathJax.js?config=TeX-AMS-MML_SVG"></script>'
    assert bd._offline_html(cdn + mj) == '<script src="plotly.min.js"></script><div>x</div>'


def test_inlined_plotly_js_becomes_the_sites_one_copy():
    "`include_plotlyjs=True` puts 4.8 MB of plotly.js into every figure; on the site all share plotly.min.js."
    import plotly.graph_objects as go
    frag = go.Figure(go.Bar(x=[1], y=[2])).to_html(include_plotlyjs=True, full_html=False)
    out = bd._offline_html(frag)
    assert len(frag) > 1_000_000 and len(out) < 20_000 and '<script src="plotly.min.js"></script>' in out
    assert "Plotly.newPlot" in out
    # outputs come as lists of lines: the rewrite sees the whole text
    cell = {"cell_type": "code", "source": "", "outputs": [{"output_type": "display_data", "metadata": {},
                                                            "data": {"text/html": frag.splitlines(keepends=True)}}]}
    assert len(bd._fix(cell)["outputs"][0]["data"]["text/html"]) < 20_000


def test_source_links_render_as_intended_and_headings_keep_their_code():
    md = '[source](https://x.org/a.py#L3){target="_blank" style="float:right; font-size:smaller"}\n\n### f'
    assert bd._site_links(md).startswith('<a href="https://x.org/a.py#L3" target="_blank" style="float:right; font-size:smaller">source</a>')
    assert "{target=" not in bd._site_links(md + ' and {target="_blank"} alone')
    assert bd._heading_code("## A pipeline inside transformers' `generate`\nsome `code`") == \
        "## A pipeline inside transformers' <code>generate</code>\nsome `code`"


def test_cache_entries_are_keyed_by_content_and_skipped_flags(tmp_path):
    nb = tmp_path/"x.ipynb"; nb.write_text(json.dumps(TINY_NB))
    a, b = bd.cache_entry(nb, "lib", skip=("heavy",)), bd.cache_entry(nb, "lib", skip=("slow", "heavy"))
    assert a != b and a == bd.cache_entry(nb, "lib", skip=("heavy",)) and a.name.startswith("x.")
    nb.write_text(json.dumps({**TINY_NB, "cells": TINY_NB["cells"][:2]}))
    assert bd.cache_entry(nb, "lib", skip=("heavy",)) != a, "an edited notebook is run again"


def _nb(*sources):
    return {**TINY_NB, "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
                                 for s in sources]}


def test_a_failing_notebook_is_recorded_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(bd, "CACHE", tmp_path/"cache")
    nb = tmp_path/"bad.ipynb"; nb.write_text(json.dumps(_nb("x = 1", "#| slow\nraise ValueError('slow cell ran')",
                                                            "raise RuntimeError('cell 3 fails')")))
    entry, failure = bd.run_notebook(nb, skip=("slow", "heavy"))
    assert "RuntimeError" in failure and "cell 3 fails" in failure and "slow cell ran" not in failure
    assert not entry.exists() and bd.failure_of(entry).read_text() == failure


def test_a_notebook_past_its_limit_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(bd, "CACHE", tmp_path/"cache")
    nb = tmp_path/"slow.ipynb"; nb.write_text(json.dumps(_nb("import time; time.sleep(600)")))
    entry, failure = bd.run_notebook(nb, timeout=5)
    assert "ran past 5s and was stopped" in failure and not entry.exists()


def test_widget_html_nested_and_unknown():
    state = {"a": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_b", "IPY_MODEL_c"]}},
             "b": {"model_name": "CheckboxModel", "state": {"value": True, "description": "log"}},
             "c": {"model_name": "ColorPickerModel", "state": {"value": "#ff0000"}}}
    h = bd.widget_html("a", state)
    assert h.startswith('<div class="ss-w ss-w-hbox">') and "checked" in h and 'value="#ff0000"' in h
    assert bd.widget_html("missing", state) == ""


def test_sidebar_order_and_tutorials_after_lessons():
    assert NOTEBOOKS[0] == "index.ipynb"
    tut = [i for i, n in enumerate(NOTEBOOKS) if bd.is_tutorial(n)]
    lessons = [i for i, n in enumerate(NOTEBOOKS) if not bd.is_tutorial(n)]
    assert tut and max(lessons) < min(tut), "tutorials come after the lessons in nbs/sidebar.yml"
    on_disk = {p.name for p in (ROOT/"nbs").glob("*.ipynb")}
    assert on_disk == set(NOTEBOOKS), f"every notebook is in nbs/sidebar.yml: {sorted(on_disk ^ set(NOTEBOOKS))}"


def test_quarto_config_still_valid():
    "Users with quarto run `nbdev_docs`: the quarto files must stay what nbdev expects."
    import yaml
    q = yaml.safe_load((ROOT/"nbs"/"_quarto.yml").read_text())
    assert q["project"]["type"] == "website" and "sidebar.yml" in q["metadata-files"]
    side = yaml.safe_load((ROOT/"nbs"/"sidebar.yml").read_text())
    assert all((ROOT/"nbs"/n).exists() for n in bd._flatten(side["website"]["sidebar"]["contents"]))


def test_api_index_links_its_entries():
    nb = bd.api_notebook(bd.module_pages())
    index = nb["cells"][1]["source"]
    assert '<a href="#api-load_model"><code>load_model</code></a>' in index
    assert '<a id="api-load_model"></a>' in [c["source"] for c in nb["cells"]]
    assert '<a href="#soft_samplercore"><code>soft_sampler.core</code></a> | [core](core.html)' in index
    shown = "\n".join(c["source"] for c in nb["cells"] if c["cell_type"] == "code")
    assert "show_doc(soft_sampler.core.load_model, title_level=3)" in shown
    assert "DEFAULT_MODEL" not in shown, "constants are not API entries"


# --- slow tier: the real site in a browser ---------------------------------------------------------------

# The site fixture renders the notebooks that tests/test_notebooks.py executed earlier in this run (from the docs
# cache); only a notebook missing there runs here, each under the build's own per-notebook limit (as a notebook test).
# pytest-timeout's limit therefore covers the test functions only, never this fixture's set-up (`func_only`).
SITE = [pytest.mark.slow, pytest.mark.timeout(300, func_only=True)]


def site_tests(f):
    for m in SITE: f = m(f)
    return f


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    "The whole site, built once per session into a temporary folder; a notebook that fails is rendered unexecuted."
    out = tmp_path_factory.mktemp("docs")
    t0 = time.time()
    bd.build(site=out/"site", work=out/"work", keep_going=True, reuse_failures=True)
    print(f"docs built in {time.time() - t0:.0f}s")
    return out/"site"


def failed_notebooks(site: Path) -> dict:
    "Page stem -> traceback of the notebooks that failed to execute (their pages are rendered unexecuted)."
    return json.loads((site.parent/"work"/"failed.json").read_text())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@pytest.fixture(scope="session")
def server(site):
    "The site served on loopback (search fetches its index, which file:// forbids)."
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def page(browser, server):
    "A page whose requests may only go to the loopback server (or data:/blob:); anything else is aborted and recorded."
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    outside = []
    def route(r):
        url = r.request.url
        if url.startswith((server, "data:", "blob:", "about:")): return r.continue_()
        outside.append(url); r.abort()
    ctx.route("**/*", route)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.outside, pg.errors = outside, errors
    yield pg
    ctx.close()


def _expected(site: Path, name: str) -> dict:
    "What the page must show, counted in the notebook the site was rendered from."
    nb = json.loads((site.parent/"work"/"_docs_src"/f"{name}.ipynb").read_text())
    outs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    html = ["".join(o.get("data", {}).get("text/html", "")) for o in outs]
    md = "\n".join(c["source"] for c in nb["cells"] if c["cell_type"] == "markdown")
    return {"images": sum("image/png" in o.get("data", {}) for o in outs) + sum(h.count("<img") for h in html),
            "plotly": sum(h.count("Plotly.newPlot") for h in html),
            "math": bool(re.search(r"\$[^$\n]+\$", md))}


PAGE_BUDGET = 2_500_000  # bytes of HTML per page (plotly.js, MathJax and images files are shared, not counted)

TOC_AND_HEADINGS = """() => {
  const clean = s => s.replace(/\u00b6/g, '').replace(/\\s+/g, ' ').trim();
  return [...document.querySelectorAll('nav.md-nav--secondary a.md-nav__link')].map(a => {
    const id = decodeURIComponent(a.getAttribute('href').split('#')[1] || '');
    const h = document.getElementById(id);
    return [clean(a.textContent), h ? clean(h.textContent) : null, id];
  });
}"""


def toc_mismatches(page) -> list:
    "Right-hand table-of-contents entries whose text is not their heading's (or whose heading is missing)."
    return [(toc, head, id) for toc, head, id in page.evaluate(TOC_AND_HEADINGS) if toc != head]


def _open(page, url):
    page.goto(url, wait_until="load")
    page.wait_for_selector(".jp-Notebook", timeout=30_000)


@site_tests
@pytest.mark.parametrize("name", PAGES)
def test_page_renders(page, server, site, name):
    stem = next((Path(n).stem for n in NOTEBOOKS if page_name(n) == name), name)
    if stem in failed_notebooks(site):
        pytest.fail(f"{name}: its notebook failed to execute (see test_notebook[{stem}]):\n{failed_notebooks(site)[stem][-2000:]}")
    _open(page, f"{server}/{name}.html")
    want = _expected(site, name)
    text = page.inner_text(".md-content")
    assert len(text) > 300, f"{name}: page nearly empty ({len(text)} characters)"
    assert page.locator(".jp-Cell").count() > 2
    stderr = page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    bad = [s for s in stderr if "Traceback" in s or re.search(r"^\w*(Error|Exception)\b", s, re.M)]
    assert not bad, f"{name}: error output on the page: {bad[0][:500]}"
    assert "Traceback (most recent call last)" not in text
    if want["images"]:
        page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea-output img')].every(i => i.complete)")
        sizes = page.eval_on_selector_all(".jp-OutputArea-output img", "els => els.map(i => i.naturalWidth)")
        assert len(sizes) >= want["images"] and all(w > 0 for w in sizes), f"{name}: images {sizes}, want {want['images']}"
    if want["plotly"]:
        page.wait_for_function(f"() => document.querySelectorAll('.plotly .main-svg').length >= {want['plotly']}", timeout=30_000)
    if want["math"]:
        page.wait_for_selector("mjx-container", state="attached", timeout=30_000)
    assert not page.errors, f"{name}: JavaScript errors {page.errors[:3]}"
    assert not page.outside, f"{name}: requests outside the site {page.outside[:5]}"
    body = page.inner_text("body")
    assert "{target=" not in body and "{style=" not in body, f"{name}: quarto attribute text on the page"
    if page.locator("a:text-is('source')").count():
        link = page.locator("a:text-is('source')").first
        assert link.get_attribute("target") == "_blank" and link.evaluate("a => getComputedStyle(a).cssFloat") == "right"
    bad = toc_mismatches(page)
    assert not bad, f"{name}: table-of-contents entries differ from their headings (toc, heading, id): {bad[:5]}"
    size = (site/f"{name}.html").stat().st_size
    assert size <= PAGE_BUDGET, f"{name}.html is {size / 1e6:.1f} MB (budget {PAGE_BUDGET / 1e6:.1f} MB): share plotly.js, shrink figures"


@site_tests
def test_navigation_in_lesson_order(page, server):
    _open(page, f"{server}/index.html")
    hrefs = page.eval_on_selector_all("nav.md-nav--primary a.md-nav__link[href$='.html']", "els => els.map(a => a.getAttribute('href'))")
    seen = list(dict.fromkeys(h.split("#")[0].removeprefix("./") for h in hrefs))
    want = [f"{p}.html" for p in PAGES]
    assert [h for h in seen if h in want] == want, seen


@site_tests
def test_search_finds_a_heuristic(page, server):
    _open(page, f"{server}/index.html")
    for _ in range(12):  # the search index loads in a web worker: retype until it answers (60 s at most)
        page.fill(".md-search__input", "")
        page.type(".md-search__input", "nucleus")
        try: page.wait_for_selector(".md-search-result__item", timeout=5_000); break
        except Exception: pass
    hits = page.eval_on_selector_all(".md-search-result__item a", "els => els.map(a => a.getAttribute('href'))")
    assert any("heuristics_hf.html" in h for h in hits), hits
    assert not page.outside


@site_tests
def test_api_reference_index_resolves(page, server):
    _open(page, f"{server}/api.html")
    ids = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
    links = page.eval_on_selector_all(".jp-RenderedMarkdown table a[href^='#']", "els => els.map(a => a.getAttribute('href').slice(1))")
    assert len(links) > 50
    missing = [l for l in links if l not in ids]
    assert not missing, f"API index links without a target: {missing[:10]}"
    assert page.locator("h3#load_model").count() == 1


@site_tests
@pytest.mark.parametrize("name", ["index", "heuristics_hf", "tutorial_sampling", "tutorial_learning", "tutorial_qalign",
                                  "tutorial_soft", "api"])
def test_screenshot(page, server, screenshots, name):
    _open(page, f"{server}/{name}.html")
    page.wait_for_timeout(1500)  # MathJax and plotly finish drawing
    if name == "heuristics_hf":  # the first figure of the lesson, below the fold
        page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
    if name.startswith("tutorial_"):  # its first figure: an interactive plotly chart or an image
        page.locator(".plotly .main-svg, .jp-OutputArea-output img").first.scroll_into_view_if_needed()
    shot = screenshots/f"docs_{name}.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
