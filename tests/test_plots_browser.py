"""End to end in a real browser (slow tier): the TokenInspector live in JupyterLab (plotly and matplotlib), and an `analyze` report offline.

JupyterLab runs on a free loopback port with token auth and a temporary root folder holding a small notebook
on the embedded model; headless Chromium (the `browser` fixture) runs all cells from the menu, moves the position
slider with the arrow keys, and checks that the plotly figure (`svg.main-svg`), the highlighted token and the
token table changed. Screenshots go to the `screenshots` fixture's folder.
"""
import json, os, secrets, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

CELLS = [
    "from soft_sampler.core import load_model\nfrom soft_sampler.plots import TokenInspector\n"
    "model, tok = load_model()",
    "ins = TokenInspector(model, tok, prompt=[{'role': 'user', 'content': 'Write one sentence about the sea.'}],\n"
    "                     pipeline='temperature(t=0.7)+min_p(p=0.05)', compare='top_k(k=20)+top_p(p=0.9)',\n"
    "                     max_new_tokens=12, top=12, seed=0)\nins",
]


def _notebook(path: Path, sources: list[str] = CELLS):
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
             for i, s in enumerate(sources)]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, request):
    "A JupyterLab server on loopback: (base url, token); stopped (this process only) afterwards. Param: the cells."
    root = tmp_path/"root"; root.mkdir(); _notebook(root/"inspect.ipynb", getattr(request, "param", CELLS))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_RUNTIME_DIR": str(tmp_path/"rt"), "HF_HUB_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(tmp_path/"cfg"), "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([str(BIN/"jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             f"--LabApp.workspaces_dir={tmp_path/'ws'}"] + (["--allow-root"] if os.geteuid() == 0 else []),
                            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path/"lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1); break
            except OSError:
                if proc.poll() is not None: break
                time.sleep(0.5)
        else: pytest.fail("JupyterLab did not start:\n" + (tmp_path/"lab.log").read_text()[-2000:])
        yield url, token
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()


def _state(page) -> dict:
    "What the test compares before and after moving the slider."
    return page.evaluate("""() => ({
        svg: document.querySelectorAll('svg.main-svg').length,
        title: [...document.querySelectorAll('.gtitle')].map(e => e.textContent).join('|'),
        ticks: [...document.querySelectorAll('.xtick text')].map(e => e.textContent).join(' '),
        current: (document.querySelector('.ss-cur') || {}).textContent,
        table: [...document.querySelectorAll('table.ss-t')].map(t => t.innerText).join('\\n')})""")


def _select_kernel(page):
    "Accept JupyterLab's 'Select Kernel' dialog if it shows up (it does for a fresh notebook in a fresh config)."
    try: page.wait_for_selector(".jp-Dialog button.jp-mod-accept", timeout=8_000)
    except Exception: return
    page.locator(".jp-Dialog button.jp-mod-accept").click()


