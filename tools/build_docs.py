"""Build the documentation site from the notebooks, offline (quarto cannot be installed here).

1. `nbdev_proc_nbs` processes nbs/ into _proc/ (show_doc cells for every export, directives applied);
2. each processed notebook is executed with nbdev's own executor (execnb), skipping `heavy` and
   `eval: false` cells, so every page carries real outputs (notebooks are committed without them);
   a cell that raises fails the build;
3. nbdev front matter becomes a title, `echo: false` cells keep only their output, an API reference
   page collects `show_doc` of every exported symbol;
4. mkdocs + mkdocs-material + mkdocs-jupyter render _docs/ with navigation in lesson order and search.
Plotly figures embed plotly.js (no CDN): PLOTLY_RENDERER=notebook while executing.

Usage: python tools/build_docs.py [--only NB_STEM ...] [--no-exec]
"""
import argparse, json, os, re, shutil, subprocess, sys, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROC, SRC, SITE, EXEC = ROOT/"_proc", ROOT/"_docs_src", ROOT/"_docs", ROOT/"_exec"


def _lesson_order() -> list[str]:
    side = yaml.safe_load((ROOT/"nbs"/"sidebar.yml").read_text())
    return [p for p in side["website"]["sidebar"]["contents"] if str(p).endswith(".ipynb")]


def _skip(cell) -> bool:
    "Cells not to execute: markdown, export calls, `eval: false`, heavy."
    if cell.cell_type != "code": return True
    src = cell.source
    if "nbdev_export(" in src: return True
    if re.search(r"^#\|\s*eval:\s*false", src, re.M): return True
    return bool(re.search(r"^#\|\s*heavy\b", src, re.M))


def proc_notebooks(path: Path) -> None:
    "nbdev's notebook processing (show_doc, directives) without `nbdev_proc_nbs`'s quarto check, which pip-installs into the system Python."
    import nbdev.doclinks
    from nbdev.serve import proc_nbs
    os.chdir(ROOT)
    nbdev.doclinks._build_modidx()
    proc_nbs(path=str(path), n_workers=0, force=True)


def execute(path: Path) -> float:
    "Run a processed notebook in place; raise if a cell fails."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb = read_nb(path)
    t0, cwd = time.time(), os.getcwd()
    os.chdir(path.parent)
    try:
        shell = CaptureShell(path)
        shell.run("from nbdev.showdoc import show_doc")
        shell.run_all(nb, exc_stop=True, preproc=_skip)
    except Exception as e:
        raise SystemExit(f"docs: executing {path.name} failed: {e}")
    finally: os.chdir(cwd)
    write_nb(nb, path)
    return time.time() - t0


def _front_matter_to_title(cells: list) -> list:
    out = []
    for c in cells:
        if c["cell_type"] == "raw" and "".join(c["source"]).startswith("---"):
            fm = yaml.safe_load("".join(c["source"]).strip().strip("-")) or {}
            md = f"# {fm.get('title', '')}\n\n" + (f"> {fm['description']}\n" if fm.get("description") else "")
            out.append({"cell_type": "markdown", "metadata": {}, "source": md})
        else: out.append(c)
    return out


_ATTRS = re.compile(r"\{(?:target|style|\.)[^{}\n]*\}")  # quarto attribute blocks, e.g. {target="_blank"}


def _site_links(text: str) -> str:
    "Absolute doc links (nbdev writes doc_host/doc_baseurl) become relative; quarto attributes go."
    from nbdev.config import get_config
    cfg = get_config()
    base = cfg.doc_host.rstrip("/") + "/" + cfg.doc_baseurl.strip("/") + "/"
    return _ATTRS.sub("", text.replace(base, ""))


def _fix_text(obj):
    if isinstance(obj, str): return _site_links(obj)
    if isinstance(obj, list): return [_fix_text(o) for o in obj]
    if isinstance(obj, dict): return {k: (_fix_text(v) if k in ("text/markdown", "text/html", "source") else v) for k, v in obj.items()}
    return obj


def _out_name(path: Path) -> str:
    "The page name nbdev's links expect: the front matter's output-file (core.html -> core.ipynb)."
    for c in json.loads(path.read_text())["cells"]:
        m = re.search(r"^output-file:\s*(\S+)\.html", "".join(c["source"]), re.M) if c["cell_type"] == "raw" else None
        if m: return m.group(1) + ".ipynb"
    return path.name


