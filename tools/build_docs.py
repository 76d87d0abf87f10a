"""Build the documentation site from the notebooks, offline (quarto, which `nbdev_docs` needs, cannot be installed here).

For every notebook in `nbs/sidebar.yml` (lesson order), in its own Python process, `--jobs` at a time:
1. nbdev's own processors add a `show_doc` cell after every exported definition and read the front matter;
2. the notebook runs top to bottom in nbdev's executor (execnb), with `slow` cells and without `heavy` or
   `eval: false` cells, as CI runs it: heavy cells never run, the notebooks plot their committed results.
   A cell that raises fails the build and names the notebook and cell;
3. plotly figures load plotly.js from the site itself (`plotly.min.js`, never a CDN); ipywidgets views become
   a static HTML snapshot of the widget state (controls drawn disabled, Output widgets with their outputs);
4. nbdev's processors apply the directives (`hide`, `export`, `echo: false`, ...), link backticked names to
   their docs and strip ANSI codes.
An API page collects `show_doc` of every public symbol with an index. mkdocs + mkdocs-material +
mkdocs-jupyter render the site: navigation in lesson order (home, lessons, tutorials, API), search,
MathJax served from the site (PyPI `sphinx-mathjax-offline`), no web fonts. Executed notebooks are cached
under `.cache/docs/` by content (notebook, library, results, this script), so an unchanged notebook is not run twice.

Usage: python tools/build_docs.py [--only STEM ...] [--jobs N] [--site DIR] [--work DIR] [--no-cache]
View:  python -m http.server -d _docs   (search needs http://; every other page also opens from file://)
"""
from __future__ import annotations
import argparse, hashlib, html, json, os, re, shutil, subprocess, sys, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"
BIN = Path(sys.executable).parent
CACHE = ROOT/".cache"/"docs"
PLOTLY_RENDERER = "soft_sampler_docs"


# --- which notebooks, in which order -------------------------------------------------------------------

def _flatten(items) -> list[str]:
    out = []
    for it in items or []:
        if isinstance(it, str): out.append(it)
        elif isinstance(it, dict): out += _flatten(it.get("contents")) + ([it["href"]] if "href" in it else [])
    return out


def lesson_order() -> list[str]:
    "Notebooks in the order of `nbs/sidebar.yml` (quarto's sidebar; `section:` groups are flattened)."
    side = yaml.safe_load((NBS/"sidebar.yml").read_text())
    return [p for p in _flatten(side["website"]["sidebar"]["contents"]) if str(p).endswith(".ipynb")]


def is_tutorial(name: str) -> bool: return "tutorial" in Path(name).stem


# --- the per-notebook worker (runs in a fresh process) ---------------------------------------------------

SKIP_FLAGS = ("heavy",)  # what the site never runs; `slow` cells run (CI's tier)


def _no_eval(cell, skip=SKIP_FLAGS) -> bool:
    "nbdev's skip rule (as `nbdev.test.test_nb`): markdown, the export call, `eval: false`, cells flagged with any of `skip`."
    if cell.cell_type != "code" or not cell.source.strip(): return True
    if "nbdev_export" + "(" in cell.source: return True
    d = getattr(cell, "directives_", None) or {}
    if d.get("eval:", [""])[0].lower() == "false": return True
    return bool(set(skip) & set(d))


def _use_local_plotly() -> None:
    "Plotly figures shown in a notebook load `plotly.min.js` from the site root: no CDN, one copy per site."
    try:
        import plotly.io as pio
        from plotly.io._base_renderers import MimetypeRenderer
    except ImportError: return

    class DocsRenderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict):
            return {"text/html": pio.to_html(fig_dict, include_plotlyjs="directory", include_mathjax=False,
                                             full_html=False, default_width="100%", validate=False)}
    pio.renderers[PLOTLY_RENDERER] = DocsRenderer()
    pio.renderers.default = PLOTLY_RENDERER