def _open_and_run(browser, lab):
    url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(f"{url}/lab/tree/inspect.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    _select_kernel(page)
    page.wait_for_selector("text=/Python 3 \\(ipykernel\\) \\| Idle/", timeout=60_000)
    page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
    page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
    _select_kernel(page)
    return page


def test_inspector_in_jupyterlab(browser, lab, screenshots):
    page = _open_and_run(browser, lab)
    try: page.wait_for_selector("svg.main-svg", timeout=90_000)
    except Exception:
        page.screenshot(path=str(screenshots/"inspector_failed.png"), full_page=True); raise
    page.wait_for_selector("table.ss-t", timeout=30_000)
    page.wait_for_timeout(500)
    before = _state(page)
    assert before["svg"] > 0 and "position 0" in before["title"] and before["current"]
    page.screenshot(path=str(screenshots/"inspector_position0.png"), full_page=True)
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.click()
    for _ in range(3): handle.press("ArrowRight")
    page.wait_for_function("() => [...document.querySelectorAll('.gtitle')].some(e => e.textContent.includes('position 3'))", timeout=30_000)
    page.wait_for_timeout(500)
    after = _state(page)
    page.screenshot(path=str(screenshots/"inspector_position3.png"), full_page=True)
    assert after["svg"] > 0 and after["title"] != before["title"]
    assert after["table"] != before["table"] and after["ticks"] != before["ticks"]
    assert after["current"] != before["current"] or after["table"] != before["table"]
    page.close()


MPL_CELLS = [CELLS[0], CELLS[1].replace("seed=0)", "seed=0, backend='matplotlib')")]


@pytest.mark.parametrize("lab", [MPL_CELLS], indirect=True)
def test_matplotlib_inspector_in_jupyterlab(browser, lab, screenshots):
    "The same inspector drawing with matplotlib: a PNG in the widget's output, redrawn when the slider moves."
    page = _open_and_run(browser, lab)
    img = ".jp-OutputArea-output img"
    try: page.wait_for_selector(img, timeout=90_000)
    except Exception:
        page.screenshot(path=str(screenshots/"inspector_mpl_failed.png"), full_page=True); raise
    page.wait_for_selector("table.ss-t", timeout=30_000)
    page.wait_for_timeout(500)
    src = lambda: page.locator(img).first.get_attribute("src")
    before, state0 = src(), _state(page)
    assert before.startswith("data:image/png") and state0["svg"] == 0  # no plotly figure here
    page.screenshot(path=str(screenshots/"inspector_mpl_position0.png"), full_page=True)
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.click()
    for _ in range(3): handle.press("ArrowRight")
    page.wait_for_function(f"(b) => {{const i = document.querySelector('{img}'); return i && i.src !== b;}}", arg=before, timeout=30_000)
    page.wait_for_timeout(500)
    state3 = _state(page)
    page.screenshot(path=str(screenshots/"inspector_mpl_position3.png"), full_page=True)
    assert src() != before and state3["table"] != state0["table"]
    page.close()


def test_analyze_report_renders_offline(browser, tmp_path, screenshots, capsys):
    from soft_sampler.cli import main
    out = tmp_path/"report.html"
    assert main(["analyze", "--prompt", "Name a colour.", "--temperature", "0.7", "--top-k", "20", "--max-new-tokens", "6",
                 "--fit-steps", "20", "--out", str(out)]) == 0
    assert "mean kl=" in capsys.readouterr().out and "<script src" not in out.read_text()
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(out.as_uri())
    page.wait_for_selector("svg.main-svg", timeout=30_000)
    n_figs = page.evaluate("() => [...document.querySelectorAll('.plotly-graph-div')].filter(d => d.querySelector('svg.main-svg')).length")
    assert n_figs >= 6 + 2 and not external, (n_figs, external[:5])
    assert page.evaluate("() => document.querySelectorAll('script[src]').length") == 0
    page.screenshot(path=str(screenshots/"analyze_report.png"))
    page.close()


def test_static_inspector_switches_positions_without_a_kernel(browser, tmp_path, tiny, screenshots):
    from soft_sampler.plots import TokenInspector
    model, tok = tiny
    ins = TokenInspector(model, tok, prompt="Hello", pipeline="top_k(k=5)", compare="top_p(p=0.8)", max_new_tokens=6, top=8)
    path = ins.static().save(tmp_path/"static.html")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(path.as_uri())
    page.wait_for_selector("div[data-pos='0'] svg.main-svg", timeout=30_000)
    visible = "() => [...document.querySelectorAll('div[data-pos]')].filter(d => d.style.display !== 'none').map(d => d.dataset.pos)"
    assert page.evaluate(visible) == ["0"]
    page.locator("input[type=range]").fill(str(len(ins.rec) - 1))
    assert page.evaluate(visible) == [str(len(ins.rec) - 1)]
    title = page.locator(f"div[data-pos='{len(ins.rec) - 1}'] .gtitle").first.text_content()
    assert f"position {len(ins.rec) - 1}" in title
    page.screenshot(path=str(screenshots/"inspector_static.png"))
    page.close()