def _tidy(path: Path) -> None:
    "Titles from front matter; `echo: false` hides input; directive lines removed from shown code."
    nb = json.loads(path.read_text())
    nb["cells"] = _front_matter_to_title(nb["cells"])
    for c in nb["cells"]:
        c["source"] = _fix_text("".join(c["source"]))
        for o in c.get("outputs", []):
            if "data" in o: o["data"] = _fix_text(o["data"])
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        src = "".join(c["source"])
        if re.search(r"^#\|\s*(echo:\s*false|hide)\b", src, re.M):
            c.setdefault("metadata", {}).setdefault("tags", []).append("remove_input")
        c["source"] = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip("\n")
    path.write_text(json.dumps(nb, indent=1))


def api_notebook() -> dict:
    "A notebook that shows the docs of every exported symbol, grouped by module."
    from soft_sampler._modidx import d
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# API reference\n\n> Every exported function and class, from its docstring and docments."}]
    for mod, syms in d["syms"].items():
        names = sorted({k.split(".")[1] if k.count(".") > 1 else k.split(".")[-1] for k in syms if not k.split(".")[-1].startswith("_")}
                       if False else {k[len(mod)+1:].split(".")[0] for k in syms})
        names = [n for n in names if not n.startswith("_")]
        if not names: continue
        cells.append({"cell_type": "markdown", "metadata": {}, "source": f"## `{mod}`"})
        code = f"#| echo: false\n#| output: asis\nfrom nbdev.showdoc import show_doc\nimport {mod}\n" + \
               "\n".join(f"show_doc({mod}.{n})" for n in names)
        cells.append({"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None})
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def mkdocs_config(pages: list[tuple[str, str]]) -> dict:
    return {"site_name": "soft_sampler", "docs_dir": str(SRC), "site_dir": str(SITE), "use_directory_urls": False,
            "theme": {"name": "material", "features": ["navigation.sections", "search.highlight"], "palette": {"primary": "indigo"}},
            "nav": [{title: fname} for title, fname in pages],
            "plugins": ["search", {"mkdocs-jupyter": {"execute": False, "include_source": False, "include_requirejs": True, "no_prompt": True,
                                                       "remove_tag_config": {"remove_input_tags": ["remove_input"]},
                                                       "ignore_h1_titles": False}}],
            "markdown_extensions": ["tables", "admonition", {"toc": {"permalink": True}}]}


def _title(path: Path) -> str:
    for c in json.loads(path.read_text())["cells"]:
        m = re.match(r"#\s+(.+)", "".join(c["source"])) if c["cell_type"] == "markdown" else None
        if m: return m.group(1).strip()
    return path.stem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="notebook stems to build (default: all in the sidebar)")
    ap.add_argument("--no-exec", action="store_true", help="skip execution (layout checks only)")
    args = ap.parse_args(argv)
    env = {**os.environ, "PLOTLY_RENDERER": "notebook", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    order = [n for n in _lesson_order() if not args.only or Path(n).stem in args.only]
    shutil.rmtree(EXEC, ignore_errors=True)
    shutil.copytree(ROOT/"nbs", EXEC, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.ipynb"))
    (EXEC/"api.ipynb").write_text(json.dumps(api_notebook(), indent=1))
    for name in order + ["api.ipynb"]:
        if name != "api.ipynb": shutil.copy(ROOT/"nbs"/name, EXEC/name)
        if not args.no_exec:
            secs = execute(EXEC/name)
            print(f"docs: executed {name} in {secs:.1f}s", flush=True)
    proc_notebooks(EXEC)
    shutil.rmtree(SRC, ignore_errors=True); SRC.mkdir()
    pages = []
    for name in order + ["api.ipynb"]:
        src = PROC/name
        out = _out_name(src)
        _tidy(src)
        shutil.copy(src, SRC/out)
        pages.append((_title(SRC/out), out))
    shutil.copy(ROOT/"nbs"/"styles.css", SRC/"styles.css")
    cfg = ROOT/"_mkdocs.yml"
    cfg.write_text(yaml.safe_dump(mkdocs_config(pages), sort_keys=False))
    subprocess.run([str(BIN/"mkdocs"), "build", "--clean", "-f", str(cfg)], cwd=ROOT, check=True, env=env)
    print(f"docs: site written to {SITE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