def execute(nb, path: Path, skip=SKIP_FLAGS) -> None:
    "Run `nb` (read from `path`) in nbdev's executor from the notebook's folder; exit with the traceback if a cell fails."
    from execnb.shell import CaptureShell
    from functools import partial
    os.environ["IN_TEST"] = "1"  # as nbdev's test_nb
    shell, cwd = CaptureShell(path), os.getcwd()
    shell.run("from nbdev.showdoc import show_doc")  # nbdev's processing provides it for the show_doc cells it adds
    os.chdir(path.parent)
    try: shell.run_all(nb, exc_stop=True, preproc=partial(_no_eval, skip=skip))
    except Exception:
        sys.stderr.write(f"docs: executing {path.name} failed\n{shell.prettytb(fname=path)}\n")
        raise SystemExit(1)
    finally: os.chdir(cwd)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _bundle_html(data: dict, state: dict) -> str:
    "One output's richest static form as HTML."
    if "text/html" in data: return "".join(data["text/html"])
    for mime in ("image/png", "image/jpeg"):
        if mime in data: return f'<img src="data:{mime};base64,{"".join(data[mime]).strip()}">'
    if "image/svg+xml" in data: return "".join(data["image/svg+xml"])
    if WIDGET_VIEW in data: return widget_html(data[WIDGET_VIEW]["model_id"], state)
    if "text/markdown" in data:
        import markdown
        return markdown.markdown("".join(data["text/markdown"]), extensions=["tables"])
    return f"<pre>{html.escape(''.join(data.get('text/plain', '')))}</pre>"


def _output_html(o: dict, state: dict) -> str:
    if o.get("output_type") == "stream": return f"<pre>{html.escape(''.join(o.get('text', '')))}</pre>"
    if o.get("output_type") == "error": return f"<pre>{html.escape(o.get('ename', ''))}: {html.escape(o.get('evalue', ''))}</pre>"
    return _bundle_html(o.get("data", {}), state)


def widget_html(model_id: str, state: dict) -> str:
    "A static HTML snapshot of an ipywidgets view: layout boxes, text, the values of controls (drawn disabled), Output contents."
    m = state.get(model_id)
    if m is None: return ""
    name, s = m["model_name"].removesuffix("Model"), m["state"]
    kids = lambda: "".join(widget_html(c.removeprefix("IPY_MODEL_"), state) for c in s.get("children", []))
    desc = f'<span class="ss-w-desc">{html.escape(str(s.get("description") or ""))}</span>' if s.get("description") else ""
    if name in ("VBox", "Box", "GridBox", "Accordion", "Stack"): return f'<div class="ss-w ss-w-vbox">{kids()}</div>'
    if name == "HBox": return f'<div class="ss-w ss-w-hbox">{kids()}</div>'
    if name == "Tab":
        titles = s.get("titles") or []
        return f'<div class="ss-w ss-w-vbox"><div class="ss-w-tabs">{" | ".join(html.escape(str(t)) for t in titles)}</div>{kids()}</div>'
    if name in ("HTML", "HTMLMath"): return f'<div class="ss-w">{desc}{s.get("value", "")}</div>'
    if name == "Label": return f'<span class="ss-w">{html.escape(str(s.get("value", "")))}</span>'
    if name == "Output": return f'<div class="ss-w ss-w-output">{"".join(_output_html(o, state) for o in s.get("outputs", []))}</div>'
    if name.endswith("Slider") or name.endswith("Progress"):
        v = s.get("value")
        lo, hi, step = s.get("min", 0), s.get("max", 100), s.get("step", 1)
        val = v[0] if isinstance(v, list) else v
        shown = "–".join(map(str, v)) if isinstance(v, list) else v
        return (f'<div class="ss-w">{desc}<input type="range" disabled min="{lo}" max="{hi}" step="{step}" value="{val}">'
                f'<span class="ss-w-value">{html.escape(str(shown))}</span></div>')
    if "_options_labels" in s:
        labels, idx = s["_options_labels"], s.get("index")
        chosen = set(idx) if isinstance(idx, list) else {idx}
        opts = "".join(f'<option{" selected" if i in chosen else ""}>{html.escape(str(l))}</option>' for i, l in enumerate(labels))
        return f'<div class="ss-w">{desc}<select disabled>{opts}</select></div>'
    if name in ("Checkbox", "ToggleButton", "Valid"):
        return f'<div class="ss-w"><input type="checkbox" disabled{" checked" if s.get("value") else ""}>{desc}</div>'
    if name == "Button": return f'<button class="ss-w" disabled>{html.escape(str(s.get("description", "")))}</button>'
    if "value" in s: return f'<div class="ss-w">{desc}<input type="text" disabled value="{html.escape(str(s["value"]))}"></div>'
    return f'<div class="ss-w">[{html.escape(name)}]</div>'


def freeze_widgets(nb) -> int:
    "Replace every widget view in `nb`'s outputs by its static HTML snapshot; returns how many were replaced."
    if "ipywidgets" not in sys.modules: return 0
    from ipywidgets import Widget
    state, n = Widget.get_manager_state(drop_defaults=False)["state"], 0
    for c in nb.cells:
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if WIDGET_VIEW in data:
                body = widget_html(data[WIDGET_VIEW]["model_id"], state)
                o["data"] = {"text/html": f'<div class="ss-widget" title="a static snapshot: the controls work in Jupyter">{body}</div>'}
                n += 1
    nb.metadata.pop("widgets", None)
    return n


_CDN_PLOTLY = re.compile(r'<script[^>]*src="https://cdn[^"]*plotly[^"]*"[^>]*>\s*</script>')
_CDN_MATHJAX = re.compile(r'<script[^>]*src="https://[^"]*mathjax[^"]*"[^>]*>\s*</script>', re.I)
_INLINE_PLOTLY = re.compile(r"<script[^>]*>\s*/\*\*\s*\* plotly\.js v[\d.]+[\s\S]*?</script>")


def _offline_html(text: str) -> str:
    """Figures saved with CDN links or with plotly.js inlined (`include_plotlyjs=True`, 4.8 MB each) load the site's one
    `plotly.min.js` instead; MathJax comes with every page already."""
    text = _INLINE_PLOTLY.sub('<script src="plotly.min.js"></script>', text)
    return _CDN_MATHJAX.sub("", _CDN_PLOTLY.sub('<script src="plotly.min.js"></script>', text))


def worker(src: Path, dst: Path, run: bool = True, skip=SKIP_FLAGS) -> None:
    "Process one notebook into `dst`: nbdev's show_doc cells, execution, widgets frozen, nbdev's directives applied."
    from execnb.nbio import read_nb, write_nb
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    from nbdev import processors as P
    os.chdir(ROOT)
    nb = read_nb(src)
    nb.path_ = str(src)
    NBProcessor(nb=nb, procs=[FrontmatterProc, P.populate_language, P.add_show_docs], rm_directives=False).process()
    fm = getattr(nb, "frontmatter_", {}) or {}
    if run and str(fm.get("skip_exec", "")).lower() not in ("true", "1", "yes"):  # nbdev's test_nb honours skip_exec too
        _use_local_plotly()
        execute(nb, src, skip)
        freeze_widgets(nb)
    NBProcessor(nb=nb, procs=[P.strip_ansi, P.hide_line, P.filter_stream_, P.rm_header_dash, P.clean_show_doc,
                              P.rm_export, P.clean_magics, P.hide_, P.add_links, P.mv_exports, P.strip_hidden_metadata]).process()
    tmp = dst.with_name(dst.name + ".part")
    write_nb(nb, tmp)
    os.replace(tmp, dst)  # a stopped worker never leaves a half-written cache entry
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(f"cpu={r.ru_utime + r.ru_stime:.1f}")


# --- from processed notebooks to mkdocs pages -----------------------------------------------------------

_ATTR_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)\{((?:\s*[\w-]+=\"[^\"\n]*\")+)\s*\}")
_QUARTO_ATTRS = re.compile(r"\{(?:target|style|\.)[^{}\n]*\}")


def _attr_links(text: str) -> str:
    "Quarto's `[text](url){target=\"_blank\" style=\"...\"}` (show_doc's source links) as the HTML link it means."
    return _ATTR_LINK.sub(lambda m: f'<a href="{m[2]}" {m[3].strip()}>{m[1]}</a>', text)


def _site_links(text: str) -> str:
    "Absolute doc links (nbdev writes doc_host/doc_baseurl) become relative; quarto attribute links become HTML, other attribute blocks go."
    from nbdev.config import get_config
    cfg = get_config()
    base = cfg.doc_host.rstrip("/") + "/" + cfg.doc_baseurl.strip("/") + "/"
    text = _QUARTO_ATTRS.sub("", _attr_links(text.replace(base, "")))
    return text.replace("#LNone", "")  # show_doc's source link when it cannot find the line


def _fix(obj, key=None):
    "Apply `_site_links` and `_offline_html` to every HTML or markdown output in `obj` (a cell, or part of one)."
    html_like = key in ("text/html", "text/markdown")
    if isinstance(obj, list) and html_like and all(isinstance(o, str) for o in obj): obj = "".join(obj)  # one text, not lines
    if isinstance(obj, str): return _offline_html(_site_links(obj)) if html_like else obj
    if isinstance(obj, list): return [_fix(o, key) for o in obj]
    if isinstance(obj, dict): return {k: _fix(v, k) for k, v in obj.items()}
    return obj


def _front_matter(cell) -> dict | None:
    src = "".join(cell["source"])
    if cell["cell_type"] != "raw" or not src.startswith("---"): return None
    return yaml.safe_load(src.strip().strip("-")) or {}


_HEADING = re.compile(r"^(#{1,6}\s.*)$", re.M)


def _heading_code(md: str) -> str:
    "Inline code in headings as `<code>` HTML: mkdocs-jupyter drops backticked spans from the table of contents."
    code = lambda m: re.sub(r"`([^`\n]+)`", lambda c: f"<code>{html.escape(c[1], quote=False)}</code>", m[1])
    return _HEADING.sub(code, md)


_QUARTO_OPT = re.compile(r"^#\|\s*([\w-]+):\s*(.+?)\s*$", re.M)


def tidy(nb: dict) -> tuple[dict, str, str]:
    "Front matter becomes a title; quarto cell options (echo, output, include) are applied. Returns nb, title, page name."
    cells, title, page = [], "", None
    for c in nb["cells"]:
        fm = _front_matter(c)
        if fm is not None:
            title = str(fm.get("title", "")); page = fm.get("output-file")
            md = f"# {title}\n\n" + (f"> {fm['description']}\n" if fm.get("description") else "")
            cells.append({"cell_type": "markdown", "metadata": {}, "source": md})
            continue
        src = "".join(c["source"])
        if c["cell_type"] == "code":
            opts = {k: v.strip("'\"").lower() for k, v in _QUARTO_OPT.findall(src)}
            if opts.get("include") == "false": continue
            if opts.get("output") == "false": c["outputs"] = []
            if opts.get("echo") == "false": c.setdefault("metadata", {}).setdefault("tags", []).append("remove_input")
            src = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip("\n")
            if not src and not c.get("outputs"): continue
        c = _fix({**c, "source": src})
        if c["cell_type"] == "markdown": c["source"] = _heading_code(_offline_html(_site_links(src)))
        cells.append(c)
    nb = {**nb, "cells": cells}
    if not title:
        m = next((re.match(r"#\s+(.+)", c["source"]) for c in cells if c["cell_type"] == "markdown"), None)
        title = m.group(1).strip() if m else "untitled"
    return nb, title, (page or "").removesuffix(".html")


# --- the API reference -----------------------------------------------------------------------------------

def _public(mod: str) -> list[str]:
    "Public names of module `mod` as its `__all__` lists them, with their public methods (`Class.method`)."
    from soft_sampler._modidx import d
    import importlib
    m = importlib.import_module(mod)
    import inspect
    def documented(n):
        o = getattr(m, n, None)
        return (inspect.isfunction(o) or inspect.isclass(o)) and getattr(o, "__module__", mod) == mod
    names = [n for n in getattr(m, "__all__", []) if not n.startswith("_") and documented(n)]
    syms = [k[len(mod) + 1:] for k in d["syms"].get(mod, {})]
    methods = [s for s in syms if s.count(".") == 1 and s.split(".")[0] in names and not s.split(".")[1].startswith("_")]
    return names + methods


def module_pages() -> dict[str, str]:
    "Module name -> the page of the lesson that exports it (nbdev's page names: `00_core.ipynb` -> `core`)."
    from nbdev.frontmatter import _nbpath2html
    pages = {}
    for n in lesson_order():
        m = re.search(r"#\|\s*default_exp\s+([\w.]+)", (NBS/n).read_text())
        if m: pages[f"soft_sampler.{m.group(1)}"] = _nbpath2html(Path(n)).stem
    return pages


def _anchor(heading: str) -> str:
    "The id nbconvert gives a heading: lower case, punctuation dropped, spaces as dashes."
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def api_notebook(pages: dict[str, str]) -> dict:
    "A notebook with an index of every public symbol and its `show_doc`, grouped by module in lesson order."
    from soft_sampler._modidx import d
    mods = sorted(d["syms"], key=lambda m: list(pages).index(m) if m in pages else len(pages))
    md = lambda s: {"cell_type": "markdown", "metadata": {}, "source": s}
    code = lambda s: {"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
    index = ["| module | lesson | symbols |", "|---|---|---|"]
    body = []
    for mod in mods:
        names = _public(mod)
        if not names: continue
        page = pages.get(mod, "")
        link = lambda n, a: f'<a href="#{a}"><code>{n}</code></a>'  # HTML: nbdev's add_links leaves it alone
        index.append(f"| {link(mod, _anchor(mod))} | [{page}]({page}.html) | " + ", ".join(link(n, f"api-{n}") for n in names) + " |")
        body.append(md(f"## {mod}\n\nFrom the lesson [{page}]({page}.html)."))
        body.append(code(f"#| echo: false\nimport {mod}"))
        for n in names:  # an explicit anchor: show_doc's heading shows the qualname, which may differ from the name
            body += [md(f'<a id="api-{n}"></a>'), code(f"#| echo: false\n#| output: asis\nshow_doc({mod}.{n}, title_level=3)")]
    head = md("# API reference\n\n> Every public function, class and method, from its docstring and docments, "
              "grouped by module in lesson order. Each lesson shows the same entries next to the code that defines them.")
    return {"cells": [head, md("\n".join(index)), code("#| echo: false\nfrom nbdev.showdoc import show_doc"), *body],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


# --- assets, mkdocs ---------------------------------------------------------------------------------------

MATHJAX_CONFIG = """window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
  processEscapes: true}, options: {skipHtmlTags: ['script', 'noscript', 'style', 'textarea', 'pre', 'code']}};
(function () { var s = document.createElement('script');
  s.src = new URL('mathjax/tex-chtml-full.js', document.currentScript.src).href; s.async = true; document.head.appendChild(s); })();
"""

EXTRA_CSS = """.ss-widget { border: 1px dashed #bbb; padding: .5em; margin: .3em 0; }
.ss-w-hbox { display: flex; gap: 1em; flex-wrap: wrap; } .ss-w-vbox { display: flex; flex-direction: column; gap: .3em; }
.ss-w-desc { margin-right: .5em; } .ss-w-value { margin-left: .5em; font-family: monospace; }
.jp-RenderedHTMLCommon table { font-size: .8em; }
"""


def mathjax_dir() -> Path | None:
    "MathJax 3 as shipped by PyPI `sphinx-mathjax-offline` (installed with --no-deps), if installed."
    from importlib.metadata import distribution, PackageNotFoundError
    try: p = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax"))
    except PackageNotFoundError: return None
    return p if (p/"tex-chtml-full.js").is_file() else None


def write_assets(src: Path) -> bool:
    "plotly.min.js, MathJax and the CSS next to the pages; returns whether MathJax is available."
    import plotly
    shutil.copy(Path(plotly.__file__).parent/"package_data"/"plotly.min.js", src/"plotly.min.js")
    (src/"assets").mkdir(exist_ok=True)
    css = (NBS/"styles.css").read_text() if (NBS/"styles.css").exists() else ""
    (src/"assets"/"extra.css").write_text(css + "\n" + EXTRA_CSS)
    mj = mathjax_dir()
    if mj is None:
        print("docs: MathJax not found (pip install --no-deps sphinx-mathjax-offline): formulas show as TeX", file=sys.stderr)
        (src/"assets"/"mathjax-config.js").write_text("")
        return False
    shutil.copytree(mj, src/"assets"/"mathjax", ignore=shutil.ignore_patterns("*speech*", "node-main.js", "*-svg*"))
    (src/"assets"/"mathjax-config.js").write_text(MATHJAX_CONFIG)
    return True


def mkdocs_config(src: Path, site: Path, nav: list) -> dict:
    from nbdev.config import get_config
    cfg = get_config()
    return {"site_name": cfg.title, "site_description": cfg.description, "docs_dir": str(src), "site_dir": str(site),
            "use_directory_urls": False,  # no repo_url: mkdocs-material would ask GitHub's API for the repository's stars
            "theme": {"name": "material", "font": False, "features": ["navigation.sections", "navigation.top", "search.highlight",
                                                                     "content.code.copy", "toc.follow"],
                      "palette": {"primary": "indigo"}},
            "nav": nav, "extra_css": ["assets/extra.css"],
            "plugins": [{"search": {}}, {"mkdocs-jupyter": {
                "execute": False, "include_source": False, "include_requirejs": False, "no_prompt": True,
                "custom_mathjax_url": "assets/mathjax-config.js", "ignore_h1_titles": False,
                "remove_tag_config": {"remove_input_tags": ["remove_input"]}}}],
            "markdown_extensions": ["tables", "admonition", {"toc": {"permalink": True}}]}


# --- the build -----------------------------------------------------------------------------------------------

def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths: h.update(str(p.relative_to(ROOT)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


def shared_digest() -> str:
    "Everything besides the notebook itself that its executed output depends on (the worker's code, not the rest of this file)."
    lib = sorted((ROOT/"soft_sampler").rglob("*.py"))
    res = sorted(p for p in (ROOT/"results").rglob("*") if p.is_file()) if (ROOT/"results").exists() else []
    import inspect
    code = "".join(inspect.getsource(f) for f in (_no_eval, _use_local_plotly, execute, _bundle_html, _output_html,
                                                  widget_html, freeze_widgets, worker, _spawn, cache_entry))
    return _digest(lib + res + [ROOT/"settings.ini"]) + hashlib.sha256(code.encode()).hexdigest()


WORKER_TIMEOUT = int(os.environ.get("SOFT_SAMPLER_NB_TIMEOUT", 1200))  # seconds one notebook may run (as a test may)


def cache_entry(nb_src: Path, shared: str | None = None, run: bool = True, skip=SKIP_FLAGS) -> Path:
    "Where the processed (and executed) `nb_src` is cached: keyed by its content, `shared_digest()`, `run` and the flags skipped."
    shared = shared or shared_digest()
    key = hashlib.sha256((shared + nb_src.read_text() + str(run) + " ".join(sorted(skip))).encode()).hexdigest()[:16]
    return CACHE/f"{nb_src.stem}.{key}.ipynb"


def failure_of(entry: Path) -> Path:
    "The file that records why the notebook of cache `entry` failed (its traceback), next to the entry."
    return entry.with_suffix(".failed")


def _spawn(src: Path, dst: Path, threads: int, run: bool, skip=SKIP_FLAGS, log=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "SOFT_SAMPLER_DOCS": "1"}
    args = [sys.executable, __file__, "--worker", str(src), str(dst), "--skip", " ".join(skip)] + ([] if run else ["--no-exec"])
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def run_workers(jobs: list[tuple[Path, Path]], n: int, run: bool, skip=SKIP_FLAGS,
                timeout: float = WORKER_TIMEOUT) -> tuple[dict[str, float], dict[str, str]]:
    """Process notebooks `n` at a time, each in a fresh process with cores/n torch threads, longest (as last timed) first.
    Returns the seconds each took and the output of each that failed (a cell raised, or it ran past `timeout` seconds);
    a failure is also recorded next to its cache entry (`failure_of`), a success removes that record."""
    import tempfile
    CACHE.mkdir(parents=True, exist_ok=True)
    timings_file = CACHE/"timings.json"
    last = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    todo = sorted(jobs, key=lambda j: -last.get(j[0].name, 60))
    threads = max(1, (os.cpu_count() or 1) // n)
    running, secs, failed = {}, {}, {}
    while todo or running:
        while todo and len(running) < n:
            src, dst = todo.pop(0)
            log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty notebook cannot block on a full pipe
            running[src.name] = (_spawn(src, dst, threads, run, skip, log), time.time(), log, dst)
        time.sleep(0.2)
        for name, (p, t0, log, dst) in list(running.items()):
            late = time.time() - t0 > timeout
            if p.poll() is None and not late: continue
            if p.poll() is None: p.kill(); p.wait()
            del running[name]
            log.seek(0); out = log.read(); log.close()
            secs[name] = time.time() - t0
            if late: out += f"\ndocs: {name} ran past {timeout:.0f}s and was stopped\n"
            if p.returncode:
                failed[name] = out
                failure_of(dst).write_text(out)
            else: failure_of(dst).unlink(missing_ok=True)
            cpu = re.findall(r"^cpu=(\S+)$", out, re.M)
            print(f"docs: {name} {'FAILED' if p.returncode else 'done'} in {secs[name]:.1f}s"
                  + (f" ({cpu[-1]}s CPU)" if cpu else ""), flush=True)
    timings_file.write_text(json.dumps({**last, **secs}, indent=1))
    return secs, failed


def run_notebook(src: Path, skip=SKIP_FLAGS, timeout: float = WORKER_TIMEOUT) -> tuple[Path, str | None]:
    """Execute one notebook as the site does (fresh process, all cores) into its cache entry, so that a later
    `build` reuses it. Returns the entry and None, or the entry and the output (traceback) if it failed."""
    entry = cache_entry(src, skip=skip)
    _, failed = run_workers([(src, entry)], 1, True, skip, timeout)
    return entry, failed.get(src.name)


def build(only=None, jobs: int = 2, site: Path = ROOT/"_docs", work: Path = ROOT, cache: bool = True, run: bool = True,
          keep_going: bool = False, reuse_failures: bool = False, timeout: float = WORKER_TIMEOUT) -> Path:
    """Build the site into `site` (intermediate files under `work`); returns `site`.
    Notebooks whose executed form is cached (e.g. by the notebook tests of this test run) are not run again.
    `keep_going`: a notebook that fails is rendered unexecuted and named in `work/failed.json` instead of stopping the
    build; `reuse_failures`: a notebook whose failure is recorded for its current content is not run again either."""
    t0 = time.time()
    proc, src = work/"_proc", work/"_docs_src"
    order = [n for n in lesson_order() if not only or Path(n).stem in only]
    for d in (proc, src): shutil.rmtree(d, ignore_errors=True); d.mkdir(parents=True)
    api = proc/"api.ipynb"
    api.write_text(json.dumps(api_notebook(module_pages()), indent=1))
    shared = shared_digest()
    plan, hits, failed = [], {}, {}
    for name in order + ["api.ipynb"]:
        nb_src = api if name == "api.ipynb" else NBS/name
        hits[name] = cache_entry(nb_src, shared, run)
        if cache and hits[name].exists(): continue
        if cache and reuse_failures and failure_of(hits[name]).exists(): failed[name] = failure_of(hits[name]).read_text()
        else: plan.append((nb_src, hits[name]))
    CACHE.mkdir(parents=True, exist_ok=True)
    keep = {p.name for p in hits.values()} | {failure_of(p).name for p in hits.values()}
    stems = {Path(n).stem for n in hits}
    for p in [*CACHE.glob("*.ipynb"), *CACHE.glob("*.failed")]:
        if p.name.split(".")[0] in stems and p.name not in keep: p.unlink()
    print(f"docs: {len(order) + 1 - len(plan) - len(failed)} notebooks from the cache, {len(plan)} to run, {jobs} at a time"
          + (f", {len(failed)} failed earlier: {', '.join(failed)}" if failed else ""), flush=True)
    failed.update(run_workers(plan, jobs, run, timeout=timeout)[1])
    if failed and not keep_going:
        for out in failed.values(): print(out, file=sys.stderr)
        raise SystemExit(f"docs: failed: {', '.join(failed)}")
    if failed:  # rendered unexecuted, so that every other page still can be checked
        bare = {n: proc/f"unexecuted_{Path(n).stem}.ipynb" for n in failed}
        run_workers([(api if n == "api.ipynb" else NBS/n, bare[n]) for n in failed], jobs, False, timeout=timeout)
        hits.update(bare)
    (work/"failed.json").write_text(json.dumps({Path(n).stem: out[-6000:] for n, out in failed.items()}, indent=1))
    nav, lessons, tutorials = [], [], []
    for name in order + ["api.ipynb"]:
        nb, title, page = tidy(json.loads(hits[name].read_text()))
        page = page or ("api" if name == "api.ipynb" else Path(name).stem)
        (src/f"{page}.ipynb").write_text(json.dumps(nb, indent=1))
        entry = {title: f"{page}.ipynb"}
        if name == "index.ipynb": nav.insert(0, {"Home": "index.ipynb"})
        elif name == "api.ipynb": pass
        else: (tutorials if is_tutorial(name) else lessons).append(entry)
    nav += ([{"Lessons": lessons}] if lessons else []) + ([{"Tutorials": tutorials}] if tutorials else [])
    nav.append({"API reference": "api.ipynb"})
    write_assets(src)
    cfg = work/"_mkdocs.yml"
    cfg.write_text(yaml.safe_dump(mkdocs_config(src, site, nav), sort_keys=False, allow_unicode=True))
    r = subprocess.run([str(BIN/"mkdocs"), "build", "--clean", "-q", "-f", str(cfg)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"docs: mkdocs failed:\n{r.stdout}\n{r.stderr}")
    print(f"docs: site written to {site} in {time.time() - t0:.0f}s")
    return site


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="notebook stems to build (default: every notebook in nbs/sidebar.yml)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("SOFT_SAMPLER_DOCS_JOBS", 2)), help="notebooks run at a time")
    ap.add_argument("--site", type=Path, default=ROOT/"_docs", help="where the site goes")
    ap.add_argument("--work", type=Path, default=ROOT, help="where _proc/, _docs_src/ and _mkdocs.yml go")
    ap.add_argument("--no-cache", action="store_true", help="run every notebook even if unchanged")
    ap.add_argument("--no-exec", action="store_true", help="do not run notebooks (layout checks only)")
    ap.add_argument("--worker", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    ap.add_argument("--skip", default=" ".join(SKIP_FLAGS), help=argparse.SUPPRESS)  # the worker's skipped cell flags
    a = ap.parse_args(argv)
    if a.worker:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        worker(*a.worker, run=not a.no_exec, skip=tuple(a.skip.split()))
        return 0
    if a.jobs < 1: ap.error(f"--jobs must be >= 1, got {a.jobs}")
    build(a.only, a.jobs, a.site.resolve(), a.work.resolve(), cache=not a.no_cache, run=not a.no_exec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
